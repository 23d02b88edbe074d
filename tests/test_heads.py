"""Tests for gridpde.heads: score matrices, padding, random init."""

import numpy as np
import pytest

from gridpde.heads import load_heads_npz, pad3, pad_points, random_heads, score_matrices

np.seterr(all="raise", under="ignore")


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("scale_scores", [False, True])
def test_score_matrices_give_the_attention_score(dim, scale_scores):
    rng = np.random.default_rng(1)
    L, M, k = 2, 3, 4
    Q, K, _ = random_heads(L, M, k, dim, scale=1.0, seed=2)
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
    Q, K, V = random_heads(2, 2, 3, dim, scale=1.0, seed=4)
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


def test_random_heads_are_reproducible_by_seed():
    a = random_heads(2, 3, 2, 2, scale=0.5, seed=7)
    b = random_heads(2, 3, 2, 2, scale=0.5, seed=7)
    c = random_heads(2, 3, 2, 2, scale=0.5, seed=8)
    assert [x.shape for x in a] == [(2, 3, 2, 2), (2, 3, 2, 2), (2, 3, 2, 2)]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    # documented draw order: Q, K, V from one generator, scale * standard normal
    rng = np.random.default_rng(7)
    np.testing.assert_array_equal(a[0], 0.5 * rng.standard_normal((2, 3, 2, 2)))
    np.testing.assert_array_equal(a[1], 0.5 * rng.standard_normal((2, 3, 2, 2)))
    np.testing.assert_array_equal(a[2], 0.5 * rng.standard_normal((2, 3, 2, 2)))


def test_load_heads_npz(tmp_path):
    Q, K, V = random_heads(1, 2, 2, 2, scale=1.0, seed=0)
    np.savez(tmp_path / "h.npz", Q=Q, K=K, V=V)
    for got, want in zip(load_heads_npz(tmp_path / "h.npz"), (Q, K, V), strict=True):
        np.testing.assert_array_equal(got, want)
    np.savez(tmp_path / "bad.npz", Q=Q, K=K)
    with pytest.raises(ValueError, match="V"):
        load_heads_npz(tmp_path / "bad.npz")
