"""Losses: Gaussian closed forms, convergence, first variations, gradients."""

import itertools

import numpy as np
import pytest

from gridpde.grid.mesh import Grid
from gridpde.heads import pad_points
from gridpde.objective.losses import (
    GridMeasure,
    MMDLoss,
    PotentialLoss,
    TokenMeasure,
    gaussian_kernel_mean,
    gaussian_mmd,
)
from gridpde.prompts import gaussian_cell_averages
from gridpde.validation.problems import fitted_order

SIGMA = 0.7
# two correlated 2-D Gaussians; the box [-6, 6]^2 holds >= 7.7 standard deviations
M1, S1 = np.array([0.3, -0.2]), np.array([[0.5, 0.1], [0.1, 0.3]])
M2, S2 = np.array([-0.1, 0.4]), np.array([[0.4, -0.05], [-0.05, 0.6]])


def box(n, d=2, half=6.0):
    return Grid((-half,) * d, (half,) * d, (n,) * d)


def gauss_grid(grid, m, S):
    return GridMeasure(grid, gaussian_cell_averages(grid, m, S))


def gauss_hermite_tokens(m, S, q):
    """Tensor Gauss-Hermite rule with q nodes per axis for N(m, S), as tokens."""
    t, w = np.polynomial.hermite.hermgauss(q)
    d = len(m)
    T = np.array(list(itertools.product(t, repeat=d)))
    W = np.prod(np.array(list(itertools.product(w, repeat=d))), axis=1) / np.pi ** (d / 2)
    return TokenMeasure(m + np.sqrt(2.0) * T @ np.linalg.cholesky(S).T, W)


def random_tokens(rng, n, d, scale=1.0):
    return TokenMeasure(scale * rng.standard_normal((n, d)), rng.random(n) / n)


def random_grid(rng, n, d, half=3.0):
    g = Grid((-half,) * d, tuple(half + 0.5 * a for a in range(d)), tuple(n + 3 * a for a in range(d)))
    rho = rng.random(g.shape)
    return GridMeasure(g, rho / (rho.sum() * g.cell_volume))  # a probability measure


# ---------------------------------------------------------------- closed forms


def test_kernel_mean_of_diracs_and_1d_gaussians():
    x, y = np.array([0.2, -1.0, 0.5]), np.array([1.0, 0.3, -0.4])
    Z = np.zeros((3, 3))
    assert gaussian_kernel_mean(x, Z, y, Z, 0.9) == pytest.approx(
        np.exp(-np.sum((x - y) ** 2) / (2 * 0.81)), rel=1e-14
    )
    # 1-D: x - y ~ N(m1 - m2, s1 + s2); integrate exp(-u^2/(2 sigma^2)) against it
    du = 40.0 / 200000
    u = -20.0 + du * np.arange(200001)
    s = 0.3 + 0.5
    pdf = np.exp(-((u - 0.7) ** 2) / (2 * s)) / np.sqrt(2 * np.pi * s)
    quad = np.sum(np.exp(-(u**2) / (2 * 0.64)) * pdf) * du
    assert gaussian_kernel_mean(0.7, 0.3, 0.0, 0.5, 0.8) == pytest.approx(quad, rel=1e-12)


def test_gaussian_mmd_zero_and_symmetric():
    assert gaussian_mmd(M1, S1, M1, S1, SIGMA) == 0.0
    assert gaussian_mmd(M1, S1, M2, S2, SIGMA) == pytest.approx(
        gaussian_mmd(M2, S2, M1, S1, SIGMA), rel=1e-15
    )
    assert gaussian_mmd(M1, S1, M2, S2, SIGMA) > 0.0


# ---------------------------------------------------------------- convergence


