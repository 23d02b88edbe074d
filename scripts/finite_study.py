"""Finite transformers in training against the mean-field theory (issue 17): runs, tables, figures.

    python scripts/finite_study.py OUT energy   [--method particles|grid]
    python scripts/finite_study.py OUT minima   [--dim 1] [--method particles] [--widths 1,2,4,8,16,32,64]
                                                [--seeds 16] [--time-limit 60] [--hessian-max 200]
    python scripts/finite_study.py OUT meanfield [--layers 1,2,4,8,16,32] [--widths 1,4,16,64,256] [--seeds 6]
    python scripts/finite_study.py OUT ntk      [--method particles]
    python scripts/finite_study.py OUT tables   (print every table from what OUT holds)

Every run writes one HDF5 file under OUT/<study>/ and is skipped when that
file exists, so a study interrupted (or cut by ``timeout``) resumes where it
stopped; the tables and figures (OUT/<study>.png) are made from the files.
The step sizes and flow times are those of the issue's closing notes. A minima
stall left unclassified (more parameters than --hessian-max) is classified by a
later call with a larger --hessian-max, from the heads its file holds; --extend S
trains the runs that stopped on their time limit on from their end heads, to
--time-limit + S seconds in all.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from gridpde.heads import HEAD_ARRAYS, Heads  # noqa: E402
from gridpde.objective.problem import Problem  # noqa: E402
from gridpde.validation import finite_studies as fs  # noqa: E402


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _write(path: Path, data: dict, attrs: dict) -> None:
    tmp = path.with_suffix(".tmp")
    with h5py.File(tmp, "w") as f:
        for k, v in data.items():
            f[k] = v
        for k, v in attrs.items():
            f.attrs[k] = v
    tmp.replace(path)  # a file that exists is complete


def _heads_data(prefix: str, h: Heads) -> dict:
    return {f"{prefix}/{k}": v for k, v in h.arrays().items()}


# ------------------------------------------------------------------ energy


ENERGY_DTS = (0.5, 0.25, 0.125, 0.0625, 0.03125)


def energy(out: Path, args) -> None:
    path = out / "energy" / f"{args.method}.h5"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        case = fs.family_case(1, args.method, 2, 4, 13, tokens=args.tokens)
        t0 = time.perf_counter()
        rows = fs.energy_identity(Problem(case), case.heads, 2.0, ENERGY_DTS)
        data = {k: np.array([getattr(r, k) for r in rows], float) for k in rows[0].__dataclass_fields__}
        _write(path, data, {"flow_time": 2.0, "layers": 2, "heads": 4, "seed": 13, "method": args.method,
                            "seconds": time.perf_counter() - t0})
    energy_table(out)


def energy_table(out: Path) -> None:
    for path in sorted((out / "energy").glob("*.h5")):
        with h5py.File(path) as f:
            d = {k: f[k][()] for k in f}
            print(f"\nenergy identity, {f.attrs['method']}, 1-D teacher-student family, L = 2, M = 4 (seed 13), "
                  f"explicit Euler to flow time t = {f.attrs['flow_time']:g}")
        print(f"{'dt':>8} {'steps':>6} {'Euler max':>10} {'trap. max':>10} {'Euler sum':>10} {'trap. sum':>10}")
        for i in range(len(d["dt"])):
            print(f"{d['dt'][i]:8.5f} {int(d['steps'][i]):6d} {d['euler_rel'][i]:10.2e} {d['trapezoid_rel'][i]:10.2e} "
                  f"{d['euler_sum_rel'][i]:10.2e} {d['trapezoid_sum_rel'][i]:10.2e}")
        _energy_figure(out, path.stem, d)
        fit = slice(2, None)  # the asymptotic range: the three smallest steps
        print("fitted order (3 smallest dt): " + ", ".join(
            f"{k} {fs.fitted_slope(d['dt'][fit], d[k][fit]):.2f}"
            for k in ("euler_rel", "trapezoid_rel", "euler_sum_rel", "trapezoid_sum_rel")))


def _energy_figure(out: Path, name: str, d: dict) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    for key, label in (("euler_rel", "Euler form, worst step"), ("euler_sum_rel", "Euler form, summed"),
                       ("trapezoid_rel", "trapezoid form, worst step"), ("trapezoid_sum_rel", "trapezoid form, summed")):
        ax.loglog(d["dt"], d[key], "o-", label=label)
    ax.loglog(d["dt"], d["dt"] * d["euler_sum_rel"][-1] / d["dt"][-1], "k:", label="order 1")
    ax.loglog(d["dt"], d["dt"] ** 2 * d["trapezoid_sum_rel"][-1] / d["dt"][-1] ** 2, "k--", label="order 2")
    ax.set(xlabel="time step dt (mean-field scaling)", ylabel="relative residual",
           title=f"energy identity dR/dt = -L M |grad R|^2 ({name})")
    ax.legend(fontsize="x-small")
    fig.savefig(out / f"energy_{name}.png", dpi=110)


# ------------------------------------------------------------------ minima


def minima(out: Path, args) -> None:
    folder = out / "minima"
    folder.mkdir(parents=True, exist_ok=True)
    for M in _ints(args.widths):
        for seed in range(args.seeds):
            path = folder / f"{args.dim}d_{args.method}_M{M}_s{seed}.h5"
            case = fs.family_case(args.dim, args.method, 2, M, 1000 + seed, tokens=args.tokens)
            if path.exists():
                if args.extend > 0:
                    _extend(path, case, args)
                _classify_later(path, case, args)
                continue
            t0 = time.perf_counter()
            try:
                run = fs.spurious_run(case, time_limit=args.time_limit, steps=args.steps)
            except Exception as exc:  # e.g. mass leaving the grid's box: recorded, not fatal
                _write(path, {}, {"failed": str(exc)[:500], "M": M, "seed": seed})
                print(f"M {M:3d} seed {seed:2d}: failed: {exc}", flush=True)
                continue
            attrs = {"M": M, "seed": 1000 + seed, "risk0": run.risk0, "risk": run.risk, "steps": run.steps,
                     "evaluations": run.evaluations, "train_seconds": run.seconds, "message": run.message,
                     "reached": run.reached, "w_teacher": run.w_teacher, "dim": args.dim, "method": args.method,
                     "max_steps": args.steps, "time_limit": args.time_limit}
            pairs, dead = fs.head_shape(run.heads)
            attrs.update(collapsed_pairs=pairs, dead_heads=dead)
            n = run.heads.flat().size
            if not run.reached and n <= args.hessian_max:
                attrs.update(_stall_attrs(case, args.method, run.heads))
            elif not run.reached:
                attrs.update(kind="unclassified")
            else:
                attrs.update(kind="reached")
            attrs["seconds"] = time.perf_counter() - t0
            _write(path, _heads_data("heads", run.heads), attrs)
            print(f"M {M:3d} seed {seed:2d}: R/R0 {run.risk / run.risk0:.2e} {attrs['kind']:>12} "
                  f"W_c(teacher) {run.w_teacher:.3f} collapsed {pairs} dead {dead} ({attrs['seconds']:.1f} s)",
                  flush=True)
    minima_table(out)


def _stall_attrs(case, method: str, heads: Heads) -> dict:
    st = fs.classify(Problem(case, method), heads)
    return dict(kind=st.kind, lam_min=st.lam_min, lam_max=st.lam_max, resolution=st.resolution,
                predicted_drop=st.predicted_drop, grad_norm=st.grad_norm, asymmetry=st.asymmetry)


def _kind(a: dict) -> str:
    """A run's kind by today's rule (files written before "unresolved" existed are re-read by it:
    their asymmetry is resolution / max |lam|)."""
    if "lam_min" not in a:
        return a["kind"]
    asym = a.get("asymmetry", a["resolution"] / max(abs(a["lam_min"]), abs(a["lam_max"]), 1e-300))
    return fs.stall_kind(a["lam_min"], a["resolution"], asym, a["predicted_drop"])


def _stored(path: Path, case) -> tuple[dict, Heads | None]:
    """(attributes, end heads or None for a failed run) of a minima run's file."""
    with h5py.File(path) as f:
        if "heads" not in f:
            return dict(f.attrs), None
        return dict(f.attrs), Heads(*(f["heads"][k][()] for k in HEAD_ARRAYS), case.heads.scale_scores)


