"""The tilted-mean table inside the grid method: forward, adjoint, gradient checks, against exact sums."""

import numpy as np
import pytest

from gridpde.builders import case_document, dump_case, gaussian, mixture
from gridpde.casefile import parse_case
from gridpde.grid.adjoint import backward
from gridpde.grid.forward import GridForward, Tape
from gridpde.grid.mesh import Grid
from gridpde.heads import Heads
from gridpde.objective.gradcheck import gradient_checks
from gridpde.objective.problem import Problem
from gridpde.prompts import gaussian_cell_averages

PROMPTS_2D = [mixture([0.5, 0.5], [[-1.0, 0.2], [1.0, -0.3]], [[[0.4, 0.1], [0.1, 0.3]], [[0.3, 0.0], [0.0, 0.5]]])]


def _case(attention: str, tol: float = 1e-10):
    doc = case_document(2, box=6.0, cells=24, init=(0.6, 3), prompts=PROMPTS_2D, teacher=(0.6, 4),
                        solver={"scheme": "muscl", "attention": attention, "attention_tol": tol, "mass_tol": 1e-3})
    return parse_case(dump_case(doc))


@pytest.mark.parametrize("tol", [1e-6, 1e-10])
def test_table_forward_matches_exact_sums_within_tol(tol):
    grid = Grid((-6.0, -6.0), (6.0, 6.0), (32, 32))
    rho = gaussian_cell_averages(grid, np.array([0.3, -0.2]), np.array([[0.5, 0.1], [0.1, 0.4]]))
    h = Heads.random(1, 4, 2, 2, 0.7, 5)
    exact = GridForward(grid, h.B, h.V, attention="exact")
    table = GridForward(grid, h.B, h.V, attention="table", attention_tol=tol)
    u_exact, none = exact.face_velocity(rho, 0)
    u_table, tab = table.face_velocity(rho, 0)
    assert none is None and tab is not None and table.stats.table == 1
    scale = max(np.abs(u).max() for u in u_exact)
    err = max(np.abs(a - b).max() for a, b in zip(u_exact, u_table)) / scale
    assert err <= tol, err
    assert 0.0 < table.stats.max_error <= tol  # the checked estimate, within the tolerance
    assert err <= 10 * table.stats.max_error  # and an estimate of the error, not a bound far above it


def test_table_adjoint_is_the_transpose_of_the_table_forward():
    """<J^T lam, drho> = <lam, J drho> for the whole solve with tables (panels frozen), by finite
    differences of the forward along drho."""
    grid = Grid((-6.0, -6.0), (6.0, 6.0), (20, 20))
    rho = gaussian_cell_averages(grid, np.array([0.3, -0.2]), np.array([[0.5, 0.1], [0.1, 0.4]]))
    h = Heads.random(1, 2, 2, 2, 0.7, 1)
    solver = GridForward(grid, h.B, h.V, "upwind", "euler", attention="table", attention_tol=1e-12)
    tape = Tape()
    rho1, _, n = solver.solve(rho, 0.0, 1.0, tape=tape)
    rng = np.random.default_rng(0)
    lam = rng.normal(size=rho1.shape)
    lam0, _, _ = backward(solver, tape, lam)
    drho = rng.normal(size=rho.shape) * rho  # relative perturbation: keeps rho >= 0
    eps = 1e-6
    sched = [n]
    up = solver.solve(rho + eps * drho, 0.0, 1.0, schedule=list(sched))[0]
    down = solver.solve(rho - eps * drho, 0.0, 1.0, schedule=list(sched))[0]
    fd = np.sum(lam * (up - down)) / (2 * eps)
    assert abs(fd - np.sum(lam0 * drho)) <= 1e-6 * abs(fd)


@pytest.fixture
def trees(monkeypatch):
    """Every tensor table is too large: the table method takes a tree of panels at every stage."""
    import gridpde.attention.table as tb

    def too_large(*args, **kwargs):
        raise tb.TableTooLarge("forced")

    monkeypatch.setattr(tb, "build_table", too_large)


