"""Mutated case files run through the command line: a table of how runs end.

Mutations of a valid 1-D loss case (a value replaced by one of a list of
nasty values, a key deleted, an unknown key, bytes inserted), each run as
``python -m gridpde run`` in a subprocess with a 60 s limit. Counts: exit 0,
exit 1, exit 2 with one line naming the key, other exit 2, tracebacks,
hangs, and "wrongly accepted" (exit 0 with NaN in a file marked finished).

    python scripts/fuzz_cases.py [-n 150] [--seed 0] [--pythonpath DIR]

``--pythonpath`` runs another checkout's gridpde (for a before/after table);
the mutations come from this checkout's gridpde/builders.py either way.
"""

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import h5py
import numpy as np

HERE = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("builders", HERE / "gridpde" / "builders.py")
builders = importlib.util.module_from_spec(spec)
spec.loader.exec_module(builders)

NASTY = [0, -1, 1, 2, 3, 1e308, -1e308, 5e-324, float("nan"), float("inf"), float("-inf"), 2**62, "x", "",
         True, [], [1.0], [[1.0]], [[[1.0, 2.0]]], {"a": 1}, 0.5, -0.5, 1e-9, 1e9]


def base(out):
    return builders.case_document(
        cells=48, init=(0.7, 1),
        prompts=[builders.gaussian([0.3], [[0.6]]), builders.mixture([0.5, 0.5], [[-1.0], [1.2]], [[[0.3]], [[0.4]]])],
        teacher=(0.7, 2), solver={"scheme": "muscl", "mass_tol": 1e-3},
        output={"path": str(out), "snapshots": 2, "plot": False})


def leaves(doc, prefix=()):
    for k, v in (doc.items() if isinstance(doc, dict) else enumerate(doc)):
        path = (*prefix, k)
        yield path
        if isinstance(v, dict) or (isinstance(v, list) and v and all(isinstance(x, dict) for x in v)):
            yield from leaves(v, path)


def mutate(rng, out):
    doc = base(out)
    paths = [p for p in leaves(doc) if p[0] != "output"]
    kind = ["value", "delete", "unknown", "bytes"][rng.integers(4)]
    key = ""
    if kind == "value":
        path = paths[rng.integers(len(paths))]
        node = doc
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = NASTY[rng.integers(len(NASTY))]
        key = next(str(k) for k in reversed(path) if isinstance(k, str))
    elif kind == "delete":
        named = [p for p in paths if isinstance(p[-1], str)]
        path = named[rng.integers(len(named))]
        node = doc
        for k in path[:-1]:
            node = node[k]
        del node[path[-1]]
        key = path[-1]
    elif kind == "unknown":
        doc[["solver", "model", "grid", "loss"][rng.integers(4)]]["colour"] = 1
        key = "colour"
    text = builders.dump_case(doc)
    if kind == "bytes":
        cut = rng.integers(len(text) + 1)
        text = text[:cut] + bytes(rng.integers(0, 256, rng.integers(1, 8)).astype(np.uint8)).decode("latin-1") + text[cut:]
    return kind, key, text