def _extend(path: Path, case, args) -> None:
    """Train a run that stopped on its time limit on from its stored end heads (towards 1e-6 of its
    first risk), up to ``--time-limit`` + ``--extend`` seconds in all; the file then holds the whole
    run's figures. Idempotent: a run whose budget is already that large is left alone."""
    budget = args.time_limit + args.extend
    a, heads = _stored(path, case)
    if ("failed" in a or a["kind"] == "reached" or not str(a["message"]).startswith("time limit")
            or float(a["time_limit"]) >= budget):
        return
    t0 = time.perf_counter()
    extra = budget - float(a["time_limit"])
    run = fs.spurious_run(case, start=heads, risk0=float(a["risk0"]), time_limit=extra,
                          steps=max(int(a["max_steps"]) - int(a["steps"]), 1))
    pairs, dead = fs.head_shape(run.heads)
    a.update(risk=run.risk, steps=int(a["steps"]) + run.steps, evaluations=int(a["evaluations"]) + run.evaluations,
             train_seconds=float(a["train_seconds"]) + run.seconds, message=run.message, reached=run.reached,
             w_teacher=run.w_teacher, collapsed_pairs=pairs, dead_heads=dead,
             time_limit=budget)
    for k in ("lam_min", "lam_max", "resolution", "predicted_drop", "grad_norm", "asymmetry"):
        a.pop(k, None)
    if run.reached:
        a["kind"] = "reached"
    elif run.heads.flat().size <= args.hessian_max:
        a.update(_stall_attrs(case, args.method, run.heads))
    else:
        a["kind"] = "unclassified"
    a["seconds"] = float(a["seconds"]) + time.perf_counter() - t0
    _write(path, _heads_data("heads", run.heads), a)
    print(f"M {int(a['M']):3d} seed {int(a['seed']) - 1000:2d}: R/R0 {run.risk / a['risk0']:.2e} {a['kind']:>12} "
          f"after {a['train_seconds']:.0f} s of training in all ({a['steps']} steps, budget {budget:g} s)",
          flush=True)


