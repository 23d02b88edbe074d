"""Prompts: the token distributions mu^p a case starts from, with what each kind can do.

Every kind is a frozen dataclass, validated when built (in Python as
strictly as in a case file) and stored as read-only float64 arrays. Each
one knows how to become

- grid cell averages (:meth:`cell_averages`): exact where a closed form
  exists (erf products for Gaussians and mixtures with diagonal covariance,
  overlap fractions for boxes), otherwise a tensor Gauss-Legendre rule with
  q = ``GAUSS_POINTS`` points per axis and cell (error ~ (h/sigma)^(2q) / (2q)!,
  below 1e-15 for h <= sigma), and proportionally more for cells wider than
  the narrowest sd sigma (:func:`gauss_points`, so the error stays below
  1e-12 even on a 2 x 2 grid over a narrow prompt); tokens are deposited cloud-in-cell (each
  point's weight shared linearly between the 2^d nearest cell centres;
  conservative, exact for the mean);
- weighted tokens for the particle method (:meth:`tokens`): ``sample`` (n
  seeded i.i.d. draws, weights 1/n: a Monte Carlo error) or ``quadrature``
  (q = round(n^(1/d)) points per axis at the cell centres of a box covering
  the prompt, mean +- ``QUADRATURE_SIGMAS`` sd per component (``[solver] quadrature_sigmas``) or the uniform
  box itself, weighted by the density at the centres or by exact cell
  averages; spectrally accurate for smooth prompts); a ``tokens`` prompt is
  used as given;
- Gauss-rule tokens (:meth:`gauss_tokens`): tensor Gauss-Hermite nodes per
  Gaussian component, Gauss-Legendre for boxes, q per axis (the NTK
  diagnostics' quadrature of Lambda_mu).

Mass of the prompt outside a grid's box is not dropped: :func:`cell_averages`
returns it as ``outside`` (recorded as mass that left the box at s = 0).
Mixture and token weights are normalised to sum 1 when built (the measure
is a probability); their scale is divided out first, so that weights as
large as 1e308 do not overflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.special import ndtr

from gridpde.errors import CaseError
from gridpde.grid.mesh import Grid

GAUSS_POINTS = 6
MAX_GAUSS_POINTS = 96
QUADRATURE_SIGMAS = 8.0
TokenInit = Literal["quadrature", "sample"]


def _frozen(a) -> np.ndarray:
    a = np.array(a, dtype=np.float64)
    a.setflags(write=False)
    return a


def spd_problem(cov: np.ndarray) -> str:
    """"" if ``cov`` is a symmetric (rel. 1e-12) positive definite matrix, else what is wrong."""
    if not np.all(np.isfinite(cov)):
        return "finite numbers"
    if np.max(np.abs(cov - cov.T)) > 1e-12 * np.max(np.abs(cov)):
        return "a symmetric matrix (relative tolerance 1e-12)"
    try:
        np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        return "a positive definite covariance matrix"
    return ""


#: token weights below this fraction of the largest are set to 0: they carry no mass in float64 sums, and as
#: the only term of an attention normaliser (the largest score on a tiny weight) they would make it denormal
#: (the direct attention kernels drop such sources alike: ``gridpde.attention.direct.WEIGHT_FLOOR``)
WEIGHT_FLOOR = 1e-300


def normalised_weights(w: np.ndarray, positive: bool) -> np.ndarray:
    """w / sum(w) computed without overflow; ValueError unless w > 0 (or >= 0) with a positive sum.

    Non-negative weights (tokens) below ``WEIGHT_FLOOR`` times the largest become 0.
    """
    w = np.asarray(w, dtype=np.float64)
    ok = np.all(np.isfinite(w)) and (np.all(w > 0) if positive else np.all(w >= 0)) and np.any(w > 0)
    if not ok:
        raise ValueError("positive numbers" if positive else "non-negative numbers with a positive sum")
    w = w / w.max()
    if not positive:
        w = np.where(w >= WEIGHT_FLOOR, w, 0.0)
    return w / w.sum()


def _points_and_weights(points, weights, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Finite points (n, d) (a flat list: 1-D) and weights >= 0 normalised to sum 1 (default equal)."""
    X = np.array(points, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2 or X.shape[0] < 1 or not np.all(np.isfinite(X)):
        raise ValueError(f"{name}.points: expected finite (n, d), got shape {np.shape(points)}")
    _check_dim(X.shape[1], f"{name}.points")
    n = X.shape[0]
    w = np.full(n, 1.0 / n) if weights is None else np.array(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"{name}.weights: expected shape ({n},), got {w.shape}")
    try:
        return X, normalised_weights(w, positive=False)
    except ValueError as exc:
        raise ValueError(f"{name}.weights: expected {exc}") from None


def _check_dim(d: int, what: str) -> None:
    if not 1 <= d <= 3:
        raise ValueError(f"{what}: the token dimension must be 1, 2 or 3, got {d}")


class _Gaussians:
    """Behaviour shared by a Gaussian and a Gaussian mixture (as components)."""

    def components(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    @property
    def dim(self) -> int:
        return self.components()[1].shape[1]

    def cell_averages(self, grid: Grid, where: str = "prompt") -> np.ndarray:
        weights, means, covs = self.components()
        return sum(c * gaussian_cell_averages(grid, m, S) for c, m, S in zip(weights, means, covs))

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        weights, means, covs = self.components()
        which = rng.choice(len(weights), size=n, p=weights)
        z = rng.standard_normal((n, means.shape[1]))
        chol = np.linalg.cholesky(covs)
        return means[which] + np.einsum("nab,nb->na", chol[which], z), np.full(n, 1.0 / n)

    def quadrature(self, n: int, sigmas: float = QUADRATURE_SIGMAS) -> tuple[np.ndarray, np.ndarray]:
        weights, means, covs = self.components()
        d = means.shape[1]
        sd = np.sqrt(np.einsum("cii->ci", covs))
        lo = np.min(means - sigmas * sd, axis=0)
        hi = np.max(means + sigmas * sd, axis=0)
        grid = Grid(tuple(lo), tuple(hi), (max(1, round(n ** (1 / d))),) * d)
        X = grid.cell_centres()
        w = sum(c * normal_pdf(X, m, S) for c, m, S in zip(weights, means, covs))
        return _keep_positive(X, w)

    def gauss_tokens(self, q: int) -> tuple[np.ndarray, np.ndarray]:
        y, v = np.polynomial.hermite_e.hermegauss(q)
        Xs, ws = [], []
        for c, m, S in zip(*self.components()):
            Y, W = _tensor_rule(y, v, m.size)
            Xs.append(m + Y @ np.linalg.cholesky(S).T)
            ws.append(c * W / W.sum())
        return np.concatenate(Xs), np.concatenate(ws)


class _PromptMethods:
    def tokens(self, n: int, init: TokenInit = "quadrature", seed: int = 0,
               sigmas: float = QUADRATURE_SIGMAS) -> tuple[np.ndarray, np.ndarray]:
        """Weighted tokens (X (n', d), w (n',)) representing the prompt (see the module docstring);
        ``sigmas``: the half-width of a Gaussian's quadrature box in standard deviations."""
        if init == "sample":
            return self.sample(n, np.random.default_rng(seed))
        return self.quadrature(n, sigmas) if isinstance(self, _Gaussians) else self.quadrature(n)


@dataclass(frozen=True, eq=False)
class GaussianPrompt(_Gaussians, _PromptMethods):
    """N(mean, cov): mean (d,), cov (d, d) symmetric positive definite."""

    mean: np.ndarray
    cov: np.ndarray
    kind: Literal["gaussian"] = "gaussian"

    def __post_init__(self):
        mean = _frozen(np.atleast_1d(self.mean))
        d = mean.size
        _check_dim(d, "GaussianPrompt.mean")
        cov = np.array(self.cov, dtype=np.float64).reshape(-1)
        if cov.size != d * d or mean.ndim != 1 or not np.all(np.isfinite(mean)):
            raise ValueError(f"GaussianPrompt: expected a finite mean (d,) and cov (d, d), got "
                             f"{np.shape(self.mean)} and {np.shape(self.cov)}")
        cov = cov.reshape(d, d)
        if problem := spd_problem(cov):
            raise ValueError(f"GaussianPrompt.cov: expected {problem}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "cov", _frozen(0.5 * (cov + cov.T)))

    def components(self):
        return np.ones(1), self.mean[None], self.cov[None]


@dataclass(frozen=True, eq=False)
class MixturePrompt(_Gaussians, _PromptMethods):
    """sum_c weights_c N(means_c, covs_c); weights > 0 (normalised to sum 1), covs SPD."""

    weights: np.ndarray
    means: np.ndarray
    covs: np.ndarray
    kind: Literal["mixture"] = "mixture"

    def __post_init__(self):
        try:
            w = normalised_weights(np.atleast_1d(self.weights), positive=True)
        except ValueError as exc:
            raise ValueError(f"MixturePrompt.weights: expected {exc}") from None
        c = w.size
        means = np.array(self.means, dtype=np.float64)
        if means.ndim == 1 and c == 1:
            means = means[None]
        if means.ndim != 2 or means.shape[0] != c or not np.all(np.isfinite(means)):
            raise ValueError(f"MixturePrompt.means: expected finite (c, d) with c = {c}, got {means.shape}")
        d = means.shape[1]
        _check_dim(d, "MixturePrompt.means")
        covs = np.array(self.covs, dtype=np.float64)
        if covs.size != c * d * d:
            raise ValueError(f"MixturePrompt.covs: expected (c, d, d) = {(c, d, d)}, got {covs.shape}")
        covs = covs.reshape(c, d, d)
        for j, S in enumerate(covs):
            if problem := spd_problem(S):
                raise ValueError(f"MixturePrompt.covs[{j}]: expected {problem}")
        object.__setattr__(self, "weights", _frozen(w))
        object.__setattr__(self, "means", _frozen(means))
        object.__setattr__(self, "covs", _frozen(0.5 * (covs + np.swapaxes(covs, 1, 2))))

    def components(self):
        return self.weights, self.means, self.covs


@dataclass(frozen=True, eq=False)
class UniformPrompt(_PromptMethods):
    """The uniform distribution on the box [lower, upper], upper > lower on every axis."""

    lower: np.ndarray
    upper: np.ndarray
    kind: Literal["uniform"] = "uniform"

    def __post_init__(self):
        lo, hi = _frozen(np.atleast_1d(self.lower)), _frozen(np.atleast_1d(self.upper))
        _check_dim(lo.size, "UniformPrompt.lower")
        if lo.shape != hi.shape or lo.ndim != 1 or not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            raise ValueError(f"UniformPrompt: expected finite lower and upper of one shape (d,), "
                             f"got {np.shape(self.lower)} and {np.shape(self.upper)}")
        if not np.all(hi > lo):
            raise ValueError("UniformPrompt.upper: expected upper > lower on every axis")
        object.__setattr__(self, "lower", lo)
        object.__setattr__(self, "upper", hi)

    @property
    def dim(self) -> int:
        return self.lower.size

    def cell_averages(self, grid: Grid, where: str = "prompt") -> np.ndarray:
        return uniform_cell_averages(grid, self.lower, self.upper)

    def sample(self, n: int, rng: np.random.Generator):
        return rng.uniform(self.lower, self.upper, size=(n, self.dim)), np.full(n, 1.0 / n)

    def quadrature(self, n: int):
        grid = Grid(tuple(self.lower), tuple(self.upper), (max(1, round(n ** (1 / self.dim))),) * self.dim)
        return _keep_positive(grid.cell_centres(), uniform_cell_averages(grid, self.lower, self.upper))

    def gauss_tokens(self, q: int):
        y, v = np.polynomial.legendre.leggauss(q)
        Y, W = _tensor_rule(y, v, self.dim)
        return self.lower + (Y + 1.0) / 2.0 * (self.upper - self.lower), W / W.sum()


@dataclass(frozen=True, eq=False)
class TokensPrompt(_PromptMethods):
    """Weighted tokens sum_i w_i delta_{x_i}: points (n, d), weights (n,) >= 0 (normalised to sum 1)."""

    points: np.ndarray
    weights: np.ndarray | None = None
    kind: Literal["tokens"] = "tokens"

    def __post_init__(self):
        X, w = _points_and_weights(self.points, self.weights, "TokensPrompt")
        object.__setattr__(self, "points", _frozen(X))
        object.__setattr__(self, "weights", _frozen(w))

    @property
    def dim(self) -> int:
        return self.points.shape[1]

    def cell_averages(self, grid: Grid, where: str = "prompt") -> np.ndarray:
        return _deposit_tokens(grid, self.points, self.weights, where)

    def tokens(self, n: int = 0, init: TokenInit = "quadrature", seed: int = 0, sigmas: float = QUADRATURE_SIGMAS):
        """The tokens as given (``n``, ``init``, ``seed`` and ``sigmas`` do not apply)."""
        return np.array(self.points), np.array(self.weights)

    def gauss_tokens(self, q: int = 0):
        return self.tokens()


@dataclass(frozen=True, eq=False)
class RegressionPrompt(_PromptMethods):
    """The law of (x, w·x + noise xi) in R^(k+1): features x uniform on [-scale, scale]^k, xi ~ N(0, 1).

    The context of in-context linear regression with uniform features
    (:mod:`gridpde.icl`); Gaussian features give a :class:`GaussianPrompt`.
    Cell averages integrate the label's normal law exactly (erf) and the
    features by Gauss-Legendre on each cell's overlap with the feature box;
    quadrature tokens are Gauss-Legendre in x times Gauss-Hermite in the
    label given x.
    """

    w: np.ndarray
    scale: float = 1.0
    noise: float = 0.1
    kind: Literal["regression"] = "regression"

    def __post_init__(self):
        w = _frozen(np.atleast_1d(self.w))
        if w.ndim != 1 or not 1 <= w.size <= 2 or not np.all(np.isfinite(w)):
            raise ValueError(f"RegressionPrompt.w: expected 1 or 2 finite numbers, got {np.shape(self.w)}")
        for name in ("scale", "noise"):
            v = float(getattr(self, name))
            if not (np.isfinite(v) and v > 0):
                raise ValueError(f"RegressionPrompt.{name}: expected a finite number > 0, got {v}")
            object.__setattr__(self, name, v)
        object.__setattr__(self, "w", w)

    @property
    def dim(self) -> int:
        return self.w.size + 1

    def cell_averages(self, grid: Grid, where: str = "prompt") -> np.ndarray:
        k, s, sig = self.w.size, self.scale, self.noise
        rules = []  # per feature axis: nodes (n_a, q) and weights (n_a, q) on the cell's overlap with the box
        for a in range(k):
            e = grid.edges(a)
            lo, hi = np.maximum(e[:-1], -s), np.minimum(e[1:], s)
            width = np.clip(hi - lo, 0.0, None)
            q = gauss_points(float(grid.dx[a]) * abs(self.w[a]), sig)
            t, v = np.polynomial.legendre.leggauss(q)
            rules.append(((lo + hi)[:, None] / 2 + width[:, None] / 2 * t, width[:, None] / 2 * v))
        ye = grid.edges(k)
        if k == 1:
            (x, wx), = rules
            cdf = ndtr((ye[None, None, :] - self.w[0] * x[..., None]) / sig)  # (n0, q, ny + 1)
            mass = np.einsum("iq,iqj->ij", wx, np.diff(cdf, axis=-1))
        else:
            (x0, w0), (x1, w1) = rules
            mass = np.empty(grid.shape)
            for i in range(grid.cells[0]):
                wx = self.w[0] * x0[i][:, None, None] + self.w[1] * x1[None, :, :]  # (q0, n1, q1)
                cdf = ndtr((ye - wx[..., None]) / sig)  # (q0, n1, q1, ny + 1)
                mass[i] = np.einsum("a,bq,abqj->bj", w0[i], w1, np.diff(cdf, axis=-1))
        return mass / (2 * s) ** k / grid.cell_volume

    def sample(self, n: int, rng: np.random.Generator):
        x = rng.uniform(-self.scale, self.scale, size=(n, self.w.size))
        y = x @ self.w + self.noise * rng.standard_normal(n)
        return np.column_stack([x, y]), np.full(n, 1.0 / n)

    def gauss_tokens(self, q: int):
        t, v = np.polynomial.legendre.leggauss(q)
        X, W = _tensor_rule(self.scale * t, v, self.w.size)
        h, u = np.polynomial.hermite_e.hermegauss(q)
        y = (X @ self.w)[:, None] + self.noise * h[None, :]
        pts = np.column_stack([np.repeat(X, q, axis=0), y.ravel()])
        wts = (W[:, None] * u[None, :]).ravel()
        return pts, wts / wts.sum()

    def quadrature(self, n: int):
        return self.gauss_tokens(max(1, round(n ** (1 / self.dim))))


Prompt = GaussianPrompt | MixturePrompt | UniformPrompt | TokensPrompt | RegressionPrompt


@dataclass(frozen=True, eq=False)
class Queries:
    """Query tokens of a prompt: points that move with the prompt's velocity field but carry no mass.

    points (n, d); weights (n,) >= 0, normalised to sum 1 (default: equal);
    labels (n, c) or None: what the readout loss compares the selected
    coordinates of the queries at s = 1 with.
    """

    points: np.ndarray
    weights: np.ndarray | None = None
    labels: np.ndarray | None = None

    def __post_init__(self):
        X, w = _points_and_weights(self.points, self.weights, "Queries")
        n = X.shape[0]
        labels = self.labels
        if labels is not None:
            labels = np.array(labels, dtype=np.float64)
            if labels.ndim == 1:
                labels = labels[:, None]
            if labels.ndim != 2 or labels.shape[0] != n or not np.all(np.isfinite(labels)):
                raise ValueError(f"Queries.labels: expected finite (n, c) with n = {n}, got shape "
                                 f"{np.shape(self.labels)}")
            labels = _frozen(labels)
        object.__setattr__(self, "points", _frozen(X))
        object.__setattr__(self, "weights", _frozen(w))
        object.__setattr__(self, "labels", labels)

    @property
    def dim(self) -> int:
        return self.points.shape[1]

    def __len__(self) -> int:
        return self.points.shape[0]
PROMPT_KINDS = {cls.kind: cls for cls in (GaussianPrompt, MixturePrompt, UniformPrompt, TokensPrompt,
                                          RegressionPrompt)}


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
    if prompt.dim != grid.dim:
        raise CaseError(f"{where}: a {prompt.dim}-D prompt on a {grid.dim}-D grid")
    rho = prompt.cell_averages(grid, where)
    return rho, max(1.0 - grid.mass(rho), 0.0)


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
    sd_min = float(np.sqrt(np.linalg.eigvalsh(cov).min()))
    return _gauss_legendre_averages(grid, lambda x: normal_pdf(x, mean, cov), sd_min)


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


def gauss_points(h: float, sd: float) -> int:
    """Gauss-Legendre points per axis and cell: ``GAUSS_POINTS`` while h <= sd, more for cells
    wider than the density's narrowest standard deviation (so a 2 x 2 grid over a narrow prompt
    does not report its quadrature error as mass outside the box), at most ``MAX_GAUSS_POINTS``."""
    return int(min(MAX_GAUSS_POINTS, max(GAUSS_POINTS, np.ceil(GAUSS_POINTS * h / sd))))


def _gauss_legendre_averages(grid: Grid, pdf, sd: float) -> np.ndarray:
    """Cell averages of ``pdf`` by a tensor Gauss-Legendre rule in every cell (see :func:`gauss_points`)."""
    q = gauss_points(float(grid.dx.max()), sd)
    nodes, weights = np.polynomial.legendre.leggauss(q)
    nodes, weights = nodes / 2, weights / 2  # on [-1/2, 1/2], weights sum to 1
    rho = np.zeros(grid.shape)
    centres = np.meshgrid(*(grid.centres(a) for a in range(grid.dim)), indexing="ij")
    base = np.stack(centres, axis=-1)
    for idx in np.ndindex(*(q,) * grid.dim):
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


def _keep_positive(X: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tokens X (..., d) with weights w (...): weights below ``WEIGHT_FLOOR`` of the largest dropped, the rest
    normalised."""
    X = X.reshape(-1, X.shape[-1])
    w = w.ravel()
    keep = w > WEIGHT_FLOOR * w.max()
    return X[keep], w[keep] / w[keep].sum()


def _tensor_rule(y: np.ndarray, v: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    Y = np.stack(np.meshgrid(*(y,) * d, indexing="ij"), axis=-1).reshape(-1, d)
    W = np.prod(np.stack(np.meshgrid(*(v,) * d, indexing="ij"), axis=-1).reshape(-1, d), axis=1)
    return Y, W