def test_grid_mmd_converges_to_closed_form():
    """Cell averages at centres see covariance S + h^2/12 I: error O(h^2).

    Measured (n = 32..256): errors 3.4e-2, 8.7e-3, 2.2e-3, 5.5e-4 relative,
    order 1.99. Against the closed form with Sheppard's S + h^2/12 I the error
    falls as h^4 (1.3e-4 .. 3.4e-8): the O(h^2) term is exactly that bias.
    """
    ref = gaussian_mmd(M1, S1, M2, S2, SIGMA)
    loss = MMDLoss(SIGMA)
    hs, err, err_sheppard = [], [], []
    for n in (32, 64, 128, 256):
        g = box(n)
        v = loss.value(gauss_grid(g, M1, S1), gauss_grid(g, M2, S2))
        H = np.diag(g.dx**2 / 12)
        hs.append(g.dx[0])
        err.append(abs(v - ref) / ref)
        err_sheppard.append(abs(v - gaussian_mmd(M1, S1 + H, M2, S2 + H, SIGMA)) / ref)
    assert abs(fitted_order(hs, err) - 2.0) < 0.05
    assert fitted_order(hs, err_sheppard) > 3.8
    assert err[-1] < 1e-3 and err_sheppard[-1] < 1e-7


def test_grid_mmd_3d():
    m1, S1_ = np.array([0.2, 0.0, -0.3]), np.diag([0.4, 0.3, 0.5])
    m2, S2_ = np.array([-0.2, 0.3, 0.1]), np.diag([0.3, 0.6, 0.35])
    loss = MMDLoss(1.0)
    g = box(64, 3, half=5.5)
    H = np.diag(g.dx**2 / 12)
    v = loss.value(gauss_grid(g, m1, S1_), gauss_grid(g, m2, S2_))
    # O(h^4) after Sheppard's correction; measured 4e-6 at h = 0.17
    assert v == pytest.approx(gaussian_mmd(m1, S1_ + H, m2, S2_ + H, 1.0), rel=1e-5)


def test_token_mmd_converges_to_closed_form():
    """Gauss-Hermite tokens (q^2 per Gaussian): geometric convergence.

    Measured: q = 4, 8, 12, 16, 20, 24 give 2.5e-2, 1.5e-4, 1.0e-6, 8.8e-9,
    7.9e-11, ~1e-12 relative: about a factor 10 per two nodes per axis.
    """
    ref = gaussian_mmd(M1, S1, M2, S2, SIGMA)
    loss = MMDLoss(SIGMA)
    qs = np.array([4, 8, 12, 16, 20])
    err = np.array(
        [
            abs(loss.value(gauss_hermite_tokens(M1, S1, q), gauss_hermite_tokens(M2, S2, q)) - ref) / ref
            for q in qs
        ]
    )
    rate = np.polyfit(qs, np.log10(err), 1)[0]  # decades per node
    assert rate < -0.45
    assert np.all(np.diff(np.log10(err)) < -1.0)
    assert err[-1] < 1e-9


def test_mixed_tokens_and_grid_converge():
    """Tokens vs grid: the grid side carries the O(h^2) bias, nothing else."""
    loss = MMDLoss(SIGMA)
    mu = gauss_hermite_tokens(M1, S1, 20)
    hs, err = [], []
    for n in (32, 64, 128):
        g = box(n)
        tau = gauss_grid(g, M2, S2)
        v = loss.value(mu, tau)
        assert loss.value(tau, mu) == v  # symmetric by construction
        H = np.diag(g.dx**2 / 12)
        hs.append(g.dx[0])
        err.append(abs(v - gaussian_mmd(M1, S1, M2, S2 + H, SIGMA)) / v)
    assert fitted_order(hs, err) > 3.8 and err[-1] < 1e-6


# ---------------------------------------------------------------- first variation


def _directional_grid(loss, mu, tau, delta, eps):
    """(F(rho + eps delta) - F(rho - eps delta)) / (2 eps) and <dF/dmu, delta> |cell|."""
    up = GridMeasure(mu.grid, mu.rho + eps * delta)
    down = GridMeasure(mu.grid, mu.rho - eps * delta)
    fd = (loss.value(up, tau) - loss.value(down, tau)) / (2 * eps)
    exact = np.vdot(loss.first_variation(mu, tau), delta) * mu.grid.cell_volume
    return fd, exact