def _classify_later(path: Path, case, args) -> None:
    """A stall left "unclassified" (more entries than --hessian-max had) is classified when a
    later call allows it: the run is not repeated, its end heads are read back."""
    attrs, heads = _stored(path, case)
    if attrs.get("kind") != "unclassified" or heads.flat().size > args.hessian_max:
        return
    t0 = time.perf_counter()
    attrs.update(_stall_attrs(case, args.method, heads))
    attrs["classify_seconds"] = time.perf_counter() - t0
    _write(path, _heads_data("heads", heads), attrs)
    print(f"M {int(attrs['M']):3d} seed {int(attrs['seed']) - 1000:2d}: R/R0 {attrs['risk'] / attrs['risk0']:.2e} "
          f"{attrs['kind']:>12} (classified now, {attrs['classify_seconds']:.1f} s)", flush=True)


def _minima_figure(out: Path, rows: dict) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4), layout="constrained")
    ax = fig.subplots()
    for family in sorted({k[0] for k in rows}):
        Ms = sorted(M for fam, M in rows if fam == family)
        frac = [np.mean([r["kind"] != "reached" for r in rows[(family, M)]]) for M in Ms]
        bad = [np.mean([r["kind"] not in ("reached", "failed") and r["risk"] / r["risk0"] > 1e-3
                        for r in rows[(family, M)]]) for M in Ms]
        line = ax.semilogx(Ms, frac, "o-", base=2, label=f"{family}: not at 1e-6 R0")[0]
        ax.semilogx(Ms, bad, "s--", base=2, color=line.get_color(), label=f"{family}: stalled above 1e-3 R0")
    ax.set(xlabel="heads per layer M (student)", ylabel="fraction of seeds",
           title="random students against a fixed 2 x 2 teacher")
    ax.legend(fontsize="x-small")
    fig.savefig(out / "minima.png", dpi=110)


