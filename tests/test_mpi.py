"""Prompts over MPI ranks: result files identical to a serial run, failures on one rank stop all."""

import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from gridpde.builders import case_document, dump_case, gaussian, mixture, uniform

pytest.importorskip("mpi4py")
MPIEXEC = shutil.which("mpiexec")
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (pip install -e '.[mpi]')")

PROMPTS = [gaussian([0.3], [[0.6]]), mixture([0.5, 0.5], [[-1.0], [1.2]], [[[0.3]], [[0.4]]]), uniform([-1.0], [1.5])]


def _run(argv, ranks, cwd, timeout=240):
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "gridpde", *argv]
    if ranks > 1:
        cmd = [MPIEXEC, "-n", str(ranks), *cmd]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _datasets(path):
    out = {}
    with h5py.File(path) as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        attrs = {k: f.attrs[k] for k in ("status", "depth_done", "train_step") if k in f.attrs}
    return out, attrs


def _assert_same_file(serial, mpi) -> None:
    """Every dataset and the status attributes equal, bit for bit (train/seconds is wall-clock)."""
    a, attrs_a = _datasets(serial)
    b, attrs_b = _datasets(mpi)
    assert attrs_a == attrs_b
    assert set(a) == set(b)
    for name in sorted(set(a) - {"train/seconds"}):
        np.testing.assert_array_equal(b[name], a[name], err_msg=name)


@pytest.mark.parametrize("method, ranks", [("grid", 2), ("particles", 2), ("grid", 4)])
def test_training_under_mpi_writes_the_serial_runs_file_bit_for_bit(tmp_path, method, ranks):
    """4 ranks for 3 prompts: one rank idles but takes part in every collective."""
    doc = case_document(cells=64, box=8.0, prompts=PROMPTS, init=(0.7, 1), teacher=(0.7, 2),
                        solver={"method": method, "scheme": "upwind", "time": "euler", "tokens": 40,
                                "mass_tol": 1e-3},
                        train={"steps": 3, "lr": 0.5, "scheme": "implicit", "inner_steps": 4, "checkpoint_every": 1},
                        output={"snapshots": 3, "plot": False})
    case = tmp_path / "case.toml"
    case.write_text(dump_case(doc))
    serial = _run(["run", str(case), "-o", "serial.h5"], 1, tmp_path)
    assert serial.returncode == 0, serial.stderr
    par = _run(["run", str(case), "-o", "mpi.h5"], ranks, tmp_path)
    assert par.returncode == 0, par.stderr
    _assert_same_file(tmp_path / "serial.h5", tmp_path / "mpi.h5")
    assert par.stderr.count("finished in") == 1  # rank 0 reports


def test_explicit_training_on_prompts_of_unequal_cost_matches_the_serial_run(tmp_path):
    """Token prompts of 60, 5, 5, 40 and 20 tokens are shared out by cost n^2 (the 60 alone on rank 0, the
    rest on rank 1, not p mod 2); explicit steps with backtracking; the file is the serial run's, bit for bit."""
    rng = np.random.default_rng(3)
    sizes = (60, 5, 5, 40, 20)
    prompts = [{"kind": "tokens", "points": np.round(rng.normal(0.2 * i, 0.7, n), 6).tolist()}
               for i, n in enumerate(sizes)]
    doc = case_document(cells=None, prompts=prompts, init=(0.7, 1), teacher=(0.7, 2),
                        solver={"method": "particles", "integrator": "euler"},
                        train={"steps": 4, "lr": 0.5, "checkpoint_every": 2}, output={"snapshots": 3, "plot": False})
    case = tmp_path / "case.toml"
    case.write_text(dump_case(doc))
    from gridpde.casefile import load_case
    from gridpde.method import make_method
    from gridpde.parallel import Ranks

    loaded = load_case(case)
    method = make_method(loaded)
    ranks = Ranks()
    ranks.size = 2
    ranks.balance([method.cost(st) for st in method.case_states()])
    assert ranks.owner == [0, 1, 1, 1, 1], ranks.owner
    serial = _run(["run", str(case), "-o", "serial.h5"], 1, tmp_path)
    assert serial.returncode == 0, serial.stderr
    par = _run(["run", str(case), "-o", "mpi.h5"], 2, tmp_path)
    assert par.returncode == 0, par.stderr
    _assert_same_file(tmp_path / "serial.h5", tmp_path / "mpi.h5")


