"""Training: the conditional Wasserstein gradient flow of the heads.

Heads never move between layers; inside a layer each head particle follows
the gradient of the first variation of the risk (MODEL.md section 5):

    d theta_{l,j} / dt = - grad_theta G_l(theta_{l,j}),   grad_theta G_l = L M dR/dtheta_{l,j},

discretised by explicit Euler steps of size ``lr`` (the same step means the
same thing for every L and M). With ``backtrack`` a step whose risk would
rise, or whose evaluation fails (mass leaving the box), is halved, up to
``MAX_HALVINGS`` times; every step starts again from ``lr``. The trial point's gradient is computed with its risk, so an
accepted step costs one forward and one adjoint pass.

The loop is a pure function of its state (heads and step number), so a run
resumed from a checkpoint retraces the uninterrupted run bit for bit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from gridpde.case import TrainSpec
from gridpde.errors import NumericalError, RunError
from gridpde.heads import conditional_wasserstein
from gridpde.risk import Problem, RiskResult

MAX_HALVINGS = 20
BLOCKS = ("Q", "K", "V")


@dataclass
class TrainRecord:
    """One row per step: the state before the step and the step taken."""

    ROWS = ("step", "risk", "risk_prompt", "grad_norm", "lr", "w_c", "seconds")

    step: list[int] = field(default_factory=list)
    risk: list[float] = field(default_factory=list)
    risk_prompt: list[np.ndarray] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    w_c: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    # heads at checkpoint steps
    checkpoint_step: list[int] = field(default_factory=list)
    checkpoint_heads: list[dict] = field(default_factory=list)

    def append(self, step, risk, risk_prompt, grad_norm, lr, w_c, seconds) -> None:
        for name, value in zip(self.ROWS, (step, risk, risk_prompt, grad_norm, lr, w_c, seconds)):
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
    heads: dict
    status: str = "running"
    message: str = ""


def grad_norm(grad: dict) -> float:
    return float(np.sqrt(sum(np.sum(grad[k] ** 2) for k in BLOCKS)))


def _check_finite(res: RiskResult, step: int) -> None:
    if not np.isfinite(res.risk) or not all(np.all(np.isfinite(res.grad[k])) for k in BLOCKS):
        raise NumericalError(f"non-finite risk or gradient at training step {step}", float(step))


def train(
    problem: Problem,
    spec: TrainSpec,
    state: TrainState,
    initial: dict,
    record: TrainRecord,
    *,
    on_step: Callable[[TrainState, TrainRecord], None] | None = None,
    checkpoint: Callable[[TrainState, TrainRecord], None] | None = None,
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

    Raises:
        NumericalError: NaN in the risk or gradient; ``state`` is left at the
            last good step (the caller saves it).
    """
    L, M = state.heads["V"].shape[:2]
    scale = L * M
    t0 = time.perf_counter()
    res = problem.risk_and_grad(*(state.heads[k] for k in BLOCKS))
    _check_finite(res, state.step)
    while True:
        gnorm = grad_norm(res.grad)
        stop = _stop_reason(spec, state.step, res.risk, gnorm, time.perf_counter() - t0)
        if stop:
            state.status, state.message = "finished", stop
            return state
        lr = spec.lr
        for _ in range(MAX_HALVINGS + 1):
            trial = {k: state.heads[k] - lr * scale * res.grad[k] for k in BLOCKS}
            try:
                new = problem.risk_and_grad(*(trial[k] for k in BLOCKS))
            except RunError as exc:  # e.g. the trial heads push mass out of the box
                if not spec.backtrack:
                    raise RunError(f"training step {state.step + 1}: {exc}") from None
                new, failure = None, str(exc)
            if new is not None and (not spec.backtrack or (np.isfinite(new.risk) and new.risk <= res.risk)):
                break
            lr *= 0.5
        if new is None:
            raise RunError(f"training step {state.step + 1}: every halved step failed: {failure}")
        _check_finite(new, state.step + 1)
        if spec.backtrack and not new.risk <= res.risk:
            state.status = "finished"
            state.message = (f"line search: no step down to lr * 2^-{MAX_HALVINGS} lowers the risk "
                             f"{res.risk:.3g} (at round-off or a kink of the discrete risk)")
            return state
        w_c = conditional_wasserstein(state.heads, initial)
        # the row is appended whole, so an interrupt never leaves ragged series
        record.append(state.step, res.risk, res.per_prompt, gnorm, lr, w_c, time.perf_counter() - t0)
        state.step += 1
        state.heads = trial
        res = new
        if on_step is not None:
            on_step(state, record)
        if checkpoint is not None and state.step % spec.checkpoint_every == 0:
            checkpoint(state, record)


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
