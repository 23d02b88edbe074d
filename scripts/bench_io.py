"""I/O cost per training step: the time spent writing the result file, early and late in a run.

A tiny particle teacher-student case (cheap evaluations) trained for 1000 explicit
steps with checkpoint_every = 1, so the file is written after every step; the
write times of the first and the last 100 steps are compared. The whole file
is rewritten atomically at each checkpoint (temporary file and rename), so the
cost grows with the history it holds (O(steps^2) over a run).

    python scripts/bench_io.py [--steps 1000]
"""

import argparse
import tempfile
import time
from pathlib import Path

from gridpde import driver
from gridpde.builders import case_document, dump_case, mixture
from gridpde.casefile import parse_case


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    args = ap.parse_args()
    doc = case_document(cells=None, init=(0.7, 5), prompts=[mixture([0.5, 0.5], [[-1.0], [1.0]], [[[0.2]], [[0.3]]])],
                        teacher=(0.7, 6), solver={"method": "particles", "tokens": 16, "integrator": "euler"},
                        train={"steps": args.steps, "lr": 0.01, "checkpoint_every": 1, "backtrack": False},
                        output={"snapshots": 2, "plot": False})
    times = []
    real = driver.write_result

    def timed(*a, **k):
        t = time.perf_counter()
        real(*a, **k)
        times.append(time.perf_counter() - t)

    driver.write_result = timed
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "io.h5"
        t0 = time.perf_counter()
        driver.run_case(parse_case(dump_case(doc)), out, report=lambda line: None)
        total = time.perf_counter() - t0
        size = out.stat().st_size
    first, last = sum(times[1:101]) / 100, sum(times[-101:-1]) / 100
    print(f"{args.steps} explicit steps, a write after each: {len(times)} writes, "
          f"{sum(times) / total:.0%} of the run's time")
    print(f"write cost per step: first 100 steps {first * 1e3:.2f} ms, last 100 steps {last * 1e3:.2f} ms "
          f"(ratio {last / first:.1f}); final file {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
