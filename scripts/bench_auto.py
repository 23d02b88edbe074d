"""Where the attention table pays on a grid: one stage's velocity, table against exact sums (ratios from one run).

For each grid size and head count, on a Gaussian and on two bumps (box
[-6, 6]^d, heads N(0, 0.8^2)), the time of one ``table_velocity`` call from
scratch (cold) and from the previous call's layout (warm, as every later
stage of a layer starts), against ``tensor_velocity``. What the table fell
back to is printed too. These ratios set ``AUTO_TABLE_CELLS`` in
gridpde/grid/forward.py (attention = "auto").

    python scripts/bench_auto.py --dim 3 --tol 1e-6 --cells 16,24,32
    python scripts/bench_auto.py --dim 2 --tol 1e-10 --cells 48,64,96
"""

import argparse
import time

import numpy as np

from gridpde.attention.table import table_velocity
from gridpde.attention.tensor import tensor_velocity
from gridpde.grid.forward import GridForward
from gridpde.grid.mesh import Grid
from gridpde.heads import Heads
from gridpde.prompts import GaussianPrompt, MixturePrompt


def best(f, repeats=3):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def prompt(name: str, d: int):
    if name == "Gaussian":
        return GaussianPrompt([0.3, -0.2, 0.1][:d], np.diag([0.5, 0.4, 0.6][:d]))
    return MixturePrompt([0.5, 0.5], [[-1.0, 0.0, 0.3][:d], [1.0, 0.5, -0.3][:d]],
                         [np.diag([0.3, 0.3, 0.3][:d]), np.diag([0.25, 0.35, 0.3][:d])])  # fmt: skip


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=3)
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--cells", default="16,24,32", help="cells per axis, comma-separated")
    ap.add_argument("--heads", default="2,8", help="heads per layer, comma-separated")
    args = ap.parse_args()
    d, tol = args.dim, args.tol
    print(f"{d}-D, tol {tol:g}: one stage's velocity; ratios exact / table (> 1: the table is faster)")
    for n in (int(v) for v in args.cells.split(",")):
        for M in (int(v) for v in args.heads.split(",")):
            for name in ("Gaussian", "two bumps"):
                grid = Grid((-6.0,) * d, (6.0,) * d, (n,) * d)
                heads = Heads.random(1, M, d, d, 0.8, 13)
                s = GridForward(grid, heads.B, heads.V, attention="table", attention_tol=tol)
                w = (prompt(name, d).cell_averages(grid) * grid.cell_volume).reshape(grid.padded_shape)
                call = (s.targets, w, *s.sources, s.B[0], s.V[0], s.h)
                out = np.empty((len(s.targets), 3))
                info = table_velocity(*call, out, tol=tol)  # compiles, and gives the warm start's layout
                cold = best(lambda: table_velocity(*call, out, tol=tol))
                warm = best(lambda: table_velocity(*call, out, tol=tol, layout=info["layout"]))
                lse = np.empty((M, len(s.targets)))
                exact = best(lambda: tensor_velocity(*call, out, lse), 2)
                used = f"{info['kind']} of {info['table_nodes']} nodes" if info["method"] == "table" else "exact sums"
                print(f"{n:4d}^{d} M {M:2d} {name:>9}: {used:>24}; exact / cold {exact / cold:6.2f}, "
                      f"exact / warm {exact / warm:6.2f}", flush=True)


if __name__ == "__main__":
    main()
