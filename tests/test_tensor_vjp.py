import numba
import numpy as np
import pytest

from gridpde.attention.tensor import UNDERFLOW, langevin, tensor_velocity
from gridpde.attention.tensor_vjp import langevin_prime, tensor_velocity_vjp
from gridpde.twins.attention import tensor_velocity_jvp_numpy, tensor_velocity_numpy, tensor_velocity_vjp_numpy

#: every test here runs with the serial and with the parallel kernel builds
pytestmark = pytest.mark.usefixtures("kernel_build")

SHAPES = [(1, 1, 30), (1, 12, 10), (5, 6, 7)]  # padded 1-D, 2-D and 3-D layouts


def _problem(rng, shape, scale=1.0, M=3, T=37, zeros=True):
    """Sources on a box off the origin, targets ~ N(0, scale^2), random heads.

    With ``zeros`` a fifth of the cells are empty and, at large scales, the
    whole upper half of the last axis too: targets whose scores favour that
    half then see S0 ~ exp(-3.5 |z_2|) and take the underflow fallback.
    """
    ys = [np.linspace(-3, 3, n) + 0.7 if n > 1 else np.zeros(1) for n in shape]
    w = rng.random(shape) * (rng.random(shape) > 0.2) if zeros else rng.uniform(0.5, 1.5, shape)
    if zeros and scale > 1.0:
        w[..., ys[2] > 0.2] = 0.0
    live = [a for a, n in enumerate(shape) if n > 1]
    targets = np.zeros((T, 3))
    targets[:, live] = rng.normal(size=(T, len(live))) * scale
    B = np.zeros((M, 3, 3))
    V = np.zeros((M, 3, 3))
    ix = np.ix_(range(M), live, live)
    B[ix] = rng.normal(size=(M, len(live), len(live)))
    V[ix] = rng.normal(size=(M, len(live), len(live)))
    h = np.array([6 / (n - 1) if n > 1 else 0.0 for n in shape])
    return targets, w, ys, B, V, h, ix


def _directions(rng, w, B, V, ix):
    dw = rng.normal(size=w.shape)
    dB = np.zeros_like(B)
    dV = np.zeros_like(V)
    dB[ix] = rng.normal(size=dB[ix].shape)
    dV[ix] = rng.normal(size=dV[ix].shape)
    return dw, dB, dV


def _forward(targets, w, ys, B, V, h):
    out = np.empty((len(targets), 3))
    tensor_velocity(targets, w, *ys, B, V, h, out, np.empty((B.shape[0], len(targets))))
    return out


def _factorised(targets, w, ys, Bj):
    """Which targets take the factorised branch of the forward kernel for head Bj."""
    z = targets @ Bj.T
    Y = np.stack(np.meshgrid(*ys, indexing="ij"), axis=-1).reshape(-1, 3)
    shift = sum(np.maximum(z[:, a] * ys[a].min(), z[:, a] * ys[a].max()) for a in range(3))
    s0 = (w.ravel() * np.exp(z @ Y.T - shift[:, None])).sum(axis=1)
    return (s0 > UNDERFLOW) & (s0 < np.inf)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", [1.0, 150.0])  # 150: scores ~1e3, some targets take the fallback
@pytest.mark.parametrize("deconvolve", [False, True])
@pytest.mark.parametrize("M", [1, 2, 3])
def test_vjp_is_the_transpose_of_the_jvp(rng, shape, scale, deconvolve, M):
    targets, w, ys, B, V, h, ix = _problem(rng, shape, scale, M=M)
    h = h if deconvolve else np.zeros(3)
    if scale > 1.0:
        branch = np.concatenate([_factorised(targets, w, ys, B[j]) for j in range(M)])
        assert branch.any() and not branch.all()
    dw, dB, dV = _directions(rng, w, B, V, ix)
    ubar = rng.normal(size=(len(targets), 3))
    ubar[::5] = 0.0  # targets with nothing to pass back
    jv = tensor_velocity_jvp_numpy(targets, w, *ys, B, V, h, dw, dB, dV)
    wb, Bb, Vb = tensor_velocity_vjp(targets, w, *ys, B, V, h, ubar)
    lhs = np.sum(jv * ubar)
    rhs = np.sum(wb * dw) + np.sum(Bb * dB) + np.sum(Vb * dV)
    assert abs(lhs - rhs) <= 1e-12 * np.abs(jv * ubar).sum()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", [1.0, 150.0])
