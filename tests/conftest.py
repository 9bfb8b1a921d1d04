"""Test set-up: the chapter's modules live in chap4/ and are run as scripts."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHAP4 = REPO / "chap4"
sys.path.insert(0, str(CHAP4))


@pytest.fixture(scope="session")
def meshes_ready():
    """Provision both meshes once (from $CHAP4_DATA_MIRROR or what data/ has)."""
    import posefit

    posefit.provision_all(posefit.TEAPOT_FILES + posefit.COW_FILES)
    return posefit.DATA_DIR


def run_script(name, *args, cwd=None, timeout=600):
    """Run chap4/<name> as a user would; return the CompletedProcess."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, str(CHAP4 / name), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        env=env,
        timeout=timeout,
    )
