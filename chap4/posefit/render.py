"""The chapter's renderers, with the book's settings as defaults, and the choice of rasterizer."""

from __future__ import annotations

import contextlib
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
    TexturesUV,
)
from pytorch3d.renderer.blending import sigmoid_alpha_blend
from pytorch3d.renderer.mesh.rasterizer import Fragments

from posefit.blend_kernels import blend_face_colours, silhouette_alpha
from posefit.fast_raster import crop_outputs, rasterize_face_verts
from posefit.fast_rasterizer import FastMeshRasterizer, FragmentReuse, resolved_settings
from posefit.fov_projection import project_faces
from posefit.sparse_shading import CompiledSilhouetteShader, SparseSoftPhongShader


def book_blur_radius(sigma: float = 1e-4) -> float:
    """The book's blur: faces influence pixels up to where sigmoid(-d/sigma) = 1e-4."""
    return float(np.log(1.0 / 1e-4 - 1.0) * sigma)


# torch's thread count at start-up, for the stock path.
DEFAULT_CPU_THREADS = torch.get_num_threads()
# FaceColourShader's blend and targets.solve_light's sums on the CPU by blend_kernels (False: torch's operations).
COMPILED_BLEND = True
# The cameras' near plane (FoVPerspectiveCameras' default, made explicit): PyTorch3D clips a face nearer than half of
# it, and the fast rasterizer leaves such a batch to PyTorch3D's own, 20 to 30 times slower (posefit.fast_raster);
# the 6-DoF search keeps its hypotheses beyond it (posefit.search.six_dof_poses).
CAMERA_ZNEAR = 1.0


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


@contextlib.contextmanager
def cpu_threads(n: int):
    """torch's CPU threads set to n for a block (a few large operations, such as scoring the pose grid, use
    both cores; the fast path's many small ones keep one, set_cpu_threads)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def keep_large_blocks() -> None:
    """Process-wide: let glibc's malloc keep freed blocks of up to 1 GiB in the heap for reuse.

    Each iteration of the fast path allocates and frees the same dense
    (N, H, W, K) tensors, 26 to 78 MB each at the book's settings. By default
    glibc maps every block above 32 MB from the operating system and unmaps
    it on free, so the next iteration pays the page faults again. Raising
    its mmap threshold to 1 GiB and its trim threshold to 2 GiB keeps them;
    measured with `benchmarks/bench_cpu.py --malloc-ab 3`, it takes 25% off
    the teapot's iteration and 20% off the cow's. It changes how the whole
    process allocates (freed memory is kept rather than returned to the
    system), so it is an explicit opt-in of the scripts' set-up (set_up_cpu),
    never done on import. Does nothing where the C library is not glibc.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl): nothing to tune
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from <malloc.h>
    libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)
    libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1)


