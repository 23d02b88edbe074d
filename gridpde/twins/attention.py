"""Plain-numpy twins of the attention kernels (tests only; dense, small sizes).

See :mod:`gridpde.twins` for what a twin is. Each function names the kernel
it mirrors; the shared helpers (underflow threshold, Langevin function,
table argument packing) are imported from the kernels' modules.
"""

from __future__ import annotations

import numpy as np

from gridpde.attention.table import CLAMP, _assemble_vjp, _kernel_args
from gridpde.attention.tensor import LANGEVIN_SERIES, UNDERFLOW, langevin, langevin_array

__all__ = [
    "reference_velocity",
    "tensor_velocity_numpy",
    "tensor_velocity_jvp_numpy",
    "tensor_velocity_vjp_numpy",
    "direct_velocity_jvp_numpy",
    "direct_velocity_vjp_numpy",
    "evaluate_numpy",
    "evaluate_vjp_numpy",
]


# ---------------------------------------------------------------- direct sums (attention.direct)


def reference_velocity(targets, sources, weights, B, V, block=256):
    """Plain-numpy twin of :func:`~gridpde.attention.direct.direct_velocity` (also the benchmarks' baseline).

    The same sums by blocks of targets: scores by a matrix product, ``np.exp``
    of the max-shifted scores, matrix products for the sums. Memory is
    O(block * N).

    Returns:
        ``(out (T, 3), lse (M, T))`` for the padded attention sum.
    """
    targets = np.asarray(targets, dtype=np.float64)
    T = targets.shape[0]
    M = B.shape[0]
    keep = weights > 0.0
    y = np.ascontiguousarray(sources[keep])  # (n, 3)
    w = np.ascontiguousarray(weights[keep])  # (n,)
    yw = y * w[:, None]  # (n, 3)
    out = np.zeros((T, 3))
    lse = np.empty((M, T))
    if y.shape[0] == 0:
        lse[:] = -np.inf
        return out, lse
    for j in range(M):
        for t0 in range(0, T, block):
            x = targets[t0 : t0 + block]
            z = x @ B[j].T  # (b, 3), rows B x
            e = z @ y.T  # (b, n) scores, then (in place) shifted exponentials
            mx = e.max(axis=1)
            np.subtract(e, mx[:, None], out=e)
            np.exp(e, out=e)
            norm = e @ w  # (b,)
            m = (e @ yw) / norm[:, None]  # (b, 3)
            lse[j, t0 : t0 + block] = mx + np.log(norm)
            out[t0 : t0 + block] += m @ V[j].T
    out /= M
    return out, lse


# ---------------------------------------------------------------- tensor grid (attention.tensor, attention.tensor_vjp)


def tensor_velocity_numpy(targets, w, y0, y1, y2, B, V, h):
    """Plain-numpy twin of :func:`~gridpde.attention.tensor.tensor_velocity`: direct sums.

    Forms the (T, N) softmax weights per head over the cells with w > 0, shifted by the row maximum of s + log w
    (as the kernel's underflow fallback).
    """
    Y = np.stack(np.meshgrid(y0, y1, y2, indexing="ij"), axis=-1).reshape(-1, 3)
    wf = w.ravel()
    M = B.shape[0]
    out = np.zeros((targets.shape[0], 3))
    lse = np.empty((M, targets.shape[0]))
    for j in range(M):
        z = targets @ B[j].T
        s = z @ Y.T
        live = wf > 0
        logw = np.log(np.where(live, wf, 1.0))
        top = np.where(live, s + logw, -np.inf).max(axis=1, keepdims=True)
        p = np.exp(np.where(live, s + logw - top, -np.inf))
        s0 = p.sum(axis=1)
        m = p @ Y / s0[:, None]
        lse[j] = top[:, 0] + np.log(s0)
        for a in range(3):
            if h[a] > 0:
                m[:, a] -= 0.5 * h[a] * np.array([langevin(v) for v in 0.5 * h[a] * z[:, a]])
        out += m @ V[j].T
    return out / M, lse


