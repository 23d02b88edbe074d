"""Forward-pass benchmarks: throughputs and ratios measured in this run.

    python scripts/bench_forward.py [--quick]

Each ``bench_*`` function returns a list of rows (dicts with the keys of
``COLUMNS``); ``main`` prints them as one table. Add ``bench_tensor()``,
``bench_transport()``, ... the same way and list them in ``BENCHES``.

Times are the best of a few repeats (the machine may be shared), with
compilation excluded by a warm-up call. "pairs/s/head" counts source-target
pairs per second summed over heads: T * N * M / time.
"""

import argparse
import math
import os
import sys
import time

import numba
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from gridpde._numba import kernel  # noqa: E402
from gridpde.attention.direct import attention_velocity  # noqa: E402
from gridpde.attention.fastexp import fast_exp  # noqa: E402
from gridpde.twins.attention import reference_velocity  # noqa: E402

COLUMNS = ("bench", "case", "time_s", "rate", "unit", "note")


def best_time(fn, repeats):
    """Best wall time of ``repeats`` calls of ``fn()`` (after one warm-up)."""
    fn()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def attention_problem(n_sources, n_targets, heads=4, dim=2, seed=0):
    """Gaussian tokens in the padded layout, random heads with O(1) scores."""
    rng = np.random.default_rng(seed)
    sources = np.zeros((n_sources, 3))
    sources[:, 3 - dim :] = rng.standard_normal((n_sources, dim))
    targets = np.zeros((n_targets, 3))
    targets[:, 3 - dim :] = rng.standard_normal((n_targets, dim))
    weights = np.full(n_sources, 1.0 / n_sources)
    B = np.zeros((heads, 3, 3))
    B[:, 3 - dim :, 3 - dim :] = rng.standard_normal((heads, dim, dim))
    V = np.zeros((heads, 3, 3))
    V[:, 3 - dim :, 3 - dim :] = rng.standard_normal((heads, dim, dim))
    return targets, sources, weights, B, V


def bench_direct(sizes=(8192, 32768), heads=4, dim=2, numpy_targets=2048, blocks=(64, 256, 1024)):
    """Numba direct kernel vs the blocked-numpy twin, N = T, 2-D, M heads.

    The numpy twin is timed on the first ``numpy_targets`` targets (its cost
    is linear in T; pairs/s is per target-source pair) with the best of
    ``blocks``, so the ratio is against numpy's best showing.
    """
    rows = []
    for n in sizes:
        targets, sources, weights, B, V = attention_problem(n, n, heads, dim)
        case = f"{dim}-D N=T={n} M={heads}"
        t = best_time(lambda: attention_velocity(targets, sources, weights, B, V), 2 if n > 10000 else 5)
        numba_rate = n * n * heads / t
        rows.append(dict(bench="direct numba", case=case, time_s=t, rate=numba_rate, unit="pairs/s/head",
                         note=f"{numba.get_num_threads()} threads"))
        tn = min(numpy_targets, n)
        sub = np.ascontiguousarray(targets[:tn])
        best = (math.inf, None)
        for block in blocks:
            tb = best_time(lambda: reference_velocity(sub, sources, weights, B, V, block=block), 1)
            best = min(best, (tb, block))
        numpy_rate = tn * n * heads / best[0]
        rows.append(dict(bench="direct numpy", case=case, time_s=best[0], rate=numpy_rate, unit="pairs/s/head",
                         note=f"T={tn} timed, block={best[1]}"))
        rows.append(dict(bench="direct ratio", case=case, time_s=None, rate=numba_rate / numpy_rate,
                         unit="numba/numpy", note="same run"))
    return rows


@kernel
def _sum_fast_exp(x):
    s = 0.0
    for i in range(x.shape[0]):
        s += fast_exp(x[i])
    return s


@kernel
def _fast_exp_array(x, out):
    for i in range(x.shape[0]):
        out[i] = fast_exp(x[i])


@kernel
def _sum_libm_exp(x):
    s = 0.0
    for i in range(x.shape[0]):
        s += math.exp(x[i])
    return s


def bench_exp(n=2_000_000):
    """One-thread throughput of exp inside a numba loop: fast_exp vs libm.

    A ratio well above 1 shows that the fast_exp loop vectorises.
    """
    x = -np.random.default_rng(1).uniform(0.0, 50.0, n)
    t_fast = best_time(lambda: _sum_fast_exp(x), 5)
    t_libm = best_time(lambda: _sum_libm_exp(x), 5)
    y = np.empty_like(x)
    _fast_exp_array(x, y)
    rel = np.max(np.abs(y / np.exp(x) - 1.0))
    return [
        dict(bench="exp fast_exp", case=f"n={n}", time_s=t_fast, rate=n / t_fast, unit="exp/s", note="1 thread"),
        dict(bench="exp libm", case=f"n={n}", time_s=t_libm, rate=n / t_libm, unit="exp/s", note="1 thread"),
        dict(bench="exp ratio", case=f"n={n}", time_s=None, rate=t_libm / t_fast, unit="fast/libm",
             note=f"max rel err {rel:.1e}"),
    ]