def minima_table(out: Path) -> None:
    rows: dict = {}
    for path in (out / "minima").glob("*.h5"):
        with h5py.File(path) as f:
            a = dict(f.attrs)
        if "failed" in a:
            key = path.name.split("_M")[0]
            rows.setdefault((key, int(a["M"])), []).append({"kind": "failed"})
            continue
        a["kind"] = _kind(a)
        rows.setdefault((f"{a['dim']}d_{a['method']}", int(a["M"])), []).append(a)
    for family in sorted({k[0] for k in rows}):
        print(f"\nspurious minima, {family}: teacher 2 x 2 (scale 0.8, seed 11), students 2 x M "
              "(scale 0.5, seeds 1000+), implicit flow lr = 1e6 until R <= 1e-6 R0")
        print(f"{'M':>4} {'runs':>5} {'reached':>8} {'stalled':>8} {'minimum':>8} {'saddle':>7} {'moving':>7} "
              f"{'unres.':>6} {'uncl.':>6} {'fail':>5} {'<=1e-5':>6} {'>1e-3':>6} {'R/R0 stalls (median, max)':>26} {'W_c teacher':>12} {'collapsed':>9} "
              f"{'dead':>5}")
        for (fam, M), rs in sorted(rows.items()):
            if fam != family:
                continue
            kinds = [r["kind"] for r in rs]
            stalls = [r for r in rs if r["kind"] not in ("reached", "failed")]
            ratios = [r["risk"] / r["risk0"] for r in stalls]
            med = f"{np.median(ratios):.1e}, {np.max(ratios):.1e}" if ratios else "-"
            w = np.median([r["w_teacher"] for r in rs if "w_teacher" in r])
            coll = sum(int(r.get("collapsed_pairs", 0)) for r in stalls)
            dead = sum(int(r.get("dead_heads", 0)) for r in stalls)
            print(f"{M:4d} {len(rs):5d} {kinds.count('reached'):8d} {len(stalls):8d} {kinds.count('minimum'):8d} "
                  f"{kinds.count('saddle'):7d} {kinds.count('moving'):7d} {kinds.count('unresolved'):6d} "
                  f"{kinds.count('unclassified'):6d} "
                  f"{kinds.count('failed'):5d} {kinds.count('reached') + sum(x <= 1e-5 for x in ratios):6d} {sum(x > 1e-3 for x in ratios):6d} {med:>26} {w:12.3f} {coll:9d} {dead:5d}")
    _minima_figure(out, rows)


# ------------------------------------------------------------------ mean field


MF_DT, MF_TIME = 0.25, 4.0


