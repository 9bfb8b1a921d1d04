"""The face-colour blend (render.FaceColourShader) as two compiled loops, forward and its gradient; the soft
silhouette (render.soft_silhouette) likewise; and the normal equations of the frame's light
(targets.solve_light) as one.

Why compiled: a tracker's step blends each pixel's K faces' albedo and
view-space normal with softmax_rgb_blend's weights. Written with torch it is
some thirty small tensor operations forward and as many autograd nodes
backward, on a few thousand pixels: their overhead, not their arithmetic,
was a fifth of the step. Here each pixel is one pass over its K entries,
and the gradient another, written out below. The arithmetic is
softmax_rgb_blend's in float32, the same formulas; the sums run in a
different order than torch's, so the results agree to float rounding (the
tests compare both, and the gradients), not to the bit.

The blend, per pixel p with entries k (filled: the entry holds a face):
    prob_k = sigmoid(-dist_k / sigma) * filled_k
    zinv_k = (zfar - z_k) / (zfar - znear) * filled_k,  zmax = max(max_k zinv_k, eps)
    w_k = prob_k * exp((zinv_k - zmax) / gamma),        delta = max(exp((eps - zmax) / gamma), eps)
    out_c = (sum_k w_k colour_kc + delta * background_c) / (sum_k w_k + delta)
colour_k: the face's albedo (constant) and, with normals, its normal turned
to view coordinates (a gradient flows to it, and through it to R).

The soft silhouette is PyTorch3D's sigmoid_alpha_blend (its C++ CPU kernel's float and double steps in
its order: the same numbers on the tests' cases), without the RGBA image its Python side builds around
the alpha and that image's gradient nodes: a tracker's step spent about half a millisecond there.

The light's normal equations are summed in float64 (torch's einsum summed
them in float32): the same light to 1e-4.
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np
import torch

from posefit import threads

F32 = np.float32
EPS = 1e-10  # softmax_rgb_blend's


def _blend_forward(faces, dists, zbuf, albedo, normals, background, sigma, gamma, znear, zfar, out, weights, total,
                   delta_of, top):
    """softmax_rgb_blend's forward (see the module's docstring), pixel by pixel, the pixels shared among
    numba's threads (posefit.threads: each pixel's numbers are its own)."""
    threads.share(_blend_forward_shared, functools.partial(_blend_forward_pixels, 0, len(faces)), faces, dists, zbuf,
                  albedo, normals, background, sigma, gamma, znear, zfar, out, weights, total, delta_of, top)


@numba.njit(cache=True, nogil=True, parallel=True)
def _blend_forward_shared(chunks, faces, dists, zbuf, albedo, normals, background, sigma, gamma, znear, zfar, out,
                          weights, total, delta_of, top):
    """_blend_forward's pixels in `chunks` runs, one per thread."""
    P = faces.shape[0]
    for chunk in numba.prange(chunks):
        _blend_forward_pixels(chunk * P // chunks, (chunk + 1) * P // chunks, faces, dists, zbuf, albedo, normals,
                              background, sigma, gamma, znear, zfar, out, weights, total, delta_of, top)


