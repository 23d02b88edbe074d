"""The finite-transformer studies (issue 17): energy identity, stall classification, W_c of any widths."""

import numpy as np
import pytest

from gridpde.heads import Heads
from gridpde.objective.problem import Problem
from gridpde.validation import finite_studies as fs

np.seterr(all="raise", under="ignore")


@pytest.mark.parametrize(("layers", "heads"), [(2, 4), (1, 3)])
def test_energy_identity_orders(layers, heads):
    """dR/dt = -L M |dR/dtheta|^2 along explicit Euler steps: the Euler form's relative
    residual falls at order 1 in the step, the trapezoid form's at order 2."""
    case = fs.family_case(1, "particles", layers, heads, 13, tokens=32)
    rows = fs.energy_identity(Problem(case), case.heads, 1.0, [0.125, 0.0625, 0.03125])
    dts = [r.dt for r in rows]
    for key, order in (("euler_rel", 1.0), ("euler_sum_rel", 1.0), ("trapezoid_rel", 2.0),
                       ("trapezoid_sum_rel", 2.0)):
        p = fs.fitted_slope(dts, [getattr(r, key) for r in rows])
        assert abs(p - order) < 0.1, (key, p)
    assert rows[-1].trapezoid_sum_rel < 1e-4
    assert rows[-1].risk_end < rows[-1].risk0


def test_classify_teacher_is_a_minimum_and_a_random_start_moves():
    case = fs.family_case(1, "particles", 2, 2, 13, tokens=32)
    problem = Problem(case)
    at_teacher = fs.classify(problem, case.loss.teacher)
    assert at_teacher.kind == "minimum" and at_teacher.predicted_drop == 0.0
    assert at_teacher.lam_min > -at_teacher.resolution
    start = fs.classify(problem, case.heads)
    assert start.kind == "moving" and start.predicted_drop > 0.5


def test_classify_calls_a_kinked_minimum_unresolved():
    """A difference Hessian across a kink is not symmetric: R = 1/2 |x|^2 + 50 |x_0 + x_1 / 2| at its
    minimum x = 0 gives columns 0 and 1 the same jump (the gradient jumps along the kink's normal),
    a symmetric part with a negative eigenvalue hidden in the asymmetry. The old rule called it a
    minimum; "unresolved" says the curvature test does not apply. Without the kink: a minimum."""
    from types import SimpleNamespace

    heads = Heads(np.zeros((1, 1, 1, 1)), np.zeros((1, 1, 1, 1)), np.zeros((1, 1, 1, 1)))
    n = np.array([1.0, 0.5, 0.0])

    def problem(kink):
        def risk_and_grad(h):
            x = h.flat()
            g = x + kink * np.sign(n @ x) * n
            return SimpleNamespace(risk=0.5 * x @ x + kink * abs(n @ x) + 1e-3, grad=h.with_flat(g))

        return SimpleNamespace(risk_and_grad=risk_and_grad)

    kinked = fs.classify(problem(50.0), heads)
    assert kinked.kind == "unresolved" and kinked.asymmetry > fs.ASYMMETRY_MAX, kinked
    assert -kinked.resolution <= kinked.lam_min < 0.0  # the negative eigenvalue is within the asymmetry
    smooth = fs.classify(problem(0.0), heads)
    assert smooth.kind == "minimum" and smooth.asymmetry < 1e-12 and smooth.lam_min > 0.0, smooth
    assert fs.stall_kind(-1.0, 0.5, 1e-8, 0.0) == "saddle" and fs.stall_kind(1.0, 0.5, 1e-8, 0.9) == "moving"


def test_lcm_wasserstein():
    t = Heads.random(2, 2, 1, 1, 0.8, 11)
    dup = Heads(np.repeat(t.Q, 3, 1), np.repeat(t.K, 3, 1), np.repeat(t.V, 3, 1))
    assert fs.lcm_wasserstein(dup, t) == 0.0
    # (B, V) coordinates: rescaling Q by a and K by 1/a leaves the head, and the distance, alone
    moved = Heads(2.0 * t.Q, 0.5 * t.K, t.V)
    assert fs.lcm_wasserstein(moved, t) <= 1e-15
    one = Heads(t.Q[:, :1], t.K[:, :1], t.V[:, :1])
    # one atom against two: W_2^2 is the mean squared distance to both
    a = np.concatenate([t.B.reshape(2, 2, -1), t.V.reshape(2, 2, -1)], -1)
    want = np.sqrt(np.mean([np.mean(np.sum((a[layer] - a[layer, :1]) ** 2, -1)) for layer in range(2)]))
    assert abs(fs.lcm_wasserstein(one, t) - want) <= 1e-14


