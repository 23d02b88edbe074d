"""Direct attention kernel: numba vs numpy twin, a Gaussian check, fast_exp."""

import numpy as np
import pytest

from gridpde._numba import kernel
from gridpde.attention.direct import attention_velocity, direct_velocity
from gridpde.attention.fastexp import fast_exp
from gridpde.twins.attention import reference_velocity

#: every test here runs with the serial and with the parallel kernel builds
pytestmark = pytest.mark.usefixtures("kernel_build")


TINY = np.finfo(np.float64).tiny  # smallest normal float
SUBNORMAL_ULP = 2.0**-1074


@pytest.fixture(autouse=True)
def _raise_on_fp_errors():
    with np.errstate(all="raise", under="ignore"):
        yield


@kernel
def _fast_exp_array(x, out):
    for i in range(x.shape[0]):
        out[i] = fast_exp(x[i])


def fast_exp_np(x):
    x = np.ascontiguousarray(x, dtype=np.float64)
    out = np.empty_like(x)
    _fast_exp_array(x, out)
    return out


def padded(rng, n, d, scale=1.0):
    """n random points in the padded 3-vector layout, physical coords last."""
    p = np.zeros((n, 3))
    p[:, 3 - d :] = scale * rng.standard_normal((n, d))
    return p


def padded_mats(rng, m, d, scale=1.0):
    a = np.zeros((m, 3, 3))
    a[:, 3 - d :, 3 - d :] = scale * rng.standard_normal((m, d, d))
    return a


def assert_agree(got, ref, rtol=1e-12):
    out, lse = got
    out_ref, lse_ref = ref
    scale = np.abs(out_ref).max()
    np.testing.assert_allclose(out, out_ref, rtol=rtol, atol=rtol * scale)
    np.testing.assert_allclose(lse, lse_ref, rtol=rtol, atol=rtol * np.abs(lse_ref).max())


# ---------------------------------------------------------------- numba vs numpy


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("score_scale", [1.0, 500.0])
def test_direct_matches_reference(d, score_scale):
    rng = np.random.default_rng(10 * d + int(score_scale))
    N, T, M = 1037, 301, 3  # sizes that are not multiples of the vector width
    sources = padded(rng, N, d)
    targets = padded(rng, T, d)
    weights = rng.random(N)
    weights[rng.random(N) < 0.2] = 0.0  # some zero weights
    # scores z.y = (B x).y of size ~ score_scale (up to +-500)
    B = padded_mats(rng, M, d, scale=score_scale / d)
    V = padded_mats(rng, M, d)
    got = attention_velocity(targets, sources, weights, B, V)
    ref = reference_velocity(targets, sources, weights, B, V, block=64)
    if score_scale > 1:  # the stabilisation is really exercised
        assert np.abs(ref[1]).max() > 300
    assert np.all(np.isfinite(got[0])) and np.all(np.isfinite(got[1]))
    assert_agree(got, ref)


def test_padding_columns_in_the_middle():
    """Zero leading columns are skipped; other layouts still give the full sum."""
    rng = np.random.default_rng(3)
    N, T, M = 500, 40, 2
    sources = padded(rng, N, 3)
    sources[:, 1] = 0.0  # column 1 zero, column 0 not: must take the 3-D path
    targets = padded(rng, T, 3)
    weights = rng.random(N)
    B = padded_mats(rng, M, 3, scale=3.0)
    V = padded_mats(rng, M, 3)
    assert_agree(
        attention_velocity(targets, sources, weights, B, V),
        reference_velocity(targets, sources, weights, B, V),
    )


def test_sources_at_origin():
    rng = np.random.default_rng(4)
    sources = np.zeros((10, 3))
    weights = rng.random(10)
    targets = padded(rng, 7, 2)
    B = padded_mats(rng, 2, 2)
    V = padded_mats(rng, 2, 2)
    out, lse = attention_velocity(targets, sources, weights, B, V)
    assert np.all(out == 0.0)
    np.testing.assert_allclose(lse, np.log(weights.sum()), rtol=1e-14)


def test_all_weights_zero():
    rng = np.random.default_rng(5)
    sources = padded(rng, 50, 2)
    targets = padded(rng, 9, 2)
    weights = np.zeros(50)
    B = padded_mats(rng, 3, 2)
    V = padded_mats(rng, 3, 2)
    out, lse = attention_velocity(targets, sources, weights, B, V)
    assert np.all(out == 0.0)
    assert lse.shape == (3, 9) and np.all(lse == -np.inf)
    out_ref, lse_ref = reference_velocity(targets, sources, weights, B, V)
    assert np.all(out_ref == 0.0) and np.all(lse_ref == -np.inf)


