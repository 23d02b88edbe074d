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

Status: the build, the evaluation kernel and the a posteriori check exist
and are tested against exact sums (:func:`tree_velocity`); the VJP and the
use by the grid solver (where the tensor table is too large) do not yet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import prange
from scipy.ndimage import binary_dilation

from gridpde._numba import kernel
from gridpde.attention.table import (MAX_NODES, TableTooLarge, _cheb, _cheb_points, _coefficients, _dct_matrix,
                                     _g, _interp, _spectral_norms, _stabilised_factors, _zrange, default_degree)
from gridpde.attention.tensor import CHUNK, UNDERFLOW, tensor_velocity

__all__ = ["TreeTable", "build_tree", "evaluate_tree", "tree_velocity"]

#: finest level per axis (2^level bins of the look-up grid along it)
MAX_LEVEL = 10
#: cap on the entries of the look-up grid (product over the axes of 2^level)
MAX_BINS = 1 << 22
#: cells per axis of the grid that marks where sample z lie (refinement is driven only near them)
OCCUPANCY_CELLS = 32
#: leaves whose node sums are computed in one batch (bounds the batch's work arrays)
BATCH = 256


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
        Ts = np.ones((3, max(n0, n1, n2)))
        T0 = Ts[0, :n0]
        T1 = Ts[1, :n1]
        T2 = Ts[2, :n2]
        s = np.zeros(3)
        u = np.zeros(3)
        for t in range(ch * CHUNK, min(T, (ch + 1) * CHUNK)):
            v0 = base[0]
            v1 = base[1]
            v2 = base[2]
            for j in range(M):
                b = 0
                for k in range(3):
                    u[k] = Bc[j, k, 0] * targets[t, 0] + Bc[j, k, 1] * targets[t, 1] + Bc[j, k, 2] * targets[t, 2]
                    f = (u[k] - lo[k]) * binv[k]
                    f = min(max(f, 0.0), nb[k] - 1.0)
                    b = b * nb[k] + int(f)
                leaf = grid[b]
                for k in range(3):
                    s[k] = min(max((u[k] - cen[leaf, k]) * rh[leaf, k], -1.0), 1.0)
                if n0 > 1:
                    _cheb(s[0], T0)
                if n1 > 1:
                    _cheb(s[1], T1)
                _cheb(s[2], T2)
                f0, f1, f2 = _interp(nc, n0, n1, n2, T0, T1, T2, coef[leaf])
                for c in range(nc):
                    f = f0 if c == 0 else (f1 if c == 1 else f2)
                    v0 += Vc[j, 0, c] * f
                    v1 += Vc[j, 1, c] * f
                    v2 += Vc[j, 2, c] * f
            out[t, 0] = v0
            out[t, 1] = v1
            out[t, 2] = v2


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
        nbad: (P,) per leaf the nodes whose sums underflowed (computed by the exact kernel).
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
    nbad: np.ndarray

    @property
    def fallback_nodes(self):
        return int(self.nbad.sum())

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


