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
    from posefit import data

    data.provision_all(data.TEAPOT_FILES + data.COW_FILES)
    return data.DATA_DIR


def run_script(name, *args, cwd=None, timeout=600, folder=CHAP4):
    """Run <folder>/<name> (default chap4/) as a user would; return the CompletedProcess."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, str(folder / name), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        env=env,
        timeout=timeout,
    )


def assert_flags_refused(output_dir, *flags):
    """diff_render.py with these flags stops as a usage error (exit 2, no traceback), writing nothing."""
    (output_dir / "summary.json").write_text("{}")
    result = run_script("diff_render.py", "--output-dir", output_dir, *flags)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "usage:" in result.stderr and "error:" in result.stderr
    assert (output_dir / "summary.json").read_text() == "{}", "earlier results stay untouched"
