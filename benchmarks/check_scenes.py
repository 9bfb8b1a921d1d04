"""Check benchmarks/scenes.py (the Mitsuba photo stand-ins) against PyTorch3D, and save a preview.

    python benchmarks/check_scenes.py                 # 8 silhouette cases + checks + contact sheet
    python benchmarks/check_scenes.py --cases 16 --preview 0

1. Camera convention: rays Mitsuba's sensor shoots through chosen pixels land, projected by PyTorch3D's
   FoVPerspectiveCameras, on those pixels (non-square image, rolled, off-centre pose); look_at_R_T equals
   PyTorch3D's look_at_view_transform.
2. Silhouettes: per case, Mitsuba's object coverage (no occluder) thresholded at 0.5 against PyTorch3D's hard
   silhouette (MeshRasterizer, faces_per_pixel=1, blur_radius=0, pix_to_face >= 0) at the same R, T, fov, (H, W);
   target IoU >= 0.99 on every case. Cases: the book's views (centred, no roll) and sampled photo cases (rolled,
   off-centre, landscape and portrait).
3. Cow texture: Mitsuba's albedo (texture colour) against PyTorch3D's TexturesUV colour at the same pose,
   with Mitsuba's default V flip and without it: the default must match.
4. A contact sheet of sampled photo cases and sequence frames in --out (default /tmp/scenes_preview/).

Exit status 1 when a check fails. Needs `pip install mitsuba imageio-ffmpeg` (benchmark-only).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import scenes  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from pytorch3d.io import load_objs_as_meshes  # noqa: E402
from pytorch3d.renderer import (  # noqa: E402
    FoVPerspectiveCameras,
    MeshRasterizer,
    RasterizationSettings,
    look_at_view_transform,
)

IOU_TARGET = 0.99


def p3d_camera(R, T, fov):
    return FoVPerspectiveCameras(R=torch.tensor(R, dtype=torch.float32)[None],
                                 T=torch.tensor(T, dtype=torch.float32)[None], fov=float(fov))


def p3d_fragments(mesh, R, T, fov, size):
    raster = MeshRasterizer(cameras=p3d_camera(R, T, fov),
                            raster_settings=RasterizationSettings(image_size=tuple(size), faces_per_pixel=1,
                                                                  blur_radius=0.0))
    return raster(mesh)


def iou(a, b) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def check_camera_rays() -> float:
    """Largest pixel error between Mitsuba's rays and PyTorch3D's projection (rolled, off-centre, 256x192)."""
    mi = scenes._mi()
    size = (192, 256)
    R, T = scenes.camera_pose("teapot", 37.0, 28.0, 4.0, 25.0, (0.3, -0.2), 55.0)
    spec = scenes.SceneSpec(mesh="teapot", R=R, T=T, fov=55.0, size=size)
    sensor = mi.load_dict(scenes.build_scene_dict(spec, "silhouette", 1)["sensor"])
    cam = p3d_camera(R, T, spec.fov)
    worst = 0.0
    for u, v in [(0.5, 0.5), (0.1, 0.2), (0.9, 0.15), (0.25, 0.8), (0.75, 0.95)]:
        ray, _ = sensor.sample_ray(0.0, 0.5, mi.ScalarPoint2f(u, v), mi.ScalarPoint2f(0.5, 0.5))
        point = np.array(ray.o) + 5.0 * np.array(ray.d)
        screen = cam.transform_points_screen(torch.tensor(point, dtype=torch.float32)[None, None],
                                             image_size=(size,))[0, 0, :2].numpy()
        worst = max(worst, float(np.hypot(screen[0] - u * size[1], screen[1] - v * size[0])))
    return worst


def check_look_at() -> float:
    worst = 0.0
    for dist, elev, azim in [(3.0, 50.0, 0.0), (4.0, 20.0, 135.0), (2.7, 75.0, -60.0)]:
        R0, T0 = look_at_view_transform(dist, elev, azim)
        R1, T1 = scenes.camera_pose("teapot", azim, elev, dist, 0.0, (0.0, 0.0), 60.0)
        # camera_pose looks at the bbox centre; shift the eye/target as PyTorch3D's at= does.
        centre = torch.tensor(scenes.mesh_info("teapot")["centre"], dtype=torch.float32)[None]
        R0, T0 = look_at_view_transform(dist, elev, azim, at=centre)
        worst = max(worst, float(np.abs(R0[0].double().numpy() - R1).max()),
                    float(np.abs(T0[0].double().numpy() - T1).max()))
    return worst


def silhouette_cases(n: int, seed: int) -> list[scenes.SceneSpec]:
    """The book's two views (centred, no roll, PyTorch3D's own look_at_view_transform), sampled photo cases
    (rolled, off-centre; occluders dropped) and, last, a portrait one (240x180, rolled, off-centre)."""
    cases = []
    for mesh, dist in (("teapot", 3.0), ("cow", 2.7)):
        R, T = look_at_view_transform(dist, 50.0, 0.0)
        cases.append(scenes.SceneSpec(mesh=mesh, R=R[0].double().numpy(), T=T[0].double().numpy(), fov=60.0,
                                      size=(192, 256), meta={"case": f"book {mesh}"}))
    cases += [s.replace(occluder=None) for s in scenes.sample_photo_cases(seed, max(n - 3, 0))]
    rng = np.random.default_rng([seed, 99])
    size, fov = (240, 180), 50.0
    R, T, meta = scenes._draw_photo_camera(rng, "cow", fov, size)
    cases.append(scenes.SceneSpec(mesh="cow", R=R, T=T, fov=fov, size=size, meta={**meta, "case": "portrait"}))
    return cases[:n]


def check_silhouettes(n: int, seed: int) -> bool:
    meshes = {name: load_objs_as_meshes([str(path)], load_textures=False) for name, path in scenes.MESH_FILES.items()}
    print("\n| case | mesh | H x W | fov | roll | offset | Mitsuba px | PyTorch3D px | IoU |")
    print("|---|---|---|---|---|---|---|---|---|")
    ok = True
    for spec in silhouette_cases(n, seed):
        started = time.perf_counter()
        cov = scenes.render_coverage(spec.replace(occluder=None), "silhouette", scenes.MASK_SPP)
        seconds = time.perf_counter() - started
        frags = p3d_fragments(meshes[spec.mesh], spec.R, spec.T, spec.fov, spec.size)
        hard = (frags.pix_to_face[0, ..., 0] >= 0).numpy()
        mine = cov >= 0.5
        value = iou(mine, hard)
        ok &= value >= IOU_TARGET
        f = scenes.framing(spec.mesh, spec.R, spec.T, spec.fov, spec.size)
        roll = spec.meta.get("roll_deg", 0.0)
        print(f"| {spec.meta.get('case')} | {spec.mesh} | {spec.size[0]}x{spec.size[1]} | {spec.fov:.1f} | "
              f"{roll:+.1f} | {f['offset_share']:.2f} | {mine.sum()} | {hard.sum()} | {value:.4f} |"
              f"{'' if value >= IOU_TARGET else ' **below target**'}  ({seconds:.2f} s)")
    return ok


def check_texture() -> dict:
    """Mean |difference| (8-bit sRGB) between Mitsuba's cow albedo and PyTorch3D's TexturesUV colour."""
    mesh = load_objs_as_meshes([str(scenes.MESH_FILES["cow"])])
    size = (192, 256)
    results = {}
    for name, (azim, elev, roll) in {"side": (90.0, 20.0, 0.0), "front-rolled": (20.0, 35.0, 30.0),
                                     "back": (200.0, 45.0, -15.0)}.items():
        R, T = scenes.camera_pose("cow", azim, elev, 3.2, roll, (0.1, 0.05), 50.0)
        spec = scenes.SceneSpec(mesh="cow", R=R, T=T, fov=50.0, size=size)
        frags = p3d_fragments(mesh, R, T, spec.fov, size)
        p3d = mesh.textures.sample_textures(frags)[0, ..., 0, :].numpy()  # sRGB in [0, 1]
        inside = (frags.pix_to_face[0, ..., 0] >= 0).numpy()
        for flip in (True, False):
            albedo, cov = scenes.render_albedo(spec, spp=16, flip_tex_coords=flip)
            both = inside & (cov > 0.999)
            mine = scenes.linear_to_srgb(albedo)
            results[(name, flip)] = float(np.abs(mine[both] - p3d[both]).mean() * 255)
    return results


def checker(h, w, n=12):
    yy, xx = np.mgrid[:h, :w]
    return np.where(((yy // n) + (xx // n)) % 2 == 0, 200, 150).astype(np.uint8)[..., None].repeat(3, 2)


def tile(result) -> Image.Image:
    img = result["image"]
    if img.shape[-1] == 4:  # cut-out over a checkerboard
        a = img[..., 3:4] / 255.0
        img = (img[..., :3] * a + checker(*img.shape[:2]) * (1 - a)).astype(np.uint8)
    return Image.fromarray(img)


def contact_sheet(out: Path, photos: int, frames: int, seed: int, spp: int) -> list[float]:
    out.mkdir(parents=True, exist_ok=True)
    seconds = []
    tiles, labels = [], []
    for spec in scenes.sample_photo_cases(seed, photos):
        r = scenes.render_scene(spec, spp=spp)
        seconds.append(r["seconds"])
        scenes.save(r, out / f"photo_{spec.meta['case']:02d}_{spec.mesh}")
        Image.fromarray(r["object_mask"]).save(out / f"photo_{spec.meta['case']:02d}_{spec.mesh}_mask.png")
        tiles.append(tile(r))
        kind = "cutout" if spec.cutout else f"occl {r['occluded_share']:.0%}" if spec.occluder else \
            f"jpg{spec.jpeg_quality}" if spec.jpeg_quality else "png"
        labels.append(f"{spec.mesh} {spec.floor_name} roll {spec.meta['roll_deg']:+.0f} {kind} {r['seconds']:.1f}s")
        print(f"photo {spec.meta['case']}: {labels[-1]}", flush=True)
    if frames:
        for kind in ("plain", "occluded"):
            specs = scenes.sample_sequence(seed, frames, kind)
            picks = specs if kind == "occluded" else specs[:: max(1, len(specs) // 4)][:4]
            if kind == "occluded":
                window = next(s.meta["occlusion_frames"] for s in specs)
                picks = [specs[max(window[0] - 3, 0)], specs[window[0]], specs[window[len(window) // 2]],
                         specs[window[-1]]]
            rendered = []
            for s in specs if kind == "occluded" else picks:
                r = scenes.render_scene(s, spp=16)
                rendered.append(r)
                seconds.append(r["seconds"])
            if kind == "occluded":
                scenes.write_mp4([r["rgb"] for r in rendered], out / "sequence_occluded.mp4", fps=15)
                shares = [r["occluded_share"] for r in rendered]
                print("occluded sequence: hidden share per frame", " ".join(f"{x:.2f}" for x in shares))
                print(f"occlusion window (20-35%): frames {window[0]}..{window[-1]} ({len(window)} frames)")
                rendered = [rendered[s.meta["frame"]] for s in picks]
            for s, r in zip(picks, rendered, strict=True):
                Image.fromarray(r["rgb"]).save(out / f"seq_{kind}_{s.meta['frame']:03d}.png")
                tiles.append(tile(r).resize((240, 180), Image.LANCZOS))
                labels.append(f"seq {kind} f{s.meta['frame']} roll {s.meta['roll_deg']:+.0f} "
                              f"occl {r['occluded_share']:.0%}")
    cols = 4
    cw, ch = 256, max(t.height for t in tiles) + 16
    sheet = Image.new("RGB", (cols * cw, math.ceil(len(tiles) / cols) * ch), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (t, label) in enumerate(zip(tiles, labels, strict=True)):
        x, y = (i % cols) * cw, (i // cols) * ch
        sheet.paste(t, (x + (cw - t.width) // 2, y))
        draw.text((x + 2, y + ch - 14), label[:42], fill=(0, 0, 0))
    sheet.save(out / "contact_sheet.png")
    print(f"contact sheet: {out / 'contact_sheet.png'}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=8, help="silhouette cases (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preview", type=int, default=8, help="photo cases on the contact sheet (0: none)")
    parser.add_argument("--frames", type=int, default=40, help="sequence length for the preview (0: no sequences)")
    parser.add_argument("--spp", type=int, default=scenes.DEFAULT_SPP)
    parser.add_argument("--out", type=Path, default=Path("/tmp/scenes_preview"))
    args = parser.parse_args()
    torch.set_num_threads(2)

    ray_error = check_camera_rays()
    look_at_error = check_look_at()
    print(f"camera: Mitsuba rays vs PyTorch3D projection, worst {ray_error:.4f} px; "
          f"look_at_R_T vs look_at_view_transform, worst {look_at_error:.2e}")
    ok = ray_error < 0.05 and look_at_error < 1e-5

    ok &= check_silhouettes(args.cases, args.seed)

    tex = check_texture()
    print("\ncow texture, mean |Mitsuba albedo - PyTorch3D TexturesUV| (8-bit sRGB):")
    for view in dict.fromkeys(k[0] for k in tex):
        print(f"  {view}: Mitsuba default V flip {tex[(view, True)]:.1f}, without the flip {tex[(view, False)]:.1f}")
    ok &= all(tex[(v, True)] < 4.0 and tex[(v, True)] < tex[(v, False)] / 3 for v, _ in tex)

    if args.preview:
        seconds = contact_sheet(args.out, args.preview, args.frames, args.seed, args.spp)
        print(f"render time: median {np.median(seconds):.2f} s a picture, max {max(seconds):.2f} s")
    print("all checks passed" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
