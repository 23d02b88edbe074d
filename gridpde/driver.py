"""The run loop: a case in, a result file out.

It owns depth, stop reasons (finished, mass lost, NaN, Ctrl-C), progress
and timings; the numerics it calls never print. After every snapshot and
checkpoint the result file is brought up to date by appending
(:class:`~gridpde.io.append.ResultWriter`: a spare copy is appended to and
renamed onto the file), so a run that stops for any reason, kill -9
included, leaves a valid file holding every snapshot it reached.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from gridpde.errors import CaseError, MassLost, NumericalError, RunError, Terminated
from gridpde.heads import Heads
from gridpde.io.append import ResultWriter
from gridpde.io.checkpoint import load_checkpoint, train_datasets
from gridpde.io.output import claim_output
from gridpde.io.datasets import risk_datasets, target_datasets, teacher_datasets
from gridpde.io.results import read_result
from gridpde.io.snapshots import Snapshots
from gridpde.method import Method, make_method
from gridpde.parallel import SERIAL, Ranks, world
from gridpde.objective.problem import Problem
from gridpde.spec import Case
from gridpde.train.flow import TrainRecord, TrainState, grad_norm, train

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


def warm_up(report: Report, runner: Method) -> None:
    """Compile (or load from numba's cache) the method's kernels, saying so."""
    t = time.perf_counter()
    report("compiling kernels (first use only; cached afterwards)...")
    runner.warm_up()
    report(f"kernels ready ({time.perf_counter() - t:.1f} s)")


def check_memory(case: Case, runner: Method) -> None:
    """CaseError naming the key before any work if the run cannot fit in this machine's memory."""
    try:
        limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):  # pragma: no cover - no sysconf
        return
    P, S = len(case.prompts), case.output.snapshots
    work, per_snapshot, key, value, what = runner.memory()
    snaps = per_snapshot * P * S
    need = work * P + snaps
    if need > 0.9 * limit:
        key, value = ("output.snapshots", S) if snaps > work * P else (key, value)
        raise CaseError(f"{key} = {value}: the run would need about {need / 2**30:.3g} GiB ({what}, {P} prompt(s), "
                        f"{S} snapshots), more than this machine's {limit / 2**30:.3g} GiB")


def report_attention(report: Report, attrs: dict) -> None:
    """One line if the table method fell back to exact sums (it could not meet attention_tol)."""
    if attrs.get("attention_fallbacks"):
        report(f"note: {attrs['attention_fallbacks']} attention evaluation(s) used exact sums: the table "
               f"could not meet solver.attention_tol = {attrs['attention_tol']:g} "
               f"({attrs['attention_fallback_reason']})")


def advance_snapshots(runner: Method, solver, states: list, snaps: Snapshots,
                      progress: Progress | None = None, after: Callable[[], None] | None = None,
                      ranks: Ranks = SERIAL) -> None:
    """Move every prompt through the snapshot depths after ``snaps.done - 1``, recording each.

    ``after`` runs when a depth is filled (the run loop saves there); then
    the mass check, so a run that loses mass keeps the snapshot that shows it.
    Under MPI each rank advances its prompts and every rank records them all.
    """
    depth, P = snaps.depth, len(states)
    for k in range(snaps.done, len(depth)):

        def one(p: int, k: int = k):
            step = None if progress is None else (lambda s, n, lb=f"prompt {p + 1}/{P}": progress(lb, s, n))
            return runner.advance(solver, states[p], depth[k - 1], depth[k], step)

        states[:] = [one(p) for p in range(P)] if ranks.size == 1 else ranks.run(one, P)
        for p, st in enumerate(states):
            runner.record(snaps, k, p, st)
        snaps.done = k + 1
        if after is not None:
            after()
        ranks.agree_stop()
        for p, st in enumerate(states):
            runner.check_mass(st, p, f"at depth s = {depth[k]:.4g}")


