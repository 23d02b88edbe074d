"""The validation suite behind ``gridpde validate``.

Each study solves a problem with a known exact solution on several
refinements and turns the measurements into checks: a measured value, the
required value, pass or fail. ``--quick`` runs a subset cheap enough for the
test suite; the full suite adds finer levels, 3-D and the accuracy targets.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from gridpde.heads import conditional_wasserstein
from gridpde.prompts import GaussianPrompt
from gridpde.validation import gradient_studies as gs
from gridpde.validation import ntk_families as nf
from gridpde.validation import particle_studies as ps
from gridpde.validation import query_studies as qs
from gridpde.validation import training_studies as ts
from gridpde.validation.problems import Level, fitted_order, gaussian_problem, run_level

#: the MUSCL limiter of the studies: van Leer's smooth limiter clips extrema
#: least, so moment errors converge cleanly (MC's change sign between levels)
LIMITER = "vanleer"
MASS_BALANCE = 1e-13
MIN_DENSITY = -1e-14


@dataclass
class Check:
    """One line of the validation table."""

    name: str
    measured: float
    required: str
    passed: bool
    detail: str = ""


def _order_checks(name: str, levels: list[Level], order: float) -> Iterator[Check]:
    h = [lv.h for lv in levels]
    ns = ",".join(str(lv.n) for lv in levels)
    for key, label in (("l1", "L1 density"), ("mean_err", "mean"), ("cov_err", "cov")):
        err = [getattr(lv, key) for lv in levels]
        p = fitted_order(h, err)
        detail = f"n = {ns}; errors " + ", ".join(f"{e:.2e}" for e in err)
        yield Check(f"{name}: {label} order", p, f">= {order}", p >= order, detail)
    bal = max(lv.mass_balance for lv in levels)
    yield Check(f"{name}: mass balance", bal, f"<= {MASS_BALANCE:g}", bal <= MASS_BALANCE,
                "|mass + mass_out - mass(0)| / mass(0), worst level")
    low = min(lv.min_ratio for lv in levels)
    yield Check(f"{name}: min density / max", low, f">= {MIN_DENSITY:g}", low >= MIN_DENSITY)


def gaussian_order(dim: int, scheme: str, cells: list[int], order: float) -> Callable[[], Iterator[Check]]:
    """Convergence of the grid solver to the exact Gaussian solution at s = 1."""
    limiter = "upwind" if scheme == "upwind" else LIMITER

    def study() -> Iterator[Check]:
        problem = gaussian_problem(dim)
        levels = [run_level(problem, n, limiter) for n in cells]
        yield from _order_checks(f"gaussian-{dim}d-{scheme}", levels, order)

    return study


def gaussian_moments_2d(n: int, tol: float) -> Callable[[], Iterator[Check]]:
    """Mean and covariance at s = 1 on the finest 2-D level against the ODE."""

    def study() -> Iterator[Check]:
        lv = run_level(gaussian_problem(2), n, LIMITER)
        yield Check(f"gaussian-2d-muscl: mean error at n = {n}", lv.mean_err, f"<= {tol:g}",
                    lv.mean_err <= tol, "max over components, against the moment ODE")
        yield Check(f"gaussian-2d-muscl: cov error at n = {n}", lv.cov_err, f"<= {tol:g}",
                    lv.cov_err <= tol, "max over entries (Sheppard-corrected)")

    return study


def _within(name, rate, target, tol, what, label):
    ok = abs(rate.slope - target) <= tol
    detail = rate.describe(label) + (f"; per-seed spread {rate.spread:.2f}" if rate.spread else "")
    return Check(name, rate.slope, f"{target:g} +- {tol:g}", ok, f"{what}; {detail}")


def particle_sampling(ns, seeds) -> Callable[[], Iterator[Check]]:
    def study():
        r = ps.sampling_rate(ns, seeds)
        yield _within("particles-sampling: moment error slope", r, -0.5, 0.2,
                      f"RMS over {seeds} seeds vs n, 2-D Gaussian, rk4", "n")

    return study


def particle_quadrature(ns) -> Callable[[], Iterator[Check]]:
    def study():
        r = ps.quadrature_errors(ns)
        yield Check("particles-quadrature: moment error", r.errors[-1], "<= 1e-8",
                    r.errors[-1] <= 1e-8, r.describe("n") + "; spectral, until the RK4 floor")

    return study


def grid_particles(dim, levels, rate_min, finest_tol=None) -> Callable[[], Iterator[Check]]:
    def study():
        r = ps.grid_vs_particles(dim, levels)
        what = "W1" if dim == 1 else "max |mean|,|cov| difference"
        yield Check(f"grid-vs-particles-{dim}d: {what} rate", -r.slope, f">= {rate_min}",
                    -r.slope >= rate_min, r.describe("cells and tokens per axis") + "; mixture prompt")
        if finest_tol is not None:
            yield Check(f"grid-vs-particles-{dim}d: finest difference", r.errors[-1],
                        f"<= {finest_tol:g}", r.errors[-1] <= finest_tol, f"at n = {levels[-1]}")

    return study


def depth_gap() -> Iterator[Check]:
    r = ps.depth_gap()
    yield _within("depth-gap: Euler transformer order in 1/L", r, 1.0, 0.15,
                  "RMS token distance to the depth limit (RK4, L = 2048)", "L")


def width_gap(seeds=8) -> Callable[[], Iterator[Check]]:
    def study():
        r = ps.width_gap(Ms=(1, 4, 16, 64, 256), seeds=seeds)
        yield _within("width-gap: exponent of M", r, 0.5, 0.15,
                      f"RMS over {seeds} seeds of the token distance to M = 4096 heads", "M")

    return study


def gradient_order(dim, method, levels, scheme, order=None, finest=None) -> Callable[[], Iterator[Check]]:
    """Adjoint gradient against the exact Gaussian gradient (moment ODE + closed-form MMD)."""

    def study():
        lv, errs, p = gs.gradient_error(dim, method, levels, scheme)
        detail = f"n = {', '.join(map(str, lv))}; relative errors " + ", ".join(f"{e:.2e}" for e in errs)
        name = f"gradient-{dim}d-{method}" + (f"-{scheme}" if method == "grid" else "")
        if order is not None:
            yield Check(f"{name}: order", p, f">= {order}", p >= order, detail)
        if finest is not None:
            yield Check(f"{name}: finest error", errs[-1], f"<= {finest:g}", errs[-1] <= finest, detail)

    return study


def gradient_grid_particles(dim, levels, order) -> Callable[[], Iterator[Check]]:
    def study():
        lv, diffs, p = gs.grid_vs_particle_gradient(dim, levels)
        detail = f"n = {', '.join(map(str, lv))}; relative differences " + ", ".join(f"{e:.2e}" for e in diffs)
        yield Check(f"gradient-grid-vs-particles-{dim}d: rate", p, f">= {order}", p >= order,
                    detail + "; MUSCL grid vs RK4 quadrature tokens, mixture prompt")

    return study


#: what the definitional tangent map must give on each family (docs/model.md 6): V is
#: free, so injectivity is linear independence of the fields B -> m_mu(Bx)
#: over the tokens of all prompts. A Gaussian's m is affine in B x (fails); a
#: prompt symmetric about 0 has m(-z) = -m(z), so even fields are in the kernel
#: (the centred box fails); a duplicated prompt or two Gaussians with one
#: covariance repeat fields; a Dirac away from 0 still has V y != 0 (holds).
DEFINITION = {
    "tokens": "holds", "uniform": "holds", "mixture": "holds", "gaussian": "fails",
    "tokens_origin": "holds", "dirac": "holds", "dirac_origin": "fails", "uniform_centred": "fails",
    "two_gaussians": "fails", "translated_pair": "holds", "convolution_triple": "holds", "duplicate": "fails",
}
NAMED = ("tokens", "uniform", "mixture", "gaussian")  # the families the paper names, and its counter-example


def ntk_families(levels=2) -> Iterator[Check]:
    """The tangent map's verdict on each family, and which readings agree with it."""
    rows = nf.validation_rows(dims=(1, 2), levels=levels)
    verdicts = nf.verdicts(rows)
    for (fam, dim), v in sorted(verdicts.items()):
        if fam not in DEFINITION:
            continue
        ok = v["tangent"] == DEFINITION[fam]
        worst = min(r.rel_min for r in rows if r.family == fam and r.dim == dim and r.diagnostic == "tangent")
        detail = "; ".join(f"{k} {val}" for k, val in v.items() if k != "tangent")
        yield Check(f"ntk-{dim}d {fam}: tangent map {v['tangent']}", worst, DEFINITION[fam], ok,
                    f"smallest sigma/sigma_max over {levels} levels; readings: {detail}")
    agree = [verdicts[(f, d)]["lse_a_pooled"] == verdicts[(f, d)]["tangent"] for f in NAMED for d in (1, 2)]
    yield Check("ntk: reading (a) pooled agrees on the named families", float(sum(agree)),
                f"== {len(agree)}", all(agree), "tokens, uniform, mixture, gaussian in 1-D and 2-D")
    for reading in ("lse_a", "lse_a_const", "lse_b"):
        bad = sorted(f"{f}-{d}d" for (f, d), v in verdicts.items() if v[reading] != v["tangent"])
        print(f"  (info) reading {reading} disagrees with the tangent map on: {', '.join(bad) or 'none'}")


