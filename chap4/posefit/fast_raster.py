"""A fast CPU mesh rasterizer that is a drop-in for PyTorch3D's MeshRasterizer.

Why it exists: on a CPU, PyTorch3D 0.7.9 rasterizes naively (every pixel is
tested against every face, and each accepted face re-sorts a deque of up to
`faces_per_pixel` entries) and its backward pass runs on one thread, adding
into `grad_face_verts` one scalar at a time through the tensor dispatcher
(pytorch3d/csrc/rasterize_meshes/rasterize_meshes_cpu.cpp). At the book's
settings (256 px, 100 faces per pixel) that is ~0.8 s forward and ~8 s
backward per iteration on two cores.

What it does instead, in vectorised torch on the same float32 formulas as the
C++ kernel (geometry_utils.h):

* forward: each face lists only the pixels inside its blur-expanded bounding
  box (binning by face instead of testing all pixels), the kernel's tests
  (zero area, bounding box, depth, inside / blur radius) are applied to those
  candidates, and the nearest `faces_per_pixel` per pixel are kept with one
  sort. The result is the same `Fragments` (pix_to_face, zbuf, bary_coords,
  dists) as the stock kernel, ordered nearest first, bit for bit in our
  tests. For speed, the per-face parts of the formulas are computed once per
  face, candidates go in chunks that fit the CPU cache, the depth is only
  computed for candidates that pass the cheaper tests, and glibc is told to
  keep the large output blocks for the next iteration.
* backward: the kept (pixel, k) entries whose upstream gradient is non-zero
  are recomputed with differentiable torch operations, in chunks (so memory
  stays bounded), and autograd gives the gradients of the stock backward
  (the analytic derivative of the same formulas; like it we hold the
  closest-point parameter t of an edge fixed). One deliberate exception:
  where the perspective-correction denominator is floored, stock
  differentiates as if it were not (float32 noise); we give the derivative
  of what the forward computes, unless STOCK_PERSPECTIVE_GRADIENT is set.
* a call that asks for fewer faces per pixel than the previous call, on the
  same faces with the same settings (the cow's textured pass after its
  silhouette pass), takes the first K of the previous fragments.

On CUDA, or when a face must be clipped at the near plane, or when the caller
asks for frustum culling, it defers to PyTorch3D's own rasterizer.
"""

from __future__ import annotations

import ctypes
import sys

import torch
from pytorch3d.renderer.mesh.rasterize_meshes import rasterize_meshes

K_EPSILON = 1e-8  # kEpsilon in geometry_utils.h (a double there)
# Candidates per forward chunk: small enough that one chunk's arrays stay in
# the CPU cache (1 << 16 ran ~1.5x faster than 1 << 21 here), large enough
# that the Python overhead per chunk does not matter.
CANDIDATES_PER_CHUNK = 1 << 16
ENTRIES_PER_CHUNK = 1 << 17  # bounds the memory of one backward chunk
# True: differentiate the floored perspective denominator as PyTorch3D's
# backward does (bit-for-bit comparisons); False: the derivative of the
# function the forward pass actually computes (see _face_terms).
STOCK_PERSPECTIVE_GRADIENT = False


_heap_reuse_checked = False


def _reuse_freed_large_blocks() -> None:
    """Let glibc's malloc keep freed large blocks for reuse (once per process).

    Each iteration allocates and frees the same dense (N, H, W, K) tensors,
    26 to 78 MB each at the book's settings. By default glibc maps every block
    above 32 MB from the OS and unmaps it on free, so the next iteration pays
    the page faults again (a third of the forward pass here). Raising the
    mmap and trim thresholds keeps them in the heap instead; the peak memory
    stays that of the largest iteration (benchmarks/bench_cpu.py measures it).
    """
    global _heap_reuse_checked
    if _heap_reuse_checked:
        return
    _heap_reuse_checked = True
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl): nothing to tune
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from <malloc.h>
    libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)
    libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1)


