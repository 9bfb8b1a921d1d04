"""The faces' corners in NDC for a FoV camera, x @ R + T then the projection matrix, as one compiled loop each
way (numba): the fast rasterizer's input (posefit.render.rasterize_window) and its gradient in R and T.

Why compiled: written with torch the projection is a dozen small tensor operations (a batched matrix
product, the perspective division, the gather of each face's three corners) and as many autograd nodes
the backward pass visits; at a tracker's size their overhead, not their arithmetic, was about a millisecond
of a seven-millisecond step. Here each vertex is projected in float64 and rounded once to float32 (the torch
operations rounded at each of theirs: the same numbers to float rounding), each face takes its corners, and
the gradient is summed over the corners into R and T directly.

For a corner x (a row vector, the mesh's own coordinates) of a face of mesh n, with the projection matrix M
(row vectors: [v, 1] @ M):
    v = x @ R_n + T_n,  h = [v, 1] @ M,  ndc = (h_0 / h_3, h_1 / h_3, v_2)
(PyTorch3D's FoV camera keeps the view depth as the NDC z its rasterizer compares).
"""

from __future__ import annotations

import numba
import numpy as np
import torch


@numba.njit(cache=True, nogil=True)
def _project(verts, vert_mesh, faces, R, T, M, view, h3, out):
    """out (F, 3, 3): each packed face's corners in NDC (view (V, 3) and h3 (V,), each vertex's view
    coordinates and homogeneous w, kept for the gradient); returns the smallest view depth of a face's
    corner."""
    ndc = np.empty((verts.shape[0], 3))
    for v in range(verts.shape[0]):
        n = vert_mesh[v]
        m = n if M.shape[0] > 1 else 0
        x0, x1, x2 = float(verts[v, 0]), float(verts[v, 1]), float(verts[v, 2])
        for j in range(3):
            view[v, j] = x0 * R[n, 0, j] + x1 * R[n, 1, j] + x2 * R[n, 2, j] + T[n, j]
        v0, v1, v2 = view[v, 0], view[v, 1], view[v, 2]
        w = v0 * M[m, 0, 3] + v1 * M[m, 1, 3] + v2 * M[m, 2, 3] + M[m, 3, 3]
        h3[v] = w
        ndc[v, 0] = (v0 * M[m, 0, 0] + v1 * M[m, 1, 0] + v2 * M[m, 2, 0] + M[m, 3, 0]) / w
        ndc[v, 1] = (v0 * M[m, 0, 1] + v1 * M[m, 1, 1] + v2 * M[m, 2, 1] + M[m, 3, 1]) / w
        ndc[v, 2] = v2
    nearest = np.inf
    for f in range(faces.shape[0]):
        for c in range(3):
            v = faces[f, c]
            for j in range(3):
                out[f, c, j] = ndc[v, j]
            nearest = min(nearest, ndc[v, 2])
    return nearest


@numba.njit(cache=True, nogil=True)
def _project_backward(grad, vert_mesh, faces, verts, M, view, h3, grad_R, grad_T):
    """grad_R (N, 3, 3), grad_T (N, 3): the gradient of the corners' NDC (grad, (F, 3, 3)) in R and T."""
    grad_v = np.zeros((verts.shape[0], 3))
    for f in range(faces.shape[0]):
        for c in range(3):
            v = faces[f, c]
            for j in range(3):
                grad_v[v, j] += grad[f, c, j]
    for v in range(verts.shape[0]):
        gx, gy, gz = grad_v[v, 0], grad_v[v, 1], grad_v[v, 2]
        if gx == 0.0 and gy == 0.0 and gz == 0.0:  # a vertex of faces nothing saw (culled, or outside)
            continue
        n = vert_mesh[v]
        m = n if M.shape[0] > 1 else 0
        v0, v1, v2, w = view[v, 0], view[v, 1], view[v, 2], h3[v]
        h0 = v0 * M[m, 0, 0] + v1 * M[m, 1, 0] + v2 * M[m, 2, 0] + M[m, 3, 0]
        h1 = v0 * M[m, 0, 1] + v1 * M[m, 1, 1] + v2 * M[m, 2, 1] + M[m, 3, 1]
        d0, d1, d3 = gx / w, gy / w, -(gx * h0 + gy * h1) / (w * w)
        for j in range(3):
            dv = d0 * M[m, j, 0] + d1 * M[m, j, 1] + d3 * M[m, j, 3] + (gz if j == 2 else 0.0)
            grad_T[n, j] += dv
            for i in range(3):
                grad_R[n, i, j] += float(verts[v, i]) * dv


class _ProjectFaces(torch.autograd.Function):
    @staticmethod
    def forward(ctx, R, T, verts, vert_mesh, faces, projection):
        verts = verts.detach().float().contiguous().numpy()
        vert_mesh, faces = vert_mesh.contiguous().numpy(), faces.contiguous().numpy()
        M = projection.detach().double().contiguous().numpy()
        view, h3 = np.empty((len(verts), 3)), np.empty(len(verts))
        out = np.empty((len(faces), 3, 3), dtype=np.float32)
        nearest = _project(verts, vert_mesh, faces, R.detach().double().contiguous().numpy(),
                           T.detach().double().contiguous().numpy(), M, view, h3, out)
        ctx.arrays, ctx.shapes = (vert_mesh, faces, verts, M, view, h3), (R.shape, T.shape, R.dtype, T.dtype)
        ctx.set_materialize_grads(False)
        nearest = torch.tensor(nearest)
        ctx.mark_non_differentiable(nearest)
        return torch.from_numpy(out), nearest

    @staticmethod
    def backward(ctx, grad, _):
        if grad is None:
            return None, None, None, None, None, None
        R_shape, T_shape, R_dtype, T_dtype = ctx.shapes
        grad_R, grad_T = np.zeros(R_shape), np.zeros(T_shape)
        _project_backward(np.ascontiguousarray(grad.numpy(), dtype=np.float32), *ctx.arrays, grad_R, grad_T)
        return torch.from_numpy(grad_R).to(R_dtype), torch.from_numpy(grad_T).to(T_dtype), None, None, None, None


def project_faces(meshes, R: torch.Tensor, T: torch.Tensor, projection: torch.Tensor):
    """Each packed face's corners in NDC (F, 3, 3) for poses R (N, 3, 3), T (N, 3) and a FoV camera's
    projection matrix (1 or N, 4, 4; row vectors), differentiable in R and T (CPU tensors, the meshes'
    vertices constant), and the smallest view depth among them (for the caller's clipping check)."""
    face_verts, nearest = _ProjectFaces.apply(R, T, meshes.verts_packed(), meshes.verts_packed_to_mesh_idx(),
                                              meshes.faces_packed(), projection)
    return face_verts, float(nearest)
