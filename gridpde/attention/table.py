"""Attention velocity from one interpolation table of the tilted mean (the table method).

The exact tensor-grid kernel costs O(N) per (target, head) pair. But the
density enters the velocity only through the tilted mean

    m(z) = sum_k w_k y_k exp(z·y_k) / sum_k w_k exp(z·y_k),

a bounded smooth function of z in R^d, the same for every head of a call.
So one table of F(z) = m(z) - g(z; h) (the deconvolution correction g folded
in: it is separable, so this equals interpolating g exactly in 1-D) is
built on a box covering every head's z = B_j x_f, and each pair costs a
lookup plus a tensor Chebyshev interpolation, independent of N:

    out_f = (1/M) sum_j V_j F~(B_j x_f).

Table. The d varying axes (n_a > 1 or h_a > 0) are cut into panels; on each
panel box F is interpolated at the tensor product of q + 1 first-kind
Chebyshev points per axis and stored as Chebyshev coefficients (evaluated by
the three-term recurrence: no divisions, no special case at nodes). The
nodes of all panels form a tensor grid in z, so the sums S0, S_a at every
node are a chain of matrix products with the per-axis factors
exp(z_i y_p - max_p z_i y_p) (BLAS through numpy; every factor <= 1). Nodes
whose stabilised S0 underflows (|z| times the box beyond ~460 with the mass
away from the maximising corner) are recomputed by the exact kernel, which
takes its direct two-pass branch there.

Refinement and error control. Panels are split dyadically, per axis, where
an estimate of the interpolation error from the trailing coefficients
exceeds the target (counting only panels near the z of a subsample of
pairs, so empty corners of the box do not drive it). Dyadic panels make the
lookup one table read. The target for F is tol * max|out| / mean_j ||V_j||_2,
max|out| first estimated on a coarse table. A posteriori, F~ is compared with
the exact kernel at a few hundred (target, head) pairs, random plus each
head's extreme z per axis; the velocity's relative error is bounded by
mean_j ||V_j|| max ||F~ - F|| / max|out| (reported as ``error_estimate``).
Failing pairs' panels are bisected and the target tightened, a few rounds.
The panels are only dyadically tensor-refined, so a sharp feature along a
diagonal of z-space refines whole slabs: in 3-D a two-bump density at tight
tolerances hits the node cap. Past it, grid sources in 2-D and 3-D take a
tree of panels (:mod:`gridpde.attention.tree`: leaves refined locally, the
same check, warm starts and adjoint); past the tree's caps, and for token
sources, the call falls back to the exact kernel and says so.

Warm starts. The stages of one layer share the z-box (same targets, same
heads), so a call given the previous stage's :class:`Layout` starts from
its panels instead of a coarse table (splitting only panels whose tail
exceeds ``WARM_SLACK`` times the target, so the table does not ratchet up
stage after stage); a call given the layout of a fallback takes exact sums
at once. The grid solver records the layout each step started from, so a
stage recomputed for the adjoint is the same bit for bit.

VJP. With the panels frozen the forward is linear in the node values and a
polynomial in z, so :func:`evaluate_vjp` is its exact transpose: per pair
the coefficient cotangents cb_c W (W the tensor Chebyshev weights) and the
derivative of the interpolant for B_bar, then the inverse per-panel
transform to node cotangents, through F = S_a / S0 - g to the sums, and by
the transposed chain of matrix products to w_bar.

Token sources (the particle method, :func:`token_table_velocity`). The
same table, with the node sums taken directly over the n tokens (per block
of tokens, products of the per-axis factors: O(nodes x n) by matrix
products) and the a posteriori check against the direct kernel. Its VJP
(:func:`token_table_velocity_vjp`) gives the tokens' cotangent in both
roles: as targets through the interpolant's derivative, as sources through
d e_k / d y_k = z e_k in the transposed node sums (the factors are
recomputed there, not kept). A node whose factorised sum underflows makes
the call use the direct kernel.

Measured here (one thread, 2026-12-04, 2 cores shared with a study,
scripts/bench_table.py, faces of a 2-D 256^2 grid, 16 heads, O(1) scores):
the whole call is 130-203x faster than the exact kernel on a Gaussian and
72-125x on two well-separated bumps for tol 1e-4 .. 1e-12, with true errors
8-400x below tol; the evaluation alone is 98-248x faster. The per-pair
interpolation ((q+1)^d d multiply-adds, ~20 ns a pair here at q = 7 in 2-D)
bounds the speed-up. 3-D 64^3 with 8 heads: 176-327x for tol 1e-6 .. 1e-4
on the Gaussian, 117-164x on two bumps (a tree). The VJP costs 2.25
forward calls (2.6 evaluations): per pair it adds the coefficient
cotangents and the interpolant's derivative to the forward's work.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import prange

from gridpde._numba import inline, kernel
from gridpde.attention.direct import WEIGHT_FLOOR, direct_velocity
from gridpde.attention.direct_vjp import direct_velocity_vjp
from gridpde.attention.tensor import CHUNK, UNDERFLOW, langevin_array, tensor_velocity
from gridpde.attention.tensor_vjp import tensor_velocity_vjp

__all__ = [
    "AttentionStats",
    "Table",
    "TableTooLarge",
    "build_table",
    "evaluate",
    "evaluate_vjp",
    "table_velocity",
    "table_velocity_vjp",
    "token_table_velocity",
    "token_table_velocity_vjp",
]

#: private copies of the coefficient cotangents in the VJP (fixed, so results do not depend on threads)
PARTS = 4
#: default cap on the number of table nodes (product over the table axes)
MAX_NODES = 2_000_000


@dataclass
class AttentionStats:
    """What the table method did during a solver's life: calls, fallbacks, the largest error estimate."""

    calls: int = 0
    table: int = 0
    trees: int = 0
    fallbacks: int = 0
    max_error: float = 0.0
    fallback_reason: str = ""

    def add(self, info: dict):
        """Count one call's ``info`` (from :func:`table_velocity`); returns its table (None: exact sums)."""
        self.calls += 1
        if info["table"] is None:
            self.fallbacks += 1
            self.fallback_reason = self.fallback_reason or info["reason"]
        else:
            self.table += 1
            self.trees += info.get("kind") == "tree"
            self.max_error = max(self.max_error, info["error_estimate"])
        return info["table"]

    def report(self, use_table: bool) -> dict:
        """Result-file attributes: which sums were asked for, the largest error estimate, the fallbacks."""
        return {"attention_used": "table" if use_table else "exact", "attention_max_error": self.max_error,
                "attention_fallbacks": self.fallbacks, "attention_fallback_reason": self.fallback_reason,
                "attention_tree_calls": self.trees}


#: a tree of panels may hold this many times ``max_nodes``: its nodes are cheaper than the tensor table's
#: (no slabs), and the validation's 3-D two bumps at 1e-6 need 2.9e6 (about 160 MB with the node values kept)
TREE_NODES = 4

#: targets whose z (for every head) mark where a tree table is refined (denser than the tensor table's 2048:
#: leaves are local, and a sparser sample left leaves that targets use unrefined, seen 1e-4 against tol 1e-6)
TREE_SAMPLE = 8192

#: a warm-started table splits only panels whose tail estimate exceeds this times the target: without
#: the slack, panels refined to just below the target at one stage cross it at the next and the
#: table grows call after call (measured: 20k to 350k nodes over a layer's stages)
WARM_SLACK = 2.0


class TableTooLarge(ValueError):
    """The requested accuracy needs more table nodes than allowed."""


# ------------------------------------------------------------------ kernels


@inline
def _locate(u, lo, binv, bins):
    """Index of the panel holding u (clamped to the first/last panel).

    Panels come from dyadic splits, so each of the 2^L equal bins of the
    axis lies in one panel: a table look-up, no search.
    """
    nb = bins.shape[0]
    f = (u - lo) * binv
    if f < 0.0:
        f = 0.0
    if f > nb - 1.0:
        f = nb - 1.0
    return bins[int(f)]


@inline
def _cheb(t, T):
    """T[i] = T_i(t), Chebyshev polynomials of the first kind by their recurrence."""
    n = T.shape[0]
    T[0] = 1.0
    if n > 1:
        T[1] = t
        for i in range(2, n):
            T[i] = 2.0 * t * T[i - 1] - T[i - 2]


@inline
def _cheb_d(t, scale, T, D):
    """T[i] = T_i(t) and D[i] = scale * T_i'(t) = scale * i * U_{i-1}(t) (two independent recurrences)."""
    n = T.shape[0]
    T[0] = 1.0
    D[0] = 0.0
    if n > 1:
        T[1] = t
        D[1] = scale
        tt = t + t
        u2 = 1.0
        u1 = tt
        for i in range(2, n):
            T[i] = tt * T[i - 1] - T[i - 2]
            D[i] = (scale * i) * u1
            u = tt * u1 - u2
            u2 = u1
            u1 = u


#: panel coordinates beyond +-(1 + CLAMP) are clamped (outside the table's box); below, round-off at edges
CLAMP = 1e-8


@inline
def _local(u, cen, rh, k):
    """Panel coordinate t = (u - c_k) / r_k clamped to the box; returns (t, dt/du: 1/r_k, or 0 when clamped)."""
    t = (u - cen[k]) * rh[k]
    if t > 1.0 + CLAMP:
        return 1.0, 0.0
    if t < -1.0 - CLAMP:
        return -1.0, 0.0
    return t, rh[k]