def forward(case: Case, heads: Heads | None = None, *, method: str | None = None,
            snapshots: int | None = None) -> Snapshots:
    """The forward pass of every prompt of ``case``, as arrays (no file is written).

    Args:
        case: the case (its prompts, solver and grid).
        heads: the heads to run (default: the case's).
        method: "grid" or "particles" (default: the case's).
        snapshots: number of equally spaced depths, 0 and 1 included (default: [output] snapshots).

    Returns:
        :class:`~gridpde.io.snapshots.Snapshots`: ``depth``, ``density`` (grid) or
        ``positions``/``weights`` (particles), ``mass``, ``mass_out``, ``mean``, ``cov``.

    Raises:
        MassLost: more mass left the box than ``solver.mass_tol`` allows.
        NumericalError: the solution became non-finite.
    """
    runner = make_method(case, method)
    states = runner.case_states(flow=False)
    snaps = runner.snapshots(np.linspace(0.0, 1.0, snapshots or case.output.snapshots), states)
    for p, st in enumerate(states):
        runner.record(snaps, 0, p, st)
        runner.check_mass(st, p, "at depth s = 0")
    snaps.done = 1
    advance_snapshots(runner, runner.solver(heads or case.heads), states, snaps)
    snaps.status, snaps.message = "finished", ""
    return snaps


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
    runner = make_method(case, method)
    check_memory(case, runner)
    training = case.train is not None and case.train.steps > 0
    ranks = world()
    if ranks.size == 1:
        with claim_output(out), ResultWriter(out) as writer:
            return _run(case, Path(out), runner, training, resume, report, ranks, writer)
    # rank 0 owns the file: it claims it, and every rank learns whether that worked
    lock, problem = None, None
    if ranks.root:
        try:
            lock = claim_output(out)
        except CaseError as exc:
            problem = str(exc)
    problem = ranks.bcast(problem)
    if problem is not None:
        raise CaseError(problem)
    quiet = report if ranks.root else (lambda line: None)
    writer = ResultWriter(out)  # only rank 0 saves (and so removes its spare)
    try:
        return _run(case, Path(out), runner, training, resume, quiet, ranks, writer)
    finally:
        writer.close()
        if lock is not None:
            lock.release()


def _run(case: Case, out: Path, runner: Method, training: bool, resume: bool, report: Report,
         ranks: Ranks, writer: ResultWriter) -> Snapshots:
    """:func:`run_case` once the output is claimed (every rank runs it; rank 0 writes)."""
    m = case.heads
    warm_up(report, runner)
    states = runner.case_states(flow=False)
    ranks.balance([runner.cost(st) for st in states])
    snaps = runner.snapshots(np.linspace(0.0, 1.0, case.output.snapshots), states)
    if resume and not training:  # a forward run: continue from its last complete snapshot
        snaps, states = _resume_forward(case, out, runner, snaps, states)
        report(f"resuming the forward pass at snapshot {snaps.done} of {len(snaps.depth)} "
               f"(s = {snaps.depth[snaps.done - 1]:.4g}) from {out}")
    depth = snaps.depth
    P = len(states)
    heads = [m]  # the current heads (training replaces them)
    attrs = {**runner.attrs, "scale_scores": m.scale_scores}
    progress = Progress(report)
    extra: dict = {}

    def save() -> None:
        if not ranks.root:
            return
        snaps.timings["run"] = progress.elapsed
        writer.save(snaps, case_text=case.text, dim=case.dim, method=runner.name,
                    heads={**heads[0].arrays(), "B": heads[0].B}, attrs=attrs, extra=extra)

    def stop(status: str, message: str) -> None:
        snaps.status, snaps.message = status, message
        save()
        report(f"stopped: {message}; saved what was computed to {out}")

    if snaps.done == 0:
        for p, st in enumerate(states):
            runner.record(snaps, 0, p, st)
        snaps.done = 1
    problem = None
    try:
        for p, st in enumerate(states):
            runner.check_mass(st, p, "at depth s = 0")
        if case.loss is not None:
            problem = Problem(case, runner.name, ranks)  # runs the teacher, if any
            extra.update(teacher_datasets(case))
        if training:
            heads[0] = _train(case, problem, heads, out, resume, extra, save, report, attrs)
        solver = runner.solver(heads[0])
        report(f"running {P} prompt(s), {runner.name} method ({runner.label}), {m.layers} layer(s) "
               f"x {m.width} head(s), {len(depth)} snapshots -> {out}")
        def after_snapshot() -> None:
            attrs.update(runner.attention_report(solver))
            save()

        advance_snapshots(runner, solver, states, snaps, progress, after=after_snapshot, ranks=ranks)
        report_attention(report, attrs)
        if problem is not None:
            report("computing the risk and its gradient (forward and adjoint)...")
            t = time.perf_counter()
            res = problem.risk_and_grad(heads[0])
            snaps.timings["gradient"] = time.perf_counter() - t
            extra.update(risk_datasets(res))
            res.check_finite("the risk and its gradient")
            extra.update(target_datasets(problem))
            report(f"risk {res.risk:.6g} (per prompt {np.array2string(res.per_prompt, precision=4)}), "
                   f"|grad| {grad_norm(res.grad):.3g}")
    except MassLost as exc:
        stop("mass_lost", str(exc))
        raise RunError(str(exc)) from None
    except RunError as exc:
        stop("failed", str(exc))
        raise RunError(str(exc)) from None
    except NumericalError as exc:
        stop("nan", str(exc))
        raise RunError(str(exc)) from None
    except KeyboardInterrupt as exc:
        stop("interrupted", "stopped by SIGTERM" if isinstance(exc, Terminated) else "interrupted by the user (Ctrl-C)")
        raise
    snaps.status = "finished"
    snaps.message = attrs.get("train_stop", "") or f"finished in {progress.elapsed:.1f} s"
    save()
    report(f"finished in {progress.elapsed:.1f} s; wrote {out}")
    return snaps


