"""Particles against exact solutions, against the grid, and the finite-size gaps.

Studies (each returns the numbers the suite turns into checks):

- :func:`sampling_rate`: moment errors of sampled tokens on the Gaussian
  problem against the exact ODE, root-mean-square over seeds, fitted
  against n (expected slope -1/2), with the spread of per-seed slopes.
- :func:`quadrature_errors`: the same with deterministic quadrature tokens.
- :func:`grid_vs_particles`: a distance between grid and particle outputs
  on a non-Gaussian prompt as both are refined (W1 in 1-D, the largest
  moment difference in 2-D), with its fitted rate.
- :func:`depth_gap`: the L-layer Euler transformer against the depth limit
  for heads that vary smoothly with depth (error against L, expected 1).
- :func:`width_gap`: M heads drawn i.i.d. against a very wide reference
  (error against M, expected M^(-1/2)), RMS over seeds with the spread.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gridpde.prompts import GaussianPrompt, MixturePrompt, UniformPrompt
from gridpde.grid.forward import GridForward
from gridpde.grid.mesh import Grid
from gridpde.particles.solver import ParticleForward, token_moments
from gridpde.prompts import cell_averages
from gridpde.validation.problems import fitted_order, gaussian_problem


@dataclass
class Rate:
    """A fitted power law err ~ C x^slope with its spread."""

    slope: float
    spread: float
    xs: list
    errors: list

    def describe(self, name: str) -> str:
        errs = ", ".join(f"{e:.2e}" for e in self.errors)
        return f"{name} = {', '.join(map(str, self.xs))}; errors {errs}"


def _slope(xs, errs) -> float:
    return fitted_order(np.asarray(xs, float), np.asarray(errs, float))


def moment_error(X, w, mean, cov) -> float:
    _, m, c = token_moments(X, w)
    return float(max(np.abs(m - mean).max(), np.abs(c - cov).max()))


def _gaussian_run(problem, X, w, substeps=4):
    pf = ParticleForward(problem.B, problem.V, "rk4", substeps)
    return pf.solve(X, w, 0, problem.B.shape[0] * substeps)


def sampling_rate(ns=(256, 1024, 4096), seeds=5, dim=2) -> Rate:
    """RMS over seeds of the moment error of sampled tokens against n."""
    problem = gaussian_problem(dim)
    (m1,), (S1,) = problem.exact()
    prompt = GaussianPrompt(problem.mean, problem.cov)
    errs = np.empty((seeds, len(ns)))
    for i, n in enumerate(ns):
        for seed in range(seeds):
            X, w = prompt.tokens(n, "sample", seed)
            errs[seed, i] = moment_error(_gaussian_run(problem, X, w), w, m1, S1)
    rms = np.sqrt(np.mean(errs**2, axis=0))
    per_seed = [_slope(ns, e) for e in errs]
    return Rate(_slope(ns, rms), float(np.std(per_seed)), list(ns), list(rms))


def quadrature_errors(ns=(64, 256, 1024), dim=2, substeps=16) -> Rate:
    """Moment error of quadrature tokens against n (RK4 with fine steps)."""
    problem = gaussian_problem(dim)
    (m1,), (S1,) = problem.exact()
    prompt = GaussianPrompt(problem.mean, problem.cov)
    errs = []
    for n in ns:
        X, w = prompt.tokens(n, "quadrature")
        errs.append(moment_error(_gaussian_run(problem, X, w, substeps), w, m1, S1))
    return Rate(_slope(ns, errs), 0.0, list(ns), errs)


def _w1_grid_tokens(grid: Grid, rho: np.ndarray, X: np.ndarray, w: np.ndarray) -> float:
    """W1 = integral |F_grid - F_tokens| in 1-D (grid density piecewise constant)."""
    edges = grid.edges(0)
    pts = np.unique(np.concatenate([edges, np.clip(X[:, 0], edges[0], edges[-1])]))
    cell_mass = rho * grid.cell_volume
    Fg = np.interp(pts, edges, np.concatenate([[0.0], np.cumsum(cell_mass)]))
    order = np.argsort(X[:, 0])
    Ft = np.concatenate([[0.0], np.cumsum(w[order])])
    Ft_at = Ft[np.searchsorted(X[order, 0], pts, side="right")]
    gaps = np.abs(Fg - Ft_at)
    return float(np.sum(0.5 * (gaps[1:] + gaps[:-1]) * np.diff(pts)))


NON_GAUSSIAN = {
    1: MixturePrompt(np.array([0.4, 0.6]), np.array([[-1.2], [1.0]]), np.array([[[0.3]], [[0.5]]])),
    2: MixturePrompt(
        np.array([0.5, 0.5]),
        np.array([[-1.2, 0.3], [1.0, -0.4]]),
        np.array([[[0.4, 0.1], [0.1, 0.3]], [[0.3, -0.05], [-0.05, 0.5]]]),
    ),
}
BOX = {1: UniformPrompt(np.array([-1.0]), np.array([1.5]))}


def grid_vs_particles(dim: int, levels, prompt=None, box_half=7.0, tokens_per_level=None) -> Rate:
    """Distance between grid and particle outputs at s = 1 as both are refined.

    ``levels``: grid cells per axis; particles use quadrature tokens with the
    same count per axis (RK4, 8 substeps per layer). The distance is W1 in
    1-D and the largest mean/covariance difference in 2-D.
    """
    problem = gaussian_problem(dim)  # its heads, on a non-Gaussian prompt
    prompt = prompt or NON_GAUSSIAN[dim]
    dists = []
    for i, n in enumerate(levels):
        grid = Grid((-box_half,) * dim, (box_half,) * dim, (n,) * dim)
        rho0, _ = cell_averages(prompt, grid)
        rho, lost, _ = GridForward(grid, problem.B, problem.V).solve(rho0, 0.0, 1.0)
        nt = (tokens_per_level or levels)[i] ** dim
        X, w = prompt.tokens(nt, "quadrature")
        Xs = ParticleForward(problem.B, problem.V, "rk4", 8).solve(X, w, 0, problem.B.shape[0] * 8)
        if dim == 1:
            dists.append(_w1_grid_tokens(grid, rho, Xs, w))
        else:
            _, mg, cg = grid.moments(rho)
            _, mp, cp = token_moments(Xs, w)
            dists.append(float(max(np.abs(mg - mp).max(), np.abs(cg - cp).max())))
    return Rate(_slope(levels, dists), 0.0, list(levels), dists)


def _smooth_heads(L: int, M: int = 2, d: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Heads theta(s) at the layer starts s = l/L of a smooth depth profile."""
    base = gaussian_problem(d)
    s = np.arange(L) / L
    B0, V0 = base.B[0], base.V[0]
    B1, V1 = base.B[1], base.V[1]
    c, sn = np.cos(np.pi * s)[:, None, None, None], np.sin(np.pi * s)[:, None, None, None]
    return c * B0 + sn * B1, c * V0 + sn * V1