@inline
def _interp(nc, n0, n1, n2, T0, T1, T2, blk):
    """(F~_0, F~_1, F~_2) = sum_i W_i blk[c, i], W = T0 x T1 x T2 (components past nc are 0).

    Row by row (a row: fixed i0, i1), with the components in one pass over
    the row: no weight array. The nc tabulated components are the last
    nc of the three axes, so the loop is written out per nc.
    """
    f0 = 0.0
    f1 = 0.0
    f2 = 0.0
    for i0 in range(n0):
        for i1 in range(n1):
            a = T0[i0] * T1[i1]
            r = (i0 * n1 + i1) * n2
            h0 = 0.0
            h1 = 0.0
            h2 = 0.0
            if nc == 1:
                for i2 in range(n2):
                    h0 += T2[i2] * blk[0, r + i2]
            elif nc == 2:
                for i2 in range(n2):
                    h0 += T2[i2] * blk[0, r + i2]
                    h1 += T2[i2] * blk[1, r + i2]
            else:
                for i2 in range(n2):
                    h0 += T2[i2] * blk[0, r + i2]
                    h1 += T2[i2] * blk[1, r + i2]
                    h2 += T2[i2] * blk[2, r + i2]
            f0 += a * h0
            f1 += a * h1
            f2 += a * h2
    return f0, f1, f2


@inline
def _weights(n0, n1, n2, T0, T1, T2, D0, D1, D2, W, W0, W1, W2, nc):
    """W = T0 x T1 x T2 and its derivatives W_k along the table axes k >= 3 - nc (flat, C order)."""
    for i0 in range(n0):
        for i1 in range(n1):
            a = T0[i0] * T1[i1]
            a0 = D0[i0] * T1[i1]
            a1 = T0[i0] * D1[i1]
            r = (i0 * n1 + i1) * n2  # not a running index: that keeps the loop from vectorising
            for i2 in range(n2):
                W[r + i2] = a * T2[i2]
                W2[r + i2] = a * D2[i2]
            if nc > 1:
                for i2 in range(n2):
                    W1[r + i2] = a1 * T2[i2]
            if nc > 2:
                for i2 in range(n2):
                    W0[r + i2] = a0 * T2[i2]


@inline
def _interp_vjp(nc, W, W0, W1, W2, blk, cbl, cb0, cb1, cb2):
    """One pair of :func:`_table_backward` in one pass: cbl[c] += cb_c W, and (F~_c, g_k) for c, k < 3.

    F~_c = W·blk[c]; g_k = W_k·G with G = sum_c cb_c blk[c] (the derivative of
    cb·F~ along table axis k; 0 on padding axes). The nc tabulated components
    are the last nc of the three axes, so the loop is written out per nc
    (a loop over c inside would not vectorise; one over c outside repeats the pass).
    """
    f0 = 0.0
    f1 = 0.0
    f2 = 0.0
    g0 = 0.0
    g1 = 0.0
    g2 = 0.0
    if nc == 1:
        for i in range(W.shape[0]):
            w = W[i]
            b0 = blk[0, i]
            f0 += w * b0
            cbl[0, i] += cb0 * w
            g2 += W2[i] * (cb0 * b0)
    elif nc == 2:
        for i in range(W.shape[0]):
            w = W[i]
            b0 = blk[0, i]
            b1 = blk[1, i]
            f0 += w * b0
            f1 += w * b1
            cbl[0, i] += cb0 * w
            cbl[1, i] += cb1 * w
            g = cb0 * b0 + cb1 * b1
            g1 += W1[i] * g
            g2 += W2[i] * g
    else:
        for i in range(W.shape[0]):
            w = W[i]
            b0 = blk[0, i]
            b1 = blk[1, i]
            b2 = blk[2, i]
            f0 += w * b0
            f1 += w * b1
            f2 += w * b2
            cbl[0, i] += cb0 * w
            cbl[1, i] += cb1 * w
            cbl[2, i] += cb2 * w
            g = cb0 * b0 + cb1 * b1 + cb2 * b2
            g0 += W0[i] * g
            g1 += W1[i] * g
            g2 += W2[i] * g
    return f0, f1, f2, g0, g1, g2


@inline
def _interp_vjp_rows(nc, n1, n2, T1, T2, D1, D2, blk, cbl, cb0, cb1):
    """:func:`_interp_vjp` for tables with n0 = 1 (1-D and 2-D: nc <= 2), row by row like
    :func:`_interp`: no weight arrays (15% faster than building them; measured on 128^2 tables).

    Returns (F~_0, F~_1, g_1, g_2).
    """
    f0 = 0.0
    f1 = 0.0
    g1 = 0.0
    g2 = 0.0
    for i1 in range(n1):
        a = T1[i1]
        r = i1 * n2
        h0 = 0.0
        h1 = 0.0
        hd = 0.0
        if nc == 1:
            ca0 = cb0 * a
            for i2 in range(n2):
                b0 = blk[0, r + i2]
                h0 += T2[i2] * b0
                hd += D2[i2] * b0
                cbl[0, r + i2] += ca0 * T2[i2]
            hd *= cb0
        else:
            ca0 = cb0 * a
            ca1 = cb1 * a
            for i2 in range(n2):
                t = T2[i2]
                b0 = blk[0, r + i2]
                b1 = blk[1, r + i2]
                h0 += t * b0
                h1 += t * b1
                hd += D2[i2] * (cb0 * b0 + cb1 * b1)
                cbl[0, r + i2] += ca0 * t
                cbl[1, r + i2] += ca1 * t
        f0 += a * h0
        f1 += a * h1
        g1 += D1[i1] * (cb0 * h0 + cb1 * h1)
        g2 += a * hd
    return f0, f1, g1, g2


@kernel(parallel=True)
def _table_forward(targets, Bc, Vc, base, lo, binv, bins0, cen0, rh0, bins1, cen1, rh1, bins2, cen2, rh2,
                   n0, n1, n2, coef, out):  # fmt: skip
    """out_t = base + sum_j sum_c Vc[j, :, c] F~_c(Bc_j x_t): the table's velocity (see :func:`evaluate`).

    Args:
        targets: (T, 3) points x.
        Bc: (M, 3, 3) rows of B for the table axes (zero rows for padding axes).
        Vc: (M, 3, nc) columns of V / M for the tabulated components.
        base: (3,) constant part of the velocity (untabulated components).
        lo, binv: (3,) start and inverse bin width of each table axis' panel lookup.
        bins*, cen*, rh*: per table axis the bin -> panel map, the panel
            centres and inverse half widths.
        n0, n1, n2: Chebyshev nodes per panel along each table axis (1 on padding axes).
        coef: (P, nc, n0 n1 n2) Chebyshev coefficients of F per panel.
        out: (T, 3) written.
    """
    T = targets.shape[0]
    M = Bc.shape[0]
    nc = coef.shape[1]
    P1 = cen1.shape[0]
    P2 = cen2.shape[0]
    nchunks = (T + CHUNK - 1) // CHUNK
    for ch in prange(nchunks):
        T0 = np.ones(n0)
        T1 = np.ones(n1)
        T2 = np.ones(n2)
        for t in range(ch * CHUNK, min(T, (ch + 1) * CHUNK)):
            x0 = targets[t, 0]
            x1 = targets[t, 1]
            x2 = targets[t, 2]
            v0 = base[0]
            v1 = base[1]
            v2 = base[2]
            for j in range(M):
                k0 = 0
                k1 = 0
                if n0 > 1:
                    u0 = Bc[j, 0, 0] * x0 + Bc[j, 0, 1] * x1 + Bc[j, 0, 2] * x2
                    k0 = _locate(u0, lo[0], binv[0], bins0)
                    s0, _ = _local(u0, cen0, rh0, k0)
                    _cheb(s0, T0)
                if n1 > 1:
                    u1 = Bc[j, 1, 0] * x0 + Bc[j, 1, 1] * x1 + Bc[j, 1, 2] * x2
                    k1 = _locate(u1, lo[1], binv[1], bins1)
                    s1, _ = _local(u1, cen1, rh1, k1)
                    _cheb(s1, T1)
                u2 = Bc[j, 2, 0] * x0 + Bc[j, 2, 1] * x1 + Bc[j, 2, 2] * x2
                k2 = _locate(u2, lo[2], binv[2], bins2)
                s2, _ = _local(u2, cen2, rh2, k2)
                _cheb(s2, T2)
                f0, f1, f2 = _interp(nc, n0, n1, n2, T0, T1, T2, coef[(k0 * P1 + k1) * P2 + k2])
                for c in range(nc):
                    f = f0 if c == 0 else (f1 if c == 1 else f2)
                    v0 += Vc[j, 0, c] * f
                    v1 += Vc[j, 1, c] * f
                    v2 += Vc[j, 2, c] * f
            out[t, 0] = v0
            out[t, 1] = v1
            out[t, 2] = v2