@pytest.mark.parametrize("kind", ["tensor", "tree"])
def test_table_gradient_passes_gradcheck_and_matches_the_exact_gradient(kind, request):
    """On the tensor table, and on trees (every tensor table forced too large)."""
    if kind == "tree":
        request.getfixturevalue("trees")
    table = Problem(_case("table"))
    exact = Problem(_case("exact"))
    heads = table.case.heads
    risk, checks, taylor = gradient_checks(table, heads, eps=1e-5)
    for c in checks:
        assert c.rel_error <= 1e-5, (c.block, c.adjoint, c.finite_difference)
    assert 1.8 <= taylor.slope <= 2.2, taylor.remainder
    g_table = table.risk_and_grad(heads)
    g_exact = exact.risk_and_grad(heads)
    assert abs(g_table.risk - g_exact.risk) <= 1e-8 * g_exact.risk
    diff = np.linalg.norm(g_table.grad.flat() - g_exact.grad.flat()) / np.linalg.norm(g_exact.grad.flat())
    assert diff <= 1e-6, diff


def test_auto_takes_exact_sums_on_small_grids_and_the_table_on_large_ones():
    small = GridForward(Grid((-1.0,), (1.0,), (64,)), np.ones((1, 1, 1, 1)), np.ones((1, 1, 1, 1)), attention="auto")
    large = GridForward(Grid((-1.0, -1.0), (1.0, 1.0), (64, 64)), np.ones((1, 1, 2, 2)), np.ones((1, 1, 2, 2)),
                        attention="auto")
    assert not small.use_table and large.use_table
    # 3-D: 16^3 cells (as many as the 2-D 64^2) take exact sums, where the table was 3-50x slower
    def auto3(n):
        return GridForward(Grid((-1.0,) * 3, (1.0,) * 3, (n,) * 3), np.ones((1, 1, 3, 3)), np.ones((1, 1, 3, 3)),
                           attention="auto").use_table
    assert not auto3(16) and not auto3(24) and auto3(32)


def test_stages_start_from_the_previous_table_and_recompute_bit_for_bit():
    """Within a layer each stage's table starts from the last one's panels (a warm start); a tape
    that keeps no stages recomputes them from the recorded layouts, so the backward pass is the same."""
    grid = Grid((-6.0, -6.0), (6.0, 6.0), (20, 20))
    rho = gaussian_cell_averages(grid, np.array([0.3, -0.2]), np.array([[0.5, 0.1], [0.1, 0.4]]))
    h = Heads.random(2, 2, 2, 2, 0.7, 1)
    solver = GridForward(grid, h.B, h.V, "vanleer", "ssprk2", attention="table", attention_tol=1e-10)
    kept, none = Tape(), Tape(budget_bytes=0)
    rho1, _, n = solver.solve(rho, 0.0, 1.0, tape=kept)
    rho2, _, _ = solver.solve(rho, 0.0, 1.0, tape=none)
    assert np.array_equal(rho1, rho2) and n >= 4
    assert all(rec.stages is None for rec in none.steps)
    layouts = [rec.layout for rec in kept.steps]
    # one cold start per layer interval
    assert layouts[0] is None and sum(lay is not None for lay in layouts) >= len(layouts) - 2
    lam = np.random.default_rng(0).normal(size=rho1.shape)
    for x, y in zip(backward(solver, kept, lam), backward(solver, none, lam)):  # dR/drho(0), dR/dB, dR/dV
        assert np.array_equal(x, y)


def test_a_fallback_is_passed_on_so_the_next_stage_takes_exact_sums_at_once():
    from gridpde.attention.table import table_velocity
    from gridpde.attention.tensor import tensor_velocity

    grid = Grid((-6.0, -6.0), (6.0, 6.0), (16, 16))
    rho = gaussian_cell_averages(grid, np.array([0.3, -0.2]), np.array([[0.5, 0.1], [0.1, 0.4]]))
    h = Heads.random(1, 3, 2, 2, 0.7, 5)
    solver = GridForward(grid, h.B, h.V, attention="table")
    w = (rho * grid.cell_volume).reshape(grid.padded_shape)
    args = (solver.targets, w, *solver.sources, solver.B[0], solver.V[0], solver.h)
    exact = np.empty((len(solver.targets), 3))
    tensor_velocity(*args, exact, np.empty((3, len(solver.targets))))
    out = np.empty_like(exact)
    first = table_velocity(*args, out, max_nodes=10)  # no table fits: exact sums, and a layout saying so
    assert first["method"] == "exact" and "too large" in first["reason"] and first["layout"].breaks is None
    assert np.array_equal(out, exact)
    second = table_velocity(*args, out, layout=first["layout"])  # same box: straight to exact sums
    assert second["method"] == "exact" and "earlier stage" in second["reason"] and np.array_equal(out, exact)
    third = table_velocity(*args, out, layout=None)  # without it the table is tried (and fits)
    assert third["method"] == "table" and third["layout"].breaks is not None
    again = table_velocity(*args, out, layout=third["layout"])  # and its layout starts the next call
    assert again["method"] == "table" and again["warm"] and np.abs(out - exact).max() <= 1e-8 * np.abs(exact).max()


