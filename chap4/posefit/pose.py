"""Poses: the book's look-at camera, the full 6-DoF pose, conversions, files and error metrics.

A pose is the (R, T) that PyTorch3D's renderers take: a mesh point x (a row
vector, the .obj's own coordinates) goes to view coordinates as x @ R + T,
+X left, +Y up, +Z into the scene. The camera centre in mesh coordinates is
-T @ R^T.

Two parameterisations, each a batch of n poses (one per hypothesis) that an
optimiser moves, each an nn.Module whose forward() gives R (n, 3, 3) and
T (n, 3):

- LookAt: the book's. Its parameter `camera_position` is where the camera
  is; it looks at the origin with +Y up (look_at_rotation). With one pose it
  is the book's 3-vector nn.Parameter; with n, n rows of 3.
- SixDoF: the full pose as a small correction of a reference pose (R0, T0):
  R = R0 @ exp(rotation), T = T0 + translation, with `rotation` an axis-angle
  in camera axes about the object's origin and `translation` in view
  coordinates. Both start at zero, where the gradient is well behaved, and
  rebase() folds them into the reference.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numba
import numpy as np
import torch
import torch.nn as nn
from pytorch3d.renderer import camera_position_from_spherical_angles, look_at_rotation, look_at_view_transform
from pytorch3d.transforms import so3_relative_angle

from posefit.errors import UserError

ROTATION_TOLERANCE = 1e-4  # the largest |R^T R - I| entry a pose file's R may have


# ---------------------------------------------------------------------------
# The look-at camera (the book's)
# ---------------------------------------------------------------------------


def look_at(camera_position: torch.Tensor):
    """The book's camera: at `camera_position` ((3,) or (n, 3)), looking at the origin, +Y up."""
    position = camera_position.reshape(-1, 3)
    R = look_at_rotation(position, device=position.device)
    T = -torch.bmm(R.transpose(1, 2), position[:, :, None])[:, :, 0]
    return R, T


def view_camera(distance: float, elevation: float, azimuth: float, device):
    """The book's target camera from spherical angles (degrees): R, T and its position."""
    R, T = look_at_view_transform(distance, elevation, azimuth, device=device)
    position = camera_position_from_spherical_angles(distance, elevation, azimuth, device=device)
    return R, T, position[0]


def off_up_axis(position, min_offset: float = 1e-2):
    """look_at_rotation is undefined on the +Y axis; nudge a start that sits there."""
    x, y, z = (float(v) for v in position)
    if math.hypot(x, z) >= min_offset * max(1.0, abs(y)):
        return [x, y, z], None
    moved = [x, y, z + min_offset * max(1.0, abs(y))]
    note = (
        f"warning: --init-position {x:g} {y:g} {z:g} lies on the up axis, where look_at_rotation "
        f"is undefined; starting from {moved[0]:g} {moved[1]:g} {moved[2]:g} instead"
    )
    return moved, note


class PoseBatch(nn.Module):
    """n poses fitted together: R, T for each, and the mesh once per pose to render them with."""

    def __len__(self) -> int:
        raise NotImplementedError

    def meshes_for(self, mesh):
        """`mesh` once per pose, kept while the number of poses stays (extending copies a texture map n times)."""
        key = (id(mesh), len(self))
        if getattr(self, "_batch_key", None) != key:
            self._batch, self._batch_key = mesh.extend(len(self)), key
        return self._batch

    def keep(self, rows: list[int]) -> None:
        """Keep only these poses (each parameter's rows); the caller moves the optimiser's state."""
        raise NotImplementedError

    def constrain(self) -> None:
        """Bring the parameters back within their bounds after a step (none by default)."""

    def current(self):
        """R (n, 3, 3) and T (n, 3) now, detached."""
        with torch.no_grad():
            return self()

    def camera_positions(self) -> torch.Tensor:
        """Each camera's centre in mesh coordinates, (n, 3), detached."""
        return camera_centre(*self.current())

    def initial_positions(self) -> list[list[float]]:
        """The camera centres the poses started from, for the record."""
        return self.camera_positions().tolist()

    def all_finite(self) -> bool:
        """Are all the parameters finite? (all(finite_rows()) without the per-row lists: a tracked frame's
        fit asks at every step.)"""
        return all(bool(torch.isfinite(parameter.detach()).all()) for parameter in self.parameters())

    def finite_rows(self) -> list[bool]:
        """Per pose: are all its parameters finite?"""
        finite = torch.ones(len(self), dtype=torch.bool)
        for parameter in self.parameters():
            finite &= torch.isfinite(parameter.detach().reshape(len(self), -1)).all(dim=1).cpu()
        return finite.tolist()


