"""Prompts over MPI ranks: a 16-prompt 2-D training evaluation (risk and gradient), timed per layout.

    python scripts/bench_mpi.py [--cells 40] [--prompts 16]

Runs, each in its own mpiexec, one warm-up evaluation and then the median of
three of ``Problem.risk_and_grad`` for: 1 rank x 1 thread, 1 rank x 2
threads, 2 ranks x 1 thread, 4 ranks x 1 thread (oversubscribed on 2
cores). Prints times relative to 1 x 1 and the parallel efficiency
T(1 x 1) / (cores used x T). Needs the [mpi] extra.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

import numpy as np


def case(cells: int, prompts: int):
    from gridpde.builders import case_document, dump_case, gaussian
    from gridpde.casefile import parse_case

    rng = np.random.default_rng(0)
    ps = [gaussian(rng.uniform(-0.5, 0.5, 2).tolist(), (np.diag(rng.uniform(0.3, 0.6, 2))).tolist())
          for _ in range(prompts)]
    doc = case_document(2, cells=cells, box=6.0, init=(0.6, 1), teacher=(0.6, 2), prompts=ps,
                        solver={"attention": "exact", "mass_tol": 1e-3})
    return parse_case(dump_case(doc))


def worker(cells: int, prompts: int) -> None:
    from gridpde.objective.problem import Problem
    from gridpde.parallel import world

    c = case(cells, prompts)
    problem = Problem(c)
    problem.risk_and_grad(c.heads)  # warm-up: compilation, caches
    times = []
    for _ in range(3):
        world().barrier()
        t = time.perf_counter()
        problem.risk_and_grad(c.heads)
        world().barrier()
        times.append(time.perf_counter() - t)
    if world().root:
        print(f"TIME {np.median(times):.6f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", type=int, default=40)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.cells, args.prompts)
        return 0
    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        print("no mpiexec: pip install -e '.[mpi]'", file=sys.stderr)
        return 2
    layouts = [(1, 1), (1, 2), (2, 1), (4, 1)]
    times = {}
    for ranks, threads in layouts:
        env = {**os.environ, "NUMBA_NUM_THREADS": str(threads)}
        cmd = [sys.executable, __file__, "--worker", "--cells", str(args.cells), "--prompts", str(args.prompts)]
        if ranks > 1:
            cmd = [mpiexec, "-n", str(ranks), *cmd]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        times[(ranks, threads)] = float(next(l for l in out.splitlines() if l.startswith("TIME")).split()[1])
    base = times[(1, 1)]
    print(f"{args.prompts} prompts, 2-D {args.cells}^2 cells, one risk-and-gradient evaluation, median of 3; "
          f"{os.cpu_count()} cores")
    print(f"{'ranks x threads':<16} {'time / (1 x 1)':>15} {'speed-up':>9} {'efficiency':>11}")
    for (ranks, threads), t in times.items():
        used = ranks * threads
        cores = min(used, os.cpu_count() or used)
        note = "  (oversubscribed)" if used > (os.cpu_count() or used) else ""
        print(f"{ranks} x {threads:<12} {t / base:15.3f} {base / t:9.2f} {base / (cores * t):11.2f}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