@inline
def _pair_cotangents(t, j, part, targets, ubar, Bc, Vc, T0, T1, T2, D0, D1, D2, W, W0, W1, W2, blk, cbl, Fsum,
                     Bcbar, xbar):  # fmt: skip
    """Target t and head j of a backward kernel, the Chebyshev values T and derivatives D at z already taken:
    cbl += cb_c W (the panel's coefficient cotangents), Fsum[part, j] += ubar_t F~^T, and the z-derivative
    g to Bcbar[part, j] (g x_t^T) and xbar[t] (Bc_j^T g)."""
    nc = blk.shape[0]
    n0, n1, n2 = T0.shape[0], T1.shape[0], T2.shape[0]
    ub0 = ubar[t, 0]
    ub1 = ubar[t, 1]
    ub2 = ubar[t, 2]
    x0 = targets[t, 0]
    x1 = targets[t, 1]
    x2 = targets[t, 2]
    cb0 = Vc[j, 0, 0] * ub0 + Vc[j, 1, 0] * ub1 + Vc[j, 2, 0] * ub2
    cb1 = Vc[j, 0, 1] * ub0 + Vc[j, 1, 1] * ub1 + Vc[j, 2, 1] * ub2 if nc > 1 else 0.0
    cb2 = Vc[j, 0, 2] * ub0 + Vc[j, 1, 2] * ub1 + Vc[j, 2, 2] * ub2 if nc > 2 else 0.0
    if n0 == 1 and nc <= 2:
        f0, f1, g1, g2 = _interp_vjp_rows(nc, n1, n2, T1, T2, D1, D2, blk, cbl, cb0, cb1)
        f2 = 0.0
        g0 = 0.0
    else:
        _weights(n0, n1, n2, T0, T1, T2, D0, D1, D2, W, W0, W1, W2, nc)
        f0, f1, f2, g0, g1, g2 = _interp_vjp(nc, W, W0, W1, W2, blk, cbl, cb0, cb1, cb2)
    for c in range(nc):
        f = f0 if c == 0 else (f1 if c == 1 else f2)
        Fsum[part, j, 0, c] += ub0 * f
        Fsum[part, j, 1, c] += ub1 * f
        Fsum[part, j, 2, c] += ub2 * f
    Bb = Bcbar[part, j]
    Bb[0, 0] += g0 * x0
    Bb[0, 1] += g0 * x1
    Bb[0, 2] += g0 * x2
    Bb[1, 0] += g1 * x0
    Bb[1, 1] += g1 * x1
    Bb[1, 2] += g1 * x2
    Bb[2, 0] += g2 * x0
    Bb[2, 1] += g2 * x1
    Bb[2, 2] += g2 * x2
    for b in range(3):
        xbar[t, b] += g0 * Bc[j, 0, b] + g1 * Bc[j, 1, b] + g2 * Bc[j, 2, b]


@kernel(parallel=True)
def _table_backward(targets, Bc, Vc, lo, binv, bins0, cen0, rh0, bins1, cen1, rh1, bins2, cen2, rh2,
                    n0, n1, n2, coef, ubar, skip, cbar, Bcbar, Fsum, xbar):  # fmt: skip
    """Per-part cotangents of :func:`_table_forward` (transpose of the frozen interpolation).

    With cb = Vc_j^T ubar_t (tabulated components) for target t and head j and
    W the tensor Chebyshev weights at z = Bc_j x_t:
    cbar[part, panel, c] += cb_c W (coefficient cotangents),
    Bcbar[part, j, k] += (d/du_k sum_c cb_c F~_c) x_t, Fsum[part, j, :, c] += ubar_t F~_c,
    xbar[t] += sum_j sum_k (d/du_k sum_c cb_c F~_c) Bc_j[k] (the targets' own cotangent).

    Args:
        targets ... coef: as for :func:`_table_forward`.
        ubar: (T, 3) cotangent of out.
        skip: targets with |ubar_t|_1 <= skip are left out (see :data:`VJP_SKIP`).
        cbar: (parts, P, nc, L) zeroed.
        Bcbar: (parts, M, 3, 3) zeroed.
        Fsum: (parts, M, 3, nc) zeroed.
        xbar: (T, 3) zeroed (each target is written by one part only).
    """
    T = targets.shape[0]
    M = Bc.shape[0]
    P1 = cen1.shape[0]
    P2 = cen2.shape[0]
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
        for ch in range(part, nchunks, nparts):
            for t in range(ch * CHUNK, min(T, (ch + 1) * CHUNK)):
                ub0 = ubar[t, 0]
                ub1 = ubar[t, 1]
                ub2 = ubar[t, 2]
                if abs(ub0) + abs(ub1) + abs(ub2) <= skip:
                    continue
                x0 = targets[t, 0]
                x1 = targets[t, 1]
                x2 = targets[t, 2]
                for j in range(M):
                    k0 = 0
                    k1 = 0
                    if n0 > 1:
                        u0 = Bc[j, 0, 0] * x0 + Bc[j, 0, 1] * x1 + Bc[j, 0, 2] * x2
                        k0 = _locate(u0, lo[0], binv[0], bins0)
                        s0, r0 = _local(u0, cen0, rh0, k0)
                        _cheb_d(s0, r0, T0, D0)
                    if n1 > 1:
                        u1 = Bc[j, 1, 0] * x0 + Bc[j, 1, 1] * x1 + Bc[j, 1, 2] * x2
                        k1 = _locate(u1, lo[1], binv[1], bins1)
                        s1, r1 = _local(u1, cen1, rh1, k1)
                        _cheb_d(s1, r1, T1, D1)
                    u2 = Bc[j, 2, 0] * x0 + Bc[j, 2, 1] * x1 + Bc[j, 2, 2] * x2
                    k2 = _locate(u2, lo[2], binv[2], bins2)
                    s2, r2 = _local(u2, cen2, rh2, k2)
                    _cheb_d(s2, r2, T2, D2)
                    idx = (k0 * P1 + k1) * P2 + k2
                    _pair_cotangents(t, j, part, targets, ubar, Bc, Vc, T0, T1, T2, D0, D1, D2, W, W0, W1, W2,
                                     coef[idx], cbar[part, idx], Fsum, Bcbar, xbar)  # fmt: skip


@kernel(parallel=True)
def _zrange(targets, Bc, zmin, zmax, imin, imax):
    """Per head j and table axis k: min/max over targets of u = Bc_j[k]·x and where they are attained."""
    T = targets.shape[0]
    M = Bc.shape[0]
    for j in prange(M):
        for k in range(3):
            b0 = Bc[j, k, 0]
            b1 = Bc[j, k, 1]
            b2 = Bc[j, k, 2]
            lo = np.inf
            hi = -np.inf
            ilo = 0
            ihi = 0
            for t in range(T):
                u = b0 * targets[t, 0] + b1 * targets[t, 1] + b2 * targets[t, 2]
                if u < lo:
                    lo = u
                    ilo = t
                if u > hi:
                    hi = u
                    ihi = t
            zmin[j, k] = lo
            zmax[j, k] = hi
            imin[j, k] = ilo
            imax[j, k] = ihi


# ------------------------------------------------------------------ the table


def _cheb_points(q):
    """The q + 1 Chebyshev points of the first kind on [-1, 1] (decreasing)."""
    return np.cos(np.pi * (2 * np.arange(q + 1) + 1) / (2 * (q + 1)))


def _dct_matrix(q):
    """D (q+1, q+1): coefficients c = D f of the degree-q interpolant sum_k c_k T_k at the first-kind points."""
    n = q + 1
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    D = (2.0 / n) * np.cos(np.pi * k * (2 * i + 1) / (2 * n))
    D[0] *= 0.5
    return D


@dataclass(frozen=True, eq=False)
class Table:
    """A frozen interpolation table of F(z) = m(z) - g(z; h) on a box in z-space.

    The table axes are the source axes that vary (``axes``; n_a > 1 or h_a > 0),
    placed last in a padded 3-axis layout (padding table axes have one panel
    and degree 0). Each table axis k is cut into panels at ``breaks[k]``; on
    each panel box F_c is the tensor Chebyshev interpolant of degree ``degree``
    through its values at the tensor first-kind Chebyshev nodes.

    Attributes:
        axes: active source axes, in order (table axis 3 - d + i is source axis axes[i]).
        degree: polynomial degree q per active axis.
        breaks: per active axis the panel edges (P_i + 1,).
        h: (3,) cell sizes of the deconvolved quadrature folded into F.
        const: (3,) the constant tilted mean of the inactive source axes.
        coef: (P, nc, n0 n1 n2) Chebyshev coefficients per panel (P = product of panel counts).
        lookup: kernel arguments (lo, binv, bins0, cen0, rh0, ..., bins2, cen2, rh2, n0, n1, n2).
        w, ys: the sources (kept for the VJP).
        E, EY: per source axis the stabilised factors exp(z_i y_p - max_p z_i y_p) and y_p times them,
            (p_a, n_a) at the node coordinates of that axis (one node z = 0 on inactive axes).
        S0: node grid of the stabilised mass sums (source-padded node shape).
        m: node grid of the tilted means (..., nc) (before the g correction).
        bad: node grid mask of nodes computed by the exact kernel's direct branch (S0 underflow).
        znodes: per source axis the node coordinates.
        box: (lo, hi), each (3,) per source axis (inactive axes 0).
        tokens: the sources are weighted tokens (``w`` (n,), ``ys`` their three coordinate columns,
            ``E``/``EY`` not kept: (p_a, n) per axis, recomputed by the VJP), not a tensor grid.
    """

    axes: tuple
    degree: int
    breaks: tuple
    h: np.ndarray
    const: np.ndarray
    coef: np.ndarray
    lookup: tuple
    w: np.ndarray
    ys: tuple
    E: tuple
    EY: tuple
    S0: np.ndarray
    m: np.ndarray
    bad: np.ndarray
    znodes: tuple
    box: tuple
    tokens: bool = False

    @property
    def d(self):
        return len(self.axes)

    @property
    def panels(self):
        return tuple(len(b) - 1 for b in self.breaks)

    @property
    def nodes(self):
        return tuple((len(b) - 1) * (self.degree + 1) for b in self.breaks)

    @property
    def size(self):
        return int(np.prod(self.nodes)) if self.axes else 1

    @property
    def layout(self):
        return Layout(self.axes, self.degree, self.box[0], self.box[1], self.breaks)


