"""Query tokens against the Gaussian oracle: trajectories on the grid and on tokens, refined.

A Gaussian prompt's velocity is affine at every depth, so a query token's
exact path solves dX/ds = a(s) + G(s) X beside the moment ODEs
(:func:`gridpde.validation.gaussian.gaussian_queries`). The grid moves its
queries with the density's field (:mod:`gridpde.grid.queries`); the particle
method carries them as tokens of weight zero among quadrature tokens of the
prompt. Both converge to the oracle: the grid at its scheme's order in the
cell size, the tokens as the quadrature is refined.
"""

from __future__ import annotations

import numpy as np

from gridpde.grid.forward import GridForward, Tape
from gridpde.grid.queries import advect
from gridpde.heads import Heads
from gridpde.objective.problem import Problem
from gridpde.particles.solver import ParticleForward
from gridpde.grid.mesh import Grid
from gridpde.prompts import GaussianPrompt, MixturePrompt, Queries, gaussian_cell_averages
from gridpde.spec import Case, GridSpec, LossSpec, SolverSpec
from gridpde.validation.gaussian import gaussian_queries
from gridpde.validation.problems import GaussianProblem, fitted_order, gaussian_problem


def problem_queries(problem: GaussianProblem, count: int = 5) -> np.ndarray:
    """``count`` fixed query starts spread over the prompt (within about 1.5 sd of the mean)."""
    d = problem.dim
    t = np.linspace(-1.0, 1.0, count)
    directions = np.stack([np.cos(2.0 * t + a) for a in range(d)], axis=1)
    sd = np.sqrt(np.diag(problem.cov))
    return problem.mean + 1.5 * t[:, None] * directions * sd


def exact_queries(problem: GaussianProblem, X0: np.ndarray) -> np.ndarray:
    """The oracle's query positions at s = 1."""
    return gaussian_queries(problem.mean, problem.cov, problem.B, problem.V, X0, [1.0])[2][0]


def grid_queries(problem: GaussianProblem, n: int, X0: np.ndarray, limiter: str = "vanleer") -> np.ndarray:
    """Queries moved by the grid's density on n cells per axis, at s = 1."""
    grid = problem.grid(n)
    rho0 = gaussian_cell_averages(grid, problem.mean, problem.cov)
    solver = GridForward(grid, problem.B, problem.V, limiter)
    tape = Tape()
    solver.solve(rho0, 0.0, 1.0, tape=tape)
    return advect(solver, tape.steps, X0)[0]


def particle_queries(problem: GaussianProblem, tokens: int, X0: np.ndarray, substeps: int = 16) -> np.ndarray:
    """Queries carried as weight-zero tokens among ``tokens`` quadrature tokens (RK4), at s = 1."""
    X, w = GaussianPrompt(problem.mean, problem.cov).tokens(tokens)
    n = len(w)
    Xall = np.concatenate([X, X0])
    wall = np.concatenate([w, np.zeros(len(X0))])
    out = ParticleForward(problem.B, problem.V, "rk4", substeps).solve(Xall, wall, 0, problem.B.shape[0] * substeps)
    return out[n:]


def query_convergence(problem: GaussianProblem, cells=(16, 32, 64), tokens=None, limiter: str = "vanleer"):
    """Errors max |X_q(1) - exact| on the grid (per cell count) and on tokens (per token count).

    Returns:
        dict with "cells", "grid_error", "grid_order" (fitted in the cell size) and, if ``tokens``,
        "tokens", "particle_error".
    """
    X0 = problem_queries(problem)
    exact = exact_queries(problem, X0)
    h = [float(problem.grid(n).dx.max()) for n in cells]
    gerr = [float(np.abs(grid_queries(problem, n, X0, limiter) - exact).max()) for n in cells]
    out = {"cells": list(cells), "grid_error": gerr, "grid_order": fitted_order(h, gerr)}
    if tokens:
        out["tokens"] = list(tokens)
        out["particle_error"] = [float(np.abs(particle_queries(problem, n, X0) - exact).max()) for n in tokens]
    return out


def oracle_readout(heads, prompt: GaussianPrompt, queries, coords) -> float:
    """The readout risk sum_q w_q |X_q(1)[coords] - y_q|^2 of a Gaussian prompt, from the oracle."""
    X1 = gaussian_queries(prompt.mean, prompt.cov, heads.B, heads.V, queries.points, [1.0])[2][0]
    r = X1[:, list(coords)] - queries.labels
    return float(queries.weights @ np.einsum("ic,ic->i", r, r))


def oracle_readout_grad(heads, prompt: GaussianPrompt, queries, coords, eps: float = 1e-4) -> np.ndarray:
    """Central differences of :func:`oracle_readout` in the flat heads (Q, K, V): error ~ eps^2 + 1e-12 / eps."""
    x = heads.flat()
    g = np.empty_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = eps
        g[i] = (oracle_readout(heads.with_flat(x + e), prompt, queries, coords)
                - oracle_readout(heads.with_flat(x - e), prompt, queries, coords)) / (2 * eps)  # fmt: skip
    return g


