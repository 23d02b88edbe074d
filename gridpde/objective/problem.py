"""The risk R(theta) = (1/P) sum_p F(mu^p_1; tau^p) of a case and its exact gradient.

:class:`Problem` holds what does not change with the heads (the prompts'
initial states, the targets, the loss, the method) and evaluates the risk
and its gradient for any :class:`~gridpde.heads.Heads`, through the
method interface (:class:`gridpde.method.Method`): forward with a tape,
the loss's derivative at s = 1 as the adjoint's final value, the method's
exact adjoint back to dR/dB and dR/dV, and dR/dQ = K dR/dB,
dR/dK = Q (dR/dB)^T (divided by sqrt(k) when the scores are scaled).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from gridpde.errors import CaseError, NumericalError
from gridpde.heads import Heads
from gridpde.method import make_method
from gridpde.objective.losses import MMDLoss, Objective, PointLoss, PotentialLoss
from gridpde.parallel import Ranks, world
from gridpde.spec import Case, LossSpec


@dataclass
class RiskResult:
    """The mean risk, the risk per prompt, and (if asked) the gradient of the mean.

    ``grad`` holds dR/dQ, dR/dK, dR/dV (the heads' shapes), ``grad_B`` dR/dB;
    ``steps`` counts the forward depth steps over all prompts; ``recomputed``
    the steps the adjoint recomputed for lack of memory.
    """

    risk: float
    per_prompt: np.ndarray
    grad: Heads | None = None
    grad_B: np.ndarray | None = None
    steps: int = 0
    recomputed: int = 0
    #: the first non-finite piece, e.g. "prompt 0: layer 1, block V of the gradient is not finite"
    nonfinite: str = ""

    def check_finite(self, where: str) -> None:
        """Raise NumericalError naming the prompt, layer and block if anything is NaN or inf."""
        what = self.nonfinite
        if not what and not np.isfinite(self.risk):
            what = f"the risk is {self.risk}"
        if not what and self.grad is not None and not np.all(np.isfinite(self.grad.flat())):
            what = "the gradient is not finite"
        if what:
            raise NumericalError(f"{where}: {what}", 0.0)


def _nonfinite(p: int, risk: float, B_bar: np.ndarray, V_bar: np.ndarray) -> str:
    """What of prompt p's contribution is not finite ("" if all is)."""
    if not np.isfinite(risk):
        return f"prompt {p}: the risk is {risk}"
    for layer in range(V_bar.shape[0]):
        blocks = [name for name, g in (("V", V_bar[layer]), ("Q and K (through B = K^T Q)", B_bar[layer]))
                  if not np.all(np.isfinite(g))]
        if blocks:
            return f"prompt {p}: layer {layer}, block {' and '.join(blocks)} of the gradient is not finite"
    return ""


def make_objective(spec: LossSpec, dim: int) -> Objective:
    """The [loss] table as an :class:`~gridpde.objective.losses.Objective`: its kinds with their factors."""
    measure, points = [], []
    for kind, c in zip(spec.kinds, spec.factors):
        if kind == "mmd":
            measure.append((c, MMDLoss(spec.sigma)))
        elif kind == "potential":
            measure.append((c, PotentialLoss(spec.centre if spec.centre is not None else np.zeros(dim))))
        else:
            points.append((c, PointLoss(kind)))
    return Objective(measure, points)


class Problem:
    """A case's data set and loss as a function of the heads.

    Args:
        case: a case with a [loss] table.
        method: "grid" or "particles" (default: the case's).
    """

    def __init__(self, case: Case, method: str | None = None, ranks: Ranks | None = None):
        if case.loss is None:
            raise CaseError("[loss]: the case has no loss, so there is no risk to compute")
        self.case = case
        self.dim = case.dim
        self.ranks = ranks or world()
        self.method = make_method(case, method)
        self.loss = make_objective(case.loss, case.dim)
        self.initial = self.method.case_states()
        self.ranks.balance([self.method.cost(st) for st in self.initial])
        teacher = case.loss.teacher
        # a teacher of the model's depth shares its depth steps (the student at the teacher's heads, or at
        # heads that duplicate them, then reproduces the targets exactly); one of another depth has its own
        shared = teacher is not None and teacher.layers == case.heads.layers
        self.method.plan([case.heads] + ([teacher] if shared else []), self.initial, self.ranks)
        self._teacher_out = None
        if teacher is not None and not shared:
            self._teacher_out = self._own_depth_outputs(teacher)
        self._version = self.method.version
        self.targets = self._targets()

    def _own_depth_outputs(self, teacher: Heads) -> list:
        """The outputs at s = 1 of heads of another depth than the model's, on their own depth steps.

        A second method of the same solver settings, built for a case whose model is ``teacher``, plans
        and follows its own steps (grid: the schedule of its layer intervals; particles: L' x substeps
        steps), from the same initial states (the same tokens). Fixed once: they do not change with the
        student's heads or schedules.
        """
        own = make_method(replace(self.case, heads=teacher), self.method.name)
        own.plan([teacher], self.initial, self.ranks)
        solver = own.solver(teacher)

        def one(p: int):
            out = own.solve(solver, self.initial[p], p)
            own.check_mass(out, p, "while the teacher made the targets")
            return out

        return [one(p) for p in range(len(self.initial))] if self.ranks.size == 1 else \
            self.ranks.run(one, len(self.initial))

    @property
    def version(self) -> int:
        """Counts changes of the discrete risk (refined grid schedules)."""
        return self.method.version

    @property
    def schedules(self):
        return self.method.schedules

    @property
    def depth_steps(self) -> int:
        """Depth steps of one evaluation over all prompts."""
        return self.method.depth_steps(self.initial)

    def use_schedules(self, schedules) -> None:
        """Follow ``schedules`` (e.g. from a checkpoint); recomputes the targets if they changed."""
        self.method.use_schedules(schedules)
        self._sync()

    def _sync(self) -> bool:
        """Recompute the targets if the discrete map changed; True if it did."""
        if self.method.version == self._version:
            return False
        self._version = self.method.version
        self.targets = self._targets()
        return True

    def _targets(self) -> list:
        case = self.case
        if "mmd" not in case.loss.kinds:
            return [None] * len(case.prompts)
        teacher_out = self._teacher_out
        if teacher_out is None and case.loss.teacher is not None:
            teacher_out = self.outputs(case.loss.teacher)
        given = self.method.initial_states(case.targets, seed_offset=1000, flow=False) if any(
            t is not None for t in case.targets) else None
        return [self.method.measure(teacher_out[i] if tgt is None else given[i])
                for i, tgt in enumerate(case.targets)]

    def _check_depth(self, heads: Heads) -> None:
        """The method's depth steps are the model's layers: heads of another depth would be run to the wrong s."""
        if heads.layers != self.case.heads.layers or heads.dim != self.dim:
            msg = (f"heads of {heads.layers} layers for {heads.dim}-D tokens: this risk is that of the model's "
                   f"{self.case.heads.layers} layers for {self.dim}-D tokens (any number of heads per layer)")
            raise ValueError(msg)

    def outputs(self, heads: Heads) -> list:
        """The output states at s = 1 for ``heads`` (grid: GridState, particles: TokenState).

        Every evaluation, the teacher's included, follows the method's fixed
        steps, so the student at the teacher's heads reproduces the targets
        exactly (zero risk).
        """
        self._check_depth(heads)
        solver = self.method.solver(heads)

        def one(p: int):
            out = self.method.solve(solver, self.initial[p], p)
            self.method.check_mass(out, p, "during a risk evaluation")
            return out

        outs = self._over_prompts(one)
        if self.method.version != self._version:  # refined on the way: again, on the new schedules
            self._sync()
            return self.outputs(heads)
        return outs

    def _over_prompts(self, fn) -> list:
        """[fn(p) for every prompt], spread over the ranks; schedules refined on any rank are shared."""
        if self.ranks.size == 1:
            return [fn(p) for p in range(len(self.initial))]
        before, version = self.method.schedules, self.method.version
        results = self.ranks.run(fn, len(self.initial))
        if before is not None:
            own = self.ranks.run(lambda p: self.method.schedules[p], len(self.initial))
            self.method.share_schedules(own, before, version)
        return results

    def risk(self, heads: Heads) -> RiskResult:
        """The risk without its gradient."""
        self._check_depth(heads)
        solver = self.method.solver(heads)

        def one(p: int) -> float:
            out = self.method.solve(solver, self.initial[p], p)
            self.method.check_mass(out, p, "during a risk evaluation")
            return self.method.value(self.loss, out, self.targets[p])

        per = np.array(self._over_prompts(one))
        if self._sync():  # refined on the way: again, on the new schedules
            return self.risk(heads)
        return RiskResult(float(per.mean()), per)

    def risk_and_grad(self, heads: Heads) -> RiskResult:
        """The risk and its exact gradient with respect to Q, K, V (and B)."""
        self._check_depth(heads)
        P = len(self.initial)
        solver = self.method.solver(heads)

        def one(p: int):
            st = self.initial[p]
            tape = self.method.new_tape()
            out = self.method.solve(solver, st, p, tape)
            self.method.check_mass(out, p, "during a risk evaluation")
            value = self.method.value(self.loss, out, self.targets[p])
            lam = self.method.cotangent(self.loss, out, self.targets[p], 1.0 / P)
            Bb, Vb, rec = self.method.backward(solver, tape, out, lam)
            return value, Bb, Vb, out.steps - st.steps, rec

        per = np.empty(P)
        B_bar = np.zeros(heads.B.shape)
        V_bar = np.zeros(heads.V.shape)
        steps = recomputed = 0
        nonfinite = ""
        # summed in prompt order on every rank: the serial run's sums, bit for bit
        for p, (value, Bb, Vb, n, rec) in enumerate(self._over_prompts(one)):
            per[p] = value
            nonfinite = nonfinite or _nonfinite(p, value, Bb, Vb)
            B_bar += Bb
            V_bar += Vb
            steps += n
            recomputed += rec
        if self._sync():  # refined on the way: again, on the new schedules
            return self.risk_and_grad(heads)
        return RiskResult(float(per.mean()), per, heads.chain(B_bar, V_bar), B_bar, steps, recomputed, nonfinite)