def set_up_cpu(rasterizer: str) -> None:
    """The scripts' CPU set-up: torch's threads (set_cpu_threads) and, on the fast path, keep_large_blocks."""
    set_cpu_threads(rasterizer)
    if rasterizer == "fast":
        keep_large_blocks()


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
    albedo: torch.Tensor | None = None,
    cull_backfaces: bool = False,
) -> Renderers:
    """The chapter's renderers; image_size is an int (square) or (H, W).

    For a non-square image PyTorch3D spans [-1, 1] across the shorter side,
    so `fov` is the field of view across the shorter side. albedo (F, 3): the
    colour renderer blends these per-face colours (FaceColourShader) instead
    of lighting the texture with the book's Phong shading. cull_backfaces:
    the soft rasterizers skip faces turned away from the camera (a closed
    mesh's silhouette is its front faces'), about half the work.
    """
    if not isinstance(image_size, int):
        image_size = tuple(int(s) for s in image_size)
    cameras = FoVPerspectiveCameras(device=device, fov=fov, znear=CAMERA_ZNEAR)
    lights = PointLights(device=device, location=((2.0, 2.0, -2.0),))
    blend_params = BlendParams(sigma=sigma, gamma=gamma)
    soft = RasterizationSettings(
        image_size=image_size, blur_radius=book_blur_radius(sigma), faces_per_pixel=faces_per_pixel,
        cull_backfaces=cull_backfaces,
    )
    # The colour pass rasterizes the same faces from the same camera with the same blur as the silhouette
    # pass, with fewer faces per pixel: it takes the first of the silhouette pass's (FragmentReuse).
    reuse = FragmentReuse() if textured_faces_per_pixel and textured_faces_per_pixel <= faces_per_pixel else None
    silhouette = MeshRenderer(
        rasterizer=make_rasterizer(rasterizer, cameras, soft, give_to=reuse),
        shader=(CompiledSilhouetteShader if rasterizer == "fast" else SoftSilhouetteShader)(blend_params=blend_params),
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
            cull_backfaces=cull_backfaces,
        )
        if albedo is not None:
            shader = FaceColourShader(albedo, BlendParams(sigma=sigma, gamma=gamma))
        else:
            shader_cls = SparseSoftPhongShader if rasterizer == "fast" else SoftPhongShader
            shader = shader_cls(device=device, cameras=cameras, lights=lights)
        textured = MeshRenderer(
            rasterizer=make_rasterizer(rasterizer, cameras, soft_textured, take_from=reuse), shader=shader)
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


def rasterize_window(rasterizer, meshes, window=None, *, R, T):
    """rasterizer(meshes, R=R, T=T)'s Fragments, only the window (y0, y1, x0, x1) of the image (None: all of
    it): the fast rasterizer rasterizes only those pixels, stock's whole image is cut to them.

    With the fast rasterizer and a FoV camera, the vertices go to NDC in one compiled loop
    (posefit.fov_projection: x @ R + T, then the projection matrix) instead of through PyTorch3D's
    Transform3d chain: the same numbers within float rounding, a millisecond less per call and as much in
    its backward (a tracker's step is about seven).
    """
    if isinstance(rasterizer, FastMeshRasterizer) and isinstance(rasterizer.cameras, FoVPerspectiveCameras):
        fragments = _fast_fov_fragments(rasterizer, meshes, window, R, T)
        if fragments is not None:
            return fragments
    if isinstance(rasterizer, FastMeshRasterizer):
        return rasterizer(meshes, window=window, R=R, T=T)
    fragments = rasterizer(meshes, R=R, T=T)
    if window is None:
        return fragments
    return Fragments(*crop_outputs((fragments.pix_to_face, fragments.zbuf, fragments.bary_coords,
                                    fragments.dists), window))


def _fast_fov_fragments(rasterizer, meshes, window, R, T):
    """FastMeshRasterizer.forward for a FoV camera with the camera transform written out (see
    rasterize_window); None where a face reaches behind the near plane's half (clipping: the caller takes
    the stock path)."""
    cameras, settings = rasterizer.cameras, rasterizer.raster_settings
    clip_barycentric_coords, perspective_correct, z_clip = resolved_settings(settings, cameras)
    projection = _fov_projection(cameras)  # (1 or N, 4, 4), row vectors: p @ M
    if meshes.verts_packed().requires_grad or R.is_cuda:  # (nothing here fits the mesh: torch's operations)
        return None
    face_verts, nearest = project_faces(meshes, R, T, projection)
    needs_clipping = z_clip is not None and nearest < z_clip
    if needs_clipping or settings.cull_to_frustum:
        return None
    pix_to_face, zbuf, bary, dists = rasterize_face_verts(
        face_verts, meshes.num_faces_per_mesh(), settings.image_size, blur_radius=settings.blur_radius,
        faces_per_pixel=settings.faces_per_pixel, perspective_correct=perspective_correct,
        clip_barycentric_coords=clip_barycentric_coords, cull_backfaces=settings.cull_backfaces, window=window)
    return Fragments(pix_to_face=pix_to_face, zbuf=zbuf, bary_coords=bary, dists=dists)


