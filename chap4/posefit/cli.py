"""The command line: the flags the scripts share, their validation, and clean exits.

Bad input is one line on stderr and exit status 2, before anything is
written: argparse's own errors for a flag, UserError (posefit.errors) for
what only shows when a file is read.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

from posefit import initial, pose, targets
from posefit.errors import EXIT_USAGE, UserError

BOOK_IMAGE_SIZE = 256  # loss thresholds are stated for this size


# ---------------------------------------------------------------------------
# Argument types: each refuses a bad value with a message argparse prints
# ---------------------------------------------------------------------------


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def image_side(text: str) -> int:
    value = int(text)
    if value < targets.MIN_TARGET_SIDE:
        raise argparse.ArgumentTypeError(f"must be at least {targets.MIN_TARGET_SIDE} pixels, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def roll_degrees(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 180:
        raise argparse.ArgumentTypeError(f"must be an angle from 0 to 180 degrees, got {text}")
    return value


def finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def fov_degrees(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or not 0.0 < value < 180.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 180 degrees (exclusive), got {text}")
    return value


def byte(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 255:
        raise argparse.ArgumentTypeError(f"must be 0 to 255, got {value}")
    return value


# ---------------------------------------------------------------------------
# Flags
# ---------------------------------------------------------------------------


def add_common(parser: argparse.ArgumentParser, output_dir: Path, fov_default=60.0) -> None:
    """Flags of every script: where results go, the device, the seed, the field of view."""
    add = parser.add_argument
    add("--output-dir", type=Path, default=output_dir, help=f"where results go (default {output_dir})")
    add("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: cuda if available")
    add("--seed", type=int, default=0, help="random seed (default 0)")
    add("--fov", type=fov_degrees, default=fov_default,
        help="camera field of view in degrees, across the image's shorter side (default 60, PyTorch3D's; "
        "for a photo without --fov: from its EXIF 35 mm-equivalent focal length when it has one)")


def resolve_device(parser: argparse.ArgumentParser, args) -> None:
    """--device auto becomes cuda or cpu; cuda without a device is a usage error."""
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here (use --device cpu)")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"


def fit_parser(description: str, loss_threshold: float, output_dir: Path) -> argparse.ArgumentParser:
    """The flags of the two fitting scripts, with the book's values as defaults."""
    parser = argparse.ArgumentParser(description=description)
    add = parser.add_argument
    add("--iterations", type=positive_int, default=200, help="most optimiser steps (default 200)")
    add("--lr", type=positive_float, default=0.05, help="Adam learning rate (default 0.05)")
    # default None: finish_fit_args fills in 256, or the working size of --target-image
    add("--image-size", type=image_side, default=None,
        help=f"render size in pixels (default {BOOK_IMAGE_SIZE}); with --target-image, the largest shorter side "
        f"the image is fitted at: a larger one is scaled down (default {targets.WORKING_SIDE})")
    add("--loss-threshold", type=non_negative_float, default=None,
        help=f"stop once the loss is below this (default {loss_threshold:g} at 256 px, "
        "scaled with the pixel count at other sizes; with --pose 6dof 0: the search's schedule runs its course, "
        "--iterations caps it; 0 runs every iteration)")
    add("--init-position", nargs=3, type=finite_float, default=None, metavar=("X", "Y", "Z"),
        help="starting camera position (default 3.0 6.9 2.5; not with --pose 6dof)")
    add("--target-distance", type=positive_float, default=3.0, help="target camera distance (default 3)")
    add("--target-elevation", type=finite_float, default=50.0, help="target elevation, degrees (default 50)")
    add("--target-azimuth", type=finite_float, default=0.0, help="target azimuth, degrees (default 0)")
    add("--save-every", type=non_negative_int, default=1, metavar="N",
        help="save frames when i %% N == 0 and at the end (default 1; 0: no frames, no GIF)")
    add("--rasterizer", choices=["fast", "stock"], default="fast",
        help="fast: this project's CPU rasterizer (PyTorch3D's own on CUDA); "
        "stock: PyTorch3D's MeshRasterizer as the book uses it (default fast)")
    add("--restarts", type=positive_int, default=1, metavar="N",
        help="fit N starting cameras together: --init-position and N-1 more at its distance, spread evenly "
        "over the sphere; the lowest loss wins (default 1: the book's single start; 8 for an unknown view)")
    add("--target-image", type=Path, default=None, metavar="PATH",
        help="fit this image instead of the synthesised target: a 1-channel mask, an RGBA image whose alpha is "
        "the mask (a background remover's cut-out), or a photo of the object on a backdrop (RGB, any size; "
        "the object is what differs from the backdrop seen along the image border, shadows excluded)")
    add("--background", nargs=3, type=byte, default=None, metavar=("R", "G", "B"),
        help="the backdrop's colour in an RGB --target-image, 0-255 (default: learnt from the image border)")
    add("--pose", dest="pose_mode", choices=["lookat", "6dof"], default="lookat",
        help="lookat: the book's camera position, looking at the origin (default); 6dof: the object's full "
        "pose (rotation and translation: off-centre, rolled), started from a coarse grid of views. Either way "
        "summary.json holds R and T, PyTorch3D's (x_view = x_mesh @ R + T, +X left, +Y up, +Z forward)")
    add("--upright", action=argparse.BooleanOptionalAction, default=True,
        help="with --pose 6dof: the object stands on a floor (the plane of the mesh's lowest vertex, +Y up) and "
        "the camera is above it, as in a photograph of an object on a table: poses from under the floor, or "
        "rolled more than --max-roll, come last. A silhouette alone cannot tell a view from its mirror twin "
        "seen from below (default on; --no-upright for any orientation)")
    add("--max-roll", type=roll_degrees, default=initial.MAX_ROLL_DEG, metavar="DEG",
        help=f"with --upright: the camera's largest roll off the floor's level, degrees "
        f"(default {initial.MAX_ROLL_DEG:g})")
    add_common(parser, output_dir, fov_default=None)
    parser.set_defaults(book_loss_threshold=loss_threshold)
    return parser