class LookAt(PoseBatch):
    """The book's parameterisation: camera positions, each camera looking at the origin."""

    def __init__(self, positions, device="cpu"):
        super().__init__()
        self.starts = [[float(v) for v in p] for p in positions]
        positions = torch.as_tensor(np.asarray(positions, dtype=np.float32), device=device)
        # One start: the book's 3-vector. Several: one row each.
        self.camera_position = nn.Parameter(positions[0] if len(positions) == 1 else positions)

    def __len__(self) -> int:
        return self.camera_position.reshape(-1, 3).shape[0]

    def forward(self):
        return look_at(self.camera_position)

    def camera_positions(self) -> torch.Tensor:
        """The parameter itself, (n, 3), detached."""
        return self.camera_position.detach().reshape(-1, 3)

    def initial_positions(self) -> list[list[float]]:
        return self.starts

    def keep(self, rows):
        index = torch.tensor(rows, dtype=torch.long, device=self.camera_position.device)
        self.camera_position = nn.Parameter(self.camera_position.detach()[index].clone())


class SixDoF(PoseBatch):
    """Full poses: R = R0 @ exp(rotation), T = T0 + translation, corrections starting at zero.

    min_depth (with centre, a point of the mesh): keep() and constrain() hold that point at least this far
    in front of the camera, so that no pose comes close enough to fill the view (or pass behind it).
    """

    def __init__(self, R0: torch.Tensor, T0: torch.Tensor, min_depth: float | None = None, centre=None):
        super().__init__()
        self.register_buffer("R0", R0.detach().reshape(-1, 3, 3).clone())
        self.register_buffer("T0", T0.detach().reshape(-1, 3).clone())
        n = self.R0.shape[0]
        self.rotation = nn.Parameter(torch.zeros(n, 3, device=self.R0.device))
        self.translation = nn.Parameter(torch.zeros(n, 3, device=self.R0.device))
        self.min_depth = min_depth
        self.centre = torch.zeros(3, device=self.R0.device) if centre is None else centre.detach().reshape(3)

    def constrain(self) -> None:
        """Move any pose whose centre is nearer than min_depth back to it (along the optical axis)."""
        if self.min_depth is None:
            return
        with torch.no_grad():
            R, T = self()
            depth = (self.centre @ R)[:, 2] + T[:, 2]
            self.translation[:, 2] += (self.min_depth - depth).clamp(min=0)

    def __len__(self) -> int:
        return self.R0.shape[0]

    def forward(self):
        return rotate(self.R0, self.rotation), self.T0 + self.translation

    def keep(self, rows):
        index = torch.tensor(rows, dtype=torch.long, device=self.R0.device)
        self.R0, self.T0 = self.R0[index], self.T0[index]
        self.rotation = nn.Parameter(self.rotation.detach()[index].clone())
        self.translation = nn.Parameter(self.translation.detach()[index].clone())

    def poses(self):
        """R (n, 3, 3), nearest rotations, and T (n, 3), detached."""
        with torch.no_grad():
            R, T = self()
        return orthonormal(R), T


def rotate(R: torch.Tensor, axis_angle: torch.Tensor) -> torch.Tensor:
    """R followed by a rotation in camera axes about the object's origin."""
    shape = axis_angle.shape[:-1]
    return R @ ExpMap.apply(axis_angle.reshape(-1, 3)).reshape(*shape, 3, 3)


