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

from gridpde.casefile import Case
from gridpde.errors import CaseError, NumericalError, RunError
from gridpde.grid.forward import GridForward
from gridpde.grid.mesh import Grid
from gridpde.heads import score_matrices
from gridpde.particles.solver import ParticleForward, prompt_tokens, steps_per_layer, token_moments
from gridpde.prompts import cell_averages
from gridpde.io.checkpoint import load_checkpoint, train_datasets
from gridpde.io.results import HEAD_DIMS, write_result
from gridpde.objective.problem import Problem
from gridpde.train.flow import TrainRecord, TrainState, grad_norm, train
from gridpde.io.snapshots import Snapshots

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


def warm_up(report: Report, method: str) -> None:
    """Compile (or load from numba's cache) the method's kernels, saying so."""
    t = time.perf_counter()
    report("compiling kernels (first use only; cached afterwards)...")
    zero = np.zeros((1, 1, 2, 2))
    # sizes above _numba.SERIAL_BELOW, so the parallel builds a run uses are the ones compiled
    if method == "grid":
        grid = Grid((-1.0, -1.0), (1.0, 1.0), (48, 48))
        GridForward(grid, zero, zero).rhs(np.ones(grid.shape), 0)
    else:
        n = 800
        ParticleForward(zero, zero).velocity(np.zeros((n, 2)), np.full(n, 1.0 / n), 0)
    report(f"kernels ready ({time.perf_counter() - t:.1f} s)")


class GridMethod:
    """Densities on the case's grid; state = [rho, mass that left, steps]."""

    name = "grid"

    def __init__(self, case: Case):
        if case.grid is None:
            raise CaseError("[grid]: required for the grid method (lower, upper, cells)")
        sv = case.solver
        self.case = case
        self.grid = Grid(case.grid.lower, case.grid.upper, case.grid.cells)
        self.limiter = sv.limiter if sv.scheme == "muscl" else "upwind"
        self.attrs = {"scheme": sv.scheme, "limiter": sv.limiter, "time": sv.time, "cfl": sv.cfl,
                      "quadrature": sv.quadrature, "mass_tol": sv.mass_tol}
        self.label = f"{'x'.join(map(str, self.grid.cells))} cells"

    def use_heads(self, B: np.ndarray, V: np.ndarray) -> None:
        sv = self.case.solver
        self.solver = GridForward(self.grid, B, V, self.limiter, sv.time, sv.cfl, sv.quadrature)

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


class ParticleMethod:
    """Weighted tokens; state = [X, w, step index]. Nothing leaves: mass_out = 0."""

    name = "particles"

    def __init__(self, case: Case):
        sv = case.solver
        self.case = case
        self.substeps = steps_per_layer(sv.integrator, sv.substeps)
        self.steps_per_depth = case.model.layers * self.substeps
        self.attrs = {"integrator": sv.integrator, "substeps": self.substeps, "init": sv.init,
                      "tokens_requested": sv.tokens, "seed": sv.seed}
        self.label = f"{sv.integrator} x {self.substeps} substeps"

    def use_heads(self, B: np.ndarray, V: np.ndarray) -> None:
        self.solver = ParticleForward(B, V, self.case.solver.integrator, self.substeps)

    def initial(self, prompts) -> list[list]:
        sv = self.case.solver
        return [[*prompt_tokens(p, sv.tokens, sv.init, sv.seed + i), 0] for i, p in enumerate(prompts)]

    def _index(self, s: float) -> int:
        return int(round(s * self.steps_per_depth))

    def snapshots(self, depth: np.ndarray, states) -> Snapshots:
        depth = np.array([self._index(s) / self.steps_per_depth for s in depth])
        tokens = max(st[0].shape[0] for st in states)
        snaps = Snapshots.empty(depth, len(states), self.case.dim, tokens=tokens)
        snaps.weights[:] = 0.0
        for p, (X, w, _) in enumerate(states):
            snaps.weights[p, : len(w)] = w
        return snaps

    def advance(self, st: list, s0: float, s1: float, on_step) -> None:
        k1 = self._index(s1)
        st[0] = self.solver.solve(st[0], st[1], st[2], k1, on_step)
        st[2] = k1

    def record(self, snaps: Snapshots, k: int, p: int, st: list) -> None:
        X, w, steps = st
        snaps.positions[p, k, : len(w)] = X
        snaps.mass_out[p, k] = 0.0
        snaps.mass[p, k], snaps.mean[p, k], snaps.cov[p, k] = token_moments(X, w)
        snaps.steps[p, k] = steps