@dataclass(frozen=True, eq=False)
class Layout:
    """A table's panels on its z-box: where the next call on the same box starts refining (a warm start).

    ``breaks`` None: that call used a tree of panels (its leaves, (level, index), in ``tree``), or fell
    back to exact sums (``tree`` None), and the next call on the box does the same at once.
    """

    axes: tuple
    degree: int
    lo: np.ndarray  # (3,) box corners (inactive axes 0)
    hi: np.ndarray
    breaks: tuple
    tree: tuple = None

    def fits(self, axes, degree, zlo, zhi) -> bool:
        """Is this the layout of a table on the same axes, degree and (bit for bit) the same box?"""
        return (self.axes == tuple(axes) and self.degree == degree and np.array_equal(self.lo, zlo)
                and np.array_equal(self.hi, zhi))  # fmt: skip


def _active_axes(w, h):
    return tuple(a for a in range(3) if w.shape[a] > 1 or h[a] > 0.0)


def _stabilised_factors(z, y):
    """E[i, p] = exp(z_i y_p - max_p z_i y_p) (every entry <= 1, one equal to 1 per row)."""
    s = z[:, None] * y[None, :]
    return np.exp(s - s.max(axis=1, keepdims=True))


def _trivial(E):
    return E.shape == (1, 1) and E[0, 0] == 1.0


def _node_sums(w, E, EY, active):
    """S0 and S_a (a in ``active``) at all nodes: nested contractions (matrix products) with the per-axis factors.

    S[i, j, k] = sum_pqr E0[i, p] E1[j, q] E2[k, r] w[p, q, r], with EY_a in place of E_a for S_a.
    """
    n0, n1, n2 = w.shape

    def ax2(F):
        return w if _trivial(F) else (w.reshape(n0 * n1, n2) @ F.T).reshape(n0, n1, F.shape[0])

    def ax1(F, A):
        return A if _trivial(F) else np.matmul(F, A)

    def ax0(F, C):
        return C if _trivial(F) else (F @ C.reshape(n0, -1)).reshape((F.shape[0],) + C.shape[1:])

    A = ax2(E[2])
    A2 = ax2(EY[2]) if 2 in active else None
    C = ax1(E[1], A)
    C1 = ax1(EY[1], A) if 1 in active else None
    C2 = ax1(E[1], A2) if A2 is not None else None
    S0 = ax0(E[0], C)
    S = {}
    if 0 in active:
        S[0] = ax0(EY[0], C)
    if C1 is not None:
        S[1] = ax0(E[0], C1)
    if C2 is not None:
        S[2] = ax0(E[0], C2)
    return S0, S


def _node_sums_transpose(E, EY, S0bar, Sbar, shape):
    """w_bar: the transpose of :func:`_node_sums` applied to cotangents of S0 and the S_a."""
    n0, n1, n2 = shape

    def ax0(F, X):
        return X if _trivial(F) else (F.T @ X.reshape(F.shape[0], -1)).reshape((n0,) + X.shape[1:])

    def ax1(F, X):
        return X if _trivial(F) else np.matmul(F.T, X)

    def ax2(F, X):
        return X if _trivial(F) else (X.reshape(-1, F.shape[0]) @ F).reshape(n0, n1, n2)

    X = ax0(E[0], S0bar)
    if 0 in Sbar:
        X = X + ax0(EY[0], Sbar[0])
    X1 = ax0(E[0], Sbar[1]) if 1 in Sbar else None
    X2 = ax0(E[0], Sbar[2]) if 2 in Sbar else None
    Y = ax1(E[1], X)
    if X1 is not None:
        Y = Y + ax1(EY[1], X1)
    wbar = ax2(E[2], Y)
    if X2 is not None:
        wbar = wbar + ax2(EY[2], ax1(E[1], X2))
    return np.ascontiguousarray(wbar.reshape(shape))


#: tokens per block of the token node sums (bounds the (p0 p1, block) work arrays)
TOKEN_BLOCK = 2048


def _token_axes(X):
    """Axes along which the tokens are not all at one coordinate."""
    return tuple(a for a in range(3) if X.shape[0] and np.ptp(X[:, a]) > 0.0)


def _token_blocks(n):
    return [slice(b, min(n, b + TOKEN_BLOCK)) for b in range(0, n, TOKEN_BLOCK)]


def _pair(F0, F1, blk):
    """(p0 p1, block) products F0[i, k] F1[j, k] of two axes' factors over a block of tokens."""
    return (F0[:, None, blk] * F1[None, :, blk]).reshape(-1, blk.stop - blk.start)


def _token_node_sums(w, E, EY, active):
    """S0 and S_a at all nodes for token sources: S[i, j, l] = sum_k w_k E0[i, k] E1[j, k] E2[l, k].

    The token-source counterpart of :func:`_node_sums` (O(nodes x tokens), by blocks of
    matrix products); EY_a in place of E_a gives S_a.
    """
    p = tuple(f.shape[0] for f in E)
    S0 = np.zeros((p[0] * p[1], p[2]))
    S = {a: np.zeros_like(S0) for a in active}
    for blk in _token_blocks(w.shape[0]):
        A = _pair(E[0], E[1], blk) * w[blk]
        E2t = E[2][:, blk].T
        S0 += A @ E2t
        if 2 in S:
            S[2] += A @ EY[2][:, blk].T
        if 0 in S:
            S[0] += (_pair(EY[0], E[1], blk) * w[blk]) @ E2t
        if 1 in S:
            S[1] += (_pair(E[0], EY[1], blk) * w[blk]) @ E2t
    return S0.reshape(p), {a: v.reshape(p) for a, v in S.items()}


def _token_sums_transpose(table, S0bar, Sbar):
    """Cotangents of the token positions (n, 3) from cotangents of the token node sums.

    With e_k(z) = prod_a E_a[., k], S0 = sum_k w_k e_k and S_a = sum_k w_k y_ka e_k,
    y_bar_kb = w_k [C_b(S0bar) + sum_a y_ka C_b(Sbar_a) + C(Sbar_b)]_k, where
    C(G)_k = sum_z e_k(z) G(z) and C_b the same with z_b e_k (d e_k / d y_kb): E_b
    replaced by z_b E_b along axis b. The factors' stabilising shifts cancel in
    m = S_a / S0, so they are held fixed.
    """
    w, ys, axes = table.w, table.ys, table.axes
    E = [_stabilised_factors(table.znodes[a], ys[a]) for a in range(3)]  # (p_a, n): recomputed, not kept
    DE = [table.znodes[a][:, None] * E[a] for a in range(3)]
    p = tuple(f.shape[0] for f in E)
    Gs = {"S0": S0bar, **{a: Sbar[a] for a in axes}}
    ybar = np.zeros((w.shape[0], 3))
    for blk in _token_blocks(w.shape[0]):
        e = [f[:, blk] for f in E]
        de = [f[:, blk] for f in DE]
        acc = {b: np.zeros(blk.stop - blk.start) for b in axes}
        for key, G in Gs.items():
            G2 = G.reshape(p[0] * p[1], p[2])
            H = (G2 @ e[2]).reshape(p[0], p[1], -1)
            T1 = np.einsum("jk,ijk->ik", e[1], H)  # summed over axis 1
            scale = 1.0 if key == "S0" else ys[key][blk]
            for b in axes:
                if b == 2:
                    C = np.einsum("ik,ik->k", e[0], np.einsum("jk,ijk->ik", e[1], (G2 @ de[2]).reshape(H.shape)))
                elif b == 1:
                    C = np.einsum("ik,ik->k", e[0], np.einsum("jk,ijk->ik", de[1], H))
                else:
                    C = np.einsum("ik,ik->k", de[0], T1)
                acc[b] += scale * C
            if key != "S0":  # C(Sbar_b), b = key
                acc[key] += np.einsum("ik,ik->k", e[0], T1)
        for b in axes:
            ybar[blk, b] = w[blk] * acc[b]
    return ybar


def _g(z, h):
    """g(z, h) = (h/2) L(z h/2) (0 where h = 0)."""
    return 0.5 * h * langevin_array(0.5 * h * z) if h > 0.0 else np.zeros_like(z)