def depth_gap(Ls=(4, 8, 16, 32, 64), L_ref=2048, q=12) -> Rate:
    """Euler transformer with L layers vs the depth limit, RMS token distance."""
    prompt = NON_GAUSSIAN[2]
    X, w = prompt.tokens(q * q, "quadrature")
    Bref, Vref = _smooth_heads(L_ref)
    ref = ParticleForward(Bref, Vref, "rk4", 1).solve(X, w, 0, L_ref)
    errs = []
    for L in Ls:
        B, V = _smooth_heads(L)
        out = ParticleForward(B, V, "euler", 1).solve(X, w, 0, L)
        errs.append(float(np.sqrt(w @ np.sum((out - ref) ** 2, axis=1))))
    return Rate(-_slope(Ls, errs), 0.0, list(Ls), errs)


def width_gap(Ms=(1, 4, 16, 64), M_ref=4096, seeds=4, q=12, scale=0.5) -> Rate:
    """M i.i.d. heads vs a very wide reference, RMS token distance over seeds."""
    prompt = NON_GAUSSIAN[2]
    X, w = prompt.tokens(q * q, "quadrature")
    L, d = 2, 2

    def draw(M, seed):
        rng = np.random.default_rng(seed)
        B = rng.normal(scale=scale, size=(L, M, d, d))
        V = rng.normal(scale=scale, size=(L, M, d, d))
        return B, V

    def run(B, V):
        return ParticleForward(B, V, "rk4", 2).solve(X, w, 0, L * 2)

    ref = run(*draw(M_ref, 10_000))
    errs = np.empty((seeds, len(Ms)))
    for i, M in enumerate(Ms):
        for seed in range(seeds):
            out = run(*draw(M, 100 * seed + i))
            errs[seed, i] = np.sqrt(w @ np.sum((out - ref) ** 2, axis=1))
    rms = np.sqrt(np.mean(errs**2, axis=0))
    per_seed = [-_slope(Ms, e) for e in errs]
    return Rate(-_slope(Ms, rms), float(np.std(per_seed)), list(Ms), list(rms))

