"""The one place that sets numba options for every compiled kernel.

``fastmath`` is restricted to flags that keep NaN and inf semantics
(``nnan``/``ninf`` are left out) so that a NaN in a run is seen, not
optimised away. ``reassoc`` and ``contract`` let reductions vectorise.
"""

from numba import njit

FASTMATH = {"reassoc", "contract", "arcp", "nsz"}


def kernel(fn=None, *, parallel=False):
    """Compile ``fn`` with the project's options (cache on, safe fastmath)."""

    def wrap(f):
        return njit(cache=True, fastmath=FASTMATH, parallel=parallel, nogil=True)(f)

    return wrap(fn) if fn is not None else wrap


def inline(fn):
    """A small helper compiled into the kernels that call it."""
    return njit(cache=True, fastmath=FASTMATH, inline="always")(fn)