def training_convergence(dim, variant, method, ratio_max=None, **train) -> Callable[[], Iterator[Check]]:
    def study():
        r = ts.teacher_student(dim, variant, method, **train)
        name = f"train-{dim}d-{variant}-{method}"
        detail = (f"{r.steps} steps, {r.evaluations} evaluations in {r.seconds:.0f} s; "
                  f"risk {r.risk0:.2e} -> {r.risk:.2e}; "
                  f"W_c from start {r.w_c_initial:.3g}, to teacher {r.w_c_teacher:.3g}; stop: {r.message}")
        yield Check(f"{name}: monotone", float(r.monotone), "== 1", r.monotone, detail)
        if ratio_max is not None:
            yield Check(f"{name}: risk / initial", r.ratio, f"<= {ratio_max:g}", r.ratio <= ratio_max, detail)
        else:
            yield Check(f"{name}: risk / initial (measured)", r.ratio, "< 1", r.ratio < 1, detail)

    return study


def energy_identity(method: str, local: bool) -> Callable[[], Iterator[Check]]:
    """dR/dt = -L M |dR/dtheta|^2 (docs/model.md section 5) along explicit Euler steps of the flow
    (1-D teacher-student family, L = 2, M = 4, to flow time 2): the Euler form's relative residual
    falls at order 1 in the step, the trapezoid form's (the mean of the gradients at both ends of a
    step) at order 2. ``local``: also the worst single step (the grid's discrete risk has kinks, upwind
    faces where u changes sign, so only the summed forms are required there)."""
    from gridpde.objective.problem import Problem
    from gridpde.validation import finite_studies as fs

    def study():
        case = fs.family_case(1, method, 2, 4, 13, tokens=64)
        rows = fs.energy_identity(Problem(case), case.heads, 2.0, (0.125, 0.0625, 0.03125))
        dts = [r.dt for r in rows]
        forms = [("euler_sum_rel", 1.0), ("trapezoid_sum_rel", 2.0)]
        if local:
            forms += [("euler_rel", 1.0), ("trapezoid_rel", 2.0)]
        for key, order in forms:
            errs = [getattr(r, key) for r in rows]
            p = fs.fitted_slope(dts, errs)
            yield Check(f"energy-identity-1d-{method}: {key} order", p, f"in [{order - 0.1:g}, {order + 0.1:g}]",
                        abs(p - order) <= 0.1, "dt = 0.125, 0.0625, 0.03125; residuals "
                        + ", ".join(f"{e:.2e}" for e in errs))

    return study


