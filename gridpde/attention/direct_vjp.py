"""Reverse mode (VJP) of the direct attention velocity, tokens as sources and targets.

The map (padded layout, docs/model.md section 1; ``direct.direct_velocity`` with
``targets = sources = X``)

    out_i = (1/M) sum_j V_j E_ij,   E_ij = m_j(x_i) = sum_k P_ijk y_k,
    P_ijk = w_k exp(s_ijk - lse_ij),  s_ijk = z_ij . y_k,  z_ij = B_j x_i,

with y_k = x_k (the same tokens) and fixed weights w. Its linearisation
transposed, for an incoming cotangent ubar (n, 3) and c_ij = V_j^T ubar_i / M:

    V_bar_j  = (1/M) sum_i ubar_i E_ij^T
    zbar_ij  = Cov_ij c_ij = sum_k P_ijk (y_k - E_ij) ((y_k - E_ij) . c_ij)
    B_bar_j  = sum_i zbar_ij x_i^T
    X_bar_i  = sum_j B_j^T zbar_ij                                  (x_i as target)
             + sum_{j,i'} P_i'jk [c_i'j + z_i'j ((y_k - E_i'j) . c_i'j)]  at k = i
                                                                    (x_k as source)

using dm/dz = Cov and dm/dy_k = P_k [I + (y_k - E) z^T]. Sources with
w_k = 0 do not enter the forward pass, so their source term is 0.

Two numba passes, neither forms an n x n matrix:

1. parallel over targets i (for every head j): the max score, then one sweep
   for the normaliser, the tilted mean and Cov c, the covariance taken about
   the max-score source r (sum P (y - r)((y - r).c) - (E - r)((E - r).c):
   when the tilted measure is concentrated, E is close to r and nothing
   cancels). Stores per (j, i) what pass 2 needs: z, lse, c and
   a = c - z (E.c) (O(n M) numbers).
2. parallel over sources k: y_bar_k = sum_{j,i} P_ijk (a_ij + z_ij (y_k . c_ij)),
   recomputing P from the stored z and lse (no races, no n x n storage).

Both use the forward kernel's stabilisation (max shift, ``fast_exp``) and its
layout trick (leading coordinates zero for every kept source are skipped in
the score sums; pass 2 takes the short path only when z and a are zero there
too, which holds for padded B and V). Cost ~ 2 forward calls. Its plain-numpy
twins in :mod:`gridpde.twins.attention` form n x n matrices (tests only, small n).
"""

import numpy as np
from numba import prange

from gridpde.attention.small import matvec3, rmatvec3
from gridpde._numba import inline, kernel
from gridpde.attention.direct import WEIGHT_FLOOR
from gridpde.attention.fastexp import fast_exp

__all__ = ["direct_velocity_vjp"]


# ---------------------------------------------------------------- pass 1: targets


@inline
def _argmax_score(z0, z1, z2, y0, y1, y2, n):
    """(k*, s_k*): a source of the largest score z.y_k (the reference point r = y_k*)."""
    mx = -np.inf
    kr = 0
    for k in range(n):
        s = z0 * y0[k] + z1 * y1[k] + z2 * y2[k]
        if s > mx:
            mx, kr = s, k
    return kr, mx


@inline
def _max_offset(z0, z1, z2, r0, r1, r2, y0, y1, y2, n):
    """max_k z.(y_k - r) >= 0: what pass 1's rounding misranked among near-ties (else 0)."""
    d = 0.0
    for k in range(n):
        d = max(d, z0 * (y0[k] - r0) + z1 * (y1[k] - r1) + z2 * (y2[k] - r2))
    return d


