"""Cost of one gradient (forward + adjoint) relative to the forward pass alone.

    python scripts/bench_gradient.py [--quick]

Measured in one run on the same case, best of a few repeats, compilation
excluded by a warm-up. The issue's budget: a gradient at most 3x a forward.
"""

import argparse
import os
import sys
import time

import numba

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from gridpde.objective.problem import Problem  # noqa: E402
from gridpde.validation.gradient_studies import gaussian_case  # noqa: E402


def best(fn, repeats=3):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    cases = [("grid", 1, 400, "upwind"), ("grid", 1, 400, "muscl"), ("grid", 2, 64, "upwind"),
             ("grid", 2, 64, "muscl"), ("particles", 1, 64, "upwind"), ("particles", 2, 32, "upwind")]
    if not args.quick:
        cases += [("grid", 2, 96, "muscl"), ("particles", 2, 64, "upwind")]
    print(f"numba threads {numba.get_num_threads()}")
    print(f"{'method':<10} {'dim':>3} {'n':>5} {'scheme':<7} {'forward s':>10} {'gradient s':>10} {'ratio':>6}")
    for method, dim, n, scheme in cases:
        case = gaussian_case(dim, method, n, scheme, tokens=n**dim)
        problem = Problem(case)
        m = case.heads
        tf = best(lambda: problem.risk(m))
        tg = best(lambda: problem.risk_and_grad(m))
        print(f"{method:<10} {dim:>3} {n:>5} {scheme:<7} {tf:>10.3f} {tg:>10.3f} {tg / tf:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