_PROJECTIONS: dict = {}  # FoV projection matrices by the camera's numbers (_fov_projection)


def _fov_projection(cameras) -> torch.Tensor:
    """cameras.get_projection_transform().get_matrix(), computed once per set of the camera's numbers (znear,
    zfar, fov, aspect ratio, degrees): a tracker's step asks for it at every rasterization, and PyTorch3D's
    construction of it was 0.16 ms of a 7 ms step. Read-only, and no gradient flows to the camera's numbers
    (nothing here fits them); a camera with its own K is not cached."""
    if getattr(cameras, "K", None) is not None:
        return cameras.get_projection_transform().get_matrix()
    key = (tuple(cameras.znear.tolist()), tuple(cameras.zfar.tolist()), tuple(cameras.fov.tolist()),
           tuple(cameras.aspect_ratio.tolist()), bool(cameras.degrees), str(cameras.device))
    if key not in _PROJECTIONS:
        if len(_PROJECTIONS) >= 64:
            _PROJECTIONS.clear()
        _PROJECTIONS[key] = cameras.get_projection_transform().get_matrix().detach()
    return _PROJECTIONS[key]


def hard_render(renderers: Renderers, mesh, R, T):
    """Hard Phong image (N, H, W, 4) and hard silhouette (N, H, W) from one raster."""
    fragments = renderers.phong.rasterizer(mesh, R=R, T=T)
    image = renderers.phong.shader(fragments, mesh, R=R, T=T)
    return image, fragments.pix_to_face[..., 0] >= 0


# ---------------------------------------------------------------------------
# Albedo per face: a cheap colour for tracking
# ---------------------------------------------------------------------------


def soft_silhouette(fragments, blend_params: BlendParams) -> torch.Tensor:
    """The soft silhouette (N, H, W) of SoftSilhouetteShader, the same numbers, without the (N, H, W, K, 3)
    tensor of ones it makes for colours nobody reads (a tracker's step spends a millisecond on those). On the
    CPU (COMPILED_BLEND) one compiled loop each way (blend_kernels.silhouette_alpha): sigmoid_alpha_blend's
    arithmetic without the RGBA image it builds around the alpha, nor that image's gradient nodes."""
    if not fragments.dists.is_cuda and COMPILED_BLEND:
        return silhouette_alpha(fragments.pix_to_face, fragments.dists, sigma=blend_params.sigma)
    N, H, W, K = fragments.pix_to_face.shape
    ones = torch.ones((), device=fragments.dists.device).expand(N, H, W, K, 3)
    return sigmoid_alpha_blend(ones, fragments, blend_params)[..., 3]


def face_colours(mesh) -> torch.Tensor:
    """One colour per face (F, 3): the texture map at the face's UV centroid, a vertex-coloured face's mean
    colour, or light grey for a mesh without colours. At tracking sizes a face covers about a pixel, so
    one colour per face is the texture as the camera sees it."""
    textures = mesh.textures
    faces = mesh.faces_packed()
    if isinstance(textures, TexturesUV):
        uv = textures.verts_uvs_padded()[0][textures.faces_uvs_padded()[0]].mean(1)
        image = textures.maps_padded()[0]
        H, W = image.shape[:2]
        x = (uv[:, 0] * (W - 1)).round().long().clamp(0, W - 1)
        y = ((1 - uv[:, 1]) * (H - 1)).round().long().clamp(0, H - 1)
        return image[y, x, :3].float()
    if textures is not None and hasattr(textures, "verts_features_packed"):
        return textures.verts_features_packed()[faces].mean(1)[:, :3].float()
    return torch.full((len(faces), 3), 0.8, device=faces.device)


