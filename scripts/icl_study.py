"""In-context linear regression, trained on both discretisations: the table, the figures.

    python scripts/icl_study.py OUT_DIR [--quick]

Trains the readout risk of [icl] prompts (gridpde.validation.icl_studies) with
Gaussian and uniform features: particles with one and two features, the grid
with one. Each run is saved to OUT_DIR/runs/NAME.h5 as it finishes and skipped
when the script is run again (resumable). Then the trained one-feature heads
meet finite contexts of n examples, and the NTK diagnostics compare the two
feature laws. Prints the tables and writes OUT_DIR/*.png.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from gridpde.icl import ICLSpec
from gridpde.validation import icl_studies as st

#: (method, features, dim, steps, lr, case keywords)
RUNS = [
    ("particles", "gaussian", 2, 20, 100.0, {"tokens": 256}),
    ("particles", "uniform", 2, 20, 100.0, {"tokens": 256}),
    ("particles", "gaussian", 3, 20, 100.0, {"tokens": 343}),
    ("particles", "uniform", 3, 20, 100.0, {"tokens": 343}),
    ("grid", "gaussian", 2, 20, 100.0, {"cells": 32}),
    ("grid", "uniform", 2, 20, 100.0, {"cells": 32}),
]


def spec(features: str, quick: bool) -> ICLSpec:
    return ICLSpec(prompts=3 if quick else 4, features=features, scale=0.5, noise=0.1,
                   queries=8 if quick else 16, seed=0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--quick", action="store_true", help="fewer prompts, steps and context sizes (minutes)")
    args = ap.parse_args(argv)
    runs_dir = args.out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for method, features, dim, steps, lr, kw in RUNS:
        if args.quick:
            steps = max(4, steps // 4)
            kw = {k: (v // 2 if k == "cells" else v) for k, v in kw.items()}
        name = f"{method}-{features}-d{dim - 1}"
        path = runs_dir / f"{name}.h5"
        if path.exists():
            results[name] = st.load_run(path)
            print(f"{name}: from {path}", flush=True)
            continue
        print(f"{name}: training ({steps} steps)...", flush=True)
        run = st.train_icl(method, spec(features, args.quick), dim, steps=steps, lr=lr, **kw)
        st.save_run(path, run)
        results[name] = run
        print(f"{name}: {run.risk[0]:.4g} -> {run.final:.4g} in {run.seconds:.0f} s ({run.message})", flush=True)

    print("\nrisk reached (trivial predictor: mean y_q^2; infinite-context optimum: 0)")
    print(f"{'run':<24} {'start':>9} {'final':>9} {'trivial':>9} {'final/triv':>10} {'c var':>7} {'dist GD':>8} "
          f"{'steps':>5} {'s':>6}")
    for name, r in results.items():
        var = 0.25 if "gaussian" in name else 0.25 / 3
        print(f"{name:<24} {r.risk[0]:9.3e} {r.final:9.3e} {r.trivial:9.3e} {r.final / r.trivial:10.3e} "
              f"{r.gd_slope * var:7.3f} {r.gd_distance:8.3f} {r.steps:5d} {r.seconds:6.0f}")
    print("c var: the trained slope a_p = c Sigma_x w_p in units of the optimum 1/Var(x) "
          "(one preconditioned GD step with Gamma = Sigma_x^-1 predicts w_p x_q exactly); dist GD: "
          "|yhat - c Sigma_x w_p x_q| / |yhat|")

    sizes = (8, 32) if args.quick else (8, 32, 128, 512, 2048)
    print("\nfinite contexts: the trained particle heads (one feature) on n sampled examples, 4 draws")
    ctx = {}
    for features in ("gaussian", "uniform"):
        r = results[f"particles-{features}-d1"]
        ns, means, sds, law = st.context_sizes(spec(features, args.quick), r.heads, sizes)
        ctx[features] = (ns, means, sds, law)
        gaps = np.abs(np.array(means) - law)
        rate = np.polyfit(np.log(ns), np.log(gaps), 1)[0] if len(ns) > 2 else float("nan")
        print(f"{features:<9} law {law:.4e}; " + ", ".join(f"n={n}: {m:.4e}±{s:.1e}" for n, m, s in
                                                          zip(ns, means, sds)) + f"; |gap| ~ n^{rate:.2f}")

    print("\nNTK diagnostics of the prompts (tangent map, degree-2 adjoint fields)")
    table = st.ntk_table(spec("gaussian", args.quick), spec("uniform", args.quick))
    for features, row in table.items():
        print(f"{features:<9} tangent rank {row['rank']}/{row['columns']}, sigma_min/sigma_ref "
              f"{row['sigma_min_rel']:.2e}; reading (a) pooled rank {row['lse_a_rank']}/{row['lse_a_columns']}")
    figures(args.out, results, ctx, args.quick)
    return 0


def figures(out: Path, results: dict, ctx: dict, quick: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.2), squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items()):
        lim = float(np.abs(r.y).max()) * 1.1
        ax.plot([-lim, lim], [-lim, lim], color="0.6", lw=0.8, label="exact")
        ax.scatter(r.y.ravel(), r.yhat.ravel(), s=8, c=np.repeat(np.arange(r.y.shape[0]), r.y.shape[1]),
                   cmap="tab10", vmin=0, vmax=9)
        ax.set_title(f"{name}\nrisk {r.final:.2e} (trivial {r.trivial:.2e})", fontsize=8)
        ax.set_xlabel("true label w·x_q")
        ax.set_ylabel("predicted (query's last coordinate at s = 1)")
        ax.set_aspect("equal")
    fig.suptitle("in-context regression: predicted against true labels (colour: prompt)", fontsize=9)
    _save(fig, out / "icl_predictions.png")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, r in results.items():
        ax.semilogy(np.array(r.risk) / r.trivial, label=name)
    ax.set_xlabel("training step")
    ax.set_ylabel("risk / trivial predictor's risk")
    ax.set_title("in-context regression: risk along training", fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, out / "icl_risk.png")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for features, (ns, means, sds, law) in ctx.items():
        ax.errorbar(ns, means, yerr=sds, marker="o", label=f"{features}: n examples")
        ax.axhline(law, ls="--", lw=0.8, color=ax.lines[-1].get_color(), label=f"{features}: context law")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("context size n")
    ax.set_ylabel("readout risk of the trained heads")
    ax.set_title("finite-context transformer: risk against context size", fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, out / "icl_context.png")
    trajectories(out, results, quick)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def trajectories(out: Path, results: dict, quick: bool) -> None:
    """Query paths over the context density of the trained grid model (first prompt)."""
    import matplotlib.pyplot as plt

    from gridpde.driver import forward

    name = "grid-gaussian-d1"
    if name not in results:
        return
    r = results[name]
    case = st.icl_case("grid", spec("gaussian", quick), 2, cells=16 if quick else 32)
    snaps = forward(case, r.heads, snapshots=9)
    X, Y = np.meshgrid(snaps.centres[0], snaps.centres[1], indexing="ij")
    fig, ax = plt.subplots(figsize=(5, 4))
    rho0, rho1 = snaps.density[0, 0], snaps.density[0, -1]
    ax.contour(X, Y, rho0, levels=rho0.max() * np.array([0.05, 0.2, 0.5, 0.8]), colors="0.5", linewidths=0.7)
    ax.contourf(X, Y, rho1, levels=rho1.max() * np.linspace(0.02, 1, 12), cmap="Blues", alpha=0.6)
    mass = (rho0 > 1e-3 * rho0.max()) | (rho1 > 1e-3 * rho1.max())  # zoom to where the mass is
    xs, ys = X[mass], Y[mass]
    pad = 0.15 * max(np.ptp(xs), np.ptp(ys))
    ax.set_xlim(xs.min() - pad, xs.max() + pad)
    ax.set_ylim(ys.min() - pad, ys.max() + pad)
    q = snaps.queries[0]
    for k in range(q.shape[1]):
        ax.plot(q[:, k, 0], q[:, k, 1], "-", color="C3", lw=1)
        ax.plot(q[-1, k, 0], q[-1, k, 1], "o", color="C3", ms=3)
    lab = case.queries[0]
    ax.plot(lab.points[:, 0], lab.labels[:, 0], "x", color="k", ms=4, label="true label (x_q, w·x_q)")
    ax.set_xlabel("feature x")
    ax.set_ylabel("label slot y")
    ax.set_title(f"{name}: queries (red) over the context (grey: s = 0, blue: s = 1)", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "icl_queries.png", dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    t = time.perf_counter()
    code = main()
    print(f"done in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    sys.exit(code)
