"""Photo-realistic stand-ins for real photographs and video frames, rendered with Mitsuba 3 (benchmarks only).

Mitsuba is a benchmark-only dependency: it is imported here and nowhere outside
benchmarks/, and it is not in requirements.txt (``pip install mitsuba imageio-ffmpeg``).
Only the ``scalar_rgb`` variant is used (the llvm variants crash on the project's machines).

Pose convention: exactly PyTorch3D's. A pose (R 3x3, T 3) maps a mesh point x (row vector, the
.obj's raw vertex coordinates) to view coordinates x @ R + T, +X left, +Y up, +Z into the scene,
as ``FoVPerspectiveCameras(R=R[None], T=T[None], fov=fov)`` takes it; fov in degrees across the
image's shorter side. Both meshes are +Y up; the floor is the plane y = (lowest vertex y).

    import scenes
    specs = scenes.sample_photo_cases(seed=0, count=12)
    out = scenes.render_scene(specs[0])          # out["rgb"] or out["rgba"], out["object_mask"], ...
    frames = scenes.sample_sequence(seed=0, frames=60, kind="occluded")
    scenes.write_mp4([scenes.render_scene(s)["rgb"] for s in frames], "/tmp/seq.mp4", fps=15)

Everything is deterministic given the seed (Mitsuba's sampler is seeded per scene).
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import math
import time
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MESH_FILES = {
    "teapot": REPO / "data" / "teapot.obj",
    "cow": REPO / "data" / "cow_mesh" / "cow.obj",
}
COW_TEXTURE = REPO / "data" / "cow_mesh" / "cow_texture.png"
UP = np.array([0.0, 1.0, 0.0])  # both meshes stand on their lowest y, +Y up (checked by render)

# Floors (sRGB 8-bit, converted to linear reflectance).
FLOOR_COLOURS = {
    "mid-grey": (128, 128, 128),
    "light-grey": (190, 190, 186),
    "dark-grey": (82, 82, 84),
    "beige": (212, 194, 158),
    "wood-brown": (136, 96, 62),
    "green": (88, 128, 80),
    "blue": (78, 104, 150),
    "terracotta": (176, 104, 76),
}
OCCLUDER_COLOURS = {
    "red": (170, 42, 40),
    "yellow": (222, 182, 52),
    "wood": (150, 110, 72),
    "navy": (40, 58, 108),
    "off-white": (222, 220, 212),
    "charcoal": (44, 44, 46),
    "teal": (40, 120, 118),
}

# The photo cases' ranges, fixed before any result was looked at (do not tune them to results).
PHOTO_RANGES = {
    "fov_deg": (40.0, 65.0),
    "widths": (240, 244, 248, 252, 256),  # height = 3/4 width: 240x180 .. 256x192
    "portrait_share": 0.125,
    "elevation_deg": (10.0, 80.0),  # camera above the floor plane, seen from the object's centre
    "roll_deg": (-40.0, 40.0),
    "fill": (0.40, 0.70),  # bounding-sphere diameter / shorter side
    "offset": (0.11, 0.28),  # object's 2D bbox centre from the image centre / shorter side (>= 0.10 checked)
    "edge_margin_px": 2.0,  # every vertex at least this far inside the image
    "cutout_share": 1 / 6,
    "occluder_share": 1 / 4,  # at most this share of the cases (of every prefix of them)
    "occluder_chance": 0.36,  # of a non-cut-out case, before that cap
    "occluded_share": (0.05, 0.25),  # hidden share of the silhouette, re-drawn outside
    "noisy_share": 0.85,  # sensor noise + JPEG (cut-outs: noise + PNG); the rest clean PNG
    "noise_sigma": (1.0, 5.0),  # 8-bit units
    "jpeg_quality": (70, 95),
    "light_elevation_deg": (25.0, 75.0),
    "light_distance": (2.5, 4.5),  # times the object's bounding radius
    "light_radius": (0.15, 0.45),  # times the object's bounding radius: soft shadows
    "light_to_env": (1.0, 4.0),  # point-light irradiance / (pi * environment radiance)
    "exposure_key": (0.13, 0.22),
}
SEQUENCE_RANGES = {
    "size": (120, 160),
    "fov_deg": (50.0, 62.0),
    "elevation_deg": (18.0, 40.0),
    "azimuth_rate_deg": (0.8, 1.5),  # per frame, plus smooth wobble
    "approach": (0.20, 0.35),  # share of the distance closed over the sequence
    "fill": (0.42, 0.52),  # at the first frame
    "roll_amplitude_deg": 18.0,
    "drift": (0.15, 0.35),  # NDC units (shorter half side = 1), across the sequence
    "max_turn_deg": 3.0,  # per frame, checked
    "max_distance_step": 0.04,  # per frame, checked
    "noise_sigma": (1.5, 4.0),
    "jpeg_quality": (75, 90),
    "occluded_share": (0.20, 0.35),  # on at least MIN_OCCLUDED_FRAMES consecutive frames
}
MIN_OCCLUDED_FRAMES = 10
DEFAULT_SPP = 36  # stratified 6x6
MASK_SPP = 64


def srgb_to_linear(c):
    c = np.asarray(c, dtype=np.float64) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c):
    c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * c ** (1 / 2.4) - 0.055)


# ----------------------------------------------------------------------------------------- specs


@dataclass
class Occluder:
    """A box (yawed about +Y) or a vertical cylinder (a post, capped); base = the centre of its bottom face
    (on the floor, or above it for a floating bar)."""

    kind: str  # "box" | "cylinder"
    base: tuple  # (x, y, z) centre of its bottom face
    half_width: float  # box: half of x extent (before yaw); cylinder: radius
    half_depth: float  # box: half of z extent (before yaw); cylinder: unused
    height: float
    yaw_deg: float = 0.0
    rgb: tuple = (170, 42, 40)  # sRGB 8-bit
    name: str = "red"


@dataclass(eq=False)  # numpy fields: compare R, T yourself
class SceneSpec:
    mesh: str  # "teapot" | "cow"
    R: np.ndarray  # (3, 3), PyTorch3D convention
    T: np.ndarray  # (3,)
    fov: float  # degrees across the shorter side
    size: tuple = (192, 256)  # (H, W)
    floor_rgb: tuple = (128, 128, 128)  # sRGB 8-bit
    floor_name: str = "mid-grey"
    env_kind: str = "sky"  # "constant" | "sky" (procedural gradient, zenith -> horizon -> ground)
    env_rgb: tuple = (0.9, 0.95, 1.0)  # zenith (or constant) colour, linear
    env_horizon_rgb: tuple = (1.0, 0.97, 0.9)
    env_strength: float = 0.3  # radiance scale
    light_position: tuple = (2.0, 4.0, 2.0)  # mesh coordinates
    light_intensity: float = 10.0  # irradiance at unit distance (sphere radiance = I / (pi r^2))
    light_radius: float = 0.3
    light_rgb: tuple = (1.0, 0.95, 0.88)
    occluder: Occluder | None = None
    noise_sigma: float = 0.0  # 8-bit units, Gaussian per channel
    jpeg_quality: int | None = None  # None = PNG
    cutout: bool = False  # RGBA: the object alone, alpha = its anti-aliased coverage
    object_rgb: tuple | None = None  # the teapot's diffuse reflectance (linear); None: white plastic (TEAPOT_WHITE)
    floor_texture: str | None = None  # one of FLOOR_TEXTURES on the floor's colour; None: the colour alone
    distractor: Occluder | None = None  # something else on the floor beside the object, not in front of it
    exposure_key: float = 0.18  # auto-exposure: mean luminance maps to this (highlights capped)
    seed: int = 0  # Mitsuba sampler + noise
    meta: dict = field(default_factory=dict)

    def replace(self, **changes) -> SceneSpec:
        return dataclasses.replace(self, **changes)


# ------------------------------------------------------------------------------------ mesh info


@cache
def mesh_vertices(mesh: str) -> np.ndarray:
    """The .obj's raw vertex positions (N, 3), as PyTorch3D's load_obj reads them."""
    rows = []
    with open(MESH_FILES[mesh]) as handle:
        for line in handle:
            if line.startswith("v "):
                rows.append([float(v) for v in line.split()[1:4]])
    return np.asarray(rows, dtype=np.float64)


@cache
def mesh_info(mesh: str) -> dict:
    v = mesh_vertices(mesh)
    lo, hi = v.min(0), v.max(0)
    centre = (lo + hi) / 2
    return {
        "lo": lo,
        "hi": hi,
        "centre": centre,
        "radius": float(np.linalg.norm(v - centre, axis=1).max()),
        "floor_y": float(lo[1]),
        "height": float(hi[1] - lo[1]),
    }


# ------------------------------------------------------------------------------------- cameras


def look_at_R_T(eye, at, up=UP):
    """PyTorch3D's look_at_view_transform for one camera: R's columns are the camera axes in mesh coords."""
    eye, at, up = (np.asarray(a, dtype=np.float64) for a in (eye, at, up))
    z = at - eye
    z /= np.linalg.norm(z)
    x = np.cross(up, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z], axis=1)
    return R, -eye @ R


def camera_centre(R, T) -> np.ndarray:
    return -np.asarray(T) @ np.asarray(R).T


def _rot_z_row(angle_deg):
    """Row-vector rotation about the view axis: x_view @ Q rolls the camera."""
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])


def _rot_e_z_to(v):
    """Column-convention rotation M with M @ e_z = v (unit)."""
    v = np.asarray(v, dtype=np.float64) / np.linalg.norm(v)
    ez = np.array([0.0, 0.0, 1.0])
    axis = np.cross(ez, v)
    s, c = np.linalg.norm(axis), float(v @ ez)
    if s < 1e-12:
        return np.eye(3)
    k = axis / s
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + s * K + (1 - c) * K @ K


def camera_pose(mesh: str, azimuth_deg, elevation_deg, distance, roll_deg=0.0, offset_ndc=(0.0, 0.0), fov=60.0):
    """Camera on a sphere around the object's bbox centre (PyTorch3D's azimuth/elevation), then panned so
    that the centre appears at offset_ndc (PyTorch3D NDC: +x left, +y up, shorter half side = 1), then rolled."""
    centre = mesh_info(mesh)["centre"]
    el, az = math.radians(elevation_deg), math.radians(azimuth_deg)
    eye = centre + distance * np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
    R, T = look_at_R_T(eye, centre)
    t = math.tan(math.radians(fov) / 2)
    Q = _rot_e_z_to([offset_ndc[0] * t, offset_ndc[1] * t, 1.0]).T @ _rot_z_row(roll_deg)
    return R @ Q, T @ Q


def project(points, R, T, fov, size):
    """Pixel coordinates (col, row; continuous, 0..W, 0..H, pixel centres at +0.5) and view depth,
    as PyTorch3D's FoVPerspectiveCameras + rasterizer place them."""
    H, W = size
    v = np.asarray(points) @ np.asarray(R) + np.asarray(T)
    t = math.tan(math.radians(fov) / 2)
    s = min(H, W) / 2
    ndc = v[:, :2] / (v[:, 2:3] * t)
    return np.stack([W / 2 - ndc[:, 0] * s, H / 2 - ndc[:, 1] * s], axis=1), v[:, 2]


