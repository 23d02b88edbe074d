import numpy as np
import pytest

from gridpde.grid.forward import GridForward, layer_intervals
from gridpde.grid.mesh import Grid
from gridpde.prompts import gaussian_cell_averages
from gridpde.validation.problems import gaussian_problem


def test_layer_intervals_hit_layer_boundaries_exactly():
    assert layer_intervals(3, 0.0, 1.0) == [(0.0, 1 / 3, 0), (1 / 3, 2 / 3, 1), (2 / 3, 1.0, 2)]
    assert layer_intervals(2, 0.25, 0.75) == [(0.25, 0.5, 0), (0.5, 0.75, 1)]
    assert layer_intervals(4, 0.5, 0.75) == [(0.5, 0.75, 2)]


@pytest.mark.parametrize("time", ["euler", "ssprk2", "ssprk3"])
def test_step_is_the_ssp_combination_of_euler_steps(time):
    p = gaussian_problem(1)
    grid = Grid((-6.0,), (6.0,), (60,))
    rho = gaussian_cell_averages(grid, p.mean, p.cov)
    solver = GridForward(grid, p.B, p.V, "mc", time)
    dt = 0.01

    def euler(u):
        st = solver.rhs(u, 0)
        return u + dt * st.drho

    if time == "euler":
        expect = euler(rho)
    elif time == "ssprk2":
        expect = 0.5 * rho + 0.5 * euler(euler(rho))
    else:
        u1 = euler(rho)
        u2 = 0.75 * rho + 0.25 * euler(u1)
        expect = rho / 3 + 2 / 3 * euler(u2)
    got, lost, _, _ = solver.step(rho, dt, 0)
    assert np.abs(got - expect).max() <= 1e-15 * rho.max()


def test_mass_is_conserved_and_density_positive_when_mass_leaves():
    """A box too small for the flow: mass leaves, and in + out stays the initial mass."""
    p = gaussian_problem(2)
    grid = Grid((-2.0, -2.0), (2.0, 2.0), (32, 32))
    rho0 = gaussian_cell_averages(grid, p.mean, p.cov)
    solver = GridForward(grid, p.B, p.V, "mc")
    rho, lost, steps = solver.solve(rho0, 0.0, 1.0)
    assert lost > 1e-3
    assert abs(grid.mass(rho) + lost - grid.mass(rho0)) <= 1e-13 * grid.mass(rho0)
    assert rho.min() >= -1e-14 * rho.max()


def test_steps_refine_with_the_grid_at_fixed_cfl():
    p = gaussian_problem(1)
    steps = []
    for n in (50, 100):
        grid = p.grid(n)
        rho0 = gaussian_cell_averages(grid, p.mean, p.cov)
        steps.append(GridForward(grid, p.B, p.V, "mc", cfl=0.4).solve(rho0, 0.0, 1.0)[2])
    assert 1.7 <= steps[1] / steps[0] <= 2.3
