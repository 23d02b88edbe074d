"""Attention heads theta = (Q, K, V): random init, files, score matrices.

A configuration of L layers with M heads each is stored as three arrays

    Q, K: (L, M, k, d)      V: (L, M, d, d)

with k the head dimension and d the token dimension (docs/model.md section 1).
The score of head (l, j) is <Q x, K y> = (B x)·y with B = K^T Q (d x d).

The kernels work in a padded 3-D layout: a d-dimensional point x is stored as
(0, ..., 0, x_1, ..., x_d), physical coordinates last, and a d x d matrix sits
in the last d rows and columns of a 3 x 3 block of zeros (:func:`pad3`,
:func:`pad_points`). Padding keeps (B x)·y and V x unchanged.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HEAD_ARRAYS = ("Q", "K", "V")


@dataclass(frozen=True, eq=False)
class Heads:
    """L layers of M attention heads theta_{l,j} = (Q, K, V).

    Attributes:
        Q: (L, M, k, d) query matrices.
        K: (L, M, k, d) key matrices.
        V: (L, M, d, d) value matrices.
        scale_scores: the score is <Qx, Ky> / sqrt(k) instead of <Qx, Ky>.

    The arrays are validated (shapes, finite entries) and stored as
    read-only float64 copies. Gradients with respect to the heads are
    returned as ``Heads`` of the same shapes.
    """

    Q: np.ndarray
    K: np.ndarray
    V: np.ndarray
    scale_scores: bool = False

    def __post_init__(self):
        arrays = {}
        for name in HEAD_ARRAYS:
            a = np.array(getattr(self, name), dtype=np.float64)
            a.setflags(write=False)
            arrays[name] = a
        Q, K, V = arrays.values()
        if Q.ndim != 4 or K.shape != Q.shape or not 1 <= Q.shape[-1] <= 3:
            msg = f"Heads: Q and K must both be (L, M, k, d) with 1 <= d <= 3; got {Q.shape} and {K.shape}"
            raise ValueError(msg)
        L, M, _, d = Q.shape
        if V.shape != (L, M, d, d):
            raise ValueError(f"Heads: V must be (L, M, d, d) = {(L, M, d, d)}; got {V.shape}")
        for name, a in arrays.items():
            if not np.all(np.isfinite(a)):
                raise ValueError(f"Heads: {name} has non-finite entries")
            object.__setattr__(self, name, a)
        object.__setattr__(self, "scale_scores", bool(self.scale_scores))

    # ------------------------------------------------------------ sizes
    @property
    def layers(self) -> int:
        """L, the number of layers."""
        return self.Q.shape[0]

    @property
    def width(self) -> int:
        """M, the number of heads per layer."""
        return self.Q.shape[1]

    @property
    def head_dim(self) -> int:
        """k, the rows of Q and K."""
        return self.Q.shape[2]

    @property
    def dim(self) -> int:
        """d, the token dimension."""
        return self.Q.shape[3]

    # ------------------------------------------------------------ scores
    @property
    def B(self) -> np.ndarray:
        """(L, M, d, d) score matrices of the scores the model uses (see :meth:`scores`)."""
        return self.scores(self.scale_scores)

    def scores(self, scaled: bool) -> np.ndarray:
        """B = K^T Q, divided by sqrt(k) if ``scaled``, so that the score is (B x)·y."""
        return score_matrices(self.Q, self.K, scaled)

    def chain(self, B_bar: np.ndarray, V_bar: np.ndarray) -> Heads:
        """The gradient in (Q, K, V) from dR/dB and dR/dV: dR/dQ = c K dR/dB, dR/dK = c Q (dR/dB)^T.

        c = 1/sqrt(k) with ``scale_scores``, else 1.
        """
        c = 1.0 / np.sqrt(self.head_dim) if self.scale_scores else 1.0
        # not validated: a gradient may hold NaN, which the caller reports (RiskResult.check_finite)
        grad = object.__new__(Heads)
        for name, a in zip(HEAD_ARRAYS, (c * self.K @ B_bar, c * self.Q @ np.swapaxes(B_bar, -1, -2), V_bar)):
            object.__setattr__(grad, name, np.asarray(a, dtype=np.float64))
        object.__setattr__(grad, "scale_scores", self.scale_scores)
        return grad

    # ------------------------------------------------------------ vectors
    def flat(self) -> np.ndarray:
        """Q, K, V as one vector (for optimisers), in that order."""
        return np.concatenate([np.ravel(getattr(self, n)) for n in HEAD_ARRAYS])

    def with_flat(self, x: np.ndarray) -> Heads:
        """Heads of these shapes from a vector laid out like :meth:`flat`."""
        x = np.asarray(x, dtype=np.float64)
        sizes = np.cumsum([getattr(self, n).size for n in HEAD_ARRAYS])
        if x.shape != (sizes[-1],):
            raise ValueError(f"Heads.with_flat: expected a vector of {sizes[-1]} entries, got shape {x.shape}")
        Q, K, V = (part.reshape(getattr(self, n).shape) for n, part in zip(HEAD_ARRAYS, np.split(x, sizes[:-1])))
        return Heads(Q, K, V, self.scale_scores)

    def arrays(self) -> dict[str, np.ndarray]:
        """{"Q": Q, "K": K, "V": V}."""
        return {n: getattr(self, n) for n in HEAD_ARRAYS}

    def __repr__(self) -> str:
        scaled = ", scale_scores=True" if self.scale_scores else ""
        return f"Heads(L={self.layers}, M={self.width}, k={self.head_dim}, d={self.dim}{scaled})"

    # ------------------------------------------------------------ constructors
    @classmethod
    def random(cls, layers: int, width: int, head_dim: int, dim: int, scale: float, seed: int,
               scale_scores: bool = False) -> Heads:
        """Heads with i.i.d. N(0, scale^2) entries.

        The draws are ``scale * rng.standard_normal(shape)`` from one
        ``np.random.default_rng(seed)``, in the order Q, K, V, so a seed
        fixes the heads on every platform.
        """
        for name, n in (("layers", layers), ("width", width), ("head_dim", head_dim)):
            if int(n) != n or n < 1:
                raise ValueError(f"Heads.random: {name} = {n}: expected an integer >= 1")
        if dim not in (1, 2, 3):
            raise ValueError(f"Heads.random: dim = {dim}: expected 1, 2 or 3")
        if not (np.isfinite(scale) and scale >= 0):
            raise ValueError(f"Heads.random: scale = {scale}: expected a finite number >= 0")
        rng = np.random.default_rng(seed)
        qk_shape = (layers, width, head_dim, dim)
        Q = scale * rng.standard_normal(qk_shape)
        K = scale * rng.standard_normal(qk_shape)
        V = scale * rng.standard_normal((layers, width, dim, dim))
        return cls(Q, K, V, scale_scores)

    @classmethod
    def from_npz(cls, path: str | Path, scale_scores: bool = False) -> Heads:
        """Heads from an ``.npz`` archive holding arrays Q, K, V (e.g. written by :meth:`save_npz`)."""
        return cls(*load_heads_npz(path), scale_scores)

    def save_npz(self, path: str | Path) -> None:
        """Write Q, K, V to an ``.npz`` archive."""
        np.savez(path, **self.arrays())


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
    try:
        data = np.load(path, allow_pickle=False)
    except (EOFError, zipfile.BadZipFile, ValueError) as exc:  # empty, truncated or not numpy at all
        raise ValueError(f"{path}: not a readable .npz archive ({type(exc).__name__}: {exc})") from None
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
        try:
            Q, K, V = (np.array(data[name]) for name in HEAD_ARRAYS)
        except (EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:  # a damaged member
            raise ValueError(f"{path}: cannot read Q, K, V ({type(exc).__name__}: {exc})") from None
    return Q, K, V


def score_matrices(Q: np.ndarray, K: np.ndarray, scale_scores: bool = False) -> np.ndarray:
    """Score matrices B = K^T Q of every head, so that <Q x, K y> = (B x)·y.

    Args:
        Q: (..., k, d) query matrices, e.g. (L, M, k, d).
        K: (..., k, d) key matrices, same shape as Q.
        scale_scores: divide B by sqrt(k) (the score <Qx, Ky>/sqrt(k));
            docs/model.md's convention is no factor.

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


def conditional_wasserstein(a: Heads, b: Heads) -> float:
    """W_c between two head configurations of the same shape (docs/model.md section 5).

    W_c^2 = (1/L) sum_l W_2^2(nu_l, nu'_l), nu_l = (1/M) sum_j delta_{theta_{l,j}},
    theta = (Q, K, V) flattened; each layer's W_2 between two uniform
    measures of M atoms is an assignment problem (scipy's
    ``linear_sum_assignment``).

    Args:
        a, b: heads of the same shapes.
    """
    from scipy.optimize import linear_sum_assignment

    L, M = a.layers, a.width
    flat = [np.concatenate([getattr(h, k).reshape(L, M, -1) for k in HEAD_ARRAYS], axis=-1) for h in (a, b)]
    total = 0.0
    for layer in range(L):
        x, y = flat[0][layer], flat[1][layer]
        cost = np.sum((x[:, None, :] - y[None, :, :]) ** 2, axis=-1)
        rows, cols = linear_sum_assignment(cost)
        total += cost[rows, cols].sum() / M
    return float(np.sqrt(total / L))