def test_single_source_and_weight_scaling():
    """One source: m = y exactly; scaling all weights shifts lse by log c only."""
    rng = np.random.default_rng(6)
    sources = padded(rng, 1, 3)
    targets = padded(rng, 5, 3)
    B = padded_mats(rng, 2, 3, scale=100.0)
    V = np.broadcast_to(np.eye(3), (2, 3, 3)).copy()
    out, lse = attention_velocity(targets, sources, np.array([0.25]), B, V)
    np.testing.assert_allclose(out, np.broadcast_to(sources, out.shape), rtol=1e-15)
    src = padded(rng, 300, 3)
    w = rng.random(300)
    o1, l1 = attention_velocity(targets, src, w, B, V)
    o2, l2 = attention_velocity(targets, src, 8.0 * w, B, V)
    np.testing.assert_allclose(o2, o1, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(l2 - l1, np.log(8.0), rtol=1e-11)


def test_kernel_writes_into_out():
    rng = np.random.default_rng(7)
    sources = padded(rng, 64, 2)
    targets = padded(rng, 16, 2)
    weights = rng.random(64)
    B = padded_mats(rng, 2, 2)
    V = padded_mats(rng, 2, 2)
    out = np.full((16, 3), np.nan)
    lse = np.full((2, 16), np.nan)
    direct_velocity(targets, sources, weights, B, V, out, lse)
    assert_agree((out, lse), reference_velocity(targets, sources, weights, B, V))


def test_wrapper_validates():
    rng = np.random.default_rng(8)
    s = padded(rng, 8, 2)
    w = np.ones(8)
    B = padded_mats(rng, 1, 2)
    V = padded_mats(rng, 1, 2)
    with pytest.raises(ValueError):
        attention_velocity(np.asfortranarray(padded(rng, 4, 2)), s, w, B, V)
    with pytest.raises(TypeError):
        attention_velocity(s.astype(np.float32), s, w, B, V)
    with pytest.raises(ValueError):
        attention_velocity(s[:, :2].copy(), s, w, B, V)
    with pytest.raises(ValueError):
        attention_velocity(s, s, -w, B, V)
    with pytest.raises(ValueError):
        attention_velocity(s, s, w[:4], B, V)


# ---------------------------------------------------------------- Gaussian check


@pytest.mark.parametrize("d", [1, 2, 3])
def test_gaussian_tilted_mean(d):
    """Equal-weight samples of N(m, S): the tilted mean at z tends to m + S z.

    The tolerance is 5 standard errors of the self-normalised estimate, and
    the test asserts those errors are small next to the shift S z.
    """
    rng = np.random.default_rng(100 + d)
    N = 200_000
    m = np.array([0.5, -1.0, 0.25])[:d]
    A = rng.standard_normal((d, d))
    S = A @ A.T / d + 0.5 * np.eye(d)
    sources = np.zeros((N, 3))
    sources[:, 3 - d :] = rng.multivariate_normal(m, S, size=N)
    weights = np.full(N, 1.0 / N)
    # one head, B = I, V = I: out(x) = m(z) at z = x
    T = 6
    zs = rng.standard_normal((T, d))
    zs *= 0.8 / np.sqrt(np.einsum("ti,ij,tj->t", zs, S, zs))[:, None]  # z^T S z = 0.64
    targets = np.zeros((T, 3))
    targets[:, 3 - d :] = zs
    eye = np.eye(3)[None].copy()
    out, lse = attention_velocity(targets, sources, weights, eye, eye)
    expect = m + zs @ S.T
    y = sources[:, 3 - d :]
    for t in range(T):
        p = np.exp(y @ zs[t] - (y @ zs[t]).max())
        p /= p.sum()
        se = np.sqrt(p**2 @ (y - out[t, 3 - d :]) ** 2)  # per-component std. error
        shift = np.abs(zs[t] @ S.T)
        assert se.max() < 0.02 * max(shift.max(), 0.1)  # the check is meaningful
        np.testing.assert_array_less(np.abs(out[t, 3 - d :] - expect[t]), 5 * se)
        # log-normaliser: log E exp(z.y) = z.m + z^T S z / 2
        lse_exact = zs[t] @ m + 0.5 * zs[t] @ S @ zs[t]
        assert abs(lse[0, t] - lse_exact) < 0.02
    assert np.all(out[:, : 3 - d] == 0.0)


# ---------------------------------------------------------------- fast_exp


def test_fast_exp_relative_error():
    rng = np.random.default_rng(9)
    x = np.concatenate(
        [
            np.linspace(-745.0, 0.0, 1_000_001),
            rng.uniform(-745.0, 0.0, 1_000_000),
            rng.uniform(-1.0, 0.0, 100_000),
            -np.logspace(-300, 2.8, 10_000),
            np.linspace(0.0, 600.0, 10_001),
        ]
    )
    got = fast_exp_np(x)
    ref = np.exp(x)
    normal = ref >= TINY
    rel = np.abs(got[normal] - ref[normal]) / ref[normal]
    assert rel.max() <= 1e-14
    # subnormal results (x < -708.4) cannot be relatively accurate: one ulp
    assert np.all(np.abs(got[~normal] - ref[~normal]) <= SUBNORMAL_ULP)
    assert fast_exp_np(np.array([0.0]))[0] == 1.0


def test_fast_exp_extremes():
    x = np.array([-745.2, -746.0, -800.0, -1e5, -1e300, -np.inf, np.nan])
    got = fast_exp_np(x)
    assert np.all(got[:-1] == 0.0)
    assert np.isnan(got[-1])
    tiny = fast_exp_np(np.array([-744.5, -720.0]))
    assert 0.0 < tiny[0] <= 2 * SUBNORMAL_ULP
    assert abs(tiny[1] - np.exp(-720.0)) <= SUBNORMAL_ULP


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("token_scale", [1e6, 1e11, 1e15])
def test_huge_scores_match_the_shifted_softmax(d, token_scale):
    """Tokens at up to 1e15 give scores up to ~1e30 (a self-attention script's tokens grew to 1e11,
    scores 1e23, and the kernel divided by zero): the kernel still gives the shifted softmax."""
    rng = np.random.default_rng(int(np.log10(token_scale)) + 7 * d)
    n, M = 40, 2
    X = padded(rng, n, d, scale=token_scale)
    w = np.full(n, 1.0 / n)
    B = padded_mats(rng, M, d)
    V = padded_mats(rng, M, d)
    out, lse = attention_velocity(X, X, w, B, V)
    assert np.abs(lse).max() > 1e-3 * token_scale**2  # the scores are as huge as intended
    ref_out, ref_lse = reference_velocity(X, X, w, B, V)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(lse))
    np.testing.assert_allclose(out, ref_out, rtol=1e-12, atol=1e-12 * np.abs(ref_out).max())
    np.testing.assert_allclose(lse, ref_lse, rtol=1e-12)


