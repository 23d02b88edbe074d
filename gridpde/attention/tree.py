"""A tree of Chebyshev panels for the table method: adaptivity that is not a tensor product.

The tensor table (:mod:`gridpde.attention.table`) cuts each z-axis into
panels and takes every product of them, so a sharp feature of the tilted
mean along a diagonal of z-space (two bumps apart along (1, 1, 1) switch
across a plane) refines whole slabs: in 3-D the table can need 10^6 to 10^7
nodes. Here the panels are the leaves of a tree: a leaf box is halved along
an axis where its own trailing Chebyshev coefficients exceed the target, and
only leaves that some target's z meets are refined, so the leaves crowd
along the feature only.

Each leaf is one panel of (q + 1)^d first-kind Chebyshev nodes, so its node
sums S0, S_a are again a chain of matrix products with per-axis factors, and
the leaves are computed in batches: the first (costly) contraction, over the
last source axis, is one matrix product for all leaves of a batch. Only new
leaves are computed when the tree is refined. A target's leaf is found by
one look-up in a uniform grid of bins at the finest level per axis.

:func:`gridpde.attention.table.table_velocity` takes a tree where its tensor
table is too large (grid sources; :func:`fit_tree` is the check and the
rounds); :func:`tree_velocity` builds one directly. The VJP
(:func:`evaluate_tree_vjp`) is the tensor table's, with the shared
contractions transposed. Measured (one thread, 2 shared cores): on 64^3
cells, 8 heads, two bumps apart along (1, 1, 1), tol 1e-6: 4182 leaves,
100x the exact kernel, true error 2.4e-7; the VJP costs 2.8 calls.
Not yet: token sources (the particle method keeps the tensor table).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from numba import prange
from scipy.ndimage import binary_dilation

from gridpde._numba import inline, kernel
from gridpde.attention.table import (CLAMP, MAX_NODES, WARM_SLACK, TableTooLarge, _backward_sums, _cheb, _cheb_d,
                                     _cheb_points, _coefficients, _dct_matrix, _g, _head_cotangents, _interp,
                                     _kernel_args, _pair_cotangents, _spectral_norms, _stabilised_factors,
                                     _sum_cotangents, default_degree)
from gridpde.attention.tensor import CHUNK, UNDERFLOW, tensor_velocity
from gridpde.attention.tensor_vjp import tensor_velocity_vjp

__all__ = ["TreeTable", "build_tree", "evaluate_tree", "evaluate_tree_vjp", "refit_tree", "tree_velocity"]

#: finest level per axis (2^level bins of the look-up grid along it)
MAX_LEVEL = 10
#: cap on the entries of the look-up grid (product over the axes of 2^level)
MAX_BINS = 1 << 22
#: cells per axis of the grid that marks where sample z lie (refinement is driven only near them)
OCCUPANCY_CELLS = 32
#: leaves whose node sums are computed in one batch (bounds the batch's work arrays)
BATCH = 256


@inline
def _leaf_local(u, cen, rh, leaf, k):
    """Leaf coordinate t = (u - c) / r along table axis k, clamped to the leaf; (t, dt/du: 1/r, or 0 when clamped)."""
    t = (u - cen[leaf, k]) * rh[leaf, k]
    if t > 1.0 + CLAMP:
        return 1.0, 0.0
    if t < -1.0 - CLAMP:
        return -1.0, 0.0
    return t, rh[leaf, k]


@inline
def _leaf_of(targets, t, Bc, j, lo, binv, nb, grid, u):
    """u = Bc_j x_t (written), and the leaf that holds it (by the look-up grid; clamped to the box)."""
    b = 0
    for k in range(3):
        u[k] = Bc[j, k, 0] * targets[t, 0] + Bc[j, k, 1] * targets[t, 1] + Bc[j, k, 2] * targets[t, 2]
        f = min(max((u[k] - lo[k]) * binv[k], 0.0), nb[k] - 1.0)
        b = b * nb[k] + int(f)
    return grid[b]


@kernel(parallel=True)
def _tree_forward(targets, Bc, Vc, base, lo, binv, nb, grid, cen, rh, n0, n1, n2, coef, out):
    """out_t = base + sum_j sum_c Vc[j, :, c] F~_c(Bc_j x_t), F~ on the leaf that holds z = Bc_j x_t.

    Args:
        targets, Bc, Vc, base: as for :func:`gridpde.attention.table._table_forward`.
        lo, binv: (3,) start and inverse bin width of the look-up grid per table axis.
        nb: (3,) bins per table axis (1 on padding axes).
        grid: (nb0 nb1 nb2,) leaf of each bin.
        cen, rh: (P, 3) leaf centres and inverse half widths (padding axes: 0 and 1).
        n0, n1, n2: Chebyshev nodes per leaf along each table axis (1 on padding axes).
        coef: (P, nc, n0 n1 n2) Chebyshev coefficients per leaf.
        out: (T, 3) written.
    """
    T = targets.shape[0]
    M = Bc.shape[0]
    nc = coef.shape[1]
    nchunks = (T + CHUNK - 1) // CHUNK
    for ch in prange(nchunks):
        T0 = np.ones(n0)
        T1 = np.ones(n1)
        T2 = np.ones(n2)
        u = np.zeros(3)
        for t in range(ch * CHUNK, min(T, (ch + 1) * CHUNK)):
            v0 = base[0]
            v1 = base[1]
            v2 = base[2]
            for j in range(M):
                leaf = _leaf_of(targets, t, Bc, j, lo, binv, nb, grid, u)
                if n0 > 1:
                    _cheb(_leaf_local(u[0], cen, rh, leaf, 0)[0], T0)
                if n1 > 1:
                    _cheb(_leaf_local(u[1], cen, rh, leaf, 1)[0], T1)
                _cheb(_leaf_local(u[2], cen, rh, leaf, 2)[0], T2)
                f0, f1, f2 = _interp(nc, n0, n1, n2, T0, T1, T2, coef[leaf])
                for c in range(nc):
                    f = f0 if c == 0 else (f1 if c == 1 else f2)
                    v0 += Vc[j, 0, c] * f
                    v1 += Vc[j, 1, c] * f
                    v2 += Vc[j, 2, c] * f
            out[t, 0] = v0
            out[t, 1] = v1
            out[t, 2] = v2


@kernel(parallel=True)
def _tree_backward(targets, Bc, Vc, lo, binv, nb, grid, cen, rh, n0, n1, n2, coef, ubar, skip, cbar, Bcbar, Fsum,
                   xbar):  # fmt: skip
    """Per-part cotangents of :func:`_tree_forward` (as :func:`gridpde.attention.table._table_backward`,
    with the tree's look-up; cbar (parts, P, nc, L) per leaf)."""
    T = targets.shape[0]
    M = Bc.shape[0]
    nparts = cbar.shape[0]
    nchunks = (T + CHUNK - 1) // CHUNK
    for part in prange(nparts):
        T0 = np.ones(n0)
        T1 = np.ones(n1)
        T2 = np.ones(n2)
        D0 = np.zeros(n0)
        D1 = np.zeros(n1)
        D2 = np.zeros(n2)
        W = np.empty(n0 * n1 * n2)
        W0 = np.empty(n0 * n1 * n2)
        W1 = np.empty(n0 * n1 * n2)
        W2 = np.empty(n0 * n1 * n2)
        u = np.zeros(3)
        for ch in range(part, nchunks, nparts):
            for t in range(ch * CHUNK, min(T, (ch + 1) * CHUNK)):
                if abs(ubar[t, 0]) + abs(ubar[t, 1]) + abs(ubar[t, 2]) <= skip:
                    continue
                for j in range(M):
                    leaf = _leaf_of(targets, t, Bc, j, lo, binv, nb, grid, u)
                    if n0 > 1:
                        s0, r0 = _leaf_local(u[0], cen, rh, leaf, 0)
                        _cheb_d(s0, r0, T0, D0)
                    if n1 > 1:
                        s1, r1 = _leaf_local(u[1], cen, rh, leaf, 1)
                        _cheb_d(s1, r1, T1, D1)
                    s2, r2 = _leaf_local(u[2], cen, rh, leaf, 2)
                    _cheb_d(s2, r2, T2, D2)
                    _pair_cotangents(t, j, part, targets, ubar, Bc, Vc, T0, T1, T2, D0, D1, D2, W, W0, W1, W2,
                                     coef[leaf], cbar[part, leaf], Fsum, Bcbar, xbar)  # fmt: skip


@dataclass(frozen=True, eq=False)
class TreeTable:
    """A frozen tree of Chebyshev panels of F(z) = m(z) - g(z; h) on a box in z-space.

    The table axes are the d active source axes, the last d of the three
    (the grid's padded layout). Leaf i is the box ``cen[i] -+ 1 / rh[i]``
    (half widths 1/rh) at ``level[i]`` halvings of the box per axis.

    Attributes:
        axes: active source axes.
        degree: polynomial degree q per active axis.
        h: (3,) cell sizes of the deconvolved quadrature folded into F.
        const: (3,) the constant tilted mean of inactive source axes.
        coef: (P, nc, n0 n1 n2) Chebyshev coefficients per leaf.
        cen, rh: (P, 3) leaf centres and inverse half widths.
        level, index: (P, 3) halvings of the box per axis, and the leaf's place among the 2^level pieces.
        box: (lo, hi), each (3,).
        lookup: kernel arguments (lo, binv, nb, grid, cen, rh, n0, n1, n2).
        w, ys: the sources (kept for the VJP).
        S0, m, bad: per leaf the node values of the stabilised mass sums, of the tilted
            means (..., d), and the mask of nodes by the exact kernel (underflow).
        E, EY, tokens: empty, False (the attributes a tape counts, as for the tensor table).
    """

    axes: tuple
    degree: int
    h: np.ndarray
    const: np.ndarray
    coef: np.ndarray
    cen: np.ndarray
    rh: np.ndarray
    level: np.ndarray
    index: np.ndarray
    box: tuple
    lookup: tuple
    w: np.ndarray
    ys: tuple
    S0: np.ndarray
    m: np.ndarray
    bad: np.ndarray
    E: tuple = ()
    EY: tuple = ()
    tokens: bool = False

    @property
    def fallback_nodes(self):
        return int(self.bad.sum())

    @property
    def d(self):
        return len(self.axes)

    @property
    def leaves(self):
        return self.coef.shape[0]

    @property
    def size(self):
        return self.leaves * (self.degree + 1) ** self.d


def _leaf_boxes(level, index, zlo, zhi):
    """(centres, half widths) (P, 3) of the leaves at (level, index) on the box."""
    width = (zhi - zlo)[None, :] / 2.0 ** level
    return zlo[None, :] + (index + 0.5) * width, 0.5 * width


class _Plan:
    """The shared structure of the leaves' node sums (see :func:`_leaf_values`).

    Leaves share intervals: the contraction over the last source axis (the
    costly one, O(N) per node) is done once per distinct interval along it
    (``first2``, leaf -> ``u2``), the next once per distinct pair of intervals
    (``first12``, leaf -> ``u12``), the last per leaf.
    """

    def __init__(self, axes, cen, half, q, ys, shape):
        self.axes, self.cen, self.half, self.ys, self.shape = axes, cen, half, ys, shape
        self.t = _cheb_points(q)
        self.p = [q + 1 if a in axes else 1 for a in range(3)]
        _, self.first2, u2 = np.unique(np.stack([cen[:, 2], half[:, 2]], 1), axis=0, return_index=True,
                                       return_inverse=True)  # fmt: skip
        self.u2 = u2.ravel()
        key = np.stack([cen[:, 1], half[:, 1], self.u2.astype(float)], 1)
        _, self.first12, u12 = np.unique(key, axis=0, return_index=True, return_inverse=True)
        self.u12 = u12.ravel()

    def z(self, a, rows):
        """Node coordinates (len(rows), p_a) of the leaves ``rows`` along axis a."""
        if a not in self.axes:
            return np.zeros((len(rows), 1))
        return self.cen[rows, a, None] + self.half[rows, a, None] * self.t[None, :]

    def factors(self, a, rows):
        """(E, EY) (len(rows), p_a, n_a): stabilised factors exp(z y - max_y z y) at the leaves' nodes, and y E."""
        E = _stabilised_factors(self.z(a, rows).ravel(), self.ys[a]).reshape(len(rows), self.p[a], self.shape[a])
        return E, E * self.ys[a]


def _pair_sums(w, plan):
    """Per distinct pair of intervals (axes 1, 2): C = E1 x_1 (w x_2 E2), and with EY1 (C1) or EY2 (C2) in
    place of the factor (None where that axis is inactive); each (U12, n0, p1, p2)."""
    n, p, axes = plan.shape, plan.p, plan.axes
    E2, EY2 = plan.factors(2, plan.first2)
    E1, EY1 = plan.factors(1, plan.first12)
    U2, U12 = len(plan.first2), len(plan.first12)

    def ax2(F2):  # per distinct interval 2: (U2, n0, n1, p2)
        A = w.reshape(n[0] * n[1], n[2]) @ F2.reshape(U2 * p[2], n[2]).T
        return A.reshape(n[0], n[1], U2, p[2]).transpose(2, 0, 1, 3)

    A = ax2(E2)
    A2 = ax2(EY2) if 2 in axes else None
    C = np.empty((U12, n[0], p[1], p[2]))
    C1 = np.empty_like(C) if 1 in axes else None
    C2 = np.empty_like(C) if 2 in axes else None
    of2 = plan.u2[plan.first12]
    for u in range(U2):  # the pairs on interval u of axis 2 (not a copy of A per pair: 10^8 entries at 64^3)
        vs = np.nonzero(of2 == u)[0]
        C[vs] = np.matmul(E1[vs][:, None], A[u][None])
        if C1 is not None:
            C1[vs] = np.matmul(EY1[vs][:, None], A[u][None])
        if C2 is not None:
            C2[vs] = np.matmul(E1[vs][:, None], A2[u][None])
    return C, C1, C2


def _leaf_sums(plan, pair_sums, rows):
    """S0 and S_a (a active) at the nodes of the leaves ``rows``: (m, p0, p1, p2) each.

    S[i, j, k] = sum_abc E0[i, a] E1[j, b] E2[k, c] w[a, b, c] per leaf (EY_a for S_a), from the
    leaf's pair sums (:func:`_pair_sums`) by the last contraction.
    """
    n, p, axes = plan.shape, plan.p, plan.axes
    C, C1, C2 = pair_sums
    E0, EY0 = plan.factors(0, rows)
    v = plan.u12[rows]
    m = len(rows)

    def ax0(F0, X):  # per leaf: (m, p0, p1, p2)
        return np.matmul(F0, X[v].reshape(m, n[0], p[1] * p[2])).reshape(m, p[0], p[1], p[2])

    S = {}
    S0 = ax0(E0, C)
    if 0 in axes:
        S[0] = ax0(EY0, C)
    if C1 is not None:
        S[1] = ax0(E0, C1)
    if C2 is not None:
        S[2] = ax0(E0, C2)
    return S0, S


def _leaf_sums_transpose(plan, S0bar, Sbar):
    """w_bar (n0, n1, n2): the transpose of :func:`_leaf_sums` over all leaves, at cotangents of S0 and S_a."""
    n, p, axes = plan.shape, plan.p, plan.axes
    P = S0bar.shape[0]
    rows = np.arange(P)
    E2, EY2 = plan.factors(2, plan.first2)
    E1, EY1 = plan.factors(1, plan.first12)
    E0, EY0 = plan.factors(0, rows)
    U12, U2 = len(plan.first12), len(plan.first2)

    def ax0t(F0, X):  # per leaf (P, n0, p1 p2), summed into its pair: (U12, n0, p1, p2)
        Y = np.matmul(np.swapaxes(F0, 1, 2), X.reshape(P, p[0], p[1] * p[2]))
        out = np.zeros((U12, n[0], p[1] * p[2]))
        np.add.at(out, plan.u12, Y)
        return out.reshape(U12, n[0], p[1], p[2])

    X = ax0t(E0, S0bar)  # cotangents of the pair sums C, C1, C2
    if 0 in axes:
        X += ax0t(EY0, Sbar[0])
    X1 = ax0t(E0, Sbar[1]) if 1 in axes else None
    X2 = ax0t(E0, Sbar[2]) if 2 in axes else None
    Abar = np.zeros((U2, n[0], n[1], p[2]))
    A2bar = np.zeros_like(Abar) if X2 is not None else None
    of2 = plan.u2[plan.first12]

    def ax1t(F1, Xv):  # sum over the pairs vs of F1[v]^T X[v]: (n0, n1, p2)
        return np.tensordot(F1, Xv, axes=([0, 1], [0, 2])).transpose(1, 0, 2)

    for u in range(U2):  # per interval of axis 2 (no (pairs, n0, n1, p2) array: 10^8 entries at 64^3)
        vs = np.nonzero(of2 == u)[0]
        Abar[u] = ax1t(E1[vs], X[vs])
        if X1 is not None:
            Abar[u] += ax1t(EY1[vs], X1[vs])
        if X2 is not None:
            A2bar[u] = ax1t(E1[vs], X2[vs])

    def ax2t(F2, Ab):  # (n0, n1, n2)
        return (Ab.transpose(1, 2, 0, 3).reshape(n[0] * n[1], U2 * p[2]) @ F2.reshape(U2 * p[2], n[2])).reshape(n)

    wbar = ax2t(E2, Abar)
    if A2bar is not None:
        wbar = wbar + ax2t(EY2, A2bar)
    return wbar


def _leaf_values(w, ys, h, axes, cen, half, q):
    """Node values of the leaves: (F (P, p0, p1, p2, d), S0 (P, p0, p1, p2), m (P, ..., d), bad (P, p0, p1, p2)).

    F = m - g with m = S_a / S0 the tilted mean; ``bad`` nodes (the factorised
    mass underflows) have m from the exact kernel's direct branch.
    """
    d = len(axes)
    plan = _Plan(axes, cen, half, q, ys, w.shape)
    P = cen.shape[0]
    p = plan.p
    S0 = np.empty((P, p[0], p[1], p[2]))
    mv = np.empty((P, p[0], p[1], p[2], d))
    pair_sums = _pair_sums(w, plan)
    for s in range(0, P, BATCH):
        rows = np.arange(s, min(P, s + BATCH))
        S0[rows], S = _leaf_sums(plan, pair_sums, rows)
        good = (S0[rows] > UNDERFLOW) & (S0[rows] < np.inf)
        safe = np.where(good, S0[rows], 1.0)
        mv[rows] = np.stack([S[a] / safe for a in axes], axis=-1)
    bad = ~((S0 > UNDERFLOW) & (S0 < np.inf))
    if bad.any():  # the exact kernel's direct branch where the factorised mass underflows
        idx = np.nonzero(bad)
        Z = np.stack([plan.z(a, idx[0])[np.arange(len(idx[0])), idx[1 + a] if a in axes else 0]
                      for a in range(3)], axis=-1)  # fmt: skip
        out = np.empty((len(Z), 3))
        eye = np.eye(3)[None]
        tensor_velocity(Z, w, *ys, eye, eye, np.zeros(3), out, np.empty((1, len(Z))))
        mv[idx] = out[:, list(axes)]
    F = mv.copy()
    rows = np.arange(P)
    for c, a in enumerate(axes):
        shape = [P, 1, 1, 1]
        shape[1 + a] = p[a]
        F[..., c] -= _g(plan.z(a, rows).ravel(), h[a]).reshape(shape)
    return F, S0, mv, bad


def _leaf_tails(coef, q, d, p):
    """(P, 3): per leaf and table axis an estimate of the interpolation error along that axis.

    a_i is the sum over the other axes' indices of |c| with index i along the axis
    (the bound at a point adds them; a max underestimated the error by 30-55x
    at sharp transitions, measured), the largest over components; the estimate is
    t^2 / t' (at most t), t = max(a_q, a_{q-1}), t' = max(a_{q-2}, a_{q-3}).
    """
    P = coef.shape[0]
    c = np.abs(coef).reshape(P, d, p[0], p[1], p[2])
    out = np.zeros((P, 3))
    for k in range(3 - d, 3):
        ax = 2 + k
        others = tuple(j for j in range(2, 5) if j != ax)
        a = c.take(np.arange(q - 3, q + 1), axis=ax).sum(axis=others).max(axis=1)
        t = np.maximum(a[:, 3], a[:, 2])
        t2 = np.maximum(a[:, 1], a[:, 0])
        out[:, k] = np.minimum(t, t * t / np.maximum(t2, 1e-300))
    return out


def _grid(level, index):
    """The look-up grid (flat) of leaf ids at the finest level per axis, and the bins per axis."""
    top = level.max(axis=0)
    nb = 2 ** top
    if int(np.prod(nb)) > MAX_BINS:
        raise TableTooLarge(f"tree look-up grid over {MAX_BINS} bins")
    grid = np.full(tuple(nb), -1, dtype=np.int64)
    span = 2 ** (top[None, :] - level)
    first = index * span
    for i in range(level.shape[0]):
        f, e = first[i], first[i] + span[i]
        grid[f[0]:e[0], f[1]:e[1], f[2]:e[2]] = i
    assert grid.min() >= 0, "the leaves do not tile the box"
    return grid.ravel(), nb


def _occupied(level, zlo, zhi, index, zsample, cells=OCCUPANCY_CELLS):
    """Leaves that meet a cell of a cells^3 grid on the box (dilated by one cell) holding a sample z."""
    live = level.max(axis=0) > 0
    nc = np.where(live, cells, 1)
    c = np.clip(np.floor((zsample - zlo) / (zhi - zlo) * nc), 0, nc - 1).astype(np.int64)
    occ = np.zeros(tuple(nc), dtype=bool)
    occ[c[:, 0], c[:, 1], c[:, 2]] = True
    occ = binary_dilation(occ, np.ones((3, 3, 3), dtype=bool))
    csum = np.pad(occ.cumsum(0).cumsum(1).cumsum(2), [(1, 0)] * 3)
    f = index / 2.0**level * nc  # leaf boxes in cell units
    e = (index + 1) / 2.0**level * nc
    first = np.clip(np.floor(f), 0, nc - 1).astype(np.int64)
    last = np.clip(np.ceil(e), first + 1, nc).astype(np.int64)
    total = np.zeros(len(level), dtype=np.int64)
    for corner in range(8):
        sel = [last[:, k] if (corner >> k) & 1 else first[:, k] for k in range(3)]
        sign = (-1) ** (3 - bin(corner).count("1"))
        total += sign * csum[sel[0], sel[1], sel[2]]
    return total > 0


def build_tree(w, ys, h, zlo, zhi, atol, degree, zsample, max_nodes=MAX_NODES, start=1, first=None, leaves=None,
               split_at=None, slack=1.0):  # fmt: skip
    """The tree table of F on the box zlo <= z <= zhi, refined until every leaf that a sample z meets has
    tails <= ``atol`` along every axis.

    Args:
        w: (n0, n1, n2) source masses; ys: cell centres per padded axis; h: (3,) cell sizes.
        zlo, zhi: (3,) box corners.
        atol: target absolute error of F.
        degree: polynomial degree q per active axis.
        zsample: (S, 3) z points where the table will be used: only leaves near them are refined.
        max_nodes: cap on the nodes (leaves times (q + 1)^d).
        start: initial halvings per active axis.
        first: a tree on the same sources, box and degree to refine further (its leaves are not recomputed).
        leaves: (level, index) of the leaves to start from (an earlier tree's on the box, other sources).
        split_at: (K, 3) z points whose leaves are halved along every axis first (where a check failed).
        slack: leaves are split where their tails exceed ``slack * atol`` (> 1 for a warm start: see
            :data:`gridpde.attention.table.WARM_SLACK`).

    Raises:
        TableTooLarge: the refinement would exceed ``max_nodes``, ``MAX_LEVEL`` or ``MAX_BINS``.
    """
    w = np.ascontiguousarray(w, dtype=float)
    h = np.asarray(h, dtype=float)
    zlo = np.asarray(zlo, dtype=float)
    zhi = np.asarray(zhi, dtype=float)
    n = w.shape
    axes = tuple(a for a in range(3) if n[a] > 1 or h[a] > 0.0)
    d = len(axes)
    if axes != tuple(range(3 - d, 3)):
        raise ValueError("the tree table needs the active source axes last (the grid's padded layout)")
    q = int(degree)
    p = [q + 1 if a in axes else 1 for a in range(3)]
    zlo = np.where([a in axes for a in range(3)], zlo, -1.0)
    zhi = np.where([a in axes for a in range(3)], zhi, 1.0)
    D = _dct_matrix(q)
    vals = ("coef", "tails", "S0", "m", "bad")  # per leaf, of the first len(have["coef"]) leaves; the rest are new
    if first is not None:
        level, index = first.level, first.index
        have = dict(coef=first.coef, tails=_leaf_tails(first.coef, q, d, p), S0=first.S0, m=first.m, bad=first.bad)
    elif leaves is not None:
        level, index = (np.array(a, dtype=np.int64) for a in leaves)
        have = None
    else:  # 2^start leaves per active axis
        k = [np.arange(2**start) if a in axes else np.zeros(1, np.int64) for a in range(3)]
        index = np.stack(np.meshgrid(*k, indexing="ij"), axis=-1).reshape(-1, 3).astype(np.int64)
        level = np.where([a in axes for a in range(3)], start, 0)[None, :].repeat(len(index), axis=0)
        have = None
    while True:
        if len(index) * int(np.prod(p)) > max_nodes:
            raise TableTooLarge(f"tree table over {max_nodes} nodes for atol={atol:.3g}")
        done = 0 if have is None else len(have["coef"])
        if done < len(index):
            cen, half = _leaf_boxes(level[done:], index[done:], zlo, zhi)
            Fv, S0, mv, bad = _leaf_values(w, ys, h, axes, cen, half, q)
            c = _coefficients(Fv.reshape(len(cen), p[0], 1, p[1], 1, p[2], d), D)
            new = dict(coef=c, tails=_leaf_tails(c, q, d, p), S0=S0, m=mv, bad=bad)
            have = new if have is None else {k: np.concatenate([have[k], new[k]]) for k in vals}
        split = _occupied(level, zlo, zhi, index, zsample)[:, None] & (have["tails"] > slack * atol)
        if split_at is not None and len(split_at):
            grid, nb = _grid(level, index)
            b = np.clip(np.floor((split_at - zlo) / (zhi - zlo) * nb), 0, nb - 1).astype(np.int64)
            split[grid[(b[:, 0] * nb[1] + b[:, 1]) * nb[2] + b[:, 2]]] |= np.array([a in axes for a in range(3)])
            split_at = None
        if not split.any():
            break
        if np.any(level[split] >= MAX_LEVEL):
            raise TableTooLarge(f"tree table deeper than {MAX_LEVEL} halvings for atol={atol:.3g}")
        keep = ~split.any(axis=1)
        lv, ix = [level[keep]], [index[keep]]
        for i in np.nonzero(~keep)[0]:  # halve along every failing axis
            ax = np.nonzero(split[i])[0]
            for bits in range(2 ** len(ax)):
                li, ii = level[i].copy(), index[i].copy()
                for b, a in enumerate(ax):
                    li[a] += 1
                    ii[a] = 2 * ii[a] + ((bits >> b) & 1)
                lv.append(li[None])
                ix.append(ii[None])
        have = {k: have[k][keep] for k in vals}
        level, index = np.concatenate(lv), np.concatenate(ix)
    cen, half = _leaf_boxes(level, index, zlo, zhi)
    rh = np.where([a in axes for a in range(3)], 1.0 / half, 1.0)
    cen = np.where([a in axes for a in range(3)], cen, 0.0)
    grid, nb = _grid(level, index)
    lookup = (zlo.copy(), nb / (zhi - zlo), nb.astype(np.int64), grid, np.ascontiguousarray(cen),
              np.ascontiguousarray(rh), p[0], p[1], p[2])  # fmt: skip
    const = np.array([ys[a][0] if a not in axes else 0.0 for a in range(3)])
    return TreeTable(axes=axes, degree=q, h=h.copy(), const=const, coef=np.ascontiguousarray(have["coef"]),
                     cen=cen, rh=rh, level=level, index=index, box=(zlo, zhi), lookup=lookup, w=w, ys=tuple(ys),
                     S0=have["S0"], m=have["m"], bad=have["bad"])  # fmt: skip


def evaluate_tree(tree, targets, B, V, out):
    """Velocity from the tree: out_t = (1/M) sum_j V_j F~(B_j x_t) (targets outside the box are clamped)."""
    targets = np.ascontiguousarray(targets, dtype=float)
    Bc, Vc, base = _kernel_args(tree, B, V)
    _tree_forward(targets, Bc, Vc, base, *tree.lookup, tree.coef, out)
    return out


def evaluate_tree_vjp(tree, targets, B, V, ubar):
    """(w_bar, B_bar, V_bar): the exact transpose of :func:`evaluate_tree` with the leaves frozen.

    As :func:`gridpde.attention.table.evaluate_vjp`: the coefficient cotangents per leaf
    go back through the leaf's Chebyshev transform to its node values F = S_a / S0 - g,
    and from there by the transposed shared contractions (:func:`_leaf_sums_transpose`)
    to w_bar; nodes by the exact kernel go back through its VJP.
    """
    targets = np.ascontiguousarray(targets, dtype=float)
    ubar = np.ascontiguousarray(ubar, dtype=float)
    B = np.asarray(B, dtype=float)
    d = tree.d
    axes = list(tree.axes)
    Bc, Vc, _ = _kernel_args(tree, B, V)
    cbar, Bcbar, Fsum, _ = _backward_sums(_tree_backward, tree, targets, Bc, Vc, ubar)
    Bbar, Vbar = _head_cotangents(tree, B.shape[0], ubar, Bcbar, Fsum)
    # coefficients -> node values: the transpose of the per-axis DCT
    q = tree.degree
    p = [q + 1 if a in axes else 1 for a in range(3)]
    D = _dct_matrix(q)
    X = cbar.reshape(tree.leaves, d, p[0], p[1], p[2])
    for k in range(3):
        if p[k] > 1:
            X = np.moveaxis(np.tensordot(X, D, axes=([2 + k], [0])), -1, 2 + k)
    Fbar = np.moveaxis(X, 1, -1)  # (P, p0, p1, p2, d)
    # node values -> sums -> sources
    S0bar, Sbar = _sum_cotangents(tree, Fbar)
    cen, half = _leaf_boxes(tree.level, tree.index, *tree.box)  # as built (not 1 / rh: the same bits)
    plan = _Plan(tree.axes, cen, half, q, tree.ys, tree.w.shape)
    wbar = _leaf_sums_transpose(plan, S0bar, Sbar)
    if tree.bad.any():
        idx = np.nonzero(tree.bad)
        Z = np.stack([plan.z(a, idx[0])[np.arange(len(idx[0])), idx[1 + a] if a in axes else 0]
                      for a in range(3)], axis=-1)  # fmt: skip
        ub = np.zeros((len(Z), 3))
        ub[:, axes] = Fbar[idx]
        eye = np.eye(3)[None]
        wb, _, _ = tensor_velocity_vjp(Z, tree.w, *tree.ys, eye, eye, np.zeros(3), ub)
        wbar = wbar + wb
    return wbar, Bbar, Vbar


def refit_tree(tree, w):
    """The tree on the same leaves for other source masses ``w`` (what :func:`evaluate_tree_vjp` differentiates)."""
    q = tree.degree
    d = tree.d
    p = [q + 1 if a in tree.axes else 1 for a in range(3)]
    Fv, S0, mv, bad = _leaf_values(w, tree.ys, tree.h, tree.axes, *_leaf_boxes(tree.level, tree.index, *tree.box), q)
    coef = _coefficients(Fv.reshape(tree.leaves, p[0], 1, p[1], 1, p[2], d), _dct_matrix(q))
    return replace(tree, coef=coef, w=w, S0=S0, m=mv, bad=bad)


def fit_tree(w, ys, h, zlo, zhi, q, zsample, Zs, F_exact, tsample, B, V, tol, max_nodes=MAX_NODES, max_rounds=4,
             leaves=None):  # fmt: skip
    """The tree that meets ``tol`` at the check pairs (z ``Zs`` with exact F ``F_exact``), or why there is none.

    The target for F is tol * max|out| / mean_j ||V_j||_2, max|out| over ``tsample``
    from a coarse tree (or one on ``leaves``, an earlier tree's on this box); each
    round that fails the check tightens it by the measured ratio and refines further.

    Returns:
        dict: ``tree`` (None if it failed), ``reason``, ``error_F``, ``rounds``, ``outmax``.
    """
    axes = [a for a in range(3) if w.shape[a] > 1 or h[a] > 0.0]
    vnorm = _spectral_norms(V, axes).mean()
    res = dict(tree=None, reason="", error_F=0.0, rounds=0, outmax=0.0)
    eye = np.eye(3)[None]
    try:
        if leaves is None:
            Fscale = np.abs(F_exact[:, axes]).max()
            tree = build_tree(w, ys, h, zlo, zhi, 1e-3 * max(Fscale, 1e-300), q, zsample, max_nodes)
        else:
            tree = build_tree(w, ys, h, zlo, zhi, np.inf, q, zsample, max_nodes, leaves=leaves)
    except TableTooLarge as exc:
        res["reason"] = f"coarse {exc}"
        return res
    outmax = np.abs(evaluate_tree(tree, tsample, B, V, np.empty((len(tsample), 3)))).max()
    if not outmax > 0.0 or vnorm == 0.0:
        res["reason"] = "velocity vanishes on the sample"
        return res
    atol = tol * outmax / vnorm
    Fs = np.empty((len(Zs), 3))
    err = np.inf
    failing = None
    for rnd in range(1, max_rounds + 1):
        res["rounds"] = rnd
        try:
            tree = build_tree(w, ys, h, zlo, zhi, atol, q, zsample, max_nodes, first=tree, split_at=failing,
                              slack=1.0 if leaves is None else WARM_SLACK)  # fmt: skip
        except TableTooLarge as exc:
            res["reason"] = f"{exc} (round {rnd})"
            return res
        evaluate_tree(tree, Zs, eye, eye, Fs)
        errs = np.sqrt(((Fs - F_exact)[:, axes] ** 2).sum(axis=1))
        err = vnorm * errs.max() / outmax
        res.update(error_F=float(errs.max()), outmax=float(outmax))
        if err <= tol:
            res["tree"] = tree
            return res
        atol *= 0.5 * tol / err  # tighter, and the leaves of the failing pairs halved
        failing = Zs[vnorm * errs / outmax > tol]
    res["reason"] = f"tree: tolerance not met after {max_rounds} rounds (estimate {err:.3g})"
    return res


def tree_velocity(targets, w, y0, y1, y2, B, V, h, out, tol=1e-8, degree=None, n_check=256,
                  max_nodes=MAX_NODES, max_rounds=4, seed=0):  # fmt: skip
    """Head-averaged attention velocity from a tree table alone (no tensor table first), with the check of
    :func:`gridpde.attention.table.table_velocity` (which uses a tree where its tensor table is too large).

    Returns:
        dict with ``method`` ("tree" or "exact"), ``error_estimate``, ``error_F``,
        ``leaves``, ``table_nodes``, ``fallback_nodes``, ``rounds``, ``reason``, ``tree``.
    """
    from gridpde.attention.table import TREE_SAMPLE, _check_pairs

    targets = np.ascontiguousarray(targets, dtype=float)
    ys = tuple(np.ascontiguousarray(y, dtype=float) for y in (y0, y1, y2))
    w = np.ascontiguousarray(w, dtype=float)
    h = np.ascontiguousarray(h, dtype=float)
    B = np.ascontiguousarray(B, dtype=float)
    V = np.ascontiguousarray(V, dtype=float)
    info = dict(method="exact", error_estimate=0.0, error_F=0.0, tol=tol, leaves=0, table_nodes=0,
                fallback_nodes=0, rounds=0, reason="", tree=None)  # fmt: skip

    def exact_kernel(Z, Bs, Vs, hs, res):
        tensor_velocity(Z, w, *ys, Bs, Vs, hs, res, np.empty((Bs.shape[0], len(Z))))

    axes = tuple(a for a in range(3) if w.shape[a] > 1 or h[a] > 0.0)
    if len(targets) == 0 or not np.any(w > 0.0) or not axes:
        exact_kernel(targets, B, V, h, out)
        info["reason"] = "nothing to tabulate"
        return info
    q = default_degree(tol) if degree is None else int(degree)
    zlo, zhi, Zs, F_exact, tsample, zsub = _check_pairs(targets, B, h, axes, exact_kernel, n_check, seed,
                                                        TREE_SAMPLE)
    res = fit_tree(w, ys, h, zlo, zhi, q, zsub, Zs, F_exact, tsample, B, V, tol, max_nodes, max_rounds)
    info.update(rounds=res["rounds"], error_F=res["error_F"])
    if res["tree"] is None:
        exact_kernel(targets, B, V, h, out)
        info["reason"] = res["reason"]
        return info
    tree = res["tree"]
    evaluate_tree(tree, targets, B, V, out)
    vnorm = _spectral_norms(V, axes).mean()
    info.update(method="tree", error_estimate=float(vnorm * res["error_F"] / np.abs(out).max()), tree=tree,
                leaves=tree.leaves, table_nodes=tree.size, fallback_nodes=tree.fallback_nodes)  # fmt: skip
    return info
