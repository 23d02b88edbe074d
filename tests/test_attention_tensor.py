import numpy as np
import pytest

from gridpde.attention.tensor import EXP_ANCHOR, exp_row, langevin, tensor_velocity
from gridpde.grid.mesh import Grid
from gridpde.heads import pad3
from gridpde.prompts import gaussian_cell_averages
from gridpde.twins.attention import tensor_velocity_numpy

#: every test here runs with the serial and with the parallel kernel builds
pytestmark = pytest.mark.usefixtures("kernel_build")



def _problem(rng, shape, scale=1.0, M=3, T=150):
    ys = [np.linspace(-3, 3, n) if n > 1 else np.zeros(1) for n in shape]
    w = rng.random(shape) * (rng.random(shape) > 0.2)
    live = [a for a, n in enumerate(shape) if n > 1]
    targets = np.zeros((T, 3))
    targets[:, live] = rng.normal(size=(T, len(live))) * scale
    B = np.zeros((M, 3, 3))
    V = np.zeros((M, 3, 3))
    ix = np.ix_(range(M), live, live)
    B[ix] = rng.normal(size=(M, len(live), len(live)))
    V[ix] = rng.normal(size=(M, len(live), len(live)))
    h = np.array([6 / (n - 1) if n > 1 else 0.0 for n in shape])
    return targets, w, ys, B, V, h


@pytest.mark.parametrize("shape", [(1, 1, 40), (1, 30, 20), (8, 9, 10)])
@pytest.mark.parametrize("scale", [1.0, 150.0])  # 150: scores ~1e3, the underflow fallback
@pytest.mark.parametrize("deconvolve", [False, True])
def test_kernel_matches_direct_numpy_sums(rng, shape, scale, deconvolve):
    targets, w, ys, B, V, h = _problem(rng, shape, scale)
    h = h if deconvolve else np.zeros(3)
    out = np.empty((len(targets), 3))
    lse = np.empty((B.shape[0], len(targets)))
    tensor_velocity(targets, w, *ys, B, V, h, out, lse)
    ref, ref_lse = tensor_velocity_numpy(targets, w, *ys, B, V, h)
    assert np.abs(out - ref).max() <= 1e-12 * np.abs(ref).max()
    assert np.abs(lse - ref_lse).max() <= 1e-12 * np.abs(ref_lse).max()


def test_all_zero_weights_give_zero_velocity(rng):
    targets, w, ys, B, V, h = _problem(rng, (1, 6, 7))
    out = np.empty((len(targets), 3))
    lse = np.empty((B.shape[0], len(targets)))
    tensor_velocity(targets, np.zeros_like(w), *ys, B, V, np.zeros(3), out, lse)
    assert np.all(out == 0.0) and np.all(lse == -np.inf)


def test_langevin_series_and_closed_form_agree():
    u = np.array([1e-9, 0.1, 0.2499999, 0.25, 0.7, 5.0, 30.0])
    exact = np.array([float(1 / np.tanh(np.float64(x)) - 1 / x) if x > 0.01 else x / 3 - x**3 / 45 + 2 * x**5 / 945 - x**7 / 4725 for x in u])
    got = np.array([langevin(x) for x in u])
    np.testing.assert_allclose(got, exact, rtol=1e-13)
    np.testing.assert_allclose([langevin(-x) for x in u], -exact, rtol=1e-13)


def test_deconvolved_tilted_mean_of_gaussian_is_exact_affine():
    """On cell averages of N(m, S), m(z) = m + S z to near round-off (not O(h^2))."""
    mean, cov = np.array([0.3, -0.2]), np.array([[0.5, 0.1], [0.1, 0.4]])
    grid = Grid((-6.0, -6.0), (6.0, 6.0), (64, 64))
    w = gaussian_cell_averages(grid, mean, cov) * grid.cell_volume
    z = np.array([[0.0, 0.0, 0.0], [0.0, 1.0, -0.5], [0.0, -2.0, 1.5]])
    B = pad3(np.eye(2)[None])
    V = pad3(np.eye(2)[None])
    errs = {}
    for name, h in (("midpoint", np.zeros(3)), ("deconvolved", np.r_[0.0, grid.dx])):
        out = np.empty((3, 3))
        tensor_velocity(z, w.reshape(1, 64, 64), *grid.padded_centres(), B, V, h, out, np.empty((1, 3)))
        errs[name] = np.abs(out[:, 1:] - (mean + z[:, 1:] @ cov)).max()
    assert errs["midpoint"] > 1e-3  # the O(h^2) bias: S z + z h^2 / 12
    assert errs["deconvolved"] < 1e-10


@pytest.mark.parametrize("n", [1, 2, 7, 9, 64, 513])
def test_exp_row_is_exp_to_a_few_ulp(n):
    """The geometric recurrence with exact anchors: exp to the conditioning of its argument
    (EXP_ANCHOR steps of eps |z y|), wherever exp(...) > 1e-250."""
    y = np.linspace(-8.0, 8.0, n) if n > 1 else np.zeros(1)
    for z in (-40.0, -3.3, -1e-3, 0.0, 0.7, 25.0):
        e = np.empty(n)
        top = exp_row(z, y, e)
        assert z * y[top] == (z * y).max()
        exact = np.exp(z * y - (z * y).max())
        big = exact > 1e-250
        tol = EXP_ANCHOR * 4e-16 * (1 + abs(z) * np.abs(y).max())
        assert np.all(np.abs(e[big] / exact[big] - 1) <= tol), (n, z)
        assert np.all(e[~big] <= 1e-249)
