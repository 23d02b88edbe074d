"""Query tokens: mass-free points moved by the prompt's field, token-wise losses and their exact gradients."""

import numpy as np
import pytest

from gridpde.builders import case_document, dump_case, gaussian
from gridpde.casefile import parse_case
from gridpde.errors import CaseError
from gridpde.method import make_method
from gridpde.objective.gradcheck import gradient_checks
from gridpde.objective.problem import Problem
from gridpde.prompts import Queries
from gridpde.validation.problems import gaussian_problem
from gridpde.validation.query_studies import readout_gradient_errors

QUERIES_2D = {"points": [[-0.5, 0.0], [0.4, 0.1], [1.0, -0.2]], "labels": [[0.3], [-0.2], [0.5]]}
LOSSES = {
    "readout": {"kind": "readout"},
    "flowmap": {"kind": "flowmap", "map": {"A": [[1.1, 0.2], [0.0, 0.9]], "b": [0.1, 0.0]}, "flowmap_points": 4},
    "mmd+readout": {"kind": ["mmd", "readout"], "weights": [1.0, 0.5], "sigma": 1.0},
}


def _case(method, loss, scheme="upwind", dim=2, queries=QUERIES_2D, **solver):
    extra = {} if queries is None else {"queries": queries}
    prompt = gaussian([0.2, -0.1][:dim], np.array([[0.5, 0.1], [0.1, 0.4]])[:dim, :dim], **extra)
    doc = case_document(dim, cells=20 if dim < 3 else 10, init=(0.6, 3), loss=LOSSES[loss] if isinstance(loss, str)
                        else loss, prompts=[prompt], teacher=(0.6, 4) if loss == "mmd+readout" else None,
                        solver={"tokens": 100, "mass_tol": 0.05, "method": method, "scheme": scheme, **solver})
    return parse_case(dump_case(doc))


@pytest.mark.parametrize("method", ["grid", "particles"])
@pytest.mark.parametrize("loss", list(LOSSES))
def test_point_loss_gradients_match_finite_differences_and_taylor(method, loss):
    case = _case(method, loss)
    risk, checks, taylor = gradient_checks(Problem(case), case.heads, eps=1e-5)
    assert risk > 1e-3
    for c in checks:
        assert c.rel_error <= 1e-6, (c.block, c.adjoint, c.finite_difference)
    assert 1.8 <= taylor.slope <= 2.2, (taylor.eps, taylor.remainder)


@pytest.mark.parametrize("dim, queries", [(1, {"points": [-0.4, 0.3], "labels": [0.2, -0.1]}),
                                          (3, {"points": [[0.1, -0.2, 0.3], [0.5, 0.0, -0.4]],
                                               "labels": [[0.1], [0.2]]})], ids=["1d", "3d"])
def test_readout_gradient_on_the_grid_in_1d_and_3d_with_muscl(dim, queries):
    """The padded layouts (leading zero coordinates) and the limiter's frozen branches."""
    prompt = gaussian([0.1] * dim, 0.4 * np.eye(dim), queries=queries)
    doc = case_document(dim, cells=20 if dim == 1 else 8, box=4.0, init=(0.5, 5), loss={"kind": "readout"},
                        prompts=[prompt], layers=1, solver={"mass_tol": 0.05, "scheme": "muscl"})
    case = parse_case(dump_case(doc))
    risk, checks, taylor = gradient_checks(Problem(case), case.heads, eps=1e-6)
    for c in checks:
        assert c.rel_error <= 1e-6, (c.block, c.adjoint, c.finite_difference)
    assert 1.8 <= taylor.slope <= 2.2, (taylor.eps, taylor.remainder)