def meanfield(out: Path, args) -> None:
    folder = out / "meanfield"
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(L, M, s) for s in range(args.seeds) for L in _ints(args.layers) for M in _ints(args.widths)]
    jobs.append((args.ref_layers, args.ref_width, -1))  # the reference (one large draw)
    jobs.sort(key=lambda j: (j[2] != -1, j[0] * j[1]))
    for L, M, s in jobs:
        path = folder / f"L{L}_M{M}_s{s}.h5"
        if path.exists():
            continue
        seed = 5000 + 97 * s + L * 1009 + M if s >= 0 else 4999
        case = fs.family_case(1, "particles", L, M, seed, tokens=args.tokens)
        t0 = time.perf_counter()
        tr = fs.meanfield_run(case, MF_DT, MF_TIME)
        data = {"times": tr.times, "risk": tr.risk}
        for c, outs in enumerate(tr.outputs):
            for p, m in enumerate(outs):
                data[f"outputs/c{c}/p{p}/points"] = m.points
                data[f"outputs/c{c}/p{p}/weights"] = m.weights
        _write(path, data, {"L": L, "M": M, "seed": seed, "dt": MF_DT, "flow_time": MF_TIME,
                            "seconds": time.perf_counter() - t0})
        print(f"L {L:3d} M {M:4d} seed {s:2d}: R(0) {tr.risk[0]:.3e} R(T) {tr.risk[-1]:.3e} "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
    meanfield_table(out, args.ref_layers, args.ref_width)


def _outputs(f) -> list:
    from gridpde.measures import TokenMeasure

    cs = sorted(f["outputs"], key=lambda c: int(c[1:]))
    return [[TokenMeasure(f[f"outputs/{c}/p{p}/points"][()], f[f"outputs/{c}/p{p}/weights"][()])
             for p in range(len(f[f"outputs/{c}"]))] for c in cs]


def meanfield_table(out: Path, ref_L: int, ref_M: int) -> None:
    """Two gaps per (L, M): to the reference (one large draw), and the seed-to-seed spread
    ||mu_s - mu_s'||_k / sqrt(2) over pairs of independent draws (the fluctuation, free of any reference)."""
    folder = out / "meanfield"
    ref_path = folder / f"L{ref_L}_M{ref_M}_s-1.h5"
    if not ref_path.exists():
        print("meanfield: no reference yet")
        return
    with h5py.File(ref_path) as f:
        ref_out, ref_risk = _outputs(f), f["risk"][()]
    runs: dict = {}
    for path in folder.glob("L*_M*_s*.h5"):
        if path == ref_path:
            continue
        with h5py.File(path) as f:
            L, M = int(f.attrs["L"]), int(f.attrs["M"])
            runs.setdefault((L, M), []).append((int(path.stem.split("_s")[1]), _outputs(f), f["risk"][()]))

    def dist(a, b, c):  # mean over prompts at checkpoint c
        return float(np.mean([fs.mmd_distance(x, y) for x, y in zip(a[c], b[c])]))

    gaps, spreads = {}, {}
    for key, rs in runs.items():
        gaps[key] = [(s, dist(o, ref_out, 0), dist(o, ref_out, -1), float(np.max(np.abs(r - ref_risk))))
                     for s, o, r in rs]
        pairs = [(i, j) for i in range(len(rs)) for j in range(i + 1, len(rs))]
        spreads[key] = [(dist(rs[i][1], rs[j][1], 0) / np.sqrt(2), dist(rs[i][1], rs[j][1], -1) / np.sqrt(2),
                         abs(rs[i][2][-1] - rs[j][2][-1]) / np.sqrt(2)) for i, j in pairs]
    print(f"\nmean-field trajectories: 1-D particle family (64 quadrature tokens), L x M heads i.i.d. N(0, 0.5^2) "
          f"(one law for every layer and head), explicit Euler dt = {MF_DT} to t = {MF_TIME} (no backtracking); "
          f"reference: one draw of L = {ref_L}, M = {ref_M}; distances ||.||_k (sigma = 1), mean over prompts")
    print(f"{'L':>3} {'M':>4} {'seeds':>5} {'ref gap t=0':>12} {'ref gap t=T':>12} {'(sd)':>9} {'sup|R-Rref|':>12} "
          f"{'spread t=0':>11} {'spread t=T':>11} {'|dR(T)|':>10}")
    for key in sorted(gaps):
        a = np.array([r[1:] for r in gaps[key]])
        b = np.array(spreads[key]) if spreads[key] else np.full((1, 3), np.nan)
        sd = a[:, 1].std(ddof=1) if len(a) > 1 else 0.0
        print(f"{key[0]:3d} {key[1]:4d} {len(a):5d} {a[:, 0].mean():12.3e} {a[:, 1].mean():12.3e} {sd:9.2e} "
              f"{a[:, 2].mean():12.3e} {b[:, 0].mean():11.3e} {b[:, 1].mean():11.3e} {b[:, 2].mean():10.2e}")
    _meanfield_figure(out, gaps, spreads)
    _rate_fits({k: [r[2] for r in v] for k, v in gaps.items()}, "gap to the reference at t = T",
               {k: v for k, v in gaps.items()})
    _rate_fits({k: [r[1] for r in v] for k, v in spreads.items() if v}, "seed-to-seed spread at t = T", None)
    _rate_fits({k: [r[0] for r in v] for k, v in spreads.items() if v}, "seed-to-seed spread at t = 0 (forward)",
               None)


def _meanfield_figure(out: Path, gaps: dict, spreads: dict) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4), layout="constrained")
    axes = fig.subplots(1, 3)
    for L in sorted({k[0] for k in gaps}):
        ks = sorted(k for k in gaps if k[0] == L)
        Ms = np.array([k[1] for k in ks])
        g = [np.mean([r[2] for r in gaps[k]]) for k in ks]
        sp = [np.mean([r[1] for r in spreads[k]]) if spreads[k] else np.nan for k in ks]
        line = axes[0].loglog(Ms, g, "o-", label=f"L = {L}")[0]
        axes[1].loglog(Ms, sp, "o-", color=line.get_color(), label=f"L = {L}")
        axes[2].loglog(L * Ms, g, "o", color=line.get_color(), label=f"L = {L}")
    LM = np.array(sorted({k[0] * k[1] for k in gaps}), float)
    axes[2].loglog(LM, 0.098 / np.sqrt(LM), "k-", label="0.098 / sqrt(L M) (fit)")
    axes[2].loglog(LM, 0.098 / np.sqrt(LM) * np.sqrt(32), "k:", label="same x sqrt(32): a 1/sqrt(M) law at L = 32")
    axes[2].set(xlabel="heads in the network L M", ylabel="||mu - mu_ref||_k",
                title="gap to the reference against L M")
    axes[2].legend(fontsize="x-small")
    for ax, what in zip(axes[:2], ("gap to the reference at t = T", "seed-to-seed spread at t = T")):
        Ms = np.array(sorted({k[1] for k in gaps}), float)
        ax.loglog(Ms, 0.05 / np.sqrt(Ms), "k:", label="M^-1/2")
        ax.set(xlabel="heads per layer M", ylabel="||mu - mu'||_k", title=what)
        ax.legend(fontsize="x-small")
    fig.suptitle("trained finite transformers against the mean-field flow (1-D, particles)")
    fig.savefig(out / "meanfield.png", dpi=110)