@numba.njit(cache=True, nogil=True)
def _blend_forward_pixels(start, stop, faces, dists, zbuf, albedo, normals, background, sigma, gamma, znear, zfar, out,
                          weights, total, delta_of, top):
    """_blend_forward's pixels start..stop-1."""
    K = faces.shape[1]
    C = out.shape[1]
    acc = np.zeros(C, dtype=np.float32)  # (a pixel's sums, set to zero at each pixel)
    F = albedo.shape[0]
    eps = F32(EPS)
    depth_range = F32(zfar - znear)
    for p in range(start, stop):
        if faces[p, 0] < 0:  # no face: the background
            for c in range(C):
                out[p, c] = background[c]
            top[p] = -1
            continue
        zmax = F32(-np.inf)
        best = 0
        for k in range(K):
            zinv = (F32(zfar) - zbuf[p, k]) / depth_range if faces[p, k] >= 0 else F32(0.0)
            if zinv > zmax:
                zmax, best = zinv, k
        top[p] = best if zmax > eps else -1  # -1: the max was clamped (no gradient to it)
        if zmax < eps:
            zmax = eps
        s = F32(0.0)
        acc[:] = F32(0.0)
        for k in range(K):
            f = faces[p, k]
            if f < 0:
                weights[p, k] = F32(0.0)
                continue
            prob = F32(1.0) / (F32(1.0) + F32(math.exp(dists[p, k] / F32(sigma))))
            zinv = (F32(zfar) - zbuf[p, k]) / depth_range
            w = prob * F32(math.exp((zinv - zmax) / F32(gamma)))
            weights[p, k] = w
            s += w
            g = f % F
            for c in range(3):
                acc[c] += w * albedo[g, c]
            for c in range(3, C):
                acc[c] += w * normals[f, c - 3]
        delta = F32(math.exp((eps - zmax) / F32(gamma)))
        if delta < eps:
            delta = eps
        delta_of[p] = delta
        total[p] = s + delta
        for c in range(C):
            out[p, c] = (acc[c] + delta * background[c]) / total[p]


@numba.njit(cache=True, nogil=True)
def _blend_backward(grad, faces, dists, zbuf, albedo, normals, background, sigma, gamma, znear, zfar, out, weights,
                    total, delta_of, top, grad_dists, grad_zbuf, grad_normals):
    P, K = faces.shape
    C = out.shape[1]
    F = albedo.shape[0]
    eps = F32(EPS)
    depth_range = F32(zfar - znear)
    for p in range(P):
        if faces[p, 0] < 0:
            continue
        S = total[p]
        grad_delta = F32(0.0)
        for c in range(C):
            grad_delta += grad[p, c] * (background[c] - out[p, c])
        grad_delta /= S
        zmax_grad = F32(0.0)
        delta = delta_of[p]
        if delta > eps:  # delta = exp((eps - zmax) / gamma): d delta / d zmax = -delta / gamma
            zmax_grad -= grad_delta * delta / F32(gamma)
        for k in range(K):
            f = faces[p, k]
            if f < 0:
                continue
            g = f % F
            grad_w = F32(0.0)
            for c in range(3):
                grad_w += grad[p, c] * (albedo[g, c] - out[p, c])
            for c in range(3, C):
                grad_w += grad[p, c] * (normals[f, c - 3] - out[p, c])
                grad_normals[f, c - 3] += grad[p, c] * weights[p, k] / S
            grad_w /= S
            w = weights[p, k]
            # w = prob * exp((zinv - zmax) / gamma), prob = sigmoid(-dist / sigma)
            prob = F32(1.0) / (F32(1.0) + F32(math.exp(dists[p, k] / F32(sigma))))
            grad_dists[p, k] = -grad_w * w * (F32(1.0) - prob) / F32(sigma)
            grad_zinv = grad_w * w / F32(gamma)
            zmax_grad -= grad_zinv
            grad_zbuf[p, k] = -grad_zinv / depth_range
        b = top[p]
        if b >= 0:
            grad_zbuf[p, b] -= zmax_grad / depth_range


class _Blend(torch.autograd.Function):
    @staticmethod
    def forward(ctx, dists, zbuf, normals, faces, albedo, background, sigma, gamma, znear, zfar):
        P, K = faces.shape
        C = len(background)
        out = np.empty((P, C), dtype=np.float32)
        weights = np.empty((P, K), dtype=np.float32)
        total, delta, top = np.ones(P, np.float32), np.ones(P, np.float32), np.empty(P, np.int64)
        arrays = [t.detach().contiguous().numpy() for t in (faces, dists, zbuf, albedo, normals, background)]
        _blend_forward(*arrays, sigma, gamma, znear, zfar, out, weights, total, delta, top)
        ctx.arrays, ctx.constants = arrays, (sigma, gamma, znear, zfar)
        ctx.saved = (out, weights, total, delta, top)
        return torch.from_numpy(out)

    @staticmethod
    def backward(ctx, grad_out):
        faces, dists, zbuf, albedo, normals, background = ctx.arrays
        grad_dists, grad_zbuf = np.zeros_like(dists), np.zeros_like(zbuf)
        grad_normals = np.zeros_like(normals)
        _blend_backward(np.ascontiguousarray(grad_out.numpy(), dtype=np.float32), faces, dists, zbuf, albedo, normals,
                        background, *ctx.constants, *ctx.saved, grad_dists, grad_zbuf, grad_normals)
        return (torch.from_numpy(grad_dists), torch.from_numpy(grad_zbuf), torch.from_numpy(grad_normals),
                None, None, None, None, None, None, None)


