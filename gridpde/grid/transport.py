"""Conservative upwind finite volumes for d/ds rho + div(rho u) = 0.

Face fluxes F_{i+1/2} = u+ rho^E_i + u- rho^W_{i+1} (Carrillo, Chertock &
Huang 2015), with u the normal velocity at the face centre and face values
rho^{E/W}_i = rho_i +- sigma_i / 2 reconstructed from limited differences
sigma_i (zero for first-order upwind). Outside the box rho = 0: nothing
flows in, and what flows out through the walls is returned as the outflow
rate, so that mass in the box plus mass that left is conserved to round-off.

Positivity: each face value lies between neighbouring cell averages and
rho^E_i + rho^W_i = 2 rho_i, so a forward Euler step keeps rho >= 0 when
dt * sum_a max|u_a| / dx_a <= 1/2 (``POSITIVITY_LIMIT``); SSP Runge-Kutta
steps are convex combinations of Euler steps and inherit the bound.

Arrays use the padded 3-D layout of :mod:`gridpde.grid.mesh`: rho (n0, n1, n2),
face velocities u0 (n0+1, n1, n2), u1 (n0, n1+1, n2), u2 (n0, n1, n2+1);
only the last ``dim`` axes are transported.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from gridpde._numba import inline, kernel

POSITIVITY_LIMIT = 0.5
#: slope limiters by name; the kernels take the code
LIMITER_CODES = {"upwind": 0, "minmod": 1, "mc": 2, "vanleer": 3}


#: below this |dm| + |dp| van Leer's slope is taken as zero: the harmonic mean
#: 2 dm dp / (dm + dp) and its derivatives 2 (dp / (dm + dp))^2 are then
#: formed from operands far from underflow, in any order the compiler's
#: reassociation picks (1 / (dm + dp)^2 stays finite), so no 0 * inf = NaN.
VANLEER_TINY = 1e-140


@inline
def _vanleer(dm, dp):
    """(sigma, a, b) of van Leer's limiter, |sigma| <= 2 min(|dm|, |dp|) exactly.

    The harmonic mean is bounded by 2 min(|dm|, |dp|) only in exact
    arithmetic; a rounding above it puts a face value outside its
    neighbours' range (a negative density next to an empty cell), so the
    bound is applied as a clamp, and the clamp's branch differentiated.
    """
    live = (dm * dp > 0.0) & (abs(dm) + abs(dp) > VANLEER_TINY)
    inv = 1.0 / (dm + dp) if live else 1.0
    tm = dm * inv  # in [0, 1] where live
    tp = dp * inv
    sigma = 2.0 * dm * tp
    small_m = abs(dm) <= abs(dp)
    cap = 2.0 * (dm if small_m else dp)
    capped = abs(sigma) > abs(cap)
    a = (2.0 if small_m else 0.0) if capped else 2.0 * tp * tp
    b = (0.0 if small_m else 2.0) if capped else 2.0 * tm * tm
    sigma = cap if capped else sigma
    return (sigma if live else 0.0), (a if live else 0.0), (b if live else 0.0)


@inline
def slope_and_coeffs(rm, r0, rp, code):
    """(sigma, a, b): the limited difference and d sigma / d dm, d sigma / d dp.

    :func:`limited_slope` is its first component, so the adjoint
    differentiates the branch the forward pass took (at an exact
    tie of two minmod arguments the later one is taken; both give the same
    sigma). Written with selects only, so that loops over it vectorise.
    """
    if code == 0:
        return 0.0, 0.0, 0.0
    dm = r0 - rm
    dp = rp - r0
    if code == 3:
        return _vanleer(dm, dp)
    theta = 1.0 if code == 1 else 2.0
    x = theta * dp
    y = 0.5 * (dp + dm)
    z = theta * dm
    pos = (x > 0.0) & (y > 0.0) & (z > 0.0)
    neg = (x < 0.0) & (y < 0.0) & (z < 0.0)
    # minmod: the smallest of (x, y, z) in modulus when they share a sign
    take_y = (y < z) if pos else (y > z)
    inner = y if take_y else z
    a_in = 0.5 if take_y else theta
    b_in = 0.5 if take_y else 0.0
    take_x = (x < inner) if pos else (x > inner)
    live = pos | neg
    sigma = (x if take_x else inner) if live else 0.0
    a = (0.0 if take_x else a_in) if live else 0.0
    b = (theta if take_x else b_in) if live else 0.0
    return sigma, a, b



@inline
def limited_slope(rm, r0, rp, code):
    """Limited undivided difference sigma of the cell with average r0."""
    return slope_and_coeffs(rm, r0, rp, code)[0]


@inline
def face_flux(rl2, rl, rr, rr2, u, code):
    """Upwind flux through the face between cells rl and rr (neighbours rl2, rr2)."""
    if u >= 0.0:
        return u * (rl + 0.5 * limited_slope(rl2, rl, rr, code))
    return u * (rr - 0.5 * limited_slope(rl, rr, rr2, code))


def _lines(shape: tuple[int, ...], axis: int) -> tuple[int, int, int]:
    """(A, n, C): the array seen as A x n x C with ``axis`` in the middle."""
    return (
        int(np.prod(shape[:axis], dtype=np.int64)),
        shape[axis],
        int(np.prod(shape[axis + 1 :], dtype=np.int64)),
    )


@kernel(parallel=True)
def _div_lines(rg, u, code, inv_dx, out):
    """out -= (F_{i+1/2} - F_{i-1/2}) / dx along the middle axis; returns wall outflow.

    Args:
        rg: (A, n + 4, C) densities with two zero ghost cells at each end.
        u: (A, n + 1, C) face velocities.
        code: limiter code.
        inv_dx: 1 / dx along the axis.
        out: (A, n, C) accumulated into.

    Returns:
        sum over the lines of F_{n+1/2} - F_{-1/2} (flux per unit face area).
    """
    A, n4, C = rg.shape
    n = n4 - 4
    for ai in prange(A * n):
        a = ai // n
        i = ai - a * n
        for c in range(C):
            fl = face_flux(rg[a, i, c], rg[a, i + 1, c], rg[a, i + 2, c], rg[a, i + 3, c], u[a, i, c], code)
            fr = face_flux(
                rg[a, i + 1, c], rg[a, i + 2, c], rg[a, i + 3, c], rg[a, i + 4, c], u[a, i + 1, c], code
            )
            out[a, i, c] -= (fr - fl) * inv_dx
    wall = 0.0
    for a in range(A):
        for c in range(C):
            wall -= face_flux(rg[a, 0, c], rg[a, 1, c], rg[a, 2, c], rg[a, 3, c], u[a, 0, c], code)
            wall += face_flux(rg[a, n, c], rg[a, n + 1, c], rg[a, n + 2, c], rg[a, n + 3, c], u[a, n, c], code)
    return wall


@kernel(parallel=True)
def _div_contiguous(rg, u, code, inv_dx, out):
    """:func:`_div_lines` for the last axis (C = 1), with rg (A, n + 4), u (A, n + 1)."""
    A, n4 = rg.shape
    n = n4 - 4
    for a in prange(A):
        for i in range(n):
            fl = face_flux(rg[a, i], rg[a, i + 1], rg[a, i + 2], rg[a, i + 3], u[a, i], code)
            fr = face_flux(rg[a, i + 1], rg[a, i + 2], rg[a, i + 3], rg[a, i + 4], u[a, i + 1], code)
            out[a, i] -= (fr - fl) * inv_dx
    wall = 0.0
    for a in range(A):
        wall -= face_flux(rg[a, 0], rg[a, 1], rg[a, 2], rg[a, 3], u[a, 0], code)
        wall += face_flux(rg[a, n], rg[a, n + 1], rg[a, n + 2], rg[a, n + 3], u[a, n], code)
    return wall


class Transport:
    """-div(rho u) on a grid, with preallocated ghost buffers.

    Args:
        shape: the grid's cell counts (n_1, ..., n_d).
        dx: cell sizes per axis.
        limiter: "upwind" (first order) or a MUSCL limiter name.
    """

    def __init__(self, shape: tuple[int, ...], dx: np.ndarray, limiter: str):
        self.shape = tuple(shape)
        self.dx = np.asarray(dx, float)
        self.code = LIMITER_CODES[limiter]
        self.lines = [_lines(self.shape, a) for a in range(len(shape))]
        self.ghost = [np.zeros((A, n + 4, C) if C > 1 else (A, n + 4)) for A, n, C in self.lines]
        self.face_area = [float(np.prod(np.delete(self.dx, a))) for a in range(len(shape))]

    def rhs(self, rho: np.ndarray, u: list[np.ndarray], out: np.ndarray) -> float:
        """Write -div(rho u) into ``out``; return the outflow rate (mass per unit depth).

        Args:
            rho: cell averages, shape ``shape``.
            u: per axis, the normal velocity at the faces (n_a + 1 along axis a).
            out: written, shape ``shape``.
        """
        out.fill(0.0)
        outflow = 0.0
        for a, (A, n, C) in enumerate(self.lines):
            g = self.ghost[a]
            lines = (A, n, C) if C > 1 else (A, n)
            g[:, 2 : n + 2] = rho.reshape(lines)
            face_lines = (A, n + 1, C) if C > 1 else (A, n + 1)
            ua = np.ascontiguousarray(u[a]).reshape(face_lines)
            div = _div_lines if C > 1 else _div_contiguous
            wall = div(g, ua, self.code, 1.0 / self.dx[a], out.reshape(lines))
            outflow += wall * self.face_area[a]
        return outflow
