"""A fast CPU mesh rasterization op, a drop-in for PyTorch3D's rasterize_meshes (forward and backward).

Why it exists: on a CPU, PyTorch3D 0.7.9 rasterizes naively (every pixel is
tested against every face, and each accepted face re-sorts a deque of up to
`faces_per_pixel` entries) and its backward pass runs on one thread, adding
into `grad_face_verts` one scalar at a time through the tensor dispatcher
(pytorch3d/csrc/rasterize_meshes/rasterize_meshes_cpu.cpp). At the book's
settings (256 px, 100 faces per pixel) that is ~0.8 s forward and ~8 s
backward per iteration on two cores.

What it does instead, on the same float32 formulas as the C++ kernel
(geometry_utils.h), in loops compiled with numba (posefit.raster_kernels):

* forward: each face visits only the pixel centres inside its blur-expanded
  bounding box (binning by face instead of testing all pixels), applies the
  kernel's tests (zero area, bounding box, depth, inside / blur radius), and
  keeps the nearest `faces_per_pixel` per pixel by insertion, ties to the
  lower face index as stock's sort. The result is stock's `Fragments`
  (pix_to_face, zbuf, bary_coords, dists), nearest first, to float32
  rounding: the tests require at least 99.99% of the pix_to_face entries to
  be equal (two depths a rounding apart can sort the other way: 8 of 712,535
  filled entries differ on the teapot at 256 px) and zbuf, bary_coords and
  dists within 1e-5 where the face is the same (tests/test_fast_raster.py;
  PyTorch3D's own rasterizer and renderer tests, run by
  benchmarks/peer_check.py). The per-face parts of the formulas are computed
  once per face, and the depth only for centres that pass the cheaper tests.
  An earlier form of the same work in vectorised torch gave the same bits;
  at a tracker's size it spent its time in the overhead of a few hundred
  small tensor operations per call, not in arithmetic.
* backward: for every kept (pixel, k) entry whose upstream gradient is not
  zero, the derivative of the same formulas, by hand (the analytic
  derivative of stock's backward; like it we hold the closest-point
  parameter t of an edge fixed): within 1e-4 relative in the tests, and
  within rounding (3e-5) of torch's autograd through the vectorised form. One
  deliberate exception: where the perspective-correction denominator is
  floored, stock differentiates as if it were not (float32 noise); we give
  the derivative of what the forward computes.
* it is a plain function: every call rasterizes, and nothing is kept or read
  across calls, except through a FragmentReuse the caller hands in
  explicitly (the cow's textured pass takes the first 50 of the silhouette
  pass's 100 faces per pixel). It changes no process-wide setting.
* arguments are validated as stock validates them: PyTorch3D's own
  parse_image_size and bin-size rule, then the errors stock's C++ kernel
  raises (TypeError for a non-integer size or faces_per_pixel, RuntimeError
  for float64 vertices or a negative size). A non-zero bin_size that passes
  the rule is ignored: stock's CPU has no binned mode (it raises "NOT
  IMPLEMENTED"), and the fast path needs none.

On CUDA, or when a face must be clipped at the near plane, or when the caller
asks for frustum culling, it defers to PyTorch3D's own rasterizer.
"""

from __future__ import annotations

import functools
import operator

import numpy as np
import torch
from pytorch3d.renderer.mesh.rasterize_meshes import kMaxFacesPerBin, rasterize_meshes
from pytorch3d.renderer.utils import parse_image_size

from posefit import raster_kernels


def pixel_centers_ndc(size: int, other: int) -> torch.Tensor:
    """NDC of pixel centres along one axis, as PixToNonSquareNdc computes it.

    Index i counts from the +NDC end (PyTorch3D's +X points left, +Y up), so
    output column xi has NDC pixel_centers_ndc(W, H)[W - 1 - xi].
    """
    return torch.from_numpy(_pixel_centers_ndc(size, other).copy())


@functools.lru_cache(maxsize=64)
def _pixel_centers_ndc(size: int, other: int) -> np.ndarray:
    """pixel_centers_ndc's numbers, computed once per (size, other): a tracker's step asks for them four
    times (its torch arithmetic was 0.2 ms of a 7 ms step). Read-only; callers get a copy."""
    ndc_range = torch.tensor(2.0, dtype=torch.float32)
    if size > other:
        ndc_range = torch.tensor(size * 2.0, dtype=torch.float32) / other
    i = torch.arange(size, dtype=torch.float32)
    offset = ndc_range / 2.0
    centres = (-offset + (ndc_range * i + offset) / size).numpy()
    centres.flags.writeable = False
    return centres


