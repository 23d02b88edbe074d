"""NTK injectivity diagnostics (docs/model.md section 6).

Prompts are weighted tokens mu^p = sum_i w_i delta_{x_i} (:class:`TokenMeasure`;
a grid density enters as its cell centres with the cell masses, a prompt as
Gauss or midpoint quadrature tokens). Weights are normalised to sum 1.

**Tangent map (the definition).** The adjoint of the tangent map sends
adjoint fields a = (a^1, ..., a^P), a^p in L^2(mu^p; R^d), to

    G_a(theta) = sum_p ∫ a^p(x)·Att_theta[mu^p](x) dmu^p(x),
    Att_theta[mu](x) = V m_mu(Bx),  B = K^T Q,

and the NTK is injective when G_a = 0 only for a = 0. Each a^p is written in
an orthonormal basis of a finite subspace of L^2(mu^p; R^d) (columns
(p, j, c): phi_j e_c), so the Euclidean norm of the coefficients is
||a||^2 = sum_p ∫ |a^p|^2 dmu^p:

- ``basis="tokens"``: a^p's values at the tokens, phi_i = 1_{x_i} / sqrt(w_i)
  (n_p d unknowns; all of L^2(mu^p) for a discrete prompt);
- ``basis="poly"``: polynomials of total degree <= D per component in the
  prompt's standardised coordinates u = (x - mean) / sd, orthonormalised in
  L^2(mu^p) by an SVD that drops directions of relative size < ``BASIS_RTOL``
  (a polynomial that vanishes on the support is the zero element of
  L^2(mu^p), e.g. everything but constants for a Dirac).

The matrix is A[k, (p, j, c)] = G_{phi_j e_c on prompt p}(theta_k) at S
probe heads; its spectrum is taken of A / sqrt(S), so that A^T A / S ->
∫ G_a G_b dpi(theta) (the NTK Gram form on the adjoint side) as S grows.
Probe heads theta_k = (Q_k, K_k, V_k), k < S, are i.i.d. with entries
N(0, scale^2), Q, K: (k_h, d) with k_h = ``head_dim`` (default d, so
B = K^T Q is a generic d x d matrix), V: (d, d); head k is row k of
``default_rng([seed, 0]).standard_normal((S, 2 k_h d + d^2))`` in the order
Q, K, V (row-major), so the first S heads of a larger draw are the same.
Cost: one kernel call per prompt with S n_p targets, O(S n_p^2).

Since V is free, G_a = 0 for all theta iff sum_p ∫ a^p(x) m_{mu^p}(Bx)^T
dmu^p(x) = 0 for all B: the definition is the linear independence of the
vector functions B -> m_{mu^p}(Bx), x in supp mu^p, over all prompts (no
modulo). For N(m, S), m(Bx) = m + S B x sees only ∫a dmu and ∫a x^T dmu:
rank d^2 + d (d^2 if m = 0) for any basis holding the affine fields. For a
prompt symmetric about 0, m(-z) = -m(z), so every even field is in the
kernel.

**Log-sum-exp readings** (Lambda_mu(z) = log sum_i w_i exp(z·x_i), the
``lse`` of the direct attention kernel; no n x n matrix is formed):

- (a) per prompt: f_x(B) = Lambda_mu(Bx), x in the support, as functions of
  B in R^{d x d}, sampled at the probe heads' B_s = K_s^T Q_s. With
  ``basis="tokens"`` the columns are sqrt(w_i) f_{x_i} (one function per
  token; the scaling does not change the rank); with ``basis="poly"`` they
  are F_j(B) = ∫ phi_j(x) Lambda_mu(Bx) dmu(x) for the same orthonormal
  polynomials phi_j as the tangent map (the condition restricted to the
  combinations c(x) in the polynomial space). ``pooled=True`` puts the
  functions of all prompts into one family (the data-set version of (a)).
  For N(m, S), f_x(B) = m·Bx + (Bx)^T S (Bx) / 2: modulo affine only the
  quadratic part, linear in x x^T, is left: rank d (d + 1) / 2.
- (b) across the data set: one function z -> Lambda_{mu^p}(z) per prompt,
  sampled at z_s i.i.d. N(0, z_scale^2 I_d) (``default_rng([seed, 1])``).

Both project out ``modulo="affine"`` functions (span of 1 and the d^2
entries of B, resp. 1 and z_1..z_d; docs/model.md's statement) or, as a variant,
only the constants (``modulo="constant"``). Link to the definition: if
sum_i c_i f_{x_i}(B) = alpha + tr(C^T B) then, differentiating in B,
sum_i c_i x_{i,e} m(B x_i) = C e for every e; with C = 0 (modulo constants)
and some c_i x_i != 0 this is a kernel element a_i = c_i x_{i,e} u / w_i of
the tangent map. A dependency modulo affine functions only makes the m's
dependent together with the constants, which is why a Dirac at x0 != 0
(f linear in B, constant tilted mean x0) fails reading (a) but not the
definition. :func:`validation_rows` measures where each reading agrees:
on the families there, reading (a) with all prompts pooled agrees with the
definition except where some f_x is affine in B (a single Dirac at x0 != 0,
a token at the origin, whose f_0 = 0 while its tilted mean, the prompt's
mean, is seen by V); per prompt it misses duplicated prompts; reading (b)
misses a single Gaussian and symmetric prompts (one non-affine Lambda) and
flags translated or convolved prompts whose tangent map is injective.

**Spectra.** Every diagnostic returns a :class:`Spectrum`: singular values
sigma (descending), the reference sigma_ref = largest singular value of the
*unprojected* matrix (so an exactly affine family shows sigma / sigma_ref ~
1e-16, not 1), the numerical rank #{sigma > tol} with

    tol = rtol * sqrt(max(S, n_cols)) * sigma_ref,   rtol = 1e-10 by default,

and the number of columns (the rank of an injective map). The condition
holds on the tested subspace when rank == n_cols; a failing one shows a
kernel whose dimension grows with the basis (see :func:`tangent_map_sweep`).
Exact kernels sit at round-off (< 1e-13 relative); smooth families also
have geometrically decaying singular values (the NTK is compact), so the
probe scale (the size of the tilts |Bx|) and small bases matter: a Gauss
rule reproduces a Gaussian's quadratic Lambda only for |S^(1/2) B x| well
inside its nodes, and in 1-D the functions of the scalar B are dilations
of one analytic function, numerically dependent beyond ~10 of them.
"""


