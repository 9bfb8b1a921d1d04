"""The fast rasterizer's inner loops, compiled with numba: one pass over the faces, top-K per pixel.

Why compiled: at a tracker's size (160x120, a few thousand faces, a few
thousand filled entries) the vectorised torch form of the same work spent
its time in the overhead of a few hundred small tensor operations, not in
arithmetic. A loop compiled once does the same float32 arithmetic, in the
same order, as fast_raster's torch formulas (and PyTorch3D's C++ kernel),
without that overhead. The loops release the GIL (nogil), so a tracker's
read-ahead thread runs beside them. fast_raster.py owns the interface, the per-face
terms and the validation; this module only fills the output arrays.

Every formula is written operation by operation in float32 (numba keeps
float32 * float32 in float32 and, without fastmath, contracts nothing into
fused multiply-adds), so the results are the torch path's to the bit.
"""

from __future__ import annotations

import functools

import numba
import numpy as np

from posefit import threads

F32 = np.float32


@numba.njit(cache=True, inline="always")
def _segment_dist2(px, py, ax, ay, dx, dy, l2_guarded):
    """PointLineDistanceForward for a segment that is not degenerate (fast_raster._segment_dist2)."""
    t = (dx * (px - ax) + dy * (py - ay)) / l2_guarded
    if t < F32(0.0):
        t = F32(0.0)
    elif t > F32(1.0):
        t = F32(1.0)
    qx = px - (ax + t * dx)
    qy = py - (ay + t * dy)
    return qx * qx + qy * qy


@numba.njit(cache=True, inline="always")
def _guess(centres, value):
    """Where value falls among the ascending, evenly spaced pixel centres: an index near the answer, in
    [0, len], from the spacing (the callers walk from it to the exact answer by the kernel's comparisons; a
    face's box is a few pixels wide, and a binary search over a row cost a sixth of the rasterization)."""
    n = len(centres)
    if n < 2:
        return 0
    guess = (value - centres[0]) / (centres[n - 1] - centres[0]) * (n - 1)
    if not guess > 0:  # below the first centre, or not a number
        return 0
    if guess > n:
        return n
    return int(guess)


@numba.njit(cache=True, inline="always")
def _first_at_least(centres, value):
    """torch.searchsorted(centres, value): the first index whose centre is >= value (len when none)."""
    i = _guess(centres, value)
    while i > 0 and centres[i - 1] >= value:
        i -= 1
    while i < len(centres) and centres[i] < value:
        i += 1
    return i


@numba.njit(cache=True, inline="always")
def _first_above(centres, value):
    """torch.searchsorted(centres, value, right=True): the first index whose centre is > value."""
    i = _guess(centres, value)
    while i > 0 and centres[i - 1] > value:
        i -= 1
    while i < len(centres) and centres[i] <= value:
        i += 1
    return i


def rasterize(face_verts, mesh_of_face, x_ndc, y_ndc, H, W, K, blur, perspective_correct,
              clip_barycentric_coords, cull_backfaces, pix_to_face, zbuf, bary, dists, filled):
    """Every face against the pixel centres in its blur-expanded box; the K nearest kept per pixel.

    face_verts: (F, 3, 3) float32 in NDC; mesh_of_face: (F,) which image each face draws into;
    x_ndc, y_ndc: pixel centres, ascending (index i is column W - 1 - i, row H - 1 - i). Fills
    pix_to_face, zbuf, dists (P, K), bary (P, K, 3) and filled (P,) entries per pixel, P = N * H * W,
    the outputs holding -1 and 0 on entry. Faces go in index order, so an equal depth goes after the
    faces already kept (lower indices), as a stable sort by depth would put it.

    The rows are shared among numba's threads (posefit.threads), each thread taking every face for its
    own rows: each pixel sees the faces in the same order as alone, so the outputs are the same.
    """
    threads.share(_rasterize_bands, functools.partial(_rasterize_rows, 0, len(y_ndc)), face_verts, mesh_of_face,
                  x_ndc, y_ndc, H, W, K, blur, perspective_correct, clip_barycentric_coords, cull_backfaces,
                  pix_to_face, zbuf, bary, dists, filled)


@numba.njit(cache=True, nogil=True, parallel=True)
def _rasterize_bands(bands, face_verts, mesh_of_face, x_ndc, y_ndc, H, W, K, blur, perspective_correct,
                     clip_barycentric_coords, cull_backfaces, pix_to_face, zbuf, bary, dists, filled):
    """rasterize's rows in `bands` runs, one per thread."""
    rows = len(y_ndc)
    for band in numba.prange(bands):
        _rasterize_rows(band * rows // bands, (band + 1) * rows // bands, face_verts, mesh_of_face, x_ndc, y_ndc,
                        H, W, K, blur, perspective_correct, clip_barycentric_coords, cull_backfaces, pix_to_face,
                        zbuf, bary, dists, filled)