@inline
def _tilted_sums(z0, z1, z2, c0, c1, c2, r0, r1, r2, y0, y1, y2, w, n, dmax, D):
    """Sweep over the sources: with e_k = w_k exp(z.u_k - dmax), u_k = y_k - r,

    (scores relative to the reference point r from coordinate differences, so
    no two huge scores are subtracted),

    returns sum e, sum e u (3) and sum e u (u . c) (3).
    """
    s0 = 0.0
    a0 = 0.0
    a1 = 0.0
    a2 = 0.0
    t0 = 0.0
    t1 = 0.0
    t2 = 0.0
    if D == 3:
        for k in range(n):
            u0 = y0[k] - r0
            u1 = y1[k] - r1
            u2 = y2[k] - r2
            e = w[k] * fast_exp(z0 * u0 + z1 * u1 + z2 * u2 - dmax)
            eu = e * (u0 * c0 + u1 * c1 + u2 * c2)
            s0 += e
            a0 += e * u0
            a1 += e * u1
            a2 += e * u2
            t0 += eu * u0
            t1 += eu * u1
            t2 += eu * u2
    elif D == 2:
        for k in range(n):
            u1 = y1[k] - r1
            u2 = y2[k] - r2
            e = w[k] * fast_exp(z1 * u1 + z2 * u2 - dmax)
            eu = e * (u1 * c1 + u2 * c2)
            s0 += e
            a1 += e * u1
            a2 += e * u2
            t1 += eu * u1
            t2 += eu * u2
    else:
        for k in range(n):
            u2 = y2[k] - r2
            e = w[k] * fast_exp(z2 * u2 - dmax)
            eu = e * (u2 * c2)
            s0 += e
            a2 += e * u2
            t2 += eu * u2
    return s0, a0, a1, a2, t0, t1, t2


@kernel(parallel=True)
def _target_pass(X, ys, ws, B, V, ubar, D, E, Zb, Z, C, A, R, L, xbar):
    """Pass 1, parallel over targets i = rows of X.

    ys (3, n) kept sources coordinate-major (leading 3 - D rows zero), ws (n,)
    their weights, D the number of active trailing coordinates. Writes per
    (j, i): E, Zb = Cov c, Z = z, C = c, A = c - z ((E - r).c) (all (M, 3, T)), R = r,
    L = lse (M, T); and xbar (T, 3) = sum_j B_j^T Zb_ij.
    """
    T = X.shape[0]
    n = ws.shape[0]
    M = B.shape[0]
    y0 = ys[0]
    y1 = ys[1]
    y2 = ys[2]
    for i in prange(T):
        x0 = X[i, 0]
        x1 = X[i, 1]
        x2 = X[i, 2]
        g0 = 0.0
        g1 = 0.0
        g2 = 0.0
        for j in range(M):
            z0, z1, z2 = matvec3(B, j, x0, x1, x2)
            # c = V_j^T ubar_i / M
            c0, c1, c2 = rmatvec3(V, j, ubar[i, 0] / M, ubar[i, 1] / M, ubar[i, 2] / M)
            # inactive score coordinates multiply zeros: drop them
            zs0 = z0 if D == 3 else 0.0
            zs1 = z1 if D >= 2 else 0.0
            kr, _ = _argmax_score(zs0, zs1, z2, y0, y1, y2, n)
            r0 = y0[kr]
            r1 = y1[kr]
            r2 = y2[kr]
            dmax = _max_offset(zs0, zs1, z2, r0, r1, r2, y0, y1, y2, n)
            s0, a0, a1, a2, t0, t1, t2 = _tilted_sums(
                zs0, zs1, z2, c0, c1, c2, r0, r1, r2, y0, y1, y2, ws, n, dmax, D
            )
            # mean about r, then E and Cov c = t/s0 - (E - r)((E - r).c)
            d0 = a0 / s0
            d1 = a1 / s0
            d2 = a2 / s0
            dc = d0 * c0 + d1 * c1 + d2 * c2
            zb0 = t0 / s0 - d0 * dc
            zb1 = t1 / s0 - d1 * dc
            zb2 = t2 / s0 - d2 * dc
            e0 = r0 + d0
            e1 = r1 + d1
            e2 = r2 + d2
            E[j, 0, i] = e0
            E[j, 1, i] = e1
            E[j, 2, i] = e2
            Zb[j, 0, i] = zb0
            Zb[j, 1, i] = zb1
            Zb[j, 2, i] = zb2
            Z[j, 0, i] = z0
            Z[j, 1, i] = z1
            Z[j, 2, i] = z2
            C[j, 0, i] = c0
            C[j, 1, i] = c1
            C[j, 2, i] = c2
            # relative to r (pass 2 dots (y_k - r) with c): no cancellation of huge terms
            A[j, 0, i] = c0 - z0 * dc
            A[j, 1, i] = c1 - z1 * dc
            A[j, 2, i] = c2 - z2 * dc
            R[j, 0, i] = r0
            R[j, 1, i] = r1
            R[j, 2, i] = r2
            L[j, i] = dmax + np.log(s0)  # lse relative to the score at r: lse = z.r + L
            # x_bar_i += B_j^T zbar
            h0, h1, h2 = rmatvec3(B, j, zb0, zb1, zb2)
            g0 += h0
            g1 += h1
            g2 += h2
        xbar[i, 0] = g0
        xbar[i, 1] = g1
        xbar[i, 2] = g2


