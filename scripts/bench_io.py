"""I/O cost per training step: the result file rewritten whole at every save (before) against appended (now).

A tiny particle teacher-student case (cheap evaluations) trained for 1000 explicit
steps with checkpoint_every = 1, so the file is saved after every step. The same
run is made twice in this process: once with every save rewriting the whole file
(``write_result``, temporary file and rename: what gridpde did before, O(steps^2)
over a run), once with gridpde's :class:`~gridpde.io.append.ResultWriter` (rows
appended to a spare copy renamed onto the file). The two final files must hold
the same data. The headline is ratios measured in this one run (machines and
their load differ; ratios travel better than times): the cost of a save late
in the run against early in it, and rewrite against append.

    python scripts/bench_io.py [--steps 1000]
"""

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from gridpde import driver
from gridpde.builders import case_document, dump_case, mixture
from gridpde.casefile import parse_case
from gridpde.io.append import ResultWriter
from gridpde.io.results import write_result


class Rewrite(ResultWriter):
    """The writer before issue 13, item 14: every save writes the whole file and renames it."""

    def save(self, snaps, **kw):
        write_result(self.path, snaps, **kw)


def run(doc: dict, writer: type, folder: Path) -> tuple[list[float], float, Path]:
    """Run the case with ``writer``; the seconds of each save, the run's seconds, the file."""
    times = []

    class Timed(writer):
        def save(self, *a, **k):
            t = time.perf_counter()
            super().save(*a, **k)
            times.append(time.perf_counter() - t)

    driver.ResultWriter = Timed
    try:
        out = folder / f"{writer.__name__}.h5"
        t0 = time.perf_counter()
        driver.run_case(parse_case(dump_case(doc)), out, report=lambda line: None)
        return times, time.perf_counter() - t0, out
    finally:
        driver.ResultWriter = ResultWriter


def same_data(a: Path, b: Path) -> bool:
    """Every dataset and root attribute equal (but the timings), and the same dataset shapes."""
    with h5py.File(a) as fa, h5py.File(b) as fb:
        names = []
        fa.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        other = []
        fb.visititems(lambda n, o: other.append(n) if isinstance(o, h5py.Dataset) else None)
        if sorted(names) != sorted(other):
            return False
        skip = {"time_run", "time_gradient", "message"}
        attrs = {k for k in fa.attrs if k not in skip} == {k for k in fb.attrs if k not in skip} and all(
            np.array_equal(fa.attrs[k], fb.attrs[k]) for k in fa.attrs if k not in skip)
        seconds = {"train/seconds"}  # wall-clock time, differs between runs
        return attrs and all(fa[n].shape == fb[n].shape and (n in seconds or np.array_equal(
            fa[n][()], fb[n][()], equal_nan=fa[n].dtype.kind == "f")) for n in names)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    args = ap.parse_args()
    doc = case_document(cells=None, init=(0.7, 5), prompts=[mixture([0.5, 0.5], [[-1.0], [1.0]], [[[0.2]], [[0.3]]])],
                        teacher=(0.7, 6), solver={"method": "particles", "tokens": 16, "integrator": "euler"},
                        train={"steps": args.steps, "lr": 0.01, "checkpoint_every": 1, "backtrack": False},
                        output={"snapshots": 2, "plot": False})
    n = min(100, args.steps // 4)
    with tempfile.TemporaryDirectory() as tmp:
        rows = {}
        for writer in (Rewrite, ResultWriter):
            times, total, out = run(doc, writer, Path(tmp))
            first, last = np.mean(times[1:n + 1]), np.mean(times[-n - 1:-1])  # the first save writes the file whole
            rows[writer] = (first, last, sum(times), total, len(times), out.stat().st_size)
        same = same_data(Path(tmp) / "Rewrite.h5", Path(tmp) / "ResultWriter.h5")
    (f0, l0, s0, t0, k0, b0), (f1, l1, s1, t1, k1, b1) = rows[Rewrite], rows[ResultWriter]
    print(f"{args.steps} explicit steps, a save after each ({k0} saves), the same run twice in this process:")
    print(f"  rewrite at every save (before): saves {s0 / t0:.0%} of the run; a save late / early in the run "
          f"(last {n} / first {n} steps): {l0 / f0:.2f}")
    print(f"  append (now):                   saves {s1 / t1:.0%} of the run; a save late / early in the run: "
          f"{l1 / f1:.2f}")
    print(f"  rewrite / append, cost per save: first {n} steps {f0 / f1:.1f}x, last {n} steps {l0 / l1:.1f}x, "
          f"whole run {s0 / s1:.1f}x; run time {t0 / t1:.2f}x")
    print(f"  final files hold the same data: {'yes' if same else 'NO'}; sizes {b0 / 1e6:.2f} MB (rewrite), "
          f"{b1 / 1e6:.2f} MB (append)")
    print(f"  (times, for the record: a save {f0 * 1e3:.2f} -> {l0 * 1e3:.2f} ms rewriting, "
          f"{f1 * 1e3:.2f} -> {l1 * 1e3:.2f} ms appending)")


if __name__ == "__main__":
    main()