@numba.njit(cache=True, nogil=True)
def _rasterize_rows(lo, hi, face_verts, mesh_of_face, x_ndc, y_ndc, H, W, K, blur, perspective_correct,
                    clip_barycentric_coords, cull_backfaces, pix_to_face, zbuf, bary, dists, filled):
    """rasterize's pixels whose centres are y_ndc[lo:hi] (the image's rows H - hi .. H - 1 - lo)."""
    eps = F32(1e-8)
    r = np.sqrt(blur)
    for f in range(face_verts.shape[0]):
        x0, y0, z0 = face_verts[f, 0, 0], face_verts[f, 0, 1], face_verts[f, 0, 2]
        x1, y1, z1 = face_verts[f, 1, 0], face_verts[f, 1, 1], face_verts[f, 1, 2]
        x2, y2, z2 = face_verts[f, 2, 0], face_verts[f, 2, 1], face_verts[f, 2, 2]
        # Faces the kernel skips whatever the pixel: zero area (tested in double, as C++ does), a vertex
        # behind the camera (or not a number), or, when asked, facing away.
        signed_area = (x0 - x1) * (y2 - y1) - (y0 - y1) * (x2 - x1)
        area64 = np.float64(signed_area)
        if not (area64 > 1e-8 or area64 < -1e-8):
            continue
        if not (np.float64(z0) >= 1e-8 and np.float64(z1) >= 1e-8 and np.float64(z2) >= 1e-8):
            continue
        if cull_backfaces and not signed_area >= 0:
            continue
        # The pixel centres inside the box, by the kernel's float32 comparisons (centre >= min, <= max).
        ix0 = _first_at_least(x_ndc, min(x0, x1, x2) - r)
        ix1 = _first_above(x_ndc, max(x0, x1, x2) + r)
        iy0 = max(lo, _first_at_least(y_ndc, min(y0, y1, y2) - r))
        iy1 = min(hi, _first_above(y_ndc, max(y0, y1, y2) + r))
        if ix1 <= ix0 or iy1 <= iy0:
            continue
        # Per-face terms of the formulas (the same float32 numbers per face as per pixel).
        area = F32(np.float64((x2 - x0) * (y1 - y0) - (y2 - y0) * (x1 - x0)) + 1e-8)
        dx01, dy01, dx02, dy02 = x1 - x0, y1 - y0, x2 - x0, y2 - y0
        dx12, dy12, dx20, dy20 = x2 - x1, y2 - y1, x0 - x2, y0 - y2
        l201 = dx01 * dx01 + dy01 * dy01
        l202 = dx02 * dx02 + dy02 * dy02
        l212 = dx12 * dx12 + dy12 * dy12
        # A degenerate edge measures the distance to its second vertex.
        short01, short02, short12 = l201 <= eps, l202 <= eps, l212 <= eps
        base = mesh_of_face[f] * H
        for yi in range(iy0, iy1):
            py = y_ndc[yi]
            row = base + (H - 1 - yi)
            for xi in range(ix0, ix1):
                px = x_ndc[xi]
                # Pass 1: plain barycentrics (their signs are the corrected ones') and the distance to
                # the triangle.
                ax0, ay0 = px - x0, py - y0
                ax1, ay1 = px - x1, py - y1
                ax2, ay2 = px - x2, py - y2
                w0 = (ax1 * dy12 - ay1 * dx12) / area
                w1 = (ax2 * dy20 - ay2 * dx20) / area
                w2 = (ax0 * dy01 - ay0 * dx01) / area
                e01 = ax1 * ax1 + ay1 * ay1 if short01 else _segment_dist2(px, py, x0, y0, dx01, dy01, l201)
                e02 = ax2 * ax2 + ay2 * ay2 if short02 else _segment_dist2(px, py, x0, y0, dx02, dy02, l202)
                e12 = ax2 * ax2 + ay2 * ay2 if short12 else _segment_dist2(px, py, x1, y1, dx12, dy12, l212)
                if e01 <= e02 and e01 <= e12:
                    dist = e01
                elif e02 <= e12:
                    dist = e02
                else:
                    dist = e12
                near_edge = dist < blur
                if not ((w0 > 0 and w1 > 0 and w2 > 0) or near_edge):
                    continue
                # Pass 2: perspective correction (with PyTorch3D 0.7.9's floor), clipping, depth.
                if perspective_correct:
                    t0 = w0 * z1 * z2
                    t1 = z0 * w1 * z2
                    t2 = z0 * z1 * w2
                    denom = t0 + t1 + t2
                    if denom < eps:
                        denom = eps
                    w0, w1, w2 = t0 / denom, t1 / denom, t2 / denom
                if clip_barycentric_coords:
                    c0 = w0 if w0 > 0 else F32(0.0)
                    c1 = w1 if w1 > 0 else F32(0.0)
                    c2 = w2 if w2 > 0 else F32(0.0)
                    s = c0 + c1 + c2
                    if s < F32(1e-5):
                        s = F32(1e-5)
                    c0, c1, c2 = c0 / s, c1 / s, c2 / s
                else:
                    c0, c1, c2 = w0, w1, w2
                pz = c0 * z0 + c1 * z1 + c2 * z2
                inside = w0 > 0 and w1 > 0 and w2 > 0
                if not (pz >= 0 and (inside or near_edge)):
                    continue
                # Keep the K nearest of this pixel, nearest first.
                p = row * W + (W - 1 - xi)
                count = filled[p]
                if count == K and pz >= zbuf[p, K - 1]:
                    continue
                k = count if count < K else K - 1
                while k > 0 and zbuf[p, k - 1] > pz:
                    pix_to_face[p, k] = pix_to_face[p, k - 1]
                    zbuf[p, k] = zbuf[p, k - 1]
                    dists[p, k] = dists[p, k - 1]
                    bary[p, k, 0] = bary[p, k - 1, 0]
                    bary[p, k, 1] = bary[p, k - 1, 1]
                    bary[p, k, 2] = bary[p, k - 1, 2]
                    k -= 1
                pix_to_face[p, k] = f
                zbuf[p, k] = pz
                dists[p, k] = -dist if inside else dist
                bary[p, k, 0] = c0
                bary[p, k, 1] = c1
                bary[p, k, 2] = c2
                if count < K:
                    filled[p] = count + 1


