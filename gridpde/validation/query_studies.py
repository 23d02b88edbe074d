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
from gridpde.particles.solver import ParticleForward
from gridpde.prompts import GaussianPrompt, gaussian_cell_averages
from gridpde.validation.gaussian import gaussian_queries
from gridpde.validation.problems import GaussianProblem, fitted_order


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