@pytest.mark.parametrize("method", ["grid", "particles"])
def test_queries_do_not_act_on_the_prompt(method):
    """Mass-free: the density (grid) or the context tokens (particles) are bit for bit those without queries."""
    with_q = _case(method, "readout")
    without = _case(method, {"kind": "potential"}, queries=None)
    mw, mo = make_method(with_q), make_method(without)
    sw, so = mw.case_states()[0], mo.case_states()[0]
    aw = mw.advance(mw.solver(with_q.heads), sw, 0.0, 1.0)
    ao = mo.advance(mo.solver(without.heads), so, 0.0, 1.0)
    if method == "grid":
        assert np.array_equal(aw.rho, ao.rho)
    else:
        assert np.array_equal(aw.X[: aw.context], ao.X)
    moved = mw.queries(aw)
    assert moved.shape == (3, 2) and not np.allclose(moved, np.array(QUERIES_2D["points"]))


def test_a_query_on_a_token_follows_it():
    """Particles: a query started at a context token moves with it (same field at the same point)."""
    case = _case("particles", "readout")
    m = make_method(case)
    st = m.case_states()[0]
    X = st.X.copy()
    X[st.query_rows.start] = X[7]
    st = type(st)(X, st.w, st.steps, st.context, st.labelled, st.query_rows)
    out = m.advance(m.solver(case.heads), st, 0.0, 1.0)
    assert np.array_equal(out.X[st.query_rows.start], out.X[7])


def test_readout_gradient_against_the_gaussian_oracle():
    """Particles with quadrature tokens to 1e-6 (measured 7e-10); the grid at MUSCL's order (measured 2.5, 2.8)."""
    r = readout_gradient_errors(gaussian_problem(2), cells=(16, 32, 64))
    assert r["particle_error"] <= 1e-6 and r["particle_risk_error"] <= 1e-8, r
    assert r["grid_order"] >= 1.8 and r["grid_error"][-1] <= 2e-3, r


@pytest.mark.parametrize("text, key", [
    ('kind = "readout"', "prompts[0].queries.labels"),
    ('kind = "readout"\ncoords = [2]', "loss.coords"),
    ('kind = "flowmap"', "loss.map"),
    ('kind = ["mmd", "mmd"]', "loss.kind"),
    ('kind = ["readout", "potential"]\nweights = [1.0]', "loss.weights"),
    ('kind = "readout"\nsigma = 1.0', "loss.sigma"),
])
def test_bad_point_loss_tables_name_the_key(text, key):
    doc = dump_case(case_document(2, cells=8, prompts=[gaussian([0, 0], np.eye(2))]))
    with pytest.raises(CaseError, match=key.replace("[", r"\[").replace("]", r"\]")):
        parse_case(doc + "[loss]\n" + text + "\n")


def test_bad_queries_name_the_key():
    base = case_document(2, cells=8, prompts=[gaussian([0, 0], np.eye(2), queries={"points": [[0, 0, 0]]})])
    with pytest.raises(CaseError, match=r"prompts\[0\]\.queries\.points"):
        parse_case(dump_case(base))
    base = case_document(2, cells=8, prompts=[gaussian([0, 0], np.eye(2), queries={"points": [[0, 0]], "labels": [[1], [2]]})])
    with pytest.raises(CaseError, match=r"prompts\[0\]\.queries\.labels"):
        parse_case(dump_case(base))
    with pytest.raises(ValueError, match="Queries.points"):
        Queries([[np.nan, 0.0]])


@pytest.mark.parametrize("method", ["grid", "particles"])
def test_a_tabulated_flow_map_equals_the_affine_one_it_tabulates(method):
    """T given by its values on a grid of points (piecewise linear) reproduces an affine T exactly."""
    A, b = np.array([[1.1, 0.2], [0.0, 0.9]]), np.array([0.1, 0.0])
    g = np.linspace(-6, 6, 5)
    P = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    table = {"kind": "flowmap", "map": {"points": P.tolist(), "values": (P @ A.T + b).tolist()},
             "flowmap_points": 4}
    tab = _case(method, table)
    aff = _case(method, "flowmap")
    assert Problem(tab).risk(tab.heads).risk == pytest.approx(Problem(aff).risk(aff.heads).risk, rel=1e-12)
    X = np.array([[0.3, -0.2], [9.0, 9.0]])  # the second point outside the table: its nearest value
    got = tab.loss.target(X)
    assert np.allclose(got[0], X[0] @ A.T + b) and np.allclose(got[1], P[-1] @ A.T + b)
