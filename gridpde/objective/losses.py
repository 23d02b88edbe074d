"""Losses F(mu; tau) for grids and weighted tokens, with first variations.

docs/model.md section 3. A measure is one of two frozen dataclasses:

- :class:`GridMeasure` ``(grid, rho)``: cell averages rho (mass per volume)
  on a :class:`~gridpde.grid.mesh.Grid`. For every loss it is the discrete measure
  with mass ``rho * cell_volume`` at each cell centre (the midpoint rule the
  rest of the grid code uses). Its support points are the cell centres.
- :class:`TokenMeasure` ``(points, weights)``: sum_i w_i delta_{x_i}, points
  (n, d) and weights (n,). The points may also be given in the padded 3-D
  layout of the kernels, (n, 3) with zero leading columns
  (:func:`gridpde.heads.pad_points`); against a grid of dimension d < 3 those
  columns must be zero and are dropped, and gradients come back in the layout
  the points came in.

Masses need not be 1 (mass leaves the box). Every loss offers

    value(mu, tau) -> float                  F(mu; tau)
    first_variation(mu, tau) -> array        dF/dmu at mu's support points:
                                             shape rho.shape (grid) or (n,)
    grad_points(X, w, tau) -> (n, d)         w_i grad_x dF/dmu(X_i) = dF/dX_i,
                                             the particle adjoint's final value

The first variation is the derivative of F in the masses: for a grid,
F(rho + eps delta) = F(rho) + eps sum_i dF/dmu_i delta_i |cell| + O(eps^2);
for tokens, F(w + eps delta) = F(w) + eps sum_i dF/dmu_i delta_i + O(eps^2).

MMD (Gaussian kernel k(x, y) = exp(-|x - y|^2 / (2 sigma^2))):

    F = 1/2 ||mu - tau||_k^2,   dF/dmu = phi = K mu - K tau,   (K nu)(x) = ∫ k(x, y) dnu(y)

F is evaluated as 1/2 (∫ phi dmu - ∫ phi dtau), so it is exactly symmetric
in (mu, tau), exactly 0 for identical measures, and loses only about
sqrt(F) (not F) of its relative accuracy when mu is close to tau. On a tensor
grid the kernel is separable, K = K_1 (x) ... (x) K_d with n_a x n'_a factors,
so grid sums are chains of small matrix products (never an N x N matrix);
token sums are blocked numpy sums with O(block * n) memory.

Potential: F = ∫ U dmu with U(x) = 1/2 |x - c|^2, dF/dmu = U (tau unused).

:func:`gaussian_kernel_mean` and :func:`gaussian_mmd` are the closed forms of
docs/model.md section 7 used as references by tests and the validation suite.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gridpde.grid.mesh import Grid
from gridpde.measures import GridMeasure, Measure, TokenMeasure

__all__ = [
    "Labelled",
    "MMDLoss",
    "Objective",
    "PointLoss",
    "PotentialLoss",
    "gaussian_kernel_mean",
    "gaussian_mmd",
]

# entries of a (block, n) temporary in the blocked token sums
_BLOCK_ENTRIES = 1 << 20


# ---------------------------------------------------------------- kernel sums


def _gauss(x: np.ndarray, y: np.ndarray, sigma: float) -> np.ndarray:
    """exp(-(x_i - y_j)^2 / (2 sigma^2)) for 1-D x (p,), y (q,): (p, q)."""
    diff = x[:, None] - y[None, :]
    return np.exp(-(diff * diff) / (2.0 * sigma * sigma))


def _physical(points: np.ndarray, dim: int) -> np.ndarray:
    """Points as (n, dim): drops zero padding columns (layout of ``pad_points``)."""
    extra = points.shape[1] - dim
    if extra < 0:
        msg = f"tokens of dimension {points.shape[1]} cannot meet a {dim}-D grid"
        raise ValueError(msg)
    if extra and np.any(points[:, :extra] != 0.0):
        msg = (
            f"tokens (n, {points.shape[1]}) against a {dim}-D grid: the leading "
            f"{extra} column(s) must be zero padding"
        )
        raise ValueError(msg)
    return points[:, extra:]


def _grid_on_grid(masses: np.ndarray, src: Grid, tgt: Grid, sigma: float) -> np.ndarray:
    """(K nu)(c) at the centres c of ``tgt`` for masses on ``src``: tgt.shape."""
    A = masses
    for a in range(src.dim):
        Ka = _gauss(tgt.centres(a), src.centres(a), sigma)  # (n'_a, n_a)
        A = np.moveaxis(np.tensordot(Ka, A, axes=(1, a)), 0, a)
    return A


def _contract(T: np.ndarray, Ks: list[np.ndarray]) -> np.ndarray:
    """sum_{i_1..i_d} T[i_1, .., i_d] prod_a Ks[a][b, i_a] for every b: (b,)."""
    R = T @ Ks[-1].T  # (n_1, .., n_{d-1}, b): the only O(N b) step, a matmul
    for a in range(len(Ks) - 2, -1, -1):
        R = np.einsum("...jb,bj->...b", R, Ks[a])
    return R


def _grid_at_points(
    masses: np.ndarray, src: Grid, X: np.ndarray, sigma: float, moment: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """(K nu)(x) and, if ``moment``, ∫ y k(x, y) dnu(y) at points X (n, d)."""
    n, d = X.shape
    s0 = np.empty(n)
    s1 = np.empty((n, d)) if moment else None
    ys = [src.centres(a) for a in range(d)]
    block = max(1, _BLOCK_ENTRIES // max(1, masses.size // src.cells[-1]))
    for b0 in range(0, n, block):
        sl = slice(b0, b0 + block)
        Ks = [_gauss(X[sl, a], ys[a], sigma) for a in range(d)]
        s0[sl] = _contract(masses, Ks)
        if moment:
            for a in range(d):
                Ky = Ks.copy()
                Ky[a] = Ks[a] * ys[a]
                s1[sl, a] = _contract(masses, Ky)
    return s0, s1


def _points_on_grid(Y: np.ndarray, v: np.ndarray, tgt: Grid, sigma: float) -> np.ndarray:
    """(K nu)(c) at the centres c of ``tgt`` for nu = sum_k v_k delta_{y_k}."""
    d = tgt.dim
    xs = [tgt.centres(a) for a in range(d)]
    out = np.zeros(tgt.shape)
    lead = int(np.prod(tgt.cells[:-1])) if d > 1 else tgt.cells[0]  # rows of the temporary
    block = max(1, _BLOCK_ENTRIES // lead)
    for b0 in range(0, Y.shape[0], block):
        sl = slice(b0, b0 + block)
        Ks = [_gauss(xs[a], Y[sl, a], sigma) for a in range(d)]  # (n_a, b)
        if d == 1:
            out += Ks[0] @ v[sl]
            continue
        R = Ks[0] * v[sl]
        for a in range(1, d - 1):
            R = R[..., None, :] * Ks[a]  # Khatri-Rao product (n_1, .., n_a, b)
        out += (R.reshape(-1, R.shape[-1]) @ Ks[-1].T).reshape(tgt.shape)
    return out


def _points_at_points(
    X: np.ndarray, Y: np.ndarray, v: np.ndarray, sigma: float, moment: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """sum_k v_k k(x, y_k) and, if ``moment``, sum_k v_k y_k k(x, y_k) at X."""
    n, d = X.shape
    s0 = np.empty(n)
    s1 = np.empty((n, d)) if moment else None
    vy = Y * v[:, None]
    block = max(1, _BLOCK_ENTRIES // max(1, Y.shape[0]))
    for b0 in range(0, n, block):
        sl = slice(b0, b0 + block)
        d2 = np.zeros((X[sl].shape[0], Y.shape[0]))
        for a in range(d):  # coordinate differences: no |x|^2 + |y|^2 - 2 x.y cancellation
            diff = X[sl, a, None] - Y[None, :, a]
            d2 += diff * diff
        K = np.exp(d2 * (-0.5 / (sigma * sigma)))
        s0[sl] = K @ v
        if moment:
            s1[sl] = K @ vy
    return s0, s1


def _common_dim(mu: Measure, tau: Measure) -> None:
    if isinstance(mu, GridMeasure) and isinstance(tau, GridMeasure) and mu.dim != tau.dim:
        raise ValueError(f"grids of dimension {mu.dim} and {tau.dim} cannot be compared")


def _check_measure(name: str, m) -> None:
    if not isinstance(m, (GridMeasure, TokenMeasure)):
        raise TypeError(f"{name} must be a GridMeasure or a TokenMeasure, got {type(m).__name__}")


def _potential_at(nu: Measure, at: Measure, sigma: float) -> np.ndarray:
    """(K nu) at the support points of ``at``: at.rho.shape or (n,)."""
    if isinstance(at, GridMeasure):
        if isinstance(nu, GridMeasure):
            return _grid_on_grid(nu.masses, nu.grid, at.grid, sigma)
        return _points_on_grid(_physical(nu.points, at.dim), nu.weights, at.grid, sigma)
    if isinstance(nu, GridMeasure):
        return _grid_at_points(nu.masses, nu.grid, _physical(at.points, nu.dim), sigma, False)[0]
    X, Y = at.points, nu.points
    if X.shape[1] != Y.shape[1]:  # one side padded: compare in the smaller width
        dmin = min(X.shape[1], Y.shape[1])
        X, Y = _physical(X, dmin), _physical(Y, dmin)
    return _points_at_points(X, Y, nu.weights, sigma, False)[0]


def _support_masses(mu: Measure) -> np.ndarray:
    return mu.masses if isinstance(mu, GridMeasure) else mu.weights


# ---------------------------------------------------------------- losses


class MMDLoss:
    """F(mu; tau) = 1/2 ||mu - tau||_k^2 with k(x, y) = exp(-|x - y|^2 / (2 sigma^2)).

    Args:
        sigma: kernel width sigma > 0.
    """

    def __init__(self, sigma: float):
        sigma = float(sigma)
        if not sigma > 0.0 or not np.isfinite(sigma):
            raise ValueError(f"MMD kernel width sigma = {sigma}: expected a finite number > 0")
        self.sigma = sigma

    def __repr__(self) -> str:
        return f"MMDLoss(sigma={self.sigma!r})"

    def first_variation(self, mu: Measure, tau: Measure) -> np.ndarray:
        """phi = K mu - K tau at mu's support points (rho.shape or (n,))."""
        _check_measure("mu", mu)
        _check_measure("tau", tau)
        _common_dim(mu, tau)
        if isinstance(mu, GridMeasure) and isinstance(tau, GridMeasure) and mu.grid == tau.grid:
            return _grid_on_grid(mu.masses - tau.masses, mu.grid, mu.grid, self.sigma)
        return _potential_at(mu, mu, self.sigma) - _potential_at(tau, mu, self.sigma)

    def value(self, mu: Measure, tau: Measure) -> float:
        """F = 1/2 (∫ phi dmu - ∫ phi dtau), phi = K (mu - tau)."""
        _check_measure("mu", mu)
        _check_measure("tau", tau)
        _common_dim(mu, tau)
        if isinstance(mu, GridMeasure) and isinstance(tau, GridMeasure) and mu.grid == tau.grid:
            diff = mu.masses - tau.masses
            phi = _grid_on_grid(diff, mu.grid, mu.grid, self.sigma)
            return 0.5 * float(np.vdot(diff, phi))
        a = float(np.vdot(_support_masses(mu), self.first_variation(mu, tau)))
        b = float(np.vdot(_support_masses(tau), self.first_variation(tau, mu)))
        return 0.5 * (a + b)

    def grad_points(self, X: np.ndarray, w: np.ndarray, tau: Measure) -> np.ndarray:
        """dF/dX_i = w_i grad phi(X_i) for mu = sum_i w_i delta_{X_i}: shape of X.

        grad phi(x) = -(1/sigma^2) ∫ (x - y) k(x, y) d(mu - tau)(y).
        """
        mu = TokenMeasure(X, w)
        _check_measure("tau", tau)
        X, w = mu.points, mu.weights
        if isinstance(tau, GridMeasure):
            Xp = _physical(X, tau.dim)
            a0, a1 = _points_at_points(Xp, Xp, w, self.sigma, True)
            b0, b1 = _grid_at_points(tau.masses, tau.grid, Xp, self.sigma, True)
        else:
            Y = tau.points
            dmin = min(X.shape[1], Y.shape[1])
            Xp, Y = _physical(X, dmin), _physical(Y, dmin)
            a0, a1 = _points_at_points(Xp, Xp, w, self.sigma, True)
            b0, b1 = _points_at_points(Xp, Y, tau.weights, self.sigma, True)
        grad = -(Xp * (a0 - b0)[:, None] - (a1 - b1)) / (self.sigma * self.sigma)
        out = np.zeros_like(X)
        out[:, X.shape[1] - Xp.shape[1] :] = w[:, None] * grad
        return out


