"""A fast CPU mesh rasterization op, a drop-in for PyTorch3D's rasterize_meshes (forward and backward).

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
  sort. The result is stock's `Fragments` (pix_to_face, zbuf, bary_coords,
  dists), nearest first, to float32 rounding: the tests require at least
  99.99% of the pix_to_face entries to be equal (two depths a rounding apart
  can sort the other way: 8 of 712,535 filled entries differ on the teapot
  at 256 px) and zbuf, bary_coords and dists within 1e-5 where the face is
  the same (tests/test_fast_raster.py; PyTorch3D's own rasterizer and
  renderer tests, run by benchmarks/peer_check.py). For speed, the per-face
  parts of the formulas are computed once per face, candidates go in chunks
  that fit the CPU cache, and the depth is only computed for candidates that
  pass the cheaper tests.
* backward: the kept (pixel, k) entries whose upstream gradient is non-zero
  are recomputed with differentiable torch operations, in chunks (so memory
  stays bounded), and autograd gives the gradients of the stock backward
  (the analytic derivative of the same formulas; like it we hold the
  closest-point parameter t of an edge fixed): within 1e-4 relative in the
  tests. One deliberate exception: where the perspective-correction
  denominator is floored, stock differentiates as if it were not (float32
  noise); we give the derivative of what the forward computes.
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

import operator

import torch
from pytorch3d.renderer.mesh.rasterize_meshes import kMaxFacesPerBin, rasterize_meshes
from pytorch3d.renderer.utils import parse_image_size

K_EPSILON = 1e-8  # kEpsilon in geometry_utils.h (a double there)
# Candidates per forward chunk: small enough that one chunk's arrays stay in
# the CPU cache (1 << 16 ran ~1.5x faster than 1 << 21 here), large enough
# that the Python overhead per chunk does not matter.
CANDIDATES_PER_CHUNK = 1 << 16
ENTRIES_PER_CHUNK = 1 << 17  # bounds the memory of one backward chunk
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


def _face_terms(fv, px, py, *, perspective_correct, clip_barycentric_coords, detach_t=False):
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
        denom = (t0 + t1 + t2).clamp(min=K_EPSILON)
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
    # The outputs first, as the C++ kernel makes them (a negative size fails here, with torch's message).
    pix_to_face = torch.full((N, H, W, K), -1, dtype=torch.int64)
    zbuf = torch.full((N, H, W, K), -1.0)
    bary = torch.full((N, H, W, K, 3), -1.0)
    dists = torch.full((N, H, W, K), -1.0)
    fv = face_verts.detach()
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
    def forward(ctx, face_verts, mesh_to_face_first_idx, num_faces_per_mesh, image_size,
                blur_radius, faces_per_pixel, perspective_correct, clip_barycentric_coords,
                cull_backfaces, give_to, take_from):
        settings = (tuple(num_faces_per_mesh.tolist()), image_size, blur_radius, perspective_correct,
                    clip_barycentric_coords, cull_backfaces)
        outputs = take_from.take(face_verts, settings, faces_per_pixel) if take_from is not None else None
        if outputs is None:
            outputs = _rasterize_forward(
                face_verts, mesh_to_face_first_idx, num_faces_per_mesh, image_size, blur_radius,
                faces_per_pixel, perspective_correct, clip_barycentric_coords, cull_backfaces,
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
        ctx.perspective_correct = perspective_correct
        ctx.clip_barycentric_coords = clip_barycentric_coords
        return pix_to_face, zbuf, bary, dists

    @staticmethod
    def backward(ctx, grad_pix_to_face, grad_zbuf, grad_bary, grad_dists):
        face_verts, slot, slot_face = ctx.saved_tensors
        N, H, W, K = ctx.shape
        grad_face_verts = torch.zeros_like(face_verts)
        no_grads = (None,) * 10
        # Upstream gradients of the filled entries; only those that are non-zero matter.
        g_zbuf = None if grad_zbuf is None else grad_zbuf.reshape(-1).index_select(0, slot)
        g_dists = None if grad_dists is None else grad_dists.reshape(-1).index_select(0, slot)
        g_bary = None if grad_bary is None else grad_bary.reshape(-1, 3).index_select(0, slot)
        nonzero = [g != 0 for g in (g_zbuf, g_dists) if g is not None]
        if g_bary is not None:
            nonzero.append((g_bary != 0).any(dim=1))
        if not nonzero:
            return (grad_face_verts,) + no_grads
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
):
    """rasterize_meshes() with the fast CPU path where it applies.

    give_to / take_from: a FragmentReuse to leave this call's outputs in, or
    to take a slice of an earlier call's from (see FragmentReuse). Without
    them nothing outlives the call but its outputs.
    """
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
    image_size, faces_per_pixel = _check_arguments(face_verts, image_size, faces_per_pixel, bin_size)
    return _FastRasterizeFaceVerts.apply(
        face_verts,
        meshes.mesh_to_faces_packed_first_idx(),
        meshes.num_faces_per_mesh(),
        image_size,
        float(blur_radius),
        faces_per_pixel,
        bool(perspective_correct),
        bool(clip_barycentric_coords),
        bool(cull_backfaces),
        give_to,
        take_from,
    )
