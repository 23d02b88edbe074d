"""VJP of the direct attention velocity: dot-product tests, twins, finite differences, cost."""


import numpy as np
import pytest

from gridpde.attention.direct import attention_velocity
from gridpde.attention.direct_vjp import direct_velocity_vjp
from gridpde.twins.attention import direct_velocity_jvp_numpy, direct_velocity_vjp_numpy

#: every test here runs with the serial and with the parallel kernel builds
pytestmark = pytest.mark.usefixtures("kernel_build")


def padded(rng, n, d, scale=1.0):
    """n random points in the padded 3-vector layout, physical coords last."""
    p = np.zeros((n, 3))
    p[:, 3 - d :] = scale * rng.standard_normal((n, d))
    return p


def padded_mats(rng, m, d, scale=1.0):
    a = np.zeros((m, 3, 3))
    a[:, 3 - d :, 3 - d :] = scale * rng.standard_normal((m, d, d))
    return a


def problem(seed, n, d, M, max_score, full_mats=False):
    """Tokens, weights (some zero), heads with max |(B_j x_i).x_k| = max_score."""
    rng = np.random.default_rng(seed)
    X = padded(rng, n, d)
    w = rng.random(n)
    w[rng.random(n) < 0.15] = 0.0
    dim = 3 if full_mats else d
    B = padded_mats(rng, M, dim)
    V = padded_mats(rng, M, dim)
    scores = np.einsum("jab,ib,ka->jik", B, X, X)
    B *= max_score / np.abs(scores).max()
    return rng, X, w, B, V


def direction(rng, n, M, d):
    return padded(rng, n, d), padded_mats(rng, M, d), padded_mats(rng, M, d)


def forward(X, w, B, V):
    return attention_velocity(X, X, w, B, V)[0]


# ---------------------------------------------------------------- dot-product tests


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("M", [1, 4])
@pytest.mark.parametrize("max_score", [1.0, 50.0])
def test_dot_product(d, M, max_score):
    """<JVP(dX, dB, dV), ubar> = <(dX, dB, dV), VJP(ubar)>; measured <= 2e-14 relative."""
    n = 97
    rng, X, w, B, V = problem(100 * d + M, n, d, M, max_score)
    dX, dB, dV = direction(rng, n, M, d)
    ubar = padded(rng, n, d)
    jv = direct_velocity_jvp_numpy(X, w, B, V, dX, dB, dV)
    Xb, Bb, Vb = direct_velocity_vjp(X, w, B, V, ubar)
    lhs = np.vdot(jv, ubar)
    rhs = np.vdot(Xb, dX) + np.vdot(Bb, dB) + np.vdot(Vb, dV)
    # the relative error is meaningful only if lhs is not a near-cancellation
    assert abs(lhs) > 1e-3 * np.linalg.norm(jv) * np.linalg.norm(ubar)
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)


@pytest.mark.parametrize("d", [1, 2, 3])
def test_dot_product_per_argument(d):
    """Each of X, B, V alone (a wrong term cannot hide behind another)."""
    n, M = 64, 3
    rng, X, w, B, V = problem(7 + d, n, d, M, 30.0)
    dX, dB, dV = direction(rng, n, M, d)
    ubar = padded(rng, n, d)
    Xb, Bb, Vb = direct_velocity_vjp(X, w, B, V, ubar)
    zX, zB = np.zeros_like(dX), np.zeros_like(dB)
    for args, bar, delta in (
        ((dX, zB, zB), Xb, dX),
        ((zX, dB, zB), Bb, dB),
        ((zX, zB, dV), Vb, dV),
    ):
        lhs = np.vdot(direct_velocity_jvp_numpy(X, w, B, V, *args), ubar)
        assert abs(lhs - np.vdot(bar, delta)) <= 1e-12 * abs(lhs)


def test_full_matrices_with_padded_tokens():
    """2-D tokens but full 3x3 B, V: z and c have padding components (the 3-D pass 2)."""
    n, M = 80, 3
    rng, X, w, B, V = problem(31, n, 2, M, 40.0, full_mats=True)
    dX = padded(rng, n, 3)
    dB = padded_mats(rng, M, 3)
    dV = padded_mats(rng, M, 3)
    ubar = padded(rng, n, 3)
    jv = direct_velocity_jvp_numpy(X, w, B, V, dX, dB, dV)
    Xb, Bb, Vb = direct_velocity_vjp(X, w, B, V, ubar)
    lhs = np.vdot(jv, ubar)
    rhs = np.vdot(Xb, dX) + np.vdot(Bb, dB) + np.vdot(Vb, dV)
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)
    assert np.any(Xb[:, 0] != 0.0)  # the padding coordinate has a cotangent here


# ---------------------------------------------------------------- numba vs numpy twin


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("max_score", [1.0, 50.0])
def test_vjp_matches_numpy_twin(d, max_score):
    n, M = 101, 3
    rng, X, w, B, V = problem(50 + d, n, d, M, max_score)
    ubar = padded(rng, n, d)
    got = direct_velocity_vjp(X, w, B, V, ubar)
    ref = direct_velocity_vjp_numpy(X, w, B, V, ubar)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=0, atol=1e-12 * np.abs(r).max())