def framing(mesh, R, T, fov, size) -> dict:
    """Where the mesh lands: its vertex bbox in pixels, the bbox centre's offset from the image centre
    (share of the shorter side), the margin to the image border (pixels) and the nearest depth."""
    H, W = size
    px, z = project(mesh_vertices(mesh), R, T, fov, size)
    lo, hi = px.min(0), px.max(0)
    centre = (lo + hi) / 2
    return {
        "bbox": [float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])],
        "offset_share": float(np.hypot(centre[0] - W / 2, centre[1] - H / 2) / min(H, W)),
        "margin_px": float(min(lo[0], lo[1], W - hi[0], H - hi[1])),
        "min_depth": float(z.min()),
        "fill_share": float(max(hi[0] - lo[0], hi[1] - lo[1]) / min(H, W)),
    }


def rotation_angle_deg(R1, R2) -> float:
    c = (np.trace(np.asarray(R1).T @ np.asarray(R2)) - 1) / 2
    return math.degrees(math.acos(min(1.0, max(-1.0, c))))


def distance_for_fill(mesh, fill, fov):
    """Distance at which the bounding sphere's diameter spans `fill` of the shorter side."""
    r = mesh_info(mesh)["radius"]
    return r / math.sin(math.atan(fill * math.tan(math.radians(fov) / 2)))


# ---------------------------------------------------------------------------------- mitsuba side


@lru_cache(maxsize=1)
def _mi():
    import mitsuba as mi

    mi.set_variant("scalar_rgb")
    return mi


def _to_world(matrix):
    return _mi().ScalarTransform4f(np.asarray(matrix, dtype=np.float64).tolist())


def sensor_to_world(R, T) -> np.ndarray:
    """Mitsuba's camera frame is also +X left, +Y up, +Z forward: rotation columns = R's columns,
    origin = the camera centre in mesh coordinates."""
    M = np.eye(4)
    M[:3, :3] = np.asarray(R)
    M[:3, 3] = camera_centre(R, T)
    return M


def _square(spp: int) -> int:
    """The stratified sampler wants a square count: the nearest square at or above spp."""
    return math.ceil(math.sqrt(max(int(spp), 1))) ** 2


def _sensor(spec: SceneSpec, spp: int, rfilter: str) -> dict:
    H, W = spec.size
    return {
        "type": "perspective",
        "fov": float(spec.fov),
        "fov_axis": "smaller",
        "near_clip": 0.01,
        "far_clip": 1000.0,
        "to_world": _to_world(sensor_to_world(spec.R, spec.T)),
        "film": {"type": "hdrfilm", "width": int(W), "height": int(H), "rfilter": {"type": rfilter},
                 "pixel_format": "rgb"},
        # Stratified (jittered) samples: about half the noise of independent ones at the same count.
        "sampler": {"type": "stratified", "sample_count": _square(spp), "seed": int(spec.seed) % (2**31)},
    }


def _mesh_shape(mesh: str, bsdf: dict, flip_tex_coords: bool = True) -> dict:
    # flip_tex_coords (Mitsuba's default, True) puts the cow's texture where PyTorch3D puts it:
    # checked by check_scenes.py against a PyTorch3D TexturesUV render.
    return {"type": "obj", "filename": str(MESH_FILES[mesh]), "face_normals": False, "bsdf": bsdf,
            "flip_tex_coords": bool(flip_tex_coords)}


