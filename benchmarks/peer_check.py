"""PyTorch3D's own rasterizer and render tests, stock vs this project's fast CPU path.

    python benchmarks/peer_check.py /path/to/pytorch3d-checkout            # both sides, table on stdout
    python benchmarks/peer_check.py CHECKOUT --out report.md -k sphere     # also write the table; pytest -k

CHECKOUT is a checkout of facebookresearch/pytorch3d at the installed version's tag (v0.7.9). It is only
read (its tests/ and their data); nothing is built: the tests run against the INSTALLED pytorch3d. One way
to make one from a bare git directory G (files the snapshot lacks are left out by the sparse pattern):

    git clone -q --shared --no-checkout G /tmp/p3d && cd /tmp/p3d \
      && git sparse-checkout set --no-cone '/*' '!/.github/*.gif' '!/tests/pulsar/reference/*' \
      && git checkout -q v0.7.9

The checkout's tests/test_rasterize_meshes.py and tests/test_render_meshes.py run twice with pytest, each
time in a child process (stock, then fast; never in parallel) with this file loaded as a pytest plugin
(`-p peer_check`, benchmarks/ on PYTHONPATH) and `--junitxml`; the two XML files are merged into a markdown
table: every collected test id, stock's and fast's result (passed / failed / skipped / error), the reason of
every skip, and the checkout's commit. Exit status: 0, 1 when some test passes stock but not fast, 2 when a
side produced no results.

Both sides (the harness, so that they differ only by the rasterizer):
* `import pytorch3d` is the installed package (the child runs `python -P`, and the plugin imports it before
  pytest puts the checkout on sys.path; it aborts if pytorch3d comes from the checkout).
* CPU only: in each test module `torch.device("cuda...")` and `get_random_cuda_device()` give the CPU (a
  stand-in `torch` there delegates everything else to torch); tests that need CUDA for what they test (a
  CUDA kernel, or CPU vs CUDA) are skipped with the reason. Tests that ran with their CUDA device mapped to
  the CPU are noted in the table.
* OpenGL: PYTORCH3D_NO_TEST_OPENGL=1 (the checkout's own switch) and each OpenGL test skipped with the
  reason; `pytorch3d.renderer.opengl.MeshRasterizerOpenGL` (absent here: no EGL) gets a stub that raises
  if used, so that test_render_meshes.py imports.
* a per-test timeout: pytest-timeout's --timeout if that plugin is installed, else SIGALRM in the plugin
  (Python-level; a hang inside C++ is caught by the per-side timeout, and faulthandler dumps the stacks).

The fast side adds, once the tests are imported (and again before each test, for modules imported since):
* every module attribute that is the stock `rasterize_meshes` is set to `fast_rasterize_meshes`;
* every module attribute that is the stock `MeshRasterizer` is set to a subclass of `FastMeshRasterizer`
  named `MeshRasterizer` (the render tests' reference images are named after the class);
except in the modules that implement the fast path (their fallback must stay stock). The fast names are
imported from posefit.fast_raster / posefit.fast_rasterizer (chap4/ on sys.path) and, where those files do
not exist yet, from the old module fast_raster (chap4/fast_raster.py).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import types
import xml.etree.ElementTree as ET
from pathlib import Path

try:
    import pytest
except ImportError:  # the driver alone does not need pytest (the children do)
    pytest = None

REPO = Path(__file__).resolve().parents[1]
CHAP4 = REPO / "chap4"
TEST_FILES = ("tests/test_rasterize_meshes.py", "tests/test_render_meshes.py")
SIDES = ("stock", "fast")

OPENGL_REASON = "OpenGL: needs MeshRasterizerOpenGL (EGL/pyopengl, a GPU); PYTORCH3D_NO_TEST_OPENGL=1"
# Tests that need a CUDA device for what they test, by test name (test_rasterize_meshes.py).
CUDA_ONLY = {
    "test_simple_cuda_naive": "CUDA-only: the CUDA naive kernel (the CPU one is test_simple_cpu_naive)",
    "test_simple_cuda_binned": "CUDA-only: the CUDA binned kernel",
    "test_cpu_vs_cuda_naive": "CUDA-only: compares the CPU and CUDA naive kernels",
    "test_coarse_cuda": "CUDA-only: the CUDA coarse binning kernel (the CPU one is test_coarse_cpu)",
    "test_cpp_vs_cuda_naive_vs_cuda_binned": "CUDA-only: compares CPU, CUDA naive and CUDA binned",
    "test_compare_coarse_cpu_vs_cuda": "CUDA-only: compares CPU and CUDA coarse binning",
    "test_cpp_vs_cuda_bary_clip": "CUDA-only: compares CPU and CUDA (barycentric clipping)",
    "test_cpp_vs_cuda_perspective_correct": "CUDA-only: compares CPU and CUDA (perspective correction)",
    "test_cuda_naive_vs_binned_perspective_correct": "CUDA-only: compares CUDA naive and CUDA binned",
}
# Tests with "cuda" in their name that still test the CPU: they run with the CUDA device mapped to the CPU.
CUDA_NAMED_BUT_RUN = {"test_python_vs_cpu_vs_cuda": "its CUDA leg runs on the CPU (python vs CPU twice)"}
# Why a test cannot pass on the CPU whatever the rasterizer: it is run all the same (stock and fast should agree).
_CUDA_RNG = (
    "reference image drawn with CUDA's random numbers (torch.manual_seed(1), torch.rand on cuda:0); "
    "the CPU's differ, so it fails on the CPU with either rasterizer"
)
CPU_CAVEATS = {"test_join_uvs": _CUDA_RNG, "test_join_verts": _CUDA_RNG, "test_join_atlas": _CUDA_RNG}


# --------------------------------------------------------------------------------------------------
# The pytest plugin (loaded in the child with -p peer_check; inert unless PEER_CHECK_SIDE is set).
# --------------------------------------------------------------------------------------------------

_state: dict = {}


def _fast_names(chap4: str):
    """(fast_rasterize_meshes, FastMeshRasterizer) from posefit.fast_raster / posefit.fast_rasterizer, else
    from the old module fast_raster; an ImportError naming both attempts if neither imports."""
    if chap4 not in sys.path:
        sys.path.insert(0, chap4)
    errors = []
    try:
        from posefit.fast_raster import fast_rasterize_meshes
        from posefit.fast_rasterizer import FastMeshRasterizer

        return fast_rasterize_meshes, FastMeshRasterizer
    except ImportError as error:
        errors.append(f"posefit.fast_raster + posefit.fast_rasterizer: {error!r}")
    try:
        from fast_raster import FastMeshRasterizer, fast_rasterize_meshes

        return fast_rasterize_meshes, FastMeshRasterizer
    except ImportError as error:
        errors.append(f"fast_raster: {error!r}")
    raise ImportError(f"peer_check: no fast rasterizer importable from {chap4}: " + "; ".join(errors))


class _TorchOnCPU(types.ModuleType):
    """Stands in for `torch` in a test module: torch.device("cuda...") is the CPU; all else is torch."""

    def __init__(self, torch_module, on_cuda):
        super().__init__("torch")
        self._torch = torch_module
        self._on_cuda = on_cuda

    def __getattr__(self, name):
        return getattr(self._torch, name)

    def device(self, *args, **kwargs):
        dev = self._torch.device(*args, **kwargs)
        if dev.type == "cuda":
            self._on_cuda()
            return self._torch.device("cpu")
        return dev


def _note(text):
    nodeid = _state.get("current")
    if nodeid:
        notes = _state["notes"].setdefault(nodeid, [])
        if text not in notes:
            notes.append(text)


def _dump_state():
    path = os.environ.get("PEER_CHECK_STATE")
    if path:
        keep = {k: v for k, v in _state.items() if k not in ("stock", "fast", "scanned")}
        Path(path).write_text(json.dumps(keep, indent=1, default=str))


def pytest_configure(config):
    side = os.environ.get("PEER_CHECK_SIDE")
    if side not in SIDES:
        return
    os.environ.setdefault("PYTORCH3D_NO_TEST_OPENGL", "1")
    import pytorch3d
    import torch

    # The modules by name: pytorch3d.renderer.mesh's attribute rasterize_meshes is the function.
    rm_module = importlib.import_module("pytorch3d.renderer.mesh.rasterize_meshes")
    rasterizer_module = importlib.import_module("pytorch3d.renderer.mesh.rasterizer")

    checkout = Path(config.rootpath).resolve()
    p3d_file = Path(pytorch3d.__file__).resolve()
    if checkout in p3d_file.parents:
        raise RuntimeError(f"peer_check: pytorch3d was imported from the checkout ({p3d_file}), not the installed one")
    opengl = sys.modules.get("pytorch3d.renderer.opengl")
    if opengl is None:
        import pytorch3d.renderer.opengl as opengl
    opengl_stubbed = not hasattr(opengl, "MeshRasterizerOpenGL")
    if opengl_stubbed:

        class MeshRasterizerOpenGL(torch.nn.Module):
            """Stub so that the tests import; the OpenGL tests are skipped."""

            def __init__(self, *args, **kwargs):
                raise RuntimeError("peer_check: MeshRasterizerOpenGL is not available here (no EGL)")

        opengl.MeshRasterizerOpenGL = MeshRasterizerOpenGL
    _state.update(
        side=side,
        torch=torch.__version__,
        pytorch3d=f"{pytorch3d.__version__} at {p3d_file.parent}",
        opengl_stubbed=opengl_stubbed,
        stock={
            "rasterize_meshes": rm_module.rasterize_meshes,
            "MeshRasterizer": rasterizer_module.MeshRasterizer,
        },
        notes={},
        skips={},
        collected=[],
        patched={"rasterize_meshes": [], "MeshRasterizer": []},
        left_stock=[],
        scanned=set(),
        current=None,
    )
    if side == "fast":
        chap4 = str(Path(os.environ.get("PEER_CHECK_CHAP4") or CHAP4).resolve())
        fast_rasterize_meshes, FastMeshRasterizer = _fast_names(chap4)

        # Named MeshRasterizer: the render tests name their reference images after the class.
        MeshRasterizer = type(
            "MeshRasterizer",
            (FastMeshRasterizer,),
            {"__module__": __name__, "__doc__": "FastMeshRasterizer under the stock name (peer_check)."},
        )
        _state.update(
            fast={"rasterize_meshes": fast_rasterize_meshes, "MeshRasterizer": MeshRasterizer},
            chap4=chap4,
            fast_modules={
                "fast_rasterize_meshes": f"{fast_rasterize_meshes.__module__} ({sys.modules[fast_rasterize_meshes.__module__].__file__})",
                "FastMeshRasterizer": f"{FastMeshRasterizer.__module__} ({sys.modules[FastMeshRasterizer.__module__].__file__})",
            },
        )


def _patch_modules():
    """Fast side: every module attribute that is the stock object gets the fast one, except in this project's
    own modules (chap4/: the fast implementation's fallback and base class must stay stock)."""
    if _state.get("side") != "fast":
        return
    stock, fast, chap4 = _state["stock"], _state["fast"], Path(_state["chap4"])
    for mod_name, mod in list(sys.modules.items()):
        if mod_name in _state["scanned"] or mod_name == __name__:
            continue
        _state["scanned"].add(mod_name)
        namespace = getattr(mod, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for key, stock_obj in stock.items():
            for attr, value in list(namespace.items()):
                if value is not stock_obj:
                    continue
                where = f"{mod_name}.{attr}"
                mod_file = getattr(mod, "__file__", None)
                if mod_file and chap4 in Path(mod_file).resolve().parents:
                    _state["left_stock"].append(where)
                else:
                    setattr(mod, attr, fast[key])
                    _state["patched"][key].append(where)


def _hookimpl(**options):
    return pytest.hookimpl(**options) if pytest else (lambda function: function)


@_hookimpl(trylast=True)  # after -k / -m deselection
def pytest_collection_modifyitems(session, config, items):
    if _state.get("side") not in SIDES:
        return
    import torch

    def on_cuda():
        _note("CUDA device mapped to the CPU")

    def cpu_instead_of_cuda():
        on_cuda()
        return "cpu"

    for module in {item.module for item in items if getattr(item, "module", None) is not None}:
        if getattr(module, "torch", None) is torch:
            module.torch = _TorchOnCPU(torch, on_cuda)
        if callable(getattr(module, "get_random_cuda_device", None)):
            module.get_random_cuda_device = cpu_instead_of_cuda
    for item in items:
        name = item.name
        reason = None
        if name in CUDA_ONLY:
            reason = CUDA_ONLY[name]
        elif "cuda" in name.lower() and name not in CUDA_NAMED_BUT_RUN:
            reason = "CUDA-only (by its name; not in peer_check's lists)"
        else:
            func = getattr(item, "obj", None)
            why = str(getattr(func, "__unittest_skip_why__", ""))
            if "opengl" in name.lower() or "opengl" in why.lower():
                reason = OPENGL_REASON
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))
            _state["skips"][item.nodeid] = reason
        if name in CUDA_NAMED_BUT_RUN:
            _state["notes"].setdefault(item.nodeid, []).append(CUDA_NAMED_BUT_RUN[name])
        if name in CPU_CAVEATS:
            _state["notes"].setdefault(item.nodeid, []).append(CPU_CAVEATS[name])
        _state["collected"].append(item.nodeid)
    _patch_modules()
    _dump_state()


