"""Reverse mode of the tensor-grid attention sum :func:`~gridpde.attention.tensor.tensor_velocity`.

For fixed targets x_f (the face centres) the forward pass maps the source
masses w, the score matrices B and the value matrices V to

    out_f = (1/M) sum_j V_j (E_jf - g(z_jf)),   z_jf = B_j x_f,
    E_jf = sum_k P_fk y_k,   P_fk = w_k q_fk,   q_fk = exp(z_jf·y_k - lse_jf),

with g the per-axis quadrature correction g_a = (h_a/2) L(h_a z_a / 2)
(L the Langevin function; g = 0 where h_a = 0). With c_jf = V_j^T ubar_f / M
the cotangents of (w, B, V) for a cotangent ubar of out are

    V_bar_j = (1/M) sum_f ubar_f (E_jf - g(z_jf))^T
    w_bar_k = sum_{j,f} q_fk (y_k - E_jf)·c_jf                 (dE / dw_k)
    B_bar_j = sum_f (Cov_jf c_jf - g'(z_jf) ⊙ c_jf) x_f^T       (dE / dz = Cov)

where Cov_jf = sum_k P_fk (y_k - E)(y_k - E)^T is the tilted covariance and
g'_a = (h_a^2/4) L'(h_a z_a / 2). (Cotangents of w are per unit mass: the
grid adjoint multiplies by the cell volume to get those of rho.)

Every sum over the sources uses the forward kernel's factorisation
exp(z·y) = e0_p e1_q e2_r, each factor stabilised by its own maximum (per
(target, head) n0 + n1 + n2 exponentials, never a T x N matrix):

- the moments (mass, first and second) are nested contractions, three
  multiply-adds per source (two in the forward kernel); rows of w are taken
  in pairs so that one load of the e2 factors serves two rows. They are
  taken about the maximising node o (where the mass concentrates when |z|
  is large), so that Cov = S2/S0 - E E^T keeps its digits;
- w_bar receives from one (target, head) item the separable terms

      q_fk ((y_k - E)·c) = e0_p e1_q [e2_r (c0 y0_p + c1 y1_q - E·c) + c2 y2_r e2_r] / S0

  (coordinates about o), two multiply-adds per source; items are queued
  and added three at a time, so they share one read-modify-write of w_bar.

Measured here (2-D 128 x 128 grid, 33,024 face targets, 3 heads): the VJP
costs 1.4-1.7 forward calls. Races on w_bar are avoided with ``PARTS``
private copies (chunks of targets dealt round robin), summed in a fixed
order, so the result does not depend on the number of threads.

Branches are frozen as the forward pass took them: a target whose
factorised S0 is not in (1e-200, inf) takes the direct two-pass sum over
the sources with w > 0 only, as the forward kernel does; for those targets
the sources with w <= 0 are not live and get no w_bar (the forward map has
only one-sided derivatives in their masses at w = 0; the other side's
exp(z·y_k - lse) may not even be representable). In the factorised branch
every source is live, whatever its sign, as in the forward sum. The branch
test is recomputed from the same factors (summed in another order), so it
could disagree with the forward pass only for S0 within round-off of 1e-200.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from gridpde.attention.small import matvec3, rmatvec3
from gridpde._numba import inline, kernel
from gridpde.attention.tensor import CHUNK, UNDERFLOW, exp_row, langevin


@inline
def langevin_prime(u):
    """L'(u) = 1/u^2 - 1/sinh(u)^2 (L'(0) = 1/3), to ~1e-14 relative for all u: a series below |u| = 0.25."""
    au = abs(u)
    if au < 0.25:
        u2 = u * u
        return 1.0 / 3.0 + u2 * (
            -3.0 / 45.0
            + u2
            * (
                10.0 / 945.0
                + u2
                * (
                    -7.0 / 4725.0
                    + u2 * (18.0 / 93555.0 + u2 * (-15202.0 / 638512875.0 + u2 * 52.0 / 18243225.0))
                )
            )
        )
    if au > 20.0:
        return 1.0 / (u * u)
    s = np.sinh(u)
    return 1.0 / (u * u) - 1.0 / (s * s)


@inline
def _factor2(z, y, e, ey, eyy):
    """e_i = exp(z y_i - max_i z y_i) as in the forward kernel; ey = (y - o) e, eyy = (y - o)^2 e.

    o = y at the maximising node: the moments are taken about it (mass
    concentrates there when |z| is large, so Cov = S2/S0 - E E^T keeps its digits).

    Returns:
        o.
    """
    o = y[exp_row(z, y, e)]
    for i in range(y.shape[0]):
        ey[i] = (y[i] - o) * e[i]
        eyy[i] = (y[i] - o) * ey[i]
    return o


@inline
def _moments(w, e0, e0y, e0yy, e1, e1y, e1yy, e2, e2y, e2yy, S):
    """S = sums of w e0 e1 e2 times 1, y'_a, y'_a y'_b (order 0 1 2 00 01 02 11 12 22).

    Nested contractions as in the forward kernel; rows q are taken in pairs
    so that each load of e2 serves two rows of w.
    """
    n0, n1, n2 = w.shape
    for k in range(10):
        S[k] = 0.0
    for p in range(n0):
        a0 = 0.0
        a1 = 0.0
        a2 = 0.0
        a11 = 0.0
        a12 = 0.0
        a22 = 0.0
        q = 0
        while q < n1:
            if q + 1 < n1:
                t0 = 0.0
                t2 = 0.0
                t22 = 0.0
                u0 = 0.0
                u2 = 0.0
                u22 = 0.0
                for r in range(n2):
                    wa = w[p, q, r]
                    wc = w[p, q + 1, r]
                    f = e2[r]
                    fy = e2y[r]
                    fyy = e2yy[r]
                    t0 += wa * f
                    t2 += wa * fy
                    t22 += wa * fyy
                    u0 += wc * f
                    u2 += wc * fy
                    u22 += wc * fyy
                a0 += e1[q] * t0 + e1[q + 1] * u0
                a1 += e1y[q] * t0 + e1y[q + 1] * u0
                a11 += e1yy[q] * t0 + e1yy[q + 1] * u0
                a2 += e1[q] * t2 + e1[q + 1] * u2
                a12 += e1y[q] * t2 + e1y[q + 1] * u2
                a22 += e1[q] * t22 + e1[q + 1] * u22
                q += 2
            else:
                t0 = 0.0
                t2 = 0.0
                t22 = 0.0
                for r in range(n2):
                    wa = w[p, q, r]
                    t0 += wa * e2[r]
                    t2 += wa * e2y[r]
                    t22 += wa * e2yy[r]
                a0 += e1[q] * t0
                a1 += e1y[q] * t0
                a11 += e1yy[q] * t0
                a2 += e1[q] * t2
                a12 += e1y[q] * t2
                a22 += e1[q] * t22
                q += 1
        S[0] += e0[p] * a0
        S[1] += e0y[p] * a0
        S[2] += e0[p] * a1
        S[3] += e0[p] * a2
        S[4] += e0yy[p] * a0
        S[5] += e0y[p] * a1
        S[6] += e0y[p] * a2
        S[7] += e0[p] * a11
        S[8] += e0[p] * a12
        S[9] += e0[p] * a22


@inline
def _flush(wb, pe2, pe2y, pal, pbe, k):
    """wb[p, q, r] += sum over the k pending items i of pal[i, p, q] pe2[i, r] + pbe[i, p, q] pe2y[i, r].

    Up to three (target, head) items share one read-modify-write of wb.
    """
    n0, n1, n2 = wb.shape
    for p in range(n0):
        for q in range(n1):
            a0 = pal[0, p, q]
            b0 = pbe[0, p, q]
            if k == 3:
                a1 = pal[1, p, q]
                b1 = pbe[1, p, q]
                a2 = pal[2, p, q]
                b2 = pbe[2, p, q]
                for r in range(n2):
                    wb[p, q, r] += (
                        a0 * pe2[0, r] + b0 * pe2y[0, r] + a1 * pe2[1, r] + b1 * pe2y[1, r]
                        + a2 * pe2[2, r] + b2 * pe2y[2, r]
                    )  # fmt: skip
            elif k == 2:
                a1 = pal[1, p, q]
                b1 = pbe[1, p, q]
                for r in range(n2):
                    wb[p, q, r] += a0 * pe2[0, r] + b0 * pe2y[0, r] + a1 * pe2[1, r] + b1 * pe2y[1, r]
            else:
                for r in range(n2):
                    wb[p, q, r] += a0 * pe2[0, r] + b0 * pe2y[0, r]


@inline
def _direct_vjp(z0, z1, z2, c0, c1, c2, w, y0, y1, y2, mom, wb):
    """The underflow branch: two-pass sums over the sources with w > 0, shifted by the largest
    log-term s + log w as the forward pass (:func:`gridpde.attention.tensor._direct_on_grid`).

    Fills mom with (o, E - o, Cov) (o the top source, Cov as 6 entries
    00 01 02 11 12 22) and adds q_k (y_k - E)·c to wb[k] for w_k > 0,
    q_k = exp(s_k - lse) = e_k / (w_k S0).
    """
    n0, n1, n2 = w.shape
    top = -np.inf
    pt = 0
    qt = 0
    rt = 0
    for p in range(n0):
        for q in range(n1):
            for r in range(n2):
                if w[p, q, r] > 0.0:
                    s = z0 * y0[p] + z1 * y1[q] + z2 * y2[r] + np.log(w[p, q, r])
                    if s > top:
                        top = s
                        pt = p
                        qt = q
                        rt = r
    for k in range(12):
        mom[k] = 0.0
    if top == -np.inf:  # no mass: the forward returns m = 0
        return
    o0 = y0[pt]
    o1 = y1[qt]
    o2 = y2[rt]
    mom[0] = o0
    mom[1] = o1
    mom[2] = o2
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    s11 = 0.0
    s12 = 0.0
    s13 = 0.0
    s22 = 0.0
    s23 = 0.0
    s33 = 0.0
    for p in range(n0):
        for q in range(n1):
            for r in range(n2):
                wv = w[p, q, r]
                if wv > 0.0:
                    e = np.exp(z0 * y0[p] + z1 * y1[q] + z2 * y2[r] + np.log(wv) - top)
                    a = y0[p] - o0
                    b = y1[q] - o1
                    c = y2[r] - o2
                    s0 += e
                    s1 += e * a
                    s2 += e * b
                    s3 += e * c
                    s11 += e * a * a
                    s12 += e * a * b
                    s13 += e * a * c
                    s22 += e * b * b
                    s23 += e * b * c
                    s33 += e * c * c
    E0 = s1 / s0
    E1 = s2 / s0
    E2 = s3 / s0
    mom[3] = E0
    mom[4] = E1
    mom[5] = E2
    mom[6] = s11 / s0 - E0 * E0
    mom[7] = s12 / s0 - E0 * E1
    mom[8] = s13 / s0 - E0 * E2
    mom[9] = s22 / s0 - E1 * E1
    mom[10] = s23 / s0 - E1 * E2
    mom[11] = s33 / s0 - E2 * E2
    Ec = E0 * c0 + E1 * c1 + E2 * c2
    inv = 1.0 / s0
    for p in range(n0):
        for q in range(n1):
            for r in range(n2):
                wv = w[p, q, r]
                if wv > 0.0:
                    qk = np.exp(z0 * y0[p] + z1 * y1[q] + z2 * y2[r] + np.log(wv) - top) / wv * inv
                    wb[p, q, r] += qk * (c0 * (y0[p] - o0) + c1 * (y1[q] - o1) + c2 * (y2[r] - o2) - Ec)


@kernel(parallel=True)
def _tensor_vjp(targets, w, y0, y1, y2, B, V, h, ubar, wbar, Bbar, Vbar, xbar):
    """Per-part cotangents of :func:`tensor_velocity`; see the module docstring.

    Args:
        targets, w, y0, y1, y2, B, V, h: as for :func:`tensor_velocity`.
        ubar: (T, 3) cotangent of out.
        wbar: (P, n0, n1, n2) zeroed; part p accumulates into wbar[p].
        Bbar, Vbar: (P, M, 3, 3) zeroed, likewise.
        xbar: (T, 3) zeroed: the targets' cotangents sum_j B_j^T z_bar_j
            (each target belongs to one part, so no race), or (0, 3) to skip them.
    """
    want_x = xbar.shape[0] > 0
    T = targets.shape[0]
    M = B.shape[0]
    n0, n1, n2 = w.shape
    nparts = wbar.shape[0]
    nchunks = (T + CHUNK - 1) // CHUNK
    for part in prange(nparts):
        wb = wbar[part]
        e0 = np.empty(n0)
        e0y = np.empty(n0)
        e0yy = np.empty(n0)
        e1 = np.empty(n1)
        e1y = np.empty(n1)
        e1yy = np.empty(n1)
        e2yy = np.empty(n2)
        S = np.empty(10)
        mom = np.empty(12)
        # up to three (target, head) items waiting for one shared pass over wb
        pe2 = np.empty((3, n2))
        pe2y = np.empty((3, n2))
        pal = np.empty((3, n0, n1))
        pbe = np.empty((3, n0, n1))
        npend = 0
        for ch in range(part, nchunks, nparts):
            for t in range(ch * CHUNK, min(T, (ch + 1) * CHUNK)):
                u0 = ubar[t, 0]
                u1 = ubar[t, 1]
                u2 = ubar[t, 2]
                if u0 == 0.0 and u1 == 0.0 and u2 == 0.0:
                    continue  # nothing flows back through this target
                x0 = targets[t, 0]
                x1 = targets[t, 1]
                x2 = targets[t, 2]
                for j in range(M):
                    z0, z1, z2 = matvec3(B, j, x0, x1, x2)
                    # c = V_j^T ubar / M
                    c0, c1, c2 = rmatvec3(V, j, u0 / M, u1 / M, u2 / M)
                    e2 = pe2[npend]
                    e2y = pe2y[npend]
                    o0 = _factor2(z0, y0, e0, e0y, e0yy)
                    o1 = _factor2(z1, y1, e1, e1y, e1yy)
                    o2 = _factor2(z2, y2, e2, e2y, e2yy)
                    _moments(w, e0, e0y, e0yy, e1, e1y, e1yy, e2, e2y, e2yy, S)
                    s0 = S[0]
                    if s0 > UNDERFLOW and s0 < np.inf:
                        inv = 1.0 / s0
                        E0 = S[1] * inv
                        E1 = S[2] * inv
                        E2 = S[3] * inv
                        mom[0] = o0
                        mom[1] = o1
                        mom[2] = o2
                        mom[3] = E0
                        mom[4] = E1
                        mom[5] = E2
                        mom[6] = S[4] * inv - E0 * E0
                        mom[7] = S[5] * inv - E0 * E1
                        mom[8] = S[6] * inv - E0 * E2
                        mom[9] = S[7] * inv - E1 * E1
                        mom[10] = S[8] * inv - E1 * E2
                        mom[11] = S[9] * inv - E2 * E2
                        # w_bar += q (y - E)·c with q = e0 e1 e2 / S0: queue the item
                        Ec = E0 * c0 + E1 * c1 + E2 * c2
                        for p in range(n0):
                            for q in range(n1):
                                base = e0[p] * e1[q] * inv
                                pal[npend, p, q] = base * (c0 * (y0[p] - o0) + c1 * (y1[q] - o1) - Ec)
                                pbe[npend, p, q] = base * c2
                        npend += 1
                        if npend == 3:
                            _flush(wb, pe2, pe2y, pal, pbe, 3)
                            npend = 0
                    else:
                        _direct_vjp(z0, z1, z2, c0, c1, c2, w, y0, y1, y2, mom, wb)
                    # m = E - g(z); z_bar = Cov c - g'(z) c
                    m0 = mom[0] + mom[3]
                    m1 = mom[1] + mom[4]
                    m2 = mom[2] + mom[5]
                    zb0 = mom[6] * c0 + mom[7] * c1 + mom[8] * c2
                    zb1 = mom[7] * c0 + mom[9] * c1 + mom[10] * c2
                    zb2 = mom[8] * c0 + mom[10] * c1 + mom[11] * c2
                    if h[0] > 0.0:
                        m0 -= 0.5 * h[0] * langevin(0.5 * h[0] * z0)
                        zb0 -= 0.25 * h[0] * h[0] * langevin_prime(0.5 * h[0] * z0) * c0
                    if h[1] > 0.0:
                        m1 -= 0.5 * h[1] * langevin(0.5 * h[1] * z1)
                        zb1 -= 0.25 * h[1] * h[1] * langevin_prime(0.5 * h[1] * z1) * c1
                    if h[2] > 0.0:
                        m2 -= 0.5 * h[2] * langevin(0.5 * h[2] * z2)
                        zb2 -= 0.25 * h[2] * h[2] * langevin_prime(0.5 * h[2] * z2) * c2
                    Vb = Vbar[part, j]
                    Vb[0, 0] += u0 * m0 / M
                    Vb[0, 1] += u0 * m1 / M
                    Vb[0, 2] += u0 * m2 / M
                    Vb[1, 0] += u1 * m0 / M
                    Vb[1, 1] += u1 * m1 / M
                    Vb[1, 2] += u1 * m2 / M
                    Vb[2, 0] += u2 * m0 / M
                    Vb[2, 1] += u2 * m1 / M
                    Vb[2, 2] += u2 * m2 / M
                    Bb = Bbar[part, j]
                    Bb[0, 0] += zb0 * x0
                    Bb[0, 1] += zb0 * x1
                    Bb[0, 2] += zb0 * x2
                    Bb[1, 0] += zb1 * x0
                    Bb[1, 1] += zb1 * x1
                    Bb[1, 2] += zb1 * x2
                    Bb[2, 0] += zb2 * x0
                    Bb[2, 1] += zb2 * x1
                    Bb[2, 2] += zb2 * x2
                    if want_x:
                        xb0, xb1, xb2 = rmatvec3(B, j, zb0, zb1, zb2)
                        xbar[t, 0] += xb0
                        xbar[t, 1] += xb1
                        xbar[t, 2] += xb2
        if npend > 0:
            _flush(wb, pe2, pe2y, pal, pbe, npend)


#: private copies of w_bar (a fixed number, so results do not depend on the thread count)
PARTS = 8


def tensor_velocity_vjp(targets, w, y0, y1, y2, B, V, h, ubar, with_targets: bool = False):
    """(w_bar, B_bar, V_bar): cotangents of :func:`tensor_velocity` for a cotangent ubar of out.

    With ``with_targets`` also x_bar (T, 3), the targets' cotangents (query tokens
    are moving targets; face centres are fixed and skip it).

    Args:
        targets: (T, 3) padded target points x (fixed).
        w: (n0, n1, n2) source masses (cell average times cell volume).
        y0, y1, y2: cell centres per padded axis.
        B: (M, 3, 3) padded score matrices B = K^T Q.
        V: (M, 3, 3) padded value matrices.
        h: (3,) cell sizes of the deconvolved quadrature, zeros for midpoint.
        ubar: (T, 3) cotangent of out.

    Returns:
        w_bar (n0, n1, n2), B_bar (M, 3, 3), V_bar (M, 3, 3).
    """
    w = np.ascontiguousarray(w, dtype=float)
    M = B.shape[0]
    parts = max(1, min(PARTS, (targets.shape[0] + CHUNK - 1) // CHUNK))
    wbar = np.zeros((parts, *w.shape))
    Bbar = np.zeros((parts, M, 3, 3))
    Vbar = np.zeros((parts, M, 3, 3))
    xbar = np.zeros((targets.shape[0] if with_targets else 0, 3))

    def arr(x):
        return np.ascontiguousarray(x, dtype=float)

    _tensor_vjp(arr(targets), w, arr(y0), arr(y1), arr(y2), arr(B), arr(V), arr(h), arr(ubar), wbar, Bbar, Vbar,
                xbar)
    out = wbar.sum(axis=0), Bbar.sum(axis=0), Vbar.sum(axis=0)
    return (*out, xbar) if with_targets else out