def _directional_tokens(loss, mu, tau, delta, eps):
    up = TokenMeasure(mu.points, mu.weights + eps * delta)
    down = TokenMeasure(mu.points, mu.weights - eps * delta)
    fd = (loss.value(up, tau) - loss.value(down, tau)) / (2 * eps)
    return fd, np.vdot(loss.first_variation(mu, tau), delta)


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("target", ["same grid", "other grid", "tokens"])
def test_grid_first_variation(d, target):
    """F is quadratic in rho: central differences are exact up to round-off."""
    rng = np.random.default_rng(d)
    mu = random_grid(rng, 12, d)
    tau = {
        "same grid": GridMeasure(mu.grid, rng.random(mu.grid.shape)),
        "other grid": random_grid(rng, 9, d, half=2.0),
        "tokens": random_tokens(rng, 40, d),
    }[target]
    loss = MMDLoss(0.8)
    delta = rng.standard_normal(mu.grid.shape)
    fd, exact = _directional_grid(loss, mu, tau, delta, 0.1)
    assert fd == pytest.approx(exact, rel=1e-10)


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("target", ["grid", "tokens"])
def test_token_first_variation(d, target):
    rng = np.random.default_rng(10 + d)
    mu = random_tokens(rng, 50, d)
    tau = random_grid(rng, 10, d) if target == "grid" else random_tokens(rng, 30, d, scale=1.5)
    loss = MMDLoss(0.6)
    delta = rng.standard_normal(50)
    fd, exact = _directional_tokens(loss, mu, tau, delta, 0.1)
    assert fd == pytest.approx(exact, rel=1e-10)


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("target", ["grid", "tokens", "padded tokens"])
def test_grad_points_matches_finite_differences(d, target):
    """Central differences in every coordinate of every token, h = 1e-5."""
    rng = np.random.default_rng(20 + d)
    n = 12
    mu = random_tokens(rng, n, d)
    tau = {
        "grid": random_grid(rng, 10, d),
        "tokens": random_tokens(rng, 15, d, scale=1.5),
        "padded tokens": TokenMeasure(pad_points(rng.standard_normal((15, d))), rng.random(15) / 15),
    }[target]
    loss = MMDLoss(0.6)
    g = loss.grad_points(mu.points, mu.weights, tau)
    h = 1e-5
    fd = np.empty_like(g)
    for i in range(n):
        for a in range(d):
            X = mu.points.copy()
            X[i, a] += h
            fp = loss.value(TokenMeasure(X, mu.weights), tau)
            X[i, a] -= 2 * h
            fm = loss.value(TokenMeasure(X, mu.weights), tau)
            fd[i, a] = (fp - fm) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=0, atol=1e-8 * np.abs(g).max())


def test_grad_points_keeps_padded_layout():
    rng = np.random.default_rng(30)
    mu = random_tokens(rng, 20, 2)
    tau = random_grid(rng, 16, 2)
    loss = MMDLoss(0.5)
    g = loss.grad_points(mu.points, mu.weights, tau)
    gp = loss.grad_points(pad_points(mu.points), mu.weights, tau)
    assert gp.shape == (20, 3) and np.all(gp[:, 0] == 0.0)
    np.testing.assert_allclose(gp[:, 1:], g, rtol=1e-14, atol=0)
    assert loss.value(TokenMeasure(pad_points(mu.points), mu.weights), tau) == pytest.approx(
        loss.value(mu, tau), rel=1e-14
    )


# ---------------------------------------------------------------- zero and symmetry


