"""[model] horizon and aggregate scale the velocity; [solver] quadrature_sigmas sets the token box."""

from dataclasses import replace

import numpy as np
import pytest

from gridpde.builders import case_document, dump_case, gaussian
from gridpde.casefile import parse_case
from gridpde.errors import CaseError
from gridpde.heads import Heads
from gridpde.objective.problem import Problem


def _cases(method, option):
    base = case_document(2, cells=16, box=5.0, init=(0.5, 3), heads=2, prompts=[gaussian([0.1, 0.0], np.eye(2) * 0.4)],
                         loss={"kind": "potential"}, solver={"method": method, "tokens": 64, "mass_tol": 1e-2})
    scaled = parse_case(dump_case({**base, "model": {**base["model"], **option}}))
    plain = parse_case(dump_case(base))
    doubled = Heads(plain.heads.Q, plain.heads.K, 2.0 * plain.heads.V)
    return scaled, replace(plain, heads=doubled), doubled  # the grid plans its depth steps from the case's heads


@pytest.mark.parametrize("method", ["grid", "particles"])
@pytest.mark.parametrize("option", [{"horizon": 2.0}, {"aggregate": "sum"}], ids=["horizon-2", "sum-of-2-heads"])
def test_horizon_and_sum_are_the_velocity_times_a_factor(method, option):
    """T = 2, or the sum of M = 2 heads: the dynamics of V doubled, bit for bit; dR/dV carries the factor."""
    scaled, plain, doubled = _cases(method, option)
    a = Problem(scaled).risk_and_grad(scaled.heads)
    b = Problem(plain).risk_and_grad(doubled)
    assert a.risk == b.risk
    np.testing.assert_array_equal(a.grad.V, 2.0 * b.grad.V)
    np.testing.assert_array_equal(a.grad.Q, b.grad.Q)


def test_quadrature_sigmas_sets_the_token_box():
    base = case_document(1, cells=None, prompts=[gaussian([0.0], [[1.0]])], solver={"method": "particles",
                                                                                  "tokens": 100})
    from gridpde.method import make_method

    for sig in (4.0, 8.0):
        case = parse_case(dump_case({**base, "solver": {**base["solver"], "quadrature_sigmas": sig}}))
        X = make_method(case).case_states()[0].X
        assert abs(np.abs(X).max() - sig * (1 - 1 / 100)) < 1e-12


@pytest.mark.parametrize("key, value", [("horizon", 0.0), ("horizon", "long"), ("aggregate", "max")])
def test_bad_model_options_name_the_key(key, value):
    doc = case_document(1, cells=16)
    doc["model"][key] = value
    with pytest.raises(CaseError, match=f"model.{key}"):
        parse_case(dump_case(doc))
