"""Measures: what losses and diagnostics read from a state, for both methods.

- :class:`GridMeasure` ``(grid, rho)``: cell averages rho (mass per volume)
  on a :class:`~gridpde.grid.mesh.Grid`. For every loss it is the discrete
  measure with mass ``rho * cell_volume`` at each cell centre (the midpoint
  rule the rest of the grid code uses). Its support points are the cell
  centres; :meth:`GridMeasure.tokens` gives them as weighted tokens.
- :class:`TokenMeasure` ``(points, weights)``: sum_i w_i delta_{x_i}, points
  (n, d) and weights (n,). The points may also be given in the padded 3-D
  layout of the kernels, (n, 3) with zero leading columns
  (:func:`gridpde.heads.pad_points`). :meth:`TokenMeasure.normalised` is the
  probability measure the NTK diagnostics use.

Masses need not be 1 (mass leaves the box).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gridpde.grid.mesh import Grid

@dataclass(frozen=True)
class GridMeasure:
    """Cell averages ``rho`` (shape ``grid.shape``) on ``grid``.

    Attributes:
        grid: the box and its cells.
        rho: cell averages (mass per volume); the measure puts mass
            rho_i |cell| at centre i.
    """

    grid: Grid
    rho: np.ndarray

    def __post_init__(self):
        if not isinstance(self.grid, Grid):
            raise TypeError(f"GridMeasure.grid must be a Grid, got {type(self.grid).__name__}")
        rho = np.asarray(self.rho, dtype=np.float64)
        if rho.shape != self.grid.shape:
            msg = f"GridMeasure.rho has shape {rho.shape}, expected the grid's {self.grid.shape}"
            raise ValueError(msg)
        object.__setattr__(self, "rho", rho)

    @property
    def dim(self) -> int:
        return self.grid.dim

    @property
    def masses(self) -> np.ndarray:
        """rho * |cell|: the mass at each cell centre."""
        return self.rho * self.grid.cell_volume

    def tokens(self) -> TokenMeasure:
        """The cell centres with masses rho_i |cell| (negative round-off clipped), normalised."""
        X = self.grid.cell_centres().reshape(-1, self.grid.dim)
        return TokenMeasure(X, np.clip(self.masses.ravel(), 0.0, None)).normalised()


@dataclass(frozen=True)
class TokenMeasure:
    """Weighted tokens sum_i w_i delta_{x_i}.

    Attributes:
        points: (n, d) token positions x_i (d <= 3; padded (n, 3) allowed).
        weights: (n,) weights w_i (any sign is accepted; prompts have w >= 0).
    """

    points: np.ndarray
    weights: np.ndarray

    def __post_init__(self):
        X = np.asarray(self.points, dtype=np.float64)
        w = np.asarray(self.weights, dtype=np.float64)
        if X.ndim != 2 or not 1 <= X.shape[1] <= 3:
            raise ValueError(f"TokenMeasure.points must be (n, d) with 1 <= d <= 3, got {X.shape}")
        if w.shape != (X.shape[0],):
            msg = f"TokenMeasure.weights has shape {w.shape}, expected ({X.shape[0]},)"
            raise ValueError(msg)
        object.__setattr__(self, "points", X)
        object.__setattr__(self, "weights", w)

    @property
    def dim(self) -> int:
        return self.points.shape[1]

    @property
    def size(self) -> int:
        return self.points.shape[0]

    def normalised(self) -> TokenMeasure:
        """The probability measure: zero weights dropped, the rest scaled to sum 1.

        Raises:
            ValueError: non-finite points, a negative weight, or no positive weight.
        """
        X, w = self.points, self.weights
        if not np.all(np.isfinite(X)) or not np.all(w >= 0.0) or not w.sum() > 0.0:
            raise ValueError("tokens need finite points and weights w >= 0 with a positive sum")
        keep = w > 0.0
        return TokenMeasure(np.ascontiguousarray(X[keep]), w[keep] / w[keep].sum())


Measure = GridMeasure | TokenMeasure