def _lookup_arrays(breaks_padded, nq):
    """Kernel lookup arguments for 3 table axes from their (dyadic) panel edges."""
    lo = np.empty(3)
    binv = np.empty(3)
    per_axis = []
    for k, brk in enumerate(breaks_padded):
        P = len(brk) - 1
        span = brk[-1] - brk[0]
        nb = int(2 ** np.round(np.log2(span / np.diff(brk).min())))
        lo[k] = brk[0]
        binv[k] = nb / span
        mids = brk[0] + (np.arange(nb) + 0.5) / binv[k]
        bins = np.clip(np.searchsorted(brk, mids, side="right") - 1, 0, P - 1).astype(np.int64)
        cen = 0.5 * (brk[1:] + brk[:-1])
        rh = 2.0 / np.diff(brk)
        per_axis += [bins, cen, rh]
    return (lo, binv, *per_axis, *nq)


def _make_table(w, ys, h, axes, breaks, q, tokens=False):
    """The table on the given panels: node values by separable sums, then coefficients per panel.

    ``tokens``: ``w`` (n,) are token weights and ``ys`` the tokens' coordinate columns (h = 0).
    """
    d = len(axes)
    nq = q + 1
    t = _cheb_points(q)
    znodes = []
    for a in range(3):
        if a in axes:
            brk = breaks[axes.index(a)]
            c = 0.5 * (brk[1:] + brk[:-1])
            r = 0.5 * np.diff(brk)
            znodes.append((c[:, None] + r[:, None] * t[None, :]).ravel())
        else:
            znodes.append(np.zeros(1))
    E = tuple(_stabilised_factors(znodes[a], ys[a]) for a in range(3))
    EY = tuple(E[a] * ys[a][None, :] for a in range(3))
    S0, S = (_token_node_sums if tokens else _node_sums)(w, E, EY, axes)
    good = (S0 > UNDERFLOW) & (S0 < np.inf)
    safe = np.where(good, S0, 1.0)
    m = np.stack([S[a] / safe for a in axes], axis=-1) if d else np.zeros(S0.shape + (0,))
    bad = ~good
    if bad.any():
        # the exact kernel's direct branch, at the nodes where the factorised mass underflows
        idx = np.nonzero(bad)
        Z = np.stack([znodes[a][idx[a]] for a in range(3)], axis=-1)
        out = np.empty((len(Z), 3))
        eye = np.eye(3)[None]
        if tokens:
            direct_velocity(Z, np.ascontiguousarray(np.stack(ys, axis=1)), w, eye, eye, out, np.empty((1, len(Z))))
        else:
            tensor_velocity(Z, w, *ys, eye, eye, np.zeros(3), out, np.empty((1, len(Z))))
        m[idx] = out[:, list(axes)]
    F = m.copy()
    for c, a in enumerate(axes):
        shape = [1, 1, 1]
        shape[a] = -1
        F[..., c] -= _g(znodes[a], h[a]).reshape(shape)
    # coefficients per panel: table layout (P0, P1, P2, n0, n1, nc, n2), padded table axes first
    P = [1, 1, 1]
    n = [1, 1, 1]
    for i in range(d):
        P[3 - d + i] = len(breaks[i]) - 1
        n[3 - d + i] = nq
    coef = _coefficients(F.reshape(P[0], n[0], P[1], n[1], P[2], n[2], d), _dct_matrix(q))
    padded = [np.array([-1.0, 1.0])] * (3 - d) + [np.asarray(b, float) for b in breaks]
    const = np.array([ys[a][0] if a not in axes else 0.0 for a in range(3)])
    lo = np.array([breaks[axes.index(a)][0] if a in axes else 0.0 for a in range(3)])
    hi = np.array([breaks[axes.index(a)][-1] if a in axes else 0.0 for a in range(3)])
    return Table(axes=tuple(axes), degree=q, breaks=tuple(np.asarray(b, float) for b in breaks), h=h.copy(),
                 const=const, coef=coef, lookup=_lookup_arrays(padded, n), w=w, ys=ys,
                 E=() if tokens else E, EY=() if tokens else EY, S0=S0, m=m,
                 bad=bad, znodes=tuple(znodes), box=(lo, hi), tokens=tokens)  # fmt: skip


def _coefficients(Fn, D):
    """Per-panel Chebyshev coefficients (P, nc, n0 n1 n2) of node values Fn (P0, n0, P1, n1, P2, n2, nc).

    The DCT matrix D is applied along each node axis of length > 1 by a matrix product.
    """
    P0, n0, P1, n1, P2, n2, nc = Fn.shape
    X = np.ascontiguousarray(Fn.transpose(0, 2, 4, 6, 1, 3, 5))  # (P0, P1, P2, nc, n0, n1, n2)
    if n2 > 1:
        X = X @ D.T
    if n1 > 1:
        X = np.matmul(D, X)
    if n0 > 1:
        X = np.matmul(D, X.reshape(X.shape[:4] + (n0, n1 * n2)))
    return np.ascontiguousarray(X.reshape(P0 * P1 * P2, nc, n0 * n1 * n2))


def _occupancy(table, zsample, cells):
    """Per panel: does its box meet a cell (of a cells^d grid on the box, dilated by one) holding a sample z?"""
    d = table.d
    lo, hi = table.box
    idx = []
    for i, a in enumerate(table.axes):
        c = np.floor((zsample[:, a] - lo[a]) / (hi[a] - lo[a]) * cells).astype(np.int64)
        idx.append(np.clip(c, 0, cells - 1))
    occ = np.zeros((cells,) * d, dtype=bool)
    occ[tuple(idx)] = True
    for i in range(d):  # dilate by one cell along each axis
        o = occ.copy()
        sl = [slice(None)] * d
        sl[i] = slice(1, None)
        sl2 = [slice(None)] * d
        sl2[i] = slice(None, -1)
        o[tuple(sl)] |= occ[tuple(sl2)]
        o[tuple(sl2)] |= occ[tuple(sl)]
        occ = o
    csum = np.pad(np.cumsum(np.cumsum(np.cumsum(occ.reshape((1,) * (3 - d) + occ.shape), 0), 1), 2),
                  [(1, 0)] * 3).astype(np.int64)  # fmt: skip
    rng = []
    for k in range(3):
        if k < 3 - d:
            rng.append((np.zeros(1, np.int64), np.ones(1, np.int64)))
            continue
        a = table.axes[k - (3 - d)]
        brk = table.breaks[k - (3 - d)]
        f = (brk - lo[a]) / (hi[a] - lo[a]) * cells
        first = np.clip(np.floor(f[:-1]), 0, cells - 1).astype(np.int64)
        last = np.clip(np.ceil(f[1:]), first + 1, cells).astype(np.int64)
        rng.append((first, last))
    total = np.zeros([len(r[0]) for r in rng], dtype=np.int64)
    for corner in range(8):
        sel = []
        sign = 1
        for k in range(3):
            hi_side = (corner >> k) & 1
            sel.append(rng[k][1] if hi_side else rng[k][0])
            sign *= 1 if hi_side else -1
        total += sign * csum[np.ix_(*sel)]
    return total > 0


def _tails(table, occupied=None):
    """Per active axis and panel interval: an estimate of the interpolation error (from trailing coefficients).

    For each panel and axis, a_i is the largest |c| with index i along the axis;
    the estimate of the first neglected term is t^2 / t' (at most t), with
    t = max(a_q, a_{q-1}) and t' = max(a_{q-2}, a_{q-3}) (pairs, so that odd or
    even functions are not missed). Panels not ``occupied`` count as 0.
    """
    d = table.d
    q = table.degree
    P = [1, 1, 1]
    for i in range(d):
        P[3 - d + i] = table.panels[i]
    n = table.lookup[-3:]
    c = np.abs(table.coef).reshape(P[0], P[1], P[2], d, *n)  # (P0, P1, P2, nc, n0, n1, n2)
    out = []
    for i in range(d):
        k = 3 - d + i
        ax = 4 + k
        # a_j for j = q-3 .. q: the largest |c| with index j along axis k, per panel
        a = c.take(np.arange(q - 3, q + 1), axis=ax).max(axis=tuple(j for j in range(3, 7) if j != ax))
        t = np.maximum(a[..., 3], a[..., 2])
        t2 = np.maximum(a[..., 1], a[..., 0])
        est = np.minimum(t, t * t / np.maximum(t2, 1e-300))
        if occupied is not None:
            est = np.where(occupied, est, 0.0)
        out.append(est.max(axis=tuple(j for j in range(3) if j != k)))
    return out