def training_flow_time(dim, method, lrs, explicit_lr, tol=0.05) -> Callable[[], Iterator[Check]]:
    """Case (a) with time steps small next to the flow time: the flow itself reaches 1e-6 of the initial risk.

    Implicit steps at ``lrs`` and explicit steps at ``explicit_lr`` all follow the flow's slow modes,
    so the flow time at which the risk falls to 1e-6 of its start must not depend on the scheme or lr,
    nor the heads the implicit runs end at on lr. (Where they end relative to the explicit run is
    measured, not required: lr * lambda_max >> 1, so implicit steps skip the fast modes' transient,
    which moves the heads along the flat directions of the minimiser set.)
    """
    runs = [("implicit", lr) for lr in lrs] + [("explicit", explicit_lr)]

    def study():
        done = [ts.teacher_student(dim, "near", method, 1e-6, scheme=scheme, lr=lr, steps=10**6, time_limit=3600)
                for scheme, lr in runs]  # a run that has not got there in an hour fails (t = inf)
        times = np.array([r.flow_time for r in done])
        name = f"train-{dim}d-near-{method}-flow"
        detail = "; ".join(f"{scheme} lr {lr:g}: {r.steps} steps, risk ratio {r.ratio:.3g}, t = {r.flow_time:.4g}, "
                           f"{r.evaluations} evaluations in {r.seconds:.0f} s"
                           for (scheme, lr), r in zip(runs, done, strict=True))
        spread = float(np.ptp(times) / times.min())
        yield Check(f"{name}: t(1e-6) spread", spread, f"<= {tol:g}", spread <= tol, detail)
        travelled = done[-1].w_c_initial
        implicit = [r.heads for r in done[:-1]]
        apart = max(conditional_wasserstein(h, implicit[0]) for h in implicit) / travelled
        explicit = max(conditional_wasserstein(h, done[-1].heads) for h in implicit) / travelled
        yield Check(f"{name}: implicit ends apart", apart, f"<= {tol:g}", apart <= tol,
                    f"W_c travelled {travelled:.3g}, to the teacher {done[-1].w_c_teacher:.3g}; "
                    f"implicit ends from the explicit end: {explicit:.3g} of W_c travelled (measured)")

    return study