# ---------------------------------------------------------------- pass 2: sources


@kernel(parallel=True)
def _source_pass(ys, ws, Z, C, A, R, L, D, ybar):
    """Pass 2, parallel over kept sources k: ybar (n, 3).

    ybar_k = sum_{j,i} P_ijk (A_ij + Z_ij ((y_k - r_ij) . C_ij)), A = c - z ((E - r) . c),
    P_ijk = exp(z_ij.(y_k - r_ij) + log w_k - L_ij) with r_ij the reference point of pass 1
    and L_ij the log-normaliser relative to it (no difference of huge scores).
    D = 3 sums every coordinate; D < 3 assumes Z and A vanish in the leading
    3 - D coordinates (checked by the caller) and C is only dotted with y_k.
    """
    n = ws.shape[0]
    M = Z.shape[0]
    T = Z.shape[2]
    for k in prange(n):
        q0 = ys[0, k]
        q1 = ys[1, k]
        q2 = ys[2, k]
        lw = np.log(ws[k])
        b0 = 0.0
        b1 = 0.0
        b2 = 0.0
        for j in range(M):
            Z0 = Z[j, 0]
            Z1 = Z[j, 1]
            Z2 = Z[j, 2]
            C0 = C[j, 0]
            C1 = C[j, 1]
            C2 = C[j, 2]
            A0 = A[j, 0]
            A1 = A[j, 1]
            A2 = A[j, 2]
            Lj = L[j]
            R0 = R[j, 0]
            R1 = R[j, 1]
            R2 = R[j, 2]
            if D == 3:
                for i in range(T):
                    p = fast_exp(Z0[i] * (q0 - R0[i]) + Z1[i] * (q1 - R1[i]) + Z2[i] * (q2 - R2[i]) + lw - Lj[i])
                    dot = (q0 - R0[i]) * C0[i] + (q1 - R1[i]) * C1[i] + (q2 - R2[i]) * C2[i]
                    b0 += p * (A0[i] + Z0[i] * dot)
                    b1 += p * (A1[i] + Z1[i] * dot)
                    b2 += p * (A2[i] + Z2[i] * dot)
            elif D == 2:
                for i in range(T):
                    p = fast_exp(Z1[i] * (q1 - R1[i]) + Z2[i] * (q2 - R2[i]) + lw - Lj[i])
                    dot = (q1 - R1[i]) * C1[i] + (q2 - R2[i]) * C2[i]
                    b1 += p * (A1[i] + Z1[i] * dot)
                    b2 += p * (A2[i] + Z2[i] * dot)
            else:
                for i in range(T):
                    p = fast_exp(Z2[i] * (q2 - R2[i]) + lw - Lj[i])
                    b2 += p * (A2[i] + Z2[i] * ((q2 - R2[i]) * C2[i]))
        ybar[k, 0] = b0
        ybar[k, 1] = b1
        ybar[k, 2] = b2


