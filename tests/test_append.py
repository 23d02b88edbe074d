"""Result files appended as a run goes: the same file as one written whole, and kill -9 at random moments."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import xarray as xr

from gridpde.builders import case_document, dump_case, gaussian, mixture
from gridpde.cli import main
from gridpde.io.append import ResultWriter
from gridpde.io.checkpoint import load_checkpoint
from gridpde.io.results import describe, read_result, write_result
from gridpde.io.snapshots import Snapshots

np.seterr(all="raise", under="ignore")

TRAIN = case_document(cells=None, init=(0.7, 5), prompts=[mixture([0.5, 0.5], [[-1.0], [1.0]], [[[0.2]], [[0.3]]])],
                      teacher=(0.7, 6), solver={"method": "particles", "tokens": 16, "integrator": "euler"},
                      train={"steps": 300, "lr": 0.01, "checkpoint_every": 1, "backtrack": False},
                      output={"snapshots": 5, "plot": False})


def _datasets(f: h5py.File) -> dict[str, h5py.Dataset]:
    out = {}
    f.visititems(lambda n, o: out.__setitem__(n, o) if isinstance(o, h5py.Dataset) else None)
    return out


def assert_same_file(a: Path, b: Path, *, ignore=("train/seconds",)) -> None:
    """The same datasets (names, shapes, dtypes, bits) and root attributes, but wall-clock times."""
    with h5py.File(a) as fa, h5py.File(b) as fb:
        da, db = _datasets(fa), _datasets(fb)
        assert sorted(da) == sorted(db)
        for name, x in da.items():
            y = db[name]
            assert (x.shape, x.dtype) == (y.shape, y.dtype), name
            if name not in ignore:
                assert x[()].tobytes() == y[()].tobytes(), name
        keys = {k for k in fa.attrs if not k.startswith("time_")}
        assert keys == {k for k in fb.attrs if not k.startswith("time_")}
        for k in keys:
            assert np.array_equal(fa.attrs[k], fb.attrs[k]), k


def test_appending_saves_give_the_file_written_whole(tmp_path, rng):
    """A run's saves appended one after another (snapshots filled, series growing, arrays and attributes
    changing) leave the file that write_result writes from the final state, with no spare left."""
    centres = (np.linspace(-1, 1, 9)[1::2],)
    snaps = Snapshots.empty(np.linspace(0, 1, 4), 2, 1, cells=(4,), centres=centres)
    heads = {"Q": rng.normal(size=(1, 2, 1, 1))}
    out = tmp_path / "a.h5"
    risk, history = rng.random(7), rng.random((8, 1, 2, 1, 1))  # a series only grows: rows are appended
    with ResultWriter(out) as writer:
        for save in range(7):
            if save < 4:  # a depth is filled once
                for name in ("density", "mass", "mass_out", "mean", "cov"):
                    getattr(snaps, name)[:, save] = rng.random(getattr(snaps, name)[:, save].shape)
                snaps.done = save + 1
            extra = {"train/risk": (risk[:save], ("step",)),
                     "train/heads/Q": (history[:save + 1], ("checkpoint", "layer", "head", "head_dim", "dim")),
                     "checkpoint/step": (np.int64(save), ())}
            if save >= 5:
                extra["risk"] = (np.float64(save), ())
            heads = {"Q": rng.normal(size=(1, 2, 1, 1))}
            attrs = {"train_step": save, **({"late": "yes"} if save == 3 else {})}  # an attribute that goes again
            writer.save(snaps, case_text="dim = 1\n", dim=1, method="grid", heads=heads, attrs=attrs, extra=extra)
            write_result(tmp_path / "whole.h5", snaps, case_text="dim = 1\n", dim=1, method="grid", heads=heads,
                         attrs=attrs, extra=extra)
            assert_same_file(out, tmp_path / "whole.h5", ignore=())
        assert writer.rewrites == 1  # only the first save wrote the file whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5", "whole.h5"]
    with h5py.File(out) as f:
        assert f["train/risk"].maxshape == (None,) and f["train/heads/Q"].chunks is not None


def test_a_training_file_reads_with_labelled_axes(tmp_path):
    """The series (unlimited along step and checkpoint) read in xarray and gridpde info."""
    out = tmp_path / "t.h5"
    doc = {**TRAIN, "train": {**TRAIN["train"], "steps": 12, "checkpoint_every": 5}}
    (tmp_path / "case.toml").write_text(dump_case(doc))
    assert main(["run", str(tmp_path / "case.toml"), "-o", str(out), "--no-plot"]) == 0
    with xr.open_dataset(out, engine="h5netcdf", group="train") as ds:
        assert ds["risk"].dims == ("step",) and ds.sizes["step"] == 12
        np.testing.assert_array_equal(ds["step"].values, np.arange(12))
        assert ds["checkpoint_step"].values.tolist() == [0, 5, 10, 12]
    with xr.open_dataset(out, engine="h5netcdf", group="train/heads") as ds:
        assert ds["Q"].dims[0] == "checkpoint" and ds.sizes["checkpoint"] == 4
    text = describe(out)
    assert "/train/risk" in text and "(step=12)" in text and "/checkpoint/Q" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.toml", "t.h5"]


def test_a_file_found_at_the_path_is_replaced_not_appended_to(tmp_path):
    """Another run's file at the output path (here: a longer training run) is not trusted by the first save."""
    case = tmp_path / "case.toml"
    out = tmp_path / "t.h5"
    for steps in (9, 4):
        case.write_text(dump_case({**TRAIN, "train": {**TRAIN["train"], "steps": steps}}))
        assert main(["run", str(case), "-o", str(out), "--no-plot"]) == 0
    assert main(["run", str(case), "-o", str(tmp_path / "fresh.h5"), "--no-plot"]) == 0
    assert_same_file(out, tmp_path / "fresh.h5")


