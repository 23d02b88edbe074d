"""The one place that sets numba options for every compiled kernel.

``fastmath`` is restricted to flags that keep NaN and inf semantics
(``nnan``/``ninf`` are left out) so that a NaN in a run is seen, not
optimised away. ``reassoc`` and ``contract`` let reductions vectorise.
"""

import functools
import os
import types

import numba
import numpy as np
from numba import njit

FASTMATH = {"reassoc", "contract", "arcp", "nsz"}


#: a parallel kernel whose largest array argument has fewer elements than
#: this runs its serial twin: launching the thread pool costs 0.1-0.6 ms here,
#: more than a small problem's whole work (a 96-cell transport update: 1 us serial).
SERIAL_BELOW = 2048


class _Dual:
    """A parallel kernel with a serial twin, chosen per call by problem size.

    The twin is compiled from a copy of the function under another qualified
    name, so numba's on-disk cache keeps the two builds apart.
    """

    def __init__(self, fn):
        self.py_func = fn
        self.parallel = njit(cache=True, fastmath=FASTMATH, parallel=True, nogil=True)(fn)
        twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial",
                                  fn.__defaults__, fn.__closure__)
        twin.__qualname__ = fn.__qualname__ + "_serial"
        twin.__module__ = fn.__module__
        self.serial = njit(cache=True, fastmath=FASTMATH, parallel=False, nogil=True)(twin)
        functools.update_wrapper(self, fn)

    def __call__(self, *args):
        largest = max((a.size for a in args if isinstance(a, np.ndarray)), default=0)
        return (self.serial if largest < SERIAL_BELOW else self.parallel)(*args)


def prefer_workqueue() -> None:
    """Use numba's workqueue threading layer unless NUMBA_THREADING_LAYER says otherwise.

    numba's OpenMP layer spin-waits between parallel regions and, on 2
    cores, fights the main thread: a kernel call on 400 tokens took 3-8 ms
    with it and 0.8 ms with the workqueue layer (measured here). The command
    line calls this at start; importing gridpde leaves numba's settings alone
    (a notebook may call it before the first kernel runs).
    """
    if "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER = "workqueue"


def kernel(fn=None, *, parallel=False):
    """Compile ``fn`` with the project's options (cache on, safe fastmath).

    ``parallel=True`` gives a :class:`_Dual`: the prange loops run on the
    thread pool for large arguments and serially for small ones.
    """

    def wrap(f):
        if parallel:
            return _Dual(f)
        return njit(cache=True, fastmath=FASTMATH, nogil=True)(f)

    return wrap(fn) if fn is not None else wrap


def inline(fn):
    """A small helper compiled into the kernels that call it."""
    return njit(cache=True, fastmath=FASTMATH, inline="always")(fn)