def window_centers_ndc(image_size, window=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The NDC of the pixel centres of the columns and rows rasterized (ascending, the kernels' order): all of
    an (H, W) image's, or those of window = (y0, y1, x0, x1), its rows y0..y1-1 and columns x0..x1-1 (a
    window's pixels get exactly the numbers they get in the whole image)."""
    H, W = image_size
    x_ndc, y_ndc = pixel_centers_ndc(W, H), pixel_centers_ndc(H, W)
    if window is None:
        return x_ndc, y_ndc
    y0, y1, x0, x1 = window
    # Column xi is centre W - 1 - xi (index 0 at +X, the left): the window's are a contiguous run.
    return x_ndc[W - x1 : W - x0], y_ndc[H - y1 : H - y0]


def _rasterize_forward(
    face_verts,
    num_faces_per_mesh,
    image_size,
    blur_radius,
    faces_per_pixel,
    perspective_correct,
    clip_barycentric_coords,
    cull_backfaces,
    window=None,
):
    """Same outputs as _C.rasterize_meshes on CPU with bin_size=0, and where the filled entries are; with a
    window (y0, y1, x0, x1), those outputs' rows y0..y1-1 and columns x0..x1-1 only."""
    H, W = image_size if window is None else (window[1] - window[0], window[3] - window[2])
    K = faces_per_pixel
    N = num_faces_per_mesh.shape[0]
    F = face_verts.shape[0]
    # The outputs first, as the C++ kernel makes them (a negative size fails here, with torch's message).
    pix_to_face = torch.full((N, H, W, K), -1, dtype=torch.int64)
    zbuf = torch.full((N, H, W, K), -1.0)
    bary = torch.full((N, H, W, K, 3), -1.0)
    dists = torch.full((N, H, W, K), -1.0)
    if F and K > 0:
        # Which image each packed face draws into.
        mesh_of_face = torch.repeat_interleave(torch.arange(N), num_faces_per_mesh.cpu(), output_size=F)
        x_ndc, y_ndc = window_centers_ndc(image_size, window)
        slot, face = rasterize_into(
            face_verts.detach().contiguous().numpy(), mesh_of_face.numpy(), x_ndc.numpy(), y_ndc.numpy(), H, W,
            blur_radius, perspective_correct, clip_barycentric_coords, cull_backfaces,
            pix_to_face.view(-1, K).numpy(), zbuf.view(-1, K).numpy(), bary.view(-1, K, 3).numpy(),
            dists.view(-1, K).numpy())
    else:
        slot, face = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return pix_to_face, zbuf, bary, dists, torch.from_numpy(slot), torch.from_numpy(face)


def rasterize_into(face_verts, mesh_of_face, x_ndc, y_ndc, H: int, W: int, blur_radius: float,
                   perspective_correct: bool, clip_barycentric_coords: bool, cull_backfaces: bool, pix_to_face, zbuf,
                   bary, dists) -> tuple[np.ndarray, np.ndarray]:
    """The rasterization's compiled loop on numpy arrays: face_verts (F, 3, 3) float32 in NDC, mesh_of_face
    (F,), the window's pixel centres (window_centers_ndc); fills pix_to_face, zbuf, dists (P, K) and bary
    (P, K, 3), P = N * H * W, which hold -1 on entry. Returns slot, the flat (pixel, k) index of every filled
    entry, and face, its face (all the backward needs). _rasterize_forward's, and a step's without autograd
    (posefit.compiled_step)."""
    filled = np.zeros(len(pix_to_face), dtype=np.int32)
    raster_kernels.rasterize(face_verts, mesh_of_face, x_ndc, y_ndc, H, W, pix_to_face.shape[1],
                             np.float32(blur_radius), bool(perspective_correct), bool(clip_barycentric_coords),
                             bool(cull_backfaces), pix_to_face, zbuf, bary, dists, filled)
    return raster_kernels.filled_entries(pix_to_face, filled)


class FragmentReuse:
    """One rasterization's outputs, handed to one later call that wants the same faces with fewer per pixel.

    The cow's two soft renderers rasterize the same faces from the same
    camera with the same blur radius in every iteration, the silhouette's
    with 100 faces per pixel and the colour's with 50. The nearest 50 of a
    pixel are the first 50 of its nearest 100, in the same order, so the
    second call can be a slice of the first instead of a rasterization.

    The renderer set-up makes one and hands it to both rasterizers: the
    first (give_to) leaves its outputs here, the second (take_from) takes
    them, after which this holds nothing. A take that does not match (other
    faces or settings, more faces per pixel, or the given outputs edited in
    place since) rasterizes anew, and what was held is dropped all the same.
    """

    def __init__(self):
        self.held = None  # (settings, faces per pixel, copy of face_verts, outputs, their version counters)
        self.taken = 0  # calls served so far

    def give(self, face_verts, settings, faces_per_pixel, outputs) -> None:
        versions = [t._version for t in outputs]
        self.held = (settings, faces_per_pixel, face_verts.detach().clone(), outputs, versions)

    def take(self, face_verts, settings, faces_per_pixel):
        """The first faces_per_pixel of the held outputs (fresh tensors), or None."""
        held, self.held = self.held, None
        if held is None:
            return None
        held_settings, held_k, held_face_verts, outputs, versions = held
        if (held_settings != settings or faces_per_pixel > held_k or held_face_verts.shape != face_verts.shape
                or [t._version for t in outputs] != versions or not torch.equal(held_face_verts, face_verts)):
            return None
        pix_to_face, zbuf, bary, dists, slot, slot_face = outputs
        K = faces_per_pixel
        first_k = [t[..., :K, :] if t.dim() == 5 else t[..., :K] for t in (pix_to_face, zbuf, bary, dists)]
        keep = torch.nonzero(slot % held_k < K).squeeze(1)
        slot_k = slot[keep]
        slot_k = slot_k // held_k * K + slot_k % held_k
        self.taken += 1
        return [t.clone(memory_format=torch.contiguous_format) for t in first_k] + [slot_k, slot_face[keep]]


class _FastRasterizeFaceVerts(torch.autograd.Function):
    """Autograd wrapper: vectorised forward, chunked recomputing backward."""

    @staticmethod
    def forward(ctx, face_verts, num_faces_per_mesh, image_size,
                blur_radius, faces_per_pixel, perspective_correct, clip_barycentric_coords,
                cull_backfaces, give_to, take_from, window=None):
        settings = (tuple(num_faces_per_mesh.tolist()), image_size, blur_radius, perspective_correct,
                    clip_barycentric_coords, cull_backfaces, window)
        outputs = take_from.take(face_verts, settings, faces_per_pixel) if take_from is not None else None
        if outputs is None:
            outputs = _rasterize_forward(
                face_verts, num_faces_per_mesh, image_size, blur_radius,
                faces_per_pixel, perspective_correct, clip_barycentric_coords, cull_backfaces, window,
            )
        if give_to is not None:
            give_to.give(face_verts, settings, faces_per_pixel, outputs)
        pix_to_face, zbuf, bary, dists, slot, slot_face = outputs
        # The backward needs only the filled entries: where they are and their face.
        ctx.save_for_backward(face_verts, slot, slot_face)
        ctx.mark_non_differentiable(pix_to_face)
        # Unused outputs (a silhouette shader reads only dists) then arrive as
        # None instead of dense zero tensors that cost time to fill and scan.
        ctx.set_materialize_grads(False)
        ctx.shape = pix_to_face.shape
        ctx.centres = window_centers_ndc(image_size, window)
        ctx.perspective_correct = perspective_correct
        ctx.clip_barycentric_coords = clip_barycentric_coords
        return pix_to_face, zbuf, bary, dists

    @staticmethod
    def backward(ctx, grad_pix_to_face, grad_zbuf, grad_bary, grad_dists):
        face_verts, slot, slot_face = ctx.saved_tensors
        N, H, W, K = ctx.shape
        grad_face_verts = torch.zeros(face_verts.shape, dtype=torch.float32)
        no_grads = (None,) * 10
        if grad_zbuf is None and grad_bary is None and grad_dists is None:
            return (grad_face_verts,) + no_grads
        # Upstream gradients of the filled entries (zeros for an output nothing used).
        entries = slot.numel()

        def upstream(grad, *shape):
            if grad is None:
                return np.zeros((entries, *shape), dtype=np.float32)
            return grad.detach().reshape(-1, *shape).index_select(0, slot).float().contiguous().numpy()

        raster_kernels.rasterize_backward(
            face_verts.detach().contiguous().numpy(), slot.numpy(), slot_face.numpy(),
            ctx.centres[0].numpy(), ctx.centres[1].numpy(), H, W, K,
            upstream(grad_zbuf), upstream(grad_dists), upstream(grad_bary, 3),
            ctx.perspective_correct, ctx.clip_barycentric_coords, grad_face_verts.numpy(),
        )
        return (grad_face_verts,) + no_grads


def _integer(value) -> int:
    """An int as pybind's int arguments take it (what has __index__), else the TypeError stock raises."""
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(
            "rasterize_meshes(): incompatible function arguments. The fast path, like PyTorch3D's C++ kernel, "
            f"takes integers for the image size and faces_per_pixel; got {value!r}"
        ) from None


def _check_arguments(face_verts, image_size, faces_per_pixel, bin_size):
    """Stock's checks, in stock's order; returns (H, W) and faces_per_pixel as ints."""
    # rasterize_meshes itself: PyTorch3D's own size parser, then its bin rule.
    H, W = parse_image_size(image_size)
    if bin_size:
        faces_per_bin = 1 + (max(H, W) - 1) // bin_size
        if faces_per_bin >= kMaxFacesPerBin:
            raise ValueError(
                f"bin_size too small, number of faces per bin must be less than {kMaxFacesPerBin}; got {faces_per_bin}"
            )
    # The C++ binding's argument types, then the kernel's own check of the vertices.
    H, W, faces_per_pixel = _integer(H), _integer(W), _integer(faces_per_pixel)
    if face_verts.dtype != torch.float32:
        found = face_verts.type().removeprefix("torch.").removesuffix("Tensor")
        raise RuntimeError(f"expected scalar type Float but found {found}")
    return (H, W), faces_per_pixel


def fast_rasterize_meshes(
    meshes,
    image_size=256,
    blur_radius: float = 0.0,
    faces_per_pixel: int = 8,
    bin_size=None,
    max_faces_per_bin=None,
    perspective_correct: bool = False,
    clip_barycentric_coords: bool = False,
    cull_backfaces: bool = False,
    z_clip_value=None,
    cull_to_frustum: bool = False,
    *,
    give_to: FragmentReuse | None = None,
    take_from: FragmentReuse | None = None,
    window=None,
):
    """rasterize_meshes() with the fast CPU path where it applies.

    give_to / take_from: a FragmentReuse to leave this call's outputs in, or
    to take a slice of an earlier call's from (see FragmentReuse). Without
    them nothing outlives the call but its outputs. window: (y0, y1, x0, x1),
    only the image's rows y0..y1-1 and columns x0..x1-1 (the same numbers as
    there in the whole image's outputs, at a fraction of the cost when the
    object covers a small part of the image: a tracker's frame).
    """
    verts_packed = meshes.verts_packed()
    faces_packed = meshes.faces_packed()
    face_verts = verts_packed[faces_packed]
    needs_clipping = z_clip_value is not None and bool((face_verts[..., 2] < z_clip_value).any())
    window = _check_window(window, parse_image_size(image_size))
    if verts_packed.is_cuda or cull_to_frustum or needs_clipping:
        outputs = rasterize_meshes(
            meshes, image_size=image_size, blur_radius=blur_radius,
            faces_per_pixel=faces_per_pixel, bin_size=bin_size,
            max_faces_per_bin=max_faces_per_bin, perspective_correct=perspective_correct,
            clip_barycentric_coords=clip_barycentric_coords, cull_backfaces=cull_backfaces,
            z_clip_value=z_clip_value, cull_to_frustum=cull_to_frustum,
        )
        return outputs if window is None else crop_outputs(outputs, window)
    image_size, faces_per_pixel = _check_arguments(face_verts, image_size, faces_per_pixel, bin_size)
    return _FastRasterizeFaceVerts.apply(
        face_verts,
        meshes.num_faces_per_mesh(),
        image_size,
        float(blur_radius),
        faces_per_pixel,
        bool(perspective_correct),
        bool(clip_barycentric_coords),
        bool(cull_backfaces),
        give_to,
        take_from,
        window,
    )


def rasterize_face_verts(face_verts, num_faces_per_mesh, image_size, *, blur_radius: float = 0.0,
                         faces_per_pixel: int = 8, perspective_correct: bool = False,
                         clip_barycentric_coords: bool = False, cull_backfaces: bool = False, window=None):
    """The fast CPU rasterization of packed faces (F, 3, 3) already in NDC (no clipping: every z above the
    near plane's clip value), as fast_rasterize_meshes gives it; for callers that project the vertices
    themselves (posefit.render.rasterize_window)."""
    image_size, faces_per_pixel = _check_arguments(face_verts, image_size, faces_per_pixel, None)
    window = _check_window(window, image_size)
    return _FastRasterizeFaceVerts.apply(face_verts, num_faces_per_mesh, image_size, float(blur_radius),
                                         faces_per_pixel, bool(perspective_correct), bool(clip_barycentric_coords),
                                         bool(cull_backfaces), None, None, window)


def crop_outputs(outputs, window):
    """Rasterization outputs (each (N, H, W, ...)) cut to window = (y0, y1, x0, x1)."""
    y0, y1, x0, x1 = window
    return tuple(t[:, y0:y1, x0:x1] for t in outputs)


def _check_window(window, image_size):
    """window as a tuple of ints inside the image and not empty, or None; a ValueError says what is wrong."""
    if window is None:
        return None
    H, W = (int(v) for v in image_size)
    y0, y1, x0, x1 = (int(v) for v in window)
    if not (0 <= y0 < y1 <= H and 0 <= x0 < x1 <= W):
        raise ValueError(f"window {tuple(window)} is not a non-empty (y0, y1, x0, x1) inside a {H}x{W} image")
    return (y0, y1, x0, x1)