def table_accuracy(dim: int, n: int, tol: float, scale: float = 0.7) -> Callable[[], Iterator[Check]]:
    """The attention table against exact sums: face velocities within ``tol`` on the validation
    families (a Gaussian and two separated bumps, 8 random heads of entry scale ``scale``: the table
    must serve them; in 3-D the bumps take a tree of panels), the bumps under 4x stronger tilts (where
    the panels must adapt: the table, or a fallback to exact sums that the run states), and the Gaussian
    problem's errors at s = 1 unchanged."""
    from gridpde.grid.forward import GridForward
    from gridpde.heads import Heads
    from gridpde.prompts import MixturePrompt

    def study() -> Iterator[Check]:
        problem = gaussian_problem(dim)
        grid = problem.grid(n)
        c = np.full(dim, 1.6)
        bumps = MixturePrompt([0.5, 0.5], [-c, c], [0.15 * np.eye(dim)] * 2).cell_averages(grid)
        gauss = GaussianPrompt(problem.mean, problem.cov).cell_averages(grid)
        heads = Heads.random(1, 8, dim, dim, scale, 3)
        strong = Heads(4.0 * heads.Q, heads.K, heads.V)
        for label, rho, h, must in (("gaussian", gauss, heads, True), ("two bumps", bumps, heads, True),
                                    ("two bumps, strong tilt", bumps, strong, False)):
            exact, _ = GridForward(grid, h.B, h.V, attention="exact").face_velocity(rho, 0)
            solver = GridForward(grid, h.B, h.V, attention="table", attention_tol=tol)
            table, tab = solver.face_velocity(rho, 0)
            err = max(np.abs(a - b).max() for a, b in zip(exact, table)) / max(np.abs(a).max() for a in exact)
            kind = "tree of panels" if solver.stats.trees else "table"
            how = kind if tab is not None else f"exact fallback ({solver.stats.fallback_reason})"
            ok = err <= tol and (tab is not None or not must)
            yield Check(f"table-{dim}d: velocity error, {label}", err,
                        f"<= {tol:g}" + (", table" if must else ""), ok,
                        f"n = {n}, 8 heads, {how}, estimate {solver.stats.max_error:.2e}")
        ref = run_level(problem, n, LIMITER)
        lv = run_level(problem, n, LIMITER, attention="table", attention_tol=tol)
        for key in ("l1", "mean_err", "cov_err"):
            a, b = getattr(lv, key), getattr(ref, key)
            change = abs(a - b) / b
            yield Check(f"table-{dim}d: change of the {key} error", change, "<= 1e-3", change <= 1e-3,
                        f"exact sums {b:.4e}, table {a:.4e} (the table's error sits below the scheme's)")

    return study