def pixel_centers_ndc(size: int, other: int) -> torch.Tensor:
    """NDC of pixel centres along one axis, as PixToNonSquareNdc computes it.

    Index i counts from the +NDC end (PyTorch3D's +X points left, +Y up), so
    output column xi has NDC pixel_centers_ndc(W, H)[W - 1 - xi].
    """
    ndc_range = torch.tensor(2.0, dtype=torch.float32)
    if size > other:
        ndc_range = torch.tensor(size * 2.0, dtype=torch.float32) / other
    i = torch.arange(size, dtype=torch.float32)
    offset = ndc_range / 2.0
    return -offset + (ndc_range * i + offset) / size


def _edge(px, py, ax, ay, bx, by):
    # EdgeFunctionForward(p, a, b) = (p.x - a.x) * (b.y - a.y) - (p.y - a.y) * (b.x - a.x)
    return (px - ax) * (by - ay) - (py - ay) * (bx - ax)


def _point_line_dist2(px, py, ax, ay, bx, by, *, detach_t: bool):
    """PointLineDistanceForward: squared distance from p to segment ab."""
    dx, dy = bx - ax, by - ay
    l2 = dx * dx + dy * dy
    t = (dx * (px - ax) + dy * (py - ay)) / torch.where(l2 > K_EPSILON, l2, torch.ones_like(l2))
    t = t.clamp(0.0, 1.0)
    if detach_t:
        # The stock backward treats the projection parameter as a constant.
        t = t.detach()
    qx, qy = px - (ax + t * dx), py - (ay + t * dy)
    seg = qx * qx + qy * qy
    ex, ey = px - bx, py - by
    return torch.where(l2 <= K_EPSILON, ex * ex + ey * ey, seg)


def _clip_and_depth(w0, w1, w2, z0, z1, z2, clip_barycentric_coords):
    """BarycentricClipForward (if asked), then the interpolated depth pz."""
    if clip_barycentric_coords:
        c0, c1, c2 = w0.clamp(min=0.0), w1.clamp(min=0.0), w2.clamp(min=0.0)
        s = (c0 + c1 + c2).clamp(min=1e-5)
        c0, c1, c2 = c0 / s, c1 / s, c2 / s
    else:
        c0, c1, c2 = w0, w1, w2
    return c0, c1, c2, c0 * z0 + c1 * z1 + c2 * z2


def _face_terms(
    fv, px, py, *, perspective_correct, clip_barycentric_coords, detach_t=False, stock_perspective_gradient=False
):
    """Per (pixel, face) entry: barycentrics, depth, squared distance, inside.

    fv: (M, 3, 3) face vertices in NDC, px, py: (M,) pixel centres.
    Returns bary (unclipped, perspective corrected), bary_clip, pz, dist, inside.
    """
    x0, y0, z0 = fv[:, 0, 0], fv[:, 0, 1], fv[:, 0, 2]
    x1, y1, z1 = fv[:, 1, 0], fv[:, 1, 1], fv[:, 1, 2]
    x2, y2, z2 = fv[:, 2, 0], fv[:, 2, 1], fv[:, 2, 2]
    # area = EdgeFunctionForward(v2, v0, v1) + kEpsilon, with kEpsilon a double
    area = _edge(x2, y2, x0, y0, x1, y1)
    # Add the epsilon in double precision, then round once, as C++ does; the
    # straight-through form keeps d(area)/d(verts) intact.
    area = (area.detach().double() + K_EPSILON).float() + (area - area.detach())
    w0 = _edge(px, py, x1, y1, x2, y2) / area
    w1 = _edge(px, py, x2, y2, x0, y0) / area
    w2 = _edge(px, py, x0, y0, x1, y1) / area
    if perspective_correct:
        # BarycentricPerspectiveCorrectionForward of PyTorch3D 0.7.9, with its
        # operand order and its floor on the denominator (slivers seen nearly
        # edge-on have a denominator of about zero).
        t0, t1, t2 = w0 * z1 * z2, z0 * w1 * z2, z0 * z1 * w2
        # Where the floor applies (a pixel outside a sliver seen nearly edge-on),
        # the forward value no longer depends on the denominator, so neither
        # does our gradient. PyTorch3D's backward instead differentiates as if
        # there were no floor, dividing by denom**2 = 1e-16: float32 noise of
        # order 1e4 and more that swamps the cow's colour gradient (README).
        denom = t0 + t1 + t2
        if stock_perspective_gradient:
            # Reproduce the stock gradient exactly: straight through the floor.
            denom = (denom - denom.detach()) + denom.detach().clamp(min=K_EPSILON)
        else:
            denom = denom.clamp(min=K_EPSILON)
        w0, w1, w2 = t0 / denom, t1 / denom, t2 / denom
    c0, c1, c2, pz = _clip_and_depth(w0, w1, w2, z0, z1, z2, clip_barycentric_coords)
    e01 = _point_line_dist2(px, py, x0, y0, x1, y1, detach_t=detach_t)
    e02 = _point_line_dist2(px, py, x0, y0, x2, y2, detach_t=detach_t)
    e12 = _point_line_dist2(px, py, x1, y1, x2, y2, detach_t=detach_t)
    # The closest edge, ties resolved in the stock order e01, e02, e12.
    dist = torch.where((e01 <= e02) & (e01 <= e12), e01, torch.where(e02 <= e12, e02, e12))
    inside = (w0 > 0) & (w1 > 0) & (w2 > 0)
    return (w0, w1, w2), torch.stack((c0, c1, c2), dim=-1), pz, dist, inside