TEAPOT_WHITE = (0.80, 0.80, 0.78)  # the benchmark's teapot: plain white plastic
# Outside the fixed ranges, a probe (bench_photo.py --teapot-colours): teapots of other colours, in turn (linear).
TEAPOT_COLOURS = {"red": (0.55, 0.06, 0.05), "blue": (0.08, 0.16, 0.55), "black": (0.04, 0.04, 0.04),
                  "green": (0.15, 0.45, 0.12), "yellow": (0.75, 0.6, 0.08), "brown": (0.3, 0.16, 0.07),
                  "pink": (0.8, 0.4, 0.5), "teal": (0.1, 0.45, 0.45)}


def coloured_teapots(specs: list[SceneSpec]) -> list[tuple[SceneSpec, str | None]]:
    """Each spec with its teapot painted the next of TEAPOT_COLOURS in turn (a cow is left as it is), and the
    colour's name (None for a cow): the probe's cases, the same poses, floors and lights as the benchmark's."""
    names, out = itertools.cycle(TEAPOT_COLOURS), []
    for spec in specs:
        if spec.mesh != "teapot":
            out.append((spec, None))
            continue
        name = next(names)
        out.append((spec.replace(object_rgb=TEAPOT_COLOURS[name]), name))
    return out


# Textured floors: a probe outside the fixed ranges (session 52; bench_photo.py --floor-textures). A real table
# is seldom one flat colour: planks with their grain and joints, tiles and grout, a speckled stone or carpet.
FLOOR_TEXTURES = ("planks", "tiles", "speckle")
FLOOR_TEXTURE_SPAN = 4.0  # one repeat of the pattern, in the object's bounding radii


def floor_texture(name: str, rgb: tuple, seed: int, side: int = 512) -> np.ndarray:
    """(side, side, 3) linear reflectance: the floor's sRGB colour with the pattern `name` (FLOOR_TEXTURES) on
    it, seamless when repeated. planks: four planks a repeat, each a shade of its own, wavy grain along them
    and a dark joint between; tiles: 3x3 tiles, each a shade of its own, light grout 2.5% of a tile wide;
    speckle: a stone's or a carpet's fine grain with darker and lighter flecks."""
    from scipy import ndimage

    rng = np.random.default_rng([seed, 5252])
    y, x = np.mgrid[0:side, 0:side] / side

    def smooth(scale: float) -> np.ndarray:  # unit-variance noise that repeats, `scale` pixels across
        field = ndimage.gaussian_filter(rng.standard_normal((side, side)), scale, mode="wrap")
        return field / field.std()

    if name == "planks":
        plank = np.floor(y * 4).astype(int)
        along = (y * 4) % 1
        grain = np.sin(2 * np.pi * (along * 6 + 0.35 * smooth(24.0) + x * rng.integers(1, 3, 4)[plank]))
        factor = (1 + 0.1 * rng.standard_normal(4))[plank] * (0.9 + 0.08 * grain + 0.03 * smooth(1.5))
        factor = np.where((along < 0.012) | (along > 0.988), 0.5, factor)
    elif name == "tiles":
        row, col, u, v = np.floor(y * 3).astype(int), np.floor(x * 3).astype(int), (y * 3) % 1, (x * 3) % 1
        factor = (1 + 0.05 * rng.standard_normal((3, 3)))[row, col] * (1 + 0.02 * smooth(2.0))
        grout = (np.minimum(u, 1 - u) < 0.0125) | (np.minimum(v, 1 - v) < 0.0125)
        factor = np.where(grout, 1.35, factor)
    elif name == "speckle":
        flecks = rng.random((side, side))
        factor = 1 + 0.08 * smooth(1.0) + 0.05 * smooth(6.0)
        factor = np.where(flecks < 0.03, 0.6, np.where(flecks > 0.97, 1.3, factor))
    else:
        raise ValueError(f"unknown floor texture {name!r}")
    return np.clip(srgb_to_linear(rgb)[None, None, :] * factor[..., None], 0.0, 1.0).astype(np.float32)


def textured_floors(specs: list[SceneSpec]) -> list[SceneSpec]:
    """Each spec with its floor given the next of FLOOR_TEXTURES in turn on its colour (spec.floor_texture):
    the probe's cases, the same poses, objects, lights and things in front as the benchmark's."""
    names = itertools.cycle(FLOOR_TEXTURES)
    return [spec.replace(floor_texture=name) for spec, name in zip(specs, names, strict=False)]


def _floor_bsdf(spec: SceneSpec, radius: float) -> dict:
    colour = srgb_to_linear(spec.floor_rgb).tolist()
    if spec.floor_texture is None:
        return {"type": "diffuse", "reflectance": {"type": "rgb", "value": colour}}
    mi = _mi()
    # The rectangle's UV runs 0-1 over its 120 units; one repeat of the pattern spans FLOOR_TEXTURE_SPAN radii.
    repeats = 120.0 / (FLOOR_TEXTURE_SPAN * radius)
    image = floor_texture(spec.floor_texture, spec.floor_rgb, spec.seed)
    return {"type": "diffuse", "reflectance": {"type": "bitmap", "bitmap": mi.Bitmap(image), "raw": True,
                                               "filter_type": "bilinear", "wrap_mode": "repeat",
                                               "to_uv": mi.ScalarTransform4f().scale([repeats, repeats, 1.0])}}


def _object_bsdf(mesh: str, rgb: tuple | None = None) -> dict:
    if mesh == "cow":
        return {"type": "diffuse", "reflectance": {"type": "bitmap", "filename": str(COW_TEXTURE),
                                                   "filter_type": "bilinear"}}
    return {"type": "roughplastic", "distribution": "ggx", "alpha": 0.12,
            "diffuse_reflectance": {"type": "rgb", "value": list(rgb or TEAPOT_WHITE)}}


def _occluder_shapes(occ: Occluder, bsdf: dict, name: str = "occluder") -> dict:
    mi = _mi()
    T4 = mi.ScalarTransform4f
    bx, by, bz = (float(c) for c in occ.base)
    if occ.kind == "box":
        to_world = (T4().translate([bx, by + occ.height / 2, bz]) @ T4().rotate([0, 1, 0], float(occ.yaw_deg))
                    @ T4().scale([occ.half_width, occ.height / 2, occ.half_depth]))
        return {name: {"type": "cube", "to_world": to_world, "bsdf": bsdf}}
    if occ.kind == "cylinder":
        top = [bx, by + occ.height, bz]
        return {
            name: {"type": "cylinder", "p0": [bx, by, bz], "p1": top, "radius": float(occ.half_width),
                   "bsdf": bsdf},
            f"{name}_cap": {"type": "disk", "bsdf": bsdf,
                             "to_world": T4().translate(top) @ T4().rotate([1, 0, 0], -90)
                             @ T4().scale(float(occ.half_width))},
        }
    raise ValueError(f"unknown occluder kind {occ.kind!r}")


