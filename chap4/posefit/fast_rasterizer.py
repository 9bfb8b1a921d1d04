"""FastMeshRasterizer: PyTorch3D's MeshRasterizer with the fast CPU rasterization (posefit.fast_raster)."""

from __future__ import annotations

import torch
from pytorch3d.renderer.mesh.rasterizer import Fragments, MeshRasterizer

from posefit.fast_raster import FragmentReuse, fast_rasterize_meshes

__all__ = ["FastMeshRasterizer", "FragmentReuse", "resolved_settings"]


def resolved_settings(raster_settings, cameras) -> tuple[bool, bool, float | None]:
    """MeshRasterizer.forward's defaults for what the settings leave None: (clip_barycentric_coords,
    perspective_correct, z_clip_value), as stock resolves them from the blur radius and the cameras."""
    clip_barycentric_coords = raster_settings.clip_barycentric_coords
    if clip_barycentric_coords is None:
        clip_barycentric_coords = raster_settings.blur_radius > 0.0
    perspective_correct = raster_settings.perspective_correct
    if perspective_correct is None:
        perspective_correct = cameras.is_perspective()
    z_clip = raster_settings.z_clip_value
    if z_clip is None:
        znear = cameras.get_znear()
        if isinstance(znear, torch.Tensor):
            znear = znear.min().item()
        z_clip = None if not perspective_correct or znear is None else znear / 2
    return clip_barycentric_coords, perspective_correct, z_clip


class FastMeshRasterizer(MeshRasterizer):
    """MeshRasterizer whose CPU rasterization uses fast_rasterize_meshes.

    Everything else (camera transform, the defaults for perspective
    correction, barycentric clipping and near-plane clipping) is the stock
    MeshRasterizer's: forward() is stock's, line for line, but for the call
    of fast_rasterize_meshes, so it plugs into MeshRenderer and any shader
    unchanged.

    give_to / take_from: an explicit FragmentReuse shared with another
    rasterizer (posefit.render hands one to the cow's two soft renderers).
    Without one, nothing is kept between calls. A `window=(y0, y1, x0, x1)`
    keyword rasterizes only those rows and columns of the image
    (fast_rasterize_meshes; render.rasterize_window does the same with stock).
    """

    def __init__(self, cameras=None, raster_settings=None, give_to: FragmentReuse | None = None,
                 take_from: FragmentReuse | None = None) -> None:
        super().__init__(cameras=cameras, raster_settings=raster_settings)
        self.give_to, self.take_from = give_to, take_from

    def forward(self, meshes_world, **kwargs) -> Fragments:
        meshes_proj = self.transform(meshes_world, **kwargs)
        raster_settings = kwargs.get("raster_settings", self.raster_settings)
        cameras = kwargs.get("cameras", self.cameras)
        clip_barycentric_coords, perspective_correct, z_clip = resolved_settings(raster_settings, cameras)
        pix_to_face, zbuf, bary_coords, dists = fast_rasterize_meshes(
            meshes_proj,
            image_size=raster_settings.image_size,
            blur_radius=raster_settings.blur_radius,
            faces_per_pixel=raster_settings.faces_per_pixel,
            bin_size=raster_settings.bin_size,
            max_faces_per_bin=raster_settings.max_faces_per_bin,
            clip_barycentric_coords=clip_barycentric_coords,
            perspective_correct=perspective_correct,
            cull_backfaces=raster_settings.cull_backfaces,
            z_clip_value=z_clip,
            cull_to_frustum=raster_settings.cull_to_frustum,
            give_to=self.give_to,
            take_from=self.take_from,
            window=kwargs.get("window"),
        )
        return Fragments(pix_to_face=pix_to_face, zbuf=zbuf, bary_coords=bary_coords, dists=dists)
