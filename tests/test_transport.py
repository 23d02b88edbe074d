import numpy as np
import pytest

from gridpde.grid.transport import LIMITER_CODES, Transport
from gridpde.twins.transport import fv_rhs_numpy

#: every test here runs with the serial and with the parallel kernel builds
pytestmark = pytest.mark.usefixtures("kernel_build")



def _faces(rng, shape):
    return [
        rng.normal(size=tuple(n + 1 if a == ax else n for a, n in enumerate(shape)))
        for ax in range(len(shape))
    ]


@pytest.mark.parametrize("shape", [(30,), (20, 17), (7, 8, 9)])
@pytest.mark.parametrize("limiter", list(LIMITER_CODES))
def test_kernel_matches_numpy_twin_and_conserves(rng, shape, limiter):
    d = len(shape)
    rho = rng.random(shape)
    u = _faces(rng, shape)
    dx = rng.uniform(0.1, 0.3, d)
    out = np.empty(shape)
    outflow = Transport(shape, dx, limiter).rhs(rho, u, out)
    pad = (1,) * (3 - d)
    ref, ref_out = fv_rhs_numpy(
        rho.reshape(pad + shape),
        [np.zeros(1)] * (3 - d) + [x.reshape(pad + x.shape) for x in u],
        np.r_[[1.0] * (3 - d), dx],
        d,
        limiter,
    )
    assert np.abs(out - ref.reshape(shape)).max() <= 1e-13 * np.abs(ref).max()
    assert outflow == pytest.approx(ref_out, rel=1e-13)
    # what leaves the cells is exactly what crosses the walls
    assert abs(out.sum() * np.prod(dx) + outflow) <= 1e-13 * np.abs(out).sum() * np.prod(dx)
    assert outflow >= 0.0


@pytest.mark.parametrize("limiter", list(LIMITER_CODES))
def test_euler_step_at_positivity_limit_keeps_density_nonnegative(rng, limiter):
    shape = (40, 30)
    rho = rng.random(shape) * (rng.random(shape) > 0.5)  # rough data with zeros
    u = _faces(rng, shape)
    dx = np.array([0.1, 0.2])
    rate = sum(np.abs(ua).max() / h for ua, h in zip(u, dx))
    dt = 0.5 / rate
    out = np.empty(shape)
    Transport(shape, dx, limiter).rhs(rho, u, out)
    new = rho + dt * out
    assert new.min() >= -1e-15 * rho.max()


def test_upwind_is_first_order_donor_cell():
    rho = np.array([0.0, 1.0, 2.0, 0.0])
    u = [np.array([0.0, 1.0, 1.0, -1.0, -1.0])]
    out = np.empty(4)
    outflow = Transport((4,), np.array([1.0]), "upwind").rhs(rho, u, out)
    # fluxes: 0, 0 (from cell 0), 1 (from cell 1), -0 (from cell 3, empty), wall -1 * 0
    np.testing.assert_allclose(out, [0.0, -1.0, 1.0, 0.0])
    assert outflow == 0.0