def _langevin_prime_numpy(u):
    """L'(u), vectorised: the differentiated series below |u| = 0.1, 1/u^2 - 1/sinh^2 u above."""
    u = np.asarray(u, float)
    small = np.abs(u) < 0.1
    big = np.abs(u) > 300.0  # sinh overflows; 1/sinh^2 < 1e-260 there
    us = np.where(small | big, 1.0, u)
    series = np.polyval((LANGEVIN_SERIES * (2 * np.arange(7) + 1))[::-1], u * u)
    closed = 1 / us**2 - 1 / np.sinh(us) ** 2
    return np.where(small, series, np.where(big, 1 / np.where(big, u, 1.0) ** 2, closed))


def _head_numpy(targets, w, Y, Bj, h):
    """One head by direct sums, with the forward kernel's branch per target.

    Returns:
        z (T, 3), Q (T, N) = exp(z·y_k - lse) on the live sources (else 0),
        E (T, 3), Cov (T, 3, 3), g (T, 3), g' (T, 3).
    """
    wf = w.ravel()
    z = targets @ Bj.T
    s = z @ Y.T
    # the factorised branch: each axis factor shifted by its own maximum
    ycols = [np.unique(Y[:, a]) for a in range(3)]
    shift = sum(np.maximum(z[:, a, None] * ycols[a].min(), z[:, a, None] * ycols[a].max())[:, 0] for a in range(3))
    s0 = (wf * np.exp(s - shift[:, None])).sum(axis=1)
    fact = (s0 > UNDERFLOW) & (s0 < np.inf)
    live = fact[:, None] | (wf > 0)[None, :]
    top = np.where(fact, shift, np.max(np.where(live, s, -np.inf), axis=1))
    anylive = np.isfinite(top)
    top = np.where(anylive, top, 0.0)
    q = np.exp(np.where(live, s - top[:, None], -np.inf))
    norm = (wf * q).sum(axis=1)
    q = q / np.where(anylive, norm, 1.0)[:, None]
    P = wf * q
    E = P @ Y
    D = Y[None, :, :] - E[:, None, :]
    Cov = np.einsum("tk,tka,tkb->tab", P, D, D)
    g = np.zeros_like(z)
    gp = np.zeros_like(z)
    for a in range(3):
        if h[a] > 0:
            g[:, a] = 0.5 * h[a] * langevin_array(0.5 * h[a] * z[:, a])
            gp[:, a] = 0.25 * h[a] ** 2 * _langevin_prime_numpy(0.5 * h[a] * z[:, a])
    return z, q, E, Cov, g, gp


def _sources(w, y0, y1, y2):
    return np.stack(np.meshgrid(y0, y1, y2, indexing="ij"), axis=-1).reshape(-1, 3)


def tensor_velocity_jvp_numpy(targets, w, y0, y1, y2, B, V, h, dw, dB, dV):
    """Forward-mode linearisation of :func:`~gridpde.attention.tensor.tensor_velocity` in (w, B, V).

    Direct sums forming (T, N) matrices per head: small problems only.

    Returns:
        d out (T, 3).
    """
    Y = _sources(w, y0, y1, y2)
    dwf = np.ravel(dw)
    M = B.shape[0]
    dout = np.zeros((targets.shape[0], 3))
    for j in range(M):
        _, q, E, Cov, g, gp = _head_numpy(targets, w, Y, B[j], h)
        dz = targets @ dB[j].T
        dE = (q * dwf) @ Y - (q @ dwf)[:, None] * E + np.einsum("tab,tb->ta", Cov, dz)
        dout += (E - g) @ dV[j].T + (dE - gp * dz) @ V[j].T
    return dout / M


