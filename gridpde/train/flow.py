"""Training: the conditional Wasserstein gradient flow of the heads.

Heads never move between layers; inside a layer each head particle follows
the gradient of the first variation of the risk (docs/model.md section 5):

    d theta_{l,j} / dt = - grad_theta G_l(theta_{l,j}),   grad_theta G_l = L M dR/dtheta_{l,j},

discretised in time with a step ``lr`` (the same step means the same thing
for every L and M), by one of two schemes:

- explicit Euler, theta' = theta - lr L M dR/dtheta(theta). With
  ``backtrack`` a step whose risk would rise, or whose evaluation fails (mass
  leaving the box), is halved, up to ``MAX_HALVINGS`` times; every step
  starts again from ``lr``. The trial point's gradient is computed with its
  risk, so an accepted step costs one forward and one adjoint pass. It is
  stable only for lr below 2 / (largest eigenvalue of L M Hess R), and the
  slowest mode decays like exp(-lr * smallest eigenvalue * steps).
- implicit Euler, theta' = theta - lr L M dR/dtheta(theta'): the proximal
  (JKO) step theta' = argmin R + |theta' - theta|^2 / (2 lr L M), whose
  squared distance is the conditional Wasserstein distance of particles that
  keep their labels. It is stable for every lr and contracts a mode of
  eigenvalue lam by 1 / (1 + lr lam), so a large lr crosses the slow modes
  of an ill-conditioned risk in a few steps. The minimisation starts at
  theta and only accepts points that lower the objective, so the risk never
  rises: R(theta') <= R(theta) - |theta' - theta|^2 / (2 lr L M).

On the grid an evaluation may refine the risk's depth-step schedule for
good (:meth:`gridpde.objective.problem.Problem._solve`): the risk function changed, so
the step under way is taken again from the same heads on the new risk.

The loop is a pure function of its state (heads, step number and grid
schedules), so a run resumed from a checkpoint retraces the uninterrupted
run bit for bit.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from gridpde.spec import TrainSpec
from gridpde.errors import NumericalError, RunError
from gridpde.heads import Heads, conditional_wasserstein
from gridpde.objective.problem import Problem, RiskResult

MAX_HALVINGS = 20
LBFGS_MEMORY = 20
ARMIJO = 1e-4
NOISE_HALVINGS = 10
PROBE = 1e-6  # the curvature probe moves the heads by this fraction of their norm
FIRST_MOVE = 0.1  # without curvature, an inner step moves the heads by at most this fraction of their norm


@dataclass
class TrainRecord:
    """One row per step: the state before the step and the step taken."""

    ROWS = ("step", "risk", "risk_prompt", "grad_norm", "lr", "w_c", "seconds", "evaluations", "depth_steps")

    step: list[int] = field(default_factory=list)
    risk: list[float] = field(default_factory=list)
    risk_prompt: list[np.ndarray] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    w_c: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    evaluations: list[int] = field(default_factory=list)  # risk-and-gradient evaluations the step took
    depth_steps: list[int] = field(default_factory=list)  # depth steps of one evaluation (the risk's schedule)
    # heads at checkpoint steps
    checkpoint_step: list[int] = field(default_factory=list)
    checkpoint_heads: list[Heads] = field(default_factory=list)

    def append(self, *row) -> None:
        """One row, in the order of ``ROWS``."""
        for name, value in zip(self.ROWS, row, strict=True):
            getattr(self, name).append(value)

    def truncate(self, n: int) -> None:
        """Keep the first n step rows (and the checkpoints before step n)."""
        for name in self.ROWS:
            setattr(self, name, getattr(self, name)[:n])
        keep = [i for i, s in enumerate(self.checkpoint_step) if s <= n]
        self.checkpoint_step = [self.checkpoint_step[i] for i in keep]
        self.checkpoint_heads = [self.checkpoint_heads[i] for i in keep]


@dataclass
class TrainState:
    step: int
    heads: Heads
    status: str = "running"
    message: str = ""
    schedules: list | None = None  # grid depth-step schedules of the risk (refined during training)


def grad_norm(grad: Heads) -> float:
    return float(np.linalg.norm(grad.flat()))


def _check_finite(res: RiskResult, step: int) -> None:
    res.check_finite(f"training step {step}")


def train(
    problem: Problem,
    spec: TrainSpec,
    state: TrainState,
    initial: Heads,
    record: TrainRecord,
    *,
    on_step: Callable[[TrainState, TrainRecord], None] | None = None,
    checkpoint: Callable[[TrainState, TrainRecord], None] | None = None,
    on_inner: Callable[[int, int, float], None] | None = None,
) -> TrainState:
    """Run the flow from ``state`` until a stop criterion; returns the final state.

    Args:
        problem: the risk as a function of the heads.
        spec: [train] settings.
        state: where to start (step 0 and the model's heads, or a checkpoint).
        initial: the heads at step 0, for W_c.
        record: rows so far (appended to).
        on_step: called after every step (progress).
        checkpoint: called every ``checkpoint_every`` steps, with the state
            at that step, to save it.
        on_inner: called inside an implicit step after every accepted inner
            iterate, with (the step's number, its evaluations so far, the
            iterate's risk): progress within a step that may take minutes.

    Raises:
        NumericalError: NaN in the risk or gradient; ``state`` is left at the
            last good step (the caller saves it).
    """
    L, M = state.heads.layers, state.heads.width
    t0 = time.perf_counter()
    deadline = t0 + spec.time_limit if spec.time_limit else None
    if spec.scheme == "implicit":
        step = partial(_implicit_step, on_inner=on_inner, deadline=deadline)
    else:
        step = _explicit_step
    if state.schedules is not None:  # resuming: the risk as it was at the checkpoint
        problem.use_schedules(state.schedules)
    res = problem.risk_and_grad(state.heads)
    _check_finite(res, state.step)
    spent = 0  # evaluations of steps abandoned because the schedule was refined
    while True:
        gnorm = grad_norm(res.grad)
        stop = _stop_reason(spec, state.step, res.risk, gnorm, time.perf_counter() - t0)
        if stop:
            state.status, state.message = "finished", stop
            return state
        try:
            trial, new, lr, evaluations = step(problem, spec, state, res, L * M)
        except _NoDescent as exc:
            state.status, state.message = "finished", f"{exc}; |grad| {gnorm:.3g}"
            return state
        except _Refined as exc:  # the discrete risk changed under the step: take it again
            spent += exc.evaluations + 1
            res = problem.risk_and_grad(state.heads)
            _check_finite(res, state.step)
            continue
        w_c = conditional_wasserstein(state.heads, initial)
        # the row is appended whole, so an interrupt never leaves ragged series
        record.append(state.step, res.risk, res.per_prompt, gnorm, lr, w_c, time.perf_counter() - t0,
                      spent + evaluations, problem.depth_steps)
        spent = 0
        state.step += 1
        state.heads = trial
        state.schedules = problem.schedules
        res = new
        if on_step is not None:
            on_step(state, record)
        if checkpoint is not None and state.step % spec.checkpoint_every == 0:
            checkpoint(state, record)


class _NoDescent(Exception):
    """No step lowers the risk: training has nowhere to go."""


class _Refined(Exception):
    """An evaluation refined the depth-step schedule: the risk the step compares against changed."""

    def __init__(self, evaluations: int):
        super().__init__()
        self.evaluations = evaluations


def _trial(problem: Problem, like: Heads, x: np.ndarray) -> RiskResult:
    """R and its gradient at the trial heads ``like.with_flat(x)``, the depth steps capped (see
    :func:`_trial_cap`). Raises RunError (a failed trial) if x is not finite or needs more steps."""
    if not np.all(np.isfinite(x)):
        raise RunError("the trial heads are not finite")
    with _trial_cap(problem, True):
        return problem.risk_and_grad(like.with_flat(x))


#: a trial (explicit, or an inner iterate of an implicit step) may take at most this many times the largest
#: depth-step count of the schedule per layer interval; one that needs more has overshot: it fails (StepLimit)
#: and is halved, instead of refining the schedule for good (every later evaluation would pay for one bad
#: trial: seen growing 3 -> 1024 steps in 4 explicit steps, and 0.3 -> 8.7 s per evaluation in one implicit one)
SCHEDULE_GROWTH = 4


@contextmanager
def _trial_cap(problem: Problem, on: bool):
    """Cap the depth steps of the evaluations inside (the grid; a no-op without a schedule)."""
    sched = problem.schedules
    if not on or not sched:
        yield
        return
    problem.method.step_cap = SCHEDULE_GROWTH * max(max(s, default=1) for s in sched)
    try:
        yield
    finally:
        problem.method.step_cap = None


def _explicit_step(problem: Problem, spec: TrainSpec, state: TrainState, res: RiskResult, scale: int):
    """theta - lr L M grad R, halved while the risk would rise (with ``backtrack``), or while the trial
    would need more than ``SCHEDULE_GROWTH`` times the schedule's depth steps.

    With ``backtrack`` a trial that is not taken leaves the depth-step schedule as it found it (a grid
    trial that fails or raises the risk may have refined it for positivity on the way); a trial that is
    taken and refined it has the step retaken on the new schedule (_Refined).

    Returns (heads, their risk and gradient, the lr taken, evaluations).
    Raises _NoDescent when no halved step lowers the risk.
    """
    lr = spec.lr
    version = problem.version
    before = problem.schedules
    for evaluations in range(1, MAX_HALVINGS + 2):
        x = state.heads.flat() - lr * scale * res.grad.flat()
        try:
            if not np.all(np.isfinite(x)):
                raise RunError("the trial heads are not finite")
            with _trial_cap(problem, spec.backtrack):
                new = problem.risk_and_grad(state.heads.with_flat(x))
        except (RunError, NumericalError) as exc:  # e.g. the trial heads push mass out of the box, or overflow
            if not spec.backtrack:
                if isinstance(exc, NumericalError):
                    raise
                raise RunError(f"training step {state.step + 1}: {exc}") from None
            new, failure = None, str(exc)
        taken = new is not None and (not spec.backtrack or (np.isfinite(new.risk) and new.risk <= res.risk))
        if problem.version != version:  # the trial refined the schedule
            if taken or before is None:
                raise _Refined(evaluations)
            problem.use_schedules(before)
            version = problem.version
        if taken:
            break
        lr *= 0.5
    if new is None:
        raise RunError(f"training step {state.step + 1}: every halved step failed: {failure}")
    _check_finite(new, state.step + 1)
    if spec.backtrack and not new.risk <= res.risk:
        raise _NoDescent(f"line search: no step down to lr * 2^-{MAX_HALVINGS} lowers the risk "
                         f"{res.risk:.3g} (stationary to round-off, or at a kink of the discrete risk)")
    return state.heads.with_flat(x), new, lr, evaluations


def _implicit_step(problem: Problem, spec: TrainSpec, state: TrainState, res: RiskResult, scale: int,
                   on_inner: Callable[[int, int, float], None] | None = None, deadline: float | None = None):
    """The proximal step argmin_theta' R(theta') + |theta' - theta|^2 / (2 lr L M), by L-BFGS.

    A probe 1e-6 |theta| down the gradient gives the first curvature pair
    (so the first step has the scale of the stiffest direction along the
    gradient). The objective phi starts at R(theta); an inner iterate is
    accepted only if it lowers phi by the Armijo fraction of the predicted decrease
    (halving the step otherwise; a failed evaluation counts as a rise), so
    the returned heads never have a larger risk. Trials are capped at
    ``SCHEDULE_GROWTH`` times the schedule's depth steps (a trial that needs
    more is a rise); one that refined the schedule and is not taken leaves
    it as it was, one that is taken has the step retaken on the refined
    schedule (_Refined). The inner loop stops when
    |grad phi| <= ``inner_tol`` |grad R(theta)|, after ``inner_steps``
    iterations, when no halved step lowers phi, or when a quasi-Newton step
    had to be halved more than ``NOISE_HALVINGS`` times (phi is resolved to
    its round-off, or the step crossed a kink of the discrete risk), or at
    the first accepted iterate past ``deadline`` (the time limit: the step
    is then a partial solve, a decrease of phi all the same). A trial
    whose risk or gradient is not finite counts as a rise, unless the
    smallest trial is not finite either (NumericalError).

    Returns like :func:`_explicit_step`; the lr taken is always ``lr``.
    """
    c = 1.0 / (spec.lr * scale)
    x0 = state.heads.flat()
    x, cur, phi, g = x0, res, res.risk, res.grad.flat()
    target = spec.inner_tol * np.linalg.norm(g)
    pairs: list[tuple[np.ndarray, np.ndarray, float]] = []
    evaluations = 0
    version = problem.version

    before = problem.schedules

    def restore(version: int) -> int:
        # a trial that is not taken leaves the schedule as it found it (it may have refined it for positivity)
        if problem.version != version:
            if before is None:
                raise _Refined(evaluations)
            problem.use_schedules(before)
        return problem.version

    def remember(s: np.ndarray, y: np.ndarray) -> None:
        nonlocal pairs
        if s @ y > 1e-12 * np.linalg.norm(s) * np.linalg.norm(y):
            pairs = (pairs + [(s, y, 1.0 / (s @ y))])[-LBFGS_MEMORY:]

    # the first curvature pair: the gradient a short way down -g
    probe = -PROBE * np.linalg.norm(x0) / np.linalg.norm(g) * g
    if np.all(np.isfinite(probe)):
        evaluations += 1
        try:
            near = _trial(problem, state.heads, x0 + probe)
            if problem.version == version:
                remember(probe, near.grad.flat() + c * probe - g)
        except RunError:
            pass
        version = restore(version)
    for _ in range(spec.inner_steps):
        if np.linalg.norm(g) <= target:
            break
        d = -_lbfgs_direction(g, pairs)
        if g @ d >= 0:  # round-off made the estimate useless: forget it
            pairs = []
            d = -g
        quasi_newton = bool(pairs)
        if not quasi_newton:  # no curvature known: the explicit step, capped
            d *= min(1.0 / c, FIRST_MOVE * np.linalg.norm(x0) / np.linalg.norm(g))
        slope = g @ d
        alpha, accepted = 1.0, None
        for halvings in range(MAX_HALVINGS + 1):
            xt = x + alpha * d
            evaluations += 1
            try:
                new = _trial(problem, state.heads, xt)
                finite = np.isfinite(new.risk) and np.all(np.isfinite(new.grad.flat()))
            except RunError:  # e.g. mass leaving the box, or too many depth steps: a rise
                new, finite = None, True
            except NumericalError as exc:  # the trial overflowed: a rise, unless even the smallest trial does
                new, finite, overflow = None, False, exc
            if new is not None and finite:
                phi_t = new.risk + 0.5 * c * np.sum((xt - x0) ** 2)
                if phi_t <= phi + ARMIJO * alpha * slope:
                    if problem.version != version:  # taken, on a refined schedule: retake the step on it
                        raise _Refined(evaluations)
                    accepted = new
                    break
            version = restore(version)
            alpha *= 0.5
        if accepted is None:
            if not finite:  # even the smallest trial step gives NaN: not a matter of step size
                if new is None:
                    raise overflow
                _check_finite(new, state.step + 1)
            break
        g_t = accepted.grad.flat() + c * (xt - x0)
        remember(xt - x, g_t - g)
        x, cur, phi, g = xt, accepted, phi_t, g_t
        if on_inner is not None:
            on_inner(state.step + 1, evaluations, cur.risk)
        if quasi_newton and halvings > NOISE_HALVINGS:  # the quasi-Newton step is wrong by 1000x: noise, or a kink
            break
        if deadline is not None and time.perf_counter() >= deadline:
            break
    if cur is res:
        raise _NoDescent(f"implicit step: no inner step lowers the risk {res.risk:.3g} "
                         "(stationary to round-off, or at a kink of the discrete risk)")
    return state.heads.with_flat(x), cur, spec.lr, evaluations


def _lbfgs_direction(g: np.ndarray, pairs: list) -> np.ndarray:
    """H g for the L-BFGS inverse-Hessian estimate from (s, y, 1 / s.y) pairs (two-loop recursion)."""
    q = g.copy()
    a = []
    for s, y, rho in reversed(pairs):
        a.append(rho * (s @ q))
        q -= a[-1] * y
    if pairs:
        s, y, _ = pairs[-1]
        q *= (s @ y) / (y @ y)
    for (s, y, rho), ai in zip(pairs, reversed(a)):
        q += (ai - rho * (y @ q)) * s
    return q


def _stop_reason(spec: TrainSpec, step: int, risk: float, gnorm: float, elapsed: float) -> str:
    if step >= spec.steps:
        return f"{spec.steps} steps done"
    if risk <= spec.risk_tol:
        return f"risk {risk:.3g} <= train.risk_tol = {spec.risk_tol:g}"
    if gnorm <= spec.grad_tol:
        return f"gradient norm {gnorm:.3g} <= train.grad_tol = {spec.grad_tol:g}"
    if spec.time_limit and elapsed >= spec.time_limit:
        return f"time limit {spec.time_limit:g} s reached"
    return ""


def train_heads(case, heads: Heads | None = None, *, method: str | None = None, problem: Problem | None = None,
                on_step: Callable[[TrainState, TrainRecord], None] | None = None,
                **settings) -> tuple[TrainState, TrainRecord]:
    """Train ``heads`` (default: the case's) on the case's risk, without a result file.

    ``settings`` override the case's [train] keys (steps, lr, scheme, ...);
    a case without [train] uses the defaults of :class:`~gridpde.spec.TrainSpec`.

    Returns:
        (the final state: ``.heads``, ``.step``, ``.message``; the per-step record).
    """
    from dataclasses import replace

    problem = problem or Problem(case, method)
    heads = heads or case.heads
    spec = replace(case.train or TrainSpec(), **settings)
    record = TrainRecord()
    state = train(problem, spec, TrainState(0, heads), heads, record, on_step=on_step)
    return state, record
