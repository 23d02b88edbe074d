"""The convergence experiment of the training flow on the teacher-student cases.

Case (a): the student starts at the teacher plus N(0, 0.05^2) noise (small
initial risk); the theory predicts convergence to a global minimum (the
planted teacher has zero risk). Case (b): an independent random student;
what happens is measured, not assumed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gridpde.case import load_case
from gridpde.heads import conditional_wasserstein
from gridpde.risk import Problem
from gridpde.train import TrainRecord, TrainState, train

CASES = Path(__file__).resolve().parents[2] / "cases"


@dataclass
class Convergence:
    steps: int
    risk0: float
    risk: float
    monotone: bool
    w_c_initial: float  # distance travelled from the initial heads
    w_c_teacher: float  # distance from the teacher at the end
    seconds: float

    @property
    def ratio(self) -> float:
        return self.risk / self.risk0


def teacher_student(dim: int, variant: str, method: str, steps: int, lr: float = 2.0,
                    ratio: float = 1e-6, time_limit: float = 0.0) -> Convergence:
    """Train the case teacher_student_{dim}d_{variant} until risk <= ratio * initial risk."""
    case = load_case(CASES / f"teacher_student_{dim}d_{variant}.toml")
    problem = Problem(case, method)
    heads = {"Q": case.model.Q, "K": case.model.K, "V": case.model.V}
    risk0 = problem.risk(**heads).risk
    spec = dataclasses.replace(case.train, steps=steps, lr=lr, risk_tol=ratio * risk0, time_limit=time_limit)
    rec = TrainRecord()
    state = train(problem, spec, TrainState(0, dict(heads)), heads, rec)
    final = problem.risk(**state.heads).risk
    t = case.loss.teacher
    teacher = {"Q": t.Q, "K": t.K, "V": t.V}
    risks = np.array(rec.risk + [final])
    return Convergence(state.step, risk0, final, bool(np.all(np.diff(risks) <= 0)),
                       conditional_wasserstein(state.heads, heads),
                       conditional_wasserstein(state.heads, teacher), rec.seconds[-1] if rec.seconds else 0.0)
