"""A photo target, end to end, by the README's steps (issue 4).

There is no camera here, so this makes the closest stand-in it can: the mesh
rendered at 640x480 with a phone's 50-degree field of view, on a dark,
unevenly lit backdrop, with sensor noise, saved as a JPEG (quality 85). Then,
as the README's "A real photograph, step by step" says:

2. shrink it to at most 256 pixels a side (PIL's thumbnail), keeping the
   aspect ratio (256x192);
4. run the script on it: --target-image photo.png --fov 50 --restarts 8
   --loss-threshold 0 (default 200 iterations), the background colour taken
   from the image border;

and compares the fitted camera with the one that took the "photo". It prints
per object the camera position error (units and share of the distance), the
IoU against the mask read from the file, and the wall time of the command.

    python benchmarks/bench_photo.py                      # teapot and cow
    python benchmarks/bench_photo.py --meshes teapot --keep /tmp/photos
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "chap4"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from pytorch3d.io import load_objs_as_meshes  # noqa: E402
from pytorch3d.renderer import TexturesVertex  # noqa: E402

from posefit import data, pose, render  # noqa: E402

# mesh -> (script, camera that takes the photo: distance, elevation, azimuth)
PHOTOS = {
    "teapot": ("diff_render.py", (3.2, 25.0, 130.0)),
    "cow": ("diff_render_texture.py", (3.0, 15.0, -60.0)),
}
FOV = 50.0
PHOTO_SIZE = (480, 640)  # (H, W)


def make_photo(mesh_name: str, camera, path: Path) -> list[float]:
    """Render the stand-in photo to path (JPEG); return the true camera position."""
    files = data.provision_all(data.TEAPOT_FILES if mesh_name == "teapot" else data.COW_FILES)
    mesh = load_objs_as_meshes([files[0]])
    if mesh.textures is None:  # the teapot: plain white, shaded by the light
        mesh.textures = TexturesVertex(verts_features=torch.ones_like(mesh.verts_padded()))
    H, W = PHOTO_SIZE
    renderers = render.make_renderers(torch.device("cpu"), (H, W), fov=FOV)
    R, T, position = pose.view_camera(*camera, torch.device("cpu"))
    with torch.no_grad():
        image, mask = render.hard_render(renderers, mesh, R, T)
    rgb, mask = image[0, ..., :3].numpy(), mask[0].numpy()[..., None]
    # A blue-grey backdrop, lit from the upper left, and sensor noise.
    yy, xx = np.mgrid[0:H, 0:W]
    light = 1.0 - 0.25 * (((xx - 0.3 * W) / W) ** 2 + ((yy - 0.2 * H) / H) ** 2)
    backdrop = np.array([70, 80, 100]) / 255 * light[..., None]
    noise = np.random.default_rng(1).normal(0.0, 4 / 255, (H, W, 3))
    photo = (np.where(mask, rgb, backdrop) + noise).clip(0, 1)
    Image.fromarray((photo * 255).round().astype(np.uint8)).save(path, quality=85)
    return position.tolist()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meshes", nargs="+", choices=list(PHOTOS), default=list(PHOTOS))
    parser.add_argument("--keep", type=Path, help="keep photos and results in this folder (default: a temporary one)")
    parser.add_argument("--iterations", type=int, default=200, help="the scripts' --iterations (default 200)")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for name in args.meshes:
            script, camera = PHOTOS[name]
            jpeg = folder / f"{name}_photo.jpg"
            truth = make_photo(name, camera, jpeg)
            # Step 2: at most 256 pixels a side.
            photo = folder / f"{name}_photo.png"
            with Image.open(jpeg) as image:
                image.thumbnail((256, 256))
                image.save(photo)
            # Step 4.
            output = folder / f"result_{name}_photo"
            command = [sys.executable, str(REPO / "chap4" / script), "--target-image", str(photo),
                       "--fov", str(FOV), "--restarts", "8", "--loss-threshold", "0", "--iterations", str(args.iterations),
                       "--output-dir", str(output)]
            print("command:", " ".join(command), flush=True)
            started = time.perf_counter()
            result = subprocess.run(command, capture_output=True, text=True)
            seconds = time.perf_counter() - started
            if result.returncode != 0:
                print(result.stdout + result.stderr)
                return 1
            print((result.stdout.strip() or "(no output)").splitlines()[-1], flush=True)
            summary = json.loads((output / "summary.json").read_text())
            error = math.dist(summary["camera_position"], truth)
            rows.append((name, camera[0], error, summary["silhouette_iou"], summary["ambiguous"], seconds))

    print("\n| object | photo size | true distance | position error | error / distance | IoU | ambiguous | s |")
    print("|---|---|---:|---:|---:|---:|:-:|---:|")
    size = f"{PHOTO_SIZE[1]}x{PHOTO_SIZE[0]} JPEG -> 256x192"
    for name, distance, error, iou, ambiguous, seconds in rows:
        print(f"| {name} | {size} | {distance:.1f} | {error:.4f} | {error / distance:.2%} | {iou:.3f} | "
              f"{'yes' if ambiguous else 'no'} | {seconds:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