def _resume_forward(case: Case, out: Path, runner: Method, snaps: Snapshots, states: list):
    """The record and the states of an interrupted forward run in ``out``, for the same case."""
    if not out.exists():
        raise CaseError(f"--resume: {out} does not exist (nothing to resume)")
    old = read_result(out)
    if old.case_text != case.text:
        raise CaseError(f"--resume: the case file changed since {out} was written; resume needs the same case")
    if old.method != runner.name:
        raise CaseError(f"--resume: {out} was written by the {old.method} method, not {runner.name}")
    if old.attrs.get("status") == "finished":
        raise CaseError(f"--resume: {out} is finished; nothing to resume")
    done = old.snaps.done
    if done < 1 or old.snaps.depth.shape != snaps.depth.shape:
        raise CaseError(f"--resume: {out} holds no complete snapshot of this case")
    snaps = old.snaps
    snaps.status, snaps.message = "running", ""
    return snaps, [runner.restore(snaps, done - 1, p, st) for p, st in enumerate(states)]


def _train(case, problem, current: list[Heads], out, resume, extra, save, report, attrs) -> Heads:
    """Train the heads ``current[0]``, checkpointing into ``out``; returns the final heads.

    ``current[0]`` follows the checkpoints (``save`` writes it). On NaN,
    lost mass or Ctrl-C the last good state is checkpointed before the
    exception goes on.
    """
    heads = initial = current[0]
    if resume:
        state, record = load_checkpoint(out, case.text, heads.scale_scores)
        report(f"resuming training at step {state.step} from {out}")
    else:
        state, record = TrainState(0, heads), TrainRecord()
    P = len(case.prompts)

    def checkpoint(st: TrainState, rec: TrainRecord, history: bool = True) -> None:
        """Save the resume state; regular checkpoints also join the head history."""
        if history and (not rec.checkpoint_step or rec.checkpoint_step[-1] != st.step):
            rec.checkpoint_step.append(st.step)
            rec.checkpoint_heads.append(st.heads)
        current[0] = st.heads
        extra.update(train_datasets(st, rec, P))
        attrs["train_step"] = st.step
        save()

    # a line per step at most every 2 s; inside a step, a line 2 s after the last line of any kind
    last = dict.fromkeys(("step", "any"), time.perf_counter())

    depth = [record.depth_steps[-1] if record.depth_steps else problem.depth_steps]

    def on_step(st: TrainState, rec: TrainRecord) -> None:
        problem.ranks.agree_stop()
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
        problem.ranks.agree_stop()
        now = time.perf_counter()
        if now - last["any"] >= 2.0:
            last["any"] = now
            report(f"  train step {step} under way: {evaluations} evaluation(s), inner iterate at risk {risk:.4e}")

    report(f"training: up to {case.train.steps} {case.train.scheme} steps, lr {case.train.lr:g}, "
           f"{problem.method.name} method")
    if not record.checkpoint_step:
        checkpoint(state, record)
    try:
        state = train(problem, case.train, state, initial, record, on_step=on_step, checkpoint=checkpoint,
                      on_inner=on_inner)
    except BaseException:
        # a stop between a step and its scheduled checkpoint still puts that step into the history
        checkpoint(state, record, history=state.step % case.train.checkpoint_every == 0)
        raise
    checkpoint(state, record)
    attrs["train_stop"] = state.message
    report(f"training stopped: {state.message}")
    return state.heads
