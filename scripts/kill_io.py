"""kill -9 while a training run saves its result file: how often is the file left unreadable?

Two ways of saving are measured on the same tiny training case (a save after
every step, so most of the run is spent saving):

- ``inplace``: the result file itself is opened in "a" mode at every save,
  the new rows are appended (:func:`gridpde.io.append.sync`) and it is closed
  (flushed) again;
- ``spare``: gridpde's :class:`~gridpde.io.append.ResultWriter` (the appends go
  to a spare copy that is renamed onto the file).

A child process runs the case (resuming the file when it exists) and is
killed with SIGKILL at a random moment after its kernels are loaded; the file is then checked: it opens,
read_result, describe and load_checkpoint accept it, every dataset reads, and
the series agree with the checkpoint. A bad file is counted and deleted; a
good one is resumed by the next child.

    python scripts/kill_io.py [--kills 200] [--modes inplace,spare]
"""

import argparse
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from gridpde import driver
from gridpde.builders import case_document, dump_case, mixture
from gridpde.casefile import parse_case
from gridpde.io.append import ResultWriter, sync
from gridpde.io.checkpoint import load_checkpoint
from gridpde.io.results import describe, read_result, write_file


class InPlace(ResultWriter):
    """Appends to the result file itself: open "a", append, close (flush) at every save."""

    def save(self, snaps, *, heads, extra=None, **meta):
        if not self.saves:
            write_file(self.path, snaps, heads=heads, extra=extra, **meta)
            self.memo = None
        else:
            with h5py.File(self.path, "a") as f:
                self.memo = sync(f, snaps, heads=heads, extra=extra, spare=self.memo, **meta)
        self.saves += 1


def check(path: Path, case_text: str) -> str:
    """'' for a file that --resume and the readers accept, else what is wrong."""
    try:
        read_result(path)
        describe(path)
        state, rec = load_checkpoint(path, case_text, False)
        with h5py.File(path) as f:
            f.visititems(lambda n, o: o[()] if isinstance(o, h5py.Dataset) else None)
            n = f["train/step"].shape[0]
            lengths = {f["train"][k].shape[0] for k in f["train"] if isinstance(f["train"][k], h5py.Dataset)
                       and k not in ("checkpoint", "checkpoint_step", "prompt")}
            if lengths != {n} or f["train/checkpoint_step"].shape[0] != f["train/heads/Q"].shape[0]:
                return f"series of different lengths: {lengths}"
            if int(f["checkpoint/step"][()]) != n or int(f.attrs["train_step"]) != n:
                return f"checkpoint step {f['checkpoint/step'][()]}, {n} rows"
            done = int(f.attrs["depth_done"])
            if not (np.all(np.isfinite(f["mass"][:, :done])) and np.all(np.isnan(f["mass"][:, done:]))):
                return "depth_done does not match the snapshots"
    except Exception as exc:  # noqa: BLE001 - any failure to read is what we count
        return f"{type(exc).__name__}: {exc}"
    return ""


def child(mode: str, out: Path, text: str) -> None:
    """Run the case into ``out`` (resuming it if it exists) with the ``mode`` writer, until killed."""
    driver.ResultWriter = {"inplace": InPlace, "spare": ResultWriter}[mode]
    case = parse_case(text)
    driver.warm_up(lambda line: None, driver.make_method(case))
    print("ready", flush=True)
    driver.run_case(case, out, resume=out.exists(), report=lambda line: None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=200)
    ap.add_argument("--modes", default="inplace,spare")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", nargs=2, metavar=("MODE", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    doc = case_document(cells=None, init=(0.7, 5), prompts=[mixture([0.5, 0.5], [[-1.0], [1.0]], [[[0.2]], [[0.3]]])],
                        teacher=(0.7, 6), solver={"method": "particles", "tokens": 16, "integrator": "euler"},
                        train={"steps": 10**6, "lr": 0.01, "checkpoint_every": 1, "backtrack": False},
                        output={"snapshots": 2, "plot": False})
    text = dump_case(doc)
    if args.child:
        child(args.child[0], Path(args.child[1]), text)
        return
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            out = Path(tmp) / f"{mode}.h5"
            bad, steps, examples = 0, [], []
            for _ in range(args.kills):
                proc = subprocess.Popen([sys.executable, __file__, "--child", mode, str(out)],
                                        stdout=subprocess.PIPE, text=True)
                proc.stdout.readline()  # "ready": kernels loaded
                time.sleep(rng.uniform(0.0, 0.6))
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                if not out.exists():
                    continue
                problem = check(out, text)
                if problem:
                    bad += 1
                    examples.append(problem[:150])
                    out.unlink()
                else:
                    with h5py.File(out) as f:
                        steps.append(int(f["checkpoint/step"][()]))
            print(f"{mode}: {args.kills} kills, {bad} files left unreadable or inconsistent "
                  f"({bad / args.kills:.1%}); training reached step {max(steps, default=0)}", flush=True)
            for e in sorted(set(examples))[:5]:
                print(f"    e.g. {e}", flush=True)


if __name__ == "__main__":
    main()