def tensor_velocity_vjp_numpy(targets, w, y0, y1, y2, B, V, h, ubar):
    """Plain-numpy twin of :func:`~gridpde.attention.tensor_vjp.tensor_velocity_vjp` with ``with_targets``.

    Forms (T, N) matrices per head.

    Returns:
        w_bar, B_bar, V_bar, x_bar.
    """
    Y = _sources(w, y0, y1, y2)
    M = B.shape[0]
    wbar = np.zeros(w.size)
    Bbar = np.zeros((M, 3, 3))
    Vbar = np.zeros((M, 3, 3))
    xbar = np.zeros(targets.shape)
    for j in range(M):
        _, q, E, Cov, g, gp = _head_numpy(targets, w, Y, B[j], h)
        c = ubar @ V[j] / M
        Vbar[j] = ubar.T @ (E - g) / M
        wbar += (q * (c @ Y.T - (E * c).sum(axis=1)[:, None])).sum(axis=0)
        zbar = np.einsum("tab,tb->ta", Cov, c) - gp * c
        Bbar[j] = zbar.T @ targets
        xbar += zbar @ B[j]
    return wbar.reshape(w.shape), Bbar, Vbar, xbar


# ---------------------------------------------------------------- direct VJP (attention.direct_vjp)


def _softmax_parts(X, w, B):
    """P (M, n, n) tilted weights over the kept sources, z (M, n, 3), E (M, n, 3)."""
    z = np.einsum("jab,ib->jia", B, X)
    s = np.einsum("jia,ka->jik", z, X)
    s = np.where(w > 0.0, s, -np.inf)
    P = np.exp(s - s.max(axis=2, keepdims=True)) * w
    P /= P.sum(axis=2, keepdims=True)
    E = P @ X
    return P, z, E


def direct_velocity_jvp_numpy(X, w, B, V, dX, dB, dV):
    """d out for a direction (dX, dB, dV): plain numpy, forms (M, n, n) arrays.

    d out_i = (1/M) sum_j [dV_j E_ij + V_j dE_ij],
    dE_ij = Cov_ij (dB_j x_i + B_j dx_i) + sum_k P_ijk [dy_k + (y_k - E_ij) (z_ij . dy_k)].
    """
    M = B.shape[0]
    if not np.any(w > 0.0):
        return np.zeros_like(X)
    P, z, E = _softmax_parts(X, w, B)
    dz = np.einsum("jab,ib->jia", dB, X) + np.einsum("jab,ib->jia", B, dX)
    U = X[None, None, :, :] - E[:, :, None, :]  # (M, n, n, 3): y_k - E_ij
    cov_dz = np.einsum("jik,jika,jikb,jib->jia", P, U, U, dz)
    zdy = np.einsum("jia,ka->jik", z, dX)
    dE = cov_dz + P @ dX + np.einsum("jik,jika,jik->jia", P, U, zdy)
    return (np.einsum("jab,jib->ia", dV, E) + np.einsum("jab,jib->ia", V, dE)) / M


def direct_velocity_vjp_numpy(X, w, B, V, ubar):
    """Plain-numpy twin of :func:`~gridpde.attention.direct_vjp.direct_velocity_vjp` (forms (M, n, n) arrays)."""
    n, M = X.shape[0], B.shape[0]
    if not np.any(w > 0.0):
        return np.zeros((n, 3)), np.zeros((M, 3, 3)), np.zeros((M, 3, 3))
    P, z, E = _softmax_parts(X, w, B)
    c = np.einsum("jba,ib->jia", V, ubar) / M  # V_j^T ubar_i / M
    U = X[None, None, :, :] - E[:, :, None, :]
    zbar = np.einsum("jik,jika,jikb,jib->jia", P, U, U, c)
    X_bar = np.einsum("jba,jib->ia", B, zbar)
    X_bar += np.einsum("jik,jia->ka", P, c)
    X_bar += np.einsum("jik,jia,jikb,jib->ka", P, z, U, c)
    B_bar = np.einsum("jia,ib->jab", zbar, X)
    V_bar = np.einsum("ia,jib->jab", ubar, E) / M
    return X_bar, B_bar, V_bar


# ---------------------------------------------------------------- table (attention.table)