def pytest_runtest_setup(item):
    if _state.get("side") in SIDES:
        _state["current"] = item.nodeid
        _patch_modules()


def pytest_runtest_call(item):
    if _state.get("side") in SIDES:
        _state["current"] = item.nodeid


def _alarm(signum, frame):
    raise TimeoutError(f"peer_check: test ran over {os.environ.get('PEER_CHECK_TEST_TIMEOUT')} s")


@_hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """The per-test timeout where pytest-timeout is not installed (SIGALRM: Python-level)."""
    seconds = int(os.environ.get("PEER_CHECK_TEST_TIMEOUT", "0") or 0)
    if _state.get("side") not in SIDES or seconds <= 0 or os.environ.get("PEER_CHECK_PYTEST_TIMEOUT") == "1":
        return (yield)
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(seconds)
    try:
        return (yield)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def pytest_sessionfinish(session, exitstatus):
    if _state.get("side") in SIDES:
        _state["current"] = None
        _dump_state()


# --------------------------------------------------------------------------------------------------
# The driver.
# --------------------------------------------------------------------------------------------------


def checkout_commit(checkout: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (git failed)"
    if out.returncode != 0:
        return "unknown (not a git checkout)"
    commit = out.stdout.strip()
    tags = subprocess.run(
        ["git", "-C", str(checkout), "tag", "--points-at", "HEAD"], capture_output=True, text=True, timeout=60
    ).stdout.split()
    return commit + (f" (tag {', '.join(tags)})" if tags else "")


def run_side(side, checkout: Path, work: Path, args) -> dict:
    xml = work / f"{side}.xml"
    state = work / f"{side}_state.json"
    log = work / f"{side}.log"
    for path in (xml, state):
        path.unlink(missing_ok=True)
    ini = work / "pytest.ini"
    ini.write_text("[pytest]\njunit_family = xunit2\naddopts =\n")
    env = dict(os.environ)
    env.update(
        PEER_CHECK_SIDE=side,
        PEER_CHECK_STATE=str(state),
        PEER_CHECK_CHAP4=str(args.chap4.resolve()),
        PEER_CHECK_TEST_TIMEOUT=str(args.timeout),
        PYTORCH3D_NO_TEST_OPENGL="1",
        PYTHONDONTWRITEBYTECODE="1",
        MPLBACKEND="Agg",
        PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parent), env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        ),
    )
    cmd = [
        sys.executable, "-P", "-m", "pytest", *TEST_FILES,
        "-p", "peer_check", "-p", "no:cacheprovider",
        "-c", str(ini), "--rootdir", str(checkout),
        "--junitxml", str(xml), "-o", f"faulthandler_timeout={max(args.timeout, 1) + 60}",
        "-v", "-rfEs", "--tb=short",
    ]  # fmt: skip
    try:
        import pytest_timeout  # noqa: F401

        cmd += ["--timeout", str(args.timeout)]
        env["PEER_CHECK_PYTEST_TIMEOUT"] = "1"
    except ImportError:
        pass
    if args.k:
        cmd += ["-k", args.k]
    print(f"[{side}] {' '.join(cmd)}\n[{side}] log: {log}", file=sys.stderr, flush=True)
    start = time.monotonic()
    with open(log, "w") as out:
        try:
            rc = subprocess.run(cmd, cwd=checkout, env=env, stdout=out, stderr=subprocess.STDOUT,
                                timeout=args.side_timeout).returncode  # fmt: skip
        except subprocess.TimeoutExpired:
            rc = "timeout"
    seconds = time.monotonic() - start
    print(f"[{side}] pytest exit {rc} after {seconds:.0f} s", file=sys.stderr, flush=True)
    (work / f"{side}_run.json").write_text(json.dumps({"rc": rc, "seconds": seconds}))
    return load_side(side, work)


