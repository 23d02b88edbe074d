"""The command line: runs, exit statuses, files that survive failures."""

import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from gridpde.builders import case_document, dump_case, gaussian, uniform
from gridpde.casefile import load_case
from gridpde.cli import main

CASES = Path(__file__).resolve().parent.parent / "cases"

SMALL = case_document(cells=64, init=(0.7, 3), prompts=[gaussian([0.2], [[0.5]]), uniform([-1.0], [1.5])],
                      solver={}, output={"snapshots": 3})


def _small(path, tol: float = 1e-6, **edits) -> str:
    """SMALL's case-file text writing to ``path``, with solver.mass_tol = tol and tables replaced."""
    return dump_case({**SMALL, "solver": {"mass_tol": tol}, "output": {**SMALL["output"], "path": str(path)},
                      **edits})


def _write(tmp_path, text, name="case.toml"):
    f = tmp_path / name
    f.write_text(text)
    return f


def test_small_run_writes_result_info_and_plot(tmp_path, capsys):
    out = tmp_path / "r.h5"
    case = _write(tmp_path, _small(out.as_posix()))
    assert main(["run", str(case)]) == 0
    with h5py.File(out) as f:
        assert f.attrs["status"] == "finished"
        assert f["density"].shape == (2, 3, 64)
        total = f["mass"][:] + f["mass_out"][:]
        np.testing.assert_allclose(total, 1.0, rtol=1e-13)
        assert f.attrs["case"] == case.read_text()
    assert (tmp_path / "r_figures" / "moments.png").exists()
    assert main(["info", str(out)]) == 0
    assert "finished" in capsys.readouterr().out
    assert main(["plot", str(out), "-o", str(tmp_path / "figs")]) == 0


def test_mass_leaving_beyond_tolerance_exits_1_and_keeps_the_file(tmp_path, capsys):
    out = tmp_path / "lost.h5"
    text = _small(out.as_posix(), grid={"lower": [-1.5], "upper": [1.5], "cells": [64]})
    case = _write(tmp_path, text)
    assert main(["run", str(case), "--no-plot"]) == 1
    err = capsys.readouterr().err
    assert "mass_tol" in err and "left the box" in err
    with h5py.File(out) as f:
        assert f.attrs["status"] == "mass_lost"
        assert f.attrs["depth_done"] >= 1
        assert np.isfinite(f["density"][:, 0]).all()


@pytest.mark.parametrize(
    "edit, key",
    [
        (("cells = [64]", "cells = [-64]"), "grid.cells"),
        (("cov = [[0.5]]", "cov = [[-0.5]]"), "prompts[0].cov"),
        (("snapshots = 3", "snapshots = 3\ncolour = 1"), "colour"),
    ],
)
def test_bad_case_exits_2_with_one_line(tmp_path, capsys, edit, key):
    case = _write(tmp_path, _small((tmp_path / "x.h5").as_posix()).replace(*edit))
    assert main(["run", str(case)]) == 2
    err = capsys.readouterr().err.strip()
    assert key in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_bad_arguments_exit_2(tmp_path, capsys):
    assert main(["run", str(tmp_path / "missing.toml")]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    assert main(["info", str(tmp_path / "missing.h5")]) == 2


@pytest.mark.parametrize("case", sorted(p.name for p in CASES.glob("*.toml")))
def test_example_cases_run(tmp_path, case):
    """Every example case runs; training cases with their steps capped at 2 and inner
    steps at 3 (the full runs are the convergence experiment of `gridpde validate`)."""
    text = (CASES / case).read_text()
    text = re.sub(r"(?m)^steps = \d+", "steps = 2", text)
    text = re.sub(r"(?m)^inner_steps = \d+", "inner_steps = 3", text)
    path = tmp_path / case
    path.write_text(text)
    out = tmp_path / "out.h5"
    assert main(["run", str(path), "-o", str(out)]) == 0
    with h5py.File(out) as f:
        assert f.attrs["status"] == "finished"
        if "[train]" in text:
            assert len(f["train/risk"]) == 2
        if "[loss.teacher]" in text:  # the heads that made the targets, for comparison
            t = load_case(path).loss.teacher
            for k in "QKV":
                assert np.array_equal(f["teacher"][k][()], getattr(t, k))
            np.testing.assert_allclose(f["teacher/B"][()], np.swapaxes(t.K, -1, -2) @ t.Q, rtol=1e-15)


def test_nonfinite_risk_is_a_failed_run_naming_the_prompt(tmp_path, capsys):
    """A loss case without training whose risk is NaN exits 1 with status nan, never "finished"."""
    out = tmp_path / "r.h5"
    text = _small(out.as_posix()) + (
        '[loss]\nkind = "mmd"\nsigma = 1e-300\n[loss.teacher]\ninit = { scale = 0.5, seed = 2 }\n')
    case = _write(tmp_path, text)
    with np.errstate(all="ignore"):
        assert main(["run", str(case), "--no-plot"]) == 1
    assert "prompt 0: the risk is nan" in capsys.readouterr().err
    with h5py.File(out) as f:
        assert f.attrs["status"] == "nan"
        assert "prompt 0" in f.attrs["message"]


def test_nonfinite_gradient_names_prompt_layer_and_block():
    from gridpde.objective.problem import _nonfinite

    B_bar, V_bar = np.zeros((2, 3, 1, 1)), np.zeros((2, 3, 1, 1))
    assert _nonfinite(4, 0.1, B_bar, V_bar) == ""
    V_bar[1, 2] = np.nan
    assert _nonfinite(4, 0.1, B_bar, V_bar) == "prompt 4: layer 1, block V of the gradient is not finite"
    B_bar[0, 0] = np.inf
    assert "layer 0, block Q and K" in _nonfinite(4, 0.1, B_bar, V_bar)


def test_huge_velocity_stops_at_the_step_bound_naming_velocity_and_cfl(tmp_path, capsys):
    """Inline V = 1e300 used to run forever at s = 0; now the step bound stops it at once (exit 1)."""
    out = tmp_path / "r.h5"
    doc = {**SMALL, "model": {"layers": 1, "heads": 1, "head_dim": 1, "Q": [[[[1.0]]]], "K": [[[[1.0]]]],
                              "V": [[[[1e300]]]]}}
    case = _write(tmp_path, dump_case({**doc, "output": {"path": str(out), "snapshots": 2}}))
    assert main(["run", str(case), "--no-plot"]) == 1
    err = capsys.readouterr().err
    assert "solver.max_steps" in err and "velocity" in err and "cfl" in err
    with h5py.File(out) as f:
        assert f.attrs["status"] == "failed"


@pytest.mark.parametrize("cfl", ["1e-9", "5e-324", "0"])
def test_cfl_that_cannot_make_progress_exits_2(tmp_path, capsys, cfl):
    case = _write(tmp_path, _small(tmp_path / "x.h5").replace("[solver]\n", f"[solver]\ncfl = {cfl}\n"))
    assert main(["run", str(case)]) == 2
    assert "solver.cfl" in capsys.readouterr().err
