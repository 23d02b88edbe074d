"""Reverse mode of the finite-volume right-hand side (its numpy forward mode: :mod:`gridpde.twins.transport`).

:class:`~gridpde.grid.transport.Transport` computes out = -div F(rho, u) with face
fluxes F_j = u_j rho^E_{j-1} (u_j >= 0) or u_j rho^W_j (u_j < 0), face values
rho^{E/W}_i = rho_i +- sigma_i / 2 and sigma_i = sigma(rho_{i-1}, rho_i, rho_{i+1})
the limited difference. Its linearisation with every non-differentiable
choice frozen as the forward pass took it (the upwind side by the test
``u >= 0.0``, the argument a minmod/MC limiter picks, whether van Leer's
slope is live or clamped) is

    d sigma_i = a_i (d rho_i - d rho_{i-1}) + b_i (d rho_{i+1} - d rho_i),

with (a_i, b_i) = (d sigma / d dm, d sigma / d dp) of the branch taken:
(0, theta), (1/2, 1/2), (theta, 0) or (0, 0) for minmod (theta = 1) and MC
(theta = 2), (2 dp^2, 2 dm^2) / (dm + dp)^2 for van Leer where dm dp > 0
(or (2, 0) / (0, 2) where the bound 2 min(|dm|, |dp|) clamps a rounding,
see :func:`gridpde.grid.transport.slope_and_coeffs`).

The transpose (:class:`TransportVJP`), for a cotangent lam of out:

    F_bar_j   = (lam_j - lam_{j-1}) / dx          (lam = 0 outside the box)
    u_bar_j   = F_bar_j * (face value the forward upwinded)
    p_j       = u_j F_bar_j
    sbar_i    = p_{i+1} / 2 [u_{i+1} >= 0] - p_i / 2 [u_i < 0]
    rho_bar_i = p_{i+1} [u_{i+1} >= 0] + p_i [u_i < 0]
                + b_{i-1} sbar_{i-1} + (a_i - b_i) sbar_i - a_{i+1} sbar_{i+1}

Cell i gathers from the faces i-1 .. i+2 and the slopes of cells i-1 .. i+1.
The kernels make two passes, each writing only its own elements (no
races): per cell, its own terms and tm_i = a_i sbar_i, tp_i = b_i sbar_i
(one limiter evaluation per cell; the forward pass makes one per face);
then per face, u_bar and the neighbours' slope terms tp_{i-1} - tm_{i+1}.
The limiter is written with selects rather than branches, so the loops
vectorise and do not depend on branch prediction (rough data costs the
same as smooth data). The wall outflow returned by the forward pass is not
differentiated (the risk does not depend on it).

Layout: as in :mod:`gridpde.grid.transport`, the arrays of each axis are seen as
(A, n, C) lines with the transported axis in the middle. Outside the box
rho = lam = 0 and there are no faces; the ghost cells' slopes take the zero
branch in the forward pass (one of their differences is exactly 0), so
they carry no cotangent: their rows of the work arrays stay zero.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from gridpde._numba import inline, kernel
from gridpde.grid.transport import LIMITER_CODES, _lines, slope_and_coeffs


@inline
def _own(rm, r0, rp, u0, u1, lm, l0, lp, inv_dx, code):
    """Pass 1 at cell i: (own part of rho_bar_i, a_i sbar_i, b_i sbar_i, sigma_i).

    Operands: rho and lam at cells i-1, i, i+1 and u at faces i, i+1 (face j
    lies between cells j-1 and j). sbar_i = (e_{i+1} - w_i) / 2 with p = u F_bar
    split by the upwind side face_flux took: e (u >= 0) feeds the east value
    of the cell left of the face, w the west value of the cell right of it.
    """
    sigma, a, b = slope_and_coeffs(rm, r0, rp, code)
    p0 = u0 * (l0 - lm) * inv_dx
    p1 = u1 * (lp - l0) * inv_dx
    w0 = 0.0 if u0 >= 0.0 else p0
    e1 = p1 if u1 >= 0.0 else 0.0
    sbar = 0.5 * (e1 - w0)
    tm = a * sbar
    tp = b * sbar
    return e1 + w0 + tm - tp, tm, tp, sigma


@inline
def _face(rm, r0, sg_m, sg_0, u0, lm, l0, inv_dx):
    """Pass 2 at face i: u_bar_i = F_bar_i * (the face value the forward upwinded)."""
    val = rm + 0.5 * sg_m if u0 >= 0.0 else r0 - 0.5 * sg_0
    return (l0 - lm) * inv_dx * val


@inline
def _own_row(rho, u, lam, a, i, inv_dx, code, add, rho_bar, tm, tp, sg):
    """Pass 1 along row i of the (A, n, C) lines; tm, tp, sg padded (cell k at k + 1)."""
    n = rho.shape[1]
    C = rho.shape[2]
    km = max(i - 1, 0)
    vm = 1.0 if i >= 1 else 0.0  # rows outside the box are read clamped, weighted by 0
    kp = min(i + 1, n - 1)
    vp = 1.0 if i + 1 < n else 0.0
    for c in range(C):
        rb, t_m, t_p, sigma = _own(
            vm * rho[a, km, c], rho[a, i, c], vp * rho[a, kp, c], u[a, i, c], u[a, i + 1, c],
            vm * lam[a, km, c], lam[a, i, c], vp * lam[a, kp, c], inv_dx, code,
        )  # fmt: skip
        rho_bar[a, i, c] = rho_bar[a, i, c] + rb if add else rb
        tm[a, i + 1, c] = t_m
        tp[a, i + 1, c] = t_p
        sg[a, i + 1, c] = sigma


@kernel(parallel=True)
def _vjp_lines(rho, u, lam, code, inv_dx, add, rho_bar, u_bar, tm, tp, sg):
    """Transposed -div F along the middle axis of (A, n, C) lines.

    Two row-parallel passes: the cells' own terms and slope cotangents,
    then the faces' u_bar and the slope terms cells pass to their neighbours.

    Args:
        rho: (A, n, C) densities.
        u: (A, n + 1, C) face velocities (face j between cells j-1 and j).
        lam: (A, n, C) cotangent of out.
        code: limiter code.
        inv_dx: 1 / dx along the axis.
        add: accumulate into rho_bar (else overwrite).
        rho_bar: (A, n, C) written or accumulated into.
        u_bar: (A, n + 1, C) written.
        tm, tp, sg: (A, n + 2, C) work space for a_k sbar_k, b_k sbar_k and
            sigma_k (cell k at k + 1); rows 0 and n + 1 must be zero.
    """
    A, n, C = rho.shape
    for ai in prange(A * n):
        a = ai // n
        i = ai - a * n
        _own_row(rho, u, lam, a, i, inv_dx, code, add, rho_bar, tm, tp, sg)
    for ai in prange(A * (n + 1)):
        a = ai // (n + 1)
        i = ai - a * (n + 1)
        km = max(i - 1, 0)
        vm = 1.0 if i >= 1 else 0.0
        k0 = min(i, n - 1)
        v0 = 1.0 if i < n else 0.0
        for c in range(C):
            u_bar[a, i, c] = _face(
                vm * rho[a, km, c], v0 * rho[a, k0, c], sg[a, i, c], sg[a, i + 1, c], u[a, i, c],
                vm * lam[a, km, c], v0 * lam[a, k0, c], inv_dx,
            )  # fmt: skip
        if i < n:
            for c in range(C):
                rho_bar[a, i, c] += tp[a, i, c] - tm[a, i + 2, c]


@inline
def _own_cell(rm, rp, lm, lp, rho, u, lam, a, i, inv_dx, code, add, rho_bar, tm, tp, sg):
    """Pass 1 at cell i of line a of (A, n) lines, given its neighbours' rho and lam."""
    rb, t_m, t_p, sigma = _own(rm, rho[a, i], rp, u[a, i], u[a, i + 1], lm, lam[a, i], lp, inv_dx, code)
    rho_bar[a, i] = rho_bar[a, i] + rb if add else rb
    tm[a, i + 1] = t_m
    tp[a, i + 1] = t_p
    sg[a, i + 1] = sigma