# ---------------------------------------------------------------- wrapper


def _check(name, a, shape):
    if not isinstance(a, np.ndarray) or a.dtype != np.float64:
        raise TypeError(f"{name} must be a float64 numpy array")
    if a.shape != shape:
        raise ValueError(f"{name} has shape {a.shape}, expected {shape}")


def _validate(X, w, B, V, *rest):
    if not isinstance(X, np.ndarray) or X.ndim != 2:
        raise ValueError("X must be an (n, 3) array")
    if not isinstance(B, np.ndarray) or B.ndim != 3:
        raise ValueError("B must be an (M, 3, 3) array")
    n, M = X.shape[0], B.shape[0]
    _check("X", X, (n, 3))
    _check("w", w, (n,))
    _check("B", B, (M, 3, 3))
    _check("V", V, (M, 3, 3))
    for name, a, shape in rest:
        _check(name, a, shape)
    if M == 0:
        raise ValueError("need at least one head")
    if not np.all(w >= 0.0):  # also rejects NaN
        raise ValueError("weights must be >= 0")


def direct_velocity_vjp(X, w, B, V, ubar):
    """Transpose of the linearised attention velocity at (X, B, V), X as sources and targets.

    Args:
        X: (n, 3) tokens x_i in the padded layout (targets and sources).
        w: (n,) weights w_k >= 0 (fixed; no cotangent).
        B: (M, 3, 3) score matrices B_j = K_j^T Q_j.
        V: (M, 3, 3) value matrices V_j.
        ubar: (n, 3) cotangent of out = (1/M) sum_j V_j m_j(X).

    Returns:
        (X_bar (n, 3), B_bar (M, 3, 3), V_bar (M, 3, 3)) with
        <ubar, d out> = <X_bar, dX> + <B_bar, dB> + <V_bar, dV> for all
        directions. Sources of weight 0 (or below ``WEIGHT_FLOOR`` of the largest,
        as in the forward kernel) do not act as sources. All
        inputs float64; any layout (copied to C order).
    """
    _validate(X, w, B, V, ("ubar", ubar, X.shape))
    X, w, B, V, ubar = (np.ascontiguousarray(a) for a in (X, w, B, V, ubar))
    n, M = X.shape[0], B.shape[0]
    keep = np.flatnonzero(w > WEIGHT_FLOOR * w.max()) if w.size else np.zeros(0, dtype=np.int64)
    if keep.size == 0:  # out = 0 whatever X, B, V
        return np.zeros((n, 3)), np.zeros((M, 3, 3)), np.zeros((M, 3, 3))
    ys = np.ascontiguousarray(X[keep].T)  # (3, n_kept)
    ws = np.ascontiguousarray(w[keep])
    zero_cols = np.all(ys == 0.0, axis=1)
    c0 = int(np.argmin(zero_cols)) if not zero_cols.all() else 3
    D = max(3 - c0, 1)  # all sources at the origin: D = 1 with y = 0 is exact
    # which D the forward kernel uses does not matter: skipped terms are zeros
    E = np.empty((M, 3, n))
    Zb = np.empty((M, 3, n))
    Z = np.empty((M, 3, n))
    C = np.empty((M, 3, n))
    A = np.empty((M, 3, n))
    R = np.empty((M, 3, n))
    L = np.empty((M, n))
    xbar = np.empty((n, 3))
    _target_pass(X, ys, ws, B, V, ubar, D, E, Zb, Z, C, A, R, L, xbar)
    lead = 3 - D
    D2 = D if not (np.any(Z[:, :lead]) or np.any(A[:, :lead])) else 3
    ybar = np.empty((keep.size, 3))
    _source_pass(ys, ws, Z, C, A, R, L, D2, ybar)
    X_bar = xbar
    X_bar[keep] += ybar
    B_bar = np.einsum("jai,ib->jab", Zb, X)
    V_bar = np.einsum("ia,jbi->jab", ubar, E) / M
    return X_bar, B_bar, V_bar