def _envmap(spec: SceneSpec) -> dict:
    mi = _mi()
    zen = np.asarray(spec.env_rgb, dtype=np.float64)
    if spec.env_kind == "constant":
        return {"type": "constant", "radiance": {"type": "rgb", "value": (zen * spec.env_strength).tolist()}}
    if spec.env_kind != "sky":
        raise ValueError(f"unknown environment {spec.env_kind!r}")
    # Lat-long map, row 0 = +Y (Mitsuba's envmap convention); azimuth-independent, so no azimuth convention.
    h, w = 64, 128
    theta = (np.arange(h) + 0.5) / h * math.pi  # from +Y
    elev = math.pi / 2 - theta
    hor = np.asarray(spec.env_horizon_rgb, dtype=np.float64)
    up = np.clip(np.sin(elev), 0, 1)[:, None] ** 0.6
    sky = hor[None] * (1 - up) + zen[None] * up
    ground = 0.35 * hor[None] * np.ones((h, 1))
    rows = np.where((elev > 0)[:, None], sky, ground) * spec.env_strength
    img = np.repeat(rows[:, None, :], w, axis=1).astype(np.float32)
    return {"type": "envmap", "bitmap": mi.Bitmap(img)}


def _things_on_the_floor(spec: SceneSpec) -> list[tuple[str, Occluder]]:
    """The scene's shapes besides the object and the floor, by their names in the scene: what stands in front
    of the object, and what stands beside it."""
    return [(name, thing) for name, thing in (("occluder", spec.occluder), ("distractor", spec.distractor))
            if thing is not None]


def build_scene_dict(spec: SceneSpec, pass_: str, spp: int) -> dict:
    """pass_: "beauty" (the photo), "visible" (object albedo 1, occluder 0, nothing else: coverage of the
    visible object), "silhouette" (object alone: its full anti-aliased coverage)."""
    mi = _mi()
    T4 = mi.ScalarTransform4f
    info = mesh_info(spec.mesh)
    scene = {"type": "scene"}
    if pass_ == "beauty":
        scene["integrator"] = {"type": "path", "max_depth": 5}
        scene["sensor"] = _sensor(spec, spp, "gaussian")
        scene["object"] = _mesh_shape(spec.mesh, _object_bsdf(spec.mesh, spec.object_rgb))
        floor = _floor_bsdf(spec, float(info["radius"]))
        scene["floor"] = {
            "type": "rectangle",
            "bsdf": floor,
            "to_world": T4().translate([float(info["centre"][0]), info["floor_y"] - 1e-4, float(info["centre"][2])])
            @ T4().rotate([1, 0, 0], -90) @ T4().scale(60.0),
        }
        for name, thing in _things_on_the_floor(spec):
            paint = {"type": "roughplastic", "distribution": "ggx", "alpha": 0.3,
                     "diffuse_reflectance": {"type": "rgb", "value": srgb_to_linear(thing.rgb).tolist()}}
            scene.update(_occluder_shapes(thing, paint, name))
        scene["env"] = _envmap(spec)
        r = float(spec.light_radius)
        radiance = np.asarray(spec.light_rgb) * spec.light_intensity / (math.pi * r * r)
        scene["light"] = {"type": "sphere", "center": [float(c) for c in spec.light_position], "radius": r,
                          "emitter": {"type": "area", "radiance": {"type": "rgb", "value": radiance.tolist()}},
                          "bsdf": {"type": "diffuse", "reflectance": {"type": "rgb", "value": [0, 0, 0]}}}
        return scene
    scene["integrator"] = {"type": "aov", "aovs": "a:albedo"}
    scene["sensor"] = _sensor(spec, spp, "box")
    white = {"type": "diffuse", "reflectance": {"type": "rgb", "value": [1.0, 1.0, 1.0]}}
    scene["object"] = _mesh_shape(spec.mesh, white)
    if pass_ == "visible":
        black = {"type": "diffuse", "reflectance": {"type": "rgb", "value": [0.0, 0.0, 0.0]}}
        for name, thing in _things_on_the_floor(spec):
            scene.update(_occluder_shapes(thing, black, name))
    elif pass_ != "silhouette":
        raise ValueError(f"unknown pass {pass_!r}")
    return scene


def _render(scene_dict: dict) -> np.ndarray:
    mi = _mi()
    scene = mi.load_dict(scene_dict)
    mi.render(scene)
    film = scene.sensors()[0].film()
    return np.array(film.develop(), dtype=np.float32)


def render_coverage(spec: SceneSpec, pass_: str = "visible", spp: int = MASK_SPP) -> np.ndarray:
    """Anti-aliased coverage (H, W) float in [0, 1] of the object (box filter, `spp` samples a pixel)."""
    img = _render(build_scene_dict(spec, pass_, spp))
    return np.clip(img[..., -1], 0.0, 1.0)  # the albedo AOV's last channel (B); R, G, B equal


def render_albedo(spec: SceneSpec, spp: int = 16, flip_tex_coords: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The object's albedo (H, W, 3, linear; the cow's texture colour) under no lighting at all, and its
    coverage: to compare texture placement with PyTorch3D's TexturesUV."""
    scene = build_scene_dict(spec, "silhouette", spp)
    scene["object"] = _mesh_shape(spec.mesh, _object_bsdf(spec.mesh, spec.object_rgb), flip_tex_coords)
    albedo = _render(scene)[..., -3:]
    cov = render_coverage(spec, "silhouette", spp)
    return albedo / np.maximum(cov, 1e-6)[..., None], cov


def occluded_share(spec: SceneSpec, spp: int = 16) -> tuple[float, np.ndarray, np.ndarray]:
    """Hidden share of the mesh's silhouette (by coverage) and the two coverages."""
    sil = render_coverage(spec, "silhouette", spp)
    vis = render_coverage(spec, "visible", spp) if spec.occluder is not None else sil
    total = float(sil.sum())
    return (1.0 - float(vis.sum()) / total if total > 0 else 0.0), vis, sil


def tonemap(linear: np.ndarray, key: float) -> tuple[np.ndarray, float]:
    """Auto-exposure (mean luminance -> key, the 99.7th percentile at most 1.1) then a soft shoulder and sRGB."""
    lum = linear @ np.array([0.2126, 0.7152, 0.0722])
    exposure = min(key / max(float(lum.mean()), 1e-8), 1.1 / max(float(np.percentile(lum, 99.7)), 1e-8))
    x = linear * exposure
    knee = 0.8
    x = np.where(x < knee, x, knee + (1 - knee) * (1 - np.exp(-(x - knee) / (1 - knee))))
    return linear_to_srgb(x), exposure


def _encode(img: np.ndarray, quality: int | None) -> tuple[bytes, np.ndarray]:
    from PIL import Image

    buf = io.BytesIO()
    if quality is None:
        Image.fromarray(img).save(buf, format="PNG")
        return buf.getvalue(), img
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
    data = buf.getvalue()
    with Image.open(io.BytesIO(data)) as decoded:
        return data, np.asarray(decoded.convert("RGB"))