@inline
def _own_line(rho, u, lam, a, inv_dx, code, add, rho_bar, tm, tp, sg):
    """Pass 1 along line a of (A, n) lines: the end cells see zeros outside the box."""
    n = rho.shape[1]
    rp = rho[a, 1] if n > 1 else 0.0
    lp = lam[a, 1] if n > 1 else 0.0
    _own_cell(0.0, rp, 0.0, lp, rho, u, lam, a, 0, inv_dx, code, add, rho_bar, tm, tp, sg)
    for i in range(1, n - 1):
        _own_cell(
            rho[a, i - 1], rho[a, i + 1], lam[a, i - 1], lam[a, i + 1],
            rho, u, lam, a, i, inv_dx, code, add, rho_bar, tm, tp, sg,
        )  # fmt: skip
    if n > 1:
        _own_cell(rho[a, n - 2], 0.0, lam[a, n - 2], 0.0, rho, u, lam, a, n - 1, inv_dx, code, add, rho_bar, tm, tp, sg)


@kernel(parallel=True)
def _vjp_contiguous(rho, u, lam, code, inv_dx, add, rho_bar, u_bar, tm, tp, sg):
    """:func:`_vjp_lines` for the last axis (C = 1): rho, lam (A, n), u (A, n + 1), work (A, n + 2)."""
    A, n = rho.shape
    for a in prange(A):
        _own_line(rho, u, lam, a, inv_dx, code, add, rho_bar, tm, tp, sg)
        u_bar[a, 0] = _face(0.0, rho[a, 0], 0.0, sg[a, 1], u[a, 0], 0.0, lam[a, 0], inv_dx)
        for i in range(1, n):
            u_bar[a, i] = _face(rho[a, i - 1], rho[a, i], sg[a, i], sg[a, i + 1], u[a, i], lam[a, i - 1], lam[a, i], inv_dx)
            rho_bar[a, i - 1] += tp[a, i - 1] - tm[a, i + 1]
        u_bar[a, n] = _face(rho[a, n - 1], 0.0, sg[a, n], 0.0, u[a, n], lam[a, n - 1], 0.0, inv_dx)
        rho_bar[a, n - 1] += tp[a, n - 1] - tm[a, n + 1]


