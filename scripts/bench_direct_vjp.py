"""Cost of the direct attention kernel's VJP relative to its forward pass (ratio from one run).

n = 4096 tokens in 2-D, 3 heads; best of 5 timings each. Measured earlier: ~2.3
(pass 1 ~1.2, pass 2 ~1.15 forwards). Moved out of the test suite: a wall-clock
assertion fails on a loaded machine.

    python scripts/bench_direct_vjp.py
"""

import time

import numpy as np

from gridpde.attention.direct import attention_velocity
from gridpde.attention.direct_vjp import direct_velocity_vjp
from gridpde.heads import pad3, pad_points


def best(f, repeats=5):
    t = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        t = min(t, time.perf_counter() - t0)
    return t


def main():
    rng = np.random.default_rng(80)
    n, M = 4096, 3
    X = np.ascontiguousarray(pad_points(rng.normal(size=(n, 2))))
    w = rng.random(n)
    w /= w.sum()
    B = np.ascontiguousarray(pad3(rng.normal(0, 1.0, (M, 2, 2))))
    V = np.ascontiguousarray(pad3(rng.normal(0, 1.0, (M, 2, 2))))
    ubar = np.ascontiguousarray(pad_points(rng.normal(size=(n, 2))))
    attention_velocity(X, X, w, B, V)
    direct_velocity_vjp(X, w, B, V, ubar)  # compile / load
    t_fwd = best(lambda: attention_velocity(X, X, w, B, V))
    t_vjp = best(lambda: direct_velocity_vjp(X, w, B, V, ubar))
    print(f"direct kernel, n = {n}, {M} heads: VJP / forward = {t_vjp / t_fwd:.2f}")


if __name__ == "__main__":
    main()
