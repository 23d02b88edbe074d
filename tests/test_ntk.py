import numpy as np
import pytest
from gridpde.measures import GridMeasure, TokenMeasure
from gridpde.prompts import GaussianPrompt, MixturePrompt
from gridpde.grid.mesh import Grid
from gridpde.ntk.diagnostics import (
    as_measure,
    basis_matrix,
    lse_across_prompts,
    lse_per_prompt,
    ntk_diagnostics,
    probe_heads,
    prompt_measure,
    spectrum,
    tangent_map,
    tangent_map_sweep,
    tangent_matrix,
)
from gridpde.validation.ntk_families import FAMILIES, family, validation_rows, verdicts


def gaussian(d, mean=0.5):
    cov = 0.3 * np.eye(d) + (0.05 * (1 - np.eye(d)) if d > 1 else 0.0)
    return prompt_measure(GaussianPrompt(np.full(d, mean), cov), 20)


def mixture_1d():
    prompt = MixturePrompt(np.array([0.3, 0.7]), np.array([[-0.8], [0.9]]), np.array([[[0.2]], [[0.35]]]))
    return prompt_measure(prompt, 20)


def tokens(rng, n, d):
    return TokenMeasure(rng.uniform(0.3, 2.0, (n, d)), 0.5 + rng.random(n)).normalised()


def softmax_means(X, w, B):
    """m_mu(B x_i) with an explicit n x n softmax: (n, d)."""
    s = (X @ B.T) @ X.T + np.log(w)[None, :]
    p = np.exp(s - s.max(axis=1, keepdims=True))
    return (p / p.sum(axis=1, keepdims=True)) @ X


@pytest.mark.parametrize("basis", ["tokens", "poly"])
def test_tangent_matrix_is_G_a_at_the_probe_heads(rng, basis):
    """A @ coef equals sum_p sum_i w_i a^p(x_i)·V m(B x_i) computed in plain numpy."""
    d = 2
    mus = [tokens(rng, 7, d), tokens(rng, 5, d)]
    probes = probe_heads(6, d, scale=0.8, seed=3)
    A = tangent_matrix(mus, probes, basis, degree=2)
    coef = rng.standard_normal(A.shape[1])
    expect = np.zeros(6)
    col = 0
    for mu in mus:
        W = basis_matrix(mu, basis, 2)  # sqrt(w_i) phi_j(x_i)
        r = W.shape[1]
        c = coef[col : col + r * d].reshape(r, d)
        col += r * d
        a = (W @ c) / np.sqrt(mu.weights)[:, None]  # a^p(x_i) = sum_j c_j phi_j(x_i)
        for k in range(6):
            att = softmax_means(mu.points, mu.weights, probes.B[k]) @ probes.V[k].T
            expect[k] += np.sum(mu.weights[:, None] * a * att)
    np.testing.assert_allclose(A @ coef, expect, rtol=1e-12, atol=1e-12 * np.abs(expect).max())


def test_basis_is_orthonormal_in_L2_mu():
    mu = mixture_1d()
    W = basis_matrix(mu, "poly", 4)
    assert W.shape == (mu.size, 5)
    np.testing.assert_allclose(W.T @ W, np.eye(5), atol=1e-12)
    dirac = TokenMeasure(np.array([[0.7, -0.4]]), np.ones(1)).normalised()
    assert basis_matrix(dirac, "poly", 3).shape == (1, 1)  # only constants survive on one point


@pytest.mark.parametrize("d", [1, 2])
def test_gaussian_tangent_map_has_a_kernel_that_grows_with_the_basis(d):
    """N(m, S), m != 0: the map sees only ∫a dmu and ∫a x^T dmu, rank d^2 + d for every degree."""
    degrees = (2, 3, 4) if d == 1 else (2, 3)
    sweep = tangent_map_sweep([gaussian(d)], degrees=degrees, factors=(4,))
    ranks = [p.spectrum.rank for p in sweep]
    kernels = [p.spectrum.kernel_dim for p in sweep]
    assert ranks == [d * d + d] * len(degrees)
    assert kernels == sorted(kernels) and kernels[-1] > kernels[0] > 0
    assert all(p.spectrum.rel_min < 1e-13 for p in sweep)


