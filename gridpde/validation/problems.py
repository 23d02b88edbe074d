"""Gaussian test problems with non-trivial heads, and the grid error study.

Each problem has L = 2 layers of M = 2 heads whose value matrices rotate,
shear, contract and expand, so that the exact solution (a Gaussian whose
moments solve the ODEs of :mod:`gridpde.validation.gaussian`) moves, turns
and changes shape. The box is chosen from the exact solution to hold
``TAIL_SIGMAS`` standard deviations around the mean at every depth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gridpde.grid.forward import GridForward
from gridpde.grid.mesh import Grid
from gridpde.prompts import gaussian_cell_averages
from gridpde.validation.gaussian import gaussian_moments

TAIL_SIGMAS = 7.5


@dataclass(frozen=True)
class GaussianProblem:
    """A Gaussian prompt N(mean, cov) moved by heads (B, V) of shape (L, M, d, d)."""

    mean: np.ndarray
    cov: np.ndarray
    B: np.ndarray
    V: np.ndarray

    @property
    def dim(self) -> int:
        return self.mean.size

    def exact(self, depths=(1.0,)) -> tuple[np.ndarray, np.ndarray]:
        return gaussian_moments(self.mean, self.cov, self.B, self.V, np.asarray(depths))

    def box(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """A symmetric box holding TAIL_SIGMAS standard deviations at every depth."""
        means, covs = self.exact(np.linspace(0, 1, 41))
        sd = np.sqrt(np.einsum("sii->si", covs))
        half = np.max(np.abs(means) + TAIL_SIGMAS * sd, axis=0)
        half = np.ceil(half * 2) / 2
        return tuple(-half), tuple(half)

    def grid(self, n: int) -> Grid:
        lo, hi = self.box()
        return Grid(lo, hi, (n,) * self.dim)


def _rot(theta):
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s], [s, c]])


def gaussian_problem(dim: int) -> GaussianProblem:
    """The validation problem in ``dim`` dimensions (fixed numbers, no randomness)."""
    if dim == 1:
        B = np.array([[[[0.8]], [[0.5]]], [[[0.6]], [[-0.4]]]])
        V = np.array([[[[-0.9]], [[-0.6]]], [[[0.8]], [[-0.5]]]])  # contraction, then expansion
        return GaussianProblem(np.array([0.3]), np.array([[0.5]]), B, V)
    if dim == 2:
        B = np.array(
            [
                [0.5 * np.eye(2), [[0.4, 0.3], [0.0, 0.4]]],
                [[[0.3, 0.0], [0.4, 0.3]], [[-0.2, 0.2], [0.1, 0.4]]],
            ]
        )
        V = np.array(
            [
                [0.8 * _rot(np.pi / 2), [[-0.6, 0.0], [0.0, 0.5]]],  # rotation; contraction/expansion
                [[[0.5, 0.5], [0.0, -0.4]], [[0.3, 0.0], [-0.3, 0.3]]],  # shears
            ]
        )
        return GaussianProblem(np.array([0.4, -0.3]), np.array([[0.6, 0.15], [0.15, 0.45]]), B, V)
    if dim == 3:
        R = np.eye(3)
        R[:2, :2] = _rot(np.pi / 2)
        B = np.array(
            [
                [0.45 * np.eye(3), [[0.4, 0.2, 0.0], [0.0, 0.4, 0.1], [0.1, 0.0, 0.3]]],
                [[[0.3, 0.0, 0.1], [0.3, 0.3, 0.0], [0.0, 0.2, 0.4]], 0.3 * np.eye(3)],
            ]
        )
        V = np.array(
            [
                [0.7 * R, np.diag([-0.5, 0.4, 0.2])],
                [[[0.4, 0.4, 0.0], [0.0, -0.3, 0.2], [0.0, 0.0, 0.3]], [[0.2, 0.0, -0.3], [0.0, 0.2, 0.0], [0.3, 0.0, -0.2]]],
            ]
        )
        cov = np.array([[0.5, 0.1, 0.0], [0.1, 0.4, 0.05], [0.0, 0.05, 0.45]])
        return GaussianProblem(np.array([0.3, -0.2, 0.1]), cov, B, V)
    raise ValueError(f"dim = {dim}: expected 1, 2 or 3")


@dataclass
class Level:
    """Errors of one grid level at s = 1."""

    n: int
    h: float
    l1: float
    mean_err: float
    cov_err: float
    mass_balance: float
    min_ratio: float
    steps: int


def run_level(problem: GaussianProblem, n: int, limiter: str, time: str = "ssprk3",
              cfl: float = 0.4, quadrature: str = "deconvolved", attention: str = "exact",
              attention_tol: float = 1e-10) -> Level:
    """Solve ``problem`` on n cells per axis to s = 1 and measure its errors."""
    grid = problem.grid(n)
    rho0 = gaussian_cell_averages(grid, problem.mean, problem.cov)
    m0 = grid.mass(rho0)
    solver = GridForward(grid, problem.B, problem.V, limiter, time, cfl, quadrature, attention, attention_tol)
    rho, lost, steps = solver.solve(rho0, 0.0, 1.0)
    (m1,), (S1,) = problem.exact()
    exact = gaussian_cell_averages(grid, m1, S1)
    mass, mean, cov = grid.moments(rho)
    return Level(
        n=n,
        h=float(grid.dx.max()),
        l1=float(np.abs(rho - exact).sum() * grid.cell_volume),
        mean_err=float(np.abs(mean - m1).max()),
        cov_err=float(np.abs(cov - S1).max()),
        mass_balance=abs(mass + lost - m0) / m0,
        min_ratio=float(rho.min() / rho.max()),
        steps=steps,
    )


def fitted_order(h, err) -> float:
    """Least-squares slope of log(err) against log(h)."""
    return float(np.polyfit(np.log(h), np.log(err), 1)[0])
