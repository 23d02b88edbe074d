"""Tests for gridpde.heads: score matrices, padding, random init."""

import numpy as np
import pytest

from gridpde.heads import Heads, conditional_wasserstein, pad3, pad_points, score_matrices

np.seterr(all="raise", under="ignore")


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("scale_scores", [False, True])
def test_score_matrices_give_the_attention_score(dim, scale_scores):
    rng = np.random.default_rng(1)
    L, M, k = 2, 3, 4
    Q, K, _ = Heads.random(L, M, k, dim, scale=1.0, seed=2).arrays().values()
    B = score_matrices(Q, K, scale_scores=scale_scores)
    assert B.shape == (L, M, dim, dim)
    factor = 1 / np.sqrt(k) if scale_scores else 1.0
    for _ in range(5):
        x, y = rng.standard_normal(dim), rng.standard_normal(dim)
        for l in range(L):
            for j in range(M):
                explicit = factor * np.dot(Q[l, j] @ x, K[l, j] @ y)
                assert abs((B[l, j] @ x) @ y - explicit) <= 1e-13 * (1 + abs(explicit))


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_padding_preserves_scores_and_values(dim):
    rng = np.random.default_rng(3)
    Q, K, V = Heads.random(2, 2, 3, dim, scale=1.0, seed=4).arrays().values()
    B = score_matrices(Q, K)
    x, y = rng.standard_normal((2, dim))
    Bp, Vp, xp, yp = pad3(B), pad3(V), pad_points(x), pad_points(y)
    assert Bp.shape == (2, 2, 3, 3) and xp.shape == (3,)
    np.testing.assert_array_equal(xp[: 3 - dim], 0.0)
    np.testing.assert_array_equal(xp[3 - dim :], x)
    np.testing.assert_allclose((Bp @ xp) @ yp, (B @ x) @ y, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose((Vp @ xp)[..., 3 - dim :], V @ x, rtol=1e-14, atol=1e-14)
    np.testing.assert_array_equal((Vp @ xp)[..., : 3 - dim], 0.0)
    assert pad_points(rng.standard_normal((5, 7, dim))).shape == (5, 7, 3)


def test_padding_rejects_bad_shapes():
    with pytest.raises(ValueError):
        pad3(np.zeros((2, 3)))
    with pytest.raises(ValueError):
        pad3(np.zeros((4, 4)))
    with pytest.raises(ValueError):
        pad_points(np.zeros((2, 4)))


def test_heads_random_is_reproducible_by_seed():
    a = list(Heads.random(2, 3, 2, 2, scale=0.5, seed=7).arrays().values())
    b = list(Heads.random(2, 3, 2, 2, scale=0.5, seed=7).arrays().values())
    c = list(Heads.random(2, 3, 2, 2, scale=0.5, seed=8).arrays().values())
    assert [x.shape for x in a] == [(2, 3, 2, 2), (2, 3, 2, 2), (2, 3, 2, 2)]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    # documented draw order: Q, K, V from one generator, scale * standard normal
    rng = np.random.default_rng(7)
    np.testing.assert_array_equal(a[0], 0.5 * rng.standard_normal((2, 3, 2, 2)))
    np.testing.assert_array_equal(a[1], 0.5 * rng.standard_normal((2, 3, 2, 2)))
    np.testing.assert_array_equal(a[2], 0.5 * rng.standard_normal((2, 3, 2, 2)))


def test_heads_npz_round_trip_and_missing_array(tmp_path):
    heads = Heads.random(1, 2, 2, 2, scale=1.0, seed=0)
    heads.save_npz(tmp_path / "h.npz")
    back = Heads.from_npz(tmp_path / "h.npz")
    np.testing.assert_array_equal(back.flat(), heads.flat())
    np.savez(tmp_path / "bad.npz", Q=heads.Q, K=heads.K)
    with pytest.raises(ValueError, match="V"):
        Heads.from_npz(tmp_path / "bad.npz")


def test_heads_type_scores_flattening_and_chain_rule():
    h = Heads.random(2, 3, 4, 2, scale=1.0, seed=1, scale_scores=True)
    assert (h.layers, h.width, h.head_dim, h.dim) == (2, 3, 4, 2)
    np.testing.assert_allclose(h.B, h.scores(False) / 2.0, rtol=1e-15)  # 1/sqrt(k), k = 4
    x = h.flat()
    assert x.shape == (2 * 3 * (4 * 2 * 2 + 4),)
    np.testing.assert_array_equal(h.with_flat(x).flat(), x)
    assert h.with_flat(x).scale_scores
    # chain rule: d/dt f(B(Q + t dQ, K + t dK)) with f = <G, B>, against <chain(G), (dQ, dK)>
    rng = np.random.default_rng(0)
    G = rng.standard_normal(h.B.shape)
    g = h.chain(G, np.zeros(h.V.shape))
    d = rng.standard_normal(x.size)
    eps = 1e-6
    fd = (np.sum(G * h.with_flat(x + eps * d).B) - np.sum(G * h.with_flat(x - eps * d).B)) / (2 * eps)
    assert abs(fd - g.flat() @ d) <= 1e-8 * abs(fd)
    assert conditional_wasserstein(h, h) == 0.0


@pytest.mark.parametrize("bad", [
    {"Q": np.zeros((1, 1, 1, 2)), "K": np.zeros((1, 1, 1, 3)), "V": np.zeros((1, 1, 2, 2))},
    {"Q": np.zeros((1, 1, 1, 2)), "K": np.zeros((1, 1, 1, 2)), "V": np.zeros((1, 1, 3, 3))},
    {"Q": np.zeros((1, 1, 2)), "K": np.zeros((1, 1, 2)), "V": np.zeros((1, 2, 2))},
    {"Q": np.full((1, 1, 1, 2), np.nan), "K": np.zeros((1, 1, 1, 2)), "V": np.zeros((1, 1, 2, 2))},
])
def test_heads_reject_bad_shapes_and_nan(bad):
    with pytest.raises(ValueError, match="Heads"):
        Heads(**bad)
