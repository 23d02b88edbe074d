"""Gradients against the exact Gaussian solution, and grid against particles.

The risk of a Gaussian prompt with a Gaussian target and the MMD loss is a
closed-form function of the heads: the moment ODE (docs/model.md section 7)
gives N(m(1), S(1)), and the MMD between Gaussians has a closed form. Its
gradient by central differences of that function (ODE at rtol 1e-12) is the
reference; the grid and particle adjoint gradients must converge to it as
the grid is refined or the quadrature tokens increase.
"""

from __future__ import annotations

import numpy as np

from gridpde.heads import Heads
from gridpde.prompts import GaussianPrompt
from gridpde.spec import Case, GridSpec, LossSpec, OutputSpec, SolverSpec
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
    heads = Heads(problem.B.copy(), eye, problem.V.copy())
    lo, hi = problem.box()
    grid = GridSpec(lo, hi, (n,) * dim)
    solver = SolverSpec(method=method, scheme=scheme, limiter="vanleer", tokens=tokens,
                        init="quadrature", integrator="rk4", substeps=8)
    return Case(dim=dim, grid=grid, heads=heads, prompts=(GaussianPrompt(problem.mean, problem.cov),),
                solver=solver, output=OutputSpec(), loss=LossSpec("mmd", SIGMA), targets=(_target(dim),))


def exact_risk(case: Case, heads: Heads) -> float:
    """Closed-form MMD of the exact output N(m(1), S(1)) to the Gaussian target."""
    p, t = case.prompts[0], case.targets[0]
    (m1,), (S1,) = gaussian_moments(p.mean, p.cov, heads.B, heads.V, np.array([1.0]))
    return gaussian_mmd(m1, S1, t.mean, t.cov, SIGMA)


def exact_gradient(case: Case, eps: float = 1e-5) -> np.ndarray:
    """Central differences of :func:`exact_risk` in every entry of Q, K, V (laid out as ``Heads.flat``)."""
    x = case.heads.flat()
    g = np.zeros_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = eps
        g[i] = (exact_risk(case, case.heads.with_flat(x + e)) - exact_risk(case, case.heads.with_flat(x - e))) / (2 * eps)
    return g


def gradient_error(dim: int, method: str, levels, scheme: str = "upwind"):
    """Relative gradient error against the exact one at each level.

    Returns:
        (levels, errors, fitted order in h (grid) or in n (particles)).
    """
    ref = exact_gradient(gaussian_case(dim, method, 8))
    errs = []
    hs = []
    for n in levels:
        case = gaussian_case(dim, method, n, scheme, tokens=n**dim)
        g = Problem(case).risk_and_grad(case.heads).grad.flat()
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
            case = Case(dim=dim, grid=GridSpec(lo, hi, (n,) * dim), heads=base.heads,
                        prompts=(NON_GAUSSIAN[dim],),
                        solver=SolverSpec(method=method, scheme=base.solver.scheme, limiter="vanleer",
                                          tokens=n**dim, init="quadrature", integrator="rk4", substeps=8),
                        output=OutputSpec(), loss=base.loss, targets=base.targets)
            grads.append(Problem(case).risk_and_grad(case.heads).grad.flat())
        diffs.append(float(np.linalg.norm(grads[0] - grads[1]) / np.linalg.norm(grads[1])))
        hs.append(14.0 / n)
    return list(levels), diffs, fitted_order(hs, diffs)
