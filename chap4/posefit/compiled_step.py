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
through frame_fit.losses and autograd. frame_fit.fit makes one `FrameStep` a fit (the frame's and the
renderers' constants, prepared once) and asks it for each step's loss and gradient.
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


class FrameStep:
    """The compiled step of one fit: the frame's and the renderers' constants (the window's mask, weights,
    colours and backdrop, the mesh's faces and normals, the camera's projection, the pixel centres) prepared
    once, then `loss_and_gradient` at every step. The frame's `covered` may be replaced between steps (found
    at the first step); nothing else of the frame or the renderers may change."""

    def __init__(self, renderers, meshes, frame):
        self.frame = frame
        textured = renderers.textured
        self.shader = textured.shader
        settings, cameras = textured.rasterizer.raster_settings, textured.rasterizer.cameras
        self.clip_barycentric_coords, self.perspective_correct, self.z_clip = resolved_settings(settings, cameras)
        self.blur, self.cull_backfaces = float(settings.blur_radius), bool(settings.cull_backfaces)
        y0, y1, x0, x1 = frame.window
        self.y, self.x, self.h, self.w = slice(y0, y1), slice(x0, x1), y1 - y0, x1 - x0
        self.N = N = len(meshes)
        # The mesh and the camera (fov_projection, fast_raster).
        self.verts = meshes.verts_packed().detach().float().contiguous().numpy()
        self.vert_mesh = meshes.verts_packed_to_mesh_idx().contiguous().numpy()
        self.faces = meshes.faces_packed().contiguous().numpy()
        self.projection = render._fov_projection(cameras).double().contiguous().numpy()
        self.image_size, self.K = fast_raster._check_arguments(torch.zeros(0, 3, 3), settings.image_size,
                                                               settings.faces_per_pixel, None)
        window = fast_raster._check_window(frame.window, self.image_size)
        self.mesh_of_face = np.repeat(np.arange(N), meshes.num_faces_per_mesh().numpy())
        self.x_ndc, self.y_ndc = (c.contiguous().numpy() for c in fast_raster.window_centers_ndc(self.image_size, window))
        # The silhouette term's mask and weights (render.soft_silhouette, frame_fit.losses).
        self.sigma_silhouette = F32(renderers.silhouette.shader.blend_params.sigma)
        self.mask = np.ascontiguousarray(frame.mask[self.y, self.x].reshape(-1).numpy(), dtype=F32)
        self.weight = None if frame.weight is None else np.ascontiguousarray(
            frame.weight[self.y, self.x].reshape(-1).numpy(), dtype=F32)
        # The colour term's (render.FaceColourShader, frame_fit.losses).
        params = self.shader.blend_params
        self.F = F = len(self.shader.colours)
        self.face_normals = meshes.faces_normals_packed().detach().float().numpy().reshape(N, F, 3)
        self.face_normals_T64 = self.face_normals.transpose(0, 2, 1).astype(np.float64)
        self.albedo_of_face = self.shader.colours.detach().float().contiguous().numpy()
        self.background = np.concatenate([np.asarray(params.background_color, dtype=F32), np.zeros(3, F32)])
        self.blend_args = (float(params.sigma), float(params.gamma), float(self.shader.znear), float(self.shader.zfar))
        self.colours = np.ascontiguousarray(frame.colours[self.y, self.x].reshape(-1, 3).numpy(), dtype=F32)
        backdrop = frame.backdrop if frame.backdrop_linear is None else frame.backdrop_linear
        self.behind = np.ascontiguousarray(backdrop[self.y, self.x].reshape(-1, 3).numpy(), dtype=F32)
        self._seen_of, self._seen_values = False, None  # (_seen: frame.covered and the weights made from it)

    def _seen(self) -> np.ndarray:
        """The window's pixels' weights in the colour term, 0 where something in front covers the object
        (frame.covered, found at a fit's first step; 1 everywhere while there is none), made again only when
        frame.covered changes."""
        covered = self.frame.covered
        if self._seen_of is not covered:
            self._seen_of = covered
            self._seen_values = np.ones(self.h * self.w, F32) if covered is None else np.ascontiguousarray(
                (1.0 - covered[self.y, self.x]).reshape(-1).numpy(), dtype=F32)
        return self._seen_values

    def loss_and_gradient(self, poses: pose.SixDoF, weight_colour: float, prior, light_passes: int, outlier: float,
                          find_covered=None):
        """frame_fit.losses for poses() and the gradient of their sum, left in poses.rotation.grad and
        poses.translation.grad. prior: None, or (weight, pixels, depth (N, 1)) of frame_fit.fit's motion prior.
        outlier: frame_fit.COLOUR_OUTLIER. find_covered: frame_fit.find_covered with its palette bound (the
        frame's first step), or None. Returns (loss (N,), the soft silhouettes (N, h, w)) as losses does, or
        None where the compiled path does not apply to this step (a face behind the near plane): the caller
        takes the autograd path."""
        frame, N, h, w, K = self.frame, self.N, self.h, self.w, self.K

        # The pose (as pose.SixDoF's forward: R0 @ exp(rotation), its float64 rotations kept for the gradient).
        w64 = poses.rotation.detach().double().numpy()
        E64 = np.empty((N, 3, 3))
        pose._exp(w64, E64)
        R = poses.R0 @ torch.from_numpy(E64).float()
        T = poses.T0 + poses.translation.detach()

        # The faces' corners in NDC (fov_projection).
        view, h3 = np.empty((len(self.verts), 3)), np.empty(len(self.verts))
        corners = np.empty((len(self.faces), 3, 3), dtype=F32)
        nearest = fov_projection._project(self.verts, self.vert_mesh, self.faces, R.double().numpy(),
                                          T.double().numpy(), self.projection, view, h3, corners)
        if self.z_clip is not None and nearest < self.z_clip:
            return None

        # The rasterization of the window (fast_raster's, its outputs as numpy arrays).
        P = N * h * w
        rows = np.full((P, K), -1, dtype=np.int64)
        zbuf, dists = np.full((P, K), -1.0, dtype=F32), np.full((P, K), -1.0, dtype=F32)
        slot, slot_face = fast_raster.rasterize_into(
            corners, self.mesh_of_face, self.x_ndc, self.y_ndc, h, w, self.blur, self.perspective_correct,
            self.clip_barycentric_coords, self.cull_backfaces, rows, zbuf, np.full((P, K, 3), -1.0, dtype=F32), dists)

        # The soft silhouette (render.soft_silhouette) and its error against the mask.
        share = np.empty(P, dtype=F32)
        blend_kernels._silhouette_forward(rows, dists, self.sigma_silhouette, share)
        share_image = share.reshape(N, h * w)
        difference = share_image - self.mask
        squared = difference * difference if self.weight is None else difference * difference * self.weight
        loss = squared.sum(1, dtype=F32)
        grad_share = 2 * difference if self.weight is None else 2 * difference * self.weight

        if weight_colour:
            # The blended albedo and view-space normals (render.FaceColourShader).
            turned = np.ascontiguousarray(np.matmul(self.face_normals, R.numpy()).reshape(N * self.F, 3), dtype=F32)
            blended = np.empty((P, 6), dtype=F32)
            blend_weights = np.empty((P, K), dtype=F32)
            total, delta, top = np.ones(P, F32), np.ones(P, F32), np.empty(P, np.int64)
            blend_kernels._blend_forward(rows, dists, zbuf, self.albedo_of_face, turned, self.background,
                                         *self.blend_args, blended, blend_weights, total, delta, top)
            # (views, not copies: the loops below take strided arrays)
            albedo, normals = blended[:, :3].reshape(N, h * w, 3), blended[:, 3:].reshape(N, h * w, 3)
            if find_covered is not None:
                find_covered(frame, *(torch.from_numpy(a).reshape(N, h, w, *a.shape[2:]) for a in
                                      (share_image, albedo, normals)))
            seen = self._seen()
            # The frame's light (frame_fit.robust_light; no gradient flows through it).
            light_weights = np.ascontiguousarray((share_image > 0.5) * self.mask * seen, dtype=F32)
            passes = light_passes if frame.photo else 0
            if passes:
                light = np.zeros((N, 9), dtype=F32)
                blend_kernels._robust_light(albedo, normals, self.colours, light_weights, int(passes), float(outlier),
                                            float(targets.SHADE_RIDGE), light)
            else:  # (as frame_fit.robust_light: one solve, targets.solve_light's)
                light = targets.solve_light(*(torch.from_numpy(a) for a in (albedo, normals, self.colours,
                                                                           light_weights))).numpy()
            if frame.backdrop_linear is not None:  # a photo's (blend_kernels.photo_colour_error)
                # Its gradient in the albedo and the normals written side by side, as the blend's gradient
                # takes them (grad_blended).
                colour_loss, grad_colour_share = np.empty(N, dtype=F32), np.empty_like(share_image)
                grad_blended = np.empty((P, 6), dtype=F32)
                blend_kernels._photo_colour_error(share_image, albedo, normals, light, self.behind, self.colours, seen,
                                                  float(outlier), colour_loss, grad_colour_share,
                                                  grad_blended[:, :3].reshape(N, h * w, 3),
                                                  grad_blended[:, 3:].reshape(N, h * w, 3))
            else:
                colour_loss, grad_colour_share, grad_albedo, grad_normals = _render_colour_error(
                    share_image, albedo, normals, light, self.behind, self.colours, seen, outlier)
                grad_blended = np.concatenate([grad_albedo, grad_normals], -1).reshape(P, 6)
            loss = loss + F32(weight_colour) * colour_loss
            grad_share = grad_share + F32(weight_colour) * grad_colour_share

        # Backward: the silhouette's gradient in the dists.
        grad_dists = np.zeros_like(dists)
        blend_kernels._silhouette_backward(np.ascontiguousarray(grad_share.reshape(-1), dtype=F32), rows, dists,
                                           self.sigma_silhouette, share, grad_dists)
        grad_R64 = np.zeros((N, 3, 3))
        grad_zbuf = np.zeros_like(zbuf)
        if weight_colour:
            # The blend's in the dists, the depths and the turned normals; the turned normals' in R.
            grad_blended *= F32(weight_colour)
            grad_blend_dists, grad_turned = np.zeros_like(dists), np.zeros_like(turned)
            blend_kernels._blend_backward(grad_blended, rows, dists, zbuf,
                                          self.albedo_of_face, turned, self.background, *self.blend_args, blended,
                                          blend_weights, total, delta, top, grad_blend_dists, grad_zbuf, grad_turned)
            grad_dists += grad_blend_dists
            grad_R64 += np.matmul(self.face_normals_T64, grad_turned.reshape(N, self.F, 3).astype(np.float64))
        # The rasterization's in the corners, the projection's in R and T.
        grad_corners = np.zeros((len(self.faces), 3, 3), dtype=F32)
        raster_kernels.rasterize_backward(corners, slot, slot_face, self.x_ndc, self.y_ndc, h, w, K,
                                          grad_zbuf.reshape(-1)[slot], grad_dists.reshape(-1)[slot],
                                          np.zeros((len(slot), 3), F32), bool(self.perspective_correct),
                                          bool(self.clip_barycentric_coords), grad_corners)
        grad_T64 = np.zeros((N, 3))
        fov_projection._project_backward(grad_corners, self.vert_mesh, self.faces, self.verts, self.projection, view, h3,
                                         grad_R64, grad_T64)
        # R = R0 @ E: the gradient in E is R0^T times that in R; in the rotation, pose.ExpMap's.
        grad_rotation = np.empty((N, 3))
        R0_T = poses.R0.double().numpy().transpose(0, 2, 1)
        pose._exp_backward(w64, E64, np.ascontiguousarray(np.matmul(R0_T, grad_R64)), grad_rotation)
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