def _rate_fits(errs: dict, what: str, per_seed: dict | None) -> None:
    """Least-squares fits of the mean error over seeds against the published rates and a free power law."""
    keys = sorted(errs)
    Ls = np.array([k[0] for k in keys], float)
    Ms = np.array([k[1] for k in keys], float)
    e = np.array([np.mean(errs[k]) for k in keys])
    print(f"\nfits of the {what} (mean over seeds), least squares in log error:")
    models = {
        "a/L + b/sqrt(L M)   (Chizat 2025)": np.stack([1 / Ls, 1 / np.sqrt(Ls * Ms)], 1),
        "a/L + b L^-1/3 M^-1/2 (Gibson-Reisinger)": np.stack([1 / Ls, Ls ** (-1 / 3) / np.sqrt(Ms)], 1),
        "a/L + b/sqrt(M)": np.stack([1 / Ls, 1 / np.sqrt(Ms)], 1),
    }
    asym = (Ms >= 4) & (Ls >= 2)
    for name, A in models.items():
        for sel, label in ((Ms >= 1, "all"), (asym, "M>=4,L>=2")):
            coef = _nnls_log(A[sel], e[sel])
            rms = np.sqrt(np.mean(np.log(A[sel] @ coef / e[sel]) ** 2))
            print(f"  {name:44s} [{label:9s}] a = {coef[0]:.3e}, b = {coef[1]:.3e}: rms log residual {rms:.3f}")
    for sel, label in ((Ms >= 1, ""), (Ms >= 4, " (M >= 4)"), ((Ms >= 4) & (Ls >= 2), " (M >= 4, L >= 2)")):
        X = np.stack([np.ones(sel.sum()), -np.log(Ls[sel]), -np.log(Ms[sel])], 1)
        sol, *_ = np.linalg.lstsq(X, np.log(e[sel]), rcond=None)
        r = np.log(e[sel]) - X @ sol
        cov = np.linalg.inv(X.T @ X) * (r @ r) / max(sel.sum() - 3, 1)
        print(f"  free power law c L^-p M^-q{label}: p = {sol[1]:.2f} +- {np.sqrt(cov[1, 1]):.2f}, "
              f"q = {sol[2]:.2f} +- {np.sqrt(cov[2, 2]):.2f} ({sel.sum()} cells)")
    for L in sorted(set(Ls.astype(int))):
        ks = [k for k in keys if k[0] == L]
        if len(ks) >= 3:
            slope = -fs.fitted_slope([k[1] for k in ks], [np.mean(errs[k]) for k in ks])
            line = f"  L = {L:2d}: exponent in M {slope:.2f}"
            if per_seed is not None:  # each seed index is an independent draw at every M
                seeds = sorted({r[0] for k in ks for r in per_seed[k]})
                sl = []
                for s in seeds:
                    pts = [(k[1], r[2]) for k in ks for r in per_seed[k] if r[0] == s]
                    if len(pts) >= 3:
                        sl.append(-fs.fitted_slope(*zip(*pts)))
                if len(sl) > 1:
                    line += f"; per seed {np.mean(sl):.2f} +- {np.std(sl, ddof=1):.2f} ({len(sl)} seeds)"
            print(line)
    for M in sorted(set(Ms.astype(int))):
        ks = [k for k in keys if k[1] == M]
        if len(ks) >= 3:
            print(f"  M = {M:3d}: exponent in L {-fs.fitted_slope([k[0] for k in ks], [np.mean(errs[k]) for k in ks]):.2f}")