def test_driver_writes_results_and_resumes(tmp_path, capsys):
    """scripts/finite_study.py: one HDF5 file per run, a second call skips runs whose file exists."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "finite_study.py"
    spec = importlib.util.spec_from_file_location("finite_study", path)
    driver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(driver)
    argv = [str(tmp_path), "minima", "--widths", "1,2", "--seeds", "2", "--tokens", "24", "--steps", "3"]
    driver.main(argv)
    files = sorted((tmp_path / "minima").glob("*.h5"))
    assert [f.name for f in files] == [f"1d_particles_M{M}_s{s}.h5" for M in (1, 2) for s in (0, 1)]
    stamps = [f.stat().st_mtime_ns for f in files]
    first = capsys.readouterr().out
    assert "spurious minima, 1d_particles" in first and "M   1 seed  0" in first
    driver.main(argv)
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert "seed" not in capsys.readouterr().out.split("spurious minima")[0]  # nothing rerun
    assert (tmp_path / "minima.png").exists()


def test_driver_classifies_stalls_left_unclassified_on_a_later_call(tmp_path, capsys):
    """A stall with more entries than --hessian-max is "unclassified"; a later call with a larger
    --hessian-max classifies it from the stored heads, without training it again."""
    import importlib.util
    from pathlib import Path

    import h5py

    path = Path(__file__).resolve().parents[1] / "scripts" / "finite_study.py"
    spec = importlib.util.spec_from_file_location("finite_study", path)
    driver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(driver)
    argv = [str(tmp_path), "minima", "--widths", "1", "--seeds", "1", "--tokens", "24", "--steps", "2"]
    driver.main(argv + ["--hessian-max", "0"])
    (file,) = (tmp_path / "minima").glob("*.h5")
    with h5py.File(file) as f:
        before = dict(f.attrs)
        heads = {k: f["heads"][k][()] for k in ("Q", "K", "V")}
    assert before["kind"] == "unclassified" and "lam_min" not in before  # 2 steps do not reach 1e-6 R0
    capsys.readouterr()
    driver.main(argv + ["--hessian-max", "200"])
    assert "classified now" in capsys.readouterr().out
    with h5py.File(file) as f:
        after = dict(f.attrs)
        assert all(np.array_equal(f["heads"][k][()], heads[k]) for k in heads)
    assert after["kind"] in ("minimum", "saddle", "moving") and np.isfinite(after["lam_min"])
    assert {k: after[k] for k in before if k != "kind"} == {k: v for k, v in before.items() if k != "kind"}


def test_driver_extends_runs_that_stopped_on_their_time_limit(tmp_path, capsys):
    """--extend S trains a run that ended on --time-limit on from its stored heads, to time-limit + S
    seconds in all, towards 1e-6 of its first risk; a second call with the same S changes nothing."""
    import importlib.util
    from pathlib import Path

    import h5py

    path = Path(__file__).resolve().parents[1] / "scripts" / "finite_study.py"
    spec = importlib.util.spec_from_file_location("finite_study", path)
    driver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(driver)
    argv = [str(tmp_path), "minima", "--widths", "2", "--seeds", "1", "--tokens", "24", "--time-limit", "0.01"]
    driver.main(argv)
    (file,) = (tmp_path / "minima").glob("*.h5")
    with h5py.File(file) as f:
        before = dict(f.attrs)
    assert str(before["message"]).startswith("time limit") and before["kind"] != "reached"
    driver.main(argv + ["--extend", "30"])
    assert "budget 30.01 s" in capsys.readouterr().out
    with h5py.File(file) as f:
        after = dict(f.attrs)
    assert after["time_limit"] == 30.01 and after["risk0"] == before["risk0"]
    assert after["steps"] > before["steps"] and after["risk"] < before["risk"]
    assert after["train_seconds"] > before["train_seconds"] and after["evaluations"] > before["evaluations"]
    assert after["reached"] == (after["risk"] <= 1e-6 * after["risk0"])
    stamp = file.stat().st_mtime_ns
    driver.main(argv + ["--extend", "30"])
    assert file.stat().st_mtime_ns == stamp
