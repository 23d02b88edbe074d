"""Uniform Cartesian grids in 1, 2 and 3 dimensions.

Densities are stored as cell averages rho_i (mass per volume) in arrays of
shape ``cells``. The kernels work on a padded 3-D view: a d-dimensional grid
is seen as (1, ..., n_1, ..., n_d) with the physical axes last, so one
compiled kernel serves every dimension.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class Grid:
    """A box [lower, upper] split into ``cells`` equal cells per axis."""

    lower: tuple[float, ...]
    upper: tuple[float, ...]
    cells: tuple[int, ...]

    @property
    def dim(self) -> int:
        return len(self.cells)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.cells)

    @property
    def padded_shape(self) -> tuple[int, int, int]:
        """The 3-D shape the kernels see: leading axes of length 1."""
        return (1,) * (3 - self.dim) + tuple(self.cells)

    @cached_property
    def dx(self) -> np.ndarray:
        return (np.asarray(self.upper, float) - np.asarray(self.lower, float)) / np.asarray(
            self.cells
        )

    @property
    def cell_volume(self) -> float:
        return float(np.prod(self.dx))

    def centres(self, axis: int) -> np.ndarray:
        """Cell centres along ``axis``: (n_axis,)."""
        n = self.cells[axis]
        return self.lower[axis] + (np.arange(n) + 0.5) * self.dx[axis]

    def cell_centres(self) -> np.ndarray:
        """Every cell centre: (n_1, ..., n_d, d)."""
        mesh = np.meshgrid(*(self.centres(a) for a in range(self.dim)), indexing="ij")
        return np.stack(mesh, axis=-1)

    def edges(self, axis: int) -> np.ndarray:
        """Cell faces along ``axis``: (n_axis + 1,), both box walls included."""
        n = self.cells[axis]
        return self.lower[axis] + np.arange(n + 1) * self.dx[axis]

    def padded_centres(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Centres per padded axis; a padded axis has the single coordinate 0."""
        pad = (np.zeros(1),) * (3 - self.dim)
        return pad + tuple(self.centres(a) for a in range(self.dim))

    def face_points(self, axis: int) -> np.ndarray:
        """Centres of the faces normal to ``axis``, padded to 3 coordinates.

        Returns (F, 3) with the faces in C order of the face array shape
        (cells with n_axis + 1 along ``axis``).
        """
        axes = [self.centres(a) for a in range(self.dim)]
        axes[axis] = self.edges(axis)
        mesh = np.meshgrid(*axes, indexing="ij")
        pts = np.zeros((mesh[0].size, 3))
        for a in range(self.dim):
            pts[:, 3 - self.dim + a] = mesh[a].ravel()
        return pts

    def face_shape(self, axis: int) -> tuple[int, ...]:
        shape = list(self.cells)
        shape[axis] += 1
        return tuple(shape)

    def mass(self, rho: np.ndarray) -> float:
        return float(rho.sum() * self.cell_volume)

    def moments(self, rho: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """Mass, mean and covariance of the density whose cell averages are ``rho``.

        Sums over cell centres (midpoint rule on cell averages). The
        covariance carries Sheppard's correction -dx_a^2/12 on the diagonal:
        the midpoint sum of cell averages of a smooth density has covariance
        S + diag(dx^2)/12, so the correction removes the O(h^2) bias.
        """
        d = self.dim
        w = rho * self.cell_volume
        mass = float(w.sum())
        mean = np.empty(d)
        cov = np.empty((d, d))
        if mass <= 0.0:
            mean.fill(np.nan)
            cov.fill(np.nan)
            return mass, mean, cov
        marg = []
        for a in range(d):
            other = tuple(b for b in range(d) if b != a)
            marg.append(w.sum(axis=other) if other else w)
        xs = [self.centres(a) for a in range(d)]
        for a in range(d):
            mean[a] = marg[a] @ xs[a] / mass
        for a in range(d):
            for b in range(a, d):
                if a == b:
                    c = marg[a] @ (xs[a] - mean[a]) ** 2 / mass - self.dx[a] ** 2 / 12
                else:
                    other = tuple(e for e in range(d) if e not in (a, b))
                    m2 = w.sum(axis=other) if other else w
                    c = (xs[a] - mean[a]) @ m2 @ (xs[b] - mean[b]) / mass
                cov[a, b] = cov[b, a] = c
        return mass, mean, cov