def blend_face_colours(faces, dists, zbuf, albedo, normals, background, *, sigma: float, gamma: float,
                       znear: float, zfar: float) -> torch.Tensor:
    """Per pixel (rows of faces, dists, zbuf: (P, K), packed face indices, -1 empty), the blend of its faces'
    albedo (albedo[face % len(albedo)], (F, 3)) and, if normals (the packed faces' view-space normals) is
    given, of their normals: (P, 3) or (P, 6). background: (3,) or (6,), what an empty pixel shows.
    Differentiable in dists, zbuf and normals (CPU tensors)."""
    if normals is None:
        normals = albedo.new_zeros((1, 3))
    return _Blend.apply(dists.reshape(faces.shape).float(), zbuf.reshape(faces.shape).float(), normals.float(),
                        faces, albedo.float(), background.float(), float(sigma), float(gamma), float(znear),
                        float(zfar))


@numba.njit(cache=True, nogil=True)
def _silhouette_forward(faces, dists, sigma, out):
    """PyTorch3D's SigmoidAlphaBlendForwardCpu, pixel by pixel: out = 1 - prod_k (1 - sigmoid(-dist_k / sigma))
    over the filled entries, its float32 and float64 steps as its C++ takes them."""
    P, K = faces.shape
    for p in range(P):
        alpha = F32(1.0)
        for k in range(K):
            if faces[p, k] < 0:
                continue
            e = F32(math.exp(dists[p, k] / sigma))  # exp(-dist / sigma) of the C++'s dist = -dists
            prob = F32(1.0 / (1.0 + float(e)))
            alpha = F32(float(alpha) * (1.0 - float(prob)))
        out[p] = F32(1.0 - float(alpha))


@numba.njit(cache=True, nogil=True)
def _silhouette_backward(grad, faces, dists, sigma, out, grad_dists):
    """SigmoidAlphaBlendBackwardCpu: d out / d dist_k = prob_k * (1 - out) / sigma (its sign: dists, not -dists)."""
    P, K = faces.shape
    for p in range(P):
        alpha = F32(1.0 - float(out[p]))
        for k in range(K):
            if faces[p, k] < 0:
                continue
            e = F32(math.exp(dists[p, k] / sigma))
            prob = F32(1.0 / (1.0 + float(e)))
            grad_dists[p, k] = F32(float(grad[p]) * (-1.0 / float(sigma)) * float(prob) * float(alpha))


class _Silhouette(torch.autograd.Function):
    @staticmethod
    def forward(ctx, dists, faces, sigma):
        arrays = [t.detach().contiguous().numpy() for t in (faces, dists)]
        out = np.empty(len(arrays[0]), dtype=np.float32)
        _silhouette_forward(*arrays, F32(sigma), out)
        ctx.arrays, ctx.sigma, ctx.out = arrays, F32(sigma), out
        return torch.from_numpy(out)

    @staticmethod
    def backward(ctx, grad_out):
        faces, dists = ctx.arrays
        grad_dists = np.zeros_like(dists)
        _silhouette_backward(np.ascontiguousarray(grad_out.numpy(), dtype=np.float32), faces, dists, ctx.sigma,
                             ctx.out, grad_dists)
        return torch.from_numpy(grad_dists), None, None


