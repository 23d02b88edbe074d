"""A whole forward pass and gradient with the attention table against exact sums (ratios from one run).

The 2-D Gaussian validation problem on 128^2 cells with 8 heads per layer
(the problem's 2 heads per layer, each repeated 4 times: the mean-field
field, hence the exact Gaussian solution, is unchanged), MUSCL, an MMD loss
to a Gaussian target. Prints the forward and gradient times of both, the
gradient/forward ratio of the table (target: <= 2.5), and the errors at
s = 1 against the exact solution, table against exact. The kernels are
compiled first, on a 32^2 case, so the times are of the passes alone.

    python scripts/bench_table_pass.py [--cells 128] [--tol 1e-10]
"""

import argparse
import time

import numpy as np

from gridpde.heads import Heads
from gridpde.objective.problem import Problem
from gridpde.prompts import GaussianPrompt
from gridpde.spec import Case, GridSpec, LossSpec, SolverSpec
from gridpde.validation.problems import gaussian_problem, run_level


def case(n: int, attention: str, tol: float) -> Case:
    p = gaussian_problem(2)
    B = np.repeat(p.B, 4, axis=1)
    V = np.repeat(p.V, 4, axis=1)
    heads = Heads(B, np.broadcast_to(np.eye(2), B.shape).copy(), V)
    lo, hi = p.box()
    return Case(dim=2, grid=GridSpec(lo, hi, (n, n)), heads=heads, prompts=(GaussianPrompt(p.mean, p.cov),),
                solver=SolverSpec(attention=attention, attention_tol=tol), loss=LossSpec("mmd", 1.0),
                targets=(GaussianPrompt([0.4, 0.4], [[0.35, 0.0], [0.0, 0.6]]),))


def timed(f):
    t = time.perf_counter()
    out = f()
    return out, time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=128)
    ap.add_argument("--tol", type=float, default=1e-10)
    args = ap.parse_args()
    for attention in ("table", "exact"):  # compile every kernel (numba) before timing
        c = case(32, attention, args.tol)
        Problem(c).risk_and_grad(c.heads)
    rows = {}
    for attention in ("table", "exact"):
        c = case(args.cells, attention, args.tol)
        problem, t_setup = timed(lambda: Problem(c))
        fwd, t_fwd = timed(lambda: problem.risk(c.heads))
        grad, t_grad = timed(lambda: problem.risk_and_grad(c.heads))
        rows[attention] = (fwd.risk, grad, t_fwd, t_grad)
        print(f"{attention:>5}: forward {t_fwd:8.2f} s, gradient {t_grad:8.2f} s ({t_grad / t_fwd:.2f} x forward)")
    (r_t, g_t, f_t, gr_t), (r_e, g_e, f_e, gr_e) = rows["table"], rows["exact"]
    print(f"speed-up of the table: forward {f_e / f_t:.1f}x, gradient {gr_e / gr_t:.1f}x")
    print(f"risk: table {r_t:.12e}, exact {r_e:.12e}, relative difference {abs(r_t - r_e) / r_e:.2e}")
    gd = np.linalg.norm(g_t.grad.flat() - g_e.grad.flat()) / np.linalg.norm(g_e.grad.flat())
    print(f"gradient: relative difference {gd:.2e}")
    p = gaussian_problem(2)
    lt = run_level(p, args.cells, "vanleer", attention="table", attention_tol=args.tol)
    le = run_level(p, args.cells, "vanleer")
    for key in ("l1", "mean_err", "cov_err"):
        a, b = getattr(lt, key), getattr(le, key)
        print(f"error vs the exact Gaussian solution, {key}: table {a:.6e}, exact {b:.6e}, change {abs(a - b) / b:.2e}")


if __name__ == "__main__":
    main()
