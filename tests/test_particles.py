import numpy as np
from gridpde.attention.direct import attention_velocity
from gridpde.twins.attention import reference_velocity
from gridpde.attention.tensor import tensor_velocity
from gridpde.prompts import GaussianPrompt, TokensPrompt, UniformPrompt
from gridpde.grid.forward import GridForward
from gridpde.heads import pad3, pad_points
from gridpde.particles.solver import ParticleForward, token_moments
from gridpde.prompts import gaussian_cell_averages
from gridpde.validation.problems import gaussian_problem


def test_euler_with_one_substep_is_the_residual_transformer(rng):
    """X <- X + (1/L) (1/M) sum_j V_j softmax-attention, layer by layer, in plain numpy."""
    L, M, d, n = 3, 2, 2, 50
    B = rng.normal(scale=0.5, size=(L, M, d, d))
    V = rng.normal(scale=0.5, size=(L, M, d, d))
    X = rng.normal(size=(n, d))
    w = rng.random(n)
    w /= w.sum()
    expect = X.copy()
    for layer in range(L):
        P = pad_points(expect)
        v, _ = reference_velocity(P, P, w, pad3(B[layer]), pad3(V[layer]))
        expect = expect + v[:, 3 - d :] / L
    got = ParticleForward(B, V, "euler", 1).solve(X, w, 0, L)
    np.testing.assert_allclose(got, expect, rtol=0, atol=1e-13)


def test_rk4_quadrature_tokens_follow_the_exact_gaussian():
    problem = gaussian_problem(2)
    (m1,), (S1,) = problem.exact()
    X, w = GaussianPrompt(problem.mean, problem.cov).tokens(1024, "quadrature")
    out = ParticleForward(problem.B, problem.V, "rk4", 8).solve(X, w, 0, 16)
    _, m, S = token_moments(out, w)
    assert np.abs(m - m1).max() < 1e-7 and np.abs(S - S1).max() < 1e-7


def test_rk4_converges_at_fourth_order_in_depth():
    problem = gaussian_problem(1)
    (m1,), (S1,) = problem.exact()
    X, w = GaussianPrompt(problem.mean, problem.cov).tokens(400, "quadrature")
    errs = []
    for sub in (2, 4, 8):
        out = ParticleForward(problem.B, problem.V, "rk4", sub).solve(X, w, 0, 2 * sub)
        _, m, S = token_moments(out, w)
        errs.append(max(abs(m - m1).max(), abs(S - S1).max()))
    order = np.polyfit(np.log([2, 4, 8]), np.log(errs), 1)[0]
    assert order < -3.6, errs


def test_token_initialisations():
    g = GaussianPrompt(np.array([0.5, -1.0]), np.array([[1.0, 0.3], [0.3, 0.5]]))
    X1, w1 = g.tokens(500, "sample", seed=7)
    X2, _ = g.tokens(500, "sample", seed=7)
    assert X1.shape == (500, 2) and np.array_equal(X1, X2) and np.allclose(w1, 1 / 500)
    Xq, wq = g.tokens(900, "quadrature")
    assert abs(wq.sum() - 1) < 1e-15 and len(wq) <= 900
    _, m, S = token_moments(Xq, wq)
    np.testing.assert_allclose(m, g.mean, atol=1e-12)
    np.testing.assert_allclose(S, g.cov, atol=1e-12)
    Xu, wu = UniformPrompt(np.array([0.0]), np.array([2.0])).tokens(10, "quadrature")
    np.testing.assert_allclose(Xu[:, 0], 0.1 + 0.2 * np.arange(10))
    np.testing.assert_allclose(wu, 0.1)
    pts = np.array([[0.0], [1.0]])
    Xt, wt = TokensPrompt(pts, np.array([0.25, 0.75])).tokens(99, "sample")
    assert np.array_equal(Xt, pts) and np.array_equal(wt, [0.25, 0.75])


def test_grid_and_particle_kernels_compute_the_same_sums():
    """Sources at cell centres with cell masses: tensor (grid) and direct (particles) agree."""
    problem = gaussian_problem(2)
    grid = problem.grid(40)
    rho = gaussian_cell_averages(grid, problem.mean, problem.cov)
    solver = GridForward(grid, problem.B, problem.V, quadrature="midpoint")
    w = rho * grid.cell_volume
    out = np.empty((solver.targets.shape[0], 3))
    lse = np.empty((2, solver.targets.shape[0]))
    tensor_velocity(solver.targets, w.reshape(grid.padded_shape), *solver.sources, solver.B[0],
                    solver.V[0], solver.h, out, lse)
    Y = np.stack(np.meshgrid(*solver.sources, indexing="ij"), -1).reshape(-1, 3)
    ref, ref_lse = attention_velocity(solver.targets, Y, w.ravel().copy(), solver.B[0], solver.V[0])
    assert np.abs(out - ref).max() <= 1e-12 * np.abs(ref).max()
    assert np.abs(lse - ref_lse).max() <= 1e-12 * np.abs(ref_lse).max()