from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from gridpde.attention.direct import attention_velocity
from gridpde.measures import GridMeasure, TokenMeasure
from gridpde.prompts import GaussianPrompt, MixturePrompt, Prompt, RegressionPrompt, TokensPrompt, UniformPrompt

PROMPT_TYPES = (GaussianPrompt, MixturePrompt, UniformPrompt, TokensPrompt, RegressionPrompt)
from gridpde.grid.mesh import Grid
from gridpde.heads import pad3, pad_points

Basis = Literal["tokens", "poly"]
Modulo = Literal["affine", "constant"]
Rule = Literal["gauss", "midpoint"]

#: relative rank tolerance (times sqrt(max(S, n_cols)) sigma_ref)
RTOL = 1e-10
#: polynomial directions smaller than this (relative) are zero in L^2(mu)
BASIS_RTOL = 1e-10
#: default std of probe entries: B = K^T Q then has entries of std ~0.25 sqrt(d),
#: tilts |Bx| of order 1 on O(1) prompts (larger tilts condition token prompts
#: better but leave the range where quadrature tokens keep a Gaussian exact)
PROBE_SCALE = 0.5
#: default std of the sample points z_s of reading (b)
Z_SCALE = 1.0


# ------------------------------------------------------------------ measures


def prompt_measure(prompt: Prompt, q: int = 20, rule: Rule = "gauss") -> TokenMeasure:
    """Quadrature tokens of a prompt, q points per axis and component (normalised).

    ``rule="gauss"``: tensor Gauss-Hermite nodes x = m + L y (L L^T = S) for
    Gaussians and each mixture component, Gauss-Legendre for uniform boxes
    (:meth:`~gridpde.prompts.GaussianPrompt.gauss_tokens`). For |z| sd << q
    these reproduce Lambda_mu(z) to round-off (a Gaussian's Lambda stays
    quadratic), which the midpoint quadrature tokens of the particle method
    (``rule="midpoint"``, q^d tokens on mean +- 8 sd) do only while the
    tilted measure stays in their box. A ``tokens`` prompt is used as given.
    """
    X, w = prompt.gauss_tokens(q) if rule == "gauss" else prompt.tokens(q ** prompt.dim, "quadrature")
    return TokenMeasure(X, w).normalised()


