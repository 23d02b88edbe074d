import numpy as np
import pytest

from gridpde.grid.transport import LIMITER_CODES, Transport
from gridpde.grid.transport_vjp import TransportVJP, transport_vjp
from gridpde.twins.transport import transport_jvp_numpy

#: every test here runs with the serial and with the parallel kernel builds
pytestmark = pytest.mark.usefixtures("kernel_build")


SHAPES = [(30,), (20, 17), (7, 8, 9), (1,), (2,), (3, 1), (1, 2, 4)]


def _face_shape(shape, axis):
    return tuple(n + 1 if a == axis else n for a, n in enumerate(shape))


def _rough(rng, shape):
    """Rough data: zeros in rho, exact zeros among the velocities (u >= 0 branch)."""
    rho = rng.random(shape) * (rng.random(shape) > 0.3)
    u = []
    for ax in range(len(shape)):
        ua = rng.normal(size=_face_shape(shape, ax))
        ua[rng.random(ua.shape) < 0.1] = 0.0
        u.append(ua)
    return rho, u


def _rhs(shape, dx, limiter, rho, u):
    out = np.empty(shape)
    Transport(shape, dx, limiter).rhs(rho, u, out)
    return out


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("limiter", list(LIMITER_CODES))
def test_vjp_is_the_transpose_of_the_jvp(rng, shape, limiter):
    """<J dx, lam> = <dx, J^T lam> for random directions, twice with one TransportVJP."""
    d = len(shape)
    dx = rng.uniform(0.1, 0.3, d)
    vjp = TransportVJP(shape, dx, limiter)
    for _ in range(2):  # the second call reuses the work arrays
        rho, u = _rough(rng, shape)
        drho = rng.normal(size=shape)
        du = [rng.normal(size=ua.shape) for ua in u]
        lam = rng.normal(size=shape)
        jv = transport_jvp_numpy(rho, u, drho, du, dx, limiter)
        rho_bar = np.full(shape, np.nan)
        u_bar = [np.full(ua.shape, np.nan) for ua in u]
        vjp.vjp(rho, u, lam, rho_bar, u_bar)
        lhs = np.sum(jv * lam)
        rhs = np.sum(rho_bar * drho) + sum(np.sum(ub * dua) for ub, dua in zip(u_bar, du))
        scale = np.abs(jv * lam).sum()
        assert abs(lhs - rhs) <= 1e-12 * scale


def test_vjp_accepts_strided_velocities_and_matches_wrapper(rng):
    """Face velocities come from columns of the attention output (non-contiguous views)."""
    shape, dx = (12, 9), np.array([0.2, 0.3])
    rho, u = _rough(rng, shape)
    vel = np.zeros((13 * 9 + 12 * 10, 3))
    vel[: 13 * 9, 1] = u[0].ravel()
    vel[13 * 9 :, 2] = u[1].ravel()
    views = [vel[: 13 * 9, 1].reshape(13, 9), vel[13 * 9 :, 2].reshape(12, 10)]
    assert not views[0].flags.c_contiguous
    lam = rng.normal(size=shape)
    want = transport_vjp(rho, u, lam, dx, "vanleer")
    got = transport_vjp(rho, views, lam, dx, "vanleer")
    np.testing.assert_array_equal(got[0], want[0])
    for g, w in zip(got[1], want[1]):
        np.testing.assert_array_equal(g, w)


def _smooth(rng, shape):
    """Smooth positive rho (O(1) differences between cells) and |u| >= 0.5."""
    d = len(shape)
    x = np.meshgrid(*[np.arange(n) + 0.5 for n in shape], indexing="ij")
    k = rng.uniform(0.4, 0.9, d)
    rho = 1.0 + 0.5 * np.sin(sum(ka * xa for ka, xa in zip(k, x)) + rng.uniform(0, 6))
    u = []
    for ax in range(d):
        xf = np.meshgrid(*[np.arange(m) + (0.0 if a == ax else 0.5) for a, m in enumerate(_face_shape(shape, ax))], indexing="ij")
        phase = sum(0.3 * xa for xa in xf) + rng.uniform(0, 6)
        u.append(np.sign(np.cos(phase)) * (1.0 + 0.4 * np.sin(2 * phase)))
    return rho, u


