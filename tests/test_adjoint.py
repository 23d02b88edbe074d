"""Exact gradients: the adjoint against central differences and Taylor tests."""

import numpy as np
import pytest

from gridpde.builders import case_document, dump_case, gaussian, mixture
from gridpde.casefile import parse_case
from gridpde.heads import Heads
from gridpde.objective.gradcheck import gradient_checks
from gridpde.objective.problem import Problem

CASE_1D = case_document(init=(0.7, 1), loss={"kind": "mmd", "sigma": 0.8}, teacher=(0.7, 2),
                        solver={"tokens": 60})
CASE_2D = case_document(
    2, cells=20, init=(0.6, 3), loss={"kind": "mmd", "sigma": 1.0}, solver={"tokens": 100, "mass_tol": 0.05},
    prompts=[mixture([0.5, 0.5], [[-1.0, 0.2], [1.0, -0.3]], [[[0.4, 0.1], [0.1, 0.3]], [[0.3, 0.0], [0.0, 0.5]]],
                     target=gaussian([0.5, 0.5], [[0.6, 0.0], [0.0, 0.4]]))])


def _case(doc, method="grid", scheme="upwind", time="ssprk3", integrator="rk4", **solver):
    doc = {**doc, "solver": {**doc["solver"], "method": method, "scheme": scheme, "time": time,
                             "integrator": integrator, **solver}}
    return parse_case(dump_case(doc))


def _problem(doc, method="grid", scheme="upwind", time="ssprk3", integrator="rk4"):
    case = _case(doc, method, scheme, time, integrator)
    return Problem(case), case.heads


@pytest.mark.parametrize(
    "text, method, scheme, time, integrator, fd_tol",
    [
        (CASE_1D, "grid", "upwind", "euler", "rk4", 1e-6),
        (CASE_1D, "grid", "upwind", "ssprk3", "rk4", 1e-6),
        (CASE_2D, "grid", "upwind", "ssprk3", "rk4", 1e-6),
        (CASE_1D, "particles", "upwind", "ssprk3", "euler", 1e-6),
        (CASE_1D, "particles", "upwind", "ssprk3", "rk4", 1e-6),
        (CASE_2D, "particles", "upwind", "ssprk3", "rk4", 1e-6),
    ],
    ids=["grid-1d-upwind-euler", "grid-1d-upwind-ssprk3", "grid-2d-upwind-ssprk3",
         "particles-1d-euler", "particles-1d-rk4", "particles-2d-rk4"],
)
def test_gradient_matches_finite_differences_and_taylor(text, method, scheme, time, integrator, fd_tol):
    problem, heads = _problem(text, method, scheme, time, integrator)
    risk, checks, taylor = gradient_checks(problem, heads, eps=1e-5)
    assert risk > 1e-6
    for c in checks:
        assert c.rel_error <= fd_tol, (c.block, c.adjoint, c.finite_difference)
    assert 1.9 <= taylor.slope <= 2.1, (taylor.eps, taylor.remainder)


@pytest.mark.parametrize("text", [CASE_1D, CASE_2D], ids=["1d", "2d"])
def test_muscl_gradient_with_frozen_branches(text):
    """With limiters the branch is frozen at the forward pass: FD agree away from switches."""
    problem, heads = _problem(text, "grid", "muscl", "ssprk3")
    risk, checks, taylor = gradient_checks(problem, heads, eps=1e-6)
    for c in checks:
        assert c.rel_error <= 1e-6, (c.block, c.adjoint, c.finite_difference)
    assert 1.9 <= taylor.slope <= 2.1, (taylor.eps, taylor.remainder)


def test_gradient_is_zero_at_the_teacher():
    problem, heads = _problem(CASE_1D)
    t = problem.case.loss.teacher
    res = problem.risk_and_grad(t)
    assert res.risk < 1e-28
    assert np.abs(res.grad.flat()).max() < 1e-14


def test_schedule_covers_the_teacher_and_refines_for_good():
    """The depth steps are fixed from the case's heads and the teacher's (the larger count per layer);
    heads that need twice the steps for positivity refine the schedule for good: the targets are
    recomputed on it (zero risk at the teacher still), and the result is that of the refined risk."""
    problem, heads = _problem(CASE_1D)
    t = problem.case.loss.teacher
    for h in (heads, t):
        solver = problem.method.solver(h)
        for p, st in enumerate(problem.initial):
            own: list[int] = []
            solver.solve(st.rho, 0.0, 1.0, schedule=own)
            assert all(a >= b for a, b in zip(problem.schedules[p], own))
    before = [list(s) for s in problem.schedules]
    fast_heads = Heads(heads.Q, heads.K, 3.0 * heads.V)
    fast = problem.risk_and_grad(fast_heads)
    refinements = problem.version
    assert refinements >= 1
    assert all(a >= 2 * b for s, s0 in zip(problem.schedules, before) for a, b in zip(s, s0))
    again = problem.risk_and_grad(fast_heads)
    assert problem.version == refinements and again.risk == fast.risk
    fresh, _ = _problem(CASE_1D)
    fresh.use_schedules(problem.schedules)
    assert fresh.risk_and_grad(fast_heads).risk == fast.risk
    assert problem.risk_and_grad(t).risk < 1e-28


@pytest.mark.parametrize("scheme", ["upwind", "muscl"])
def test_adjoint_recompute_path_gives_the_same_gradient(scheme):
    """With a tiny solver.adjoint_memory_mb the adjoint recomputes stage data from each step's start
    state: the gradient is the one that kept everything, bit for bit."""
    problem, heads = _problem(CASE_1D, "grid", scheme)
    full = problem.risk_and_grad(heads)
    tiny = Problem(_case(CASE_1D, "grid", scheme, adjoint_memory_mb=1e-6))
    low = tiny.risk_and_grad(heads)
    assert full.recomputed == 0 and low.recomputed == low.steps > 0
    np.testing.assert_array_equal(low.grad.flat(), full.grad.flat())
    assert low.risk == full.risk
