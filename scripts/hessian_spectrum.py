"""The spectrum of the risk's Hessian at the teacher of a teacher-student case, and what it means for training.

    python scripts/hessian_spectrum.py [cases/teacher_student_1d_near.toml] [--method grid] [--eps 1e-4]
                                       [--heads RESULT.h5]

With ``--heads`` the Hessian is taken at the final heads of a result file
instead (e.g. where a training run stopped: if the gradient is zero there,
a negative eigenvalue means a saddle, none a local minimum up to the
resolution). On the grid the risk is that of the depth-step schedule
training ended on (``/checkpoint/schedules``), not the case's initial one.

At the planted global minimum the Hessian of R is the Gauss-Newton matrix;
its eigenvalues (times L M, the mean-field scaling of the flow) are the
rates of the linearised flow d theta/dt = -L M grad R. The Hessian is formed
column by column from central differences of the exact gradient (2 n
gradients for n head entries). Prints the eigenvalues, the expected number of
zero modes (k^2 per head: Q -> A Q, K -> A^-T K leaves B = K^T Q unchanged),
and how many steps each time discretisation needs per decade of the
slowest resolved nonzero mode.
"""

import argparse
import os
import sys

import h5py
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from gridpde.casefile import load_case  # noqa: E402
from gridpde.heads import HEAD_ARRAYS, Heads  # noqa: E402
from gridpde.objective.problem import Problem  # noqa: E402




def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", nargs="?", default="cases/teacher_student_1d_near.toml")
    ap.add_argument("--method", choices=["grid", "particles"])
    ap.add_argument("--eps", type=float, default=1e-4, help="finite-difference step on the head entries")
    ap.add_argument("--heads", metavar="RESULT.h5", help="take the Hessian at this result's heads")
    args = ap.parse_args(argv)
    case = load_case(args.case)
    if case.loss is None or case.loss.teacher is None:
        sys.exit(f"{args.case}: needs a [loss.teacher] table (the Hessian is taken at the teacher)")
    problem = Problem(case, args.method)
    teacher = case.loss.teacher
    if args.heads is None and teacher.V.shape != case.heads.V.shape:
        sys.exit(f"{args.case}: the teacher has another shape than the model ({teacher!r} vs {case.heads!r}); "
                 "give --heads RESULT.h5 to take the Hessian at trained heads")
    stored = None
    if args.heads:
        with h5py.File(args.heads, "r") as f:  # the model's heads, trained
            teacher = Heads(*(f["heads"][k][()].reshape(getattr(case.heads, k).shape) for k in HEAD_ARRAYS),
                            case.heads.scale_scores)
            if "checkpoint/schedules" in f:  # the discrete risk training ended on (grid)
                problem.use_schedules(f["checkpoint/schedules"][()])
            if "risk" in f and f.attrs["method"] == problem.method.name:
                stored = float(f["risk"][()])
    L, M, k = teacher.layers, teacher.width, teacher.head_dim

    def gradient(x):
        res = problem.risk_and_grad(teacher.with_flat(x))
        return res.grad.flat(), res.risk

    x0 = teacher.flat()
    g0, r0 = gradient(x0)
    where = args.heads or "the teacher"
    print(f"{args.case} ({problem.method.name}): {x0.size} head entries; at {where} risk {r0:.2e}, "
          f"|grad| {np.linalg.norm(g0):.2e}")
    if stored is not None and not np.isclose(r0, stored, rtol=1e-9, atol=0.0):
        print(f"warning: the result file's /risk is {stored:.6e}: this is not the risk its run trained "
              "(another case file or solver?)")
    H = np.empty((x0.size, x0.size))
    for i in range(x0.size):
        e = np.zeros(x0.size)
        e[i] = args.eps
        H[:, i] = (gradient(x0 + e)[0] - gradient(x0 - e)[0]) / (2 * args.eps)
    asym = np.abs(H - H.T).max() / np.abs(H).max()
    lam = np.sort(np.linalg.eigvalsh(0.5 * (H + H.T)) * L * M)[::-1]
    zero = L * M * k * k
    print(f"eigenvalues of L M Hess R (asymmetry of the difference quotient {asym:.1e}):")
    print(np.array2string(lam, precision=3, max_line_width=100))
    resolution = asym * np.abs(lam).max()
    print(f"resolution: eigenvalues below ~{resolution:.0e} are difference-quotient noise "
          "(or kinks of the discrete risk, e.g. upwind faces where u changes sign)")
    verdict = ("negative curvature (at a stationary point: a saddle)" if lam[-1] < -resolution
               else "no negative curvature beyond the resolution (at a stationary point: a local minimum)")
    print(f"smallest eigenvalue {lam[-1]:.2e}: {verdict}")
    live = lam[: lam.size - zero]
    resolved = live[live > resolution]
    print(f"expected zero modes {zero} (largest of them {np.abs(lam[lam.size - zero:]).max():.1e}); "
          f"nonzero modes {live.size}, {resolved.size} resolved, from {live[0]:.3g} down to {resolved[-1]:.3g}: "
          f"condition number >= {live[0] / resolved[-1]:.3g}")
    live = resolved
    decade = np.log(10.0)
    lr = 2.0 / live[0]
    per = -np.log1p(-lr * live[-1])
    print(f"explicit Euler, lr < 2 / lam_max = {lr:.3g}: >= {decade / per:.3g} steps per decade of the slowest mode")
    for lr in (1e4, 1e6, 1e8):
        print(f"implicit Euler, lr = {lr:g}: {decade / np.log1p(lr * live[-1]):.3g} steps per decade of the slowest mode")


if __name__ == "__main__":
    main()
