"""The convergence experiment of the training flow on the teacher-student cases.

Case (a): the student starts at the teacher plus N(0, 0.05^2) noise (small
initial risk); the theory predicts convergence to a global minimum (the
planted teacher has zero risk). Case (b): an independent random student;
what happens is measured, not assumed. The cases' [train] tables use the
implicit scheme with a large time step: the risk's Hessian at the teacher
has eigenvalues over 7 decades, which explicit steps cannot cross in a
feasible number of steps (``scripts/hessian_spectrum.py``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gridpde.casefile import load_case
from gridpde.heads import conditional_wasserstein
from gridpde.objective.problem import Problem
from gridpde.train.flow import TrainRecord, TrainState
from gridpde.train.flow import train as train_flow

CASES = Path(__file__).resolve().parents[2] / "cases"


@dataclass
class Convergence:
    steps: int
    evaluations: int  # risk-and-gradient evaluations over all steps
    risk0: float
    risk: float
    monotone: bool
    w_c_initial: float  # distance travelled from the initial heads
    w_c_teacher: float  # distance from the teacher at the end
    seconds: float
    message: str  # why training stopped
    flow_time: float  # flow time t at which the risk first fell to ratio * risk0 (inf: never)
    heads: dict  # where training ended

    @property
    def ratio(self) -> float:
        return self.risk / self.risk0


def crossing_time(risks: np.ndarray, lrs: np.ndarray, level: float) -> float:
    """The flow time at which the risk first falls to ``level``, interpolated in log risk within the step.

    ``risks`` are the risks at the flow times 0, lrs[0], lrs[0] + lrs[1], ... (one more than ``lrs``).
    """
    below = np.flatnonzero(risks <= level)
    if below.size == 0:
        return float("inf")
    k = below[0]
    if k == 0:
        return 0.0
    times = np.concatenate([[0.0], np.cumsum(lrs)])
    frac = np.log(risks[k - 1] / level) / np.log(risks[k - 1] / risks[k])
    return float(times[k - 1] + frac * (times[k] - times[k - 1]))


def teacher_student(dim: int, variant: str, method: str, ratio: float = 1e-6, **train) -> Convergence:
    """Train the case teacher_student_{dim}d_{variant} until risk <= ratio * initial risk.

    ``train`` overrides the case's [train] keys (steps, lr, scheme, ...).
    """
    case = load_case(CASES / f"teacher_student_{dim}d_{variant}.toml")
    problem = Problem(case, method)
    heads = case.heads
    risk0 = problem.risk(heads).risk
    spec = dataclasses.replace(case.train, risk_tol=ratio * risk0, **train)
    rec = TrainRecord()
    state = train_flow(problem, spec, TrainState(0, heads), heads, rec)
    final = problem.risk(state.heads).risk
    teacher = case.loss.teacher
    risks = np.array(rec.risk + [final])
    return Convergence(state.step, int(sum(rec.evaluations)), risk0, final, bool(np.all(np.diff(risks) <= 0)),
                       conditional_wasserstein(state.heads, heads),
                       conditional_wasserstein(state.heads, teacher), rec.seconds[-1] if rec.seconds else 0.0,
                       state.message, crossing_time(risks, np.array(rec.lr), ratio * risk0), state.heads)
