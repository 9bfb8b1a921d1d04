"""How the compiled loops share the CPU's cores: numba's threads, from the main thread only.

Why share: a tracker's step is a handful of compiled loops over a window's
pixels (the rasterization, the blend, the colour term and their gradients),
and on two cores the second one is mostly idle while the first fits (the
read-ahead and the picture writer use a tenth of it). Each loop splits its
pixels (or entries) into one run per thread; every pixel's arithmetic is the
one it has alone, and whatever several pixels add into one number (a face's
gradient, a loss) is added afterwards by one thread in the pixels' order, so
the results are the serial loop's to the bit whatever the number of threads.

Why the main thread only: where neither OpenMP nor TBB is installed (a
laptop without libgomp), numba falls back to its own thread pool, which
aborts the process when two threads launch parallel loops at once; the
tracker renders its synthesised frames in a thread beside the fit. Any other
thread runs the same loops serially.
"""

from __future__ import annotations

import threading

import numba


def workers() -> int:
    """How many runs a compiled loop called from this thread shares its work in: numba's threads
    (numba.get_num_threads(), NUMBA_NUM_THREADS or the cores) from the main thread, 1 from any other."""
    if threading.current_thread() is not threading.main_thread():
        return 1
    return numba.get_num_threads()
