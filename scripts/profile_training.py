"""Where a training step's time goes: one risk-and-gradient evaluation, profiled.

    python scripts/profile_training.py [cases/teacher_student_2d_near.toml] [--method grid]

Prints the share of the time in the attention sums (forward and VJP), the
transport (forward and VJP), the loss, and the rest, from cProfile in one run;
then the rate of evaluations without the profiler (an explicit training step
is one evaluation, an implicit step as many as its inner solve takes:
/train/evaluations).
"""

import argparse
import cProfile
import os
import pstats
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from gridpde.casefile import load_case  # noqa: E402
from gridpde.objective.problem import Problem  # noqa: E402

GROUPS = {
    "attention forward": ("tensor.py", "direct.py"),
    "attention VJP": ("tensor_vjp.py", "direct_vjp.py"),
    "transport forward": ("transport.py",),
    "transport VJP": ("transport_vjp.py",),
    "loss": ("losses.py",),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", nargs="?", default="cases/teacher_student_2d_near.toml")
    ap.add_argument("--method", choices=["grid", "particles"])
    ap.add_argument("--repeat", type=int, default=20, help="evaluations timed for the rate")
    args = ap.parse_args(argv)
    case = load_case(args.case)
    problem = Problem(case, args.method)
    m = case.heads
    problem.risk_and_grad(m)  # compile / load kernels
    t = time.perf_counter()
    problem.risk(m)
    forward = time.perf_counter() - t
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    res = problem.risk_and_grad(m)
    prof.disable()
    total = time.perf_counter() - t
    stats = pstats.Stats(prof).stats
    spent = dict.fromkeys(GROUPS, 0.0)
    for (filename, _, _), (_, _, tottime, _, _) in stats.items():
        for group, files in GROUPS.items():
            if os.path.basename(filename) in files:
                spent[group] += tottime
    print(f"{args.case} ({problem.method.name}): one gradient {total:.3f} s = {total / forward:.2f} x forward "
          f"({forward:.3f} s); {res.steps} depth steps over {len(case.prompts)} prompts")
    for group, s in spent.items():
        print(f"  {group:<18} {s:7.3f} s  {100 * s / total:5.1f} %")
    rest = total - sum(spent.values())
    print(f"  {'rest (python)':<18} {rest:7.3f} s  {100 * rest / total:5.1f} %")
    t = time.perf_counter()
    for _ in range(args.repeat):
        problem.risk_and_grad(m)
    rate = args.repeat / (time.perf_counter() - t)
    print(f"{rate:.1f} risk-and-gradient evaluations per second ({args.repeat} without the profiler): "
          f"explicit steps per second")


if __name__ == "__main__":
    main()