@numba.njit(cache=True, nogil=True)
def _exp(w: np.ndarray, R: np.ndarray) -> None:
    """R (N, 3, 3): the rotation matrices of axis-angle vectors w (N, 3), float64, by Rodrigues' formula
    I + a W + b W^2 (W the cross-product matrix of w; a and b by their series near 0)."""
    for n in range(w.shape[0]):
        x, y, z = w[n, 0], w[n, 1], w[n, 2]
        theta2 = x * x + y * y + z * z
        if theta2 < 1e-8:
            a, b = 1.0 - theta2 / 6.0, 0.5 - theta2 / 24.0
        else:
            theta = math.sqrt(theta2)
            a, b = math.sin(theta) / theta, (1.0 - math.cos(theta)) / theta2
        # W = [[0, -z, y], [z, 0, -x], [-y, x, 0]], W^2 = w w^T - theta2 I
        R[n, 0, 0] = 1.0 + b * (x * x - theta2)
        R[n, 1, 1] = 1.0 + b * (y * y - theta2)
        R[n, 2, 2] = 1.0 + b * (z * z - theta2)
        R[n, 0, 1], R[n, 1, 0] = -a * z + b * x * y, a * z + b * x * y
        R[n, 0, 2], R[n, 2, 0] = a * y + b * x * z, -a * y + b * x * z
        R[n, 1, 2], R[n, 2, 1] = -a * x + b * y * z, a * x + b * y * z


@numba.njit(cache=True, nogil=True)
def _exp_backward(w: np.ndarray, R: np.ndarray, G: np.ndarray, grad: np.ndarray) -> None:
    """grad (N, 3): dL/dw for the incoming gradient G (N, 3, 3) of R = exp(w) (ExpMap's formula), float64."""
    for n in range(w.shape[0]):
        H = G[n] @ R[n].T
        h = np.array([H[2, 1] - H[1, 2], H[0, 2] - H[2, 0], H[1, 0] - H[0, 1]])
        wn = w[n]
        theta2 = wn[0] * wn[0] + wn[1] * wn[1] + wn[2] * wn[2]
        if theta2 < 1e-14:
            grad[n] = h
            continue
        cross = np.array([h[1] * wn[2] - h[2] * wn[1], h[2] * wn[0] - h[0] * wn[2], h[0] * wn[1] - h[1] * wn[0]])
        turned = (np.eye(3) - R[n]).T @ cross
        grad[n] = (wn * (wn[0] * h[0] + wn[1] * h[1] + wn[2] * h[2]) + turned) / theta2


class ExpMap(torch.autograd.Function):
    """axis_angle_to_matrix as one autograd node with its gradient in closed form.

    PyTorch3D's goes through quaternions in some thirty small operations, each
    a node that the backward pass visits: a tenth of a tracker's step. The
    gradient (Gallego and Yezzi, "A compact formula for the derivative of a
    3-D rotation in exponential coordinates", 2015): with H = G R^T for the
    incoming gradient G and h its skew part as a vector,
    dL/dw = (w (w . h) + (I - R)^T (h x w)) / |w|^2, which tends to h as w
    tends to 0. Both ways in float64 (a float32 I - R loses the digits the gradient needs), compiled
    (numba): a tracker's step turns one or a few poses, and the same formulas as a few dozen numpy
    operations on 3x3 matrices took 0.6 ms of its seven, compiled a few microseconds (on a GPU the few
    numbers make the trip to the CPU and back).
    """

    @staticmethod
    def forward(ctx, w: torch.Tensor) -> torch.Tensor:
        # The float64 axis-angles and rotations, kept for the backward pass (numpy arrays, not tensors).
        ctx.w64 = np.ascontiguousarray(w.detach().cpu().numpy(), dtype=np.float64)
        ctx.R64 = np.empty((len(ctx.w64), 3, 3))
        _exp(ctx.w64, ctx.R64)
        ctx.device, ctx.dtype = w.device, w.dtype
        return torch.from_numpy(ctx.R64).to(w.device, w.dtype)

    @staticmethod
    def backward(ctx, G: torch.Tensor) -> torch.Tensor:
        grad = np.empty_like(ctx.w64)
        _exp_backward(ctx.w64, ctx.R64, np.ascontiguousarray(G.detach().cpu().numpy(), dtype=np.float64), grad)
        return torch.from_numpy(grad).to(ctx.device, ctx.dtype)