class FaceColourShader(torch.nn.Module):
    """Soft colour from one albedo per face: PyTorch3D's softmax_rgb_blend (white background) of the K faces of
    each pixel, computed only on the pixels that hold a face (the rest is background), with no lighting: a
    photo's light is matched by a gain and offset instead (posefit.targets.relight). Returns (N, H, W, 3).

    With normals=True (and R) it also blends, the same way, each face's normal in view coordinates (zero on
    the background), for a light fitted to the frame (posefit.targets.shade): returns (albedo, normals).

    On the CPU the blend runs as blend_kernels' compiled loops (COMPILED_BLEND; a tracker's step spent a
    fifth of its time in the torch form's small operations), on CUDA as the torch operations below.
    """

    def __init__(self, colours: torch.Tensor, blend_params: BlendParams, znear: float = CAMERA_ZNEAR, zfar: float = 100.0):
        super().__init__()
        self.colours, self.blend_params, self.znear, self.zfar = colours, blend_params, znear, zfar

    def forward(self, fragments, meshes, normals: bool = False, **kwargs):
        faces = fragments.pix_to_face  # packed over the batch: each mesh's faces follow the last's
        N, H, W, K = faces.shape
        if not faces.is_cuda and COMPILED_BLEND:
            return self._compiled(fragments, meshes, normals, **kwargs)
        # The pixels that hold a face (filled entries come first, nearest first) and their K entries.
        pixels = torch.nonzero(faces[..., 0].reshape(-1) >= 0).squeeze(1)
        faces = faces.reshape(-1, K).index_select(0, pixels)
        dists = fragments.dists.reshape(-1, K).index_select(0, pixels)
        zbuf = fragments.zbuf.reshape(-1, K).index_select(0, pixels)
        filled = faces >= 0
        colours = self.colours[faces.clamp(min=0) % len(self.colours)]
        background = torch.as_tensor(self.blend_params.background_color, dtype=colours.dtype, device=colours.device)
        if normals:
            colours = torch.cat([colours, self._turned_normals(meshes, kwargs["R"])[faces.clamp(min=0)]], -1)
            background = torch.cat([background, background.new_zeros(3)])
        # softmax_rgb_blend's arithmetic, entry for entry.
        eps, gamma = 1e-10, self.blend_params.gamma
        probability = torch.sigmoid(-dists / self.blend_params.sigma) * filled
        z_inv = (self.zfar - zbuf) / (self.zfar - self.znear) * filled
        z_inv_max = torch.max(z_inv, dim=-1).values[..., None].clamp(min=eps)
        weights = probability * torch.exp((z_inv - z_inv_max) / gamma)
        delta = torch.exp((eps - z_inv_max) / gamma).clamp(min=eps)
        blended = ((weights[..., None] * colours).sum(dim=-2) + delta * background) / (weights.sum(-1)[..., None] + delta)
        C = len(background)
        image = background.expand(N * H * W, C).index_put((pixels,), blended).reshape(N, H, W, C)
        return (image[..., :3], image[..., 3:]) if normals else image

    def _turned_normals(self, meshes, R) -> torch.Tensor:
        """Each packed face's normal in view coordinates (N * F, 3). x_view = x @ R: a face's normal turns
        with R (each mesh of the batch its own R), and the gradient goes through it: how the shading moves
        tells a turn as well as the outline does."""
        F = len(self.colours)
        return torch.bmm(meshes.faces_normals_packed().reshape(len(R), F, 3), R).reshape(len(R) * F, 3)

    def _compiled(self, fragments, meshes, normals: bool, **kwargs):
        """forward's blend as blend_kernels' compiled loops (CPU): the same numbers to float rounding."""
        N, H, W, K = fragments.pix_to_face.shape
        background = torch.as_tensor(self.blend_params.background_color, dtype=torch.float32)
        turned = None
        if normals:
            turned = self._turned_normals(meshes, kwargs["R"])
            background = torch.cat([background, background.new_zeros(3)])
        image = blend_face_colours(fragments.pix_to_face.reshape(-1, K), fragments.dists, fragments.zbuf,
                                   self.colours, turned, background, sigma=self.blend_params.sigma,
                                   gamma=self.blend_params.gamma, znear=self.znear, zfar=self.zfar)
        image = image.reshape(N, H, W, len(background))
        return (image[..., :3], image[..., 3:]) if normals else image
