"""The chapter's meshes: fetched once into data/, checked against their SHA-256.

pooch keeps the registry (file name -> SHA-256 and canonical address) and
does the checking: a copy is written to a temporary file beside its place and
moved there only if its hash matches. Where a copy comes from: the folder
named by $CHAP4_DATA_MIRROR (laid out like data/), else the canonical
address. Every failure is one line that says what to do.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pooch
import requests

from posefit.errors import UserError

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = REPO / "data"
MIRROR_ENV = "CHAP4_DATA_MIRROR"

# The meshes, where they come from, and what their bytes must hash to.
DATA_FILES = {
    "teapot.obj": (
        "https://raw.githubusercontent.com/facebookresearch/pytorch3d/main/docs/tutorials/data/teapot.obj",
        "2f833c87e691d949dfa1325df94efe3c25e95b948c7f147e2d08e3ffb719fcda",
    ),
    "cow_mesh/cow.obj": (
        "https://dl.fbaipublicfiles.com/pytorch3d/data/cow_mesh/cow.obj",
        "62337f06b4aa4f2eaa95f854553a02039d853365a78b0a581c26ece5691a6d99",
    ),
    "cow_mesh/cow.mtl": (
        "https://dl.fbaipublicfiles.com/pytorch3d/data/cow_mesh/cow.mtl",
        "ce6398d52486f81f2c329b1683ad4fedce970471aa36e589e05c5177432db6cb",
    ),
    "cow_mesh/cow_texture.png": (
        "https://dl.fbaipublicfiles.com/pytorch3d/data/cow_mesh/cow_texture.png",
        "cddabbae52a666173e7953e238b88340d285044dc20b36f8ed3f1a41db534fa5",
    ),
}
TEAPOT_FILES = ["teapot.obj"]
COW_FILES = ["cow_mesh/cow.obj", "cow_mesh/cow.mtl", "cow_mesh/cow_texture.png"]

# pooch says "Downloading file ..." on its logger; the scripts speak for themselves.
pooch.get_logger().setLevel(logging.WARNING)


def registry(data_dir: Path) -> pooch.Pooch:
    return pooch.create(
        path=data_dir,
        base_url="",
        registry={name: f"sha256:{sha}" for name, (_, sha) in DATA_FILES.items()},
        urls={name: url for name, (url, _) in DATA_FILES.items()},
        retry_if_failed=0,
    )


class MirrorOrDownload:
    """A pooch downloader: copy the file from the mirror folder if it has a good one, else download it.

    A mirror copy whose hash is wrong is passed over (and said so) rather
    than handed to pooch, so that the download can still be tried.
    """

    def __init__(self, name: str, mirror, timeout: float, allow_download: bool):
        self.name, self.mirror, self.timeout, self.allow_download = name, mirror, timeout, allow_download
        self.reasons: list[str] = []

    def __call__(self, url: str, output_file: str, store: pooch.Pooch) -> None:
        if self.mirror:
            source = Path(self.mirror) / self.name
            if not source.is_file():
                self.reasons.append(f"not in mirror {self.mirror}")
            elif not pooch.hashes.hash_matches(str(source), store.registry[self.name]):
                got, expected = pooch.file_hash(str(source)), store.registry[self.name].split(":")[-1]
                self.reasons.append(
                    f"mirror copy {source}: SHA-256 mismatch (got {got[:12]}..., expected {expected[:12]}...)"
                )
            else:
                shutil.copyfile(source, output_file)
                return
        if not self.allow_download:
            raise _NoSource()
        try:
            pooch.HTTPDownloader(timeout=self.timeout, progressbar=False)(url, output_file, store)
        except (requests.RequestException, OSError) as exc:
            self.reasons.append(f"download failed ({type(exc).__name__}: {exc})")
            raise _NoSource() from None


class _NoSource(Exception):
    """Neither the mirror nor the download gave the file (the downloader says why)."""


def provision(
    name: str,
    data_dir: Path | None = None,
    mirror: str | os.PathLike | None = None,
    timeout: float = 30.0,
    allow_download: bool = True,
) -> Path:
    """Make data_dir/name present with the right SHA-256 and return its path.

    Order: a file already there with the right hash; a copy from the mirror
    folder (argument, else $CHAP4_DATA_MIRROR); a download from the
    canonical address. A copy whose hash does not match is never used.
    """
    url, _ = DATA_FILES[name]
    data_dir = Path(data_dir) if data_dir is not None else DATA_DIR
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV)
    source = MirrorOrDownload(name, mirror, timeout, allow_download)
    try:
        return Path(registry(data_dir).fetch(name, downloader=source))
    except _NoSource:
        reasons = source.reasons
    except ValueError as exc:  # the downloaded bytes hash wrong
        reasons = source.reasons + [f"download failed ({exc})"]
    except OSError as exc:  # data/ cannot be written
        raise UserError(f"cannot write data/{name}: {exc.strerror or exc}") from None
    target = data_dir / name
    if target.exists():
        reasons.insert(0, f"{target} has the wrong SHA-256")
    raise UserError(
        f"cannot provide data/{name}: {'; '.join(reasons)}. Set {MIRROR_ENV} to a folder "
        f"holding {name}, or download {url} into {data_dir}"
    )


def provision_all(names, **kwargs) -> list[Path]:
    return [provision(name, **kwargs) for name in names]


def load_mesh(path, device="cpu"):
    """A mesh file as a Meshes of one, its texture as PyTorch3D reads it; a mesh without one is shaded plain
    grey (0.7). A file that cannot be read: UserError."""
    import torch
    from pytorch3d.io import load_objs_as_meshes
    from pytorch3d.renderer import TexturesVertex

    try:
        mesh = load_objs_as_meshes([path], device=device)
    except Exception as exc:
        raise UserError(f"cannot read mesh {path}: {exc}") from None
    if mesh.textures is None:
        mesh.textures = TexturesVertex(verts_features=torch.full_like(mesh.verts_padded(), 0.7))
    return mesh