def targeted(tmp: Path) -> list[tuple[str, str, str, list[str]]]:
    """The hardening report's classes of bad input: (kind, key, case text, extra arguments)."""
    out = tmp / "t.h5"
    (tmp / "plain.txt").write_text("x")
    (tmp / "empty.npz").write_bytes(b"")
    (tmp / "trunc.npz").write_bytes(b"PK\x03\x04trunc")
    cases = []

    def add(kind, key, doc=None, text=None, args=()):
        cases.append((kind, key, text if text is not None else builders.dump_case(doc), list(args)))

    for target in (str(tmp), str(tmp / ("x" * 300)), ".", str(tmp / "plain.txt" / "r.h5")):
        add("output path", "output.path", base(out), args=["-o", target])
    for name in ("empty.npz", "trunc.npz"):
        d = base(out)
        d["model"] = {"layers": 2, "heads": 2, "head_dim": 1, "heads_file": str(tmp / name)}
        add("heads file", "model.heads_file", d)
    for cells, snaps in (([100000, 100000], 2), ([2**62, 2], 2), ([64, 64], 1_000_000)):
        d = base(out)
        d["dim"] = 2
        d["grid"] = {"lower": [-6.0, -6.0], "upper": [6.0, 6.0], "cells": cells}
        d["model"]["head_dim"] = 2
        d["prompts"] = [builders.gaussian([0.0, 0.0], [[0.5, 0.0], [0.0, 0.5]])]
        d["loss"]["teacher"] = {"init": {"scale": 0.7, "seed": 2}}
        d["output"]["snapshots"] = snaps
        add("huge size", "grid.cells" if snaps == 2 else "output.snapshots", d)
    for cfl in (1e-9, 5e-324):
        d = base(out)
        d["solver"]["cfl"] = cfl
        add("cfl", "solver.cfl", d)
    d = base(out)
    d["model"] = {"layers": 1, "heads": 1, "head_dim": 1, "Q": [[[[1.0]]]], "K": [[[[1.0]]]], "V": [[[[1e300]]]]}
    d["loss"]["teacher"] = {"Q": [[[[1.0]]]], "K": [[[[1.0]]]], "V": [[[[1.0]]]]}
    add("V = 1e300", "", d)
    d = base(out)
    d["loss"]["sigma"] = 1e-300
    add("sigma = 1e-300", "", d)
    d = base(out)
    d["train"] = {"steps": 1, "lr": 1e308, "scheme": "implicit"}
    add("lr = 1e308", "train.lr", d)
    add("nesting", "", text="dim = " + "[" * 3000 + "]" * 3000 + "\n")
    add("long key", "", text=builders.dump_case(base(out)) + "k" * 100_000 + " = 1\n")
    return cases


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pythonpath", default=None)
    ap.add_argument("-v", "--verbose", action="store_true", help="print the runs that did not end in exit 0 or 2")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    env = {**os.environ}
    if args.pythonpath:
        env["PYTHONPATH"] = args.pythonpath
    counts = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        jobs = []
        for i in range(args.n):
            d = Path(tmp) / f"c{i}"
            d.mkdir()
            jobs.append((d, *mutate(rng, d / "r.h5"), []))
        d = Path(tmp) / "targeted"
        d.mkdir()
        jobs += [(d / f"t{i}", *case) for i, case in enumerate(targeted(d))]
        for d, kind, key, text, extra in jobs:
            d.mkdir(exist_ok=True)
            out = d / "r.h5"
            (d / "case.toml").write_text(text, encoding="utf-8")
            try:
                p = subprocess.run([sys.executable, "-m", "gridpde", "run", str(d / "case.toml"), "--no-plot", *extra],
                                   cwd=d, env=env, capture_output=True, text=True, timeout=60)
            except subprocess.TimeoutExpired:
                counts["hang (> 60 s)"] += 1
                if args.verbose:
                    print(f"hang: {kind} {key}")
                continue
            err = p.stderr
            if args.verbose and (p.returncode not in (0, 2) or "Traceback" in err):
                print(f"{kind} {key}: exit {p.returncode}: {err.strip().splitlines()[-1] if err.strip() else ''}")
            if "Traceback" in err:
                counts["traceback"] += 1
            elif p.returncode == 2:
                line = [ln for ln in err.splitlines() if ln.startswith("gridpde: error:")]
                named = len(line) == 1 and (kind == "bytes" or key in line[0] or "[" in line[0] or "model" in line[0])
                counts["exit 2, one line naming the key" if named else "exit 2, other message"] += 1
            elif p.returncode == 0:
                bad = False
                if out.exists():
                    with h5py.File(out) as f:
                        if f.attrs["status"] == "finished":
                            bad = any(not np.all(np.isfinite(f[n][()])) for n in ("density", "mean", "cov", "risk",
                                                                                    "grad/Q") if n in f)
                counts["wrongly accepted (NaN, finished)" if bad else "exit 0"] += 1
            elif p.returncode == 1:
                counts["exit 1 (run failed, saved)"] += 1
            else:
                counts[f"exit {p.returncode}"] += 1
    print(f"{args.n} mutated cases (seed {args.seed}) and {len(jobs) - args.n} targeted ones")
    for k, v in sorted(counts.items(), key=lambda kv: -kv[1]):
        print(f"  {k:<36} {v}")


if __name__ == "__main__":
    main()