class PotentialLoss:
    """F(mu) = ∫ U dmu with U(x) = 1/2 |x - c|^2; tau is not used.

    Args:
        centre: c, a d-vector.
    """

    def __init__(self, centre):
        c = np.atleast_1d(np.asarray(centre, dtype=np.float64))
        if c.ndim != 1 or not 1 <= c.size <= 3 or not np.all(np.isfinite(c)):
            raise ValueError(f"potential centre {centre!r}: expected a finite d-vector, 1 <= d <= 3")
        self.centre = c

    def __repr__(self) -> str:
        return f"PotentialLoss(centre={self.centre.tolist()!r})"

    def _centre(self, width: int) -> np.ndarray:
        """c in a layout of ``width`` coordinates (padded with leading zeros)."""
        d = self.centre.size
        if width < d:
            raise ValueError(f"a {width}-D measure cannot meet a {d}-D potential centre")
        c = np.zeros(width)
        c[width - d :] = self.centre
        return c

    def potential(self, mu: Measure) -> np.ndarray:
        """U at mu's support points: rho.shape or (n,)."""
        _check_measure("mu", mu)
        if isinstance(mu, GridMeasure):
            if mu.dim != self.centre.size:
                raise ValueError(f"a {mu.dim}-D grid cannot meet a {self.centre.size}-D centre")
            U = np.zeros(mu.grid.shape)
            for a in range(mu.dim):
                shape = [1] * mu.dim
                shape[a] = -1
                U = U + 0.5 * ((mu.grid.centres(a) - self.centre[a]) ** 2).reshape(shape)
            return U
        r = mu.points - self._centre(mu.dim)
        return 0.5 * np.einsum("ia,ia->i", r, r)

    def value(self, mu: Measure, tau: Measure | None = None) -> float:
        return float(np.vdot(_support_masses(mu), self.potential(mu)))

    def first_variation(self, mu: Measure, tau: Measure | None = None) -> np.ndarray:
        return self.potential(mu)

    def grad_points(self, X: np.ndarray, w: np.ndarray, tau: Measure | None = None) -> np.ndarray:
        """dF/dX_i = w_i (X_i - c): shape of X."""
        mu = TokenMeasure(X, w)
        return mu.weights[:, None] * (mu.points - self._centre(mu.dim))


