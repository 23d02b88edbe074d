"""Plain-numpy twins of the attention kernels (tests and benchmark baseline).

Same sums as ``direct.direct_velocity``, by blocks of targets: scores by a
matrix product, ``np.exp`` of the max-shifted scores, matrix products for the
sums. Memory is O(block * N).
"""

import numpy as np

__all__ = ["reference_velocity"]


def reference_velocity(targets, sources, weights, B, V, block=256):
    """Return ``(out (T, 3), lse (M, T))`` for the padded attention sum."""
    targets = np.asarray(targets, dtype=np.float64)
    T = targets.shape[0]
    M = B.shape[0]
    keep = weights > 0.0
    y = np.ascontiguousarray(sources[keep])  # (n, 3)
    w = np.ascontiguousarray(weights[keep])  # (n,)
    yw = y * w[:, None]  # (n, 3)
    out = np.zeros((T, 3))
    lse = np.empty((M, T))
    if y.shape[0] == 0:
        lse[:] = -np.inf
        return out, lse
    for j in range(M):
        for t0 in range(0, T, block):
            x = targets[t0 : t0 + block]
            z = x @ B[j].T  # (b, 3), rows B x
            e = z @ y.T  # (b, n) scores, then (in place) shifted exponentials
            mx = e.max(axis=1)
            np.subtract(e, mx[:, None], out=e)
            np.exp(e, out=e)
            norm = e @ w  # (b,)
            m = (e @ yw) / norm[:, None]  # (b, 3)
            lse[j, t0 : t0 + block] = mx + np.log(norm)
            out[t0 : t0 + block] += m @ V[j].T
    out /= M
    return out, lse
