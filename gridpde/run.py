"""The run loop: a case in, a result file out.

It owns depth, stop reasons (finished, mass lost, NaN, Ctrl-C), progress
and timings; the numerics it calls never print. After every snapshot the
whole result file is rewritten atomically, so a run that stops for any
reason leaves a valid file holding every snapshot it reached.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from gridpde.case import Case
from gridpde.errors import CaseError, NumericalError, RunError
from gridpde.forward import GridForward
from gridpde.grid import Grid
from gridpde.heads import score_matrices
from gridpde.particles import ParticleForward, prompt_tokens, steps_per_layer, token_moments
from gridpde.prompts import cell_averages
from gridpde.results import write_result
from gridpde.snapshots import Snapshots

Report = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Progress:
    """Prints a progress line at most every ``every`` seconds."""

    def __init__(self, report: Report, every: float = 2.0):
        self.report = report
        self.every = every
        self.start = time.perf_counter()
        self.last = self.start
        self.steps = 0

    def __call__(self, label: str, s: float, steps: int = 1) -> None:
        self.steps += steps
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            self.report(f"  {label}  s = {s:.4f}  steps {self.steps}  {now - self.start:.1f} s")

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def warm_up(report: Report) -> None:
    """Compile (or load from numba's cache) the kernels, saying so."""
    t = time.perf_counter()
    report("compiling kernels (first use only; cached afterwards)...")
    zero = np.zeros((1, 1, 2, 2))
    grid = Grid((-1.0, -1.0), (1.0, 1.0), (4, 4))
    GridForward(grid, zero, zero).rhs(np.ones(grid.shape), 0)
    ParticleForward(zero, zero).velocity(np.zeros((2, 2)), np.full(2, 0.5), 0)
    report(f"kernels ready ({time.perf_counter() - t:.1f} s)")


class _GridMethod:
    """Densities on the case's grid; state = [rho, mass that left, steps]."""

    name = "grid"

    def __init__(self, case: Case, B: np.ndarray):
        if case.grid is None:
            raise CaseError("[grid]: required for the grid method (lower, upper, cells)")
        sv = case.solver
        self.grid = Grid(case.grid.lower, case.grid.upper, case.grid.cells)
        limiter = sv.limiter if sv.scheme == "muscl" else "upwind"
        self.solver = GridForward(self.grid, B, case.model.V, limiter, sv.time, sv.cfl, sv.quadrature)
        self.attrs = {"scheme": sv.scheme, "limiter": sv.limiter, "time": sv.time, "cfl": sv.cfl,
                      "quadrature": sv.quadrature, "mass_tol": sv.mass_tol}
        self.label = f"{'x'.join(map(str, self.grid.cells))} cells"

    def initial(self, prompts) -> list[list]:
        return [[*cell_averages(p, self.grid, f"prompts[{i}]"), 0] for i, p in enumerate(prompts)]

    def snapshots(self, depth: np.ndarray, states) -> Snapshots:
        g = self.grid
        return Snapshots.empty(depth, len(states), g.dim, cells=g.shape,
                               centres=tuple(g.centres(a) for a in range(g.dim)))

    def advance(self, st: list, s0: float, s1: float, on_step) -> None:
        st[0], lost, n = self.solver.solve(st[0], s0, s1, on_step)
        st[1] += lost
        st[2] += n

    def record(self, snaps: Snapshots, k: int, p: int, st: list) -> None:
        rho, lost, steps = st
        snaps.density[p, k] = rho
        snaps.mass_out[p, k] = lost
        snaps.mass[p, k], snaps.mean[p, k], snaps.cov[p, k] = self.grid.moments(rho)
        snaps.steps[p, k] = steps


class _ParticleMethod:
    """Weighted tokens; state = [X, w, step index]. Nothing leaves: mass_out = 0."""

    name = "particles"

    def __init__(self, case: Case, B: np.ndarray):
        sv = case.solver
        self.case = case
        self.substeps = steps_per_layer(sv.integrator, sv.substeps)
        self.solver = ParticleForward(B, case.model.V, sv.integrator, self.substeps)
        self.attrs = {"integrator": sv.integrator, "substeps": self.substeps, "init": sv.init,
                      "tokens_requested": sv.tokens, "seed": sv.seed}
        self.label = f"{sv.integrator} x {self.substeps} substeps"

    def initial(self, prompts) -> list[list]:
        sv = self.case.solver
        return [[*prompt_tokens(p, sv.tokens, sv.init, sv.seed + i), 0] for i, p in enumerate(prompts)]

    def snapshots(self, depth: np.ndarray, states) -> Snapshots:
        depth = np.array([self.solver.step_index(s) * self.solver.dt for s in depth])
        tokens = max(st[0].shape[0] for st in states)
        snaps = Snapshots.empty(depth, len(states), self.solver.dim, tokens=tokens)
        snaps.weights[:] = 0.0
        for p, (X, w, _) in enumerate(states):
            snaps.weights[p, : len(w)] = w
        return snaps

    def advance(self, st: list, s0: float, s1: float, on_step) -> None:
        k1 = self.solver.step_index(s1)
        st[0] = self.solver.solve(st[0], st[1], st[2], k1, on_step)
        st[2] = k1

    def record(self, snaps: Snapshots, k: int, p: int, st: list) -> None:
        X, w, steps = st
        snaps.positions[p, k, : len(w)] = X
        snaps.mass_out[p, k] = 0.0
        snaps.mass[p, k], snaps.mean[p, k], snaps.cov[p, k] = token_moments(X, w)
        snaps.steps[p, k] = steps


def run_case(
    case: Case, out: str | Path, *, method: str | None = None, report: Report = _stderr
) -> Snapshots:
    """Run the forward pass of ``case`` and write the result file ``out``.

    Raises:
        CaseError: the case cannot be run as given (exit status 2).
        RunError: the run stopped early; the file holds what was computed.
        KeyboardInterrupt: after saving what was computed.
    """
    m, sv = case.model, case.solver
    B = score_matrices(m.Q, m.K, m.scale_scores)
    name = method or sv.method
    runner = _GridMethod(case, B) if name == "grid" else _ParticleMethod(case, B)
    warm_up(report)
    states = runner.initial(case.prompts)
    snaps = runner.snapshots(np.linspace(0.0, 1.0, case.output.snapshots), states)
    depth = snaps.depth
    P = len(states)
    heads = {"Q": m.Q, "K": m.K, "V": m.V, "B": B}
    attrs = {**runner.attrs, "scale_scores": m.scale_scores}
    progress = Progress(report)

    def save() -> None:
        snaps.timings["run"] = progress.elapsed
        write_result(out, snaps, case_text=case.text, dim=case.dim, method=runner.name,
                     heads=heads, attrs=attrs)

    def stop(status: str, message: str) -> None:
        snaps.status, snaps.message = status, message
        save()
        report(f"stopped: {message}; saved {snaps.done} of {len(depth)} snapshots to {out}")

    for p, st in enumerate(states):
        runner.record(snaps, 0, p, st)
    snaps.done = 1
    report(f"running {P} prompt(s), {runner.name} method ({runner.label}), {m.layers} layer(s) "
           f"x {m.heads} head(s), {len(depth)} snapshots -> {out}")
    try:
        for p in range(P):
            _check_mass(snaps.mass_out[p, 0], sv.mass_tol, p, 0.0)
        for k in range(1, len(depth)):
            for p, st in enumerate(states):
                label = f"prompt {p + 1}/{P}"
                runner.advance(st, depth[k - 1], depth[k], lambda s, n, lb=label: progress(lb, s, n))
                runner.record(snaps, k, p, st)
            snaps.done = k + 1
            save()
            for p in range(P):
                _check_mass(snaps.mass_out[p, k], sv.mass_tol, p, depth[k])
    except _MassLost as exc:
        stop("mass_lost", str(exc))
        raise RunError(str(exc)) from None
    except NumericalError as exc:
        stop("nan", str(exc))
        raise RunError(str(exc)) from None
    except KeyboardInterrupt:
        stop("interrupted", "interrupted by the user (Ctrl-C)")
        raise
    snaps.status, snaps.message = "finished", f"finished in {progress.elapsed:.1f} s"
    save()
    report(f"finished: {progress.steps} steps in {progress.elapsed:.1f} s; wrote {out}")
    return snaps


class _MassLost(Exception):
    pass


def _check_mass(lost: float, tol: float, p: int, s: float) -> None:
    if lost > tol:
        msg = (f"prompt {p}: mass that left the box {lost:.3g} exceeds solver.mass_tol = {tol:g} "
               f"at depth s = {s:.4g}; enlarge [grid] lower/upper")
        raise _MassLost(msg)
