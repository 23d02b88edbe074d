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
from gridpde.errors import CaseError, RunError
from gridpde.forward import GridForward, NumericalError
from gridpde.grid import Grid
from gridpde.heads import score_matrices
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
    grid = Grid((-1.0, -1.0), (1.0, 1.0), (4, 4))
    solver = GridForward(grid, np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 2, 2)))
    solver.rhs(np.ones(grid.shape), 0)
    report(f"kernels ready ({time.perf_counter() - t:.1f} s)")


def run_case(
    case: Case, out: str | Path, *, method: str | None = None, report: Report = _stderr
) -> Snapshots:
    """Run the forward pass of ``case`` and write the result file ``out``.

    Raises:
        CaseError: the case cannot be run as given (exit status 2).
        RunError: the run stopped early; the file holds what was computed.
        KeyboardInterrupt: after saving what was computed.
    """
    method = method or case.solver.method
    if method == "particles":
        msg = "solver.method = 'particles': the particle method is not available in this version"
        raise CaseError(msg)
    if case.grid is None:
        raise CaseError("[grid]: required for the grid method (lower, upper, cells)")
    warm_up(report)
    grid = Grid(case.grid.lower, case.grid.upper, case.grid.cells)
    m = case.model
    B = score_matrices(m.Q, m.K, m.scale_scores)
    sv = case.solver
    solver = GridForward(grid, B, m.V, sv.limiter if sv.scheme == "muscl" else "upwind",
                         sv.time, sv.cfl, sv.quadrature)
    depth = np.linspace(0.0, 1.0, case.output.snapshots)
    P = len(case.prompts)
    snaps = Snapshots.empty(depth, P, grid.dim, cells=grid.shape,
                            centres=tuple(grid.centres(a) for a in range(grid.dim)))
    heads = {"Q": m.Q, "K": m.K, "V": m.V, "B": B}
    attrs = {"scheme": sv.scheme, "limiter": sv.limiter, "time": sv.time, "cfl": sv.cfl,
             "quadrature": sv.quadrature, "mass_tol": sv.mass_tol, "scale_scores": m.scale_scores}

    def save() -> None:
        snaps.timings["run"] = progress.elapsed
        write_result(out, snaps, case_text=case.text, dim=grid.dim, method="grid",
                     heads=heads, attrs=attrs)

    def record(k: int, p: int, rho: np.ndarray, lost: float, steps: int) -> None:
        mass, mean, cov = grid.moments(rho)
        snaps.density[p, k] = rho
        snaps.mass[p, k], snaps.mass_out[p, k] = mass, lost
        snaps.mean[p, k], snaps.cov[p, k] = mean, cov
        snaps.steps[p, k] = steps

    def stop(status: str, message: str) -> None:
        snaps.status, snaps.message = status, message
        save()
        report(f"stopped: {message}; saved {snaps.done} of {len(depth)} snapshots to {out}")

    progress = Progress(report)
    states = []
    for p, prompt in enumerate(case.prompts):
        rho, outside = cell_averages(prompt, grid, f"prompts[{p}]")
        states.append([rho, outside, 0])
        record(0, p, rho, outside, 0)
    snaps.done = 1
    report(f"running {P} prompt(s) on {'x'.join(map(str, grid.cells))} cells, "
           f"{m.layers} layer(s) x {m.heads} head(s), {len(depth)} snapshots -> {out}")
    try:
        for p, st in enumerate(states):
            _check_mass(st[1], sv.mass_tol, p, 0.0)
        for k in range(1, len(depth)):
            for p, st in enumerate(states):
                label = f"prompt {p + 1}/{P}"
                st[0], lost, n = solver.solve(
                    st[0], depth[k - 1], depth[k], lambda s, n, lb=label: progress(lb, s, n))
                st[1] += lost
                st[2] += n
                record(k, p, *st)
            snaps.done = k + 1
            save()
            for p, st in enumerate(states):
                _check_mass(st[1], sv.mass_tol, p, depth[k])
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
