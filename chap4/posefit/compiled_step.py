"""A frame fit's step on the CPU without autograd: frame_fit.losses' loss per pose and its gradient in the pose
corrections (posefit.pose.SixDoF's rotation and translation), each stage's compiled loop called forward and
then its gradient called backward, in reverse, by hand.

Why: a tracker's step is about seven milliseconds, of which the compiled loops (rasterization, blend, light,
colour error and their gradients) take under four; the rest was the autograd graph around them (some thirty
nodes forward and backward, the tensors each wraps and checks) and the small tensor operations between
them. Here the stages pass numpy arrays to one another and the backward pass is the same loops' gradients
called in turn, so the step does the same arithmetic (the same numbers to float rounding: the tests compare
both, loss and gradient) without that overhead.

The chain, per pose n (frame_fit.losses; the window's pixels p, each pixel's K nearest faces k):
    R = R0 @ exp(rotation), T = T0 + translation                   (pose.ExpMap)
    corners = the faces' corners in NDC (x @ R + T, projected)      (fov_projection)
    dists, zbuf = the fast rasterization of the corners             (fast_raster, raster_kernels)
    s = the soft silhouette of the dists                            (blend_kernels: sigmoid_alpha_blend)
    albedo, normals = the faces' albedo and turned normals (faces' normals @ R), blended (softmax_rgb_blend)
    light = the frame's light, solved on the pixels the object covers (no gradient: frame_fit.robust_light)
    loss = sum weight * (s - mask)^2 + weight_colour * colour error(s, albedo, normals, light) + prior
The colour error of a photo (composited over the floor as light, encoded as sRGB) is blend_kernels'
compiled one, which gives its gradient with its value; a render's (composited over its flat backdrop as it
is) is written below with numpy.

Only the tracker's usual case takes this path (`applies`): the CPU, the fast rasterizer with a FoV camera, the
face-colour shader with its compiled blend, no local gain, no face behind the near plane; anything else goes
through frame_fit.losses and autograd.
"""

from __future__ import annotations

import numpy as np
import torch
from pytorch3d.renderer import FoVPerspectiveCameras

from posefit import blend_kernels, fast_raster, fov_projection, pose, raster_kernels, render, targets
from posefit.fast_rasterizer import FastMeshRasterizer, resolved_settings

F32 = np.float32


def applies(renderers, meshes, frame, local_gain: float) -> bool:
    """Whether a step of this frame's fit can take the compiled path (see the module's docstring)."""
    textured = renderers.textured
    return (textured is not None and render.COMPILED_BLEND and not frame.mask.is_cuda
            and isinstance(textured.shader, render.FaceColourShader)
            and isinstance(textured.rasterizer, FastMeshRasterizer)
            and isinstance(textured.rasterizer.cameras, FoVPerspectiveCameras)
            and getattr(textured.rasterizer.cameras, "K", None) is None
            and not textured.rasterizer.raster_settings.cull_to_frustum
            and not meshes.verts_packed().requires_grad
            and not (local_gain and frame.photo))


def _shade(albedo, normals, light):
    """targets.shade in numpy: albedo (N, P, 3), normals (N, P, 3), light (N, 9) -> (N, P, 3)."""
    lit = (normals[..., 0] * light[:, None, 3] + normals[..., 1] * light[:, None, 4]) + normals[..., 2] * light[:, None, 5]
    return albedo * (light[:, None, :3] + lit[..., None]) + light[:, None, 6:]


def _render_colour_error(share, albedo, normals, light, behind, colours, seen, outlier):
    """frame_fit.losses' colour term of a render's frame (composited over its backdrop as it is) and its
    gradient in the share, the albedo and the normals: numpy, (N, P) and (N, P, 3) arrays, float32."""
    shaded = _shade(albedo, normals, light)
    s = share[..., None]
    residual = s * shaded + (1 - s) * behind - colours
    norm = np.sqrt((residual * residual).sum(-1))
    weight = (F32(1.0) / (F32(1.0) + (norm / F32(outlier)) ** 2)) * seen
    loss = (weight[..., None] * residual**2).sum(axis=(1, 2))
    d_composite = 2 * weight[..., None] * residual
    grad_share = (d_composite * (shaded - behind)).sum(-1)
    d_shaded = d_composite * s
    lit = (normals * light[:, None, 3:6]).sum(-1, keepdims=True)
    grad_albedo = d_shaded * (light[:, None, :3] + lit)
    grad_normals = (d_shaded * albedo).sum(-1, keepdims=True) * light[:, None, 3:6]
    return loss.astype(F32), grad_share, grad_albedo, grad_normals


