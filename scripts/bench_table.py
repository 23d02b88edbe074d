"""Table method vs the exact tensor kernel: speed-up and error, measured in one run.

    python scripts/bench_table.py [--quick]

Velocity at every face centre of a 2-D 256^2 grid on [-6, 6]^2 (16 heads)
and of a 3-D 64^3 grid (8 heads), O(1) scores, deconvolved quadrature, on a
Gaussian and on a well-separated two-bump mixture. For each tolerance it
prints the speed-up of :func:`table_velocity` (the whole call: z-range,
table build and refinement, a posteriori check, evaluation) over
:func:`tensor_velocity`, the speed-up of the evaluation alone, the true max
relative error and the method's own estimate; then the VJP's cost relative
to the forward call. Where the tensor table is too large (3-D two bumps) the
call takes a tree of panels: ``panels`` is then the number of leaves.

The exact kernel's cost is linear in the number of targets, so it is timed
on a random sample of targets and scaled; the true error is measured on the
same sample. Times are medians of a few repeats (the machine is shared):
only the ratios are the result.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from gridpde.attention import table as tb  # noqa: E402
from gridpde.attention.tensor import tensor_velocity  # noqa: E402


def median_time(fn, repeats):
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def problem(dim, n, heads, kind, seed=0):
    """Cell masses, centres, face-centre targets and heads in the padded layout."""
    edges = np.linspace(-6.0, 6.0, n + 1)
    c = 0.5 * (edges[1:] + edges[:-1])
    ys = [np.zeros(1)] * (3 - dim) + [c] * dim
    Y = np.meshgrid(*ys, indexing="ij")
    live = list(range(3 - dim, 3))
    if kind == "gauss":
        w = np.exp(-0.5 * sum(Y[a] ** 2 for a in live) / 1.5)
    else:
        w = np.exp(-0.5 * sum((Y[a] - 2.5) ** 2 for a in live) / 0.5)
        w += 0.6 * np.exp(-0.5 * sum((Y[a] + 2.5) ** 2 for a in live) / 0.5)
    w /= w.sum()
    faces = []
    for a in live:  # faces normal to axis a: edges along a, centres along the others
        axes = [edges if b == a else c for b in live]
        G = np.meshgrid(*axes, indexing="ij")
        f = np.zeros((G[0].size, 3))
        for i, b in enumerate(live):
            f[:, b] = G[i].ravel()
        faces.append(f)
    targets = np.concatenate(faces)
    rng = np.random.default_rng(seed)
    B = np.zeros((heads, 3, 3))
    V = np.zeros((heads, 3, 3))
    ix = np.ix_(range(heads), live, live)
    B[ix] = rng.normal(size=(heads, dim, dim)) / 6.0  # scores (B x).y = O(1) on the box
    V[ix] = rng.normal(size=(heads, dim, dim))
    h = np.array([0.0] * (3 - dim) + [12.0 / n] * dim)
    return targets, w, ys, B, V, h


def bench_case(dim, n, heads, kind, tols, repeats, sample, rng):
    targets, w, ys, B, V, h = problem(dim, n, heads, kind)
    T = len(targets)
    idx = np.sort(rng.choice(T, size=min(sample, T), replace=False))
    sub = np.ascontiguousarray(targets[idx])
    ref = np.empty((len(sub), 3))
    lse = np.empty((heads, len(sub)))
    t_exact = median_time(lambda: tensor_velocity(sub, w, *ys, B, V, h, ref, lse), repeats) * T / len(sub)
    out = np.empty((T, 3))
    rows = []
    for tol in tols:
        info = {}

        def run():
            info.update(tb.table_velocity(targets, w, *ys, B, V, h, out, tol=tol))

        t0 = time.perf_counter()
        run()
        t_table = time.perf_counter() - t0
        if info["method"] == "table":  # an exact fallback is timed once (it is the slow path)
            t_table = median_time(run, repeats)
        err = np.abs(out[idx] - ref).max() / np.abs(ref).max()
        t_eval = np.nan
        if info["method"] == "table":
            table = info["table"]
            t_eval = median_time(lambda: tb.evaluate(table, targets, B, V, out), repeats)
        rows.append((tol, info, t_exact / t_table, t_exact / t_eval, err))
        print(f"  {dim}-D {n}^{dim} {heads} heads {kind:5s} tol {tol:7.0e}: {info['method']:5s} "
              f"q={info['degree']} panels={info['panels']} speed-up {t_exact / t_table:7.1f}x "
              f"(evaluation alone {t_exact / t_eval:7.1f}x)  true err {err:8.2e}  estimate "
              f"{info['error_estimate']:8.2e} {info['reason']}", flush=True)  # fmt: skip
    return targets, w, ys, B, V, h, rows


def bench_vjp(case, tol, repeats):
    targets, w, ys, B, V, h = case
    out = np.empty((len(targets), 3))
    info = tb.table_velocity(targets, w, *ys, B, V, h, out, tol=tol)
    table = info["table"]
    ubar = np.random.default_rng(1).normal(size=targets.shape)
    t_fwd = median_time(lambda: tb.table_velocity(targets, w, *ys, B, V, h, out, tol=tol), repeats)
    t_eval = median_time(lambda: tb.evaluate(table, targets, B, V, out), repeats)
    t_vjp = median_time(lambda: tb.evaluate_vjp(table, targets, B, V, ubar), repeats)
    print(f"  VJP / forward call {t_vjp / t_fwd:5.2f}   VJP / evaluation alone {t_vjp / t_eval:5.2f}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer tolerances and repeats")
    args = ap.parse_args()
    repeats = 1 if args.quick else 3
    rng = np.random.default_rng(0)
    tols2 = [1e-4, 1e-8] if args.quick else [1e-4, 1e-6, 1e-8, 1e-10, 1e-12]
    tols3 = [1e-4] if args.quick else [1e-4, 1e-6]  # 1e-8: the gaussian's 3-D table exceeds the node cap
    print("2-D 256^2 grid, every face (131,584 targets), 16 heads")
    for kind in ("gauss", "bumps"):
        case = bench_case(2, 256, 16, kind, tols2, repeats, 4096, rng)
        if kind == "gauss":
            bench_vjp(case[:6], 1e-8, repeats)
    print("3-D 64^3 grid, every face (798,720 targets), 8 heads")
    for kind in ("gauss", "bumps"):
        bench_case(3, 64, 8, kind, tols3, repeats, 1024, rng)


if __name__ == "__main__":
    main()
