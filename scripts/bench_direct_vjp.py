"""Cost of the direct attention kernel's VJP relative to its forward pass (ratio from one run).

n = 4096 tokens in 2-D, 3 heads; best of 5 timings each. Measured earlier: ~2.3
(pass 1 ~1.2, pass 2 ~1.15 forwards). Moved out of the test suite: a wall-clock
assertion fails on a loaded machine.

    python scripts/bench_direct_vjp.py
"""

import sys
from pathlib import Path

import numpy as np

from gridpde.attention.direct import attention_velocity
from gridpde.attention.direct_vjp import direct_velocity_vjp
from gridpde.heads import pad3, pad_points

sys.path.insert(0, str(Path(__file__).parent))
from bench_forward import best_time  # noqa: E402


def main():
    rng = np.random.default_rng(80)
    n, M = 4096, 3
    X = np.ascontiguousarray(pad_points(rng.normal(size=(n, 2))))
    w = rng.random(n)
    w /= w.sum()
    B = np.ascontiguousarray(pad3(rng.normal(0, 1.0, (M, 2, 2))))
    V = np.ascontiguousarray(pad3(rng.normal(0, 1.0, (M, 2, 2))))
    ubar = np.ascontiguousarray(pad_points(rng.normal(size=(n, 2))))
    t_fwd = best_time(lambda: attention_velocity(X, X, w, B, V), 5)
    t_vjp = best_time(lambda: direct_velocity_vjp(X, w, B, V, ubar), 5)
    print(f"direct kernel, n = {n}, {M} heads: VJP / forward = {t_vjp / t_fwd:.2f}")


if __name__ == "__main__":
    main()