def build_table(w, y0, y1, y2, zlo, zhi, atol, h=None, degree=6, panels=2, max_nodes=MAX_NODES, safety=1.0,
                zsample=None, cells=32, breaks=None, tokens=False, first=None):  # fmt: skip
    """Build the table of F(z) = m(z) - g(z; h) on the box zlo <= z <= zhi, refined to ``atol``.

    Panels are split, per axis, where the estimate of the interpolation
    error from the trailing Chebyshev coefficients along that axis (see
    :func:`_tails`) exceeds ``safety * atol``; a panel
    interval is cut into the power of two (2 to 16) of pieces at or above
    (tail / (safety atol))^(1/(q+1)): the panels stay dyadic, so the kernels
    find a target's panel by one table look-up.

    Args:
        w: (n0, n1, n2) source masses.
        y0, y1, y2: uniformly spaced cell centres per padded axis.
        zlo, zhi: (3,) corners of the z-box (entries of inactive axes ignored).
        atol: target absolute error of F (units of y).
        h: (3,) cell sizes of the deconvolved quadrature, None or zeros for midpoint.
        degree: polynomial degree q per axis (>= 2).
        panels: initial panels per axis (rounded up to a power of two).
        max_nodes: cap on the table nodes (product over the axes).
        safety: fraction of ``atol`` allowed to the tail estimate.
        zsample: (S, 3) z points where the table will be used (e.g. B_j x of a subsample of
            targets): only panels near them (within a cell of a cells^d grid) drive refinement.
        cells: cells per axis of that occupancy grid.
        breaks: initial panel edges per active axis (dyadic within the box), e.g. a coarser table's.
        tokens: token sources: ``w`` (n,) weights, ``y0, y1, y2`` the tokens' coordinates (h = 0).
        first: the table on ``breaks`` if already built (it is not built again).

    Returns:
        A :class:`Table`.

    Raises:
        TableTooLarge: the refinement would exceed ``max_nodes``.
    """
    w = np.ascontiguousarray(w, dtype=float)
    ys = tuple(np.ascontiguousarray(y, dtype=float) for y in (y0, y1, y2))
    h = np.zeros(3) if h is None else np.asarray(h, dtype=float)
    if degree < 3:
        raise ValueError("degree must be >= 3")
    axes = _token_axes(np.stack(ys, axis=1)) if tokens else _active_axes(w, h)
    panels = int(2 ** np.ceil(np.log2(max(panels, 1))))  # dyadic
    if breaks is None:
        breaks = [np.linspace(zlo[a], zhi[a], panels + 1) for a in axes]
    while True:
        if int(np.prod([(len(b) - 1) * (degree + 1) for b in breaks])) > max_nodes:
            raise TableTooLarge(f"more than {max_nodes} nodes needed for atol={atol:.3g}")
        table = first if first is not None else _make_table(w, ys, h, axes, breaks, degree, tokens)
        first = None
        if not axes:
            return table
        done = True
        new = []
        occ = None if zsample is None else _occupancy(table, zsample, cells)
        for brk, tail in zip(breaks, _tails(table, occ)):
            ratio = tail / (safety * atol)
            if np.all(ratio <= 1.0):
                new.append(brk)
                continue
            done = False
            need = np.log2(np.maximum(1.1 * ratio ** (1.0 / (degree + 1)), 1.0))
            pieces = np.where(ratio > 1.0, 2 ** np.clip(np.ceil(need), 1, 4), 1)  # dyadic: 2, 4, 8 or 16
            edges = [brk[:1]]
            for i in range(len(brk) - 1):
                edges.append(np.linspace(brk[i], brk[i + 1], int(pieces[i]) + 1)[1:])
            new.append(np.concatenate(edges))
        if done:
            return table
        breaks = new


def _bisect(brk, u):
    """Panel edges with the panels holding the points u cut in two."""
    k = np.unique(np.clip(np.searchsorted(brk, u, side="right") - 1, 0, len(brk) - 2))
    return np.sort(np.concatenate([brk, 0.5 * (brk[k] + brk[k + 1])]))


def _kernel_args(table, B, V):
    """(Bc, Vc, base) for the kernels: table-axis rows of B, tabulated columns of V / M, the constant part."""
    B = np.asarray(B, dtype=float)
    V = np.asarray(V, dtype=float)
    M = B.shape[0]
    d = table.d
    Bc = np.zeros((M, 3, 3))
    for i, a in enumerate(table.axes):
        Bc[:, 3 - d + i, :] = B[:, a, :]
    Vc = np.ascontiguousarray(V[:, :, list(table.axes)] / M)
    inactive = [a for a in range(3) if a not in table.axes]
    base = V[:, :, inactive].sum(axis=0) @ table.const[inactive] / M if inactive else np.zeros(3)
    return Bc, Vc, np.ascontiguousarray(base, dtype=float)


def evaluate(table, targets, B, V, out):
    """Velocity from the table: out_t = (1/M) sum_j V_j F~(B_j x_t), F~ the interpolant of m - g.

    The cell sizes h of the correction g are those the table was built with.
    Targets whose z lies outside the table's box are clamped to it.

    Args:
        table: a :class:`Table`.
        targets: (T, 3) points x.
        B, V: (M, 3, 3) padded score and value matrices.
        out: (T, 3) written.

    Returns:
        out.
    """
    from gridpde.attention.tree import TreeTable, evaluate_tree

    if isinstance(table, TreeTable):
        return evaluate_tree(table, targets, B, V, out)
    targets = np.ascontiguousarray(targets, dtype=float)
    Bc, Vc, base = _kernel_args(table, B, V)
    if table.d == 0:
        out[:] = base
        return out
    _table_forward(targets, Bc, Vc, base, *table.lookup, table.coef, out)
    return out


def _sum_cotangents(table, Fbar):
    """Cotangents (S0_bar, {a: S_a_bar}) of the node sums from those of F = S_a / S0 - g (0 at nodes by the
    exact kernel, whose cotangent goes back through its own VJP)."""
    good = ~table.bad
    safe = np.where(good, table.S0, 1.0)
    Fb = np.where(good[..., None], Fbar, 0.0)
    S0bar = -np.sum(Fb * table.m, axis=-1) / safe
    return S0bar, {a: Fb[..., c] / safe for c, a in enumerate(table.axes)}


def _nodes_to_sources(table, Fbar):
    """Source cotangents from cotangents Fbar of the node values F (source-padded node shape + (nc,)).

    Grid sources: w_bar (n0, n1, n2). Tokens: the positions' cotangent (n, 3) (weights are fixed).
    """
    w = table.w
    axes = table.axes
    S0bar, Sbar = _sum_cotangents(table, Fbar)
    if table.tokens:
        if table.bad.any():
            raise ValueError("no token-source VJP at nodes whose factorised sums underflow")
        return _token_sums_transpose(table, S0bar, Sbar)
    wbar = _node_sums_transpose(table.E, table.EY, S0bar, Sbar, w.shape)
    if table.bad.any():
        idx = np.nonzero(table.bad)
        Z = np.stack([table.znodes[a][idx[a]] for a in range(3)], axis=-1)
        ub = np.zeros((len(Z), 3))
        ub[:, list(axes)] = Fbar[idx]
        eye = np.eye(3)[None]
        wb, _, _ = tensor_velocity_vjp(Z, w, *table.ys, eye, eye, np.zeros(3), ub)
        wbar = wbar + wb
    return wbar


def _coef_to_nodes(table, cbar):
    """Transpose of the node -> coefficient map: cotangents of F on the node grid (source-padded shape)."""
    d = table.d
    q = table.degree
    P = [1, 1, 1]
    n = [1, 1, 1]
    for i in range(d):
        P[3 - d + i] = table.panels[i]
        n[3 - d + i] = q + 1
    D = [_dct_matrix(q) if n[k] > 1 else np.ones((1, 1)) for k in range(3)]
    cb = cbar.reshape(P[0], P[1], P[2], d, n[0], n[1], n[2])
    Fb = np.einsum("ai,bj,gl,xyzcabg->xiyjzlc", D[0], D[1], D[2], cb, optimize=True)
    return Fb.reshape(table.S0.shape + (d,))


def _head_cotangents(table, M, ubar, Bcbar, Fsum):
    """(B_bar, V_bar) (M, 3, 3) from a backward kernel's sums over the parts (table axes last, padded)."""
    d = table.d
    axes = list(table.axes)
    Bbar = np.zeros((M, 3, 3))
    for i, a in enumerate(axes):
        Bbar[:, a, :] = Bcbar[:, 3 - d + i, :]
    Vbar = np.zeros((M, 3, 3))
    Vbar[:, :, axes] = Fsum / M
    inactive = [a for a in range(3) if a not in axes]
    if inactive:
        Vbar[:, :, inactive] += (ubar.sum(axis=0)[:, None] * table.const[inactive][None, :])[None] / M
    return Bbar, Vbar


def _assemble_vjp(table, B, V, ubar, cbar, Bcbar, Fsum):
    """(w_bar, B_bar, V_bar) from the kernel's per-target sums (w_bar: the sources' cotangent)."""
    Bbar, Vbar = _head_cotangents(table, B.shape[0], ubar, Bcbar, Fsum)
    if table.d:
        wbar = _nodes_to_sources(table, _coef_to_nodes(table, cbar))
    else:
        wbar = np.zeros((table.w.shape[0], 3)) if table.tokens else np.zeros_like(table.w)
    return wbar, Bbar, Vbar