def finish_fit_args(parser: argparse.ArgumentParser, args) -> argparse.Namespace:
    """Checks that need several flags at once; fills in derived values."""
    if args.background is not None and args.target_image is None:
        parser.error("--background: only an RGB --target-image has a background to set")
    if args.pose_mode == "6dof" and args.init_position is not None:
        parser.error("--init-position: with --pose 6dof the start comes from a grid of views (see --help)")
    if args.target_image is not None:
        # Read it now, so that a bad file is refused before anything is written.
        # (With --pose 6dof a photo whose colours do not tell the object is looked at again by the fit, with the
        # mesh, before anything is written: posefit.outlines.)
        target = targets.load_target_image(args.target_image, args.background, args.image_size, args.fov,
                                           unfound_ok=args.pose_mode == "6dof")
        args.image_size = list(target.size)
        if args.fov is None and target.fov_source.startswith("default"):
            print(f"warning: {args.target_image} says nothing of its field of view (no 35 mm-equivalent focal "
                  f"length in its EXIF): assuming {target.fov:g} degrees across the shorter side; give --fov")
    elif args.image_size is None:
        args.image_size = BOOK_IMAGE_SIZE
    if args.loss_threshold is None and args.pose_mode == "6dof":
        # The book's threshold is the book's target's: a photo's 6-DoF fit came below it at its first step,
        # before its hypotheses were refined (a cow filmed: 4.4 degrees off, against 1.4 with the schedule run).
        args.loss_threshold = 0.0
    elif args.loss_threshold is None:
        pixels = math.prod(args.image_size) if isinstance(args.image_size, list) else args.image_size**2
        args.loss_threshold = args.book_loss_threshold * pixels / BOOK_IMAGE_SIZE**2
    if args.init_position is None:
        args.init_position = [3.0, 6.9, 2.5]
    if np.linalg.norm(args.init_position) < 1e-6:
        parser.error("--init-position: the camera cannot sit at the origin it looks at")
    args.init_position, note = pose.off_up_axis(args.init_position)
    if note:
        print(note)
    resolve_device(parser, args)
    return args


def settings_of(args) -> dict:
    """The settings as summary.json records them (paths as text)."""
    return {key: str(value) if isinstance(value, Path) else value
            for key, value in sorted(vars(args).items()) if key != "book_loss_threshold"}


def fit_arguments(args) -> dict:
    """fit()'s keyword arguments from the parsed flags (the flags are named as its keywords)."""
    return {**{key: value for key, value in vars(args).items() if key != "book_loss_threshold"},
            "settings": settings_of(args)}


def fit_main(parser: argparse.ArgumentParser, fit) -> int:
    """A fitting script's command: parse and check the flags, fit, print the result line; the exit code."""
    from posefit import outputs

    args = finish_fit_args(parser, parser.parse_args())
    return outputs.report(fit(**fit_arguments(args)), args.output_dir)


def run_main(main) -> None:
    """Run a script's main(): user errors become one line on stderr and an exit code."""
    try:
        code = main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = EXIT_USAGE
    sys.exit(code or 0)