def _check_killed_file(path: Path, case_text: str) -> int:
    """The file a kill left: the readers and --resume accept it, and its counts agree. Its step."""
    read_result(path)
    describe(path)
    state, rec = load_checkpoint(path, case_text, False)
    with h5py.File(path) as f:
        for name, ds in _datasets(f).items():
            ds[()]  # every dataset reads
        n = f["train/step"].shape[0]
        series = [f["train"][k] for k in ("risk", "risk_prompt", "grad_norm", "lr", "w_c", "seconds", "evaluations",
                                           "depth_steps")]
        assert all(s.shape[0] == n for s in series)
        assert f["checkpoint/step"][()] == n == f.attrs["train_step"] == state.step
        assert f["train/heads/Q"].shape[0] == f["train/checkpoint_step"].shape[0] == len(rec.checkpoint_step)
        done = int(f.attrs["depth_done"])
        assert 1 <= done <= f["depth"].shape[0]
        assert np.all(np.isfinite(f["mass"][:, :done])) and np.all(np.isnan(f["mass"][:, done:]))
        assert f.attrs["status"] in ("running", "finished")
    return n


def test_kill_9_at_random_moments_leaves_a_file_that_resumes_bit_for_bit(tmp_path):
    """SIGKILL a training run (a save after every step) at 20 random moments: each time the file reads,
    its series agree with its checkpoint and depth_done, and --resume (killed again in turn) ends
    with the uninterrupted run's file, bit for bit. A run that ends before its kill starts a new chain."""
    case = tmp_path / "case.toml"
    case.write_text(dump_case(TRAIN))
    text = case.read_text()
    full, cut = tmp_path / "full.h5", tmp_path / "cut.h5"
    assert main(["run", str(case), "-o", str(full), "--no-plot"]) == 0
    rng = random.Random(20240613)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    kills, chains, steps_seen = 0, 0, set()
    deadline = time.time() + 300
    while kills < 20:
        assert time.time() < deadline, f"only {kills} kills in 300 s"
        argv = [sys.executable, "-m", "gridpde", "run", str(case), "-o", str(cut), "--no-plot"]
        proc = subprocess.Popen(argv + (["--resume"] if cut.exists() else []), cwd=tmp_path, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for line in proc.stderr:  # the first save is next
            if line.startswith("training:"):
                break
        time.sleep(rng.uniform(0.0, 0.6))
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        if proc.returncode == 0:  # it finished first: this chain is done
            assert_same_file(cut, full)
            cut.unlink()
            chains += 1
            continue
        assert proc.returncode == -signal.SIGKILL, err
        kills += 1
        if cut.exists():
            steps_seen.add(_check_killed_file(cut, text))
    assert main(["run", str(case), "-o", str(cut), "--no-plot"] + (["--resume"] if cut.exists() else [])) == 0
    assert_same_file(cut, full)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.toml", "cut.h5", "full.h5"]  # no spare, no lock
    assert len(steps_seen) >= 3, steps_seen  # the kills fell at different points of the run