def _interp_numpy(table, Z, derivative=False):
    """F~ (S, nc) at padded z points Z (S, 3), the panel index and the weights; dF~/du (S, nc, d) if ``derivative``."""
    d = table.d
    S = Z.shape[0]
    lo, binv = table.lookup[0], table.lookup[1]
    arrs = table.lookup[2:11]
    n = table.lookup[11:]
    P = [len(arrs[3 * k + 1]) for k in range(3)]
    ks, Ts, Ds = [], [], []
    for k in range(3):
        bins, cen, rh = arrs[3 * k : 3 * k + 3]
        u = np.zeros(S) if k < 3 - d else Z[:, table.axes[k - (3 - d)]]
        kk = bins[np.clip((u - lo[k]) * binv[k], 0, len(bins) - 1).astype(np.int64)]
        s = (u - cen[kk]) * rh[kk]
        inside = np.abs(s) <= 1.0 + CLAMP
        s = np.where(inside, s, np.clip(s, -1.0, 1.0))
        Tm = np.ones((S, n[k]))
        Dm = np.zeros((S, n[k]))
        if n[k] > 1:
            Tm[:, 1] = s
            Dm[:, 1] = 1.0
            for i in range(2, n[k]):
                Tm[:, i] = 2 * s * Tm[:, i - 1] - Tm[:, i - 2]
                Dm[:, i] = 2 * Tm[:, i - 1] + 2 * s * Dm[:, i - 1] - Dm[:, i - 2]
        Dm *= np.where(inside, rh[kk], 0.0)[:, None]
        ks.append(kk)
        Ts.append(Tm)
        Ds.append(Dm)
    idx = (ks[0] * P[1] + ks[1]) * P[2] + ks[2]
    blk = table.coef[idx].reshape(S, d, *n)
    F = np.einsum("sa,sb,sg,scabg->sc", Ts[0], Ts[1], Ts[2], blk)
    if not derivative:
        return F, idx, Ts
    dF = np.stack(
        [
            np.einsum("sa,sb,sg,scabg->sc", Ds[0] if k == 0 else Ts[0], Ds[1] if k == 1 else Ts[1],
                      Ds[2] if k == 2 else Ts[2], blk)  # fmt: skip
            for k in range(3 - d, 3)
        ],
        axis=-1,
    )
    return F, idx, Ts, dF


def _pairs_numpy(table, targets, B):
    M = B.shape[0]
    Z = np.einsum("jab,tb->jta", B, targets).reshape(-1, 3)  # (M*T, 3), head-major
    return Z


def evaluate_numpy(table, targets, B, V):
    """Plain-numpy twin of :func:`~gridpde.attention.table.evaluate`."""
    targets = np.asarray(targets, float)
    M = B.shape[0]
    T = targets.shape[0]
    _, Vc, base = _kernel_args(table, B, V)
    out = np.tile(base, (T, 1))
    if table.d == 0:
        return out
    F, _, _ = _interp_numpy(table, _pairs_numpy(table, targets, B))
    F = F.reshape(M, T, -1)
    return out + np.einsum("jrc,jtc->tr", Vc, F)


def evaluate_vjp_numpy(table, targets, B, V, ubar):
    """Plain-numpy twin of :func:`~gridpde.attention.table.evaluate_vjp`."""
    targets = np.asarray(targets, float)
    M = B.shape[0]
    T = targets.shape[0]
    d = table.d
    _, Vc, _ = _kernel_args(table, B, V)
    cbar = np.zeros_like(table.coef)
    Bcbar = np.zeros((M, 3, 3))
    Fsum = np.zeros((M, 3, d))
    if d:
        F, idx, Ts, dF = _interp_numpy(table, _pairs_numpy(table, targets, B), derivative=True)
        F = F.reshape(M, T, d)
        dF = dF.reshape(M, T, d, d)
        cb = np.einsum("jrc,tr->jtc", Vc, ubar)  # (M, T, nc)
        g = np.einsum("jtc,jtck->jtk", cb, dF)  # (M, T, d)
        Bcbar[:, 3 - d :, :] = np.einsum("jtk,tb->jkb", g, targets)
        Fsum = np.einsum("tr,jtc->jrc", ubar, F)
        contrib = np.einsum("sa,sb,sg,sc->scabg", Ts[0], Ts[1], Ts[2], cb.reshape(M * T, d))
        np.add.at(cbar, idx, contrib.reshape(M * T, d, -1))
    return _assemble_vjp(table, B, V, ubar, cbar, Bcbar, Fsum)
