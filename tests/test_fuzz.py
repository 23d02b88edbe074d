"""Property-based fuzzing of case files: mutated cases end with exit 0, 1 or 2, never a traceback
or a hang; exit 2 names the key; a file marked finished holds no NaN (seeded, about a minute)."""

import contextlib
import io
import math
import signal

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridpde.builders import case_document, dump_case, gaussian, mixture
from gridpde.cli import main

NASTY = [0, -1, 1, 2, 3, 1e308, -1e308, 5e-324, float("nan"), float("inf"), float("-inf"), 2**62, "x", "",
         True, [], [1.0], [[1.0]], [[[1.0, 2.0]]], {"a": 1}, 0.5, -0.5, 1e-9, 1e9]


def _base(out) -> dict:
    return case_document(cells=48, init=(0.7, 1), prompts=[gaussian([0.3], [[0.6]]),
                                                            mixture([0.5, 0.5], [[-1.0], [1.2]], [[[0.3]], [[0.4]]])],
                         teacher=(0.7, 2), solver={"scheme": "muscl", "mass_tol": 1e-3},
                         output={"path": str(out), "snapshots": 2, "plot": False})


def _leaves(doc, prefix=()):
    """(path, value) of every key of the document: tables, arrays of tables and their keys."""
    items = doc.items() if isinstance(doc, dict) else enumerate(doc)
    for k, v in items:
        path = (*prefix, k)
        yield path, v
        if isinstance(v, dict) or (isinstance(v, list) and v and all(isinstance(x, dict) for x in v)):
            yield from _leaves(v, path)


def _set(doc, path, value):
    for k in path[:-1]:
        doc = doc[k]
    if value is _DELETE:
        del doc[path[-1]]
    else:
        doc[path[-1]] = value


_DELETE = object()


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang()


MUTATION = st.tuples(st.sampled_from(["value", "delete", "unknown", "bytes"]), st.integers(0, 10**6),
                     st.integers(0, len(NASTY) - 1), st.binary(min_size=1, max_size=8))


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(mutation=MUTATION)
def test_mutated_cases_end_cleanly(tmp_path_factory, mutation):
    kind, pick, nasty, junk = mutation
    tmp = tmp_path_factory.mktemp("fuzz")
    out = tmp / "r.h5"
    doc = _base(out)
    paths = [p for p, _ in _leaves(doc) if p[0] != "output"]
    key = ""
    if kind == "value":
        path = paths[pick % len(paths)]
        _set(doc, path, NASTY[nasty])
        key = next(str(k) for k in reversed(path) if isinstance(k, str))
    elif kind == "delete":
        named = [p for p in paths if isinstance(p[-1], str)]
        path = named[pick % len(named)]
        _set(doc, path, _DELETE)
        key = path[-1]
    elif kind == "unknown":
        table = ["solver", "model", "grid", "loss"][pick % 4]
        doc[table]["colour"] = 1
        key = "colour"
    text = dump_case(doc)
    if kind == "bytes":
        cut = pick % (len(text) + 1)
        text = text[:cut] + junk.decode("latin-1") + text[cut:]
    case = tmp / "case.toml"
    case.write_text(text, encoding="utf-8")
    err = io.StringIO()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(60)
    try:
        with np.errstate(all="ignore"), contextlib.redirect_stderr(err):
            rc = main(["run", str(case), "--no-plot"])
    except _Hang:
        pytest.fail(f"no exit within 60 s ({kind} {key}):\n{text}")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    message = err.getvalue()
    assert rc in (0, 1, 2), message
    assert "Traceback" not in message
    if rc == 2:
        lines = [ln for ln in message.splitlines() if ln.startswith("gridpde: error:")]
        assert len(lines) == 1, message
        if kind != "bytes":  # the key, or its table, or the prompt it belongs to
            assert key in lines[0] or "prompts" in lines[0] or "model" in lines[0] or "[" in lines[0], (key, lines)
    if rc == 0 and kind != "bytes":  # (bytes may land in output.path)
        with h5py.File(out) as f:
            assert f.attrs["status"] == "finished"
            for name in ("density", "mass", "mean", "cov"):
                assert np.all(np.isfinite(f[name][()])), name
            if "risk" in f:
                assert math.isfinite(f["risk"][()]) and np.all(np.isfinite(f["grad/Q"][()]))
