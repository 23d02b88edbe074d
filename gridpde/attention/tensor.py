"""Exact attention sums with sources on a tensor grid (the grid method).

For sources at the cell centres y = (y0_p, y1_q, y2_r) of a (padded 3-D)
tensor grid with cell masses w_pqr, the softmax weight factorises by
coordinate: exp(z·y) = exp(z0 y0_p) exp(z1 y1_q) exp(z2 y2_r). A target
then needs n0 + n1 + n2 factors instead of n0 n1 n2 (on the uniform grid a
row of factors is a geometric sequence, see :func:`exp_row`), and the sums

    S0 = sum w e0 e1 e2,   S_a = sum w y_a e0 e1 e2

are nested contractions (two multiply-adds per source). The result is the
same sum as the direct kernel, to round-off. Each factor is stabilised by
its own maximum over the grid, so every term is <= 1; when S0 would
underflow (mass far from the maximising corner, |z| * box > ~460) the
target is recomputed by the direct two-pass sum shifted by the true maximum.

Quadrature: the midpoint sum of cell averages of a smooth density rho is,
up to exponentially small terms, the Laplace transform of rho convolved
with the cell's box, so its tilted mean exceeds rho's by
g(z_a, h_a) = (h_a/2) L(z_a h_a/2) per axis (L the Langevin function
coth u - 1/u; g = z h^2/12 + O(h^4)). With ``h`` set to the cell sizes the
kernel subtracts g ("deconvolved" quadrature); with h = 0 it returns the
plain midpoint tilted mean. lse is always that of the midpoint sum.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from gridpde.attention.small import matvec3
from gridpde._numba import inline, kernel

UNDERFLOW = 1e-200
CHUNK = 16
EXP_ANCHOR = 8  # exact exponentials every EXP_ANCHOR nodes of a row (see exp_row)


@inline
def langevin(u):
    """L(u) = coth(u) - 1/u, accurate to round-off for all u."""
    au = abs(u)
    if au < 0.25:
        u2 = u * u
        return u * (
            1.0 / 3.0
            + u2
            * (
                -1.0 / 45.0
                + u2
                * (
                    2.0 / 945.0
                    + u2
                    * (
                        -1.0 / 4725.0
                        + u2 * (2.0 / 93555.0 + u2 * (-1382.0 / 638512875.0 + u2 * 4.0 / 18243225.0))
                    )
                )
            )
        )
    if au > 20.0:
        return (1.0 if u > 0 else -1.0) - 1.0 / u
    return 1.0 / np.tanh(u) - 1.0 / u


#: Taylor coefficients of L(u) = coth u - 1/u = sum_k LANGEVIN_SERIES[k] u^(2k+1)
LANGEVIN_SERIES = np.array([1 / 3, -1 / 45, 2 / 945, -1 / 4725, 2 / 93555, -1382 / 638512875, 4 / 18243225])


def langevin_array(u):
    """L(u) of :func:`langevin` on an array (plain numpy): the series below |u| = 0.1, coth u - 1/u above."""
    u = np.asarray(u, float)
    small = np.abs(u) < 0.1
    us = np.where(small, 1.0, u)
    series = u * np.polyval(LANGEVIN_SERIES[::-1], u * u)
    return np.where(small, series, 1 / np.tanh(us) - 1 / us)


@inline
def exp_row(z, y, e):
    """e_i = exp(z y_i - max_i z y_i) on uniformly spaced increasing nodes y; returns argmax_i z y_i.

    z y_i is monotone in i, so the maximum is at an end. Walking away from
    it, each entry is the previous one times exp(-|z| dy) <= 1, with an
    exact exponential every EXP_ANCHOR nodes: n / EXP_ANCHOR exponentials
    instead of n (exp dominates the cost on small grids), each entry within
    a few ulp of exp. Entries only underflow below ~1e-300 of the largest.
    """
    n = y.shape[0]
    top = n - 1 if z * y[n - 1] >= z * y[0] else 0
    shift = z * y[top]
    ratio = np.exp(-abs(z * (y[n - 1] - y[0]) / (n - 1))) if n > 1 else 1.0
    direction = -1 if top > 0 else 1
    i = top
    for k in range(n):
        if k % EXP_ANCHOR == 0:
            e[i] = np.exp(z * y[i] - shift)
        else:
            e[i] = e[i - direction] * ratio
        i += direction
    return top


@inline
def _factor(z, y, e, ey):
    """e_i = exp(z y_i - max_i z y_i), ey_i = y_i e_i; returns the shift."""
    top = exp_row(z, y, e)
    for i in range(y.shape[0]):
        ey[i] = y[i] * e[i]
    return z * y[top]


@inline
def _direct_on_grid(z0, z1, z2, w, y0, y1, y2, m):
    """Two-pass sum over the cells with w > 0, each term w exp(s) shifted by the largest
    log-term s + log w (so the normaliser is >= 1, never a denormal, even where the
    highest-scoring cells hold only tails of 1e-320); fills m, returns lse."""
    n0, n1, n2 = w.shape
    top = -np.inf
    for p in range(n0):
        for q in range(n1):
            for r in range(n2):
                if w[p, q, r] > 0.0:
                    s = z0 * y0[p] + z1 * y1[q] + z2 * y2[r] + np.log(w[p, q, r])
                    if s > top:
                        top = s
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    if top == -np.inf:
        m[0] = 0.0
        m[1] = 0.0
        m[2] = 0.0
        return -np.inf
    for p in range(n0):
        for q in range(n1):
            for r in range(n2):
                wv = w[p, q, r]
                if wv > 0.0:
                    e = np.exp(z0 * y0[p] + z1 * y1[q] + z2 * y2[r] + np.log(wv) - top)
                    s0 += e
                    s1 += e * y0[p]
                    s2 += e * y1[q]
                    s3 += e * y2[r]
    m[0] = s1 / s0
    m[1] = s2 / s0
    m[2] = s3 / s0
    return top + np.log(s0)


@kernel(parallel=True)
def tensor_velocity(targets, w, y0, y1, y2, B, V, h, out, lse):
    """Head-averaged attention velocity at ``targets`` for tensor-grid sources.

    Args:
        targets: (T, 3) padded target points x.
        w: (n0, n1, n2) source masses (cell average times cell volume).
        y0, y1, y2: cell centres per padded axis.
        B: (M, 3, 3) padded score matrices B = K^T Q (score (B x)·y).
        V: (M, 3, 3) padded value matrices.
        h: (3,) cell sizes for the deconvolved quadrature, zeros for midpoint.
        out: (T, 3) written with v(x) = (1/M) sum_j V_j m_j(B_j x).
        lse: (M, T) written with log sum_k w_k exp((B_j x)·y_k).
    """
    T = targets.shape[0]
    M = B.shape[0]
    n0, n1, n2 = w.shape
    nchunks = (T + CHUNK - 1) // CHUNK
    for c in prange(nchunks):
        e0 = np.empty(n0)
        e0y = np.empty(n0)
        e1 = np.empty(n1)
        e1y = np.empty(n1)
        e2 = np.empty(n2)
        e2y = np.empty(n2)
        m = np.empty(3)
        for t in range(c * CHUNK, min(T, (c + 1) * CHUNK)):
            x0 = targets[t, 0]
            x1 = targets[t, 1]
            x2 = targets[t, 2]
            v0 = 0.0
            v1 = 0.0
            v2 = 0.0
            for j in range(M):
                z0, z1, z2 = matvec3(B, j, x0, x1, x2)
                shift = _factor(z0, y0, e0, e0y) + _factor(z1, y1, e1, e1y)
                shift += _factor(z2, y2, e2, e2y)
                s0 = 0.0
                s1 = 0.0
                s2 = 0.0
                s3 = 0.0
                for p in range(n0):
                    a0 = 0.0
                    a2 = 0.0
                    a3 = 0.0
                    for q in range(n1):
                        t0 = 0.0
                        t3 = 0.0
                        for r in range(n2):
                            wv = w[p, q, r]
                            t0 += wv * e2[r]
                            t3 += wv * e2y[r]
                        a0 += e1[q] * t0
                        a2 += e1y[q] * t0
                        a3 += e1[q] * t3
                    s0 += e0[p] * a0
                    s1 += e0y[p] * a0
                    s2 += e0[p] * a2
                    s3 += e0[p] * a3
                if s0 > UNDERFLOW and s0 < np.inf:
                    m[0] = s1 / s0
                    m[1] = s2 / s0
                    m[2] = s3 / s0
                    lse[j, t] = shift + np.log(s0)
                else:
                    lse[j, t] = _direct_on_grid(z0, z1, z2, w, y0, y1, y2, m)
                if h[0] > 0.0:
                    m[0] -= 0.5 * h[0] * langevin(0.5 * h[0] * z0)
                if h[1] > 0.0:
                    m[1] -= 0.5 * h[1] * langevin(0.5 * h[1] * z1)
                if h[2] > 0.0:
                    m[2] -= 0.5 * h[2] * langevin(0.5 * h[2] * z2)
                mv0, mv1, mv2 = matvec3(V, j, m[0], m[1], m[2])
                v0 += mv0
                v1 += mv1
                v2 += mv2
            out[t, 0] = v0 / M
            out[t, 1] = v1 / M
            out[t, 2] = v2 / M