def _branch_margin(rho, limiter):
    """Smallest change of a limiter operand that flips a branch, over the box's cells."""
    margin = np.inf
    for axis in range(rho.ndim):
        r = np.moveaxis(rho, axis, 0)
        z = np.zeros((1, *r.shape[1:]))
        pad = np.concatenate([z, r, z])
        dm, dp = pad[1:-1] - pad[:-2], pad[2:] - pad[1:-1]
        if limiter == "vanleer":
            ops = [dm, dp]
        elif limiter in ("minmod", "mc"):
            th = 1.0 if limiter == "minmod" else 2.0
            x, y, zz = th * dp, 0.5 * (dp + dm), th * dm
            ops = [x, y, zz, x - y, y - zz, x - zz]
        else:
            ops = []
        for op in ops:
            margin = min(margin, np.abs(op).min())
    return margin


@pytest.mark.parametrize("shape", [(30,), (20, 17), (7, 8, 9)])
@pytest.mark.parametrize("limiter", list(LIMITER_CODES))
def test_jvp_matches_central_differences_away_from_branch_switches(rng, shape, limiter):
    d = len(shape)
    rho, u = _smooth(rng, shape)
    dx = rng.uniform(0.1, 0.3, d)
    drho = rng.normal(size=shape)
    du = [rng.normal(size=ua.shape) for ua in u]
    # no limiter branch flips within +-eps along the direction: the operands
    # (dp, dm, their mean and differences) move by at most 6 eps max|drho|
    big = np.abs(drho).max()
    eps = min(1e-6, _branch_margin(rho, limiter) / (20 * big))
    assert eps > 1e-7
    # and no upwind side changes
    assert min(np.abs(ua).min() for ua in u) > 100 * eps * max(np.abs(x).max() for x in du)

    def f(e):
        return _rhs(shape, dx, limiter, rho + e * drho, [ua + e * dua for ua, dua in zip(u, du)])

    fd = (f(eps) - f(-eps)) / (2 * eps)
    jv = transport_jvp_numpy(rho, u, drho, du, dx, limiter)
    assert np.abs(fd - jv).max() <= 1e-8 * np.abs(jv).max()


def test_frozen_upwind_side_at_zero_velocity():
    """At u = 0 the forward takes the u >= 0 side: the JVP is the derivative from above."""
    shape, dx = (6,), np.array([0.5])
    rho = np.array([1.0, 1.5, 2.5, 3.0, 2.0, 1.0])
    u = [np.array([0.0, 1.0, 1.0, 0.0, -1.0, -1.0, 0.0])]
    du = [np.zeros(7)]
    du[0][3] = 1.0  # the face between cells 2 and 3
    jv = transport_jvp_numpy(rho, u, np.zeros(6), du, dx, "minmod")

    def f(e):
        return _rhs(shape, dx, "minmod", rho, [u[0] + e * du[0]])

    h = 1e-3  # piecewise linear in u: one-sided differences are exact
    above = (f(h) - f(0)) / h
    below = (f(0) - f(-h)) / h
    np.testing.assert_allclose(jv, above, rtol=0, atol=1e-12)
    # from below the face takes the west value of cell 3 instead of the east value of cell 2
    east = 2.5 + 0.5 * 0.5  # minmod slope of cell 2: min(0.5, 0.75, 1.0)
    west = 3.0 - 0.5 * 0.0  # cell 3 is a maximum: zero slope
    jump = (west - east) / dx[0]
    np.testing.assert_allclose(below - above, [0, 0, -jump, jump, 0, 0], atol=1e-12)


@pytest.mark.parametrize("limiter", ["minmod", "mc", "vanleer"])
def test_frozen_limiter_branch_at_a_flat_pair(limiter):
    """rho_1 = rho_2 puts cell 2 on the zero-slope branch; the JVP keeps it there.

    Raising rho_1 keeps dm < 0 < dp for cell 2 (branch kept): that one-sided
    difference agrees with the JVP. Lowering it makes cell 2 monotone (a new
    branch): that one-sided difference does not.
    """
    shape, dx = (6,), np.array([1.0])
    rho = np.array([0.5, 1.0, 1.0, 2.0, 2.5, 2.6])
    u = [np.full(7, 1.0)]
    drho = np.zeros(6)
    drho[1] = 1.0
    jv = transport_jvp_numpy(rho, u, drho, [np.zeros(7)], dx, limiter)

    def f(e):
        return _rhs(shape, dx, limiter, rho + e * drho, u)

    h = 1e-7
    kept = (f(h) - f(0)) / h
    flipped = (f(0) - f(-h)) / h
    np.testing.assert_allclose(jv, kept, rtol=0, atol=1e-7)
    assert np.abs(flipped - jv).max() > 0.1
