"""The risk R(theta) = (1/P) sum_p F(mu^p_1; tau^p) of a case and its gradient.

:class:`Problem` holds what does not change with the heads (prompts as
initial measures, targets, the loss, solver settings) and evaluates the risk
and its exact gradient for any heads (Q, K, V) with the case's method:

- grid: forward with a :class:`~gridpde.grid.forward.Tape`, dR/drho(1) from the
  loss's first variation, the discrete adjoint (:mod:`gridpde.grid.adjoint`);
- particles: forward with a tape, dR/dX_i(1) = w_i grad dF/dmu(X_i) / P,
  the exact adjoint of the Runge-Kutta steps.

dR/dB becomes dR/dQ = K dR/dB and dR/dK = Q (dR/dB)^T (divided by sqrt(k)
when the scores are scaled).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gridpde.grid.adjoint import backward
from gridpde.casefile import Case, LossSpec
from gridpde.errors import CaseError, NumericalError, RunError
from gridpde.grid.forward import GridForward, Tape
from gridpde.grid.mesh import Grid
from gridpde.heads import score_matrices
from gridpde.objective.losses import GridMeasure, MMDLoss, PotentialLoss, TokenMeasure
from gridpde.particles.solver import ParticleForward, prompt_tokens, steps_per_layer
from gridpde.prompts import cell_averages


@dataclass
class RiskResult:
    """The mean risk, the risk per prompt, and (if asked) the gradient of the mean.

    ``grad`` has keys Q, K, V (shapes of the heads) and B; ``steps`` counts
    the forward depth steps over all prompts; ``recomputed`` the steps the
    adjoint recomputed for lack of memory.
    """

    risk: float
    per_prompt: np.ndarray
    grad: dict[str, np.ndarray] | None = None
    steps: int = 0
    recomputed: int = 0
    #: the first non-finite piece, e.g. "prompt 0: layer 1, block V of the gradient is not finite"
    nonfinite: str = ""

    def check_finite(self, where: str) -> None:
        """Raise NumericalError naming the prompt, layer and block if anything is NaN or inf."""
        what = self.nonfinite
        if not what and not np.isfinite(self.risk):
            what = f"the risk is {self.risk}"
        if not what and self.grad is not None and not all(np.all(np.isfinite(g)) for g in self.grad.values()):
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


def make_loss(spec: LossSpec, dim: int):
    if spec.kind == "mmd":
        return MMDLoss(spec.sigma)
    centre = spec.centre if spec.centre is not None else np.zeros(dim)
    return PotentialLoss(centre)


def heads_gradient(Q, K, B_bar, V_bar, scale_scores: bool) -> dict[str, np.ndarray]:
    """dR/dQ, dR/dK from dR/dB (B = K^T Q [/ sqrt(k)]), with dR/dV and dR/dB."""
    c = 1.0 / np.sqrt(Q.shape[-2]) if scale_scores else 1.0
    return {
        "Q": c * K @ B_bar,
        "K": c * Q @ np.swapaxes(B_bar, -1, -2),
        "V": V_bar,
        "B": B_bar,
    }


class Problem:
    """A case's data set and loss as a function of the heads.

    Args:
        case: a case with a [loss] table.
        method: "grid" or "particles" (default: the case's).
    """

    def __init__(self, case: Case, method: str | None = None):
        if case.loss is None:
            raise CaseError("[loss]: the case has no loss, so there is no risk to compute")
        self.case = case
        self.method = method or case.solver.method
        self.dim = case.dim
        self.loss = make_loss(case.loss, case.dim)
        sv = case.solver
        if self.method == "grid":
            if case.grid is None:
                raise CaseError("[grid]: required for the grid method (lower, upper, cells)")
            self.grid = Grid(case.grid.lower, case.grid.upper, case.grid.cells)
            self.limiter = sv.limiter if sv.scheme == "muscl" else "upwind"
            self.initial = [cell_averages(p, self.grid, f"prompts[{i}]")[0] for i, p in enumerate(case.prompts)]
            self.schedules = self._schedules()
        else:
            self.substeps = steps_per_layer(sv.integrator, sv.substeps)
            self.initial = [prompt_tokens(p, sv.tokens, sv.init, sv.seed + i) for i, p in enumerate(case.prompts)]
        #: counts refinements of the schedules: the discrete risk changed (see _solve)
        self.version = 0
        self.targets = self._targets()

    # ------------------------------------------------------------ measures
    def _measure(self, state):
        if self.method == "grid":
            return GridMeasure(self.grid, state)
        return TokenMeasure(*state)

    def _targets(self) -> list:
        case, sv = self.case, self.case.solver
        if case.loss.kind == "potential":
            return [None] * len(case.prompts)
        teacher_out = None
        if case.loss.teacher is not None:
            t = case.loss.teacher
            teacher_out = self.outputs(t.Q, t.K, t.V)
        targets = []
        for i, tgt in enumerate(case.targets or [None] * len(case.prompts)):
            if tgt is None:
                targets.append(self._measure(teacher_out[i]))
            elif self.method == "grid":
                rho, _ = cell_averages(tgt, self.grid, f"prompts[{i}].target")
                targets.append(GridMeasure(self.grid, rho))
            else:
                targets.append(TokenMeasure(*prompt_tokens(tgt, sv.tokens, sv.init, sv.seed + 1000 + i)))
        return targets

    # ------------------------------------------------------------ solvers
    def _grid_solver(self, B, V) -> GridForward:
        sv = self.case.solver
        return GridForward(self.grid, B, V, self.limiter, sv.time, sv.cfl, sv.quadrature)

    def _particle_solver(self, B, V) -> ParticleForward:
        return ParticleForward(B, V, self.case.solver.integrator, self.substeps)

    def _B(self, Q, K):
        return score_matrices(Q, K, self.case.model.scale_scores)

    def outputs(self, Q, K, V) -> list:
        """The output states at s = 1 for heads (Q, K, V): rho, or (X, w).

        On the grid every evaluation, the teacher's included, follows the
        case's step schedule, so the student at the teacher's heads
        reproduces the targets exactly (zero risk).
        """
        B = self._B(Q, K)
        if self.method == "grid":
            version = self.version
            solver = self._grid_solver(B, V)
            outs = []
            for p, rho in enumerate(self.initial):
                rho1, lost, _ = self._solve(solver, p, rho)
                self._check_mass(lost, p)
                outs.append(rho1)
            if self.version != version:  # refined on the way: again, on the new schedules
                return self.outputs(Q, K, V)
            return outs
        solver = self._particle_solver(B, V)
        L = B.shape[0]
        return [(solver.solve(X, w, 0, L * self.substeps), w) for X, w in self.initial]

    def _schedules(self) -> list[list[int]]:
        """Depth steps per layer interval, chosen once from the case's heads and the teacher's.

        Every later evaluation takes these steps, so the discrete risk is a
        smooth function of the heads instead of jumping wherever an adaptive
        step count would change. Where heads need more steps for positivity
        the schedule is refined for good (see :meth:`_solve`); checkpoints
        keep it, so --resume follows the same schedules.
        Per interval the larger count of the two sets of heads is kept: a
        student trained towards the teacher's velocities then stays inside
        the schedule instead of crossing a doubling (a jump of the risk
        that stalls the line search).
        """
        m = self.case.model
        heads = [(m.Q, m.K, m.V)]
        if self.case.loss.teacher is not None:
            t = self.case.loss.teacher
            heads.append((t.Q, t.K, t.V))
        schedules = [[0] * self.case.model.layers for _ in self.initial]
        for Q, K, V in heads:
            solver = self._grid_solver(self._B(Q, K), V)
            for p, rho in enumerate(self.initial):
                sched: list[int] = []
                solver.solve(rho, 0.0, 1.0, schedule=sched)
                schedules[p] = [max(a, b) for a, b in zip(schedules[p], sched, strict=True)]
        return schedules

    @property
    def depth_steps(self) -> int:
        """Depth steps of one evaluation over all prompts (grid: the schedule's; particles: fixed)."""
        if self.method == "grid":
            return sum(map(sum, self.schedules))
        return len(self.initial) * self.case.model.layers * self.substeps

    def _solve(self, solver: GridForward, p: int, rho: np.ndarray, tape: Tape | None = None):
        """Prompt p on its schedule; a doubling for positivity refines the schedule for good.

        A refinement changes the discrete risk (it jumps there), so the
        targets are recomputed on the new schedule (the teacher keeps zero
        risk), ``version`` counts it, and the caller evaluates again.
        """
        sched = list(self.schedules[p])
        out = solver.solve(rho, 0.0, 1.0, tape=tape, schedule=sched)
        if sched != self.schedules[p]:
            self.use_schedules([sched if q == p else s for q, s in enumerate(self.schedules)])
        return out

    def use_schedules(self, schedules) -> None:
        """Follow ``schedules`` (e.g. from a checkpoint); recomputes the targets if they changed."""
        schedules = [[int(n) for n in s] for s in schedules]
        if schedules != self.schedules:
            self.schedules = schedules
            self.version += 1
            self.targets = self._targets()

    def _check_mass(self, lost: float, p: int) -> None:
        tol = self.case.solver.mass_tol
        if lost > tol:
            msg = (f"prompt {p}: mass that left the box {lost:.3g} exceeds solver.mass_tol = {tol:g} "
                   "during a risk evaluation; enlarge [grid] lower/upper")
            raise RunError(msg)

    # ------------------------------------------------------------ risk
    def risk(self, Q, K, V) -> RiskResult:
        """The risk without its gradient."""
        per = np.array([self.loss.value(self._measure(o), t) for o, t in
                        zip(self.outputs(Q, K, V), self.targets)])
        return RiskResult(float(per.mean()), per)

    def risk_and_grad(self, Q, K, V) -> RiskResult:
        """The risk and its exact gradient with respect to Q, K, V."""
        B = self._B(Q, K)
        P = len(self.initial)
        per = np.empty(P)
        B_bar = np.zeros_like(B)
        V_bar = np.zeros_like(V)
        steps = recomputed = 0
        nonfinite = ""
        version = self.version
        if self.method == "grid":
            solver = self._grid_solver(B, V)
            budget = self.case.solver.adjoint_memory_mb * 2**20
            for p, rho in enumerate(self.initial):
                tape = Tape(budget)
                rho1, lost, n = self._solve(solver, p, rho, tape)
                self._check_mass(lost, p)
                mu = GridMeasure(self.grid, rho1)
                per[p] = self.loss.value(mu, self.targets[p])
                lam = self.loss.first_variation(mu, self.targets[p]) * self.grid.cell_volume / P
                _, Bb, Vb = backward(solver, tape, lam)
                nonfinite = nonfinite or _nonfinite(p, per[p], Bb, Vb)
                B_bar += Bb
                V_bar += Vb
                steps += n
                recomputed += tape.recomputed
        else:
            solver = self._particle_solver(B, V)
            L = B.shape[0]
            for p, (X, w) in enumerate(self.initial):
                tape: list = []
                X1 = solver.solve(X, w, 0, L * self.substeps, tape=tape)
                per[p] = self.loss.value(TokenMeasure(X1, w), self.targets[p])
                lam = self.loss.grad_points(X1, w, self.targets[p]) / P
                _, Bb, Vb = solver.backward(tape, w, lam)
                nonfinite = nonfinite or _nonfinite(p, per[p], Bb, Vb)
                B_bar += Bb
                V_bar += Vb
                steps += len(tape)
        if self.version != version:  # refined on the way: again, on the new schedules
            return self.risk_and_grad(Q, K, V)
        grad = heads_gradient(Q, K, B_bar, V_bar, self.case.model.scale_scores)
        return RiskResult(float(per.mean()), per, grad, steps, recomputed, nonfinite)