def test_a_failure_on_one_rank_stops_every_rank_with_the_same_status(tmp_path):
    """Mass leaves the box for the prompt near the wall only (rank 1's): every rank exits 1, no hang."""
    prompts = [gaussian([0.0], [[0.3]]), gaussian([3.2], [[0.3]])]
    doc = case_document(cells=64, box=4.0, prompts=prompts, init=(0.9, 4), teacher=(0.7, 2),
                        solver={"scheme": "upwind", "mass_tol": 1e-8}, output={"snapshots": 3, "plot": False})
    case = tmp_path / "case.toml"
    case.write_text(dump_case(doc))
    serial = _run(["run", str(case), "-o", "serial.h5"], 1, tmp_path)
    par = _run(["run", str(case), "-o", "mpi.h5"], 2, tmp_path, timeout=120)
    assert serial.returncode == 1 and par.returncode == 1, (serial.stderr, par.stderr)
    assert "prompt 1" in par.stderr and par.stderr.count("gridpde: run failed") == 1
    with h5py.File(tmp_path / "mpi.h5") as f:
        assert f.attrs["status"] == "mass_lost"


def test_sigterm_under_mpi_saves_a_checkpoint_that_resumes_bit_for_bit(tmp_path):
    """mpiexec forwards SIGTERM to every rank; they stop together at the next step (exit 143, status
    interrupted), and --resume under MPI ends with the serial run's file."""
    import signal
    import time

    doc = case_document(cells=48, box=8.0, prompts=PROMPTS, init=(0.7, 1), teacher=(0.7, 2),
                        solver={"scheme": "upwind", "time": "euler", "mass_tol": 1e-3},
                        train={"steps": 60, "lr": 0.2, "checkpoint_every": 1},
                        output={"snapshots": 3, "plot": False})
    case = tmp_path / "case.toml"
    case.write_text(dump_case(doc))
    serial = _run(["run", str(case), "-o", "serial.h5"], 1, tmp_path)
    assert serial.returncode == 0, serial.stderr
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, "-m", "gridpde", "run", str(case), "-o", "mpi.h5"],
                            cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "train step 1 taken" in line:
            break
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=120)
    err = "".join(lines) + rest
    assert proc.returncode == 143, err
    assert err.count("gridpde: stopped by SIGTERM") == 1, err
    with h5py.File(tmp_path / "mpi.h5") as f:
        assert f.attrs["status"] == "interrupted"
        assert 1 <= f.attrs["train_step"] < 60
    par = _run(["run", str(case), "-o", "mpi.h5", "--resume"], 2, tmp_path)
    assert par.returncode == 0, par.stderr
    _assert_same_file(tmp_path / "serial.h5", tmp_path / "mpi.h5")


def test_ntk_and_validate_run_on_rank_0_under_mpi(tmp_path):
    """Not spread over prompts: rank 0 works and reports once, the other ranks end with its status."""
    doc = case_document(cells=32, prompts=PROMPTS[:2], init=(0.7, 1), output={"plot": False})
    case = tmp_path / "case.toml"
    case.write_text(dump_case(doc))
    ntk = _run(["ntk", str(case), "-o", str(tmp_path / "figs")], 2, tmp_path)
    assert ntk.returncode == 0, ntk.stderr
    assert ntk.stdout.count("NTK injectivity on the 2 prompt(s)") == 1
    bad = _run(["ntk", str(tmp_path / "missing.toml")], 2, tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("gridpde: error:") == 1, bad.stderr
    val = _run(["validate", "--only", "queries-1d"], 2, tmp_path)
    assert val.returncode == 0 and val.stdout.count("passed, 0 failed") == 1, val.stdout