def orthonormal(R: torch.Tensor) -> torch.Tensor:
    """The nearest rotation, so that rounding does not pile up over thousands of frames."""
    U, _, Vh = torch.linalg.svd(R)
    return U @ Vh


def camera_centre(R: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """Where the camera is in mesh coordinates: -T @ R^T (per pose)."""
    return -(T.reshape(-1, 1, 3) @ R.reshape(-1, 3, 3).transpose(1, 2))[:, 0]


# ---------------------------------------------------------------------------
# Error metrics
# ---------------------------------------------------------------------------


def rotation_error_deg(R1: torch.Tensor, R2: torch.Tensor) -> float:
    """Geodesic angle between two rotations, in degrees (the cosine clamped against rounding)."""
    cos = so3_relative_angle(R1.reshape(1, 3, 3).double(), R2.reshape(1, 3, 3).double(), cos_angle=True)
    return float(torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))[0])


def view_angle_deg(a, b) -> float:
    """Angle between the rotations of two look-at cameras at positions a and b, in degrees."""
    R = look_at_rotation(torch.tensor([a, b], dtype=torch.float32))
    return rotation_error_deg(R[0], R[1])


def silhouette_iou(a: torch.Tensor, b: torch.Tensor, care: torch.Tensor | None = None) -> float:
    """Intersection over union of two masks (1.0 when both are empty); care: weights (0 or 1) of the pixels
    that count (a photo's piece taken for something in front of the object has 0), None: all of them."""
    a, b = a.bool(), b.bool()
    if care is not None:
        counted = care.to(a.device) > 0.5
        a, b = a & counted, b & counted
    union = (a | b).sum().item()
    return float((a & b).sum().item() / union) if union else 1.0


# ---------------------------------------------------------------------------
# Pose files: {"R": 3x3, "T": 3}
# ---------------------------------------------------------------------------


def check_pose(R, T, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, T) as float tensors, or a UserError saying what is wrong with them."""
    try:
        R = np.asarray(R, dtype=np.float64)
        T = np.asarray(T, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError(f"{where}: R and T must be numbers") from None
    if R.shape != (3, 3):
        raise UserError(f"{where}: R must be 3x3, got shape {R.shape}")
    if T.shape != (3,):
        raise UserError(f"{where}: T must have 3 numbers, got shape {T.shape}")
    if not (np.isfinite(R).all() and np.isfinite(T).all()):
        raise UserError(f"{where}: R and T must be finite")
    off = np.abs(R.T @ R - np.eye(3)).max()
    if off > ROTATION_TOLERANCE or np.linalg.det(R) <= 0:
        raise UserError(f"{where}: R is not a rotation (|R^T R - I| = {off:.2g}, det = {np.linalg.det(R):.3g})")
    if T[2] <= 0:
        raise UserError(f"{where}: T = {T.tolist()} puts the object behind the camera (T[2] must be > 0)")
    return torch.tensor(R, dtype=torch.float32), torch.tensor(T, dtype=torch.float32)


def pose_json(R: torch.Tensor, T: torch.Tensor) -> dict:
    return {"R": [[float(v) for v in row] for row in R.reshape(3, 3).tolist()], "T": [float(v) for v in T.reshape(3)]}


def read_json(path: Path, what: str):
    try:
        return json.loads(Path(path).read_text())
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{what} {path} is not valid JSON: {exc}") from None


def load_pose(path: Path, what: str = "--init-pose"):
    """A pose file: {"R": 3x3, "T": 3} (other keys are ignored)."""
    data = read_json(path, what)
    if not isinstance(data, dict) or "R" not in data or "T" not in data:
        raise UserError(f"{what} {path}: expected a JSON object with keys R and T")
    return check_pose(data["R"], data["T"], f"{what} {path}")