def _rasterize_forward(
    face_verts,
    mesh_to_face_first_idx,
    num_faces_per_mesh,
    image_size,
    blur_radius,
    faces_per_pixel,
    perspective_correct,
    clip_barycentric_coords,
    cull_backfaces,
):
    """Same outputs as _C.rasterize_meshes on CPU with bin_size=0."""
    H, W = image_size
    K = faces_per_pixel
    N = num_faces_per_mesh.shape[0]
    F = face_verts.shape[0]
    fv = face_verts.detach().float()
    # Which mesh each packed face belongs to.
    mesh_of_face = torch.repeat_interleave(torch.arange(N), num_faces_per_mesh.cpu(), output_size=F)

    x_ndc = pixel_centers_ndc(W, H)  # indexed by W - 1 - column
    y_ndc = pixel_centers_ndc(H, W)  # indexed by H - 1 - row

    # Faces the kernel would skip whatever the pixel: zero area, a vertex
    # behind the camera, or (optionally) facing away.
    area = _edge(fv[:, 0, 0], fv[:, 0, 1], fv[:, 1, 0], fv[:, 1, 1], fv[:, 2, 0], fv[:, 2, 1])
    area64 = area.double()
    valid = (area64 > K_EPSILON) | (area64 < -K_EPSILON)
    valid &= fv[:, :, 2].min(dim=1).values.double() >= K_EPSILON
    if cull_backfaces:
        valid &= area >= 0
    # Blur-expanded bounding box, then the exact range of pixel centres in it:
    # searchsorted makes the same float32 comparisons as the kernel's
    # CheckPointOutsideBoundingBox (centre >= min, centre <= max), so no pixel
    # needs testing against the box again, and a face smaller than a pixel
    # gives one or two candidates instead of the 9-16 of a padded range.
    r = torch.sqrt(torch.tensor(blur_radius, dtype=torch.float32))
    xmin = fv[:, :, 0].min(dim=1).values - r
    xmax = fv[:, :, 0].max(dim=1).values + r
    ymin = fv[:, :, 1].min(dim=1).values - r
    ymax = fv[:, :, 1].max(dim=1).values + r
    ix0 = torch.searchsorted(x_ndc, xmin)  # first centre >= xmin
    ix1 = torch.searchsorted(x_ndc, xmax, right=True) - 1  # last centre <= xmax
    iy0 = torch.searchsorted(y_ndc, ymin)
    iy1 = torch.searchsorted(y_ndc, ymax, right=True) - 1
    # A box that misses the image holds no centre: nx or ny is 0, so no candidates.
    nx = (ix1 - ix0 + 1).clamp(min=0)
    ny = (iy1 - iy0 + 1).clamp(min=0)
    count = torch.where(valid, nx * ny, torch.zeros_like(nx))

    kept = []  # per chunk: (pixel key, face, pz, signed dist, bary_clip)
    table = _face_table(fv)
    faces = torch.nonzero(count).squeeze(1)
    if faces.numel():
        cum = torch.cumsum(count[faces], 0)
        start = 0
        while start < faces.numel():
            # Faces [start, stop) give at most CANDIDATES_PER_CHUNK candidates
            # (a single huge face still goes alone).
            base = int(cum[start - 1]) if start else 0
            stop = int(torch.searchsorted(cum, base + CANDIDATES_PER_CHUNK, right=True))
            stop = max(stop, start + 1)
            kept.append(
                _candidates(
                    table, faces[start:stop], count, ix0, iy0, nx, mesh_of_face, x_ndc, y_ndc,
                    H, W, blur_radius,
                    perspective_correct, clip_barycentric_coords,
                )
            )
            start = stop

    pix_to_face = torch.full((N, H, W, K), -1, dtype=torch.int64)
    zbuf = torch.full((N, H, W, K), -1.0)
    dists = torch.full((N, H, W, K), -1.0)
    bary = torch.full((N, H, W, K, 3), -1.0)
    slot = torch.zeros(0, dtype=torch.int64)
    face = torch.zeros(0, dtype=torch.int64)
    if kept:
        key, face, pz, sdist, bclip = (torch.cat(t) for t in zip(*kept, strict=True))
        # Per pixel, nearest first; equal depths by face index, as the stock
        # sort of (z, face, ...) tuples does. pz >= 0, and the bits of a
        # non-negative float32 order like its value (+ 0.0 turns -0.0 into
        # 0.0), so one stable sort of (pixel << 32 | bits of pz) does it:
        # candidates are generated in face order, which breaks the ties.
        pz_bits = (pz + 0.0).view(torch.int32).to(torch.int64)
        order = torch.sort((key << 32) | pz_bits, stable=True).indices
        key, face, pz, sdist, bclip = key[order], face[order], pz[order], sdist[order], bclip[order]
        _, counts = torch.unique_consecutive(key, return_counts=True)
        first = torch.cumsum(counts, 0) - counts
        rank = torch.arange(key.numel()) - torch.repeat_interleave(first, counts)
        top = torch.nonzero(rank < K).squeeze(1)
        slot = key[top] * K + rank[top]
        face = face[top]
        pix_to_face.view(-1)[slot] = face
        zbuf.view(-1)[slot] = pz[top]
        dists.view(-1)[slot] = sdist[top]
        bary.view(-1, 3)[slot] = bclip[top]
    # slot: the flat (pixel, k) index of every filled entry, face: its face.
    return pix_to_face, zbuf, bary, dists, slot, face