# ---------------------------------------------------------------- losses of tracked points


@dataclass(frozen=True, eq=False)
class Labelled:
    """Tracked points a point loss reads: ``rows`` of the method's point array, their weights
    (summing to 1), labels (n, c), and the coordinates compared with the labels (None: all)."""

    rows: slice
    weights: np.ndarray
    labels: np.ndarray
    coords: tuple[int, ...] | None = None


class PointLoss:
    """F = sum_i w_i |P X_i - y_i|^2 over labelled points: the readout (P selects coordinates) and
    the flow-map risk (P = I, y_i = T(X_i(0))). ``name`` says which set of tracked points it reads."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"PointLoss({self.name!r})"

    @staticmethod
    def _residual(X: np.ndarray, lab: Labelled) -> np.ndarray:
        Xs = X[lab.rows]
        cols = list(lab.coords) if lab.coords is not None else slice(None)
        return Xs[:, cols] - lab.labels

    def value(self, X: np.ndarray, lab: Labelled) -> float:
        r = self._residual(X, lab)
        return float(lab.weights @ np.einsum("ic,ic->i", r, r))

    def grad(self, X: np.ndarray, lab: Labelled) -> np.ndarray:
        """dF/dX: shape of X (zero outside ``lab.rows`` and the compared coordinates)."""
        g = np.zeros_like(X)
        cols = list(lab.coords) if lab.coords is not None else slice(None)
        block = np.zeros_like(X[lab.rows])
        block[:, cols] = 2.0 * lab.weights[:, None] * self._residual(X, lab)
        g[lab.rows] = block
        return g


class Objective:
    """F = sum_k c_k F_k: terms on the output measure (:class:`MMDLoss`, :class:`PotentialLoss`) and
    on tracked points (:class:`PointLoss`), each with its factor c_k.

    The methods evaluate it through ``value(mu, tau, X, labelled)`` and take its derivatives
    piece by piece: :meth:`first_variation` / :meth:`grad_points` of the measure terms (None if
    there are none) and :meth:`point_grad` of the point terms (None likewise). ``labelled`` maps a
    point loss's name to its :class:`Labelled` rows of the point array X.
    """

    def __init__(self, measure_terms: list, point_terms: list):
        self.measure_terms = list(measure_terms)
        self.point_terms = list(point_terms)

    def __repr__(self) -> str:
        return f"Objective({self.measure_terms + self.point_terms!r})"

    def value(self, mu: Measure, tau: Measure | None, X: np.ndarray | None, labelled: dict | None) -> float:
        total = sum(c * loss.value(mu, tau) for c, loss in self.measure_terms)
        return float(total + sum(c * loss.value(X, labelled[loss.name]) for c, loss in self.point_terms))

    def first_variation(self, mu: Measure, tau: Measure | None):
        if not self.measure_terms:
            return None
        return sum(c * loss.first_variation(mu, tau) for c, loss in self.measure_terms)

    def grad_points(self, X: np.ndarray, w: np.ndarray, tau: Measure | None):
        if not self.measure_terms:
            return None
        return sum(c * loss.grad_points(X, w, tau) for c, loss in self.measure_terms)

    def point_grad(self, X: np.ndarray | None, labelled: dict | None):
        if not self.point_terms:
            return None
        return sum(c * loss.grad(X, labelled[loss.name]) for c, loss in self.point_terms)


# ---------------------------------------------------------------- Gaussian closed forms


def _gaussian_args(m1, S1, m2, S2, sigma):
    m1 = np.atleast_1d(np.asarray(m1, dtype=np.float64))
    m2 = np.atleast_1d(np.asarray(m2, dtype=np.float64))
    d = m1.size
    S1 = np.asarray(S1, dtype=np.float64).reshape(d, d)
    S2 = np.asarray(S2, dtype=np.float64).reshape(d, d)
    if m2.shape != (d,):
        raise ValueError(f"means of different dimension: {m1.shape} and {m2.shape}")
    if not sigma > 0.0:
        raise ValueError(f"kernel width sigma = {sigma}: expected > 0")
    return m1, S1, m2, S2, float(sigma)


def gaussian_kernel_mean(m1, S1, m2, S2, sigma: float) -> float:
    """E k(x, y) for independent x ~ N(m1, S1), y ~ N(m2, S2).

    = sigma^d det(A)^(-1/2) exp(-1/2 (m1 - m2)^T A^(-1) (m1 - m2)),
    A = sigma^2 I + S1 + S2 (docs/model.md section 7). S1, S2 may be singular
    (S = 0 is a Dirac).
    """
    m1, S1, m2, S2, sigma = _gaussian_args(m1, S1, m2, S2, sigma)
    d = m1.size
    A = sigma * sigma * np.eye(d) + S1 + S2
    L = np.linalg.cholesky(A)
    r = np.linalg.solve(L, m1 - m2)
    logdet = 2.0 * np.sum(np.log(np.diag(L)))
    return float(np.exp(d * np.log(sigma) - 0.5 * logdet - 0.5 * (r @ r)))


def gaussian_mmd(m1, S1, m2, S2, sigma: float) -> float:
    """F = 1/2 ||N(m1, S1) - N(m2, S2)||_k^2 = 1/2 (E k(mu,mu) - 2 E k(mu,tau) + E k(tau,tau))."""
    m1, S1, m2, S2, sigma = _gaussian_args(m1, S1, m2, S2, sigma)
    return 0.5 * (
        gaussian_kernel_mean(m1, S1, m1, S1, sigma)
        - 2.0 * gaussian_kernel_mean(m1, S1, m2, S2, sigma)
        + gaussian_kernel_mean(m2, S2, m2, S2, sigma)
    )