def test_gaussian_with_zero_mean_loses_the_constant_part():
    assert tangent_map([gaussian(2, mean=0.0)], basis="poly", degree=2).rank == 4


def test_mixture_tangent_map_rank_keeps_growing_and_settles_in_S():
    sweep = tangent_map_sweep([mixture_1d()], degrees=(2, 3, 4, 5), factors=(16, 64))
    assert all(p.spectrum.full for p in sweep)
    assert [p.spectrum.rank for p in sweep[1::2]] == [3, 4, 5, 6]
    for coarse, fine in zip(sweep[::2], sweep[1::2]):
        ratio = coarse.spectrum.rel_min / fine.spectrum.rel_min
        assert 0.25 < ratio < 4.0 and fine.spectrum.rel_min > 1e-4


@pytest.mark.parametrize(("d", "basis"), [(1, "tokens"), (1, "poly"), (2, "poly")])
def test_reading_a_for_a_gaussian_keeps_only_the_quadratic_part(d, basis):
    """f_x(B) = m·Bx + (Bx)^T S Bx / 2: modulo affine, span {x x^T} has dim d(d+1)/2;
    modulo constants the linear part adds d more."""
    mu = gaussian(d)
    (aff,) = lse_per_prompt([mu], basis=basis, degree=3)
    (const,) = lse_per_prompt([mu], basis=basis, degree=3, modulo="constant")
    assert aff.rank == d * (d + 1) // 2 < aff.n_cols
    assert const.rank == d * (d + 1) // 2 + d
    assert aff.rel_min < 1e-13


@pytest.mark.parametrize("d", [1, 2])
def test_dirac_lambda_is_linear_but_its_tangent_map_is_injective(d):
    x0 = np.linspace(0.7, -0.4, d)[None]
    dirac = TokenMeasure(x0, np.ones(1)).normalised()
    (a,) = lse_per_prompt([dirac], basis="tokens")
    b = lse_across_prompts([dirac])
    assert a.rank == 0 and a.rel_min < 1e-14 and b.rank == 0 and b.rel_min < 1e-14
    t = tangent_map([dirac], basis="tokens")  # G_a = a·V x0: injective on L^2(delta) = R^d
    assert t.full and t.rel_min > 1e-3
    (const,) = lse_per_prompt([dirac], basis="tokens", modulo="constant")
    assert const.full
    origin = TokenMeasure(np.zeros((1, d)), np.ones(1)).normalised()
    assert tangent_map([origin], basis="tokens").rank == 0


def test_projection_removes_exactly_the_affine_functions(rng):
    S, q = 60, 4
    Z = rng.standard_normal((S, q))
    design = np.hstack([np.ones((S, 1)), Z])
    affine = design @ rng.standard_normal((q + 1, 3))
    s = spectrum(affine, design)
    assert s.rank == 0 and s.rel_min < 1e-14
    F = np.hstack([affine, Z[:, :1] ** 2, np.exp(Z[:, 1:2])])
    s = spectrum(F, design)
    assert s.rank == 2 and s.kernel_dim == 3
    # the constant alone: the linear columns stay
    assert spectrum(affine, design[:, :1]).rank == 3


def test_symmetric_prompt_sends_even_fields_to_zero(rng):
    """mu symmetric about 0: m(-z) = -m(z), so a = const (even) has G_a = 0."""
    half = rng.uniform(0.3, 2.0, (4, 2))
    w = np.tile(0.5 + rng.random(4), 2)
    mu = TokenMeasure(np.vstack([half, -half]), w).normalised()
    probes = probe_heads(20, 2, scale=1.0, seed=1)
    A = tangent_matrix([mu], probes, "tokens")
    for c in range(2):
        coef = np.zeros((mu.size, 2))
        coef[:, c] = np.sqrt(mu.weights)  # a(x_i) = e_c
        assert np.abs(A @ coef.ravel()).max() < 1e-13 * np.abs(A).max()
    assert tangent_map([mu], basis="tokens", scale=1.0).kernel_dim >= 2


def test_reading_b_sees_dependent_prompts():
    g1, g2 = gaussian(2, 0.5), gaussian(2, -0.7)
    assert lse_across_prompts([g1, g2]).rank == 1  # same covariance: difference linear
    assert lse_across_prompts([g1]).rank == 1  # one quadratic Lambda: not affine
    fam = family("convolution_triple", 2, 0)
    s = lse_across_prompts(fam.measures)
    assert s.rank == 2 and s.n_cols == 3 and s.rel_min < 1e-13