def load_side(side, work: Path) -> dict:
    """A side's results as its last run in `work` left them."""
    run_file, state = work / f"{side}_run.json", work / f"{side}_state.json"
    run = json.loads(run_file.read_text()) if run_file.is_file() else {"rc": "?", "seconds": 0.0}
    info = json.loads(state.read_text()) if state.is_file() else {}
    return {**run, "results": parse_junit(work / f"{side}.xml"), "info": info, "log": work / f"{side}.log"}


def parse_junit(xml: Path) -> dict:
    """nodeid -> (result, message, seconds) from a junit XML file ({} if there is none)."""
    if not xml.is_file():
        return {}
    results = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        cls, name = case.get("classname", ""), case.get("name", "")
        if cls:  # tests.test_render_meshes.TestRenderMeshes -> tests/test_render_meshes.py::TestRenderMeshes
            parts = cls.split(".")
            nodeid = "/".join(parts[:-1]) + ".py::" + parts[-1] + "::" + name
        else:  # a collection error: name is the module
            nodeid = name.replace(".", "/") + ".py"
        failure, error, skipped = case.find("failure"), case.find("error"), case.find("skipped")
        if failure is not None:
            result, node = "failed", failure
        elif error is not None:
            result, node = "error", error
        elif skipped is not None:
            result, node = "skipped", skipped
        else:
            result, node = "passed", None
        message = ""
        if node is not None:
            text_lines = [line for line in (node.text or "").splitlines() if line.strip()]
            message = " ".join((node.get("message") or (text_lines[-1] if text_lines else "")).split())
        results[nodeid] = (result, message, float(case.get("time", 0) or 0))
    return results


