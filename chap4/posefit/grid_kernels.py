"""The grid's scores (posefit.initial.score_grid) as one compiled loop: each (view, roll) pair's IoU with the
mask, the mask sampled where the pair puts each of the view's pixels.

Why compiled: a 6-DoF fit of a photo scores its masks some twenty times against the grid's 5,760 (view,
roll) pairs of 64 x 64 pixels (with something in front of the object, at three scales), and with torch
each score went through a dozen tensor operations on every pair's pixels (the warped mask, the pixels'
overlap and union, their sums): about ten seconds of a 45-second cow fit, most of it writing and reading
those tensors. Here each pixel is sampled and counted in one pass, nothing in between is stored.

The arithmetic is score_grid's tensor form's, per pixel: where the pair puts the view's pixel (the view's
centroid moved to the mask's, turned by the roll, scaled; one affine map per pair), grid_sample's bilinear
sample there (align_corners=False, zeros outside), the overlap and union. It runs in float64 and sums in
another order than torch's float32, so the scores agree with it to float rounding (2e-7 on a photo's
grid), not to the bit (the tests compare both). The pairs are shared among the CPU's cores (numba's
prange: each pair is summed by one thread, so the numbers do not depend on how many).
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, parallel=True)
def score_pairs(views, view_x, view_y, view_centroid, rot, scale, centroid, mask, care, pair_view, pair_roll, iou):
    """Each listed pair's IoU with the mask at each scale.

    views (V, n, n) float32: the views' silhouettes; view_x (n,), view_y (n,): the NDC of their pixels'
    columns and rows; view_centroid (V, 2); rot (rolls, 2, 2): the rolls' row-vector rotations; scale (S, V):
    each scale's factor on each view; centroid (S, 2): where each scale puts the view's centroid in the mask
    (NDC); mask (H, W), care (H, W) float32 (care empty: none, every pixel counts); pair_view, pair_roll
    (P,); iou (S, P) float32, written.
    """
    n = views.shape[1]
    H, W = mask.shape
    side = min(H, W)
    with_care = care.shape[0] > 0
    ax = -side / W  # grid_sample's x per mask NDC x (its +x is the image's right, NDC's +X its left)
    ay = -side / H
    # The images with a border of zeros: a sample's four neighbours are then read without bounds checks.
    padded = np.zeros((2, H + 2, W + 2), dtype=np.float32)
    padded[0, 1 : H + 1, 1 : W + 1] = mask
    if with_care:
        padded[1, 1 : H + 1, 1 : W + 1] = care
    for k in numba.prange(len(pair_view)):
        v, r = pair_view[k], pair_roll[k]
        cx, cy = float(view_centroid[v, 0]), float(view_centroid[v, 1])
        r00, r01, r10, r11 = float(rot[r, 0, 0]), float(rot[r, 0, 1]), float(rot[r, 1, 0]), float(rot[r, 1, 1])
        for s in range(scale.shape[0]):
            factor = float(scale[s, v])
            # grid_sample's x = -(mask centroid + factor * ((view NDC - view centroid) @ rot)) * side / W, and
            # its pixel ix = ((x + 1) * W - 1) / 2: affine in the view pixel's NDC (gx, gy the same in
            # grid_sample's [-1, 1] coordinates, for the care rule). In the padded image ix + 1.
            gx0 = ax * (centroid[s, 0] - factor * (cx * r00 + cy * r10))
            gxx, gxy = ax * factor * r00, ax * factor * r10
            gy0 = ay * (centroid[s, 1] - factor * (cx * r01 + cy * r11))
            gyx, gyy = ay * factor * r01, ay * factor * r11
            both_sum = 0.0
            union_sum = 0.0
            for a in range(n):
                y_ndc = float(view_y[a])
                for b in range(n):
                    x_ndc = float(view_x[b])
                    gx = gx0 + gxx * x_ndc + gxy * y_ndc
                    gy = gy0 + gyx * x_ndc + gyy * y_ndc
                    ix = ((gx + 1.0) * W - 1.0) / 2.0 + 1.0
                    iy = ((gy + 1.0) * H - 1.0) / 2.0 + 1.0
                    warped = 0.0
                    weight = 1.0
                    if 0.0 <= ix < W + 1.0 and 0.0 <= iy < H + 1.0:
                        x0, y0 = int(ix), int(iy)
                        e, so = ix - x0, iy - y0
                        we, no = 1.0 - e, 1.0 - so
                        warped = ((padded[0, y0, x0] * we + padded[0, y0, x0 + 1] * e) * no
                                  + (padded[0, y0 + 1, x0] * we + padded[0, y0 + 1, x0 + 1] * e) * so)
                        if with_care and abs(gx) <= 1.0 and abs(gy) <= 1.0:
                            weight = ((padded[1, y0, x0] * we + padded[1, y0, x0 + 1] * e) * no
                                      + (padded[1, y0 + 1, x0] * we + padded[1, y0 + 1, x0 + 1] * e) * so)
                    seen = views[v, a, b]
                    if seen > 0.0:
                        both_sum += seen * warped * weight
                        union_sum += (seen + warped - seen * warped) * weight
                    else:
                        union_sum += warped * weight
            iou[s, k] = both_sum / max(union_sum, 1e-9)