def gaussian_case(problem: GaussianProblem, method: str, loss: LossSpec, queries: Queries | None = None, **solver):
    """A case of ``problem``'s Gaussian prompt and heads (K = I, Q = B) with ``loss`` on its box
    (``cells`` per axis, default 32; the other keywords are [solver] keys)."""
    L, M, d = problem.B.shape[:3]
    heads = Heads(Q=problem.B, K=np.broadcast_to(np.eye(d), (L, M, d, d)), V=problem.V)
    lo, hi = problem.box()
    cells = solver.pop("cells", 32)
    return Case(dim=d, grid=GridSpec(lo, hi, (cells,) * d), heads=heads,
                prompts=(GaussianPrompt(problem.mean, problem.cov),), solver=SolverSpec(method=method, **solver),
                loss=loss, queries=(queries,) if queries is not None else ())


def readout_queries(problem: GaussianProblem) -> Queries:
    """Three labelled queries near the prompt (labels of the last coordinate)."""
    pts = problem.mean + np.array([[-0.6, 0.2, 0.1], [0.3, 0.5, -0.2], [0.8, -0.4, 0.3]])[:, : problem.dim]
    return Queries(pts, labels=np.array([[0.2], [-0.3], [0.4]]))


def readout_gradient_errors(problem: GaussianProblem, cells=(16, 32, 64), tokens: int = 1024, scheme="muscl"):
    """Relative max errors of the readout gradient against the oracle's: grid per cell count, and particles.

    Returns:
        dict: "cells", "grid_error", "grid_order" (fitted in h), "particle_error", "particle_risk_error".
    """
    q = readout_queries(problem)
    loss = LossSpec(kind="readout")
    coords = (problem.dim - 1,)
    prompt = GaussianPrompt(problem.mean, problem.cov)
    heads = gaussian_case(problem, "particles", loss, q).heads
    g = oracle_readout_grad(heads, prompt, q, coords)
    scale = np.abs(g).max()
    gerr = []
    for n in cells:
        case = gaussian_case(problem, "grid", loss, q, cells=n, scheme=scheme, mass_tol=1e-2)
        gerr.append(float(np.abs(Problem(case).risk_and_grad(heads).grad.flat() - g).max() / scale))
    part = Problem(gaussian_case(problem, "particles", loss, q, tokens=tokens, substeps=16)).risk_and_grad(heads)
    want = oracle_readout(heads, prompt, q, coords)
    h = [float(problem.grid(n).dx.max()) for n in cells]
    return {"cells": list(cells), "grid_error": gerr, "grid_order": fitted_order(h, gerr),
            "particle_error": float(np.abs(part.grad.flat() - g).max() / scale),
            "particle_risk_error": abs(part.risk - want) / want}


def flowmap_convergence(problem: GaussianProblem, points=(1, 2, 3, 4, 6, 8), cells=(16, 32, 64), tokens: int = 4096):
    """The grid's flow-map risk as its query tokens (Gauss points per axis) and cells grow, against particles.

    Returns:
        dict: "points", "quadrature_change" (|R(q) - R(q_max)| at the finest grid), "cells",
        "grid_vs_particles" (|R_grid(q_max) - R_particles| / R_particles per cell count), "order" (fitted in h),
        "particles" (the particle value).
    """
    d = problem.dim

    def loss(q=8):
        return LossSpec(kind="flowmap", map_A=0.9 * np.eye(d), map_b=0.1 * np.ones(d), flowmap_points=q)

    case = gaussian_case(problem, "particles", loss(), tokens=tokens, substeps=16)
    ref = Problem(case).risk(case.heads).risk

    def grid_risk(n, q):
        case = gaussian_case(problem, "grid", loss(q), cells=n)
        return Problem(case).risk(case.heads).risk

    fine = [grid_risk(cells[-1], q) for q in points]
    rel = [abs(grid_risk(n, points[-1]) - ref) / ref for n in cells[:-1]] + [abs(fine[-1] - ref) / ref]
    h = [float(problem.grid(n).dx.max()) for n in cells]
    return {"points": list(points), "quadrature_change": [abs(r - fine[-1]) / ref for r in fine],
            "cells": list(cells), "grid_vs_particles": rel, "order": fitted_order(h, rel), "particles": ref}


def mixture_query_agreement(cells=(50, 100, 200, 400), tokens: int = 4096):
    """Grid against particles where no closed form exists: a two-bump 1-D prompt under the 1-D problem's
    heads. Query paths on n cells against those among ``tokens`` quadrature tokens (RK4 x 16).

    Returns:
        dict: "cells", "error" (max |X_grid - X_particles| at s = 1), "order" (fitted in h).
    """
    problem = gaussian_problem(1)
    prompt = MixturePrompt([0.5, 0.5], [[-0.6], [0.9]], [[[0.2]], [[0.3]]])
    X0 = np.array([[-1.0], [-0.2], [0.4], [1.3]])
    Xt, w = prompt.tokens(tokens)
    n = len(w)
    ref = ParticleForward(problem.B, problem.V, "rk4", 16).solve(
        np.concatenate([Xt, X0]), np.concatenate([w, np.zeros(len(X0))]), 0, problem.B.shape[0] * 16)[n:]
    errs, hs = [], []
    for m in cells:
        grid = Grid((-6.0,), (6.0,), (m,))
        solver = GridForward(grid, problem.B, problem.V, "vanleer")
        tape = Tape()
        solver.solve(prompt.cell_averages(grid), 0.0, 1.0, tape=tape)
        errs.append(float(np.abs(advect(solver, tape.steps, X0)[0] - ref).max()))
        hs.append(float(grid.dx[0]))
    return {"cells": list(cells), "error": errs, "order": fitted_order(hs, errs)}