def loss_and_gradient(renderers, meshes, poses: pose.SixDoF, frame, weight_colour: float, prior, light_passes: int,
                      outlier: float, find_covered=None):
    """frame_fit.losses for poses() and the gradient of their sum, left in poses.rotation.grad and
    poses.translation.grad. prior: None, or (weight, pixels, depth (N, 1)) of frame_fit.fit's motion prior.
    outlier: frame_fit.COLOUR_OUTLIER. find_covered: frame_fit.find_covered with its palette bound (the
    frame's first step), or None.
    Returns (loss (N,), the soft silhouettes (N, h, w)) as losses does, or None where the compiled path
    does not apply to this step (a face behind the near plane): the caller takes the autograd path."""
    textured, silhouette_renderer = renderers.textured, renderers.silhouette
    rasterizer, shader = textured.rasterizer, textured.shader
    settings, cameras = rasterizer.raster_settings, rasterizer.cameras
    clip_barycentric_coords, perspective_correct, z_clip = resolved_settings(settings, cameras)
    y0, y1, x0, x1 = frame.window
    y, x = slice(y0, y1), slice(x0, x1)
    N = len(poses)

    # The pose (as pose.SixDoF's forward: R0 @ exp(rotation), its float64 rotations kept for the gradient).
    w64 = poses.rotation.detach().double().numpy()
    E64 = np.empty((N, 3, 3))
    pose._exp(w64, E64)
    R = poses.R0 @ torch.from_numpy(E64).float()
    T = poses.T0 + poses.translation.detach()

    # The faces' corners in NDC (fov_projection).
    verts = meshes.verts_packed().detach().float().contiguous().numpy()
    vert_mesh, faces = meshes.verts_packed_to_mesh_idx().numpy(), meshes.faces_packed().numpy()
    M = render._fov_projection(cameras).double().numpy()
    R64, T64 = R.double().numpy(), T.double().numpy()
    view, h3 = np.empty((len(verts), 3)), np.empty(len(verts))
    corners = np.empty((len(faces), 3, 3), dtype=F32)
    nearest = fov_projection._project(verts, vert_mesh, faces, R64, T64, M, view, h3, corners)
    if z_clip is not None and nearest < z_clip:
        return None

    # The rasterization of the window (fast_raster).
    image_size, K = fast_raster._check_arguments(torch.from_numpy(corners), settings.image_size,
                                                 settings.faces_per_pixel, None)
    window = fast_raster._check_window(frame.window, image_size)
    pix_to_face, zbuf, _, dists, slot, slot_face = fast_raster._rasterize_forward(
        torch.from_numpy(corners), meshes.num_faces_per_mesh(), image_size, float(settings.blur_radius), K,
        bool(perspective_correct), bool(clip_barycentric_coords), bool(settings.cull_backfaces), window)
    h, w = y1 - y0, x1 - x0
    slot, slot_face = slot.numpy(), slot_face.numpy()
    rows = pix_to_face.view(-1, K).numpy()
    dists_np, zbuf_np = dists.view(-1, K).numpy(), zbuf.view(-1, K).numpy()

    # The soft silhouette (render.soft_silhouette) and its error against the mask.
    sigma_silhouette = F32(silhouette_renderer.shader.blend_params.sigma)
    share = np.empty(len(rows), dtype=F32)
    blend_kernels._silhouette_forward(rows, dists_np, sigma_silhouette, share)
    share_image = share.reshape(N, h * w)
    mask = frame.mask[y, x].reshape(-1).numpy()
    difference = share_image - mask
    weight = None if frame.weight is None else frame.weight[y, x].reshape(-1).numpy()
    squared = difference * difference if weight is None else difference * difference * weight
    loss = squared.sum(1, dtype=F32)
    grad_share = 2 * difference if weight is None else 2 * difference * weight

    if weight_colour:
        # The blended albedo and view-space normals (render.FaceColourShader).
        params = shader.blend_params
        F = len(shader.colours)
        face_normals = meshes.faces_normals_packed().detach().float().numpy().reshape(N, F, 3)
        R32 = R.numpy()
        turned = np.ascontiguousarray(np.matmul(face_normals, R32).reshape(N * F, 3), dtype=F32)
        albedo_of_face = shader.colours.detach().float().contiguous().numpy()
        background = np.concatenate([np.asarray(params.background_color, dtype=F32), np.zeros(3, F32)])
        P = len(rows)
        blended = np.empty((P, 6), dtype=F32)
        blend_weights = np.empty((P, K), dtype=F32)
        total, delta, top = np.ones(P, F32), np.ones(P, F32), np.empty(P, np.int64)
        blend_args = (float(params.sigma), float(params.gamma), float(shader.znear), float(shader.zfar))
        blend_kernels._blend_forward(rows, dists_np, zbuf_np, albedo_of_face, turned, background, *blend_args,
                                     blended, blend_weights, total, delta, top)
        albedo = np.ascontiguousarray(blended[:, :3]).reshape(N, h * w, 3)
        normals = np.ascontiguousarray(blended[:, 3:]).reshape(N, h * w, 3)
        colours = frame.colours[y, x].reshape(-1, 3).numpy()
        if find_covered is not None:
            find_covered(frame, *(torch.from_numpy(a).reshape(N, h, w, *a.shape[2:]) for a in
                                  (share.reshape(N, -1), albedo, normals)))
        seen = np.ones(h * w, F32) if frame.covered is None else (1.0 - frame.covered[y, x]).reshape(-1).numpy()
        # The frame's light (frame_fit.robust_light; no gradient flows through it).
        light_weights = np.ascontiguousarray((share_image > 0.5) * mask * seen, dtype=F32)
        passes = light_passes if frame.photo else 0
        if passes:
            light = np.zeros((N, 9), dtype=F32)
            blend_kernels._robust_light(albedo, normals, np.ascontiguousarray(colours, dtype=F32), light_weights,
                                        int(passes), float(outlier), float(targets.SHADE_RIDGE), light)
        else:  # (as frame_fit.robust_light: one solve, targets.solve_light's)
            light = targets.solve_light(*(torch.from_numpy(a) for a in (albedo, normals, colours, light_weights)))
            light = light.numpy()
        if frame.backdrop_linear is not None:  # a photo's (blend_kernels.photo_colour_error)
            behind = np.ascontiguousarray(frame.backdrop_linear[y, x].reshape(-1, 3).numpy(), dtype=F32)
            colour_loss = np.empty(N, dtype=F32)
            colour_grads = (np.empty_like(share_image), np.empty_like(albedo), np.empty_like(normals))
            blend_kernels._photo_colour_error(share_image, albedo, normals, light, behind,
                                              np.ascontiguousarray(colours, dtype=F32),
                                              np.ascontiguousarray(seen, dtype=F32), float(outlier),
                                              colour_loss, *colour_grads)
        else:
            behind = frame.backdrop[y, x].reshape(-1, 3).numpy()
            colour_loss, *colour_grads = _render_colour_error(share_image, albedo, normals, light, behind, colours,
                                                              seen, outlier)
        loss = loss + F32(weight_colour) * colour_loss
        grad_share = grad_share + F32(weight_colour) * colour_grads[0]

    # Backward: the silhouette's gradient in the dists.
    grad_dists = np.zeros_like(dists_np)
    blend_kernels._silhouette_backward(np.ascontiguousarray(grad_share.reshape(-1), dtype=F32), rows, dists_np,
                                       sigma_silhouette, share, grad_dists)
    grad_R64 = np.zeros((N, 3, 3))
    grad_zbuf = np.zeros_like(zbuf_np)
    if weight_colour:
        # The blend's in the dists, the depths and the turned normals; the turned normals' in R.
        grad_blended = np.concatenate([colour_grads[1], colour_grads[2]], -1).reshape(-1, 6) * F32(weight_colour)
        grad_blend_dists, grad_turned = np.zeros_like(dists_np), np.zeros_like(turned)
        blend_kernels._blend_backward(np.ascontiguousarray(grad_blended, dtype=F32), rows, dists_np, zbuf_np,
                                      albedo_of_face, turned, background, *blend_args, blended, blend_weights,
                                      total, delta, top, grad_blend_dists, grad_zbuf, grad_turned)
        grad_dists += grad_blend_dists
        grad_R64 += np.matmul(face_normals.transpose(0, 2, 1).astype(np.float64),
                              grad_turned.reshape(N, F, 3).astype(np.float64))
    # The rasterization's in the corners, the projection's in R and T.
    grad_corners = np.zeros((len(faces), 3, 3), dtype=F32)
    flat_zbuf, flat_dists = grad_zbuf.reshape(-1), grad_dists.reshape(-1)
    x_ndc, y_ndc = fast_raster.window_centers_ndc(image_size, window)
    raster_kernels.rasterize_backward(corners, slot, slot_face, x_ndc.numpy(), y_ndc.numpy(), h, w, K,
                                      np.ascontiguousarray(flat_zbuf[slot]), np.ascontiguousarray(flat_dists[slot]),
                                      np.zeros((len(slot), 3), F32), bool(perspective_correct),
                                      bool(clip_barycentric_coords), grad_corners)
    grad_T64 = np.zeros((N, 3))
    fov_projection._project_backward(grad_corners, vert_mesh, faces, verts, M, view, h3, grad_R64, grad_T64)
    # R = R0 @ E: the gradient in E is R0^T times that in R; in the rotation, pose.ExpMap's.
    R0 = poses.R0.double().numpy()
    grad_rotation = np.empty((N, 3))
    pose._exp_backward(w64, E64, np.ascontiguousarray(np.matmul(R0.transpose(0, 2, 1), grad_R64)), grad_rotation)
    grad_translation = grad_T64
    loss = torch.from_numpy(np.asarray(loss, dtype=F32))
    if prior is not None:
        prior_weight, pixels, depth = prior
        rotation, translation = poses.rotation.detach(), poses.translation.detach()
        loss = loss + prior_weight * pixels * ((rotation**2).sum(1) + ((translation / depth) ** 2).sum(1))
        grad_rotation = grad_rotation + 2 * prior_weight * pixels * rotation.double().numpy()
        grad_translation = grad_translation + 2 * prior_weight * pixels * (translation / depth**2).double().numpy()
    poses.rotation.grad = torch.from_numpy(grad_rotation).to(poses.rotation.dtype)
    poses.translation.grad = torch.from_numpy(np.asarray(grad_translation)).to(poses.translation.dtype)
    return loss, torch.from_numpy(share).reshape(N, h, w)
