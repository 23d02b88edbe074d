"""Validation families for the NTK injectivity diagnostics of :mod:`gridpde.ntk.diagnostics`.

Families the paper says satisfy the condition (discrete tokens, uniform boxes,
Gaussian mixtures) and ones where it must fail (a single Gaussian, a Dirac,
prompts built to be dependent), each measured by the definitional tangent map
and by both readings of the log-sum-exp condition (docs/model.md section 6).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from gridpde.measures import TokenMeasure
from gridpde.prompts import GaussianPrompt, MixturePrompt, Prompt, UniformPrompt
from gridpde.ntk.diagnostics import (
    Basis,
    PROBE_SCALE,
    RTOL,
    Spectrum,
    _measures,
    _width,
    lse_across_prompts,
    lse_per_prompt,
    prompt_measure,
    tangent_map,
)

# ---------------------------------------------------------------- validation

Diagnostic = Literal["tangent", "lse_a", "lse_a_pooled", "lse_a_const", "lse_b"]
DIAGNOSTICS: tuple[str, ...] = ("tangent", "lse_a", "lse_a_pooled", "lse_a_const", "lse_b")

#: family -> what docs/model.md / the paper says about the condition on it
FAMILIES: dict[str, str] = {
    "tokens": "holds",  # discrete tokens in general position
    "uniform": "holds",  # an off-centre box
    "mixture": "holds",  # two Gaussians, unequal weights and covariances
    "gaussian": "fails",  # tilted mean affine
    "tokens_origin": "holds",  # discrete tokens, one of them at the origin
    "dirac": "fails",  # one token x0 != 0: Lambda linear
    "dirac_origin": "fails",  # one token at 0: Lambda = 0
    "uniform_centred": "holds",  # the box [-1, 1]^d: a uniform box, but symmetric
    "two_gaussians": "fails",  # same covariance: Lambda_1 - Lambda_2 linear
    "translated_pair": "fails",  # (mu, mu + t): Lambda_2 - Lambda_1 linear
    "convolution_triple": "fails",  # (mu1, mu2, mu1 * mu2): Lambda_3 = Lambda_1 + Lambda_2
    "duplicate": "fails",  # (mu, mu)
}
#: probe scales of the validation: Gauss-rule families keep |S^(1/2) B x| small
#: enough that the rule reproduces Lambda to round-off (a Gaussian stays exactly
#: degenerate); token families use larger tilts, which only improves conditioning.
GAUSS_RULE_SCALE = 0.5
TOKEN_SCALE = 2.0


@dataclass(frozen=True)
class Family:
    """A validation data set: its prompts and how to probe them."""

    measures: list[TokenMeasure]
    basis: Basis
    degree: int
    scale: float


def _tokens(rng: np.random.Generator, n: int, d: int, lo: float = 0.3, hi: float = 2.0) -> TokenMeasure:
    """n tokens uniform in [lo, hi]^d, redrawn until no two are closer than
    (hi - lo) / (2 n^(1/d)); weights 0.5 + U(0, 1), normalised."""
    gap = (hi - lo) / (2.0 * n ** (1.0 / d))
    while True:
        X = rng.uniform(lo, hi, (n, d))
        dist = np.linalg.norm(X[:, None] - X[None], axis=-1) + np.eye(n) * gap
        if dist.min() >= gap:
            return TokenMeasure(X, 0.5 + rng.random(n)).normalised()


def family(name: str, dim: int, level: int) -> Family:
    """The prompts of validation family ``name`` in ``dim`` dimensions at refinement ``level``.

    Continuous families are Gauss-rule tokens (:func:`prompt_measure`,
    q = 16 + 4 level per axis and component), tested with the polynomial
    basis of degree 2 + level and probe scale ``GAUSS_RULE_SCALE``. Discrete
    ones use the token basis (all of L^2(mu)), n = 4 + 2 level tokens for
    ``tokens`` (``tokens_origin``: 3 + 2 level and the origin) and 3 + level
    per prompt for the pair families (seeded, well separated in [0.3, 2]^d,
    see :func:`_tokens`), probe scale
    ``TOKEN_SCALE``. In 1-D the functions of the scalar B are dilations of
    one analytic function, whose singular values decay geometrically, so
    token counts stay small there.
    """
    if name not in FAMILIES:
        msg = f"family = {name!r}; expected one of {', '.join(FAMILIES)}"
        raise ValueError(msg)
    d, q, D = dim, 16 + 4 * level, 2 + level
    rng = np.random.default_rng([dim, level, list(FAMILIES).index(name)])
    e = np.ones(d)
    eye = np.eye(d)
    cov = 0.3 * eye + (0.05 * (1 - eye) if d > 1 else 0.0)

    def rule(*prompts: Prompt) -> Family:
        return Family([prompt_measure(p, q) for p in prompts], "poly", D, GAUSS_RULE_SCALE)

    def tokens(*mus: TokenMeasure) -> Family:
        return Family(list(mus), "tokens", 0, TOKEN_SCALE)

    if name == "uniform":
        return rule(UniformPrompt(0.5 * e, 2.5 * e))
    if name == "uniform_centred":
        return rule(UniformPrompt(-e, e))
    if name == "mixture":
        means = np.array([-0.8 * e, 0.9 * e + 0.3 * np.arange(d)])
        return rule(MixturePrompt(np.array([0.3, 0.7]), means, np.stack([0.2 * eye, 0.35 * eye])))
    if name == "gaussian":
        return rule(GaussianPrompt(0.5 * e, cov))
    if name == "two_gaussians":
        return rule(GaussianPrompt(0.5 * e, cov), GaussianPrompt(-0.7 * e, cov))
    if name == "tokens":
        return tokens(_tokens(rng, 4 + 2 * level, d))
    if name == "tokens_origin":
        mu = _tokens(rng, 3 + 2 * level, d)
        return tokens(TokenMeasure(np.vstack([mu.points, np.zeros(d)]), np.append(mu.weights, 0.25)).normalised())
    if name == "dirac":
        return tokens(TokenMeasure(np.linspace(0.7, -0.4, d)[None], np.ones(1)).normalised())
    if name == "dirac_origin":
        return tokens(TokenMeasure(np.zeros((1, d)), np.ones(1)).normalised())
    mu = _tokens(rng, 3 + level, d)
    if name == "translated_pair":
        return tokens(mu, TokenMeasure(mu.points + np.linspace(0.6, -0.3, d), mu.weights))
    if name == "duplicate":
        return tokens(mu, mu)
    # convolution_triple: Lambda of mu1 * mu2 is Lambda_1 + Lambda_2
    m1, m2 = _tokens(rng, 2, d), _tokens(rng, 2 + level, d, -1.0, 0.5)
    X3 = (m1.points[:, None, :] + m2.points[None, :, :]).reshape(-1, d)
    return tokens(m1, m2, TokenMeasure(X3, np.outer(m1.weights, m2.weights).ravel()).normalised())


def run_diagnostic(
    measures,
    which: Diagnostic,
    basis: Basis,
    degree: int,
    oversample: int = 4,
    scale: float = PROBE_SCALE,
    seed: int = 0,
    rtol: float = RTOL,
) -> Spectrum:
    """One diagnostic with S = oversample * (columns + dimension of the projected space).

    ``lse_a`` returns the per-prompt spectrum with the smallest rel_min
    (a rank-deficient one first).
    """
    mus = _measures(measures)
    d = mus[0].dim
    widths = [_width(mu, basis, degree) for mu in mus]
    probe = dict(scale=scale, seed=seed, rtol=rtol)
    if which == "tangent":
        return tangent_map(mus, oversample * sum(widths) * d, basis, degree, **probe)
    if which == "lse_b":
        return lse_across_prompts(mus, oversample * (len(mus) + 1 + d), seed=seed, rtol=rtol)
    if which == "lse_a":
        S = oversample * (max(widths) + 1 + d * d)
        return min(lse_per_prompt(mus, S, basis, degree, **probe), key=lambda s: (s.full, s.rel_min))
    modulo = "constant" if which == "lse_a_const" else "affine"
    S = oversample * (sum(widths) + 1 + d * d)
    return lse_per_prompt(mus, S, basis, degree, modulo, pooled=True, **probe)


#: relative singular values below this are round-off: an exact kernel
EXACT_FLOOR = 1e-13


@dataclass(frozen=True)
class ValidationRow:
    """One diagnostic on one family at one refinement."""

    family: str
    dim: int
    diagnostic: str
    level: int
    n_cols: int
    n_samples: int
    rel_min: float
    rank: int

    @property
    def verdict(self) -> str:
        """"holds" (full rank), "fails" (rel_min < ``EXACT_FLOOR``: an exact
        kernel) or "unresolved" (rank deficient at the tolerance, but above
        round-off: ill-conditioning the sample cannot settle)."""
        if self.rank == self.n_cols:
            return "holds"
        return "fails" if self.rel_min < EXACT_FLOOR else "unresolved"


def validation_rows(
    dims: tuple[int, ...] = (1, 2), levels: int = 2, families: tuple[str, ...] | None = None, **kw
) -> list[ValidationRow]:
    """Every diagnostic on every family, in each dimension, at ``levels`` refinements.

    Refinement level r uses the family at level r and oversampling 4 (2^r).
    Keyword arguments go to :func:`run_diagnostic`.
    """
    rows = []
    for name in families or tuple(FAMILIES):
        for dim in dims:
            for level in range(levels):
                fam = family(name, dim, level)
                for which in DIAGNOSTICS:
                    s = run_diagnostic(
                        fam.measures, which, fam.basis, fam.degree, 4 * 2**level, fam.scale, **kw
                    )
                    row = ValidationRow(name, dim, which, level, s.n_cols, s.n_samples, s.rel_min, s.rank)
                    rows.append(row)
    return rows


_SEVERITY = ("holds", "unresolved", "fails")


def verdicts(rows: list[ValidationRow]) -> dict[tuple[str, int], dict[str, str]]:
    """(family, dim) -> {diagnostic: verdict}: "fails" if some level fails,
    "holds" if every level holds, otherwise "unresolved"."""
    out: dict[tuple[str, int], dict[str, str]] = {}
    for r in rows:
        v = out.setdefault((r.family, r.dim), {})
        v[r.diagnostic] = max(v.get(r.diagnostic, "holds"), r.verdict, key=_SEVERITY.index)
    return out


def agreement(rows: list[ValidationRow]) -> dict[tuple[str, int], dict[str, bool]]:
    """(family, dim) -> {reading: its verdict equals the tangent map's}."""
    return {
        key: {k: v[k] == v["tangent"] for k in DIAGNOSTICS if k != "tangent"}
        for key, v in verdicts(rows).items()
    }