def _leaf_values(w, ys, h, axes, cen, half, q):
    """F at the (q + 1)^d nodes of each leaf: (P, p0, p1, p2, d), and per leaf the nodes by the exact kernel.

    Per leaf, S[i, j, k] = sum_abc E0[i, a] E1[j, b] E2[k, c] w[a, b, c] with the
    stabilised per-axis factors at the leaf's node coordinates (EY_a for S_a).
    Leaves share intervals: the contraction over the last source axis (the
    costly one, O(N) per node) is done once per distinct interval along it,
    the next once per distinct pair of intervals, the last per leaf.
    """
    d = len(axes)
    P = cen.shape[0]
    n = w.shape
    t = _cheb_points(q)
    p = [q + 1 if a in axes else 1 for a in range(3)]

    def factors(a, rows):
        z = (cen[rows, a, None] + half[rows, a, None] * t[None, :]) if a in axes else np.zeros((len(rows), 1))
        E = _stabilised_factors(z.ravel(), ys[a]).reshape(len(rows), p[a], n[a])
        return z, E, E * ys[a]

    # the last axis, per distinct interval: A[u] = w x_2 E2(u), (U2, n0, n1, p2)
    _, first2, u2 = np.unique(np.stack([cen[:, 2], half[:, 2]], 1), axis=0, return_index=True, return_inverse=True)
    u2 = u2.ravel()
    _, E2, EY2 = factors(2, first2)

    def ax2(F2):
        A = w.reshape(n[0] * n[1], n[2]) @ F2.reshape(-1, n[2]).T
        return np.ascontiguousarray(A.reshape(n[0], n[1], len(first2), p[2]).transpose(2, 0, 1, 3))

    A = ax2(E2)
    A2 = ax2(EY2) if 2 in axes else None
    # the middle axis, per distinct (interval 1, interval 2): C[v] = E1 x_1 A[u2], (U12, n0, p1, p2)
    key = np.stack([cen[:, 1], half[:, 1], u2.astype(float)], 1)
    _, first12, u12 = np.unique(key, axis=0, return_index=True, return_inverse=True)
    u12 = u12.ravel()
    _, E1, EY1 = factors(1, first12)
    Au = A[u2[first12]]
    C = np.matmul(E1[:, None], Au)
    C1 = np.matmul(EY1[:, None], Au) if 1 in axes else None
    C2 = np.matmul(E1[:, None], A2[u2[first12]]) if A2 is not None else None
    del Au
    F = np.empty((P, p[0], p[1], p[2], d))
    nbad = np.zeros(P, dtype=np.int64)
    for s in range(0, P, BATCH):
        rows = np.arange(s, min(P, s + BATCH))
        m = len(rows)
        z0, E0, EY0 = factors(0, rows)
        v = u12[rows]

        def ax0(F0, X):
            return np.matmul(F0, X[v].reshape(m, n[0], p[1] * p[2])).reshape(m, p[0], p[1], p[2])

        S0 = ax0(E0, C)
        S = {}
        if 0 in axes:
            S[0] = ax0(EY0, C)
        if C1 is not None:
            S[1] = ax0(E0, C1)
        if C2 is not None:
            S[2] = ax0(E0, C2)
        z = [z0] + [(cen[rows, a, None] + half[rows, a, None] * t[None, :]) if a in axes else np.zeros((m, 1))
                    for a in (1, 2)]  # fmt: skip
        good = (S0 > UNDERFLOW) & (S0 < np.inf)
        safe = np.where(good, S0, 1.0)
        mv = np.stack([S[a] / safe for a in axes], axis=-1)
        bad = ~good
        if bad.any():  # the exact kernel's direct branch where the factorised mass underflows
            idx = np.nonzero(bad)
            Z = np.stack([z[a][idx[0], idx[1 + a]] for a in range(3)], axis=-1)
            out = np.empty((len(Z), 3))
            eye = np.eye(3)[None]
            tensor_velocity(Z, w, *ys, eye, eye, np.zeros(3), out, np.empty((1, len(Z))))
            mv[idx] = out[:, list(axes)]
            nbad[rows] = bad.reshape(m, -1).sum(axis=1)
        for c, a in enumerate(axes):
            shape = [m, 1, 1, 1]
            shape[1 + a] = p[a]
            mv[..., c] -= _g(z[a].ravel(), h[a]).reshape(shape)
        F[s:s + m] = mv
    return F, nbad


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