def as_measure(obj) -> TokenMeasure:
    """Normalised tokens from a TokenMeasure or GridMeasure, tokens ``(X, w)``, ``(Grid, rho)`` or a prompt."""
    if isinstance(obj, GridMeasure):
        return obj.tokens()
    if isinstance(obj, TokenMeasure):
        return obj.normalised()
    if isinstance(obj, PROMPT_TYPES):
        return prompt_measure(obj)
    if isinstance(obj, tuple) and len(obj) == 2:
        if isinstance(obj[0], Grid):
            return GridMeasure(*obj).tokens()
        X = np.asarray(obj[0], dtype=np.float64)
        return TokenMeasure(X[:, None] if X.ndim == 1 else X, obj[1]).normalised()
    msg = (
        f"cannot read a measure from {type(obj).__name__}; "
        "expected TokenMeasure, GridMeasure, (X, w), (Grid, rho) or a prompt"
    )
    raise TypeError(msg)


def _measures(measures) -> list[TokenMeasure]:
    out = [as_measure(m) for m in measures]
    if not out or len({m.dim for m in out}) != 1:
        msg = f"need at least one measure, all of one dimension; got dims {[m.dim for m in out]}"
        raise ValueError(msg)
    return out


# ---------------------------------------------------------------- ingredients


@dataclass(frozen=True)
class Probes:
    """S probe heads: Q, K (S, k_h, d), V (S, d, d), i.i.d. N(0, scale^2) entries."""

    Q: np.ndarray
    K: np.ndarray
    V: np.ndarray

    @property
    def B(self) -> np.ndarray:
        """Score matrices B = K^T Q: (S, d, d)."""
        return np.einsum("sai,saj->sij", self.K, self.Q)


def probe_heads(
    S: int, dim: int, scale: float = PROBE_SCALE, seed: int = 0, head_dim: int | None = None
) -> Probes:
    """S probe heads from the distribution of the module docstring.

    Args:
        S: number of heads; for a fixed seed the first S of S' > S heads agree.
        dim: d, token dimension.
        scale: standard deviation of every entry of Q, K, V.
        seed: seed of ``default_rng([seed, 0])``.
        head_dim: k_h, rows of Q and K (default d; k_h < d restricts B to rank k_h).
    """
    k = dim if head_dim is None else head_dim
    raw = scale * np.random.default_rng([seed, 0]).standard_normal((S, 2 * k * dim + dim * dim))
    Q = raw[:, : k * dim].reshape(S, k, dim)
    K = raw[:, k * dim : 2 * k * dim].reshape(S, k, dim)
    return Probes(Q, K, raw[:, 2 * k * dim :].reshape(S, dim, dim))