class TransportVJP:
    """Cotangents of ``Transport(shape, dx, limiter).rhs``, with preallocated work space.

    Args:
        shape: the grid's cell counts (n_1, ..., n_d).
        dx: cell sizes per axis.
        limiter: "upwind" or a MUSCL limiter name.
    """

    def __init__(self, shape: tuple[int, ...], dx: np.ndarray, limiter: str):
        self.shape = tuple(shape)
        self.dx = np.asarray(dx, float)
        self.code = LIMITER_CODES[limiter]
        self.lines = [_lines(self.shape, a) for a in range(len(shape))]
        # per axis: a_k sbar_k, b_k sbar_k, sigma_k of cells -1 .. n (ghost rows stay 0)
        self.work = [
            tuple(np.zeros((A, n + 2, C) if C > 1 else (A, n + 2)) for _ in range(3))
            for A, n, C in self.lines
        ]

    def vjp(
        self,
        rho: np.ndarray,
        u: list[np.ndarray],
        lam: np.ndarray,
        rho_bar: np.ndarray,
        u_bar: list[np.ndarray],
    ) -> None:
        """Write rho_bar = (d out / d rho)^T lam and u_bar[a] = (d out / d u_a)^T lam.

        Args:
            rho: cell averages, shape ``shape``.
            u: per axis a, the normal face velocity (n_a + 1 along axis a).
            lam: cotangent of out = -div F, shape ``shape``.
            rho_bar: written, shape ``shape`` (C-contiguous).
            u_bar: written, shapes of ``u`` (C-contiguous).
        """
        rho = np.ascontiguousarray(rho, dtype=float)
        lam = np.ascontiguousarray(lam, dtype=float)
        for a, (A, n, C) in enumerate(self.lines):
            lines = (A, n, C) if C > 1 else (A, n)
            faces = (A, n + 1, C) if C > 1 else (A, n + 1)
            ub = u_bar[a].reshape(faces)
            rb = rho_bar.reshape(lines)
            if not (np.shares_memory(ub, u_bar[a]) and np.shares_memory(rb, rho_bar)):
                msg = "rho_bar and u_bar must be C-contiguous to be written in place"
                raise ValueError(msg)
            ua = np.ascontiguousarray(u[a], dtype=float).reshape(faces)
            kern = _vjp_lines if C > 1 else _vjp_contiguous
            inv_dx = 1.0 / self.dx[a]
            kern(rho.reshape(lines), ua, lam.reshape(lines), self.code, inv_dx, a > 0, rb, ub, *self.work[a])


def transport_vjp(rho, u, lam, dx, limiter):
    """(rho_bar, u_bar): the transposed linearisation of -div F(rho, u) applied to lam.

    Convenience wrapper of :class:`TransportVJP` (allocates every call).

    Args:
        rho: cell averages (n_1, ..., n_d).
        u: list of d face-velocity arrays, n_a + 1 along axis a.
        lam: cotangent of out, shape of rho.
        dx: cell sizes per axis.
        limiter: a key of :data:`gridpde.grid.transport.LIMITER_CODES`.

    Returns:
        rho_bar (shape of rho) and the list u_bar (shapes of u).
    """
    rho = np.ascontiguousarray(rho, dtype=float)
    rho_bar = np.empty_like(rho)
    u_bar = [np.empty(np.shape(ua)) for ua in u]
    TransportVJP(rho.shape, dx, limiter).vjp(rho, u, np.ascontiguousarray(lam, dtype=float), rho_bar, u_bar)
    return rho_bar, u_bar