def test_mmd_zero_for_identical_measures_and_symmetric():
    rng = np.random.default_rng(40)
    loss = MMDLoss(0.5)
    g = random_grid(rng, 20, 2)
    g2 = GridMeasure(g.grid, g.rho * (1 + 0.1 * rng.standard_normal(g.grid.shape)))
    t = random_tokens(rng, 300, 2)
    t2 = random_tokens(rng, 200, 2)
    for m in (g, t):
        assert loss.value(m, m) == 0.0
        assert np.all(loss.first_variation(m, m) == 0.0)
    assert np.all(loss.grad_points(t.points, t.weights, t) == 0.0)
    for a, b in ((g, g2), (t, t2), (g, t), (random_grid(rng, 13, 2), g)):
        assert loss.value(a, b) > 0.0
        assert loss.value(a, b) == loss.value(b, a)
    # the same measure as a grid and as tokens at the cell centres
    centres = np.stack(np.meshgrid(*(g.grid.centres(a) for a in range(2)), indexing="ij"), -1)
    as_tokens = TokenMeasure(centres.reshape(-1, 2), g.masses.ravel())
    assert abs(loss.value(g, as_tokens)) < 1e-15 * loss.value(g, GridMeasure(g.grid, 0 * g.rho))


def test_mmd_small_difference_keeps_accuracy():
    """F ~ 1e-18 <mu, mu>_k is still resolved: F is never <mu,mu> - 2<mu,tau> + <tau,tau>."""
    rng = np.random.default_rng(41)
    g = random_grid(rng, 30, 2)
    loss = MMDLoss(0.5)
    delta = rng.standard_normal(g.grid.shape)
    eps = 1e-9
    v = loss.value(GridMeasure(g.grid, g.rho + eps * delta), g)
    quad = eps**2 * loss.value(GridMeasure(g.grid, delta), GridMeasure(g.grid, 0 * delta))
    assert v == pytest.approx(quad, rel=1e-6)


# ---------------------------------------------------------------- potential


@pytest.mark.parametrize("d", [1, 2, 3])
def test_potential_loss(d):
    rng = np.random.default_rng(50 + d)
    c = rng.standard_normal(d)
    loss = PotentialLoss(c)
    # exact for a Gaussian up to the cell-average bias: E U = 1/2 (|m - c|^2 + tr S + d h^2/12)
    m, S = 0.3 * np.ones(d), 0.4 * np.eye(d)
    g = box(64, d, half=5.0)
    mu = gauss_grid(g, m, S)
    expect = 0.5 * (np.sum((m - c) ** 2) + np.trace(S) + np.sum(g.dx**2) / 12)
    assert loss.value(mu) == pytest.approx(expect, rel=1e-10)
    tok = random_tokens(rng, 30, d)
    fd, exact = _directional_tokens(loss, tok, None, rng.standard_normal(30), 0.5)
    assert fd == pytest.approx(exact, rel=1e-12)
    fd, exact = _directional_grid(loss, mu, None, rng.standard_normal(g.shape), 0.5)
    assert fd == pytest.approx(exact, rel=1e-12)
    gp = loss.grad_points(tok.points, tok.weights)
    np.testing.assert_allclose(gp, tok.weights[:, None] * (tok.points - c), rtol=1e-15)
    padded = loss.grad_points(pad_points(tok.points), tok.weights)
    np.testing.assert_allclose(padded[:, 3 - d :], gp, rtol=1e-15)


def test_validation_errors():
    g = box(8)
    with pytest.raises(ValueError):
        GridMeasure(g, np.ones((8, 7)))
    with pytest.raises(ValueError):
        TokenMeasure(np.zeros((5, 2)), np.ones(4))
    with pytest.raises(ValueError):
        MMDLoss(0.0)
    with pytest.raises(ValueError):  # padding column not zero
        MMDLoss(1.0).value(TokenMeasure(np.ones((3, 3)), np.ones(3)), GridMeasure(g, np.ones((8, 8))))
    with pytest.raises(ValueError):
        MMDLoss(1.0).value(GridMeasure(box(4, 1), np.ones(4)), GridMeasure(g, np.ones((8, 8))))
    with pytest.raises(TypeError):
        MMDLoss(1.0).value(np.ones(3), GridMeasure(g, np.ones((8, 8))))
