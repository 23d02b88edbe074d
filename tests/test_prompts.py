import numpy as np
import pytest

from gridpde.prompts import GaussianPrompt, MixturePrompt, TokensPrompt, UniformPrompt
from gridpde.errors import CaseError
from gridpde.grid.mesh import Grid
from gridpde.prompts import cell_averages, gaussian_cell_averages


def test_gauss_legendre_matches_erf_products_for_diagonal_covariance():
    grid = Grid((-5.0, -4.0), (5.0, 4.0), (20, 16))
    mean, cov = np.array([0.3, -0.5]), np.diag([0.7, 0.4])
    exact = gaussian_cell_averages(grid, mean, cov)
    tilted = cov + np.array([[0.0, 1e-300], [1e-300, 0.0]])  # forces the quadrature path
    quad = gaussian_cell_averages(grid, mean, tilted)
    assert np.abs(quad - exact).max() <= 1e-13 * exact.max()


def test_correlated_gaussian_has_unit_mass_and_exact_moments():
    grid = Grid((-8.0, -8.0), (8.0, 8.0), (64, 64))
    mean, cov = np.array([0.5, -0.25]), np.array([[0.8, 0.3], [0.3, 0.5]])
    rho, outside = cell_averages(GaussianPrompt(mean, cov), grid)
    mass, m, c = grid.moments(rho)
    assert abs(mass - 1) < 1e-13 and outside < 1e-13
    np.testing.assert_allclose(m, mean, atol=1e-12)
    np.testing.assert_allclose(c, cov, atol=1e-6)  # Sheppard-corrected: O(h^4)


def test_mass_outside_the_box_is_reported():
    grid = Grid((0.0,), (5.0,), (50,))
    rho, outside = cell_averages(GaussianPrompt(np.array([0.0]), np.array([[1.0]])), grid)
    from scipy.special import ndtr

    assert outside == pytest.approx(1.0 - (ndtr(5.0) - 0.5), rel=1e-12)


def test_uniform_and_mixture_and_tokens():
    grid = Grid((-2.0, -2.0), (2.0, 2.0), (8, 8))
    rho, out = cell_averages(UniformPrompt(np.array([-1.25, -0.5]), np.array([0.75, 1.0])), grid)
    assert out < 1e-15 and abs(grid.mass(rho) - 1) < 1e-15
    assert rho.max() == pytest.approx(1 / (2.0 * 1.5))
    mix = MixturePrompt(np.array([0.3, 0.7]), np.array([[-0.5, 0], [0.5, 0.2]]),
                        np.array([np.eye(2) * 0.1, np.eye(2) * 0.2]))
    rho, out = cell_averages(mix, grid)
    assert abs(grid.mass(rho) + out - 1) < 1e-14
    pts = np.array([[0.1, 0.2], [-1.9, 1.95], [1.0, -1.0]])
    wts = np.array([0.2, 0.3, 0.5])
    rho, out = cell_averages(TokensPrompt(pts, wts), grid)
    assert abs(grid.mass(rho) - 1) < 1e-15 and out < 1e-15
    # cloud-in-cell keeps the mean of tokens away from the walls
    rho, _ = cell_averages(TokensPrompt(pts[[0, 2]], np.array([0.5, 0.5])), grid)
    _, m, _ = grid.moments(rho)
    np.testing.assert_allclose(m, pts[[0, 2]].mean(axis=0), atol=1e-14)


def test_token_outside_box_is_a_case_error():
    grid = Grid((-1.0,), (1.0,), (4,))
    with pytest.raises(CaseError, match=r"prompts\[2\].points\[1\]"):
        cell_averages(TokensPrompt(np.array([[0.0], [3.0]]), np.array([0.5, 0.5])), grid, "prompts[2]")


@pytest.mark.parametrize("cells", [(2, 2), (4, 4), (3, 5)])
def test_coarse_cells_over_a_correlated_prompt_lose_no_mass_to_quadrature(cells):
    """Cells much wider than the prompt take more Gauss points: the mass outside the box is the
    tails' (below 1e-12 here), not the rule's error (it was 0.027 on 2 x 2 cells)."""
    grid = Grid((-7.0, -7.0), (7.0, 7.0), cells)
    mix = MixturePrompt([0.5, 0.5], [[-1.5, 0.0], [1.5, 0.5]], [[[0.5, 0.0], [0.0, 0.5]], [[0.4, 0.1], [0.1, 0.3]]])
    _, outside = cell_averages(mix, grid)
    assert outside <= 1e-12


def test_mixture_weights_are_normalised_without_overflow():
    mix = MixturePrompt([1e308, 1e308], [[-1.0], [1.0]], [[[0.2]], [[0.3]]])
    np.testing.assert_array_equal(mix.weights, [0.5, 0.5])
    with pytest.raises(ValueError, match="weights"):
        MixturePrompt([1.0, -1.0], [[-1.0], [1.0]], [[[0.2]], [[0.3]]])


def test_python_prompts_are_validated_like_case_files():
    with pytest.raises(ValueError, match="positive definite"):
        GaussianPrompt([0.0], [[-1.0]])
    with pytest.raises(ValueError, match="finite"):
        GaussianPrompt([np.nan], [[1.0]])
    with pytest.raises(ValueError, match="upper > lower"):
        UniformPrompt([1.0], [0.0])
    with pytest.raises(ValueError, match="weights"):
        TokensPrompt([[0.0], [1.0]], [0.0, 0.0])