def test_a_denormal_weight_on_the_top_score_is_dropped_not_a_division_by_a_denormal():
    """Quadrature tokens of a thin Gaussian once held weights of 1e-320 in the corners of their box; with
    large heads such a token had the largest score and the normaliser was denormal (ZeroDivisionError,
    seen training in-context regression). Sources below WEIGHT_FLOOR of the heaviest are dropped, in the
    forward kernel, its VJP and the prompts' weights alike."""
    from gridpde.attention import direct
    from gridpde.attention.direct_vjp import direct_velocity_vjp
    from gridpde.prompts import WEIGHT_FLOOR, GaussianPrompt, normalised_weights

    assert WEIGHT_FLOOR == direct.WEIGHT_FLOOR
    X = np.zeros((3, 3))
    X[:, 2] = [0.0, 0.5, 8.0]
    w = np.array([0.6, 0.4, 1e-320])
    B = np.zeros((1, 3, 3))
    B[0, 2, 2] = 200.0
    V = np.zeros((1, 3, 3))
    V[0, 2, 2] = 1.0
    out, _ = direct.attention_velocity(X, X, w, B, V)
    ref, _ = direct.attention_velocity(X, X[:2], w[:2], B, V)
    assert np.all(np.isfinite(out)) and np.array_equal(out, ref)
    Xb, Bb, Vb = direct_velocity_vjp(X, w, B, V, np.ones((3, 3)))
    assert all(np.all(np.isfinite(a)) for a in (Xb, Bb, Vb))
    assert np.array_equal(normalised_weights(np.array([1.0, 1e-320]), positive=False), [1.0, 0.0])
    X, w = GaussianPrompt([0.0, 0.0], [[0.25, 0.5], [0.5, 1.01]]).tokens(1024)
    assert w.min() >= WEIGHT_FLOOR * w.max()