def basis_matrix(mu: TokenMeasure, basis: Basis, degree: int = 3) -> np.ndarray:
    """W (n, r) with W[i, j] = sqrt(w_i) phi_j(x_i): orthonormal columns, W^T W = I.

    ``tokens``: phi_i = 1_{x_i} / sqrt(w_i), so W = I (n x n; the diagnostics
    never form it); ``poly``: the orthonormalised polynomials of total degree
    <= ``degree`` (module docstring), r <= C(degree + d, d).
    """
    W = _basis(mu, basis, degree)
    return np.eye(mu.size) if W is None else W


def _basis(mu: TokenMeasure, basis: Basis, degree: int) -> np.ndarray | None:
    """:func:`basis_matrix`, with None standing for the identity of the token basis."""
    if basis == "tokens":
        return None
    if basis != "poly":
        msg = f"basis = {basis!r}; expected 'tokens' or 'poly'"
        raise ValueError(msg)
    mean = mu.weights @ mu.points
    sd = np.sqrt(mu.weights @ (mu.points - mean) ** 2)
    u = (mu.points - mean) / np.where(sd > 0.0, sd, 1.0)
    alphas = [a for a in itertools.product(range(degree + 1), repeat=mu.dim) if sum(a) <= degree]
    P = np.stack([np.prod(u ** np.asarray(a), axis=1) for a in sorted(alphas, key=sum)], axis=1)
    U, s, _ = np.linalg.svd(np.sqrt(mu.weights)[:, None] * P, full_matrices=False)
    return U[:, s > BASIS_RTOL * s[0]]


def _width(mu: TokenMeasure, basis: Basis, degree: int) -> int:
    W = _basis(mu, basis, degree)
    return mu.size if W is None else W.shape[1]


def _pair(mu: TokenMeasure, W: np.ndarray | None, values: np.ndarray) -> np.ndarray:
    """∫ phi_j(x) v(x) dmu(x) = sum_i sqrt(w_i) W[i, j] v_i for values v (..., n, c): (..., r, c)."""
    sw = np.sqrt(mu.weights)
    if W is None:
        return sw[:, None] * values
    return np.einsum("ij,...ic->...jc", sw[:, None] * W, values)


