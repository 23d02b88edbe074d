"""Plain-numpy twins of the finite-volume kernels (tests only; whole padded lines, small grids).

See :mod:`gridpde.twins` for what a twin is.
"""

from __future__ import annotations

import numpy as np

from gridpde.grid.transport import VANLEER_TINY

__all__ = ["fv_rhs_numpy", "slope_coeffs_numpy", "transport_jvp_numpy"]


def fv_rhs_numpy(rho, u, dx, dim, limiter):
    """Plain-numpy twin of :meth:`gridpde.grid.transport.Transport.rhs` in the padded layout.

    Args:
        rho: (n0, n1, n2) padded cell averages.
        u: list of three face-velocity arrays.
        dx: (3,) cell sizes.
        dim: number of transported (last) axes.
        limiter: a key of ``LIMITER_CODES``.

    Returns:
        (rate of change of rho, outflow rate).
    """
    out = np.zeros_like(rho)
    outflow = 0.0
    vol = float(np.prod(dx))
    for axis in range(3 - dim, 3):
        r = np.moveaxis(rho, axis, 0)
        pad = np.concatenate([np.zeros((2, *r.shape[1:])), r, np.zeros((2, *r.shape[1:]))])
        dm = pad[1:-1] - pad[:-2]
        dp = pad[2:] - pad[1:-1]
        sigma = slope_coeffs_numpy(pad[:-2], pad[1:-1], pad[2:], limiter)[0]  # cells -1 .. n
        east = pad[1:-1] + 0.5 * sigma
        west = pad[1:-1] - 0.5 * sigma
        uf = np.moveaxis(u[axis], axis, 0)
        flux = np.maximum(uf, 0) * east[:-1] + np.minimum(uf, 0) * west[1:]
        out += np.moveaxis(-(flux[1:] - flux[:-1]) / dx[axis], 0, axis)
        outflow += (flux[-1].sum() - flux[0].sum()) * vol / dx[axis]
    return out, outflow


def slope_coeffs_numpy(rm, r0, rp, limiter):
    """Vectorised twin of :func:`gridpde.grid.transport.slope_and_coeffs` (same branch tests)."""
    dm = r0 - rm
    dp = rp - r0
    zero = np.zeros_like(dm)
    if limiter == "upwind":
        return zero, zero, zero.copy()
    if limiter == "vanleer":
        live = (dm * dp > 0.0) & (np.abs(dm) + np.abs(dp) > VANLEER_TINY)
        inv = 1.0 / np.where(live, dm + dp, 1.0)
        tm, tp = dm * inv, dp * inv
        sigma = 2.0 * dm * tp
        small_m = np.abs(dm) <= np.abs(dp)
        cap = 2.0 * np.where(small_m, dm, dp)
        capped = np.abs(sigma) > np.abs(cap)
        a = np.where(capped, np.where(small_m, 2.0, 0.0), 2.0 * tp * tp)
        b = np.where(capped, np.where(small_m, 0.0, 2.0), 2.0 * tm * tm)
        sigma = np.where(capped, cap, sigma)
        return np.where(live, sigma, 0.0), np.where(live, a, 0.0), np.where(live, b, 0.0)
    theta = 1.0 if limiter == "minmod" else 2.0
    x, y, z = theta * dp, 0.5 * (dp + dm), theta * dm
    pos = (x > 0) & (y > 0) & (z > 0)
    neg = (x < 0) & (y < 0) & (z < 0)
    # index of the picked argument, ties resolved as in slope_and_coeffs
    pick_pos = np.where(y < z, np.where(x < y, 0, 1), np.where(x < z, 0, 2))
    pick_neg = np.where(y > z, np.where(x > y, 0, 1), np.where(x > z, 0, 2))
    pick = np.where(pos, pick_pos, np.where(neg, pick_neg, 3))
    sigma = np.choose(pick, [x, y, z, zero])
    a = np.choose(pick, [zero, 0.5 + zero, theta + zero, zero])
    b = np.choose(pick, [theta + zero, 0.5 + zero, zero, zero])
    return sigma, a, b


def transport_jvp_numpy(rho, u, drho, du, dx, limiter):
    """Forward-mode linearisation of -div F(rho, u), branches frozen, whose transpose is
    :class:`gridpde.grid.transport_vjp.TransportVJP`.

    Args:
        rho, drho: cell averages and their direction (n_1, ..., n_d).
        u, du: lists of d face-velocity arrays and their directions.
        dx: cell sizes per axis.
        limiter: a key of :data:`gridpde.grid.transport.LIMITER_CODES`.

    Returns:
        d out, shape of rho.
    """
    rho = np.asarray(rho, float)
    dout = np.zeros_like(rho)
    for axis in range(rho.ndim):
        r = np.moveaxis(rho, axis, 0)
        dr = np.moveaxis(np.asarray(drho, float), axis, 0)
        zeros = np.zeros((2, *r.shape[1:]))
        pad = np.concatenate([zeros, r, zeros])
        dpad = np.concatenate([zeros, dr, zeros])
        sigma, a, b = slope_coeffs_numpy(pad[:-2], pad[1:-1], pad[2:], limiter)  # cells -1 .. n
        dsigma = a * (dpad[1:-1] - dpad[:-2]) + b * (dpad[2:] - dpad[1:-1])
        east, deast = pad[1:-1] + 0.5 * sigma, dpad[1:-1] + 0.5 * dsigma
        west, dwest = pad[1:-1] - 0.5 * sigma, dpad[1:-1] - 0.5 * dsigma
        uf = np.moveaxis(np.asarray(u[axis], float), axis, 0)
        duf = np.moveaxis(np.asarray(du[axis], float), axis, 0)
        up = uf >= 0.0
        val = np.where(up, east[:-1], west[1:])
        dval = np.where(up, deast[:-1], dwest[1:])
        dflux = duf * val + uf * dval
        dout += np.moveaxis(-(dflux[1:] - dflux[:-1]) / dx[axis], 0, axis)
    return dout
