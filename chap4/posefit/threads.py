"""How the compiled loops share the CPU's cores: numba's threads, from the main thread only.

Why share: a tracker's step is a handful of compiled loops over a window's
pixels (the rasterization, the blend, the colour term and their gradients),
and on two cores the second one is mostly idle while the first fits (the
read-ahead and the picture writer use about a seventh of it). Each loop splits its
pixels (or entries) into one run per thread; every pixel's arithmetic is the
one it has alone, and whatever several pixels add into one number (a face's
gradient, a loss) is added afterwards by one thread in the pixels' order, so
the results are the serial loop's to the bit whatever the number of threads.

Why torch's thread count is kept: torch's wheel ships its OpenMP runtime as
libgomp.so.1, the name numba's OpenMP layer asks for, so the loader gives
both the same runtime, and numba's start of its threads (at the first
numba.get_num_threads() or shared loop) sets that runtime's thread count,
which torch reads as its own. Left so, torch's operations after it split
their sums over two threads where the scripts had set one
(render.set_cpu_threads): the book's cow fit moved by 1e-4 of its loss.

Why the main thread only: where neither OpenMP nor TBB is installed (a
laptop without libgomp), numba falls back to its own thread pool, which
aborts the process when two threads launch parallel loops at once; the
tracker renders its synthesised frames in a thread beside the fit. Any other
thread runs the same loops serially.
"""

from __future__ import annotations

import contextlib
import sys
import threading

import numba


def workers() -> int:
    """How many runs a compiled loop called from this thread shares its work in: numba's threads
    (numba.get_num_threads(), NUMBA_NUM_THREADS or the cores) from the main thread, 1 from any other."""
    if threading.current_thread() is not threading.main_thread():
        return 1
    with _torch_threads_kept():  # (the first call starts numba's threads, and sets the runtime's count)
        return numba.get_num_threads()


def share(shared, serial, *arguments) -> None:
    """shared(workers(), *arguments), a compiled loop that shares its work in that many runs among numba's
    threads, with torch's thread count kept (see the module's docstring); serial(*arguments), the same loop in
    one run, where there is one worker (off the main thread, or one core). The same numbers either way."""
    chunks = workers()
    if chunks > 1:
        with _torch_threads_kept():
            shared(chunks, *arguments)
    else:
        serial(*arguments)


@contextlib.contextmanager
def _torch_threads_kept():
    """torch's thread count put back as it was, if numba changed it (see the module's docstring)."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    try:
        yield
    finally:
        if before is not None and torch.get_num_threads() != before:
            torch.set_num_threads(before)
