"""Direct O(T N M) attention sum, numba-parallel over targets.

Padded layout (docs/model.md section 1; the README's attention notes): points
are 3-vectors with the physical coordinates last, B = K^T Q and V are 3x3.
For target x, head j, z = B_j x:

    m_j(x)    = sum_k w_k y_k exp(z.y_k) / sum_k w_k exp(z.y_k)
    lse[j, t] = log sum_k w_k exp(z.y_k)
    out[t]    = (1/M) sum_j V_j m_j(x_t)

Per head and pair of targets two passes over the sources: the max score (over
sources with w_k > 0), then the shifted exponentials and the sums; one sweep
serves two targets. No T x N matrix is formed. Sources with w_k = 0, or below
``WEIGHT_FLOOR`` (1e-300) of the largest weight (a denormal weight on the top
score would make the normaliser denormal; NaN the wrapper rejects), are dropped, and leading coordinate columns that are
zero for every source (the padding) are skipped, so a 2-D problem costs 2-D
work. ``exp`` is ``fast_exp`` (vectorisable, <= 1e-14 relative).

Note: numba's cache does not notice edits to ``fastexp.py``; after changing
it, delete ``gridpde/attention/__pycache__``.
"""

import numpy as np
from numba import prange

from gridpde.attention.small import matvec3
from gridpde._numba import inline, kernel
from gridpde.attention.fastexp import fast_exp

#: sources lighter than this fraction of the heaviest are dropped (also by the VJP; prompts floor their weights alike)
WEIGHT_FLOOR = 1e-300

__all__ = ["direct_velocity", "attention_velocity"]

# Each _pair_* helper does both passes for two targets a, b at once (one
# sweep over the sources serves both: half the memory traffic, twice the
# independent work per loop iteration). Pass 1 finds, per target, a source
# k* of (nearly) the largest score; the scores are then taken relative to it
# from coordinate differences, d_k = z.(y_k - y_k*), so no difference of two
# huge scores is ever formed (with scores of 1e23, s_k - max s rounded to
# +-1e7 made every term underflow, or overflow). Pass 2 finds dmax = max d_k
# (>= 0, tiny unless near-ties were misranked by pass 1's rounding), pass 3
# sums e_k = w_k exp(d_k - dmax). Returns, per target, the max score
# s_k* + dmax and the sums  sum_k e_k,  sum_k e_k y_k.


@inline
def _pair_1d(za2, zb2, y2, w, n):
    ma = -np.inf
    mb = -np.inf
    ka = 0
    kb = 0
    for k in range(n):
        sa = za2 * y2[k]
        sb = zb2 * y2[k]
        if sa > ma:
            ma, ka = sa, k
        if sb > mb:
            mb, kb = sb, k
    ra2 = y2[ka]
    rb2 = y2[kb]
    da = 0.0
    db = 0.0
    for k in range(n):
        da = max(da, za2 * (y2[k] - ra2))
        db = max(db, zb2 * (y2[k] - rb2))
    s0a = 0.0
    s2a = 0.0
    s0b = 0.0
    s2b = 0.0
    for k in range(n):
        ea = w[k] * fast_exp(za2 * (y2[k] - ra2) - da)
        eb = w[k] * fast_exp(zb2 * (y2[k] - rb2) - db)
        s0a += ea
        s2a += ea * y2[k]
        s0b += eb
        s2b += eb * y2[k]
    return ma + da, s0a, 0.0, 0.0, s2a, mb + db, s0b, 0.0, 0.0, s2b


@inline
def _pair_2d(za1, za2, zb1, zb2, y1, y2, w, n):
    ma = -np.inf
    mb = -np.inf
    ka = 0
    kb = 0
    for k in range(n):
        sa = za1 * y1[k] + za2 * y2[k]
        sb = zb1 * y1[k] + zb2 * y2[k]
        if sa > ma:
            ma, ka = sa, k
        if sb > mb:
            mb, kb = sb, k
    ra1, ra2, rb1, rb2 = y1[ka], y2[ka], y1[kb], y2[kb]
    da = 0.0
    db = 0.0
    for k in range(n):
        da = max(da, za1 * (y1[k] - ra1) + za2 * (y2[k] - ra2))
        db = max(db, zb1 * (y1[k] - rb1) + zb2 * (y2[k] - rb2))
    s0a = 0.0
    s1a = 0.0
    s2a = 0.0
    s0b = 0.0
    s1b = 0.0
    s2b = 0.0
    for k in range(n):
        ea = w[k] * fast_exp(za1 * (y1[k] - ra1) + za2 * (y2[k] - ra2) - da)
        eb = w[k] * fast_exp(zb1 * (y1[k] - rb1) + zb2 * (y2[k] - rb2) - db)
        s0a += ea
        s1a += ea * y1[k]
        s2a += ea * y2[k]
        s0b += eb
        s1b += eb * y1[k]
        s2b += eb * y2[k]
    return ma + da, s0a, 0.0, s1a, s2a, mb + db, s0b, 0.0, s1b, s2b