def token_table_accuracy(dim: int, n: int, tol: float, scale: float = 0.7) -> Callable[[], Iterator[Check]]:
    """The token table (particle method) against direct sums: the tokens' own velocities within ``tol``
    on sampled tokens of the validation families (Gaussian, two separated bumps; 8 random heads: the
    table must serve them), and the bumps under 4x stronger tilts (table or a stated fallback)."""
    from gridpde.attention.direct import direct_velocity
    from gridpde.attention.table import token_table_velocity
    from gridpde.heads import Heads
    from gridpde.heads import pad3
    from gridpde.prompts import MixturePrompt

    def study() -> Iterator[Check]:
        problem = gaussian_problem(dim)
        c = np.full(dim, 1.6)
        prompts = {"gaussian": GaussianPrompt(problem.mean, problem.cov),
                   "two bumps": MixturePrompt([0.5, 0.5], [-c, c], [0.15 * np.eye(dim)] * 2)}  # fmt: skip
        heads = Heads.random(1, 8, dim, dim, scale, 3)
        strong = Heads(4.0 * heads.Q, heads.K, heads.V)
        for label, prompt, h, must in (("gaussian", prompts["gaussian"], heads, True),
                                       ("two bumps", prompts["two bumps"], heads, True),
                                       ("two bumps, strong tilt", prompts["two bumps"], strong, False)):
            X, w = prompt.tokens(n, "sample", 5)
            P = np.zeros((len(w), 3))
            P[:, 3 - dim :] = X
            B, V = pad3(h.B)[0], pad3(h.V)[0]
            exact = np.empty_like(P)
            direct_velocity(P, P, w, B, V, exact, np.empty((B.shape[0], len(w))))
            out = np.empty_like(P)
            info = token_table_velocity(P, w, B, V, out, tol=tol)
            err = np.abs(out - exact).max() / np.abs(exact).max()
            how = "table" if info["table"] is not None else f"exact fallback ({info['reason']})"
            ok = err <= tol and (info["table"] is not None or not must)
            yield Check(f"table-tokens-{dim}d: velocity error, {label}", err,
                        f"<= {tol:g}" + (", table" if must else ""), ok,
                        f"{len(w)} tokens, 8 heads, {how}, estimate {info['error_estimate']:.2e}")

    return study


def query_paths(dim: int, cells, tokens, order: float, tol: float) -> Callable[[], Iterator[Check]]:
    """Query tokens against the Gaussian oracle: the grid at the scheme's order, tokens to ``tol``."""

    def study() -> Iterator[Check]:
        r = qs.query_convergence(gaussian_problem(dim), cells, tokens, LIMITER)
        detail = "n = " + ",".join(map(str, cells)) + "; errors " + ", ".join(f"{e:.2e}" for e in r["grid_error"])
        yield Check(f"queries-{dim}d: grid path order", r["grid_order"], f">= {order}", r["grid_order"] >= order,
                    detail)
        e = r["particle_error"][-1]
        yield Check(f"queries-{dim}d: particle path error", e, f"<= {tol:g}", e <= tol,
                    f"{tokens[-1]} quadrature tokens, RK4 x 16, max |X_q(1) - exact|")

    return study


def queries_mixture(cells, order: float) -> Callable[[], Iterator[Check]]:
    """Grid query paths against particle ones on a two-bump 1-D prompt (no closed form)."""

    def study() -> Iterator[Check]:
        r = qs.mixture_query_agreement(cells)
        detail = "n = " + ",".join(map(str, cells)) + "; |grid - particles| " + ", ".join(
            f"{e:.2e}" for e in r["error"])
        yield Check("queries-mixture-1d: grid vs particles order", r["order"], f">= {order}", r["order"] >= order,
                    detail)

    return study


def readout_oracle(dim: int, cells, order: float, tol: float) -> Callable[[], Iterator[Check]]:
    """The readout risk's gradient against the oracle's (central differences of the moment ODE)."""

    def study() -> Iterator[Check]:
        r = qs.readout_gradient_errors(gaussian_problem(dim), cells)
        detail = "n = " + ",".join(map(str, cells)) + "; errors " + ", ".join(f"{e:.2e}" for e in r["grid_error"])
        yield Check(f"readout-{dim}d: grid gradient order", r["grid_order"], f">= {order}",
                    r["grid_order"] >= order, detail + " (MUSCL, van Leer)")
        e = r["particle_error"]
        yield Check(f"readout-{dim}d: particle gradient error", e, f"<= {tol:g}", e <= tol,
                    "1024 quadrature tokens, relative to the gradient's largest entry")

    return study


