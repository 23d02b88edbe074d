"""Gradients against the exact Gaussian solution, and grid against particles.

The risk of a Gaussian prompt with a Gaussian target and the MMD loss is a
closed-form function of the heads: the moment ODE (MODEL.md section 7)
gives N(m(1), S(1)), and the MMD between Gaussians has a closed form. Its
gradient by central differences of that function (ODE at rtol 1e-12) is the
reference; the grid and particle adjoint gradients must converge to it as
the grid is refined or the quadrature tokens increase.
"""

from __future__ import annotations

import numpy as np

from gridpde.casefile import Case, GaussianPrompt, GridSpec, LossSpec, ModelSpec, OutputSpec, SolverSpec
from gridpde.objective.losses import gaussian_mmd
from gridpde.objective.problem import Problem
from gridpde.validation.gaussian import gaussian_moments
from gridpde.validation.problems import fitted_order, gaussian_problem

SIGMA = 1.0


def _target(dim: int) -> GaussianPrompt:
    mean = np.full(dim, 0.4)
    cov = np.diag(np.linspace(0.35, 0.6, dim))
    return GaussianPrompt(mean, cov)


def gaussian_case(dim: int, method: str, n: int, scheme: str = "upwind", tokens: int = 1024) -> Case:
    """The validation problem as a case: Q = B, K = I (so B = K^T Q), MMD to a Gaussian."""
    problem = gaussian_problem(dim)
    L, M = problem.B.shape[:2]
    eye = np.broadcast_to(np.eye(dim), problem.B.shape).copy()
    model = ModelSpec(L, M, dim, problem.B.copy(), eye, problem.V.copy())
    lo, hi = problem.box()
    grid = GridSpec(lo, hi, (n,) * dim)
    solver = SolverSpec(method=method, scheme=scheme, limiter="vanleer", tokens=tokens,
                        init="quadrature", integrator="rk4", substeps=8)
    return Case(dim=dim, grid=grid, model=model, prompts=(GaussianPrompt(problem.mean, problem.cov),),
                solver=solver, output=OutputSpec(), loss=LossSpec("mmd", SIGMA), targets=(_target(dim),))


def exact_risk(case: Case, Q, K, V) -> float:
    """Closed-form MMD of the exact output N(m(1), S(1)) to the Gaussian target."""
    p, t = case.prompts[0], case.targets[0]
    B = np.swapaxes(K, -1, -2) @ Q
    (m1,), (S1,) = gaussian_moments(p.mean, p.cov, B, V, np.array([1.0]))
    return gaussian_mmd(m1, S1, t.mean, t.cov, SIGMA)


def exact_gradient(case: Case, eps: float = 1e-5) -> dict[str, np.ndarray]:
    """Central differences of :func:`exact_risk` in every entry of Q, K, V."""
    heads = {"Q": case.model.Q, "K": case.model.K, "V": case.model.V}
    grad = {}
    for name, value in heads.items():
        g = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            plus = {k: v.copy() for k, v in heads.items()}
            minus = {k: v.copy() for k, v in heads.items()}
            plus[name][idx] += eps
            minus[name][idx] -= eps
            g[idx] = (exact_risk(case, **plus) - exact_risk(case, **minus)) / (2 * eps)
        grad[name] = g
    return grad


def _flat(grad: dict) -> np.ndarray:
    return np.concatenate([grad[k].ravel() for k in ("Q", "K", "V")])


def gradient_error(dim: int, method: str, levels, scheme: str = "upwind"):
    """Relative gradient error against the exact one at each level.

    Returns:
        (levels, errors, fitted order in h (grid) or in n (particles)).
    """
    ref = _flat(exact_gradient(gaussian_case(dim, method, 8)))
    errs = []
    hs = []
    for n in levels:
        case = gaussian_case(dim, method, n, scheme, tokens=n**dim)
        m = case.model
        g = _flat(Problem(case).risk_and_grad(m.Q, m.K, m.V).grad)
        errs.append(float(np.linalg.norm(g - ref) / np.linalg.norm(ref)))
        hs.append((case.grid.upper[0] - case.grid.lower[0]) / n)
    return list(levels), errs, fitted_order(hs, errs)


def grid_vs_particle_gradient(dim: int, levels, scheme: str = "vanleer"):
    """Relative difference of grid and particle gradients on a mixture prompt as both refine."""
    from gridpde.validation.particle_studies import NON_GAUSSIAN

    diffs, hs = [], []
    for n in levels:
        base = gaussian_case(dim, "grid", n, "muscl" if scheme != "upwind" else "upwind", tokens=n**dim)
        lo, hi = (-7.0,) * dim, (7.0,) * dim
        grads = []
        for method in ("grid", "particles"):
            case = Case(dim=dim, grid=GridSpec(lo, hi, (n,) * dim), model=base.model,
                        prompts=(NON_GAUSSIAN[dim],),
                        solver=SolverSpec(method=method, scheme=base.solver.scheme, limiter="vanleer",
                                          tokens=n**dim, init="quadrature", integrator="rk4", substeps=8),
                        output=OutputSpec(), loss=base.loss, targets=base.targets)
            m = case.model
            grads.append(_flat(Problem(case).risk_and_grad(m.Q, m.K, m.V).grad))
        diffs.append(float(np.linalg.norm(grads[0] - grads[1]) / np.linalg.norm(grads[1])))
        hs.append(14.0 / n)
    return list(levels), diffs, fitted_order(hs, diffs)
