import numpy as np
import pytest

import gridpde._numba as gnumba
from gridpde.attention import table as tb
from gridpde.attention.tensor import tensor_velocity
from gridpde.attention.tensor_vjp import tensor_velocity_vjp
from gridpde.twins.attention import evaluate_numpy, evaluate_vjp_numpy

SHAPES = [(1, 1, 40), (1, 24, 20), (8, 9, 10)]  # padded 1-D, 2-D and 3-D layouts


def _density(shape, kind, ys):
    Y = np.meshgrid(*ys, indexing="ij")
    live = [a for a, n in enumerate(shape) if n > 1]
    if kind == "gauss":
        r2 = sum(Y[a] ** 2 for a in live)
        w = np.exp(-0.5 * r2)
    else:  # two well-separated narrow bumps
        c1 = sum((Y[a] - 1.6) ** 2 for a in live)
        c2 = sum((Y[a] + 1.4) ** 2 for a in live)
        w = np.exp(-c1 / 0.3) + 0.7 * np.exp(-c2 / 0.3)
    return w / w.sum()


def _problem(rng, shape, kind="gauss", M=4, T=60, bscale=None, deconvolve=True):
    """Sources on [-3, 3]^d, targets uniform there, random heads (|z| up to ~6 by default, ~3 in 3-D)."""
    if bscale is None:
        bscale = 0.35 if len(shape) - shape.count(1) == 3 else 0.7
    ys = [(np.arange(n) + 0.5) * 6.0 / n - 3.0 if n > 1 else np.zeros(1) for n in shape]
    w = _density(shape, kind, ys)
    live = [a for a, n in enumerate(shape) if n > 1]
    targets = np.zeros((T, 3))
    targets[:, live] = rng.uniform(-3, 3, size=(T, len(live)))
    B = np.zeros((M, 3, 3))
    V = np.zeros((M, 3, 3))
    ix = np.ix_(range(M), live, live)
    B[ix] = rng.normal(size=(M, len(live), len(live))) * bscale
    V[ix] = rng.normal(size=(M, len(live), len(live)))
    h = np.array([6.0 / n if n > 1 else 0.0 for n in shape]) if deconvolve else np.zeros(3)
    return targets, w, ys, B, V, h, ix


def _exact(targets, w, ys, B, V, h):
    out = np.empty((len(targets), 3))
    tensor_velocity(targets, w, *ys, B, V, h, out, np.empty((B.shape[0], len(targets))))
    return out


def _rel(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


@pytest.fixture(params=[0, 10**12], ids=["parallel", "serial"])
def build(request, monkeypatch):
    monkeypatch.setattr(gnumba, "SERIAL_BELOW", request.param)
    return request.param


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["gauss", "bumps"])
@pytest.mark.parametrize("tol", [1e-5, 1e-9])
def test_table_meets_tolerance(rng, shape, kind, tol):
    targets, w, ys, B, V, h, _ = _problem(rng, shape, kind)
    out = np.empty((len(targets), 3))
    info = tb.table_velocity(targets, w, *ys, B, V, h, out, tol=tol)
    ref = _exact(targets, w, ys, B, V, h)
    assert _rel(out, ref) <= tol
    if shape == (8, 9, 10) and kind == "bumps" and tol < 1e-6:
        # the tensor-refined 3-D table of the coarse two-bump grid exceeds the node cap: exact fallback
        assert info["method"] in ("table", "exact")
        return
    assert info["method"] == "table", info["reason"]
    assert info["error_estimate"] <= tol
    assert info["table"].d == sum(n > 1 for n in shape)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bscale", [8.0, 300.0])  # strong tilts; |z| up to ~1e3 and beyond (underflowing sums)