@numba.njit(cache=True, nogil=True)
def filled_entries(pix_to_face, filled):
    """The flat (pixel, k) index of every filled entry, in that order, and its face."""
    K = pix_to_face.shape[1]
    slot = np.empty(filled.sum(), dtype=np.int64)
    face = np.empty(len(slot), dtype=np.int64)
    n = 0
    for p in range(len(filled)):
        for k in range(filled[p]):
            slot[n] = p * K + k
            face[n] = pix_to_face[p, k]
            n += 1
    return slot, face


@numba.njit(cache=True, inline="always")
def _edge_grad(g, px, py, ax, ay, bx, by, grad, a, b):
    """Add g times the gradient of EdgeFunctionForward(p, a, b) to the rows a and b of grad (3, 3).

    (p.x - a.x) * (b.y - a.y) - (p.y - a.y) * (b.x - a.x): d/da = (p.y - b.y, b.x - p.x),
    d/db = (a.y - p.y, p.x - a.x).
    """
    grad[a, 0] += g * (py - by)
    grad[a, 1] += g * (bx - px)
    grad[b, 0] += g * (ay - py)
    grad[b, 1] += g * (px - ax)


def rasterize_backward(face_verts, slot, slot_face, x_ndc, y_ndc, H, W, K, g_zbuf, g_dists, g_bary,
                       perspective_correct, clip_barycentric_coords, grad_face_verts):
    """Add the gradient of sum(g_zbuf * zbuf + g_dists * dists + g_bary * bary) to grad_face_verts (F, 3, 3).

    slot, slot_face: the filled entries (flat (pixel, k) index) and their faces; g_zbuf, g_dists (E,) and
    g_bary (E, 3): the upstream gradients of those entries (zeros for an output that has none). The
    derivative of the forward's formulas (fast_raster._face_terms), by hand: like PyTorch3D's backward we
    hold the closest-point parameter t of an edge fixed, the area's epsilon is a constant, and a floored
    perspective denominator (or clipped sum) passes no gradient, as torch.clamp's derivative has it.

    The entries are shared among numba's threads (posefit.threads), each entry's gradient computed on its
    own; they are added into grad_face_verts afterwards, by one thread in the entries' order, so the sums
    are the same.
    """
    E = len(slot)
    per_entry = np.empty((E, 3, 3), dtype=np.float32)
    used = np.zeros(E, dtype=np.bool_)
    threads.share(_entry_gradients_shared, functools.partial(_entry_gradients, 0, E), face_verts, slot, slot_face,
                  x_ndc, y_ndc, H, W, K, g_zbuf, g_dists, g_bary, perspective_correct, clip_barycentric_coords,
                  per_entry, used)
    _add_entry_gradients(per_entry, used, slot_face, grad_face_verts)