def _lse_at(mu: TokenMeasure, targets: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Lambda_mu(B_s t) for t in targets (T, d) and B (S, d, d): (S, T)."""
    d = mu.dim
    Z = np.einsum("sce,te->stc", B, targets).reshape(-1, d)
    P = np.ascontiguousarray(pad_points(mu.points))
    eye = pad3(np.eye(d))[None]
    _, lse = attention_velocity(np.ascontiguousarray(pad_points(Z)), P, mu.weights, eye, eye)
    return lse.reshape(B.shape[0], targets.shape[0])


def tilted_means(mu: TokenMeasure, B: np.ndarray) -> np.ndarray:
    """m_mu(B_k x_i) for every head k and token x_i of mu: (S, n, d).

    One kernel call with the S n points z = B_k x_i as targets and B = I.
    """
    d = mu.dim
    Z = np.einsum("kce,ie->kic", B, mu.points).reshape(-1, d)
    P = np.ascontiguousarray(pad_points(mu.points))
    eye = pad3(np.eye(d))[None]
    m, _ = attention_velocity(np.ascontiguousarray(pad_points(Z)), P, mu.weights, eye, eye)
    return m[:, 3 - d :].reshape(B.shape[0], mu.size, d)


# ------------------------------------------------------------------- spectra


@dataclass(frozen=True)
class Spectrum:
    """Singular values of a diagnostic matrix and its numerical rank.

    Attributes:
        sigma: singular values (descending) of the (projected) matrix / sqrt(S).
        sigma_ref: largest singular value of the unprojected matrix / sqrt(S).
        tol: absolute tolerance, rtol * sqrt(max(S, n_cols)) * sigma_ref.
        rank: #{sigma > tol}.
        n_cols: number of columns (functions, basis elements): full rank.
        n_samples: S (probe heads or sample points).
    """

    sigma: np.ndarray
    sigma_ref: float
    tol: float
    rank: int
    n_cols: int
    n_samples: int

    @property
    def relative(self) -> np.ndarray:
        """sigma / sigma_ref, padded with zeros to n_cols."""
        rel = self.sigma / self.sigma_ref if self.sigma_ref > 0.0 else np.zeros_like(self.sigma)
        return np.concatenate([rel, np.zeros(max(0, self.n_cols - rel.size))])

    @property
    def rel_min(self) -> float:
        """Smallest relative singular value among the n_cols (0 if S < n_cols)."""
        return float(self.relative[self.n_cols - 1]) if self.n_cols else float("nan")

    @property
    def full(self) -> bool:
        return self.rank == self.n_cols

    @property
    def kernel_dim(self) -> int:
        return self.n_cols - self.rank


def spectrum(F: np.ndarray, design: np.ndarray | None = None, rtol: float = RTOL) -> Spectrum:
    """Spectrum of the sample matrix F (S, n) with the span of ``design`` (S, q) projected out.

    The projection is P F = F - Qd Qd^T F with Qd an orthonormal basis of
    range(design) (QR, applied twice for round-off). Singular values are of
    P F / sqrt(S); sigma_ref is the largest of F / sqrt(S).
    """
    S, n = F.shape
    F = F / np.sqrt(S)
    sigma_ref = float(np.linalg.norm(F, 2)) if F.size else 0.0
    R = F
    if design is not None:
        Qd, _ = np.linalg.qr(design)
        for _ in range(2):
            R = R - Qd @ (Qd.T @ R)
    sigma = np.linalg.svd(R, compute_uv=False)
    tol = rtol * np.sqrt(max(S, n)) * sigma_ref
    return Spectrum(sigma, sigma_ref, float(tol), int(np.sum(sigma > tol)), n, S)


def _design(samples: np.ndarray, modulo: Modulo) -> np.ndarray:
    """[1, samples] (affine) or [1] (constant) for samples (S, q)."""
    one = np.ones((samples.shape[0], 1))
    if modulo == "constant":
        return one
    if modulo != "affine":
        msg = f"modulo = {modulo!r}; expected 'affine' or 'constant'"
        raise ValueError(msg)
    return np.concatenate([one, samples], axis=1)


# ---------------------------------------------------------- the diagnostics


def tangent_matrix(measures, probes: Probes, basis: Basis = "poly", degree: int = 3) -> np.ndarray:
    """A[k, (p, j, c)] = G_{phi_j e_c on prompt p}(theta_k): (S, sum_p r_p d).

    :func:`spectrum` divides by sqrt(S).
    """
    mus = _measures(measures)
    B, V = probes.B, probes.V
    S = B.shape[0]
    blocks = []
    for mu in mus:
        att = np.einsum("kce,kie->kic", V, tilted_means(mu, B))  # V_k m(B_k x_i)
        blocks.append(_pair(mu, _basis(mu, basis, degree), att).reshape(S, -1))
    return np.concatenate(blocks, axis=1)


def tangent_map(
    measures,
    S: int | None = None,
    basis: Basis = "poly",
    degree: int = 3,
    scale: float = PROBE_SCALE,
    seed: int = 0,
    head_dim: int | None = None,
    rtol: float = RTOL,
) -> Spectrum:
    """Spectrum of the definitional tangent map a -> (G_a(theta_k))_k.

    Args:
        measures: prompts mu^p (anything :func:`as_measure` reads).
        S: probe heads; default 4 * n_cols.
        basis, degree: the finite subspace of adjoint fields a^p.
        scale, seed, head_dim: the probe distribution (module docstring).
        rtol: relative rank tolerance.
    """
    mus = _measures(measures)
    d = mus[0].dim
    n_cols = sum(_width(mu, basis, degree) for mu in mus) * d
    probes = probe_heads(S or 4 * n_cols, d, scale, seed, head_dim)
    return spectrum(tangent_matrix(mus, probes, basis, degree), rtol=rtol)


@dataclass(frozen=True)
class SweepPoint:
    degree: int
    S: int
    spectrum: Spectrum


def tangent_map_sweep(
    measures,
    degrees: tuple[int, ...] = (1, 2, 3, 4),
    factors: tuple[int, ...] = (2, 4, 8),
    basis: Basis = "poly",
    **kw,
) -> list[SweepPoint]:
    """:func:`tangent_map` at S = f * n_cols for each basis degree and factor f.

    An injective map shows rank == n_cols and sigma_min / sigma_max settling
    as S grows at every degree; a failing one a rank that stops at a fixed
    number while n_cols grows (``basis="tokens"`` ignores the degree). The
    estimate of sigma_min approaches its limit from below (a sample of
    S = f n_cols heads shrinks it by roughly 1 - f^(-1/2), and B = K^T Q is
    heavy-tailed): read it to a factor 2 from f >= 16.
    """
    mus = _measures(measures)
    out = []
    for D in degrees:
        n_cols = sum(_width(mu, basis, D) for mu in mus) * mus[0].dim
        for f in factors:
            out.append(SweepPoint(D, f * n_cols, tangent_map(mus, f * n_cols, basis, D, **kw)))
    return out


def lse_per_prompt(
    measures,
    S: int | None = None,
    basis: Basis = "poly",
    degree: int = 3,
    modulo: Modulo = "affine",
    pooled: bool = False,
    scale: float = PROBE_SCALE,
    seed: int = 0,
    head_dim: int | None = None,
    rtol: float = RTOL,
) -> list[Spectrum] | Spectrum:
    """Reading (a): B -> Lambda_mu(Bx), x in supp mu, modulo affine functions of B.

    Args:
        measures: prompts mu^p (anything :func:`as_measure` reads).
        S: sample matrices B_s = K_s^T Q_s of :func:`probe_heads`; default
            4 (n_cols + 1 + d^2), n_cols the largest family (all, if pooled).
        basis, degree: one function per token, or the polynomial combinations.
        modulo: project out affine functions of B, or only constants.
        pooled: one family of the functions of all prompts (data-set version).
        scale, seed, head_dim: the probe distribution; rtol: rank tolerance.

    Returns:
        One :class:`Spectrum` per prompt, or with ``pooled`` a single one.
    """
    mus = _measures(measures)
    d = mus[0].dim
    Ws = [_basis(mu, basis, degree) for mu in mus]
    widths = [mu.size if W is None else W.shape[1] for mu, W in zip(mus, Ws)]
    n_max = sum(widths) if pooled else max(widths)
    B = probe_heads(S or 4 * (n_max + 1 + d * d), d, scale, seed, head_dim).B
    design = _design(B.reshape(B.shape[0], -1), modulo)
    Fs = [_pair(mu, W, _lse_at(mu, mu.points, B)[..., None])[..., 0] for mu, W in zip(mus, Ws)]
    if pooled:
        return spectrum(np.concatenate(Fs, axis=1), design, rtol)
    return [spectrum(F, design, rtol) for F in Fs]


def lse_across_prompts(
    measures,
    S: int | None = None,
    modulo: Modulo = "affine",
    z_scale: float = Z_SCALE,
    seed: int = 0,
    rtol: float = RTOL,
) -> Spectrum:
    """Reading (b): z -> Lambda_{mu^p}(z), one per prompt, modulo affine functions of z.

    Args:
        measures: prompts mu^p, P of them (the number of columns).
        S: sample points z_s i.i.d. N(0, z_scale^2 I_d) from
            ``default_rng([seed, 1])``; default max(64, 4 (P + 1 + d)).
        modulo: project out 1, z_1..z_d, or only constants.
        rtol: rank tolerance.
    """
    mus = _measures(measures)
    d = mus[0].dim
    S = S or max(64, 4 * (len(mus) + 1 + d))
    z = z_scale * np.random.default_rng([seed, 1]).standard_normal((S, d))
    F = np.stack([_lse_at(mu, z, np.eye(d)[None])[0] for mu in mus], axis=1)
    return spectrum(F, _design(z, modulo), rtol)


# ---------------------------------------------------------------- summary


@dataclass(frozen=True)
class NTKDiagnostics:
    """Both diagnostics for one list of measures (e.g. a case's prompts, or
    the token measures at one depth of a trajectory).

    ``tangent``: the definitional map; ``lse_a``: reading (a) per prompt;
    ``lse_a_pooled``: reading (a) with all prompts' functions in one family;
    ``lse_b``: reading (b). ``settings`` holds the choices made.
    """

    tangent: Spectrum
    lse_a: list[Spectrum]
    lse_a_pooled: Spectrum
    lse_b: Spectrum
    settings: dict = field(default_factory=dict)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat name -> array map for HDF5 (per-prompt spectra NaN-padded to (P, r_max))."""
        out: dict[str, np.ndarray] = {}
        for name in ("tangent", "lse_a_pooled", "lse_b"):
            out.update(_spectrum_arrays(name, getattr(self, name)))
        width = max(s.sigma.size for s in self.lse_a)
        sig = np.full((len(self.lse_a), width), np.nan)
        for p, s in enumerate(self.lse_a):
            sig[p, : s.sigma.size] = s.sigma
        out["lse_a/sigma"] = sig
        for key in ("sigma_ref", "tol", "rank", "n_cols", "n_samples"):
            out[f"lse_a/{key}"] = np.array([getattr(s, key) for s in self.lse_a])
        return out


def _spectrum_arrays(name: str, s: Spectrum) -> dict[str, np.ndarray]:
    return {
        f"{name}/sigma": s.sigma,
        f"{name}/sigma_ref": np.float64(s.sigma_ref),
        f"{name}/tol": np.float64(s.tol),
        f"{name}/rank": np.int64(s.rank),
        f"{name}/n_cols": np.int64(s.n_cols),
        f"{name}/n_samples": np.int64(s.n_samples),
    }


def ntk_diagnostics(
    measures,
    basis: Basis = "poly",
    degree: int = 3,
    S: int | None = None,
    scale: float = PROBE_SCALE,
    z_scale: float = Z_SCALE,
    modulo: Modulo = "affine",
    seed: int = 0,
    head_dim: int | None = None,
    rtol: float = RTOL,
) -> NTKDiagnostics:
    """The tangent map and readings (a), (a) pooled and (b) on ``measures``.

    Args:
        measures: a case's prompts, or the token measures (X, w) / grid
            densities (Grid, rho) at one depth of a trajectory.
        basis, degree: adjoint-field subspace (tangent map) and function
            family (reading (a)); "poly" keeps the size independent of n.
        S: samples for every diagnostic (default: each one's own, 4 x columns).
        scale, head_dim, seed: probe heads, shared by the tangent map and (a).
        z_scale: sample points of (b). modulo: see :func:`lse_per_prompt`.
        rtol: rank tolerance.

    Returns:
        :class:`NTKDiagnostics`; ``to_arrays()`` gives the HDF5 datasets and
        ``settings`` the attributes.
    """
    mus = _measures(measures)
    probe = dict(scale=scale, seed=seed, head_dim=head_dim, rtol=rtol)
    common = dict(S=S, basis=basis, degree=degree, modulo=modulo, **probe)
    return NTKDiagnostics(
        tangent=tangent_map(mus, S, basis, degree, **probe),
        lse_a=lse_per_prompt(mus, **common),
        lse_a_pooled=lse_per_prompt(mus, pooled=True, **common),
        lse_b=lse_across_prompts(mus, S, modulo, z_scale, seed, rtol),
        settings=dict(
            basis=basis, degree=degree, scale=scale, z_scale=z_scale, modulo=modulo, seed=seed,
            head_dim=mus[0].dim if head_dim is None else head_dim, rtol=rtol,
        ),
    )