@inline
def _pair_3d(za0, za1, za2, zb0, zb1, zb2, y0, y1, y2, w, n):
    ma = -np.inf
    mb = -np.inf
    ka = 0
    kb = 0
    for k in range(n):
        sa = za0 * y0[k] + za1 * y1[k] + za2 * y2[k]
        sb = zb0 * y0[k] + zb1 * y1[k] + zb2 * y2[k]
        if sa > ma:
            ma, ka = sa, k
        if sb > mb:
            mb, kb = sb, k
    ra0, ra1, ra2 = y0[ka], y1[ka], y2[ka]
    rb0, rb1, rb2 = y0[kb], y1[kb], y2[kb]
    da = 0.0
    db = 0.0
    for k in range(n):
        da = max(da, za0 * (y0[k] - ra0) + za1 * (y1[k] - ra1) + za2 * (y2[k] - ra2))
        db = max(db, zb0 * (y0[k] - rb0) + zb1 * (y1[k] - rb1) + zb2 * (y2[k] - rb2))
    s0a = 0.0
    s1a = 0.0
    s2a = 0.0
    s3a = 0.0
    s0b = 0.0
    s1b = 0.0
    s2b = 0.0
    s3b = 0.0
    for k in range(n):
        ea = w[k] * fast_exp(za0 * (y0[k] - ra0) + za1 * (y1[k] - ra1) + za2 * (y2[k] - ra2) - da)
        eb = w[k] * fast_exp(zb0 * (y0[k] - rb0) + zb1 * (y1[k] - rb1) + zb2 * (y2[k] - rb2) - db)
        s0a += ea
        s1a += ea * y0[k]
        s2a += ea * y1[k]
        s3a += ea * y2[k]
        s0b += eb
        s1b += eb * y0[k]
        s2b += eb * y1[k]
        s3b += eb * y2[k]
    return ma + da, s0a, s1a, s2a, s3a, mb + db, s0b, s1b, s2b, s3b


@inline
def _add_head(V, j, mx, s0, a0, a1, a2, v0, v1, v2):
    """Tilted mean a / s0 mapped by V_j, added to (v0, v1, v2); returns lse too."""
    m0 = a0 / s0
    m1 = a1 / s0
    m2 = a2 / s0
    mv0, mv1, mv2 = matvec3(V, j, m0, m1, m2)
    v0 += mv0
    v1 += mv1
    v2 += mv2
    return mx + np.log(s0), v0, v1, v2