def method_runner(case: Case, method: str) -> GridMethod | ParticleMethod:
    """The grid or particle adapter of ``case`` (call ``use_heads`` before advancing)."""
    return GridMethod(case) if method == "grid" else ParticleMethod(case)


def run_case(
    case: Case,
    out: str | Path,
    *,
    method: str | None = None,
    resume: bool = False,
    report: Report = _stderr,
) -> Snapshots:
    """Run ``case`` and write the result file ``out``.

    With [train] (steps > 0), the heads are trained first (checkpointed in
    ``out``; ``resume`` continues from the last checkpoint); then the forward
    pass runs with the final heads, and with [loss] the risk and its
    gradient are stored.

    Raises:
        CaseError: the case cannot be run as given (exit status 2).
        RunError: the run stopped early; the file holds what was computed.
        KeyboardInterrupt: after saving what was computed.
    """
    m, sv = case.model, case.solver
    name = method or sv.method
    runner = method_runner(case, name)
    training = case.train is not None and case.train.steps > 0
    if resume and not training:
        raise CaseError("--resume: the case has no [train] with steps > 0, so there is nothing to resume")
    warm_up(report, runner.name)
    states = runner.initial(case.prompts)
    snaps = runner.snapshots(np.linspace(0.0, 1.0, case.output.snapshots), states)
    depth = snaps.depth
    P = len(states)
    heads = {"Q": m.Q, "K": m.K, "V": m.V}
    attrs = {**runner.attrs, "scale_scores": m.scale_scores}
    progress = Progress(report)
    extra: dict = {}

    def save() -> None:
        snaps.timings["run"] = progress.elapsed
        B = score_matrices(heads["Q"], heads["K"], m.scale_scores)
        write_result(out, snaps, case_text=case.text, dim=case.dim, method=runner.name,
                     heads={**heads, "B": B}, attrs=attrs, extra=extra)

    def stop(status: str, message: str) -> None:
        snaps.status, snaps.message = status, message
        save()
        report(f"stopped: {message}; saved what was computed to {out}")

    for p, st in enumerate(states):
        runner.record(snaps, 0, p, st)
    snaps.done = 1
    problem = None
    try:
        for p in range(P):
            _check_mass(snaps.mass_out[p, 0], sv.mass_tol, p, 0.0)
        if case.loss is not None:
            problem = Problem(case, runner.name)  # runs the teacher, if any
            extra.update(teacher_datasets(case))
        if training:
            heads = _train(case, problem, heads, out, resume, extra, save, report, attrs)
        runner.use_heads(score_matrices(heads["Q"], heads["K"], m.scale_scores), heads["V"])
        report(f"running {P} prompt(s), {runner.name} method ({runner.label}), {m.layers} layer(s) "
               f"x {m.heads} head(s), {len(depth)} snapshots -> {out}")
        for k in range(1, len(depth)):
            for p, st in enumerate(states):
                label = f"prompt {p + 1}/{P}"
                runner.advance(st, depth[k - 1], depth[k], lambda s, n, lb=label: progress(lb, s, n))
                runner.record(snaps, k, p, st)
            snaps.done = k + 1
            save()
            for p in range(P):
                _check_mass(snaps.mass_out[p, k], sv.mass_tol, p, depth[k])
        if problem is not None:
            report("computing the risk and its gradient (forward and adjoint)...")
            t = time.perf_counter()
            res = problem.risk_and_grad(heads["Q"], heads["K"], heads["V"])
            snaps.timings["gradient"] = time.perf_counter() - t
            extra.update(risk_datasets(res))
            res.check_finite("the risk and its gradient")
            extra.update(target_datasets(problem))
            report(f"risk {res.risk:.6g} (per prompt {np.array2string(res.per_prompt, precision=4)}), "
                   f"|grad| {grad_norm(res.grad):.3g}")
    except (_MassLost, RunError) as exc:
        stop("mass_lost", str(exc))
        raise RunError(str(exc)) from None
    except NumericalError as exc:
        stop("nan", str(exc))
        raise RunError(str(exc)) from None
    except KeyboardInterrupt:
        stop("interrupted", "interrupted by the user (Ctrl-C)")
        raise
    snaps.status = "finished"
    snaps.message = attrs.get("train_stop", "") or f"finished in {progress.elapsed:.1f} s"
    save()
    report(f"finished in {progress.elapsed:.1f} s; wrote {out}")
    return snaps