def silhouette_alpha(faces, dists, *, sigma: float) -> torch.Tensor:
    """Per pixel (faces, dists: (..., K), a Fragments' pix_to_face and dists; -1 empty), SoftSilhouetteShader's
    alpha (...): PyTorch3D's sigmoid_alpha_blend of the pixel's entries, differentiable in dists (CPU tensors)."""
    K = faces.shape[-1]
    rows = faces.reshape(-1, K)
    return _Silhouette.apply(dists.reshape(rows.shape).float(), rows, float(sigma)).reshape(faces.shape[:-1])


@numba.njit(cache=True, nogil=True)
def _light_normal_equations(albedo, normals, reference, weights, matrix, right):
    """targets.solve_light's weighted normal equations, per image: each weighed pixel and channel is one
    equation in (ambient_rgb, d_xyz, offset_rgb), its row r: albedo_c at ambient_c, albedo_c * normal at d,
    1 at offset_c; matrix += w r r^T, right += w r y."""
    N, P = weights.shape
    row = np.zeros(9, dtype=np.float64)
    for i in range(N):
        for p in range(P):
            w = np.float64(weights[i, p])
            if w == 0.0:
                continue
            for c in range(3):
                a = np.float64(albedo[i, p, c])
                row[:] = 0.0
                row[c] = a
                for j in range(3):
                    row[3 + j] = a * np.float64(normals[i, p, j])
                row[6 + c] = 1.0
                y = np.float64(reference[p, c])
                for j in range(9):
                    if row[j] == 0.0:
                        continue
                    wr = w * row[j]
                    right[i, j] += wr * y
                    for k in range(9):
                        matrix[i, j, k] += wr * row[k]


def light_normal_equations(albedo, normals, reference, weights):
    """The normal equations of targets.solve_light's least squares, (N, 9, 9) and (N, 9), accumulated in
    float64 by one compiled pass over the weighed pixels (CPU tensors): albedo and normals (N, H, W, 3),
    reference (H, W, 3), weights (N, H, W)."""
    N = albedo.shape[0]
    arrays = [np.ascontiguousarray(t.detach().numpy(), dtype=np.float32).reshape(shape) for t, shape in
              ((albedo, (N, -1, 3)), (normals, (N, -1, 3)), (reference, (-1, 3)), (weights, (N, -1)))]
    matrix, right = np.zeros((N, 9, 9)), np.zeros((N, 9))
    _light_normal_equations(*arrays, matrix, right)
    return torch.from_numpy(matrix).float(), torch.from_numpy(right).float()


@numba.njit(cache=True, nogil=True)
def _robust_light(albedo, normals, reference, weights, passes, outlier, ridge, lights):
    """robust_light's passes in one compiled loop per image: the normal equations (as _light_normal_equations,
    float64), rounded to float32 and regularised as targets.solve_light does, solved; then, `passes` times,
    each weighed pixel's weight times 1 / (1 + (residual / outlier)^2), its residual under that light (float32,
    targets.shade's formula), and solved again."""
    N, P = weights.shape
    weight = np.empty(P, dtype=np.float32)
    for i in range(N):
        for p in range(P):
            weight[p] = weights[i, p]
        for step in range(passes + 1):
            matrix = np.zeros((1, 9, 9))
            right = np.zeros((1, 9))
            _light_normal_equations(albedo[i:i + 1], normals[i:i + 1], reference, weight.reshape(1, P), matrix,
                                    right)
            count = np.float32(0.0)
            for p in range(P):
                count += weight[p]
            count = max(count, np.float32(1.0))
            system = matrix[0].astype(np.float32)
            for j in range(9):
                system[j, j] += np.float32(ridge) * count
            light = np.linalg.solve(system, right[0].astype(np.float32))
            lights[i] = light
            if step == passes:
                break
            for p in range(P):
                if weights[i, p] == 0.0:
                    continue
                lit = (normals[i, p, 0] * light[3] + normals[i, p, 1] * light[4]) + normals[i, p, 2] * light[5]
                square = np.float32(0.0)
                for c in range(3):
                    shaded = albedo[i, p, c] * (light[c] + lit) + light[6 + c]
                    square += (shaded - reference[p, c]) ** 2
                ratio = np.sqrt(square) / np.float32(outlier)
                weight[p] = weights[i, p] / (np.float32(1.0) + ratio * ratio)