@kernel(parallel=True)
def direct_velocity(targets, sources, weights, B, V, out, lse):
    """Attention velocity ``out`` (T, 3) and log-normalisers ``lse`` (M, T).

    targets (T, 3), sources (N, 3), weights (N,) >= 0, B, V (M, 3, 3);
    all float64. Writes into ``out`` and ``lse``; returns nothing.
    """
    T = targets.shape[0]
    N = sources.shape[0]
    M = B.shape[0]

    # compact the sources with w > WEIGHT_FLOOR max w (> 0) into coordinate-major arrays
    wmax = 0.0
    for k in range(N):
        if weights[k] > wmax:
            wmax = weights[k]
    floor = WEIGHT_FLOOR * wmax
    n = 0
    for k in range(N):
        if weights[k] > floor:
            n += 1
    ys = np.empty((3, n))
    ws = np.empty(n)
    i = 0
    for k in range(N):
        if weights[k] > floor:
            ws[i] = weights[k]
            for c in range(3):
                ys[c, i] = sources[k, c]
            i += 1
    # first coordinate column that is not zero for every kept source
    c0 = 3
    for c in range(3):
        for k in range(n):
            if ys[c, k] != 0.0:
                c0 = c
                break
        if c0 < 3:
            break
    y0 = ys[0]
    y1 = ys[1]
    y2 = ys[2]

    if n == 0:
        for t in prange(T):
            out[t, 0] = 0.0
            out[t, 1] = 0.0
            out[t, 2] = 0.0
            for j in range(M):
                lse[j, t] = -np.inf
        return

    # targets in pairs (a, b); for odd T the last pair is (T-1, T-1)
    for p in prange((T + 1) // 2):
        ta = 2 * p
        tb = min(ta + 1, T - 1)
        xa0 = targets[ta, 0]
        xa1 = targets[ta, 1]
        xa2 = targets[ta, 2]
        xb0 = targets[tb, 0]
        xb1 = targets[tb, 1]
        xb2 = targets[tb, 2]
        va0 = 0.0
        va1 = 0.0
        va2 = 0.0
        vb0 = 0.0
        vb1 = 0.0
        vb2 = 0.0
        for j in range(M):
            za0, za1, za2 = matvec3(B, j, xa0, xa1, xa2)
            zb0, zb1, zb2 = matvec3(B, j, xb0, xb1, xb2)
            if c0 == 0:
                ma, s0a, a0, a1, a2, mb, s0b, b0, b1, b2 = _pair_3d(
                    za0, za1, za2, zb0, zb1, zb2, y0, y1, y2, ws, n
                )
            elif c0 == 1:
                ma, s0a, a0, a1, a2, mb, s0b, b0, b1, b2 = _pair_2d(za1, za2, zb1, zb2, y1, y2, ws, n)
            elif c0 == 2:
                ma, s0a, a0, a1, a2, mb, s0b, b0, b1, b2 = _pair_1d(za2, zb2, y2, ws, n)
            else:  # every kept source is the origin: all scores are 0
                s0a = 0.0
                for k in range(n):
                    s0a += ws[k]
                ma, a0, a1, a2 = 0.0, 0.0, 0.0, 0.0
                mb, s0b, b0, b1, b2 = ma, s0a, a0, a1, a2
            la, va0, va1, va2 = _add_head(V, j, ma, s0a, a0, a1, a2, va0, va1, va2)
            lb, vb0, vb1, vb2 = _add_head(V, j, mb, s0b, b0, b1, b2, vb0, vb1, vb2)
            lse[j, ta] = la
            lse[j, tb] = lb
        out[ta, 0] = va0 / M
        out[ta, 1] = va1 / M
        out[ta, 2] = va2 / M
        out[tb, 0] = vb0 / M
        out[tb, 1] = vb1 / M
        out[tb, 2] = vb2 / M


def _check(name, a, shape):
    if not isinstance(a, np.ndarray) or a.dtype != np.float64:
        raise TypeError(f"{name} must be a float64 numpy array")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if a.shape != shape:
        raise ValueError(f"{name} has shape {a.shape}, expected {shape}")


def attention_velocity(targets, sources, weights, B, V):
    """Allocate, validate and call ``direct_velocity``; return ``(out, lse)``.

    Shapes: targets (T, 3), sources (N, 3), weights (N,) >= 0, B, V (M, 3, 3),
    float64 and C-contiguous (no silent copies). ``out`` is (T, 3), ``lse``
    (M, T); with all weights zero, out = 0 and lse = -inf.
    """
    if not isinstance(targets, np.ndarray) or targets.ndim != 2:
        raise ValueError("targets must be a (T, 3) array")
    if not isinstance(sources, np.ndarray) or sources.ndim != 2:
        raise ValueError("sources must be an (N, 3) array")
    if not isinstance(B, np.ndarray) or B.ndim != 3:
        raise ValueError("B must be an (M, 3, 3) array")
    T, N, M = targets.shape[0], sources.shape[0], B.shape[0]
    _check("targets", targets, (T, 3))
    _check("sources", sources, (N, 3))
    _check("weights", weights, (N,))
    _check("B", B, (M, 3, 3))
    _check("V", V, (M, 3, 3))
    if M == 0:
        raise ValueError("need at least one head")
    if not np.all(weights >= 0.0):  # also rejects NaN
        raise ValueError("weights must be >= 0")
    out = np.empty((T, 3))
    lse = np.empty((M, T))
    direct_velocity(targets, sources, weights, B, V, out, lse)
    return out, lse