def _face_table(fv: torch.Tensor) -> dict:
    """Per-face float32 terms of the kernel's formulas, each a contiguous (F,) array.

    Differences such as y2 - y1 are the same float32 numbers whether taken
    per face or per (pixel, face) pair, so taking them once per face changes
    no result bit, and the per-candidate work below gathers them instead.
    """
    x0, y0, z0 = fv[:, 0, 0], fv[:, 0, 1], fv[:, 0, 2]
    x1, y1, z1 = fv[:, 1, 0], fv[:, 1, 1], fv[:, 1, 2]
    x2, y2, z2 = fv[:, 2, 0], fv[:, 2, 1], fv[:, 2, 2]
    area = _edge(x2, y2, x0, y0, x1, y1)
    table = {
        "x0": x0, "y0": y0, "z0": z0, "x1": x1, "y1": y1, "z1": z1, "x2": x2, "y2": y2, "z2": z2,
        "area": (area.double() + K_EPSILON).float(),  # + kEpsilon in double, rounded once, as in C++
        "dx01": x1 - x0, "dy01": y1 - y0, "dx02": x2 - x0, "dy02": y2 - y0,
        "dx12": x2 - x1, "dy12": y2 - y1, "dx20": x0 - x2, "dy20": y0 - y2,
    }
    for edge in ("01", "02", "12"):
        l2 = table["dx" + edge] * table["dx" + edge] + table["dy" + edge] * table["dy" + edge]
        table["l2" + edge] = torch.where(l2 > K_EPSILON, l2, torch.ones_like(l2))
        table["short" + edge] = l2 <= K_EPSILON
    return {name: value.contiguous() for name, value in table.items()}


