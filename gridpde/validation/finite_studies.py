"""Finite transformers in training against the mean-field theory (issue 17).

Studies (each returns plain numbers; ``scripts/finite_study.py`` runs them
into HDF5 files and tables):

- :func:`energy_identity`: along explicit Euler steps of the flow,
  theta_{n+1} = theta_n - dt L M g_n (g = dR/dtheta), the energy identity
  dR/dt = -sum_heads |grad_theta G|^2 / (L M) = -L M |g|^2 (docs/model.md
  section 5) holds in two discrete forms:

  * Euler form: (R_{n+1} - R_n) / dt = -L M |g_n|^2 + O(dt) (relative residual
    of order 1 in the step);
  * trapezoid form: R_{n+1} - R_n = -dt L M g_n . (g_n + g_{n+1}) / 2 + O(dt^3)
    per step (the mean of the gradients at the ends of the step; relative
    residual of order 2), which is what an exact gradient of the discrete risk
    and a step along it give.

  Summed over a trajectory of fixed flow time the two residuals are O(dt)
  and O(dt^2).
- :func:`spurious_run` / :func:`classify`: a random student of width M
  trained towards a fixed teacher (of its own width, item (a)); whether it
  reaches ``ratio`` of its initial risk, and if it stalls, whether the stall
  is a minimum, a saddle or still moving (finite-difference Hessian of the
  exact gradient, as ``scripts/hessian_spectrum.py`` forms it).
- :func:`meanfield_run`: a network of L layers of M heads drawn i.i.d. from
  one law, trained by explicit Euler for a fixed flow time; its risk curve
  and output measures are compared with a reference of many layers and heads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from gridpde.builders import case_document, dump_case, gaussian, mixture, uniform
from gridpde.casefile import parse_case
from gridpde.heads import Heads
from gridpde.measures import Measure
from gridpde.objective.losses import MMDLoss
from gridpde.objective.problem import Problem
from gridpde.spec import Case, TrainSpec
from gridpde.train.flow import TrainRecord, TrainState
from gridpde.train.flow import train as train_flow

#: the prompts of cases/teacher_student_{1,2}d_*.toml
PROMPTS = {
    1: (gaussian([-0.5], [[0.4]]), mixture([0.5, 0.5], [[-1.0], [1.0]], [[[0.2]], [[0.3]]]),
        uniform([-1.0], [1.5])),
    2: (mixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.5]], [[[0.3, 0.0], [0.0, 0.3]], [[0.25, 0.05], [0.05, 0.35]]]),
        uniform([-1.0, -1.0], [1.0, 0.5])),
}
BOX = {1: (9.0, 96), 2: (8.0, 32)}
#: the teacher of cases/teacher_student_*: 2 layers of 2 heads, N(0, 0.8^2) entries, seed 11
TEACHER = (2, 2, 0.8, 11)
STUDENT_SCALE = 0.5


def family_case(dim: int, method: str, layers: int, heads: int, seed: int, *, tokens: int = 100,
                teacher: tuple[int, int, float, int] = TEACHER, scale: float = STUDENT_SCALE,
                integrator: str = "euler") -> Case:
    """The teacher-student family of the cases in cases/, with a student of any (L, M).

    The teacher is fixed (``teacher`` = (L', M', scale, seed)); the student's
    heads are N(0, ``scale``^2) draws with ``seed``. Particles: ``tokens``
    quadrature tokens per prompt, ``integrator`` with its default substeps
    (euler: one step per layer, the residual transformer). Grid: the cases'
    box, upwind in space, Euler in depth.
    """
    box, cells = BOX[dim]
    solver = {"method": method, "scheme": "upwind", "time": "euler", "tokens": tokens, "integrator": integrator,
              "mass_tol": 1e-4}
    doc = case_document(dim, box=box, cells=cells, layers=layers, heads=heads, head_dim=dim,
                        init=(scale, seed), prompts=PROMPTS[dim], teacher=(teacher[2], teacher[3]), solver=solver)
    doc["loss"]["teacher"].update({"layers": teacher[0], "heads": teacher[1]})
    return parse_case(dump_case(doc))


def lcm_wasserstein(a: Heads, b: Heads) -> float:
    """W_c between head measures of any widths, in the (B, V) coordinates of each head.

    Per layer (matched by depth: layer l of ``a`` against the layer of ``b`` that holds
    its midpoint), W_2 between the uniform measures on M and M' atoms, exactly, by an
    assignment between lcm(M, M') copies. (B, V) because Q -> A Q, K -> A^-T K leaves
    the head unchanged.
    """
    from scipy.optimize import linear_sum_assignment

    def atoms(h: Heads) -> np.ndarray:
        return np.concatenate([h.B.reshape(h.layers, h.width, -1), h.V.reshape(h.layers, h.width, -1)], -1)

    x, y = atoms(a), atoms(b)
    n = math.lcm(a.width, b.width)
    total = 0.0
    for layer in range(a.layers):
        other = min(int((layer + 0.5) / a.layers * b.layers), b.layers - 1)
        xa = np.repeat(x[layer], n // a.width, axis=0)
        yb = np.repeat(y[other], n // b.width, axis=0)
        cost = np.sum((xa[:, None] - yb[None]) ** 2, axis=-1)
        r, c = linear_sum_assignment(cost)
        total += cost[r, c].mean()
    return float(np.sqrt(total / a.layers))


# ------------------------------------------------------------ energy identity


@dataclass
class EnergyRow:
    dt: float
    steps: int
    euler_rel: float  # max over steps of |(R1 - R0)/dt + LM|g0|^2| / (LM |g0|^2)
    trapezoid_rel: float  # max over steps of |(R1 - R0)/dt + LM g0.(g0 + g1)/2| / (LM |g0|^2)
    euler_sum_rel: float  # |R_N - R_0 + sum dt LM |g_n|^2| / |R_N - R_0|
    trapezoid_sum_rel: float
    risk0: float
    risk_end: float


def energy_identity(problem: Problem, heads: Heads, flow_time: float, dts) -> list[EnergyRow]:
    """Explicit Euler trajectories of the flow to ``flow_time``, one per step ``dt``, and
    the residuals of the energy identity in its Euler and trapezoid forms."""
    LM = heads.layers * heads.width
    rows = []
    for dt in dts:
        n = int(round(flow_time / dt))
        x = heads.flat()
        res = problem.risk_and_grad(heads)
        r0, g0 = res.risk, res.grad.flat()
        R = [r0]
        e_max = t_max = 0.0
        e_sum = t_sum = 0.0
        for _ in range(n):
            x = x - dt * LM * g0
            new = problem.risk_and_grad(heads.with_flat(x))
            r1, g1 = new.risk, new.grad.flat()
            power = LM * (g0 @ g0)
            e_max = max(e_max, abs((r1 - r0) / dt + power) / power)
            trap = LM * (g0 @ (g0 + g1)) / 2
            t_max = max(t_max, abs((r1 - r0) / dt + trap) / power)
            e_sum += dt * power
            t_sum += dt * trap
            r0, g0 = r1, g1
            R.append(r1)
        drop = R[0] - R[-1]
        rows.append(EnergyRow(dt, n, e_max, t_max, abs(drop - e_sum) / drop, abs(drop - t_sum) / drop, R[0], R[-1]))
    return rows


def fitted_slope(x, y) -> float:
    """Least-squares slope of log y against log x."""
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


# ------------------------------------------------------------ spurious minima


@dataclass
class Stall:
    kind: str  # "minimum", "saddle", "moving" or "unresolved" (see classify)
    lam_min: float  # smallest eigenvalue of L M Hess R
    lam_max: float
    resolution: float  # eigenvalues below this are difference-quotient noise
    predicted_drop: float  # saddle-free Newton decrease 1/2 g^T |H|^+ g on the resolved modes, / R
    grad_norm: float
    asymmetry: float  # max |H - H^T| / max |H| of the difference Hessian


#: a difference Hessian less symmetric than this (relative) is not a second derivative: the risk
#: has a kink within eps (the grid's upwind fluxes switch). Measured on the 1-D grid's stalls:
#: 5e-9..4e-5 at its saddles and one-head minima, 2e-4..1 at every "minimum" of its wider students
ASYMMETRY_MAX = 1e-4


def stall_kind(lam_min: float, resolution: float, asymmetry: float, predicted_drop: float,
               moving: float = 0.5) -> str:
    """The kind of a stall from its Hessian's figures (see :func:`classify`)."""
    if predicted_drop > moving:
        return "moving"
    if lam_min < -resolution:
        return "saddle"
    return "unresolved" if asymmetry > ASYMMETRY_MAX else "minimum"


def hessian(problem: Problem, heads: Heads, eps: float = 1e-4) -> tuple[np.ndarray, np.ndarray, float]:
    """(Hess R by central differences of the exact gradient, the gradient, the risk) at ``heads``."""
    x0 = heads.flat()
    res = problem.risk_and_grad(heads)
    H = np.empty((x0.size, x0.size))
    for i in range(x0.size):
        e = np.zeros(x0.size)
        e[i] = eps
        gp = problem.risk_and_grad(heads.with_flat(x0 + e)).grad.flat()
        gm = problem.risk_and_grad(heads.with_flat(x0 - e)).grad.flat()
        H[:, i] = (gp - gm) / (2 * eps)
    return H, res.grad.flat(), res.risk


def classify(problem: Problem, heads: Heads, eps: float = 1e-4, moving: float = 0.5) -> Stall:
    """Minimum, saddle or still moving, at where training stopped.

    The eigenvalues lam of L M Hess R are resolved down to ``asymmetry x max |lam|``
    (as in scripts/hessian_spectrum.py). ``moving``: the saddle-free Newton model
    on the resolved modes predicts a further decrease 1/2 sum_i (v_i . g)^2 / |lam_i|
    of more than this fraction of the risk (the gradient is not small on the
    curvature's scale). Otherwise a resolved negative eigenvalue is a saddle, and
    none a minimum (up to the resolution), unless the difference Hessian is
    less symmetric than ``ASYMMETRY_MAX``: then the risk is not twice
    differentiable there on the scale eps, and the stall is "unresolved".
    """
    H, g, risk = hessian(problem, heads, eps)
    LM = heads.layers * heads.width
    asym = np.abs(H - H.T).max() / max(np.abs(H).max(), 1e-300)
    lam, vec = np.linalg.eigh(0.5 * (H + H.T))
    res = max(asym, 1e-10) * np.abs(lam).max()
    live = np.abs(lam) > res
    c = vec[:, live].T @ g
    drop = 0.5 * float(np.sum(c**2 / np.abs(lam[live]))) / risk if risk > 0 else 0.0
    kind = stall_kind(float(lam[0]), float(res), float(asym), drop, moving)
    return Stall(kind, float(lam[0] * LM), float(lam[-1] * LM), float(res * LM), drop, float(np.linalg.norm(g)),
                 float(asym))


def head_shape(heads: Heads, collapse: float = 0.05, dead: float = 1e-2) -> tuple[int, int]:
    """(pairs of heads collapsed onto each other, dead heads), over layers.

    Collapsed: two heads of a layer whose (B, V) differ by less than ``collapse``
    times the layer's mean head norm; dead: |V| below ``dead`` times it (the head
    moves nothing).
    """
    pairs = deads = 0
    for layer in range(heads.layers):
        a = np.concatenate([heads.B[layer].reshape(heads.width, -1), heads.V[layer].reshape(heads.width, -1)], -1)
        scale = np.linalg.norm(a, axis=1).mean() + 1e-300
        d = np.linalg.norm(a[:, None] - a[None], axis=-1)
        pairs += int(np.sum(np.triu(d < collapse * scale, 1)))
        deads += int(np.sum(np.linalg.norm(heads.V[layer].reshape(heads.width, -1), axis=1) < dead * scale))
    return pairs, deads


@dataclass
class SpuriousRun:
    risk0: float
    risk: float
    steps: int
    evaluations: int
    seconds: float
    message: str
    reached: bool
    w_teacher: float  # lcm W_c in (B, V) from the teacher, at the end
    heads: Heads = field(repr=False)


def spurious_run(case: Case, method: str | None = None, ratio: float = 1e-6, start: Heads | None = None,
                 risk0: float | None = None, **train) -> SpuriousRun:
    """Train the case's student with the implicit scheme at lr = 1e6 (the cases' [train]) until
    the risk is ``ratio`` of the initial one, or a stop of ``train`` (steps, time_limit).

    ``start`` and ``risk0``: go on from where an earlier run stopped (its heads), towards
    ``ratio`` of that run's initial risk ``risk0``.
    """
    problem = Problem(case, method)
    heads = case.heads if start is None else start
    if risk0 is None:
        risk0 = problem.risk(heads).risk
    settings = {"scheme": "implicit", "lr": 1e6, "inner_steps": 100, "steps": 20, "checkpoint_every": 10**6,
                **train}
    spec = replace(TrainSpec(), risk_tol=ratio * risk0, **settings)
    rec = TrainRecord()
    state = train_flow(problem, spec, TrainState(0, heads), heads, rec)
    final = problem.risk(state.heads).risk
    return SpuriousRun(risk0, final, state.step, int(sum(rec.evaluations)), rec.seconds[-1] if rec.seconds else 0.0,
                       state.message, final <= ratio * risk0, lcm_wasserstein(state.heads, case.loss.teacher),
                       state.heads)


# ------------------------------------------------------------ mean-field trajectories


def mmd_distance(a: Measure, b: Measure, sigma: float = 1.0) -> float:
    """||a - b||_k for the Gaussian kernel of the risk (the square root of twice the MMD loss)."""
    return math.sqrt(max(2.0 * MMDLoss(sigma).value(a, b), 0.0))


@dataclass
class Trajectory:
    times: np.ndarray  # flow times of the checkpoints
    risk: np.ndarray  # risk at every step (0 .. steps)
    outputs: list  # per checkpoint, per prompt: the output measure at s = 1
    heads: Heads = field(repr=False)


def meanfield_run(case: Case, dt: float, flow_time: float, checkpoints: int = 4) -> Trajectory:
    """Explicit Euler steps dt of the flow (no backtracking: every network sees the same flow
    times) to ``flow_time``; the risk at every step and the output measures at ``checkpoints``
    + 1 evenly spaced flow times."""
    problem = Problem(case)
    heads = case.heads
    LM = heads.layers * heads.width
    n = int(round(flow_time / dt))
    keep = set(np.linspace(0, n, checkpoints + 1).round().astype(int).tolist())
    x = heads.flat()
    risks, outputs, times = [], [], []
    for k in range(n + 1):
        h = heads.with_flat(x)
        if k in keep:
            outputs.append([problem.method.measure(o) for o in problem.outputs(h)])
            times.append(k * dt)
        if k == n:
            risks.append(problem.risk(h).risk)
            break
        res = problem.risk_and_grad(h)
        risks.append(res.risk)
        x = x - dt * LM * res.grad.flat()
    return Trajectory(np.array(times), np.array(risks), outputs, heads.with_flat(x))


# ------------------------------------------------------------ NTK along training


@dataclass
class NTKPoint:
    step: int
    flow_time: float
    risk: float
    rel_min: np.ndarray  # (L,) tangent sigma_min / sigma_max on the measures entering each layer
    rank: np.ndarray  # (L,)
    full: int  # the rank of an injective tangent map (basis size)
    rel_min_a: np.ndarray  # reading (a) pooled, (L,)


def injective_case(method: str = "particles", layers: int = 2, heads: int = 2, seed: int = 13,
                   tokens: int = 64) -> Case:
    """The 1-D family without its Gaussian prompt: the mixture and the off-centre box.

    A Gaussian prompt's tilted mean is affine in B x, so adjoint fields beyond the affine ones on it
    are in the tangent map's kernel (with it the family's tangent map has rank 9 of 12 at depth 0);
    without it the diagnostics call the data set injective (rank 8 of 8)."""
    case = family_case(1, method, layers, heads, seed, tokens=tokens)
    return replace(case, prompts=case.prompts[1:], targets=case.targets[1:], queries=case.queries[1:])


def ntk_along(case: Case, lr: float = 1e3, steps: int = 30, ratio: float = 1e-6) -> list[NTKPoint]:
    """Train by implicit steps ``lr`` until R <= ratio R0, and the tangent map's spectrum at every step."""
    from gridpde.ntk.diagnostics import ntk_diagnostics
    from gridpde.ntk.trajectory import layer_measures

    problem = Problem(case)
    heads = case.heads
    risk0 = problem.risk(heads).risk
    spec = replace(TrainSpec(), scheme="implicit", lr=lr, inner_steps=100, steps=steps, checkpoint_every=10**6,
                   risk_tol=ratio * risk0)
    states: list[Heads] = [heads]
    rec = TrainRecord()
    train_flow(problem, spec, TrainState(0, heads), heads, rec, on_step=lambda st, _: states.append(st.heads))
    out = []
    for k, h in enumerate(states):
        diags = [ntk_diagnostics(ms) for ms in layer_measures(case, None, h)]
        out.append(NTKPoint(k, k * lr, problem.risk(h).risk, np.array([d.tangent.rel_min for d in diags]),
                            np.array([d.tangent.rank for d in diags]), diags[0].tangent.n_cols,
                            np.array([d.lse_a_pooled.rel_min for d in diags])))
    return out