def test_kernel_matches_numpy_vjp_twin(rng, shape, scale):
    targets, w, ys, B, V, h, _ = _problem(rng, shape, scale)
    ubar = rng.normal(size=(len(targets), 3))
    got = tensor_velocity_vjp(targets, w, *ys, B, V, h, ubar, with_targets=True)
    want = tensor_velocity_vjp_numpy(targets, w, *ys, B, V, h, ubar)
    assert len(got) == len(want) == 4
    # at scale 150 the exponents are ~1e3: exp() itself is then only good to ~1e-13
    tol = 1e-12 if scale == 1.0 else 2e-11
    for g, ref in zip(got, want):
        assert np.abs(g - ref).max() <= tol * np.abs(ref).max()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("deconvolve", [False, True])
@pytest.mark.parametrize("zeros", [False, True])
def test_jvp_matches_central_differences(rng, shape, deconvolve, zeros):
    """Zero masses included: the factorised branch is smooth (linear) in w across w = 0."""
    targets, w, ys, B, V, h, ix = _problem(rng, shape, zeros=zeros)
    h = h if deconvolve else np.zeros(3)
    dw, dB, dV = _directions(rng, w, B, V, ix)
    eps = 1e-6
    fd = (_forward(targets, w + eps * dw, ys, B + eps * dB, V + eps * dV, h)
          - _forward(targets, w - eps * dw, ys, B - eps * dB, V - eps * dV, h)) / (2 * eps)  # fmt: skip
    jv = tensor_velocity_jvp_numpy(targets, w, *ys, B, V, h, dw, dB, dV)
    assert np.abs(fd - jv).max() <= 1e-8 * np.abs(jv).max()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("deconvolve", [False, True])
def test_target_cotangent_matches_central_differences(rng, shape, deconvolve):
    """x_bar (query tokens are moving targets): <ubar, d out> for a move dX of the targets."""
    targets, w, ys, B, V, h, ix = _problem(rng, shape)
    h = h if deconvolve else np.zeros(3)
    live = [a for a, n in enumerate(shape) if n > 1]
    dX = np.zeros_like(targets)
    dX[:, live] = rng.normal(size=(len(targets), len(live)))
    ubar = rng.normal(size=(len(targets), 3))
    *_, xbar = tensor_velocity_vjp(targets, w, *ys, B, V, h, ubar, with_targets=True)
    eps = 1e-6
    fd = np.sum(ubar * (_forward(targets + eps * dX, w, ys, B, V, h)
                        - _forward(targets - eps * dX, w, ys, B, V, h))) / (2 * eps)  # fmt: skip
    assert abs(fd - np.sum(xbar * dX)) <= 1e-8 * np.abs(xbar * dX).sum()
    assert np.all(xbar[:, [a for a in range(3) if a not in live]] == 0.0)


@pytest.mark.parametrize("shape", SHAPES)
def test_jvp_matches_central_differences_in_the_underflow_fallback(rng, shape):
    """Scores ~1e3: strongly curved, so a small eps; masses kept away from 0."""
    targets, w, ys, B, V, h, ix = _problem(rng, shape, scale=150.0)
    w = np.where(w > 0.1, w, 0.0)
    dw, dB, dV = _directions(rng, w, B, V, ix)
    dw *= w > 0
    eps = 1e-7
    fd = (_forward(targets, w + eps * dw, ys, B + eps * dB, V + eps * dV, h)
          - _forward(targets, w - eps * dw, ys, B - eps * dB, V - eps * dV, h)) / (2 * eps)  # fmt: skip
    jv = tensor_velocity_jvp_numpy(targets, w, *ys, B, V, h, dw, dB, dV)
    assert np.abs(fd - jv).max() <= 2e-8 * np.abs(jv).max()