def _train(case, problem, heads, out, resume, extra, save, report, attrs) -> dict:
    """Train the heads, checkpointing into ``out``; returns the final heads.

    On NaN, lost mass or Ctrl-C the last good state is checkpointed before
    the exception goes on.
    """
    initial = dict(heads)
    if resume:
        state, record = load_checkpoint(out, case.text)
        report(f"resuming training at step {state.step} from {out}")
    else:
        state, record = TrainState(0, dict(heads)), TrainRecord()
    P = len(case.prompts)

    def checkpoint(st: TrainState, rec: TrainRecord, history: bool = True) -> None:
        """Save the resume state; regular checkpoints also join the head history."""
        if history and (not rec.checkpoint_step or rec.checkpoint_step[-1] != st.step):
            rec.checkpoint_step.append(st.step)
            rec.checkpoint_heads.append(dict(st.heads))
        heads.update(st.heads)
        extra.update(train_datasets(st, rec, P))
        attrs["train_step"] = st.step
        save()

    # a line per step at most every 2 s; inside a step, a line 2 s after the last line of any kind
    last = dict.fromkeys(("step", "any"), time.perf_counter())

    depth = [record.depth_steps[-1] if record.depth_steps else problem.depth_steps]

    def on_step(st: TrainState, rec: TrainRecord) -> None:
        if rec.depth_steps[-1] != depth[0]:
            report(f"  train step {st.step}: depth steps refined for positivity, {depth[0]} -> "
                   f"{rec.depth_steps[-1]} per evaluation (the discrete risk changed; the step was retaken)")
            depth[0] = rec.depth_steps[-1]
        now = time.perf_counter()
        if now - last["step"] >= 2.0 or st.step == 1:
            last["step"] = last["any"] = now
            report(f"  train step {st.step} taken from risk {rec.risk[-1]:.4e}, |grad| {rec.grad_norm[-1]:.3e}, "
                   f"W_c {rec.w_c[-1]:.3e}: lr {rec.lr[-1]:.3g}, {rec.evaluations[-1]} evaluation(s)")

    def on_inner(step: int, evaluations: int, risk: float) -> None:
        now = time.perf_counter()
        if now - last["any"] >= 2.0:
            last["any"] = now
            report(f"  train step {step} under way: {evaluations} evaluation(s), inner iterate at risk {risk:.4e}")

    report(f"training: up to {case.train.steps} {case.train.scheme} steps, lr {case.train.lr:g}, "
           f"{problem.method} method")
    if not record.checkpoint_step:
        checkpoint(state, record)
    try:
        state = train(problem, case.train, state, initial, record, on_step=on_step, checkpoint=checkpoint,
                      on_inner=on_inner)
    except BaseException:
        checkpoint(state, record, history=False)
        raise
    checkpoint(state, record)
    attrs["train_stop"] = state.message
    report(f"training stopped: {state.message}")
    return dict(state.heads)


def target_datasets(problem: Problem) -> dict:
    """The targets tau^p: /targets/density (grid) or /targets/positions and weights."""
    if problem.targets[0] is None:
        return {}
    if problem.method == "grid":
        rho = np.stack([t.rho for t in problem.targets])
        axes = ("x", "y", "z")[: rho.ndim - 1]
        return {"targets/density": (rho, ("prompt", *axes))}
    n = max(len(t.weights) for t in problem.targets)
    pos = np.full((len(problem.targets), n, problem.dim), np.nan)
    wts = np.zeros((len(problem.targets), n))
    for p, t in enumerate(problem.targets):
        pos[p, : len(t.weights)] = t.points
        wts[p, : len(t.weights)] = t.weights
    return {"targets/positions": (pos, ("prompt", "token", "dim")), "targets/weights": (wts, ("prompt", "token"))}


def teacher_datasets(case: Case) -> dict:
    """/teacher/{Q,K,V,B}: the heads that made the targets, if a teacher did."""
    t = case.loss.teacher
    if t is None:
        return {}
    heads = {"Q": t.Q, "K": t.K, "V": t.V, "B": score_matrices(t.Q, t.K, case.model.scale_scores)}
    return {f"teacher/{k}": (v, HEAD_DIMS[k]) for k, v in heads.items()}


def risk_datasets(res) -> dict:
    """/risk, /risk_prompt and /grad/{Q,K,V,B} for the result file."""
    out = {"risk": (np.float64(res.risk), ()), "risk_prompt": (res.per_prompt, ("prompt",))}
    for k, v in res.grad.items():
        out[f"grad/{k}"] = (v, HEAD_DIMS[k])
    return out


class _MassLost(Exception):
    pass


def _check_mass(lost: float, tol: float, p: int, s: float) -> None:
    if lost > tol:
        msg = (f"prompt {p}: mass that left the box {lost:.3g} exceeds solver.mass_tol = {tol:g} "
               f"at depth s = {s:.4g}; enlarge [grid] lower/upper")
        raise _MassLost(msg)