def _gaussian_grid(n, dim):
    from gridpde.grid.mesh import Grid
    from gridpde.prompts import gaussian_cell_averages

    grid = Grid((-6.0,) * dim, (6.0,) * dim, (n,) * dim)
    rho = gaussian_cell_averages(grid, np.zeros(dim), np.eye(dim))
    return grid, rho


def bench_tensor(n=128, heads=3, dim=2, numpy_targets=2048):
    """The grid's factorised attention kernel at the faces of an n^d grid.

    Same sums as the direct kernel (sources = cell centres with cell masses,
    targets = face centres); compared with the blocked-numpy direct sums.
    """
    from gridpde.attention.tensor import tensor_velocity
    from gridpde.grid.forward import GridForward

    grid, rho = _gaussian_grid(n, dim)
    _, _, _, B, V = attention_problem(4, 4, heads, dim)
    solver = GridForward(grid, B[None, :, 3 - dim :, 3 - dim :], V[None, :, 3 - dim :, 3 - dim :])
    w = (rho * grid.cell_volume).reshape(grid.padded_shape)
    T, N = solver.targets.shape[0], rho.size
    out = np.empty((T, 3))
    lse = np.empty((heads, T))
    args = (solver.targets, w, *solver.sources, solver.B[0], solver.V[0], solver.h, out, lse)
    t = best_time(lambda: tensor_velocity(*args), 3)
    rate = T * N * heads / t
    Y = np.stack(np.meshgrid(*solver.sources, indexing="ij"), -1).reshape(-1, 3)
    sub = np.ascontiguousarray(solver.targets[:numpy_targets])
    tn = best_time(lambda: reference_velocity(sub, Y, w.ravel(), solver.B[0], solver.V[0], block=256), 1)
    numpy_rate = len(sub) * N * heads / tn
    case = f"{dim}-D {n}^{dim} cells, T={T} faces, M={heads}"
    return [
        dict(bench="tensor numba", case=case, time_s=t, rate=rate, unit="pairs/s/head",
             note=f"{numba.get_num_threads()} threads"),
        dict(bench="tensor ratio", case=case, time_s=None, rate=rate / numpy_rate, unit="numba/numpy",
             note=f"numpy direct {numpy_rate:.3g} pairs/s"),
    ]


def bench_transport(cases=((2, 512), (3, 64)), limiter="vanleer"):
    """Cells per second of the finite-volume right-hand side (MUSCL)."""
    from gridpde.grid.transport import Transport

    rows = []
    for dim, n in cases:
        grid, rho = _gaussian_grid(n, dim)
        u = [np.sin(np.linspace(0, 3, grid.face_points(a).shape[0])).reshape(grid.face_shape(a))
             for a in range(dim)]
        tr = Transport(grid.shape, grid.dx, limiter)
        out = np.empty_like(rho)
        t = best_time(lambda: tr.rhs(rho, u, out), 10)
        rows.append(dict(bench="transport", case=f"{dim}-D {n}^{dim} {limiter}", time_s=t,
                         rate=rho.size / t, unit="cells/s", note=f"{numba.get_num_threads()} threads"))
    return rows


BENCHES = {"direct": bench_direct, "tensor": bench_tensor, "transport": bench_transport, "exp": bench_exp}


def print_table(rows):
    def fmt(key, v):
        if v is None:
            return "-"
        if key == "time_s":
            return f"{v:.3f}"
        if key == "rate":
            return f"{v:.3g}"
        return str(v)

    cells = [[fmt(k, r.get(k)) for k in COLUMNS] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(COLUMNS)]
    print("  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes only")
    ap.add_argument("--only", choices=sorted(BENCHES), action="append", help="run only these benches")
    args = ap.parse_args(argv)
    print(f"numba threads: {numba.get_num_threads()}  (cpu_count {os.cpu_count()}), "
          f"numpy {np.__version__}, numba {numba.__version__}")
    print("compiling kernels (first run only; cached afterwards)...", flush=True)
    rows = []
    for name in args.only or list(BENCHES):
        fn = BENCHES[name]
        if args.quick and name == "direct":
            rows += fn(sizes=(4096,), numpy_targets=1024, blocks=(256,))
        elif args.quick and name == "tensor":
            rows += fn(n=64)
        else:
            rows += fn()
    print_table(rows)


if __name__ == "__main__":
    main()