def test_strong_tilts_and_huge_scores(rng, shape, bscale):
    targets, w, ys, B, V, h, _ = _problem(rng, shape, "bumps", bscale=bscale)
    w[..., : max(1, w.shape[2] // 3)] = 0.0  # empty cells: exact sums underflow for some z
    out = np.empty((len(targets), 3))
    tol = 1e-7
    info = tb.table_velocity(targets, w, *ys, B, V, h, out, tol=tol, max_nodes=200_000)
    ref = _exact(targets, w, ys, B, V, h)
    assert np.all(np.isfinite(out))
    assert info["method"] in ("table", "exact")
    assert _rel(out, ref) <= tol, info["reason"]


def test_large_tilts_use_underflow_nodes(rng):
    targets, w, ys, B, V, h, _ = _problem(rng, (1, 1, 40), "bumps", bscale=200.0, M=2)
    w[..., :20] = 0.0
    out = np.empty((len(targets), 3))
    info = tb.table_velocity(targets, w, *ys, B, V, h, out, tol=1e-7)
    assert info["method"] == "table" and info["fallback_nodes"] > 0
    assert _rel(out, _exact(targets, w, ys, B, V, h)) <= 1e-7


@pytest.mark.parametrize("deconvolve", [False, True])
def test_one_cell(rng, deconvolve):
    targets, _, _, B, V, _, _ = _problem(rng, (1, 6, 5), M=3)
    ys = [np.zeros(1), np.array([0.3]), np.array([-0.2])]
    w = np.ones((1, 1, 1))
    h = np.array([0.0, 0.5, 0.5]) if deconvolve else np.zeros(3)
    out = np.empty((len(targets), 3))
    info = tb.table_velocity(targets, w, *ys, B, V, h, out, tol=1e-10)
    assert info["method"] == "table"
    assert _rel(out, _exact(targets, w, ys, B, V, h)) <= 1e-10


def test_many_heads(rng):
    targets, w, ys, B, V, h, _ = _problem(rng, (1, 24, 20), "bumps", M=32, T=80)
    out = np.empty((len(targets), 3))
    info = tb.table_velocity(targets, w, *ys, B, V, h, out, tol=1e-8)
    assert info["method"] == "table"
    assert _rel(out, _exact(targets, w, ys, B, V, h)) <= 1e-8


def test_cap_falls_back_to_exact(rng):
    targets, w, ys, B, V, h, _ = _problem(rng, (1, 24, 20), "bumps")
    out = np.empty((len(targets), 3))
    info = tb.table_velocity(targets, w, *ys, B, V, h, out, tol=1e-12, max_nodes=50)
    assert info["method"] == "exact" and "too large" in info["reason"]
    assert np.array_equal(out, _exact(targets, w, ys, B, V, h))


def _table(rng, shape, tol=1e-9, kind=None, M=3):
    kind = kind or ("gauss" if shape == (8, 9, 10) else "bumps")
    targets, w, ys, B, V, h, ix = _problem(rng, shape, kind, M=M, T=50)
    out = np.empty((len(targets), 3))
    info = tb.table_velocity(targets, w, *ys, B, V, h, out, tol=tol)
    assert info["method"] == "table"
    return targets, w, ys, B, V, h, ix, info, out


@pytest.mark.parametrize("shape", SHAPES)
def test_numba_matches_numpy_twins(rng, shape, build):
    targets, w, ys, B, V, h, ix, info, out = _table(rng, shape)
    table = info["table"]
    assert _rel(out, evaluate_numpy(table, targets, B, V)) <= 1e-13
    ubar = rng.normal(size=targets.shape)
    ubar[::4] = 0.0
    got = tb.evaluate_vjp(table, targets, B, V, ubar)
    ref = evaluate_vjp_numpy(table, targets, B, V, ubar)
    for g, r in zip(got, ref):
        assert _rel(g, r) <= 1e-12


@pytest.mark.parametrize("shape", SHAPES)
def test_vjp_is_the_transpose_of_the_frozen_forward(rng, shape, build):
    """<J dx, ubar> = <dx, J^T ubar> with J by central differences of the table forward (panels frozen)."""
    targets, w, ys, B, V, h, ix, info, _ = _table(rng, shape)
    table = info["table"]
    dw = rng.normal(size=w.shape) * w  # relative perturbations: the masses span many decades
    dB = np.zeros_like(B)
    dV = np.zeros_like(V)
    dB[ix] = rng.normal(size=dB[ix].shape)
    dV[ix] = rng.normal(size=dV[ix].shape)
    ubar = rng.normal(size=targets.shape)

    def forward(eps):
        t = tb._make_table(w + eps * dw, table.ys, table.h, table.axes, table.breaks, table.degree)
        return tb.evaluate(t, targets, B + eps * dB, V + eps * dV, np.empty((len(targets), 3)))

    eps = 1e-6
    jv = (forward(eps) - forward(-eps)) / (2 * eps)
    wb, Bb, Vb = tb.evaluate_vjp(table, targets, B, V, ubar)
    lhs = np.sum(jv * ubar)
    rhs = np.sum(wb * dw) + np.sum(Bb * dB) + np.sum(Vb * dV)
    assert abs(lhs - rhs) <= 1e-6 * np.abs(jv * ubar).sum()


@pytest.mark.parametrize("shape", SHAPES)
def test_vjp_matches_the_exact_kernels_vjp(rng, shape):
    targets, w, ys, B, V, h, ix, info, _ = _table(rng, shape, tol=1e-11, kind="gauss")
    ubar = rng.normal(size=targets.shape)
    got = tb.table_velocity_vjp(info, targets, w, *ys, B, V, h, ubar)
    ref = tensor_velocity_vjp(targets, w, *ys, B, V, h, ubar)
    for g, r in zip(got, ref):
        assert _rel(g, r) <= 1e-6


def test_vjp_after_exact_fallback_is_the_exact_vjp(rng):
    targets, w, ys, B, V, h, _ = _problem(rng, (1, 24, 20), "bumps")
    out = np.empty((len(targets), 3))
    info = tb.table_velocity(targets, w, *ys, B, V, h, out, tol=1e-12, max_nodes=50)
    ubar = rng.normal(size=targets.shape)
    got = tb.table_velocity_vjp(info, targets, w, *ys, B, V, h, ubar)
    ref = tensor_velocity_vjp(targets, w, *ys, B, V, h, ubar)
    for g, r in zip(got, ref):
        assert np.array_equal(g, r)
