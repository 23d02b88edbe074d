"""In-context linear regression: the data generator, the uniform-feature context law and a training run."""

import numpy as np
import pytest
from scipy.integrate import dblquad
from scipy.stats import norm

from gridpde.builders import case_document, dump_case
from gridpde.casefile import parse_case
from gridpde.errors import CaseError
from gridpde.grid.mesh import Grid
from gridpde.icl import ICLSpec, regression_prompts
from gridpde.objective.problem import Problem
from gridpde.prompts import GaussianPrompt, RegressionPrompt, TokensPrompt
from gridpde.train.flow import train_heads


def test_uniform_feature_cell_averages_are_exact():
    p = RegressionPrompt(np.array([0.7]), 1.0, 0.2)
    g = Grid((-2.0, -2.5), (2.0, 2.5), (16, 20))
    rho = p.cell_averages(g)
    ex, ey = g.edges(0), g.edges(1)
    for i, j in [(3, 9), (4, 10), (7, 8), (11, 12), (12, 9)]:  # cells across the feature box's edge included
        lo, hi = max(ex[i], -1.0), min(ex[i + 1], 1.0)
        want = 0.0 if hi <= lo else dblquad(lambda y, x: norm.pdf(y, 0.7 * x, 0.2) / 2, lo, hi, ey[j], ey[j + 1],
                                            epsabs=1e-14)[0] / g.cell_volume
        assert abs(rho[i, j] - want) <= 1e-12
    assert abs(g.mass(rho) - 1.0) <= 1e-12 and rho.min() >= 0.0


@pytest.mark.parametrize("w", [[0.7], [0.5, -0.8]])
def test_uniform_feature_quadrature_tokens_have_the_exact_moments(w):
    w = np.array(w)
    p = RegressionPrompt(w, 1.5, 0.3)
    X, W = p.gauss_tokens(6)
    k = w.size
    cov = np.empty((k + 1, k + 1))
    cov[:k, :k] = 1.5**2 / 3 * np.eye(k)
    cov[:k, k] = cov[k, :k] = 1.5**2 / 3 * w
    cov[k, k] = 1.5**2 / 3 * (w @ w) + 0.09
    assert abs(W.sum() - 1) <= 1e-14 and np.abs(W @ X).max() <= 1e-14
    R = X - W @ X
    assert np.abs((R * W[:, None]).T @ R - cov).max() <= 1e-13


def test_generator_is_seeded_and_labels_are_the_tasks_predictions():
    spec = ICLSpec(prompts=3, features="gaussian", scale=0.5, noise=0.1, queries=4, seed=7)
    prompts, queries, tasks = regression_prompts(spec, 2)
    again = regression_prompts(spec, 2)
    assert np.array_equal(tasks, again[2]) and tasks.shape == (3, 1)
    for p, q, w in zip(prompts, queries, tasks):
        assert isinstance(p, GaussianPrompt)
        assert np.allclose(p.cov, [[0.25, 0.25 * w[0]], [0.25 * w[0], 0.25 * w[0] ** 2 + 0.01]])
        assert np.array_equal(q.points[:, 1], np.zeros(4))
        assert np.array_equal(q.labels[:, 0], q.points[:, 0] * w[0])
    uni = regression_prompts(ICLSpec(prompts=2, features="uniform", queries=2), 3)[0]
    assert all(isinstance(p, RegressionPrompt) and p.dim == 3 for p in uni)
    toks, tq, tasks = regression_prompts(ICLSpec(prompts=2, examples=50, noise=0.0), 2)
    assert isinstance(toks[0], TokensPrompt) and toks[0].points.shape == (50, 2)
    assert np.allclose(toks[0].points[:, 1], toks[0].points[:, 0] * tasks[0, 0])
    # every context size n shares the tasks and queries of the law version
    law, lq, law_tasks = regression_prompts(ICLSpec(prompts=2, noise=0.1), 2)
    assert np.array_equal(tasks, law_tasks) and np.array_equal(tq[1].points, lq[1].points)


ICL = '''[icl]
prompts = 3
features = "{features}"
scale = 0.5
noise = 0.1
queries = 6
examples = {examples}
seed = 2
'''


def _icl_case(method="particles", features="gaussian", examples=0, train=None):
    doc = case_document(2, cells=24 if method == "grid" else None, box=6.0, layers=1, heads=2, init=(0.3, 1),
                        prompts=[], loss={"kind": "readout"}, train=train,
                        solver={"method": method, "tokens": 256, "mass_tol": 1e-3})
    del doc["prompts"]
    return parse_case(dump_case(doc) + ICL.format(features=features, examples=examples))


@pytest.mark.parametrize("features", ["gaussian", "uniform"])
def test_icl_training_on_particles_lowers_the_readout_risk(features):
    case = _icl_case("particles", features, train={"steps": 10, "lr": 100.0})
    problem = Problem(case)
    r0 = problem.risk(case.heads).risk
    trivial = np.mean([q.weights @ q.labels[:, 0] ** 2 for q in case.queries])
    assert abs(r0 - trivial) <= 0.5 * trivial  # small heads barely move the queries: near the trivial predictor
    state, record = train_heads(case, problem=problem)
    final = problem.risk(state.heads).risk
    assert record.risk[0] == pytest.approx(r0, rel=1e-12)
    assert final < 0.5 * r0, (r0, record.risk, final)


def test_icl_readout_gradient_on_the_grid_matches_finite_differences():
    from gridpde.objective.gradcheck import gradient_checks

    case = _icl_case("grid", "uniform")
    risk, checks, taylor = gradient_checks(Problem(case), case.heads, eps=1e-5)
    for c in checks:
        assert c.rel_error <= 1e-6, (c.block, c.adjoint, c.finite_difference)


@pytest.mark.parametrize("text, key", [
    ("[icl]\nnoise = 0.0\n", "icl.noise"),
    ("[icl]\nfeatures = \"laplace\"\n", "icl.features"),
    ("[icl]\nprompts = 0\n", "icl.prompts"),
    ("[icl]\ncontext = 3\n", "icl.context"),
])
def test_bad_icl_tables_name_the_key(text, key):
    doc = case_document(2, cells=8)
    del doc["prompts"]
    with pytest.raises(CaseError, match=key):
        parse_case(dump_case(doc) + text)


def test_icl_and_prompts_together_are_refused():
    with pytest.raises(CaseError, match=r"\[icl\] and \[\[prompts\]\]"):
        parse_case(dump_case(case_document(2, cells=8)) + "[icl]\nprompts = 2\n")


def test_an_overshooting_trial_does_not_refine_the_grid_schedule_for_good():
    """lr = 100 on the grid: trials that need far more depth steps are halved instead of refining the
    schedule (it grew from 3 to 1024 steps per evaluation in 4 steps before), and the risk still falls."""
    from dataclasses import replace

    from gridpde.icl import ICLSpec
    from gridpde.validation.icl_studies import icl_case

    spec = ICLSpec(prompts=3, features="gaussian", scale=0.5, noise=0.1, queries=8, seed=0)
    case = icl_case("grid", spec, 2, cells=16, train={"steps": 6, "lr": 100.0})
    problem = Problem(case)
    state, record = train_heads(case, problem=problem)
    fresh = Problem(replace(case, heads=state.heads)).depth_steps  # what the final heads need on their own
    assert record.depth_steps[-1] <= 4 * max(fresh, 3), (record.depth_steps, fresh)
    assert problem.risk(state.heads).risk < 0.5 * record.risk[0]