def build_tree(w, ys, h, zlo, zhi, atol, degree, zsample, max_nodes=MAX_NODES, start=1, first=None):
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
    if first is not None:
        level, index, coef, nbad = first.level, first.index, first.coef, first.nbad
    else:  # 2^start leaves per active axis
        k = [np.arange(2**start) if a in axes else np.zeros(1, np.int64) for a in range(3)]
        index = np.stack(np.meshgrid(*k, indexing="ij"), axis=-1).reshape(-1, 3).astype(np.int64)
        level = np.where([a in axes for a in range(3)], start, 0)[None, :].repeat(len(index), axis=0)
        coef = np.empty((0, d, p[0] * p[1] * p[2]))  # of the first len(coef) leaves; the rest are new
        nbad = np.zeros(0, dtype=np.int64)
    tails = _leaf_tails(coef, q, d, p)
    while True:
        if len(index) * int(np.prod(p)) > max_nodes:
            raise TableTooLarge(f"tree table over {max_nodes} nodes for atol={atol:.3g}")
        if len(coef) < len(index):
            cen, half = _leaf_boxes(level[len(coef):], index[len(coef):], zlo, zhi)
            Fv, bad = _leaf_values(w, ys, h, axes, cen, half, q)
            nbad = np.concatenate([nbad, bad])
            c = _coefficients(Fv.reshape(len(cen), p[0], 1, p[1], 1, p[2], d), D)
            coef = np.concatenate([coef, c])
            tails = np.concatenate([tails, _leaf_tails(c, q, d, p)])
        split = _occupied(level, zlo, zhi, index, zsample)[:, None] & (tails > atol)
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
        coef, tails, nbad = coef[keep], tails[keep], nbad[keep]
        level, index = np.concatenate(lv), np.concatenate(ix)
    cen, half = _leaf_boxes(level, index, zlo, zhi)
    rh = np.where([a in axes for a in range(3)], 1.0 / half, 1.0)
    cen = np.where([a in axes for a in range(3)], cen, 0.0)
    grid, nb = _grid(level, index)
    lookup = (zlo.copy(), nb / (zhi - zlo), nb.astype(np.int64), grid, np.ascontiguousarray(cen),
              np.ascontiguousarray(rh), p[0], p[1], p[2])  # fmt: skip
    const = np.array([ys[a][0] if a not in axes else 0.0 for a in range(3)])
    return TreeTable(axes=axes, degree=q, h=h.copy(), const=const, coef=np.ascontiguousarray(coef), cen=cen,
                     rh=rh, level=level, index=index, box=(zlo, zhi), lookup=lookup, nbad=nbad)  # fmt: skip


def evaluate_tree(tree, targets, B, V, out):
    """Velocity from the tree: out_t = (1/M) sum_j V_j F~(B_j x_t) (targets outside the box are clamped)."""
    targets = np.ascontiguousarray(targets, dtype=float)
    B = np.asarray(B, dtype=float)
    V = np.asarray(V, dtype=float)
    M = B.shape[0]
    axes = list(tree.axes)
    Bc = np.zeros((M, 3, 3))
    Bc[:, axes, :] = B[:, axes, :]
    Vc = np.ascontiguousarray(V[:, :, axes] / M)
    inactive = [a for a in range(3) if a not in axes]
    base = V[:, :, inactive].sum(axis=0) @ tree.const[inactive] / M if inactive else np.zeros(3)
    _tree_forward(targets, Bc, Vc, np.ascontiguousarray(base, dtype=float), *tree.lookup, tree.coef, out)
    return out