def _segment_dist2(px, py, ax, ay, dx, dy, l2_guarded):
    """PointLineDistanceForward for a segment that is not degenerate."""
    t = ((dx * (px - ax) + dy * (py - ay)) / l2_guarded).clamp(0.0, 1.0)
    qx, qy = px - (ax + t * dx), py - (ay + t * dy)
    return qx * qx + qy * qy


def _candidates(
    table, faces, count, ix0, iy0, nx, mesh_of_face, x_ndc, y_ndc,
    H, W, blur_radius, perspective_correct, clip_barycentric_coords,
):
    """Test every (face, pixel in its bounding box) pair of these faces.

    The same float32 operations as _face_terms (and the C++ kernel), in two
    passes: the tests that need no depth (inside the triangle, or within the
    blur radius of an edge) on every candidate, then the perspective-corrected
    barycentrics and depth only on the pairs that pass them.
    """
    c = count[faces]
    face = torch.repeat_interleave(faces, c)
    local = torch.arange(face.numel()) - torch.repeat_interleave(torch.cumsum(c, 0) - c, c)
    width = nx[face]
    xi_ndc = ix0[face] + local % width  # index into x_ndc (reversed column)
    yi_ndc = iy0[face] + local // width
    px, py = x_ndc[xi_ndc], y_ndc[yi_ndc]

    def per_face(*names):
        return [table[name].index_select(0, face) for name in names]

    # Pass 1 (every candidate is inside the face's box by construction): plain
    # barycentrics (their signs are those of the perspective-corrected ones,
    # as all depths are > 0) and the distance to the triangle.
    x0, y0, x1, y1, x2, y2, area = per_face("x0", "y0", "x1", "y1", "x2", "y2", "area")
    ax0, ay0, ax1, ay1, ax2, ay2 = px - x0, py - y0, px - x1, py - y1, px - x2, py - y2
    dx01, dy01, dx02, dy02, dx12, dy12, dx20, dy20 = per_face(
        "dx01", "dy01", "dx02", "dy02", "dx12", "dy12", "dx20", "dy20"
    )
    w0 = (ax1 * dy12 - ay1 * dx12) / area
    w1 = (ax2 * dy20 - ay2 * dx20) / area
    w2 = (ax0 * dy01 - ay0 * dx01) / area
    l201, l202, l212 = per_face("l201", "l202", "l212")
    e01 = _segment_dist2(px, py, x0, y0, dx01, dy01, l201)
    e02 = _segment_dist2(px, py, x0, y0, dx02, dy02, l202)
    e12 = _segment_dist2(px, py, x1, y1, dx12, dy12, l212)
    # A degenerate edge measures the distance to its second vertex.
    for e, short, bx, by in ((e01, "short01", ax1, ay1), (e02, "short02", ax2, ay2), (e12, "short12", ax2, ay2)):
        degenerate = torch.nonzero(table[short].index_select(0, face)).squeeze(1)
        if degenerate.numel():
            e[degenerate] = bx[degenerate] * bx[degenerate] + by[degenerate] * by[degenerate]
    dist = torch.where((e01 <= e02) & (e01 <= e12), e01, torch.where(e02 <= e12, e02, e12))
    near = ((w0 > 0) & (w1 > 0) & (w2 > 0)) | (dist < blur_radius)
    keep = torch.nonzero(near).squeeze(1)
    face, xi_ndc, yi_ndc, dist, w0, w1, w2 = (
        t.index_select(0, keep) for t in (face, xi_ndc, yi_ndc, dist, w0, w1, w2)
    )

    # Pass 2: perspective correction, clipping and depth for what is left.
    z0, z1, z2 = per_face("z0", "z1", "z2")
    if perspective_correct:
        t0, t1, t2 = w0 * z1 * z2, z0 * w1 * z2, z0 * z1 * w2
        denom = (t0 + t1 + t2).clamp(min=K_EPSILON)
        w0, w1, w2 = t0 / denom, t1 / denom, t2 / denom
    c0, c1, c2, pz = _clip_and_depth(w0, w1, w2, z0, z1, z2, clip_barycentric_coords)
    inside = (w0 > 0) & (w1 > 0) & (w2 > 0)
    ok = torch.nonzero((pz >= 0) & (inside | (dist < blur_radius))).squeeze(1)
    face, yi_ndc, xi_ndc, inside, dist, pz = (t.index_select(0, ok) for t in (face, yi_ndc, xi_ndc, inside, dist, pz))
    key = (mesh_of_face.index_select(0, face) * H + (H - 1 - yi_ndc)) * W + (W - 1 - xi_ndc)
    sdist = torch.where(inside, -dist, dist)
    bclip = torch.stack((c0, c1, c2), dim=-1).index_select(0, ok)
    return key, face, pz, sdist, bclip