def test_massless_sources_are_live_only_in_the_factorised_branch(rng):
    """The frozen branch: the fallback sums over w > 0 only, as the forward kernel does."""
    targets, w, ys, B, V, h, _ = _problem(rng, (1, 12, 10), scale=150.0, M=1)
    fact = _factorised(targets, w, ys, B[0])
    ubar = rng.normal(size=(len(targets), 3))
    zero = w == 0
    assert zero.any()
    wb_fact, _, _ = tensor_velocity_vjp(targets[fact], w, *ys, B, V, h, ubar[fact])
    wb_fall, _, _ = tensor_velocity_vjp(targets[~fact], w, *ys, B, V, h, ubar[~fact])
    assert np.all(wb_fall[zero] == 0.0)
    assert np.all(wb_fact[zero] != 0.0)


def test_result_does_not_depend_on_the_thread_count(rng):
    targets, w, ys, B, V, h, _ = _problem(rng, (1, 30, 40), T=500)
    ubar = rng.normal(size=(len(targets), 3))
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = tensor_velocity_vjp(targets, w, *ys, B, V, h, ubar)
        numba.set_num_threads(old)
        many = tensor_velocity_vjp(targets, w, *ys, B, V, h, ubar)
    finally:
        numba.set_num_threads(old)
    for a, b in zip(one, many):
        np.testing.assert_array_equal(a, b)


def test_langevin_prime_is_the_derivative_of_langevin():
    u = np.array([1e-9, 1e-3, 0.1, 0.2499999, 0.25, 0.2500001, 0.7, 5.0, 19.9999, 20.0001, 40.0, 800.0])
    for x in u:
        d = 1e-5 * max(1.0, x)
        fd = (langevin(x + d) - langevin(x - d)) / (2 * d)
        assert langevin_prime(x) == pytest.approx(fd, rel=1e-8, abs=1e-14)
        assert langevin_prime(-x) == langevin_prime(x)
    # the series and the closed form meet at |u| = 0.25 to round-off
    lo, hi = langevin_prime(np.nextafter(0.25, 0.0)), langevin_prime(0.25)
    assert abs(lo - hi) <= 4e-15
    assert langevin_prime(0.0) == 1.0 / 3.0


def test_denormal_tails_under_the_highest_scores_stay_finite_and_exact():
    """Cells of 1e-322 where the scores are largest, zeros beyond (a grid density's underflowing tail):
    the fallback shifts by the largest log-term, so no 1/denormal (was NaN, seen in training)."""
    y1 = np.linspace(-7, 7, 24)
    y2 = np.linspace(-8.6, 8.6, 24)
    w = np.zeros((1, 24, 24))
    w[0, 8:16, 8:16] = np.exp(-((y1[8:16, None] / 2) ** 2 + (y2[None, 8:16] / 2) ** 2))
    w[0, 0, 20:] = 1.4e-322  # a denormal tail in the corner the scores favour
    w[0, 1, 18:] = 1e-310
    w /= w.sum()
    ys = [np.zeros(1), y1, y2]
    B = np.zeros((1, 3, 3))
    B[0, 1:, 1:] = [[111.6, -76.8], [-165.1, 113.7]]
    V = np.zeros((1, 3, 3))
    V[0, 1:, 1:] = [[1.0, 0.5], [-0.3, 2.0]]
    targets = np.zeros((40, 3))
    targets[:, 1] = -7.0
    targets[:, 2] = np.linspace(-8, 8, 40)
    h = np.array([0.0, 14 / 23, 17.2 / 23])
    out = _forward(targets, w, ys, B, V, h)
    want, _ = tensor_velocity_numpy(targets, w, *ys, B, V, h)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(want))
    assert np.abs(out - want).max() <= 1e-10 * np.abs(want).max()
    wb, Bb, Vb, xb = tensor_velocity_vjp(targets, w, *ys, B, V, h, np.ones((40, 3)), with_targets=True)
    assert all(np.all(np.isfinite(a)) for a in (Bb, Vb, xb)) and np.all(np.isfinite(wb[w > 1e-300]))