def test_duplicated_prompt_fails_pooled_reading_a_and_the_definition(rng):
    mu = tokens(rng, 5, 2)
    per = lse_per_prompt([mu, mu], basis="tokens", scale=2.0)
    pooled = lse_per_prompt([mu, mu], basis="tokens", scale=2.0, pooled=True)
    assert all(s.full for s in per) and pooled.rank == 5 and pooled.n_cols == 10
    assert tangent_map([mu, mu], basis="tokens", scale=2.0).rank == 10  # (a, -a) in the kernel


def test_results_are_reproducible_by_seed():
    mus = [gaussian(2), tokens(np.random.default_rng(0), 6, 2)]
    a = ntk_diagnostics(mus, degree=2, seed=4).to_arrays()
    b = ntk_diagnostics(mus, degree=2, seed=4).to_arrays()
    c = ntk_diagnostics(mus, degree=2, seed=5).to_arrays()
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["tangent/sigma"], c["tangent/sigma"])
    assert a["tangent/rank"] == c["tangent/rank"] and a["lse_b/rank"] == c["lse_b/rank"]
    assert a["lse_a/sigma"].shape[0] == 2 and a["lse_a/rank"].tolist() == [3, 6]


def test_probe_heads_are_nested_in_S():
    small, large = probe_heads(5, 2, seed=7), probe_heads(9, 2, seed=7)
    for name in ("Q", "K", "V"):
        np.testing.assert_array_equal(getattr(large, name)[:5], getattr(small, name))


def test_measure_adapters():
    grid = Grid((0.0, 0.0), (1.0, 2.0), (4, 5))
    rho = np.zeros(grid.shape)
    rho[1, 2], rho[3, 4] = 2.0, 6.0
    mu = GridMeasure(grid, rho).tokens()
    np.testing.assert_allclose(mu.points, [[0.375, 1.0], [0.875, 1.8]])
    np.testing.assert_allclose(mu.weights, [0.25, 0.75])
    nu = as_measure((grid, rho))
    np.testing.assert_array_equal(nu.points, mu.points)
    t = as_measure((np.array([0.1, 0.2, 0.3]), np.array([1.0, 0.0, 3.0])))
    assert t.points.shape == (2, 1) and np.allclose(t.weights, [0.25, 0.75])
    with pytest.raises(ValueError, match="weights"):
        TokenMeasure(np.zeros((2, 1)), np.array([1.0, -1.0])).normalised()
    with pytest.raises(TypeError, match="cannot read a measure"):
        as_measure("tokens")


def test_gauss_rule_gaussian_has_exactly_quadratic_lambda():
    mu = gaussian(2)
    z = np.random.default_rng(1).normal(size=(10, 2))
    from gridpde.ntk.diagnostics import _lse_at

    lam = _lse_at(mu, z, np.eye(2)[None])[0]
    cov = 0.3 * np.eye(2) + 0.05 * (1 - np.eye(2))
    expect = z @ np.full(2, 0.5) + 0.5 * np.einsum("si,ij,sj->s", z, cov, z)
    np.testing.assert_allclose(lam, expect, rtol=0, atol=1e-13)


def test_validation_separates_the_families_in_1d():
    rows = validation_rows(dims=(1,), levels=1, families=("mixture", "gaussian", "dirac", "translated_pair"))
    v = verdicts(rows)
    assert v[("mixture", 1)] == dict.fromkeys(v[("mixture", 1)], "holds")
    assert v[("gaussian", 1)]["tangent"] == v[("gaussian", 1)]["lse_a"] == "fails"
    assert v[("gaussian", 1)]["lse_b"] == "holds"  # one quadratic Lambda is not affine
    assert v[("dirac", 1)]["tangent"] == "holds" and v[("dirac", 1)]["lse_a"] == "fails"
    assert v[("translated_pair", 1)]["tangent"] == "holds" and v[("translated_pair", 1)]["lse_b"] == "fails"
    assert set(FAMILIES) >= {"tokens", "uniform", "mixture", "gaussian", "dirac"}