def flowmap_risk(dim: int, cells, order: float) -> Callable[[], Iterator[Check]]:
    """The grid's flow-map risk through Gauss-point queries against the particle value."""

    def study() -> Iterator[Check]:
        r = qs.flowmap_convergence(gaussian_problem(dim), points=(1, 2, 4, 8), cells=cells)
        change = dict(zip(r["points"], r["quadrature_change"]))
        yield Check(f"flowmap-{dim}d: change from 4 to 8 points", change[4], "<= 1e-7", change[4] <= 1e-7,
                    "relative; points per axis " + ", ".join(f"{q}: {c:.1e}" for q, c in change.items()))
        detail = "n = " + ",".join(map(str, cells)) + "; " + ", ".join(f"{e:.2e}" for e in r["grid_vs_particles"])
        yield Check(f"flowmap-{dim}d: grid vs particles order", r["order"], f">= {order}", r["order"] >= order,
                    detail)

    return study


QUICK = {
    "gaussian-1d-upwind": gaussian_order(1, "upwind", [100, 200, 400], 0.9),
    "gaussian-1d-muscl": gaussian_order(1, "muscl", [100, 200, 400], 1.8),
    "gaussian-2d-upwind": gaussian_order(2, "upwind", [32, 48, 64], 0.9),
    "gaussian-2d-muscl": gaussian_order(2, "muscl", [32, 48, 64], 1.8),
    "particles-sampling": particle_sampling((256, 1024, 4096), 5),
    "particles-quadrature": particle_quadrature((64, 256, 1024)),
    "grid-vs-particles-1d": grid_particles(1, [100, 200, 400], 0.9),
    "depth-gap": depth_gap,
    "width-gap": width_gap(),
    "gradient-1d-grid-upwind": gradient_order(1, "grid", [100, 200, 400], "upwind", 0.9),
    "gradient-1d-grid-muscl": gradient_order(1, "grid", [100, 200, 400], "muscl", 1.8),
    "gradient-1d-particles": gradient_order(1, "particles", [16, 32, 64], "upwind", finest=1e-5),
    "ntk-families": ntk_families,
    "table-2d": table_accuracy(2, 48, 1e-8),
    "table-tokens-2d": token_table_accuracy(2, 4000, 1e-8),
    "queries-1d": query_paths(1, (32, 64, 128), (16, 256), 1.8, 1e-8),
    "queries-mixture-1d": queries_mixture((50, 100, 200, 400), 1.8),
    "readout-1d": readout_oracle(1, (50, 100, 200), 1.8, 1e-6),
    "flowmap-1d": flowmap_risk(1, (32, 64, 128), 1.8),
}

FULL = {
    "gaussian-1d-upwind": gaussian_order(1, "upwind", [100, 200, 400, 800], 0.9),
    "gaussian-1d-muscl": gaussian_order(1, "muscl", [100, 200, 400, 800], 1.8),
    "gaussian-2d-upwind": gaussian_order(2, "upwind", [32, 48, 64, 96], 0.9),
    "gaussian-2d-muscl": gaussian_order(2, "muscl", [48, 64, 96, 128], 1.8),
    "gaussian-2d-moments": gaussian_moments_2d(160, 1e-4),
    "gaussian-3d-upwind": gaussian_order(3, "upwind", [16, 24, 32], 0.9),
    "gaussian-3d-muscl": gaussian_order(3, "muscl", [16, 24, 32], 1.8),
    "particles-sampling": particle_sampling((256, 1024, 4096, 16384), 8),
    "particles-quadrature": particle_quadrature((64, 256, 1024, 4096)),
    "grid-vs-particles-1d": grid_particles(1, [100, 200, 400, 800], 0.9),
    "grid-vs-particles-2d": grid_particles(2, [32, 48, 64, 96, 128], 1.8, 1e-3),
    "depth-gap": depth_gap,
    "width-gap": width_gap(),
    "gradient-1d-grid-upwind": gradient_order(1, "grid", [100, 200, 400, 800], "upwind", 0.9),
    "gradient-1d-grid-muscl": gradient_order(1, "grid", [100, 200, 400, 800], "muscl", 1.8),
    "gradient-2d-grid-upwind": gradient_order(2, "grid", [24, 32, 48, 64], "upwind", 0.9),
    "gradient-2d-grid-muscl": gradient_order(2, "grid", [24, 32, 48, 64], "muscl", 1.8),
    "gradient-1d-particles": gradient_order(1, "particles", [16, 32, 64], "upwind", finest=1e-5),
    "gradient-2d-particles": gradient_order(2, "particles", [12, 16, 24], "upwind", finest=1e-5),
    "gradient-grid-vs-particles-1d": gradient_grid_particles(1, [100, 200, 400], 1.8),
    "ntk-families": ntk_families,
    "table-1d": table_accuracy(1, 400, 1e-10),
    "table-2d": table_accuracy(2, 96, 1e-9),
    "table-3d": table_accuracy(3, 24, 1e-6, scale=0.4),
    "table-tokens-1d": token_table_accuracy(1, 20000, 1e-10),
    "table-tokens-2d": token_table_accuracy(2, 20000, 1e-9),
    "table-tokens-3d": token_table_accuracy(3, 8000, 1e-6, scale=0.4),
    "queries-1d": query_paths(1, (32, 64, 128, 256), (16, 256), 1.8, 1e-8),
    "queries-mixture-1d": queries_mixture((50, 100, 200, 400, 800), 1.8),
    "queries-2d": query_paths(2, (16, 32, 64), (256, 1024), 1.8, 1e-8),
    "readout-1d": readout_oracle(1, (50, 100, 200, 400), 1.8, 1e-6),
    "readout-2d": readout_oracle(2, (16, 32, 64), 1.8, 1e-6),
    "flowmap-1d": flowmap_risk(1, (32, 64, 128, 256), 1.8),
    "flowmap-2d": flowmap_risk(2, (16, 32, 64), 1.8),
}


