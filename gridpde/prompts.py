"""Prompts (token distributions) as grid densities.

Cell averages are exact where a closed form exists and otherwise come from a
tensor Gauss-Legendre rule inside each cell, whose error for the smooth
densities here is far below round-off at any resolution a run uses:

- gaussian, mixture: products of erf differences when the covariance is
  diagonal (exact); otherwise ``GAUSS_POINTS`` Gauss-Legendre points per axis
  and cell (error ~ h^(2q) d^(2q) rho / (2q)!, below 1e-15 for h <= sigma).
- uniform box: exact overlap fractions.
- tokens: cloud-in-cell deposit (each point's weight shared linearly between
  the 2^d nearest cell centres; conservative, exact for the mean).

Mass of the prompt that falls outside the box is not dropped: it is returned
as ``outside`` and recorded as mass that left the box at s = 0.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr

from gridpde.casefile import GaussianPrompt, MixturePrompt, Prompt, TokensPrompt, UniformPrompt
from gridpde.errors import CaseError
from gridpde.grid.mesh import Grid

GAUSS_POINTS = 6


def cell_averages(prompt: Prompt, grid: Grid, where: str = "prompt") -> tuple[np.ndarray, float]:
    """Cell averages rho_i of ``prompt`` on ``grid`` and the mass outside the box.

    Args:
        prompt: a token distribution (a probability measure).
        grid: the box and its cells.
        where: the prompt's key in the case file, for error messages.

    Returns:
        (rho, outside): rho of shape ``grid.shape`` (mass per volume) and
        1 - sum(rho) * cell volume, the mass of the prompt outside the box.
    """
    if isinstance(prompt, GaussianPrompt):
        rho = gaussian_cell_averages(grid, prompt.mean, prompt.cov)
    elif isinstance(prompt, MixturePrompt):
        rho = sum(
            w * gaussian_cell_averages(grid, m, c)
            for w, m, c in zip(prompt.weights, prompt.means, prompt.covs)
        )
    elif isinstance(prompt, UniformPrompt):
        rho = uniform_cell_averages(grid, prompt.lower, prompt.upper)
    elif isinstance(prompt, TokensPrompt):
        rho = _deposit_tokens(grid, prompt.points, prompt.weights, where)
    else:  # pragma: no cover - the case reader admits no other kind
        raise TypeError(f"unknown prompt {prompt!r}")
    outside = 1.0 - grid.mass(rho)
    return rho, max(outside, 0.0)


def gaussian_cell_averages(grid: Grid, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Cell averages of the normal density N(mean, cov) on ``grid``."""
    mean = np.asarray(mean, float)
    cov = np.asarray(cov, float)
    if np.count_nonzero(cov - np.diag(np.diag(cov))) == 0:
        factors = []
        for a in range(grid.dim):
            e = (grid.edges(a) - mean[a]) / np.sqrt(cov[a, a])
            factors.append(np.diff(ndtr(e)) / grid.dx[a])
        return _outer(factors)
    return _gauss_legendre_averages(grid, lambda x: normal_pdf(x, mean, cov))


def _outer(factors: list[np.ndarray]) -> np.ndarray:
    out = factors[0]
    for f in factors[1:]:
        out = np.multiply.outer(out, f)
    return out


def normal_pdf(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """N(mean, cov) density at points x of shape (..., d)."""
    d = mean.size
    chol = np.linalg.cholesky(cov)
    r = np.linalg.solve(chol, (x - mean).reshape(-1, d).T)
    q = np.sum(r * r, axis=0).reshape(x.shape[:-1])
    norm = (2 * np.pi) ** (d / 2) * np.prod(np.diag(chol))
    return np.exp(-0.5 * q) / norm


def _gauss_legendre_averages(grid: Grid, pdf) -> np.ndarray:
    """Cell averages of ``pdf`` by a tensor Gauss-Legendre rule in every cell."""
    nodes, weights = np.polynomial.legendre.leggauss(GAUSS_POINTS)
    nodes, weights = nodes / 2, weights / 2  # on [-1/2, 1/2], weights sum to 1
    rho = np.zeros(grid.shape)
    centres = np.meshgrid(*(grid.centres(a) for a in range(grid.dim)), indexing="ij")
    base = np.stack(centres, axis=-1)
    for idx in np.ndindex(*(GAUSS_POINTS,) * grid.dim):
        offset = np.array([nodes[i] for i in idx]) * grid.dx
        rho += np.prod([weights[i] for i in idx]) * pdf(base + offset)
    return rho


def uniform_cell_averages(grid: Grid, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    factors = []
    for a in range(grid.dim):
        e = grid.edges(a)
        overlap = np.clip(np.minimum(e[1:], upper[a]) - np.maximum(e[:-1], lower[a]), 0, None)
        factors.append(overlap / grid.dx[a] / (upper[a] - lower[a]))
    return _outer(factors)


def _deposit_tokens(grid: Grid, points: np.ndarray, weights: np.ndarray, where: str) -> np.ndarray:
    lo, hi = np.asarray(grid.lower), np.asarray(grid.upper)
    bad = np.flatnonzero(np.any((points < lo) | (points > hi), axis=1))
    if bad.size:
        k = int(bad[0])
        msg = (
            f"{where}.points[{k}] = {points[k].tolist()}: outside the grid box "
            f"[{list(grid.lower)}, {list(grid.upper)}]; enlarge [grid] or move the token"
        )
        raise CaseError(msg)
    rho = np.zeros(grid.shape)
    # position in units of cells, measured from the first cell centre
    u = (points - lo) / grid.dx - 0.5
    i0 = np.floor(u).astype(int)
    frac = u - i0
    n = np.asarray(grid.cells)
    for corner in np.ndindex(*(2,) * grid.dim):
        c = np.asarray(corner)
        idx = i0 + c
        share = np.prod(np.where(c == 1, frac, 1 - frac), axis=1) * weights
        # a token within half a cell of a wall puts all its weight in the wall cell
        idx = np.clip(idx, 0, n - 1)
        np.add.at(rho, tuple(idx.T), share)
    return rho / grid.cell_volume
