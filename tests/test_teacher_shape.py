"""A teacher of another width, depth or head dimension than the student (issue 17, item a).

The teacher only makes the target measures, so any (L', M', k') with the model's
token dimension d and scale_scores is a valid [loss.teacher].
"""

import dataclasses

import numpy as np
import pytest

from gridpde.builders import case_document, dump_case
from gridpde.casefile import parse_case
from gridpde.errors import CaseError
from gridpde.heads import Heads
from gridpde.objective.problem import Problem
from gridpde.spec import Case, LossSpec

SOLVERS = {
    "grid": {"method": "grid", "scheme": "upwind", "time": "euler"},
    "particles": {"method": "particles", "tokens": 48, "integrator": "euler"},
}


def _case(method: str, student=(2, 1), teacher=(3, 2), head_dim=None) -> Case:
    doc = case_document(1, layers=student[0], heads=student[1], init=(0.5, 3), teacher=(0.8, 5), cells=48,
                        solver=SOLVERS[method])
    doc["loss"]["teacher"].update({"layers": teacher[0], "heads": teacher[1]})
    if head_dim is not None:
        doc["loss"]["teacher"]["head_dim"] = head_dim
    return parse_case(dump_case(doc))


def test_reader_takes_the_teachers_own_shape():
    case = _case("grid", (2, 1), (3, 4), head_dim=2)
    t = case.loss.teacher
    assert (t.layers, t.width, t.head_dim, t.dim) == (3, 4, 2, 1)
    assert (case.heads.layers, case.heads.width) == (2, 1)
    np.testing.assert_array_equal(t.Q, Heads.random(3, 4, 2, 1, 0.8, 5).Q)
    # without sizes, the model's (as before)
    doc = case_document(1, layers=2, heads=3, teacher=(0.8, 5), cells=16)
    assert parse_case(dump_case(doc)).loss.teacher.Q.shape == (2, 3, 1, 1)


def test_teacher_must_share_d_and_scale_scores():
    case = _case("grid")
    t2 = Heads.random(1, 2, 2, 2, 0.5, 1)
    with pytest.raises(CaseError, match="loss.teacher.*1-D tokens"):
        dataclasses.replace(case, loss=LossSpec(teacher=t2))
    scaled = Heads(case.loss.teacher.Q, case.loss.teacher.K, case.loss.teacher.V, scale_scores=True)
    with pytest.raises(CaseError, match="scale_scores"):
        dataclasses.replace(case, loss=LossSpec(teacher=scaled))


@pytest.mark.parametrize("method", ["grid", "particles"])
def test_targets_of_a_deeper_wider_teacher_are_its_own_outputs(method):
    """The targets equal the teacher's outputs when it is run as the model of its own case."""
    case = _case(method, (2, 1), (3, 2))
    teacher = case.loss.teacher
    own = Problem(dataclasses.replace(case, heads=teacher, loss=dataclasses.replace(case.loss, teacher=teacher)))
    problem = Problem(case)
    for got, want in zip(problem.targets, own.targets, strict=True):
        if method == "grid":
            np.testing.assert_array_equal(got.rho, want.rho)
        else:
            np.testing.assert_array_equal(got.points, want.points)
    assert own.risk(teacher).risk == 0.0  # the teacher on its own schedule: its own targets
    r = problem.risk(case.heads).risk
    assert r > 1e-6  # a 2 x 1 random student is not the 3 x 2 teacher
    # the gradient of the student's risk is still exact (directional central difference)
    res = problem.risk_and_grad(case.heads)
    rng = np.random.default_rng(0)
    d = rng.standard_normal(case.heads.flat().size)
    eps = 1e-5
    fd = (problem.risk(case.heads.with_flat(case.heads.flat() + eps * d)).risk
          - problem.risk(case.heads.with_flat(case.heads.flat() - eps * d)).risk) / (2 * eps)
    assert abs(fd - res.grad.flat() @ d) <= 1e-6 * abs(fd)


@pytest.mark.parametrize("method", ["grid", "particles"])
def test_student_duplicating_a_narrower_teacher_has_zero_risk(method):
    """Same depth, M = 2 student whose two heads copy a 1-head teacher: the same field, the
    same (shared) depth steps, so the targets are reproduced exactly."""
    case = _case(method, (2, 2), (2, 1))
    t = case.loss.teacher
    dup = Heads(np.repeat(t.Q, 2, axis=1), np.repeat(t.K, 2, axis=1), np.repeat(t.V, 2, axis=1))
    problem = Problem(case)
    assert problem.risk(dup).risk <= 1e-30
    assert problem.risk(case.heads).risk > 1e-6


def test_heads_of_another_depth_are_refused_by_the_models_risk():
    """The method's depth steps are the model's (particles: L x substeps steps of 1 / (L substeps)):
    heads of another depth would silently be run to the wrong depth."""
    case = _case("particles", (2, 1), (3, 2))
    problem = Problem(case)
    with pytest.raises(ValueError, match="3 layers"):
        problem.risk(case.loss.teacher)
    with pytest.raises(ValueError, match="3 layers"):
        problem.risk_and_grad(case.loss.teacher)
    wider = Heads.random(2, 5, 1, 1, 0.5, 2)  # another width is a valid point of the model's risk
    assert problem.risk(wider).risk > 0


def test_a_run_with_a_teacher_of_another_shape_plots_and_animates(tmp_path):
    """The heads figure and movie draw the teacher only when its (L, M) matches the student's."""
    from gridpde.cli import main
    from gridpde.io.movie import write_movies
    from gridpde.io.plot import plot_result

    doc = case_document(1, layers=1, heads=1, init=(0.5, 3), teacher=(0.8, 5), cells=32,
                        solver=SOLVERS["particles"], train={"steps": 2, "lr": 0.5},
                        output={"path": str(tmp_path / "r.h5"), "snapshots": 3, "plot": False})
    doc["loss"]["teacher"].update({"layers": 2, "heads": 2})
    case = tmp_path / "case.toml"
    case.write_text(dump_case(doc))
    assert main(["run", str(case)]) == 0
    figs = plot_result(tmp_path / "r.h5", tmp_path / "figs")
    assert any("heads" in str(f) for f in figs)
    assert write_movies(tmp_path / "r.h5", tmp_path / "figs")
