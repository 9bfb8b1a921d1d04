"""The chapter's renderers, with the book's settings as defaults, and the choice of rasterizer."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from pytorch3d.renderer import (
    BlendParams,
    FoVPerspectiveCameras,
    HardPhongShader,
    MeshRasterizer,
    MeshRenderer,
    PointLights,
    RasterizationSettings,
    SoftPhongShader,
    SoftSilhouetteShader,
)

from posefit.fast_rasterizer import FastMeshRasterizer, FragmentReuse
from posefit.sparse_shading import SparseSoftPhongShader


def book_blur_radius(sigma: float = 1e-4) -> float:
    """The book's blur: faces influence pixels up to where sigmoid(-d/sigma) = 1e-4."""
    return float(np.log(1.0 / 1e-4 - 1.0) * sigma)


# torch's thread count at start-up, for the stock path.
DEFAULT_CPU_THREADS = torch.get_num_threads()


def set_cpu_threads(rasterizer: str) -> None:
    """One torch thread for the fast CPU path, torch's default for stock.

    The fast path is thousands of small vectorised operations per iteration.
    A second thread made it no faster on two cores (measured by
    benchmarks/bench_cpu.py), and when another busy process shares the cores
    it made it 25x slower: every operation's OpenMP threads wait for the one
    the OS has descheduled. One thread also leaves a core to the picture
    writer. Stock PyTorch3D's CPU kernels are single-threaded; torch's other
    operations keep the default there. The tracker uses this too: on a quiet
    machine two threads ran it 13% faster (20.6 s against 23.6 s for the 60
    frames), but with one other busy process they made it stall for minutes,
    while one thread took 24.4 s.
    """
    torch.set_num_threads(1 if rasterizer == "fast" else DEFAULT_CPU_THREADS)


def make_rasterizer(kind: str, cameras, raster_settings, **reuse):
    """'fast' = this project's CPU path (stock on CUDA), 'stock' = PyTorch3D's.

    reuse: give_to / take_from, a FragmentReuse shared by two fast rasterizers (stock has none).
    """
    if kind == "fast":
        return FastMeshRasterizer(cameras=cameras, raster_settings=raster_settings, **reuse)
    return MeshRasterizer(cameras=cameras, raster_settings=raster_settings)


@dataclass
class Renderers:
    """The chapter's renderers, all sharing one camera and one light."""

    cameras: FoVPerspectiveCameras
    lights: PointLights
    silhouette: MeshRenderer  # soft silhouette: the thing being fitted
    phong: MeshRenderer  # hard Phong: targets and the pictures
    textured: MeshRenderer | None = None  # soft Phong: the cow's colour term


def make_renderers(
    device,
    image_size,
    rasterizer: str = "fast",
    sigma: float = 1e-4,
    gamma: float = 1e-4,
    faces_per_pixel: int = 100,
    textured_faces_per_pixel: int | None = None,
    fov: float = 60.0,
) -> Renderers:
    """The chapter's renderers; image_size is an int (square) or (H, W).

    For a non-square image PyTorch3D spans [-1, 1] across the shorter side,
    so `fov` is the field of view across the shorter side.
    """
    if not isinstance(image_size, int):
        image_size = tuple(int(s) for s in image_size)
    cameras = FoVPerspectiveCameras(device=device, fov=fov)
    lights = PointLights(device=device, location=((2.0, 2.0, -2.0),))
    blend_params = BlendParams(sigma=sigma, gamma=gamma)
    soft = RasterizationSettings(
        image_size=image_size, blur_radius=book_blur_radius(sigma), faces_per_pixel=faces_per_pixel
    )
    # The colour pass rasterizes the same faces from the same camera with the same blur as the silhouette
    # pass, with fewer faces per pixel: it takes the first of the silhouette pass's (FragmentReuse).
    reuse = FragmentReuse() if textured_faces_per_pixel and textured_faces_per_pixel <= faces_per_pixel else None
    silhouette = MeshRenderer(
        rasterizer=make_rasterizer(rasterizer, cameras, soft, give_to=reuse),
        shader=SoftSilhouetteShader(blend_params=blend_params),
    )
    hard = RasterizationSettings(image_size=image_size, blur_radius=0.0, faces_per_pixel=1)
    phong = MeshRenderer(
        rasterizer=make_rasterizer(rasterizer, cameras, hard),
        shader=HardPhongShader(device=device, cameras=cameras, lights=lights),
    )
    textured = None
    if textured_faces_per_pixel:
        soft_textured = RasterizationSettings(
            image_size=image_size,
            blur_radius=book_blur_radius(sigma),
            faces_per_pixel=textured_faces_per_pixel,
        )
        shader_cls = SparseSoftPhongShader if rasterizer == "fast" else SoftPhongShader
        textured = MeshRenderer(
            rasterizer=make_rasterizer(rasterizer, cameras, soft_textured, take_from=reuse),
            shader=shader_cls(device=device, cameras=cameras, lights=lights),
        )
    return Renderers(cameras, lights, silhouette, phong, textured)


def set_sigma(renderers: Renderers, sigma: float) -> None:
    """Give the soft renderers another sigma, and the blur radius that goes with it (book_blur_radius)."""
    for renderer in (renderers.silhouette, renderers.textured):
        if renderer is None:
            continue
        renderer.shader.blend_params = renderer.shader.blend_params._replace(sigma=sigma)
        renderer.rasterizer.raster_settings = dataclasses.replace(
            renderer.rasterizer.raster_settings, blur_radius=book_blur_radius(sigma)
        )


def hard_render(renderers: Renderers, mesh, R, T):
    """Hard Phong image (N, H, W, 4) and hard silhouette (N, H, W) from one raster."""
    fragments = renderers.phong.rasterizer(mesh, R=R, T=T)
    image = renderers.phong.shader(fragments, mesh, R=R, T=T)
    return image, fragments.pix_to_face[..., 0] >= 0