def evaluate_vjp(table, targets, B, V, ubar):
    """(w_bar, B_bar, V_bar): the exact transpose of :func:`evaluate` with the table's panels frozen.

    V_bar_j = (1/M) sum_t ubar_t F~_jt^T; B_bar_j = sum_t (dF~/dz)^T zbar_jt x_t^T with
    zbar_jt = (1/M) V_j^T ubar_t; the coefficient cotangents go back through the
    per-panel Chebyshev transform to the node values F = S_a / S0 - g and from there by
    the transposed separable contractions to w_bar (per unit mass, as in
    :func:`~gridpde.attention.tensor_vjp.tensor_velocity_vjp`). Nodes where the
    factorised sums underflowed go back through the exact kernel's VJP.

    Args:
        table: the :class:`Table` used by the forward pass.
        targets: (T, 3) points x.
        B, V: (M, 3, 3) padded score and value matrices.
        ubar: (T, 3) cotangent of out.

    Returns:
        w_bar (n0, n1, n2), B_bar (M, 3, 3), V_bar (M, 3, 3). For a token table, w_bar is
        the cotangent (n, 3) of the source tokens' positions; see :func:`token_table_velocity_vjp`
        for the targets' own.
    """
    from gridpde.attention.tree import TreeTable, evaluate_tree_vjp

    if isinstance(table, TreeTable):
        return evaluate_tree_vjp(table, targets, B, V, ubar)
    return _vjp(table, targets, B, V, ubar)[:3]


def _vjp(table, targets, B, V, ubar):
    """:func:`evaluate_vjp` and the targets' cotangent (T, 3)."""
    targets = np.ascontiguousarray(targets, dtype=float)
    ubar = np.ascontiguousarray(ubar, dtype=float)
    B = np.asarray(B, dtype=float)
    M = B.shape[0]
    Bc, Vc, _ = _kernel_args(table, B, V)
    sums = _backward_sums(_table_backward if table.d else None, table, targets, Bc, Vc, ubar)
    return _assemble_vjp(table, B, V, ubar, *sums[:3]) + (sums[3],)


#: the backward kernels leave out the targets whose cotangent |ubar_t|_1 is at most this times
#: the largest: each cotangent they sum changes by less than its own round-off (measured: at
#: most 7e-17 of its largest entry, on the tables of a 128^2 gradient pass), and the kernel
#: runs 1.3-1.6x faster there, where 28-41% of the faces carry cotangents below 1e-16 of the
#: largest (faces far from the density, where the adjoint is tiny).
VJP_SKIP = 2.0**-56