def run_suite(quick: bool = False, only: str | None = None, out=sys.stdout, slow: bool = False) -> bool:
    """Run the studies, print the table, and return whether every check passed."""
    studies = QUICK if quick else ({**FULL, **SLOW} if slow else FULL)
    chosen = {k: v for k, v in studies.items() if only is None or only in k}
    if not chosen:
        print(f"no study matches --only {only!r}; studies: {', '.join(studies)}", file=out)
        return False
    checks: list[Check] = []
    for name, study in chosen.items():
        t = time.perf_counter()
        print(f"[{name}] running...", file=out, flush=True)
        new = list(study())
        checks += new
        for c in new:
            print(_row(c), file=out, flush=True)
        print(f"[{name}] {time.perf_counter() - t:.1f} s", file=out, flush=True)
    failed = [c for c in checks if not c.passed]
    print(file=out)
    print(f"{'check':<46} {'measured':>11}  {'required':<12} result", file=out)
    for c in checks:
        print(_row(c), file=out)
    print(f"\n{len(checks) - len(failed)} passed, {len(failed)} failed", file=out)
    return not failed


def _row(c: Check) -> str:
    mark = "pass" if c.passed else "FAIL"
    line = f"{c.name:<46} {c.measured:>11.4g}  {c.required:<12} {mark}"
    return line + (f"   ({c.detail})" if c.detail else "")


def measured(checks: list[Check], name: str) -> float:
    """The measured value of the check called ``name`` (for tests)."""
    return next(c.measured for c in checks if c.name == name)



#: the convergence experiment (issue 5): tens of minutes on 2 cores
SLOW = {
    "train-1d-near-grid": training_convergence(1, "near", "grid", 1e-6),
    "train-1d-near-particles": training_convergence(1, "near", "particles", 1e-6),
    "train-2d-near-grid": training_convergence(2, "near", "grid", 1e-6),
    "train-2d-near-particles": training_convergence(2, "near", "particles", 1e-6),
    # the flow, resolved: implicit steps at two lr and explicit steps at their largest stable lr (~15 min)
    "train-1d-near-grid-flow": training_flow_time(1, "grid", (1e4, 1e3), 2.0),
    "train-1d-random-grid": training_convergence(1, "random", "grid"),
    "train-1d-random-particles": training_convergence(1, "random", "particles"),
    "train-2d-random-grid": training_convergence(2, "random", "grid"),
    "train-2d-random-particles": training_convergence(2, "random", "particles"),
    # the energy identity of the flow in its discrete forms (issue 17; seconds)
    "energy-identity-1d-particles": energy_identity("particles", local=True),
    "energy-identity-1d-grid": energy_identity("grid", local=False),
}