def test_degenerate_weights_and_points():
    rng = np.random.default_rng(60)
    n, M = 20, 2
    X = padded(rng, n, 2)
    B = padded_mats(rng, M, 2)
    V = padded_mats(rng, M, 2)
    ubar = padded(rng, n, 2)
    # all weights zero: out = 0 whatever (X, B, V)
    for bar in direct_velocity_vjp(X, np.zeros(n), B, V, ubar):
        assert np.all(bar == 0.0)
    # one source: m = y_0 exactly, so out depends on nothing but y_0 and V
    w = np.zeros(n)
    w[3] = 0.7
    Xb, Bb, Vb = direct_velocity_vjp(X, w, B, V, ubar)
    assert np.all(Bb == 0.0)
    expect = np.zeros((n, 3))
    expect[3] = np.einsum("jba,ib->a", V, ubar) / M
    np.testing.assert_allclose(Xb, expect, rtol=0, atol=1e-14)
    # every token at the origin
    Z = np.zeros((n, 3))
    w = rng.random(n)
    for g, r in zip(direct_velocity_vjp(Z, w, B, V, ubar), direct_velocity_vjp_numpy(Z, w, B, V, ubar)):
        np.testing.assert_allclose(g, r, rtol=0, atol=1e-14)


def test_wrapper_validates():
    rng = np.random.default_rng(61)
    X = padded(rng, 8, 2)
    w = np.ones(8)
    B = padded_mats(rng, 1, 2)
    V = padded_mats(rng, 1, 2)
    with pytest.raises(ValueError):
        direct_velocity_vjp(X, w, B, V, X[:4])
    with pytest.raises(ValueError):
        direct_velocity_vjp(X, -w, B, V, X)
    with pytest.raises(TypeError):
        direct_velocity_vjp(X.astype(np.float32), w, B, V, X)
    with pytest.raises(ValueError):
        direct_velocity_vjp(X[:, :2].copy(), w, B, V, X)


# ---------------------------------------------------------------- finite differences


@pytest.mark.parametrize("d", [1, 2, 3])
def test_jvp_twin_matches_finite_differences(d):
    """Central differences of the compiled forward kernel, h = 1e-5 (measured ~1e-10)."""
    n, M = 70, 3
    rng, X, w, B, V = problem(70 + d, n, d, M, 5.0)
    dX, dB, dV = direction(rng, n, M, d)
    h = 1e-5
    up = forward(X + h * dX, w, B + h * dB, V + h * dV)
    down = forward(X - h * dX, w, B - h * dB, V - h * dV)
    fd = (up - down) / (2 * h)
    jv = direct_velocity_jvp_numpy(X, w, B, V, dX, dB, dV)
    np.testing.assert_allclose(jv, fd, rtol=0, atol=1e-7 * np.abs(jv).max())


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("token_scale", [1e2, 1e4, 1e11, 1e15])
def test_vjp_at_huge_scores(d, token_scale):
    """Scores up to ~1e30. Moderate ones: the VJP equals its shifted-softmax numpy twin. Huge ones
    (tokens at 1e11, 1e15): the softmax is one-hot, so X_bar_k = (1/M) sum_j sum_{i -> k} V_j^T ubar_i,
    B_bar = 0 (no tilted covariance), and V_bar as the twin; the numpy twin's X_bar is lost to
    cancellation there (it forms z (E . c) ~ 1e22), the kernel's works relative to the argmax."""
    rng = np.random.default_rng(int(np.log10(token_scale)) + 11 * d)
    n, M = 30, 2
    X = padded(rng, n, d, scale=token_scale)
    w = np.full(n, 1.0 / n)
    B = np.zeros((M, 3, 3))
    V = np.zeros((M, 3, 3))
    B[:, 3 - d:, 3 - d:] = rng.normal(size=(M, d, d))
    V[:, 3 - d:, 3 - d:] = rng.normal(size=(M, d, d))
    ubar = padded(rng, n, d)
    X_bar, B_bar, V_bar = direct_velocity_vjp(X, w, B, V, ubar)
    assert all(np.all(np.isfinite(g)) for g in (X_bar, B_bar, V_bar))
    ref = direct_velocity_vjp_numpy(X, w, B, V, ubar)
    np.testing.assert_allclose(V_bar, ref[2], rtol=1e-12, atol=1e-12 * np.abs(ref[2]).max())
    if token_scale < 1e5:
        for g, r in zip((X_bar, B_bar), ref[:2]):
            np.testing.assert_allclose(g, r, rtol=0, atol=1e-9 * np.abs(r).max())
        return
    scores = np.einsum("jab,ib,ka->jik", B, X, X)  # (B_j x_i) . x_k
    onehot = np.zeros(X.shape)
    for j in range(M):
        np.add.at(onehot, scores[j].argmax(axis=1), ubar @ V[j] / M)
    np.testing.assert_allclose(X_bar, onehot, rtol=1e-12, atol=1e-12 * np.abs(onehot).max())
    assert np.abs(B_bar).max() <= 1e-12 * np.abs(V_bar).max()