class _LastFragments:
    """The last forward's outputs, to serve a call that asks for fewer faces per pixel.

    The cow's two soft renderers (silhouette, 100 faces per pixel, and
    textured, 50) rasterize the same faces from the same camera with the
    same blur radius in every iteration. The nearest 50 of a pixel are the
    first 50 of its nearest 100, in the same order, so the second call is a
    slice of the first instead of a second rasterization.
    """

    key = None  # (settings, detached copy of face_verts)
    outputs = None  # pix_to_face, zbuf, bary, dists, slot, slot_face

    @classmethod
    def lookup(cls, face_verts, settings, faces_per_pixel):
        if cls.key is None:
            return None
        (cached_settings, cached_k), cached_face_verts = cls.key
        if cached_settings != settings or faces_per_pixel > cached_k:
            return None
        if cached_face_verts.shape != face_verts.shape or not torch.equal(cached_face_verts, face_verts):
            return None
        pix_to_face, zbuf, bary, dists, slot, slot_face = cls.outputs
        K = faces_per_pixel
        first_k = [t[..., :K, :] if t.dim() == 5 else t[..., :K] for t in (pix_to_face, zbuf, bary, dists)]
        keep = torch.nonzero(slot % cached_k < K).squeeze(1)
        slot_k = slot[keep]
        slot_k = slot_k // cached_k * K + slot_k % cached_k
        return [t.clone(memory_format=torch.contiguous_format) for t in first_k] + [slot_k, slot_face[keep]]

    @classmethod
    def store(cls, face_verts, settings, faces_per_pixel, outputs):
        cls.key = ((settings, faces_per_pixel), face_verts.detach().clone())
        cls.outputs = outputs

    @classmethod
    def clear(cls):
        cls.key = cls.outputs = None


