"""The tensor-grid attention VJP: dot-product tests against the numpy JVP, and JVP vs differences."""

import numpy as np
import pytest

from gridpde.attention.tensor import tensor_velocity
from gridpde.attention.tensor_vjp import langevin_prime, tensor_velocity_jvp_numpy, tensor_velocity_vjp
from gridpde.attention.tensor import langevin


def _problem(rng, shape, scale=1.0, M=3, T=60):
    ys = [np.linspace(-3, 3, n) if n > 1 else np.zeros(1) for n in shape]
    w = rng.random(shape) * (rng.random(shape) > 0.2)
    live = [a for a, n in enumerate(shape) if n > 1]
    targets = np.zeros((T, 3))
    targets[:, live] = rng.normal(size=(T, len(live))) * scale
    B = np.zeros((M, 3, 3))
    V = np.zeros((M, 3, 3))
    ix = np.ix_(range(M), live, live)
    B[ix] = rng.normal(size=(M, len(live), len(live))) * 0.5
    V[ix] = rng.normal(size=(M, len(live), len(live)))
    h = np.array([6 / (n - 1) if n > 1 else 0.0 for n in shape])
    return targets, w, ys, B, V, h, ix


def _forward(targets, w, ys, B, V, h):
    out = np.empty((len(targets), 3))
    tensor_velocity(targets, w, *ys, B, V, h, out, np.empty((B.shape[0], len(targets))))
    return out


@pytest.mark.parametrize("shape", [(1, 1, 30), (1, 12, 10), (5, 6, 7)])
@pytest.mark.parametrize("deconvolve", [False, True])
@pytest.mark.parametrize("scale", [1.0, 120.0])  # 120: the underflow fallback
def test_dot_product(rng, shape, deconvolve, scale):
    targets, w, ys, B, V, h, ix = _problem(rng, shape, scale)
    h = h if deconvolve else np.zeros(3)
    dw = rng.normal(size=w.shape)
    dB = np.zeros_like(B)
    dV = np.zeros_like(V)
    dB[ix] = rng.normal(size=dB[ix].shape)
    dV[ix] = rng.normal(size=dV[ix].shape)
    ubar = rng.normal(size=(len(targets), 3))
    jvp = tensor_velocity_jvp_numpy(targets, w, *ys, B, V, h, dw, dB, dV)
    wb, Bb, Vb = tensor_velocity_vjp(targets, w, *ys, B, V, h, ubar)
    lhs = np.sum(jvp * ubar)
    rhs = np.sum(wb * dw) + np.sum(Bb * dB) + np.sum(Vb * dV)
    scale_ = np.abs(jvp).sum() * np.abs(ubar).max()
    assert abs(lhs - rhs) <= 1e-12 * scale_, (lhs, rhs)


@pytest.mark.parametrize("shape", [(1, 1, 30), (1, 12, 10)])
def test_jvp_matches_central_differences(rng, shape):
    targets, w, ys, B, V, h, ix = _problem(rng, shape)
    dw = rng.normal(size=w.shape) * (w > 0)
    dB = np.zeros_like(B)
    dV = np.zeros_like(V)
    dB[ix] = rng.normal(size=dB[ix].shape)
    dV[ix] = rng.normal(size=dV[ix].shape)
    eps = 1e-6
    fd = (_forward(targets, w + eps * dw, ys, B + eps * dB, V + eps * dV, h)
          - _forward(targets, w - eps * dw, ys, B - eps * dB, V - eps * dV, h)) / (2 * eps)
    jvp = tensor_velocity_jvp_numpy(targets, w, *ys, B, V, h, dw, dB, dV)
    assert np.abs(fd - jvp).max() <= 1e-7 * np.abs(jvp).max()


def test_langevin_prime_is_the_derivative():
    for u in (1e-6, 0.1, 0.2499, 0.2501, 1.0, 7.0, 25.0):
        fd = (langevin(u + 1e-6) - langevin(u - 1e-6)) / 2e-6
        assert langevin_prime(u) == pytest.approx(fd, rel=1e-8, abs=1e-10)
        assert langevin_prime(-u) == pytest.approx(langevin_prime(u), rel=1e-14)
