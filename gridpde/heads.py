"""Attention heads theta = (Q, K, V): random init, files, score matrices.

A configuration of L layers with M heads each is stored as three arrays

    Q, K: (L, M, k, d)      V: (L, M, d, d)

with k the head dimension and d the token dimension (MODEL.md section 1).
The score of head (l, j) is <Q x, K y> = (B x)·y with B = K^T Q (d x d).

The kernels work in a padded 3-D layout: a d-dimensional point x is stored as
(0, ..., 0, x_1, ..., x_d), physical coordinates last, and a d x d matrix sits
in the last d rows and columns of a 3 x 3 block of zeros (:func:`pad3`,
:func:`pad_points`). Padding keeps (B x)·y and V x unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HEAD_ARRAYS = ("Q", "K", "V")


def random_heads(
    layers: int, heads: int, head_dim: int, dim: int, scale: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random heads with i.i.d. N(0, scale^2) entries.

    The draws are ``scale * rng.standard_normal(shape)`` from one
    ``np.random.default_rng(seed)``, in the order Q, K, V, so a seed fixes
    the heads on every platform.

    Args:
        layers: L >= 1, number of layers.
        heads: M >= 1, heads per layer.
        head_dim: k >= 1, rows of Q and K.
        dim: d in {1, 2, 3}, token dimension.
        scale: standard deviation sigma of every entry.
        seed: seed of the generator.

    Returns:
        (Q, K, V) as float64 arrays, Q, K: (L, M, k, d), V: (L, M, d, d).
    """
    rng = np.random.default_rng(seed)
    qk_shape = (layers, heads, head_dim, dim)
    Q = scale * rng.standard_normal(qk_shape)
    K = scale * rng.standard_normal(qk_shape)
    V = scale * rng.standard_normal((layers, heads, dim, dim))
    return Q, K, V


def load_heads_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read the arrays Q, K, V from the ``.npz`` file at ``path``.

    Shapes are not checked here (the case parser does that).

    Args:
        path: file written e.g. by ``np.savez(path, Q=Q, K=K, V=V)``.

    Returns:
        (Q, K, V) as stored in the file.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not an npz archive or lacks one of Q, K, V.
    """
    data = np.load(path, allow_pickle=False)
    if not isinstance(data, np.lib.npyio.NpzFile):
        msg = f"{path}: expected an .npz archive with arrays Q, K, V, found a single array"
        raise ValueError(msg)
    with data:
        missing = [name for name in HEAD_ARRAYS if name not in data.files]
        if missing:
            msg = (
                f"{path}: missing array(s) {', '.join(missing)}; "
                f"expected Q, K, V (found: {', '.join(data.files) or 'none'})"
            )
            raise ValueError(msg)
        Q, K, V = (np.array(data[name]) for name in HEAD_ARRAYS)
    return Q, K, V


def score_matrices(Q: np.ndarray, K: np.ndarray, scale_scores: bool = False) -> np.ndarray:
    """Score matrices B = K^T Q of every head, so that <Q x, K y> = (B x)·y.

    Args:
        Q: (..., k, d) query matrices, e.g. (L, M, k, d).
        K: (..., k, d) key matrices, same shape as Q.
        scale_scores: divide B by sqrt(k) (the score <Qx, Ky>/sqrt(k));
            MODEL.md's convention is no factor.

    Returns:
        B: (..., d, d) with B[..., i, j] = sum_a K[..., a, i] Q[..., a, j].
    """
    Q = np.asarray(Q, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    if Q.shape != K.shape or Q.ndim < 2:
        msg = f"Q and K must have the same shape (..., k, d); got {Q.shape} and {K.shape}"
        raise ValueError(msg)
    B = np.einsum("...ai,...aj->...ij", K, Q)
    if scale_scores:
        B = B / np.sqrt(Q.shape[-2])
    return B


def pad3(A: np.ndarray) -> np.ndarray:
    """Embed d x d matrices into 3 x 3 ones, the block in the last d rows/cols.

    Args:
        A: (..., d, d) with d <= 3, e.g. score matrices B or values V.

    Returns:
        (..., 3, 3) float64 array, zero outside ``[..., 3-d:, 3-d:]``; with
        :func:`pad_points`, (pad3(B) pad(x))·pad(y) = (B x)·y.
    """
    A = np.asarray(A, dtype=np.float64)
    d = A.shape[-1] if A.ndim >= 2 else 0
    if A.ndim < 2 or A.shape[-2] != d or not 1 <= d <= 3:
        msg = f"pad3 expects (..., d, d) with 1 <= d <= 3; got shape {A.shape}"
        raise ValueError(msg)
    out = np.zeros(A.shape[:-2] + (3, 3))
    out[..., 3 - d :, 3 - d :] = A
    return out


def pad_points(x: np.ndarray) -> np.ndarray:
    """Embed d-dimensional points into 3-D as (0, ..., 0, x_1, ..., x_d).

    Args:
        x: (..., d) with 1 <= d <= 3.

    Returns:
        (..., 3) float64 array, physical coordinates last.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 1 or not 1 <= x.shape[-1] <= 3:
        msg = f"pad_points expects (..., d) with 1 <= d <= 3; got shape {x.shape}"
        raise ValueError(msg)
    d = x.shape[-1]
    out = np.zeros(x.shape[:-1] + (3,))
    out[..., 3 - d :] = x
    return out


def conditional_wasserstein(a: dict, b: dict) -> float:
    """W_c between two head configurations of the same shape (MODEL.md section 5).

    W_c^2 = (1/L) sum_l W_2^2(nu_l, nu'_l), nu_l = (1/M) sum_j delta_{theta_{l,j}},
    theta = (Q, K, V) flattened; each layer's W_2 between two uniform
    measures of M atoms is an assignment problem (scipy's
    ``linear_sum_assignment``).

    Args:
        a, b: dicts with Q, K (L, M, k, d) and V (L, M, d, d).
    """
    from scipy.optimize import linear_sum_assignment

    L, M = a["V"].shape[:2]
    flat = [np.concatenate([h[k].reshape(L, M, -1) for k in ("Q", "K", "V")], axis=-1) for h in (a, b)]
    total = 0.0
    for layer in range(L):
        x, y = flat[0][layer], flat[1][layer]
        cost = np.sum((x[:, None, :] - y[None, :, :]) ** 2, axis=-1)
        rows, cols = linear_sum_assignment(cost)
        total += cost[rows, cols].sum() / M
    return float(np.sqrt(total / L))