def short(text: str, limit: int) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def report(checkout: Path, commit: str, runs: dict) -> tuple[str, list]:
    ids: list[str] = []
    for side in SIDES:
        run = runs.get(side)
        if run:
            for nodeid in [*run["info"].get("collected", []), *run["results"]]:
                if nodeid not in ids:
                    ids.append(nodeid)
    lines = [
        "# PyTorch3D rasterizer and render tests: stock vs fast CPU path",
        "",
        f"- PyTorch3D checkout: `{checkout}`, commit **{commit}**",
    ]
    info = next((runs[s]["info"] for s in SIDES if s in runs and runs[s]["info"]), {})
    if info:
        lines.append(f"- installed pytorch3d {info.get('pytorch3d')}; torch {info.get('torch')}; CPU only")
    fast_info = runs.get("fast", {}).get("info", {})
    if fast_info.get("fast_modules"):
        lines.append("- fast names from: " + "; ".join(f"`{k}` {v}" for k, v in fast_info["fast_modules"].items()))
        for key, where in fast_info.get("patched", {}).items():
            lines.append(f"- fast side: `{key}` patched in {len(where)} places: " + ", ".join(f"`{w}`" for w in where))
        if fast_info.get("left_stock"):
            lines.append("- left stock: " + ", ".join(f"`{w}`" for w in fast_info["left_stock"]))
    if info.get("opengl_stubbed"):
        lines.append(
            "- `MeshRasterizerOpenGL` is absent from the installed package (no EGL): stubbed, OpenGL tests skipped"
        )
    for side in SIDES:
        run = runs.get(side)
        if not run:
            continue
        counts: dict[str, int] = {}
        for nodeid in ids:
            result = run["results"].get(nodeid, ("not run",))[0]
            counts[result] = counts.get(result, 0) + 1
        summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        if not run["results"]:
            summary = "NO RESULTS (pytest wrote no junit XML; see the log)"
        lines.append(f"- **{side}**: {summary} (pytest exit {run['rc']}, {run['seconds']:.0f} s; log `{run['log']}`)")
    lines += ["", "| test id | stock | fast | note |", "| --- | --- | --- | --- |"]
    regressions = []
    for nodeid in ids:
        cells, notes = [], []
        for side in SIDES:
            run = runs.get(side)
            if not run:
                cells.append("-")
                continue
            result, message, seconds = run["results"].get(nodeid, ("not run", "", 0.0))
            cells.append(result if result in ("skipped", "not run") else f"{result} ({seconds:.1f} s)")
            if result == "skipped" and message not in notes:
                notes.append(message)
            for note in run["info"].get("notes", {}).get(nodeid, []):
                if note not in notes:
                    notes.append(note)
        stock = runs.get("stock", {}).get("results", {}).get(nodeid, ("",))[0]
        fast = runs.get("fast", {}).get("results", {}).get(nodeid, ("not run", "see the fast log"))
        if stock == "passed" and "fast" in runs and fast[0] != "passed":
            regressions.append((nodeid, fast[0], fast[1]))
            notes.append("**fast regression**")
        lines.append(f"| `{nodeid}` | {cells[0]} | {cells[1]} | {short('; '.join(notes), 300)} |")
    lines += ["", f"## Stock passes, fast does not ({len(regressions)})", ""]
    for nodeid, result, message in regressions:
        lines.append(f"- `{nodeid}`: {result}: {short(message, 400) or '(no message; see the log)'}")
    if not regressions:
        lines.append("- none")
    lines += ["", "## Other failures and errors", ""]
    others = 0
    for nodeid in ids:
        if any(nodeid == r[0] for r in regressions):
            continue
        parts = []
        for side in SIDES:
            result, message, _ = runs.get(side, {}).get("results", {}).get(nodeid, ("", "", 0.0))
            if result in ("failed", "error"):
                parts.append(f"{side} {result}: {short(message, 200)}")
        if parts:
            others += 1
            lines.append(f"- `{nodeid}`: " + "; ".join(parts))
    if not others:
        lines.append("- none")
    return "\n".join(lines) + "\n", regressions


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", type=Path, help="a checkout of facebookresearch/pytorch3d (tag v0.7.9)")
    parser.add_argument(
        "--sides",
        default="stock,fast",
        help="sides to run, of stock,fast (default both); a side not run is reported from --work if it ran there",
    )
    parser.add_argument("-k", default=None, help="pytest -k expression (both sides)")
    parser.add_argument("--timeout", type=int, default=900, help="per-test timeout, s (default 900)")
    parser.add_argument("--side-timeout", type=int, default=4 * 3600, help="per-side timeout, s (default 4 h)")
    parser.add_argument("--chap4", type=Path, default=CHAP4, help="where the fast modules are (default chap4/)")
    parser.add_argument("--work", type=Path, default=None, help="folder for XML, logs (default: a new temp folder)")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown report here")
    args = parser.parse_args(argv)
    checkout = args.checkout.resolve()
    missing = [f for f in (*TEST_FILES, "tests/common_testing.py", "tests/data") if not (checkout / f).exists()]
    if missing:
        parser.error(f"{checkout} is not a PyTorch3D checkout (missing {', '.join(missing)})")
    sides = [s for s in SIDES if s in args.sides.split(",")]
    work = args.work.resolve() if args.work else Path(tempfile.mkdtemp(prefix="peer_check_"))
    work.mkdir(parents=True, exist_ok=True)
    if REPO in work.parents or work == REPO:
        parser.error("--work must be outside this repository")
    commit = checkout_commit(checkout)
    runs = {side: run_side(side, checkout, work, args) for side in sides}  # in sequence
    for side in SIDES:  # e.g. --sides fast --work W: stock's results from W's earlier run
        if side not in runs and (work / f"{side}.xml").is_file():
            runs[side] = load_side(side, work)
    runs = {side: runs[side] for side in SIDES if side in runs}
    text, regressions = report(checkout, commit, runs)
    (work / "report.md").write_text(text)
    if args.out:
        args.out.write_text(text)
    print(text)
    print(f"(XML, logs and report.md in {work})", file=sys.stderr)
    if any(not run["results"] for run in runs.values()):
        return 2
    return 1 if regressions else 0


if __name__ == "__main__":
    sys.exit(main())