class _FastRasterizeFaceVerts(torch.autograd.Function):
    """Autograd wrapper: vectorised forward, chunked recomputing backward."""

    @staticmethod
    def forward(ctx, face_verts, mesh_to_face_first_idx, num_faces_per_mesh, image_size,
                blur_radius, faces_per_pixel, perspective_correct, clip_barycentric_coords,
                cull_backfaces):
        settings = (tuple(num_faces_per_mesh.tolist()), image_size, blur_radius, perspective_correct,
                    clip_barycentric_coords, cull_backfaces)
        outputs = _LastFragments.lookup(face_verts, settings, faces_per_pixel)
        if outputs is None:
            _LastFragments.clear()  # free the old outputs before making new ones
            outputs = _rasterize_forward(
                face_verts, mesh_to_face_first_idx, num_faces_per_mesh, image_size, blur_radius,
                faces_per_pixel, perspective_correct, clip_barycentric_coords, cull_backfaces,
            )
            _LastFragments.store(face_verts, settings, faces_per_pixel, outputs)
        pix_to_face, zbuf, bary, dists, slot, slot_face = outputs
        # The backward needs only the filled entries: where they are and their face.
        ctx.save_for_backward(face_verts, slot, slot_face)
        ctx.mark_non_differentiable(pix_to_face)
        # Unused outputs (a silhouette shader reads only dists) then arrive as
        # None instead of dense zero tensors that cost time to fill and scan.
        ctx.set_materialize_grads(False)
        ctx.shape = pix_to_face.shape
        ctx.perspective_correct = perspective_correct
        ctx.clip_barycentric_coords = clip_barycentric_coords
        return pix_to_face, zbuf, bary, dists

    @staticmethod
    def backward(ctx, grad_pix_to_face, grad_zbuf, grad_bary, grad_dists):
        face_verts, slot, slot_face = ctx.saved_tensors
        N, H, W, K = ctx.shape
        grad_face_verts = torch.zeros_like(face_verts)
        # Upstream gradients of the filled entries; only those that are non-zero matter.
        g_zbuf = None if grad_zbuf is None else grad_zbuf.reshape(-1).index_select(0, slot)
        g_dists = None if grad_dists is None else grad_dists.reshape(-1).index_select(0, slot)
        g_bary = None if grad_bary is None else grad_bary.reshape(-1, 3).index_select(0, slot)
        nonzero = [g != 0 for g in (g_zbuf, g_dists) if g is not None]
        if g_bary is not None:
            nonzero.append((g_bary != 0).any(dim=1))
        if not nonzero:
            return (grad_face_verts,) + (None,) * 8
        live = nonzero[0]
        for g in nonzero[1:]:
            live |= g
        entries = torch.nonzero(live).squeeze(1)
        x_ndc = pixel_centers_ndc(W, H)
        y_ndc = pixel_centers_ndc(H, W)
        for chunk in entries.split(ENTRIES_PER_CHUNK):
            face = slot_face[chunk]
            pixel = slot[chunk] // K
            px = x_ndc[W - 1 - pixel % W]
            py = y_ndc[H - 1 - (pixel // W) % H]
            fv = face_verts.detach()[face].requires_grad_(True)
            with torch.enable_grad():
                _, bclip, pz, dist, inside = _face_terms(
                    fv, px, py,
                    perspective_correct=ctx.perspective_correct,
                    clip_barycentric_coords=ctx.clip_barycentric_coords,
                    detach_t=True,
                    stock_perspective_gradient=STOCK_PERSPECTIVE_GRADIENT,
                )
                total = torch.zeros((), dtype=fv.dtype)
                if g_zbuf is not None:
                    total = total + (g_zbuf[chunk] * pz).sum()
                if g_dists is not None:
                    signed = torch.where(inside, -dist, dist)
                    total = total + (g_dists[chunk] * signed).sum()
                if g_bary is not None:
                    total = total + (g_bary[chunk] * bclip).sum()
                (g,) = torch.autograd.grad(total, fv)
            grad_face_verts.index_add_(0, face, g)
        return grad_face_verts, None, None, None, None, None, None, None, None


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
):
    """rasterize_meshes() with the fast CPU path where it applies."""
    verts_packed = meshes.verts_packed()
    faces_packed = meshes.faces_packed()
    face_verts = verts_packed[faces_packed]
    needs_clipping = z_clip_value is not None and bool((face_verts[..., 2] < z_clip_value).any())
    if verts_packed.is_cuda or cull_to_frustum or needs_clipping:
        return rasterize_meshes(
            meshes, image_size=image_size, blur_radius=blur_radius,
            faces_per_pixel=faces_per_pixel, bin_size=bin_size,
            max_faces_per_bin=max_faces_per_bin, perspective_correct=perspective_correct,
            clip_barycentric_coords=clip_barycentric_coords, cull_backfaces=cull_backfaces,
            z_clip_value=z_clip_value, cull_to_frustum=cull_to_frustum,
        )
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    _reuse_freed_large_blocks()
    return _FastRasterizeFaceVerts.apply(
        face_verts,
        meshes.mesh_to_faces_packed_first_idx(),
        meshes.num_faces_per_mesh(),
        tuple(int(s) for s in image_size),
        float(blur_radius),
        int(faces_per_pixel),
        bool(perspective_correct),
        bool(clip_barycentric_coords),
        bool(cull_backfaces),
    )
