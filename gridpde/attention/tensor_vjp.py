"""Vector-Jacobian product of the tensor-grid attention velocity.

For :func:`gridpde.attention.tensor.tensor_velocity`, out_f = (1/M) sum_j
V_j (E_jf - g(z_jf)), z = B_j x_f, E the tilted mean, g the deconvolution
correction, and a cotangent ubar_f, with c = V_j^T ubar_f / M:

    V_bar_j += ubar_f (E - g)^T / M
    B_bar_j += (Cov c - g'(z) * c) x_f^T          Cov the tilted covariance
    w_bar_k += exp(z·y_k - lse_f) (y_k - E)·c     (every cell, massless or not)

(NUMERICS.md, "Reverse mode through one softmax head"). Both sums use the
forward kernel's factorisation: per target and head one sweep for the first
and second moments (three multiply-adds per cell) and one for w_bar (two),
each exp(z·y) a product of per-axis factors stabilised by their maxima; the
underflow fallback of the forward kernel applies here too. w_bar is
accumulated in ``CHUNKS`` private arrays (a fixed split of the targets, so
the result does not depend on the thread count) summed in order at the end.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from gridpde._numba import inline, kernel
from gridpde.attention.tensor import UNDERFLOW, _factor, langevin

CHUNKS = 8


@inline
def langevin_prime(u):
    """L'(u) = 1/u^2 - 1/sinh(u)^2."""
    au = abs(u)
    if au < 0.25:
        u2 = u * u
        return 1.0 / 3.0 + u2 * (
            -3.0 / 45.0
            + u2 * (10.0 / 945.0 + u2 * (-7.0 / 4725.0 + u2 * (18.0 / 93555.0 + u2 * (-15202.0 / 638512875.0))))
        )
    if au > 20.0:
        return 1.0 / (u * u)
    s = np.sinh(u)
    return 1.0 / (u * u) - 1.0 / (s * s)


@kernel(parallel=True)
def _vjp_kernel(targets, w, y0, y1, y2, B, V, h, ubar, wbar, Bbar, Vbar):
    T = targets.shape[0]
    M = B.shape[0]
    n0, n1, n2 = w.shape
    nch = wbar.shape[0]
    per = (T + nch - 1) // nch
    for ch in prange(nch):
        e0 = np.empty(n0)
        e0y = np.empty(n0)
        e1 = np.empty(n1)
        e1y = np.empty(n1)
        e2 = np.empty(n2)
        e2y = np.empty(n2)
        x = np.empty(3)
        z = np.empty(3)
        c = np.empty(3)
        E = np.empty(3)
        C = np.empty((3, 3))
        wb = wbar[ch]
        for t in range(ch * per, min(T, (ch + 1) * per)):
            for a in range(3):
                x[a] = targets[t, a]
            for j in range(M):
                for a in range(3):
                    z[a] = B[j, a, 0] * x[0] + B[j, a, 1] * x[1] + B[j, a, 2] * x[2]
                    c[a] = (V[j, 0, a] * ubar[t, 0] + V[j, 1, a] * ubar[t, 1] + V[j, 2, a] * ubar[t, 2]) / M
                if c[0] == 0.0 and c[1] == 0.0 and c[2] == 0.0:
                    continue
                shift = _factor(z[0], y0, e0, e0y) + _factor(z[1], y1, e1, e1y) + _factor(z[2], y2, e2, e2y)
                s0 = 0.0
                s_0 = 0.0
                s_1 = 0.0
                s_2 = 0.0
                s00 = 0.0
                s01 = 0.0
                s02 = 0.0
                s11 = 0.0
                s12 = 0.0
                s22 = 0.0
                for p in range(n0):
                    a0 = 0.0
                    a1 = 0.0
                    a11 = 0.0
                    a2 = 0.0
                    a12 = 0.0
                    a22 = 0.0
                    for q in range(n1):
                        t0 = 0.0
                        t2 = 0.0
                        t22 = 0.0
                        for r in range(n2):
                            wv = w[p, q, r]
                            t0 += wv * e2[r]
                            t2 += wv * e2y[r]
                            t22 += wv * e2y[r] * y2[r]
                        a0 += e1[q] * t0
                        a1 += e1y[q] * t0
                        a11 += e1y[q] * y1[q] * t0
                        a2 += e1[q] * t2
                        a12 += e1y[q] * t2
                        a22 += e1[q] * t22
                    s0 += e0[p] * a0
                    s_0 += e0y[p] * a0
                    s00 += e0y[p] * y0[p] * a0
                    s_1 += e0[p] * a1
                    s01 += e0y[p] * a1
                    s11 += e0[p] * a11
                    s_2 += e0[p] * a2
                    s02 += e0y[p] * a2
                    s12 += e0[p] * a12
                    s22 += e0[p] * a22
                direct = not (s0 > UNDERFLOW and s0 < np.inf)
                if direct:
                    lse = _direct_moments(z, w, y0, y1, y2, E, C)
                    if lse == -np.inf:
                        continue
                else:
                    lse = shift + np.log(s0)
                    E[0] = s_0 / s0
                    E[1] = s_1 / s0
                    E[2] = s_2 / s0
                    C[0, 0] = s00 / s0 - E[0] * E[0]
                    C[0, 1] = s01 / s0 - E[0] * E[1]
                    C[0, 2] = s02 / s0 - E[0] * E[2]
                    C[1, 1] = s11 / s0 - E[1] * E[1]
                    C[1, 2] = s12 / s0 - E[1] * E[2]
                    C[2, 2] = s22 / s0 - E[2] * E[2]
                    C[1, 0] = C[0, 1]
                    C[2, 0] = C[0, 2]
                    C[2, 1] = C[1, 2]
                for a in range(3):
                    ga = 0.0
                    gpa = 0.0
                    if h[a] > 0.0:
                        ga = 0.5 * h[a] * langevin(0.5 * h[a] * z[a])
                        gpa = 0.25 * h[a] * h[a] * langevin_prime(0.5 * h[a] * z[a])
                    cov_c = C[a, 0] * c[0] + C[a, 1] * c[1] + C[a, 2] * c[2] - gpa * c[a]
                    for b in range(3):
                        Vbar[ch, j, b, a] += ubar[t, b] * (E[a] - ga) / M
                        Bbar[ch, j, a, b] += cov_c * x[b]
                ec = E[0] * c[0] + E[1] * c[1] + E[2] * c[2]
                if direct:
                    _direct_wbar(z, lse, y0, y1, y2, c, ec, wb)
                    continue
                inv = 1.0 / s0
                for p in range(n0):
                    for q in range(n1):
                        f = inv * e0[p] * e1[q]
                        alpha = f * (y0[p] * c[0] + y1[q] * c[1] - ec)
                        beta = f * c[2]
                        for r in range(n2):
                            wb[p, q, r] += alpha * e2[r] + beta * e2y[r]