def robust_light(albedo, normals, reference, weights, passes: int, outlier: float, ridge: float) -> torch.Tensor:
    """frame_fit.robust_light (targets.solve_light, then solved `passes` times more, reweighted by the residual
    under the last light) in one compiled pass per image (CPU tensors): albedo and normals (N, H, W, 3),
    reference (H, W, 3), weights (N, H, W). Returns the light (N, 9); the same numbers to float rounding."""
    N = albedo.shape[0]
    arrays = [np.ascontiguousarray(t.detach().numpy(), dtype=np.float32).reshape(shape) for t, shape in
              ((albedo, (N, -1, 3)), (normals, (N, -1, 3)), (reference, (-1, 3)), (weights, (N, -1)))]
    lights = np.zeros((N, 9), dtype=np.float32)
    _robust_light(*arrays, int(passes), float(outlier), float(ridge), lights)
    return torch.from_numpy(lights)


def _photo_colour_error(share, albedo, normals, light, behind, colours, seen, outlier, loss, grad_share,
                        grad_albedo, grad_normals):
    """frame_fit.losses' colour term of a photo, per image i: sum over pixels p of
    w_p * |to_srgb(s_p * to_linear(shaded_p) + (1 - s_p) * behind_p) - colours_p|^2, shaded = targets.shade's
    albedo * (ambient + normal . direction) + offset, w_p = seen_p / (1 + (|residual_p| / outlier)^2) held
    constant; and its gradient in the share s, the albedo and the normals (float32, the same formulas).
    The pixels are shared among numba's threads (posefit.threads), each pixel's term and gradients its own;
    the loss sums the terms afterwards, by one thread in the pixels' order, so the numbers are the same."""
    N, P = share.shape
    terms = np.empty((N, P), dtype=np.float32)
    threads.share(_photo_colour_shared, _photo_colour_serial, share, albedo, normals, light, behind, colours, seen,
                  outlier, terms, grad_share, grad_albedo, grad_normals)
    _sum_rows(terms, loss)


@numba.njit(cache=True, nogil=True, parallel=True)
def _photo_colour_shared(chunks, share, albedo, normals, light, behind, colours, seen, outlier, terms, grad_share,
                         grad_albedo, grad_normals):
    """_photo_colour_pixels of every image's pixels, in `chunks` runs an image, one per thread."""
    N, P = share.shape
    for i in range(N):
        for chunk in numba.prange(chunks):
            _photo_colour_pixels(i, chunk * P // chunks, (chunk + 1) * P // chunks, share, albedo, normals, light,
                                 behind, colours, seen, outlier, terms, grad_share, grad_albedo, grad_normals)


@numba.njit(cache=True, nogil=True)
def _photo_colour_serial(share, albedo, normals, light, behind, colours, seen, outlier, terms, grad_share, grad_albedo,
                         grad_normals):
    """_photo_colour_pixels of every image's pixels, in one run."""
    N, P = share.shape
    for i in range(N):
        _photo_colour_pixels(i, 0, P, share, albedo, normals, light, behind, colours, seen, outlier, terms, grad_share,
                             grad_albedo, grad_normals)


@numba.njit(cache=True, nogil=True)
def _sum_rows(terms, out):
    """Each row's sum in float32, in the row's order."""
    for i in range(terms.shape[0]):
        total = F32(0.0)
        for p in range(terms.shape[1]):
            total += terms[i, p]
        out[i] = total