def _nnls_log(A: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Non-negative coefficients minimising the squared log residual (relative errors), by scipy."""
    from scipy.optimize import least_squares, nnls

    w = 1 / e
    x0 = nnls(A * w[:, None], np.ones_like(e))[0] + 1e-12
    res = least_squares(lambda c: np.log(A @ np.abs(c) / e), x0)
    return np.abs(res.x)


# ------------------------------------------------------------------ NTK


def ntk(out: Path, args) -> None:
    folder = out / "ntk"
    folder.mkdir(parents=True, exist_ok=True)
    for name, make in (("injective", fs.injective_case), ("with_gaussian", fs.family_case)):
        path = folder / f"{name}_{args.method}.h5"
        if path.exists():
            continue
        case = make(args.method, 2, 2, 13, tokens=args.tokens) if name == "injective" else \
            fs.family_case(1, args.method, 2, 2, 13, tokens=args.tokens)
        pts = fs.ntk_along(case, lr=1e3, steps=30)
        data = {"step": np.array([p.step for p in pts]), "flow_time": np.array([p.flow_time for p in pts]),
                "risk": np.array([p.risk for p in pts]), "rel_min": np.stack([p.rel_min for p in pts]),
                "rank": np.stack([p.rank for p in pts]), "rel_min_a": np.stack([p.rel_min_a for p in pts])}
        _write(path, data, {"full": pts[0].full, "prompts": len(case.prompts), "method": args.method,
                            "lr": 1e3, "scheme": "implicit"})
    ntk_table(out)
    _ntk_figure(out)


def ntk_table(out: Path) -> None:
    for path in sorted((out / "ntk").glob("*.h5")):
        with h5py.File(path) as f:
            d = {k: f[k][()] for k in f}
            full, P = int(f.attrs["full"]), int(f.attrs["prompts"])
        print(f"\nNTK along training, {path.stem}: {P} prompts, student 2 x 2 (seed 13), implicit steps lr = 1e3; "
              f"tangent map sigma_min / sigma_max and rank (of {full}) on the measures entering each layer")
        L = d["rel_min"].shape[1]
        head = " ".join(f"{'layer ' + str(layer) + ' rel_min':>16} {'rank':>4}" for layer in range(L))
        print(f"{'step':>4} {'t':>8} {'R/R0':>9} {head} {'(a) pooled l=1':>15}")
        r0 = d["risk"][0]
        for i in range(len(d["step"])):
            cells = " ".join(f"{d['rel_min'][i, layer]:16.2e} {int(d['rank'][i, layer]):4d}" for layer in range(L))
            print(f"{int(d['step'][i]):4d} {d['flow_time'][i]:8.0f} {d['risk'][i] / r0:9.2e} {cells} "
                  f"{d['rel_min_a'][i, -1]:15.2e}")


def _ntk_figure(out: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    for path in sorted((out / "ntk").glob("*.h5")):
        with h5py.File(path) as f:
            risk, rel = f["risk"][()], f["rel_min"][()]
        for layer in range(rel.shape[1]):
            ax.loglog(risk / risk[0], np.maximum(rel[:, layer], 1e-18), "o-", ms=3,
                      label=f"{path.stem}, layer {layer}")
    ax.invert_xaxis()
    ax.set(xlabel="R / R0 (training goes right)", ylabel="tangent sigma_min / sigma_max",
           title="NTK along training (1-D family, particles)")
    ax.legend(fontsize="x-small")
    fig.savefig(out / "ntk.png", dpi=110)


# ------------------------------------------------------------------ main


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("study", choices=["energy", "minima", "meanfield", "ntk", "tables"])
    ap.add_argument("--method", default="particles", choices=["particles", "grid"])
    ap.add_argument("--dim", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--widths", default=None)
    ap.add_argument("--layers", default="1,2,4,8,16,32")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--time-limit", type=float, default=60.0, help="seconds of training per run")
    ap.add_argument("--steps", type=int, default=20, help="implicit steps per run (minima)")
    ap.add_argument("--hessian-max", type=int, default=200, help="classify stalls with at most this many entries")
    ap.add_argument("--extend", type=float, default=0.0,
                    help="minima: train runs that stopped on --time-limit on, to this many seconds more in all")
    ap.add_argument("--ref-layers", type=int, default=64)
    ap.add_argument("--ref-width", type=int, default=128)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.study == "energy":
        energy(args.out, args)
    elif args.study == "minima":
        args.widths = args.widths or "1,2,4,8,16,32,64"
        args.seeds = args.seeds or 16
        minima(args.out, args)
    elif args.study == "meanfield":
        args.widths = args.widths or "1,4,16,64"
        args.seeds = args.seeds or 6
        meanfield(args.out, args)
    elif args.study == "ntk":
        ntk(args.out, args)
    else:
        if (args.out / "energy").exists():
            energy_table(args.out)
        if (args.out / "minima").exists():
            minima_table(args.out)
        if (args.out / "meanfield").exists():
            meanfield_table(args.out, args.ref_layers, args.ref_width)
        if (args.out / "ntk").exists():
            ntk_table(args.out)


if __name__ == "__main__":
    main()