def _decontaminate(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Cut-out colours: edge pixels (0 < alpha < 1) take the nearest fully covered pixel's colour, so that
    the floor does not bleed into the object's fringe; fully transparent pixels are black."""
    from scipy.ndimage import distance_transform_edt

    inside = alpha >= 0.98
    out = rgb.copy()
    if inside.any():
        _, (ri, ci) = distance_transform_edt(~inside, return_indices=True)
        edge = (alpha > 0) & ~inside
        out[edge] = rgb[ri[edge], ci[edge]]
    out[alpha <= 0] = 0
    return out


def render_scene(scene: SceneSpec, spp: int = DEFAULT_SPP, mask_spp: int = MASK_SPP) -> dict:
    """Render one photo / frame. Returns a dict:

    rgb (H, W, 3) uint8 as the saved file holds it (after noise and JPEG), or for cut-outs rgba (H, W, 4)
    uint8 (straight alpha = the object's anti-aliased coverage; no floor, no shadow in it); image (whichever
    of the two); encoded (the file's bytes), ext (".jpg" | ".png"); rgb_clean (before noise / JPEG);
    object_mask (H, W) bool = visible coverage >= 0.5 (not hidden by the occluder); object_coverage (H, W)
    float; silhouette_mask / silhouette_coverage (the mesh alone, ignoring the occluder); occluded_share
    (hidden share of the silhouette, by coverage); R, T, fov, size, mesh, camera_centre, framing (bbox etc.),
    exposure, seconds, spec.
    """
    started = time.perf_counter()
    spec = scene
    linear = _render(build_scene_dict(spec, "beauty", spp))[..., :3]
    share, vis, sil = occluded_share(spec, mask_spp)
    srgb, exposure = tonemap(linear, spec.exposure_key)
    img = srgb * 255.0
    rng = np.random.default_rng([int(spec.seed) % (2**32), 7])
    if spec.noise_sigma > 0:
        img = img + rng.normal(0.0, spec.noise_sigma, img.shape)
    img = np.clip(np.round(img), 0, 255).astype(np.uint8)
    clean = np.clip(np.round(srgb * 255.0), 0, 255).astype(np.uint8)
    out = {
        "mesh": spec.mesh,
        "R": np.asarray(spec.R, dtype=np.float64),
        "T": np.asarray(spec.T, dtype=np.float64),
        "fov": float(spec.fov),
        "size": tuple(spec.size),
        "camera_centre": camera_centre(spec.R, spec.T),
        "framing": framing(spec.mesh, spec.R, spec.T, spec.fov, spec.size),
        "object_coverage": vis,
        "object_mask": vis >= 0.5,
        "silhouette_coverage": sil,
        "silhouette_mask": sil >= 0.5,
        "occluded_share": share,
        "exposure": exposure,
        "rgb_clean": clean,
        "spec": spec,
    }
    if spec.cutout:
        alpha = np.clip(np.round(vis * 255), 0, 255).astype(np.uint8)
        rgba = np.dstack([_decontaminate(img, alpha), alpha])
        out["encoded"], out["rgba"] = _encode(rgba, None)
        out["image"], out["ext"] = out["rgba"], ".png"
    else:
        out["encoded"], out["rgb"] = _encode(img, spec.jpeg_quality)
        out["image"], out["ext"] = out["rgb"], ".png" if spec.jpeg_quality is None else ".jpg"
    out["seconds"] = time.perf_counter() - started
    return out


def save(result: dict, path_without_ext) -> Path:
    """Write the rendered file as it was encoded (.jpg or .png); returns its path."""
    path = Path(str(path_without_ext) + result["ext"])
    path.write_bytes(result["encoded"])
    return path


# -------------------------------------------------------------------------------------- lights


def _draw_light(rng, mesh, ranges=PHOTO_RANGES):
    info = mesh_info(mesh)
    r = info["radius"]
    el = math.radians(rng.uniform(*ranges["light_elevation_deg"]))
    az = rng.uniform(0, 2 * math.pi)
    d = rng.uniform(*ranges["light_distance"]) * r
    pos = info["centre"] + d * np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
    pos[1] = max(pos[1], info["hi"][1] + 0.5 * r)
    return pos, rng.uniform(*ranges["light_radius"]) * r


def _draw_lighting(rng, mesh, spec_kwargs, ranges=PHOTO_RANGES):
    """Environment (sky gradient or constant) + a sphere light; fills spec_kwargs."""
    env_kind = "sky" if rng.random() < 0.7 else "constant"
    warmth = rng.uniform(-1, 1)
    zen = np.array([0.85, 0.92, 1.0]) if warmth < 0 else np.array([1.0, 0.97, 0.92])
    hor = np.array([1.0, 0.96, 0.88]) * rng.uniform(0.8, 1.0)
    env_strength = rng.uniform(0.2, 0.5)
    light_rgb = np.array([1.0, 0.93, 0.82]) if rng.random() < 0.5 else np.array([1.0, 0.98, 0.95])
    pos, radius = _draw_light(rng, mesh, ranges)
    ratio = rng.uniform(*ranges["light_to_env"])
    d = np.linalg.norm(pos - mesh_info(mesh)["centre"])
    spec_kwargs.update(env_kind=env_kind, env_rgb=tuple(zen), env_horizon_rgb=tuple(hor),
                       env_strength=float(env_strength), light_position=tuple(pos), light_radius=float(radius),
                       light_intensity=float(ratio * math.pi * env_strength * d * d), light_rgb=tuple(light_rgb))


def _light_out_of_view(spec_kwargs, R, T, fov, size) -> bool:
    pos = np.asarray(spec_kwargs["light_position"])[None]
    px, depth = project(pos, R, T, fov, size)
    (col, row), z = px[0], depth[0]
    if z <= 0:
        return True
    H, W = size
    pad = spec_kwargs["light_radius"] / z / math.tan(math.radians(fov) / 2) * min(H, W) / 2 + 4
    return not (-pad < col < W + pad and -pad < row < H + pad)


# ---------------------------------------------------------------------------------------- photos


def _draw_photo_camera(rng, mesh, fov, size):
    """Random camera above the floor, rolled, object off-centre and fully inside; re-drawn until it is."""
    ranges = PHOTO_RANGES
    for _ in range(200):
        az = rng.uniform(0, 360)
        el = rng.uniform(*ranges["elevation_deg"])
        roll = rng.uniform(*ranges["roll_deg"])
        fill = rng.uniform(*ranges["fill"])
        dist = distance_for_fill(mesh, fill, fov)
        mag = rng.uniform(*ranges["offset"]) * 2  # shorter side = 2 NDC units
        ang = rng.uniform(0, 2 * math.pi)
        R, T = camera_pose(mesh, az, el, dist, roll, (mag * math.cos(ang), mag * math.sin(ang)), fov)
        f = framing(mesh, R, T, fov, size)
        if f["offset_share"] >= 0.10 and f["margin_px"] >= ranges["edge_margin_px"] and f["min_depth"] > 1.05:
            return R, T, {"azimuth_deg": az, "elevation_deg": el, "roll_deg": roll, "distance": dist, **f}
    raise RuntimeError("could not frame the object")


def _horizontal_right(R) -> np.ndarray:
    right = np.asarray(R)[:, 0].copy()
    right[1] = 0
    return right / max(np.linalg.norm(right), 1e-9)


def _draw_occluder(rng, mesh, R, T) -> Occluder:
    """Part of the way from the camera to the object, beside the line of sight: from cameras up to 50 degrees
    above the floor, a box or a post standing on the floor; from higher up (where a floor-standing object would
    have to touch the object to get in the way), a floating bar (a box across the view, like a shelf board)."""
    info = mesh_info(mesh)
    C = camera_centre(R, T)
    P = info["centre"]
    r = info["radius"]
    elevation = math.degrees(math.atan2(C[1] - P[1], math.hypot(C[0] - P[0], C[2] - P[2])))
    right = _horizontal_right(R)
    name = list(OCCLUDER_COLOURS)[rng.integers(len(OCCLUDER_COLOURS))]
    colour = OCCLUDER_COLOURS[name]
    t = rng.uniform(0.3, 0.6)
    if elevation > 50:
        aim = P + rng.uniform(-0.8, 0.8) * r * R[:, 0] + rng.uniform(-0.8, 0.8) * r * R[:, 1]
        centre = C + t * (aim - C)
        half_len = rng.uniform(0.4, 1.0) * r * t
        half_thick = rng.uniform(0.06, 0.15) * r * t
        yaw = math.degrees(math.atan2(-right[2], right[0])) + rng.uniform(-30, 30)
        base = centre - np.array([0.0, half_thick, 0.0])
        return Occluder("box", tuple(base), float(half_len), float(half_thick), float(2 * half_thick), float(yaw),
                        colour, name)
    kind = "box" if rng.random() < 0.5 else "cylinder"
    base = C + t * (P - C) + rng.uniform(-0.9, 0.9) * r * t * right
    base[1] = info["floor_y"]
    # Height: up to the line of sight to a point at fraction u of the object's height.
    u = rng.uniform(0.2, 0.6) if kind == "box" else rng.uniform(0.8, 1.3)
    height = (C[1] - info["floor_y"]) * (1 - t) + t * u * info["height"]
    if kind == "box":
        hw, hd = rng.uniform(0.15, 0.45, size=2) * r * t
        yaw = rng.uniform(0, 90)
    else:
        hw = rng.uniform(0.08, 0.2) * r * t
        hd, yaw = hw, 0.0
    return Occluder(kind, tuple(base), float(hw), float(hd), float(height), float(yaw), colour, name)


def _occluder_clear(occ: Occluder, mesh, R, T) -> bool:
    """The occluder's bounding box keeps clear of the object's (by 5% of its radius) and of the camera."""
    info = mesh_info(mesh)
    foot = math.hypot(occ.half_width, occ.half_depth)
    b = np.asarray(occ.base, dtype=np.float64)
    o_lo = np.array([b[0] - foot, b[1], b[2] - foot])
    o_hi = np.array([b[0] + foot, b[1] + occ.height, b[2] + foot])
    pad = 0.05 * info["radius"]
    apart = np.any(o_lo > info["hi"] + pad) or np.any(o_hi < info["lo"] - pad)
    C = camera_centre(R, T)
    camera_out = np.any(C < o_lo - 0.3) or np.any(C > o_hi + 0.3)
    return bool(apart and camera_out)


def sample_photo_cases(seed: int, count: int) -> list[SceneSpec]:
    """Random photo stand-ins with the fixed PHOTO_RANGES: meshes alternate (teapot first), about 1 in 6 cut-outs,
    at most a quarter with an occluder hiding 5-25% of the silhouette (measured; re-drawn outside).
    Case i depends only on (seed, i): sample_photo_cases(s, n)[:k] == sample_photo_cases(s, k)."""
    ranges = PHOTO_RANGES
    specs = []
    n_occluded = 0
    for i in range(count):
        rng = np.random.default_rng([int(seed), 4242, i])
        mesh = ("teapot", "cow")[i % 2]
        cutout = bool(rng.random() < ranges["cutout_share"])
        # Occluders: about a quarter, capped so that no prefix of the cases has more than a quarter.
        wants_occluder = rng.random() < ranges["occluder_chance"]
        occluded = not cutout and wants_occluder and n_occluded + 1 <= (i + 1) * ranges["occluder_share"]
        n_occluded += occluded
        w = int(rng.choice(ranges["widths"]))
        size = (w * 3 // 4, w)
        if rng.random() < ranges["portrait_share"]:
            size = size[::-1]
        fov = float(rng.uniform(*ranges["fov_deg"]))
        floor_name = list(FLOOR_COLOURS)[rng.integers(len(FLOOR_COLOURS))]
        kw = {}
        for _ in range(100):
            R, T, meta = _draw_photo_camera(rng, mesh, fov, size)
            _draw_lighting(rng, mesh, kw)
            if _light_out_of_view(kw, R, T, fov, size):
                break
        else:
            raise RuntimeError("could not keep the light out of view")
        noisy = rng.random() < ranges["noisy_share"]
        sigma = float(rng.uniform(*ranges["noise_sigma"]))
        quality = int(rng.integers(ranges["jpeg_quality"][0], ranges["jpeg_quality"][1] + 1))
        spec = SceneSpec(
            mesh=mesh, R=R, T=T, fov=fov, size=size, floor_rgb=FLOOR_COLOURS[floor_name], floor_name=floor_name,
            noise_sigma=sigma if noisy else 0.0,
            jpeg_quality=quality if noisy and not cutout else None,  # cut-outs are PNG (alpha)
            cutout=cutout, exposure_key=float(rng.uniform(*ranges["exposure_key"])),
            seed=int(rng.integers(2**31)), meta={"case": i, **meta}, **kw,
        )
        if occluded:
            spec = _place_photo_occluder(rng, spec)
        specs.append(spec)
    return specs


def _place_photo_occluder(rng, spec: SceneSpec) -> SceneSpec:
    lo, hi = PHOTO_RANGES["occluded_share"]
    for attempt in range(100):
        occ = _draw_occluder(rng, spec.mesh, spec.R, spec.T)
        if not _occluder_clear(occ, spec.mesh, spec.R, spec.T):
            continue
        trial = spec.replace(occluder=occ)
        if not lo <= occluded_share(trial, spp=16)[0] <= hi:  # a quick look first
            continue
        share = occluded_share(trial, spp=MASK_SPP)[0]  # as render_scene measures it
        if lo <= share <= hi:
            return trial.replace(meta={**spec.meta, "occluded_share": share, "occluder_draws": attempt + 1})
    raise RuntimeError("could not place an occluder hiding 5-25% of the silhouette")


# ------------------------------------------------------------------------------------- sequences


def _smooth(rng, n, amplitude, freq=(1 / 90, 1 / 40), parts=2):
    """A smooth wobble: sum of sinusoids, peak at most `amplitude`."""
    t = np.arange(n)
    amps = rng.dirichlet(np.ones(parts)) * amplitude
    out = np.zeros(n)
    for a in amps:
        out += a * np.sin(2 * math.pi * rng.uniform(*freq) * t + rng.uniform(0, 2 * math.pi))
    return out


def _sequence_path(rng, frames, mesh, fov, size):
    ranges = SEQUENCE_RANGES
    t = np.arange(frames)
    u = t / max(frames - 1, 1)
    az = rng.uniform(0, 360) + rng.choice([-1, 1]) * rng.uniform(*ranges["azimuth_rate_deg"]) * t \
        + _smooth(rng, frames, 4.0)
    el = rng.uniform(*ranges["elevation_deg"]) + _smooth(rng, frames, 6.0)
    d0 = distance_for_fill(mesh, rng.uniform(*ranges["fill"]), fov)
    dist = d0 * (1 - rng.uniform(*ranges["approach"]) * u) * (1 + _smooth(rng, frames, 0.03))
    amp = rng.uniform(0.65, 0.9) * ranges["roll_amplitude_deg"]
    cycles = rng.uniform(0.75, 1.0) * min(1.0, frames / 45)  # at most one period in 45 frames: <= 2.3 deg/frame
    roll = amp * np.sin(2 * math.pi * cycles / frames * t + rng.uniform(0, 2 * math.pi)) \
        + _smooth(rng, frames, 0.1 * ranges["roll_amplitude_deg"], freq=(1 / 30, 1 / 15))
    drift = rng.choice([-1, 1]) * rng.uniform(*ranges["drift"])
    # Hand-held shake: a little smoothed jitter on the pan (about 0.2 degrees).
    shake = np.stack([np.convolve(rng.normal(0, 0.006, frames + 2), np.ones(3) / 3, "valid") for _ in range(2)])
    ox = drift * (2 * u - 1) + _smooth(rng, frames, 0.06) + shake[0]
    oy = rng.uniform(-0.1, 0.1) + _smooth(rng, frames, 0.10) + shake[1]
    poses, metas = [], []
    for i in range(frames):
        R, T = camera_pose(mesh, az[i], el[i], dist[i], roll[i], (ox[i], oy[i]), fov)
        poses.append((R, T))
        metas.append({"azimuth_deg": float(az[i]), "elevation_deg": float(el[i]), "distance": float(dist[i]),
                      "roll_deg": float(roll[i]), "offset_ndc": (float(ox[i]), float(oy[i])),
                      **framing(mesh, R, T, fov, size)})
    return poses, metas


def _path_ok(poses, metas) -> bool:
    ranges = SEQUENCE_RANGES
    if any(m["margin_px"] < 1.0 or m["min_depth"] < 1.05 for m in metas):
        return False
    for (R0, _), (R1, _), m0, m1 in zip(poses, poses[1:], metas, metas[1:], strict=False):
        if rotation_angle_deg(R0, R1) > ranges["max_turn_deg"]:
            return False
        if abs(m1["distance"] / m0["distance"] - 1) > ranges["max_distance_step"]:
            return False
    return True


def _post_at(mesh, R, T, t, s, half_width, colour):
    """A post on the floor at fraction t of the way from the camera to the object, s object radii (as seen)
    to the side of the line of sight, tall enough to cross the whole object."""
    info = mesh_info(mesh)
    C = camera_centre(R, T)
    base = C + t * (info["centre"] - C) + s * info["radius"] * t * _horizontal_right(R)
    base[1] = info["floor_y"]
    height = ((C[1] - info["floor_y"]) * (1 - t) + t * info["height"]) * 1.15 + 0.1 * info["radius"]
    name, rgb = colour
    return Occluder("box", tuple(base), float(half_width), float(half_width), float(height), 0.0, rgb, name)


def sample_sequence(seed: int, frames: int = 60, kind: str = "plain", mesh: str = "cow") -> list[SceneSpec]:
    """Video stand-in (about 160x120): a hand-held camera moving around and towards the cow (turn <= 3 deg and
    distance change <= 4% per frame, roll within +-20 deg, the object drifting across), noise and JPEG.
    kind "occluded": a post crosses in front, hiding 20-35% of the silhouette on >= 10 (searched: 12) consecutive
    frames (measured as render_scene measures it; meta["occluded_share"] per frame, meta["occlusion_frames"] the run).
    One SceneSpec per frame; meta["frame"] is its index. Exposure is automatic per frame, as a camera's."""
    if kind not in ("plain", "occluded"):
        raise ValueError(f"kind must be 'plain' or 'occluded', not {kind!r}")
    if kind == "occluded" and frames < MIN_OCCLUDED_FRAMES + 6:
        raise ValueError(f"an occluded sequence needs at least {MIN_OCCLUDED_FRAMES + 6} frames")
    ranges = SEQUENCE_RANGES
    rng = np.random.default_rng([int(seed), 1717, 0 if kind == "plain" else 1])
    size = ranges["size"]
    fov = float(rng.uniform(*ranges["fov_deg"]))
    floor_name = ["beige", "wood-brown", "green", "blue", "terracotta"][rng.integers(5)]  # coloured floors
    for _ in range(200):
        poses, metas = _sequence_path(rng, frames, mesh, fov, size)
        if not _path_ok(poses, metas):
            continue
        kw = {}
        _draw_lighting(rng, mesh, kw)
        if all(_light_out_of_view(kw, R, T, fov, size) for R, T in poses):
            break
    else:
        raise RuntimeError("could not draw a camera path")
    base = dict(mesh=mesh, fov=fov, size=size, floor_rgb=FLOOR_COLOURS[floor_name], floor_name=floor_name,
                noise_sigma=float(rng.uniform(*ranges["noise_sigma"])),
                jpeg_quality=int(rng.integers(ranges["jpeg_quality"][0], ranges["jpeg_quality"][1] + 1)),
                exposure_key=float(rng.uniform(0.15, 0.2)), **kw)
    frame_seed = int(rng.integers(2**31 - frames))
    specs = [SceneSpec(R=R, T=T, seed=frame_seed + i, meta={"frame": i, "kind": kind, **m}, **base)
             for i, ((R, T), m) in enumerate(zip(poses, metas, strict=True))]
    if kind == "occluded":
        specs = _place_sequence_post(rng, specs)
    return specs


def smaller_objects(specs: list[SceneSpec], seed: int, fill=(0.25, 0.40)) -> list[SceneSpec]:
    """Each photo spec with its camera moved back along the ray through the object's centre, so that the
    bounding sphere spans `fill` of the shorter side (PHOTO_RANGES' is 0.40-0.70): the object where the
    photo had it, smaller, as in a photo taken from further off. The sphere light moves away from the object
    by the same factor (its radius too, its intensity by the square: the same light on the object, still out
    of view); rotation, floor and occluder as drawn (an occluder, nearer the camera, then hides another
    share). A probe outside the fixed ranges (session 61; bench_photo.py --smaller)."""
    out = []
    for i, spec in enumerate(specs):
        rng = np.random.default_rng([int(seed), 6161, i])
        P = mesh_info(spec.mesh)["centre"]
        C = camera_centre(spec.R, spec.T)
        k = distance_for_fill(spec.mesh, float(rng.uniform(*fill)), spec.fov) / float(np.linalg.norm(C - P))
        k = max(k, 1.0)
        T = -(P + k * (C - P)) @ np.asarray(spec.R)
        light = P + k * (np.asarray(spec.light_position) - P)
        out.append(spec.replace(T=T, light_position=tuple(float(v) for v in light),
                                light_radius=spec.light_radius * k, light_intensity=spec.light_intensity * k * k,
                                meta={**spec.meta, **framing(spec.mesh, spec.R, T, spec.fov, spec.size)}))
    return out


def with_distractors(specs: list[SceneSpec], seed: int) -> list[SceneSpec]:
    """Each photo spec (not a cut-out) with something else standing on the floor beside the object: a box (a
    book, a carton) or a post-like cylinder (a mug, a bottle), 0.5-1.5 of the object's height, in one of
    OCCLUDER_COLOURS, 1.3-3 bounding radii from it, its image clear of the object's (bounding boxes a pixel
    apart) and at least its foot in view (it may run out of the frame, as clutter does): a probe outside the
    fixed ranges (session 52; bench_photo.py --distractors). Where 200 draws find no such place, none."""
    out = []
    for i, spec in enumerate(specs):
        if spec.cutout:
            out.append(spec)
            continue
        rng = np.random.default_rng([int(seed), 5353, i])
        info = mesh_info(spec.mesh)
        r, P = info["radius"], info["centre"]
        H, W = spec.size
        for _ in range(200):
            angle = rng.uniform(0, 2 * math.pi)
            distance = rng.uniform(1.3, 3.0) * r
            base = np.array([P[0] + distance * math.cos(angle), info["floor_y"], P[2] + distance * math.sin(angle)])
            height = rng.uniform(0.5, 1.5) * info["height"]
            name = list(OCCLUDER_COLOURS)[rng.integers(len(OCCLUDER_COLOURS))]
            if rng.random() < 0.5:
                hw, hd = rng.uniform(0.2, 0.5, size=2) * r
                other = Occluder("box", tuple(base), float(hw), float(hd), float(height), float(rng.uniform(0, 90)),
                                 OCCLUDER_COLOURS[name], name)
            else:
                hw = rng.uniform(0.12, 0.3) * r
                other = Occluder("cylinder", tuple(base), float(hw), float(hw), float(height), 0.0,
                                 OCCLUDER_COLOURS[name], name)
            foot, z = project(base[None], spec.R, spec.T, spec.fov, spec.size)
            if (z[0] > 0 and 0 <= foot[0, 0] < W and 0 <= foot[0, 1] < H and _occluder_clear(other, spec.mesh, spec.R, spec.T)
                    and not _may_overlap(spec, other)):
                spec = spec.replace(distractor=other)
                break
        out.append(spec)
    return out


def _occluder_corners(occ: Occluder) -> np.ndarray:
    b = np.asarray(occ.base, dtype=np.float64)
    a = math.radians(occ.yaw_deg)
    ax = np.array([math.cos(a), 0.0, -math.sin(a)]) * occ.half_width  # Mitsuba's rotate about +Y
    az = np.array([math.sin(a), 0.0, math.cos(a)]) * occ.half_depth
    up = np.array([0.0, occ.height, 0.0])
    return np.array([b + sx * ax + sz * az + h * up for sx in (-1, 1) for sz in (-1, 1) for h in (0, 1)])


def _may_overlap(spec: SceneSpec, occ: Occluder) -> bool:
    """False when the occluder's image cannot touch the mesh's (bounding boxes in the image, a pixel apart)."""
    px, z = project(_occluder_corners(occ), spec.R, spec.T, spec.fov, spec.size)
    if np.any(z <= 0):
        return True
    lo, hi = px.min(0), px.max(0)
    box = framing(spec.mesh, spec.R, spec.T, spec.fov, spec.size)["bbox"]
    return not (hi[0] < box[0] - 1 or lo[0] > box[2] + 1 or hi[1] < box[1] - 1 or lo[1] > box[3] + 1)


def _place_sequence_post(rng, specs: list[SceneSpec]) -> list[SceneSpec]:
    """Find a post (depth, width, speed, crossing time) whose hidden share, measured as render_scene measures it,
    is within 20-35% on at least MIN_OCCLUDED_FRAMES + 2 consecutive frames; every frame's share is kept in meta
    (occluded_share) and the longest such run in meta["occlusion_frames"]."""
    lo, hi = SEQUENCE_RANGES["occluded_share"]
    n = len(specs)
    mesh = specs[0].mesh
    r = mesh_info(mesh)["radius"]
    names = [k for k in OCCLUDER_COLOURS if k != "off-white"]
    silhouettes = {}  # (frame, spp) -> silhouette coverage sum: it does not depend on the post

    def share(i, occ, spp):
        if not _may_overlap(specs[i], occ):
            return 0.0
        if (i, spp) not in silhouettes:
            silhouettes[i, spp] = float(render_coverage(specs[i], "silhouette", spp).sum())
        visible = float(render_coverage(specs[i].replace(occluder=occ), "visible", spp).sum())
        return 1.0 - visible / silhouettes[i, spp] if silhouettes[i, spp] > 0 else 0.0

    def longest_run(shares, lo, hi):
        best, run, best_end = 0, 0, -1
        for i, x in enumerate(shares):
            run = run + 1 if lo <= x <= hi else 0
            if run > best:
                best, best_end = run, i
        return list(range(best_end - best + 1, best_end + 1))

    for _attempt in range(40):
        name = names[rng.integers(len(names))]
        colour = (name, OCCLUDER_COLOURS[name])
        t = rng.uniform(0.35, 0.55)
        span = rng.integers(MIN_OCCLUDED_FRAMES + 6, max(MIN_OCCLUDED_FRAMES + 7, n // 2))
        centre = rng.uniform(0.4, 0.6) * (n - 1)
        speed = rng.uniform(0.9, 1.2) / span  # object radii (as seen) per frame
        sign = rng.choice([-1, 1])

        def posts(half_width, t=t, centre=centre, speed=speed, sign=sign, colour=colour):
            return [_post_at(mesh, s.R, s.T, t, sign * speed * (i - centre), half_width, colour)
                    for i, s in enumerate(specs)]

        # Width: bisection so that the frames around the crossing's middle hide about 27% (median), quick masks.
        probe = sorted({min(max(int(round(centre + k)), 0), n - 1) for k in (-4, -2, 0, 2, 4)})
        w_lo, w_hi = 0.02 * r * t, 1.0 * r * t
        for _ in range(8):
            w = (w_lo + w_hi) / 2
            chosen = posts(w)
            if np.median([share(i, chosen[i], 4) for i in probe]) < 0.27:
                w_lo = w
            else:
                w_hi = w
        chosen = posts((w_lo + w_hi) / 2)
        if not all(_occluder_clear(o, mesh, s.R, s.T) for o, s in zip(chosen, specs, strict=True)):
            continue
        quick = [share(i, o, 4) for i, o in enumerate(chosen)]
        if len(longest_run(quick, lo + 0.01, hi - 0.01)) < MIN_OCCLUDED_FRAMES + 2:
            continue
        shares = [share(i, o, MASK_SPP) if q > 0 else 0.0 for i, (o, q) in enumerate(zip(chosen, quick, strict=True))]
        window = longest_run(shares, lo, hi)
        if len(window) >= MIN_OCCLUDED_FRAMES + 2:
            return [s.replace(occluder=o, meta={**s.meta, "occluded_share": x, "occlusion_frames": window,
                                                "post_draws": _attempt + 1})
                    for s, o, x in zip(specs, chosen, shares, strict=True)]
    raise RuntimeError("could not place a post hiding 20-35% of the cow on 12 consecutive frames")


def render_sequence(specs: list[SceneSpec], spp: int = 16) -> list[dict]:
    return [render_scene(s, spp=spp) for s in specs]


def write_mp4(frames, path, fps: int = 15) -> Path:
    """Write (H, W, 3) uint8 frames as an H.264 MP4 with imageio + imageio-ffmpeg (pip install imageio-ffmpeg)."""
    import imageio.v2 as imageio

    frames = [np.asarray(f)[..., :3] for f in frames]
    h, w = frames[0].shape[:2]
    block = 8 if h % 8 == 0 and w % 8 == 0 else 2 if h % 2 == 0 and w % 2 == 0 else 16
    with imageio.get_writer(str(path), fps=fps, codec="libx264", quality=8, macro_block_size=block,
                            ffmpeg_log_level="error") as writer:
        for f in frames:
            writer.append_data(f)
    return Path(path)
