"""The one place that sets numba options for every compiled kernel (and the threading layer).

``fastmath`` is restricted to flags that keep NaN and inf semantics
(``nnan``/``ninf`` are left out) so that a NaN in a run is seen, not
optimised away. ``reassoc`` and ``contract`` let reductions vectorise.
"""

import os

import numba
from numba import njit

# numba's OpenMP layer spin-waits between parallel regions and, on 2 cores,
# fights the main thread: a kernel call on 400 tokens took 3-8 ms with it and
# 0.8 ms with the workqueue layer (measured here). An explicit
# NUMBA_THREADING_LAYER in the environment still wins.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

FASTMATH = {"reassoc", "contract", "arcp", "nsz"}


def kernel(fn=None, *, parallel=False):
    """Compile ``fn`` with the project's options (cache on, safe fastmath)."""

    def wrap(f):
        return njit(cache=True, fastmath=FASTMATH, parallel=parallel, nogil=True)(f)

    return wrap(fn) if fn is not None else wrap


def inline(fn):
    """A small helper compiled into the kernels that call it."""
    return njit(cache=True, fastmath=FASTMATH, inline="always")(fn)