@numba.njit(cache=True, nogil=True, parallel=True)
def _entry_gradients_shared(chunks, face_verts, slot, slot_face, x_ndc, y_ndc, H, W, K, g_zbuf, g_dists, g_bary,
                            perspective_correct, clip_barycentric_coords, per_entry, used):
    """_entry_gradients of all the entries, in `chunks` runs, one per thread."""
    E = len(slot)
    for chunk in numba.prange(chunks):
        _entry_gradients(chunk * E // chunks, (chunk + 1) * E // chunks, face_verts, slot, slot_face, x_ndc, y_ndc,
                         H, W, K, g_zbuf, g_dists, g_bary, perspective_correct, clip_barycentric_coords, per_entry,
                         used)


@numba.njit(cache=True, nogil=True)
def _add_entry_gradients(per_entry, used, slot_face, grad_face_verts):
    """Each used entry's gradient added into its face's, in the entries' order."""
    for n in range(len(slot_face)):
        if used[n]:
            f = slot_face[n]
            for i in range(3):
                for j in range(3):
                    grad_face_verts[f, i, j] += per_entry[n, i, j]


@numba.njit(cache=True, nogil=True)
def _entry_gradients(start, stop, face_verts, slot, slot_face, x_ndc, y_ndc, H, W, K, g_zbuf, g_dists, g_bary,
                     perspective_correct, clip_barycentric_coords, per_entry, used):
    """rasterize_backward's entries start..stop-1: each one's gradient in its face's corners, per_entry[n]
    (3, 3), and used[n] set where its upstream gradient is not zero."""
    eps = F32(1e-8)
    grad = np.zeros((3, 3), dtype=np.float32)
    for n in range(start, stop):
        gz, gd = g_zbuf[n], g_dists[n]
        gb0, gb1, gb2 = g_bary[n, 0], g_bary[n, 1], g_bary[n, 2]
        if gz == 0 and gd == 0 and gb0 == 0 and gb1 == 0 and gb2 == 0:
            continue
        f = slot_face[n]
        pixel = slot[n] // K
        px = x_ndc[W - 1 - pixel % W]
        py = y_ndc[H - 1 - (pixel // W) % H]
        x0, y0, z0 = face_verts[f, 0, 0], face_verts[f, 0, 1], face_verts[f, 0, 2]
        x1, y1, z1 = face_verts[f, 1, 0], face_verts[f, 1, 1], face_verts[f, 1, 2]
        x2, y2, z2 = face_verts[f, 2, 0], face_verts[f, 2, 1], face_verts[f, 2, 2]
        grad[:] = 0
        # Forward, keeping what the backward needs.
        area = F32(np.float64((x2 - x0) * (y1 - y0) - (y2 - y0) * (x1 - x0)) + 1e-8)
        e0 = (px - x1) * (y2 - y1) - (py - y1) * (x2 - x1)
        e1 = (px - x2) * (y0 - y2) - (py - y2) * (x0 - x2)
        e2 = (px - x0) * (y1 - y0) - (py - y0) * (x1 - x0)
        w0, w1, w2 = e0 / area, e1 / area, e2 / area
        if perspective_correct:
            t0 = w0 * z1 * z2
            t1 = z0 * w1 * z2
            t2 = z0 * z1 * w2
            total = t0 + t1 + t2
            denom = total if total >= eps else eps
            v0, v1, v2 = t0 / denom, t1 / denom, t2 / denom
        else:
            v0, v1, v2 = w0, w1, w2
        if clip_barycentric_coords:
            c0 = v0 if v0 > 0 else F32(0.0)
            c1 = v1 if v1 > 0 else F32(0.0)
            c2 = v2 if v2 > 0 else F32(0.0)
            csum = c0 + c1 + c2
            s = csum if csum >= F32(1e-5) else F32(1e-5)
            b0, b1, b2 = c0 / s, c1 / s, c2 / s
        else:
            b0, b1, b2 = v0, v1, v2
        inside = v0 > 0 and v1 > 0 and v2 > 0

        # Depth: pz = b0 z0 + b1 z1 + b2 z2.
        gb0, gb1, gb2 = gb0 + gz * z0, gb1 + gz * z1, gb2 + gz * z2
        grad[0, 2] += gz * b0
        grad[1, 2] += gz * b1
        grad[2, 2] += gz * b2
        # Clipping: b = max(v, 0) / max(sum, 1e-5).
        if clip_barycentric_coords:
            gs = -(gb0 * c0 + gb1 * c1 + gb2 * c2) / (s * s)
            gc0, gc1, gc2 = gb0 / s, gb1 / s, gb2 / s
            if csum >= F32(1e-5):
                gc0, gc1, gc2 = gc0 + gs, gc1 + gs, gc2 + gs
            gv0 = gc0 if v0 >= 0 else F32(0.0)
            gv1 = gc1 if v1 >= 0 else F32(0.0)
            gv2 = gc2 if v2 >= 0 else F32(0.0)
        else:
            gv0, gv1, gv2 = gb0, gb1, gb2
        # Perspective correction: v = t / max(t0 + t1 + t2, eps), t0 = w0 z1 z2, t1 = z0 w1 z2, t2 = z0 z1 w2.
        if perspective_correct:
            gt0, gt1, gt2 = gv0 / denom, gv1 / denom, gv2 / denom
            if total >= eps:
                gden = -(gv0 * t0 + gv1 * t1 + gv2 * t2) / (denom * denom)
                gt0, gt1, gt2 = gt0 + gden, gt1 + gden, gt2 + gden
            gw0, gw1, gw2 = gt0 * z1 * z2, gt1 * z0 * z2, gt2 * z0 * z1
            grad[0, 2] += gt1 * w1 * z2 + gt2 * z1 * w2
            grad[1, 2] += gt0 * w0 * z2 + gt2 * z0 * w2
            grad[2, 2] += gt0 * w0 * z1 + gt1 * z0 * w1
        else:
            gw0, gw1, gw2 = gv0, gv1, gv2
        # Barycentrics: w_i = e_i / area, e0 = edge(p, v1, v2), e1 = edge(p, v2, v0), e2 = edge(p, v0, v1),
        # area = edge(v2, v0, v1).
        garea = -(gw0 * w0 + gw1 * w1 + gw2 * w2) / area
        _edge_grad(gw0 / area, px, py, x1, y1, x2, y2, grad, 1, 2)
        _edge_grad(gw1 / area, px, py, x2, y2, x0, y0, grad, 2, 0)
        _edge_grad(gw2 / area, px, py, x0, y0, x1, y1, grad, 0, 1)
        _edge_grad(garea, x2, y2, x0, y0, x1, y1, grad, 0, 1)
        grad[2, 0] += garea * (y1 - y0)  # the area's own p is v2
        grad[2, 1] -= garea * (x1 - x0)
        # Signed distance to the nearest edge (ties in the order 01, 02, 12), t held fixed.
        if gd != 0:
            best_e, best_a, best_b, best_q_x, best_q_y, best_t, best_short = F32(0.0), 0, 0, F32(0.0), F32(0.0), F32(0.0), False
            for edge in range(3):
                if edge == 0:
                    a, b, ax, ay, bx, by = 0, 1, x0, y0, x1, y1
                elif edge == 1:
                    a, b, ax, ay, bx, by = 0, 2, x0, y0, x2, y2
                else:
                    a, b, ax, ay, bx, by = 1, 2, x1, y1, x2, y2
                dx, dy = bx - ax, by - ay
                l2 = dx * dx + dy * dy
                t = (dx * (px - ax) + dy * (py - ay)) / (l2 if l2 > eps else F32(1.0))
                if t < F32(0.0):
                    t = F32(0.0)
                elif t > F32(1.0):
                    t = F32(1.0)
                if l2 <= eps:
                    qx, qy = px - bx, py - by
                else:
                    qx, qy = px - (ax + t * dx), py - (ay + t * dy)
                e = qx * qx + qy * qy
                # The stock order: e01 wins ties with both, e02 wins a tie with e12.
                if edge == 0 or e < best_e:
                    best_e, best_a, best_b, best_q_x, best_q_y, best_t, best_short = e, a, b, qx, qy, t, l2 <= eps
            g = -gd if inside else gd
            if best_short:  # |p - b|^2
                grad[best_b, 0] += g * F32(-2.0) * best_q_x
                grad[best_b, 1] += g * F32(-2.0) * best_q_y
            else:  # |p - (a + t (b - a))|^2
                grad[best_a, 0] += g * F32(-2.0) * best_q_x * (F32(1.0) - best_t)
                grad[best_a, 1] += g * F32(-2.0) * best_q_y * (F32(1.0) - best_t)
                grad[best_b, 0] += g * F32(-2.0) * best_q_x * best_t
                grad[best_b, 1] += g * F32(-2.0) * best_q_y * best_t
        used[n] = True
        for i in range(3):
            for j in range(3):
                per_entry[n, i, j] = grad[i, j]