@pytest.mark.parametrize("dim", [2, 3])
def test_with_trees_the_adjoint_is_the_transpose_and_recomputes_bit_for_bit(dim, trees):
    """Every stage on a tree: the adjoint of the whole solve against central differences (to 1e-9: the
    tolerance is tight enough that the perturbed solves build the same leaves), and a tape that keeps no
    stages recomputes them bit for bit from the recorded layouts (the leaves)."""
    n, scale, tol = (16, 0.7, 1e-12) if dim == 2 else (8, 0.3, 1e-9)
    grid = Grid((-6.0,) * dim, (6.0,) * dim, (n,) * dim)
    mean = np.array([0.3, -0.2, 0.1][:dim])
    rho = gaussian_cell_averages(grid, mean, 0.4 * np.eye(dim) + 0.05)
    h = Heads.random(1, 2, dim, dim, scale, 1)
    solver = GridForward(grid, h.B, h.V, "upwind", "ssprk2", attention="table", attention_tol=tol)
    kept, none = Tape(), Tape(budget_bytes=0)
    rho1, _, n_steps = solver.solve(rho, 0.0, 1.0, tape=kept)
    assert solver.stats.trees == solver.stats.calls > 0 and solver.stats.fallbacks == 0
    rng = np.random.default_rng(0)
    lam = rng.normal(size=rho1.shape)
    lam0, Bb, Vb = backward(solver, kept, lam)
    rho2, _, _ = solver.solve(rho, 0.0, 1.0, tape=none)  # no stages kept: recomputed from the recorded layouts
    assert np.array_equal(rho1, rho2)
    for x, y in zip((lam0, Bb, Vb), backward(solver, none, lam)):
        assert np.array_equal(x, y)
    drho = rng.normal(size=rho.shape) * rho
    eps = 1e-6
    up = solver.solve(rho + eps * drho, 0.0, 1.0, schedule=[n_steps])[0]
    down = solver.solve(rho - eps * drho, 0.0, 1.0, schedule=[n_steps])[0]
    fd = np.sum(lam * (up - down)) / (2 * eps)
    assert abs(fd - np.sum(lam0 * drho)) <= 1e-9 * abs(fd)


@pytest.mark.parametrize("kind", ["tensor", "tree"])
def test_the_backward_kernels_skip_only_cotangents_below_round_off(kind, request, monkeypatch):
    """VJP_SKIP leaves out the faces whose cotangent is below 2^-56 of the largest: on a teacher-student
    gradient many faces are skipped, and the gradient equals the one that sums every face to round-off."""
    from gridpde.attention import table as tb
    from gridpde.attention import tree

    if kind == "tree":
        request.getfixturevalue("trees")
    skipped = []
    sums = tb._backward_sums

    def counting(backward, table, targets, Bc, Vc, ubar):
        size = np.abs(ubar).sum(axis=1)
        skipped.append(np.mean(size <= tb.VJP_SKIP * size.max()))
        assert (backward is tree._tree_backward) == (kind == "tree")
        return sums(backward, table, targets, Bc, Vc, ubar)

    monkeypatch.setattr(tb, "_backward_sums", counting)
    monkeypatch.setattr(tree, "_backward_sums", counting)
    case = _case("table", 1e-8)
    grads = []
    for skip in (tb.VJP_SKIP, 0.0):
        monkeypatch.setattr(tb, "VJP_SKIP", skip)
        skipped.clear()
        grads.append(Problem(case).risk_and_grad(case.heads).grad.flat())
        if skip:
            assert np.mean(skipped) > 0.05, np.mean(skipped)  # the test exercises the skip
    assert np.abs(grads[0] - grads[1]).max() <= 1e-14 * np.abs(grads[1]).max()