def _backward_sums(backward, table, targets, Bc, Vc, ubar):
    """(cbar, Bcbar, Fsum, xbar) of a backward kernel (None: nothing tabulated), summed over its PARTS
    private copies (fixed, so results do not depend on threads)."""
    M = Bc.shape[0]
    parts = max(1, min(PARTS, (targets.shape[0] + CHUNK - 1) // CHUNK))
    cbar = np.zeros((parts,) + table.coef.shape)
    Bcbar = np.zeros((parts, M, 3, 3))
    Fsum = np.zeros((parts, M, 3, table.d))
    xbar = np.zeros((targets.shape[0], 3))
    if backward is not None:
        skip = VJP_SKIP * float(np.abs(ubar).sum(axis=1).max(initial=0.0))
        backward(targets, Bc, Vc, *table.lookup, table.coef, ubar, skip, cbar, Bcbar, Fsum, xbar)
    return cbar.sum(axis=0), Bcbar.sum(axis=0), Fsum.sum(axis=0), xbar


# ------------------------------------------------------------------ driver


def _spectral_norms(V, axes):
    if not axes:
        return np.zeros(V.shape[0])
    return np.linalg.norm(V[:, :, list(axes)], ord=2, axis=(1, 2))


def default_degree(tol):
    """Degree used by :func:`table_velocity` for a tolerance (cheapest per target at the measured tables)."""
    return int(np.clip(np.round(2.0 + 0.6 * -np.log10(tol)), 4, 12))


def table_velocity(targets, w, y0, y1, y2, B, V, h, out, tol=1e-8, degree=None, n_check=256, max_nodes=MAX_NODES,
                   max_rounds=4, seed=0, layout=None):  # fmt: skip
    """Head-averaged attention velocity by the table method, with a posteriori error control.

    Same result as :func:`~gridpde.attention.tensor.tensor_velocity` to within
    ``tol`` times max |out| (max over targets and components).

    The z-box is the range of z = B_j x over every head and target (padded by 1%).
    The table's absolute target for F is tol * max|out| / mean_j ||V_j||_2 (max|out|
    first estimated on a coarse table). The error is then measured against the
    exact kernel at ``n_check`` random (target, head) pairs plus, per head and
    axis, the pairs of extreme z: err_F = max ||F~ - F||_2 there, and the
    velocity's relative error is bounded by mean_j ||V_j||_2 err_F / max|out|
    (the triangle inequality over heads). If that exceeds ``tol`` the table is
    rebuilt with a tighter target and the panels of the failing pairs
    bisected (up to ``max_rounds``); if it still fails or
    the table would exceed ``max_nodes`` the exact kernel is used.

    A warm start: given the :class:`Layout` of an earlier call's table on the
    same z-box (the stages of one layer: same targets, same heads), the
    table on its panels replaces the coarse table and is the first refinement
    step; if that call fell back to exact sums, this one takes them at once
    (in 3-D a failed build can cost several exact evaluations). The result
    is then a function of (the arguments, ``layout``), so a recomputed stage
    given the same layout is the same bit for bit.

    Args:
        targets, w, y0, y1, y2, B, V, h: as for :func:`~gridpde.attention.tensor.tensor_velocity`.
        out: (T, 3) written.
        tol: relative error target.
        degree: polynomial degree per axis (default :func:`default_degree`).
        n_check: random (target, head) pairs of the a posteriori check.
        max_nodes: cap on the table's nodes.
        max_rounds: table builds tried before falling back.
        seed: seed of the check's sample.
        layout: an earlier table's :class:`Layout` to start from (ignored unless it fits the z-box).

    Returns:
        dict with ``method`` ("table" or "exact"), ``error_estimate`` (the bound
        above; 0 for the exact kernel), ``error_F`` (max error of F on the
        check pairs), ``tol``, ``degree``, ``panels`` and ``nodes`` (per active
        axis), ``table_nodes``, ``fallback_nodes`` (nodes by the direct sum),
        ``rounds``, ``checked`` (pairs checked), ``reason``, ``warm`` (started from
        ``layout``), ``layout`` (to pass to the next call on the box) and
        ``table`` (the :class:`Table`, None for the exact kernel; pass it to
        :func:`evaluate_vjp`).
    """
    ys = tuple(np.ascontiguousarray(y, dtype=float) for y in (y0, y1, y2))
    h = np.ascontiguousarray(h, dtype=float)

    def exact_kernel(Z, Bs, Vs, hs, res):
        tensor_velocity(Z, w, *ys, Bs, Vs, hs, res, np.empty((Bs.shape[0], len(Z))))

    w = np.ascontiguousarray(w, dtype=float)
    return _driver(targets, w, ys, h, B, V, out, exact_kernel, False, tol, degree, n_check, max_nodes, max_rounds,
                   seed, layout)  # fmt: skip


def _check_pairs(targets, B, h, axes, exact_kernel, n_check, seed, nsub=2048):
    """The z-box of every head and target (padded by 1%), the check pairs and their exact F, the targets
    of the pairs, and sample z (``nsub`` targets' and the pairs') for the refinement.

    The pairs are ``n_check`` random (target, head) pairs and, per head and table axis, the
    pairs of extreme z. Returns (zlo, zhi, Zs, F_exact, tsample, zsub).
    """
    T, M, d = targets.shape[0], B.shape[0], len(axes)
    Bc = np.zeros((M, 3, 3))
    for i, a in enumerate(axes):
        Bc[:, 3 - d + i, :] = B[:, a, :]
    zmin = np.empty((M, 3))
    zmax = np.empty((M, 3))
    imin = np.empty((M, 3), dtype=np.int64)
    imax = np.empty((M, 3), dtype=np.int64)
    _zrange(targets, Bc, zmin, zmax, imin, imax)
    zlo = np.zeros(3)
    zhi = np.zeros(3)
    for i, a in enumerate(axes):
        lo = zmin[:, 3 - d + i].min()
        hi = zmax[:, 3 - d + i].max()
        pad = 0.01 * (hi - lo) + 1e-9 * (1.0 + max(abs(lo), abs(hi)))
        zlo[a] = lo - pad
        zhi[a] = hi + pad
    rng = np.random.default_rng(seed)
    pf = [rng.integers(0, T, n_check)]
    pj = [rng.integers(0, M, n_check)]
    for i in range(d):
        k = 3 - d + i
        pf += [imin[:, k], imax[:, k]]
        pj += [np.arange(M), np.arange(M)]
    pairs = np.unique(np.stack([np.concatenate(pf), np.concatenate(pj)], axis=1), axis=0)
    Zs = np.einsum("sab,sb->sa", B[pairs[:, 1]], targets[pairs[:, 0]])
    eye = np.eye(3)[None]
    F_exact = np.empty((len(Zs), 3))
    exact_kernel(Zs, eye, eye, h, F_exact)
    tsample = np.ascontiguousarray(targets[np.unique(pairs[:, 0])])
    sub = targets[:: max(1, T // nsub)]
    zsub = np.concatenate([np.einsum("jab,tb->jta", B, sub).reshape(-1, 3), Zs])
    return zlo, zhi, Zs, F_exact, tsample, zsub


def _driver(targets, w, ys, h, B, V, out, exact_kernel, tokens, tol, degree, n_check, max_nodes, max_rounds, seed,
            layout=None):  # fmt: skip
    """:func:`table_velocity` for grid or token sources; ``exact_kernel(Z, B, V, h, out)`` the exact sums."""
    targets = np.ascontiguousarray(targets, dtype=float)
    B = np.ascontiguousarray(B, dtype=float)
    V = np.ascontiguousarray(V, dtype=float)
    T = targets.shape[0]
    M = B.shape[0]
    info = dict(method="exact", kind="tensor", error_estimate=0.0, error_F=0.0, tol=tol, degree=None, panels=(),
                nodes=(), table_nodes=0, fallback_nodes=0, rounds=0, checked=0, reason="", warm=False, table=None,
                layout=None)  # fmt: skip
    box = None  # (axes, degree, zlo, zhi) once known: a fallback leaves a Layout without panels on it

    def exact(reason):
        exact_kernel(targets, B, V, h, out)
        info.update(method="exact", reason=reason, table=None, layout=None if box is None else Layout(*box, None))
        return info

    if T == 0:
        return info
    if not np.any(w > 0.0):
        return exact("no positive mass")
    axes = _token_axes(np.stack(ys, axis=1)) if tokens else _active_axes(w, h)
    d = len(axes)
    q = default_degree(tol) if degree is None else int(degree)
    info["degree"] = q
    zlo, zhi, Zs, F_exact, tsample, zsub = _check_pairs(targets, B, h, axes, exact_kernel, n_check, seed)
    box = (axes, q, zlo, zhi)
    info["checked"] = len(Zs)
    vnorm = _spectral_norms(V, axes).mean()

    def tree(reason, leaves=None):
        # the tensor table is too large: a tree of panels (grid sources in 2-D and 3-D), else exact sums
        if tokens or d < 2 or vnorm == 0.0:
            return exact(reason)
        from gridpde.attention.tree import fit_tree

        zdense = np.concatenate([np.einsum("jab,tb->jta", B, targets[:: max(1, T // TREE_SAMPLE)]).reshape(-1, 3),
                                 Zs])  # fmt: skip
        res = fit_tree(w, ys, h, zlo, zhi, q, zdense, Zs, F_exact, tsample, B, V, tol, TREE_NODES * max_nodes,
                       max_rounds, leaves)  # fmt: skip
        info["rounds"] += res["rounds"]
        if res["tree"] is None:
            return exact(f"{reason}; {res['reason']}")
        t = res["tree"]
        evaluate(t, targets, B, V, out)
        info.update(method="table", kind="tree", error_F=res["error_F"], table=t, reason=reason, panels=(t.leaves,),
                    error_estimate=float(vnorm * res["error_F"] / np.abs(out).max()), nodes=(), table_nodes=t.size,
                    fallback_nodes=t.fallback_nodes, layout=Layout(*box, None, tree=(t.level, t.index)))  # fmt: skip
        return info

    warm = layout is not None and layout.fits(axes, q, zlo, zhi)
    if warm and layout.tree is not None:
        return tree("an earlier stage on the same z-box used a tree", layout.tree)
    if warm and layout.breaks is None:  # an earlier call on this box fell back: do not pay for a failed build again
        return exact("an earlier stage on the same z-box fell back to exact sums")
    eye = np.eye(3)[None]
    Fscale = np.abs(F_exact[:, list(axes)]).max() if d else 0.0
    if d == 0 or vnorm == 0.0:
        table = _make_table(w, ys, h, axes, [np.array([zlo[a], zhi[a]]) for a in axes], q, tokens)
        evaluate(table, targets, B, V, out)
        info.update(method="table", table=table, layout=table.layout,
                    reason="nothing to tabulate" if d == 0 else "V = 0")  # fmt: skip
        return info
    # max|out| on the sample targets: from the table on the earlier layout, or a coarse table
    try:
        if warm:
            coarse = _make_table(w, ys, h, axes, list(layout.breaks), q, tokens)
        else:
            coarse = build_table(w, *ys, zlo, zhi, 1e-3 * max(Fscale, 1e-300), h, q, max_nodes=max_nodes,
                                 zsample=zsub, tokens=tokens)  # fmt: skip
        outmax = np.abs(evaluate(coarse, tsample, B, V, np.empty((len(tsample), 3)))).max()
    except TableTooLarge:
        return tree("coarse table too large")
    if not outmax > 0.0:
        return exact("velocity vanishes on the sample")
    info["warm"] = warm
    atol = tol * outmax / vnorm
    start = list(coarse.breaks)
    first = coarse if warm else None  # the warm table is the first refinement step
    err = np.inf
    Fs = np.empty((len(Zs), 3))
    for rnd in range(1, max_rounds + 1):
        info["rounds"] = rnd
        try:
            table = build_table(w, *ys, zlo, zhi, atol, h, q, max_nodes=max_nodes, zsample=zsub, breaks=start,
                                tokens=tokens, first=first, safety=WARM_SLACK if warm else 1.0)  # fmt: skip
            first = None
        except TableTooLarge:
            return tree(f"table too large (round {rnd}, atol {atol:.3g})")
        evaluate(table, Zs, eye, eye, Fs)
        errs = np.sqrt(((Fs - F_exact)[:, list(axes)] ** 2).sum(axis=1))
        errF = errs.max()
        err = vnorm * errF / outmax
        info.update(error_F=float(errF), panels=table.panels, nodes=table.nodes, table_nodes=table.size,
                    fallback_nodes=int(table.bad.sum()))  # fmt: skip
        if err <= tol:
            break
        atol *= 0.5 * tol / err
        # and bisect, along every axis, the panels of the failing samples
        failing = Zs[vnorm * errs / outmax > tol]
        start = [_bisect(brk, failing[:, a]) for brk, a in zip(table.breaks, axes)]
    else:
        return exact(f"tolerance not met after {max_rounds} rounds (estimate {err:.3g})")
    if tokens and table.bad.any():  # the token VJP has no direct branch at such nodes
        return exact("token node sums underflow")
    evaluate(table, targets, B, V, out)
    outmax_all = np.abs(out).max()
    info.update(method="table", error_estimate=float(vnorm * info["error_F"] / outmax_all), table=table,
                layout=table.layout)  # fmt: skip
    return info


def table_velocity_vjp(info, targets, w, y0, y1, y2, B, V, h, ubar):
    """(w_bar, B_bar, V_bar) for the forward pass that returned ``info``: the table's transpose, or the exact VJP."""
    if info.get("table") is not None:
        return evaluate_vjp(info["table"], targets, B, V, ubar)
    return tensor_velocity_vjp(targets, w, y0, y1, y2, B, V, h, ubar)


# ------------------------------------------------------------------ token sources (the particle method)


def _kept_tokens(X, w):
    """Indices of the tokens that act as sources: weight above ``WEIGHT_FLOOR`` of the largest (as the direct kernel)."""
    return np.flatnonzero(w > WEIGHT_FLOOR * w.max()) if w.size else np.zeros(0, dtype=np.int64)


def token_table_velocity(X, w, B, V, out, tol=1e-8, degree=None, n_check=256, max_nodes=MAX_NODES, max_rounds=4,
                         seed=0):  # fmt: skip
    """The tokens' own attention velocity by the table method (sources and targets the tokens X).

    Same result as :func:`~gridpde.attention.direct.direct_velocity` (X, X, w, B, V) to
    within ``tol`` times max |out|, with the error control of :func:`table_velocity`; the
    node sums are direct sums over the tokens at the tensor grid of nodes (O(nodes x n),
    by matrix products), the per-pair cost is the same lookup as on a grid. A node whose
    factorised sum underflows makes the call use the exact kernel (the VJP has no
    direct branch there).

    Args:
        X: (n, 3) tokens (padded layout). w: (n,) weights >= 0.
        B, V: (M, 3, 3). out: (n, 3) written.
        tol ... seed: as for :func:`table_velocity`.

    Returns:
        the info dict of :func:`table_velocity`, plus ``kept`` (indices of the source tokens).
    """
    X = np.ascontiguousarray(X, dtype=float)
    w = np.ascontiguousarray(w, dtype=float)
    keep = _kept_tokens(X, w)
    Xs = np.ascontiguousarray(X[keep])
    ws = np.ascontiguousarray(w[keep])

    def exact_kernel(Z, Bs, Vs, hs, res):
        direct_velocity(np.ascontiguousarray(Z), X, w, Bs, Vs, res, np.empty((Bs.shape[0], len(Z))))

    ys = tuple(np.ascontiguousarray(Xs[:, a]) for a in range(3))
    info = _driver(X, ws, ys, np.zeros(3), B, V, out, exact_kernel, True, tol, degree, n_check, max_nodes,
                   max_rounds, seed)  # fmt: skip
    info["kept"] = keep
    return info


def token_table_velocity_vjp(info, X, w, B, V, ubar):
    """(X_bar, B_bar, V_bar) for the forward pass that returned ``info``: the table's transpose, or the exact VJP.

    X_bar holds both roles of the tokens: targets (the interpolant's derivative) and
    sources (the transposed node sums); the weights are fixed.
    """
    table = info.get("table")
    if table is None:
        return direct_velocity_vjp(X, w, B, V, ubar)
    ybar, Bbar, Vbar, xbar = _vjp(table, X, B, V, ubar)
    xbar[info["kept"]] += ybar
    return xbar, Bbar, Vbar