@numba.njit(cache=True, nogil=True)
def _photo_colour_pixels(i, start, stop, share, albedo, normals, light, behind, colours, seen, outlier, terms,
                         grad_share, grad_albedo, grad_normals):
    """_photo_colour_error's pixels start..stop-1 of image i: each one's term of the loss, and its gradients."""
    residual, slope_srgb = np.empty(3, dtype=np.float32), np.empty(3, dtype=np.float32)
    linear, slope_linear = np.empty(3, dtype=np.float32), np.empty(3, dtype=np.float32)
    for p in range(start, stop):
        s = share[i, p]
        lit = (normals[i, p, 0] * light[i, 3] + normals[i, p, 1] * light[i, 4]) + normals[i, p, 2] * light[i, 5]
        square = F32(0.0)
        for c in range(3):
            if s == F32(0.0):  # no face here: the backdrop alone, and no gradient flows back to the share
                linear[c], slope_linear[c] = F32(0.0), F32(0.0)
                mixed = behind[p, c]
            else:
                shaded = albedo[i, p, c] * (light[i, c] + lit) + light[i, 6 + c]
                if shaded <= F32(0.04045):
                    linear[c], slope_linear[c] = shaded / F32(12.92), F32(1.0) / F32(12.92)
                else:
                    base = (shaded + F32(0.055)) / F32(1.055)
                    linear[c] = base ** F32(2.4)
                    slope_linear[c] = F32(2.4) / F32(1.055) * linear[c] / base
                mixed = s * linear[c] + (F32(1.0) - s) * behind[p, c]
            if mixed <= F32(0.0031308):
                encoded, slope_srgb[c] = F32(12.92) * mixed, F32(12.92)
            else:
                root = mixed ** (F32(1.0) / F32(2.4))
                encoded = F32(1.055) * root - F32(0.055)
                slope_srgb[c] = F32(1.055) / F32(2.4) * root / mixed
            residual[c] = encoded - colours[p, c]
            square += residual[c] * residual[c]
        ratio = F32(math.sqrt(square)) / F32(outlier)
        weight = seen[p] / (F32(1.0) + ratio * ratio)
        terms[i, p] = weight * square
        lit_grad = F32(0.0)
        share_grad = F32(0.0)
        for c in range(3):
            d_mixed = F32(2.0) * weight * residual[c] * slope_srgb[c]
            if s != F32(0.0):
                share_grad += d_mixed * (linear[c] - behind[p, c])
            d_shaded = d_mixed * s * slope_linear[c]
            grad_albedo[i, p, c] = d_shaded * (light[i, c] + lit)
            lit_grad += d_shaded * albedo[i, p, c]
        grad_share[i, p] = share_grad
        for j in range(3):
            grad_normals[i, p, j] = lit_grad * light[i, 3 + j]


class _PhotoColourError(torch.autograd.Function):
    @staticmethod
    def forward(ctx, share, albedo, normals, light, behind, colours, seen, outlier):
        N = share.shape[0]
        arrays = [np.ascontiguousarray(t.detach().numpy(), dtype=np.float32).reshape(shape) for t, shape in
                  ((share, (N, -1)), (albedo, (N, -1, 3)), (normals, (N, -1, 3)), (light, (N, 9)),
                   (behind, (-1, 3)), (colours, (-1, 3)), (seen, (-1,)))]
        loss = np.empty(N, dtype=np.float32)
        grads = (np.empty_like(arrays[0]), np.empty_like(arrays[1]), np.empty_like(arrays[2]))
        _photo_colour_error(*arrays, float(outlier), loss, *grads)
        ctx.grads = [torch.from_numpy(g).reshape(t.shape) for g, t in zip(grads, (share, albedo, normals),
                                                                           strict=True)]
        return torch.from_numpy(loss)

    @staticmethod
    def backward(ctx, grad_loss):
        share, albedo, normals = (g * grad_loss.reshape(-1, *([1] * (g.dim() - 1))) for g in ctx.grads)
        return share, albedo, normals, None, None, None, None, None


def photo_colour_error(share, albedo, normals, light, behind_linear, colours, seen, outlier: float) -> torch.Tensor:
    """frame_fit.losses' colour term of a photo (N,) in one compiled loop, forward and gradient (CPU tensors):
    share (N, h, w), the soft silhouette; albedo and normals (N, h, w, 3); light (N, 9), constant;
    behind_linear and colours (h, w, 3); seen (h, w), the pixels' weights before the residual's (1: all).
    Differentiable in share, albedo and normals; the same numbers as the torch operations to float rounding."""
    return _PhotoColourError.apply(share, albedo, normals, light, behind_linear, colours, seen, outlier)