def tree_velocity(targets, w, y0, y1, y2, B, V, h, out, tol=1e-8, degree=None, n_check=256,
                  max_nodes=MAX_NODES, max_rounds=4, seed=0):  # fmt: skip
    """Head-averaged attention velocity from a tree table, with the tensor table's a posteriori control.

    As :func:`gridpde.attention.table.table_velocity`: the z-box of all heads and
    targets, the target tol * max|out| / mean_j ||V_j||_2 for F, the error measured
    against the exact kernel at ``n_check`` random pairs and each head's extreme z per
    axis, tightened and rebuilt up to ``max_rounds``; the exact kernel if the tree
    would be too large or the tolerance is not met.

    Returns:
        dict with ``method`` ("tree" or "exact"), ``error_estimate``, ``error_F``,
        ``leaves``, ``table_nodes``, ``fallback_nodes``, ``rounds``, ``reason``, ``tree``.
    """
    targets = np.ascontiguousarray(targets, dtype=float)
    ys = tuple(np.ascontiguousarray(y, dtype=float) for y in (y0, y1, y2))
    w = np.ascontiguousarray(w, dtype=float)
    h = np.ascontiguousarray(h, dtype=float)
    B = np.ascontiguousarray(B, dtype=float)
    V = np.ascontiguousarray(V, dtype=float)
    T, M = targets.shape[0], B.shape[0]
    info = dict(method="exact", error_estimate=0.0, error_F=0.0, tol=tol, leaves=0, table_nodes=0,
                fallback_nodes=0, rounds=0, reason="", tree=None)  # fmt: skip

    def exact_kernel(Z, Bs, Vs, res):
        tensor_velocity(Z, w, *ys, Bs, Vs, h, res, np.empty((Bs.shape[0], len(Z))))

    def exact(reason):
        exact_kernel(targets, B, V, out)
        info.update(method="exact", reason=reason, tree=None)
        return info

    axes = tuple(a for a in range(3) if w.shape[a] > 1 or h[a] > 0.0)
    if T == 0 or not np.any(w > 0.0) or not axes:
        return exact("nothing to tabulate")
    q = default_degree(tol) if degree is None else int(degree)
    zmin, zmax = np.empty((M, 3)), np.empty((M, 3))
    imin, imax = np.empty((M, 3), dtype=np.int64), np.empty((M, 3), dtype=np.int64)
    Bc = np.zeros((M, 3, 3))
    Bc[:, list(axes), :] = B[:, list(axes), :]
    _zrange(targets, Bc, zmin, zmax, imin, imax)
    lo, hi = zmin.min(axis=0), zmax.max(axis=0)
    pad = 0.01 * (hi - lo) + 1e-9 * (1.0 + np.maximum(abs(lo), abs(hi)))
    zlo, zhi = lo - pad, hi + pad
    rng = np.random.default_rng(seed)
    pf = [rng.integers(0, T, n_check)] + [imin[:, a] for a in axes] + [imax[:, a] for a in axes]
    pj = [rng.integers(0, M, n_check)] + [np.arange(M)] * (2 * len(axes))
    pairs = np.unique(np.stack([np.concatenate(pf), np.concatenate(pj)], axis=1), axis=0)
    Zs = np.einsum("sab,sb->sa", B[pairs[:, 1]], targets[pairs[:, 0]])
    eye = np.eye(3)[None]
    F_exact = np.empty((len(Zs), 3))
    exact_kernel(Zs, eye, eye, F_exact)
    sub = targets[:: max(1, T // 8192)]
    zsub = np.concatenate([np.einsum("jab,tb->jta", B, sub).reshape(-1, 3), Zs])
    vnorm = _spectral_norms(V, axes).mean()
    tsample = np.ascontiguousarray(targets[np.unique(pairs[:, 0])])
    Fscale = np.abs(F_exact[:, list(axes)]).max()
    if vnorm == 0.0:
        return exact("V = 0")
    try:
        coarse = build_tree(w, ys, h, zlo, zhi, 1e-3 * max(Fscale, 1e-300), q, zsub, max_nodes)
    except TableTooLarge:
        return exact("coarse tree too large")
    outmax = np.abs(evaluate_tree(coarse, tsample, B, V, np.empty((len(tsample), 3)))).max()
    if not outmax > 0.0:
        return exact("velocity vanishes on the sample")
    atol = tol * outmax / vnorm
    Fs = np.empty((len(Zs), 3))
    err = np.inf
    tree = coarse
    for rnd in range(1, max_rounds + 1):
        info["rounds"] = rnd
        try:
            tree = build_tree(w, ys, h, zlo, zhi, atol, q, zsub, max_nodes, first=tree)
        except TableTooLarge as exc:
            return exact(f"{exc} (round {rnd})")
        evaluate_tree(tree, Zs, eye, eye, Fs)
        errF = np.sqrt(((Fs - F_exact)[:, list(axes)] ** 2).sum(axis=1)).max()
        err = vnorm * errF / outmax
        info.update(error_F=float(errF), leaves=tree.leaves, table_nodes=tree.size,
                    fallback_nodes=tree.fallback_nodes)  # fmt: skip
        if err <= tol:
            break
        atol *= 0.5 * tol / err
    else:
        return exact(f"tolerance not met after {max_rounds} rounds (estimate {err:.3g})")
    evaluate_tree(tree, targets, B, V, out)
    info.update(method="tree", error_estimate=float(vnorm * info["error_F"] / np.abs(out).max()), tree=tree)
    return info
