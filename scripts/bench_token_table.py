"""Token table vs the direct kernel (the particle method): speed-up and error, measured in one run.

    python scripts/bench_token_table.py [--quick] [--tokens 100000]

The tokens' own velocity for n tokens in 2-D (16 heads, O(1) scores), drawn
from a Gaussian and from a well-separated two-bump mixture, with random
weights. For each tolerance it prints the speed-up of
:func:`token_table_velocity` (the whole call: z-range, node sums by matrix
products, refinement, a posteriori check, evaluation) over
:func:`direct_velocity`, the true max relative error and the method's own
estimate; then the VJP (targets and sources) against the forward call and,
at 1e4 tokens, against the direct VJP.

The direct kernel's cost is linear in the number of targets, so it is timed
on a random sample of targets and scaled; the true error is measured on the
same sample. Times are medians of a few repeats: only the ratios are the
result.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from gridpde.attention import table as tb  # noqa: E402
from gridpde.attention.direct import direct_velocity  # noqa: E402
from gridpde.attention.direct_vjp import direct_velocity_vjp  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_table import median_time  # noqa: E402


def problem(n, heads, kind, rng, dim=2):
    """Tokens (padded layout), weights and heads with O(1) scores."""
    X = np.zeros((n, 3))
    if kind == "gauss":
        X[:, 3 - dim :] = rng.normal(size=(n, dim)) * np.sqrt(1.5)
    else:
        side = np.where(rng.random(n) < 0.6, -2.5, 2.5)
        X[:, 3 - dim :] = side[:, None] + rng.normal(size=(n, dim)) * np.sqrt(0.5)
    w = rng.random(n) + 0.5
    w /= w.sum()
    B = np.zeros((heads, 3, 3))
    V = np.zeros((heads, 3, 3))
    B[:, 3 - dim :, 3 - dim :] = rng.normal(size=(heads, dim, dim)) * 0.5 / np.sqrt(dim)
    V[:, 3 - dim :, 3 - dim :] = rng.normal(size=(heads, dim, dim))
    return X, w, B, V


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer tolerances and repeats")
    ap.add_argument("--tokens", type=int, default=100_000)
    ap.add_argument("--heads", type=int, default=16)
    args = ap.parse_args()
    tols = [1e-4, 1e-8, 1e-12] if args.quick else [1e-4, 1e-6, 1e-8, 1e-10, 1e-12]
    repeats = 1 if args.quick else 3
    rng = np.random.default_rng(0)
    print(f"{args.tokens} tokens in 2-D, {args.heads} heads")
    print(f"{'density':8s} {'tol':>7s} {'speed-up':>9s} {'true err':>9s} {'estimate':>9s} {'nodes':>7s} method")
    for kind in ("gauss", "bumps"):
        X, w, B, V = problem(args.tokens, args.heads, kind, rng)
        n, M = X.shape[0], B.shape[0]
        sample = np.sort(rng.choice(n, size=min(n, 2000), replace=False))
        Xs = np.ascontiguousarray(X[sample])
        ref = np.empty((len(sample), 3))
        t_direct = median_time(lambda: direct_velocity(Xs, X, w, B, V, ref, np.empty((M, len(sample)))), repeats)
        t_direct *= n / len(sample)
        out = np.empty((n, 3))
        for tol in tols:
            info = {}
            t_tab = median_time(lambda: info.update(tb.token_table_velocity(X, w, B, V, out, tol=tol)), repeats)
            err = np.abs(out[sample] - ref).max() / np.abs(ref).max()
            print(f"{kind:8s} {tol:7.0e} {t_direct / t_tab:9.1f} {err:9.2e} {info['error_estimate']:9.2e} "
                  f"{info['table_nodes']:7d} {info['method']} {info['reason']}")  # fmt: skip
        tol = 1e-8
        info = tb.token_table_velocity(X, w, B, V, out, tol=tol)
        ubar = np.zeros((n, 3))
        ubar[:, 1:] = rng.normal(size=(n, 2))
        t_fwd = median_time(lambda: tb.token_table_velocity(X, w, B, V, out, tol=tol), repeats)
        t_vjp = median_time(lambda: tb.token_table_velocity_vjp(info, X, w, B, V, ubar), repeats)
        print(f"{kind:8s} VJP / forward call at tol {tol:g}: {t_vjp / t_fwd:.2f}")
    # VJP against the direct VJP on a size the direct VJP can do whole
    n = 10_000
    X, w, B, V = problem(n, args.heads, "gauss", rng)
    out = np.empty((n, 3))
    ubar = np.zeros((n, 3))
    ubar[:, 1:] = rng.normal(size=(n, 2))
    info = tb.token_table_velocity(X, w, B, V, out, tol=1e-8)
    t_tab = median_time(lambda: tb.token_table_velocity_vjp(info, X, w, B, V, ubar), repeats)
    t_dir = median_time(lambda: direct_velocity_vjp(X, w, B, V, ubar), repeats)
    got = tb.token_table_velocity_vjp(info, X, w, B, V, ubar)
    exact = direct_velocity_vjp(X, w, B, V, ubar)
    rel = [np.abs(a - b).max() / np.abs(b).max() for a, b in zip(got, exact)]
    print(f"{n} tokens, tol 1e-8: direct VJP / table VJP {t_dir / t_tab:.1f}; "
          f"relative differences X_bar {rel[0]:.1e}, B_bar {rel[1]:.1e}, V_bar {rel[2]:.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