@inline
def _direct_moments(z, w, y0, y1, y2, E, C):
    """Tilted mean and covariance by the two-pass sum shifted by the true maximum."""
    n0, n1, n2 = w.shape
    top = -np.inf
    for p in range(n0):
        for q in range(n1):
            for r in range(n2):
                if w[p, q, r] > 0.0:
                    s = z[0] * y0[p] + z[1] * y1[q] + z[2] * y2[r]
                    if s > top:
                        top = s
    if top == -np.inf:
        return -np.inf
    s0 = 0.0
    m = np.zeros(3)
    S = np.zeros((3, 3))
    y = np.empty(3)
    for p in range(n0):
        for q in range(n1):
            for r in range(n2):
                wv = w[p, q, r]
                if wv > 0.0:
                    y[0] = y0[p]
                    y[1] = y1[q]
                    y[2] = y2[r]
                    e = wv * np.exp(z[0] * y[0] + z[1] * y[1] + z[2] * y[2] - top)
                    s0 += e
                    for a in range(3):
                        m[a] += e * y[a]
                        for b in range(3):
                            S[a, b] += e * y[a] * y[b]
    for a in range(3):
        E[a] = m[a] / s0
    for a in range(3):
        for b in range(3):
            C[a, b] = S[a, b] / s0 - E[a] * E[b]
    return top + np.log(s0)


@inline
def _direct_wbar(z, lse, y0, y1, y2, c, ec, wb):
    n0, n1, n2 = wb.shape
    for p in range(n0):
        for q in range(n1):
            for r in range(n2):
                e = np.exp(z[0] * y0[p] + z[1] * y1[q] + z[2] * y2[r] - lse)
                wb[p, q, r] += e * (y0[p] * c[0] + y1[q] * c[1] + y2[r] * c[2] - ec)


def tensor_velocity_vjp(targets, w, y0, y1, y2, B, V, h, ubar):
    """(w_bar, B_bar, V_bar): the transpose of d out / d(w, B, V) applied to ``ubar``.

    Arguments as for :func:`gridpde.attention.tensor.tensor_velocity`;
    ``ubar`` (T, 3) is the cotangent of its ``out``. B_bar, V_bar are (M, 3, 3).
    """
    M = B.shape[0]
    nch = max(1, min(CHUNKS, targets.shape[0]))
    wbar = np.zeros((nch, *w.shape))
    Bbar = np.zeros((nch, M, 3, 3))
    Vbar = np.zeros((nch, M, 3, 3))
    _vjp_kernel(targets, w, y0, y1, y2, B, V, h, np.ascontiguousarray(ubar), wbar, Bbar, Vbar)
    return wbar.sum(axis=0), Bbar.sum(axis=0), Vbar.sum(axis=0)


def tensor_velocity_jvp_numpy(targets, w, y0, y1, y2, B, V, h, dw, dB, dV):
    """Plain-numpy JVP twin (tests only): d out for a direction (dw, dB, dV), direct sums."""
    Y = np.stack(np.meshgrid(y0, y1, y2, indexing="ij"), axis=-1).reshape(-1, 3)
    wf, dwf = w.ravel(), dw.ravel()
    M = B.shape[0]
    out = np.zeros((targets.shape[0], 3))
    for j in range(M):
        z = targets @ B[j].T
        dz = targets @ dB[j].T
        s = np.where(wf > 0, z @ Y.T, -np.inf)
        top = s.max(axis=1, keepdims=True)
        q = np.exp(z @ Y.T - top)  # exp(z.y - top) for every cell
        P = wf * q
        s0 = P.sum(axis=1, keepdims=True)
        P /= s0
        q /= s0
        E = P @ Y
        second = np.einsum("tk,ka,kb->tab", P, Y, Y)
        C = second - E[:, :, None] * E[:, None, :]
        dE = np.einsum("tab,tb->ta", C, dz) + (q * dwf) @ Y - E * (q @ dwf)[:, None]
        g = np.zeros_like(z)
        gp = np.zeros_like(z)
        for a in range(3):
            if h[a] > 0:
                u = 0.5 * h[a] * z[:, a]
                g[:, a] = 0.5 * h[a] * np.array([langevin(v) for v in u])
                gp[:, a] = 0.25 * h[a] ** 2 * np.array([langevin_prime(v) for v in u])
        out += (E - g) @ dV[j].T + (dE - gp * dz) @ V[j].T
    return out / M
