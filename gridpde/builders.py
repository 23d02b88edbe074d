"""Case documents built in Python: one place for the small cases tests and scripts use.

:func:`case_document` returns a case as a plain dict (the TOML document's
shape), which callers adjust and turn into case-file text with
:func:`dump_case` (for :func:`gridpde.casefile.parse_case`, or to write a
file). The defaults are a 1-D grid case; every table can be replaced.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def gaussian(mean, cov, **extra) -> dict:
    """A [[prompts]] table of kind "gaussian"."""
    return {"kind": "gaussian", "mean": list(mean), "cov": np.asarray(cov, float).tolist(), **extra}


def mixture(weights, means, covs, **extra) -> dict:
    """A [[prompts]] table of kind "mixture"."""
    return {"kind": "mixture", "weights": list(weights), "means": np.asarray(means, float).tolist(),
            "covs": np.asarray(covs, float).tolist(), **extra}


def uniform(lower, upper, **extra) -> dict:
    """A [[prompts]] table of kind "uniform"."""
    return {"kind": "uniform", "lower": list(lower), "upper": list(upper), **extra}


#: the 1-D prompts most tests use: a Gaussian and a two-bump mixture
PROMPTS_1D = (gaussian([0.3], [[0.6]]), mixture([0.5, 0.5], [[-1.0], [1.2]], [[[0.3]], [[0.4]]]))


def case_document(
    dim: int = 1,
    *,
    box: float = 6.0,
    cells: int | None = 48,
    layers: int = 2,
    heads: int = 2,
    head_dim: int | None = None,
    init: tuple[float, int] = (0.7, 1),
    prompts=PROMPTS_1D,
    loss: dict | None = None,
    teacher: tuple[float, int] | None = None,
    solver: dict | None = None,
    train: dict | None = None,
    output: dict | None = None,
) -> dict:
    """A case as a dict: grid [-box, box]^dim with ``cells`` per axis (None: no [grid]),
    L x M random heads ``init = (scale, seed)``, the given prompts, and the optional
    tables. ``teacher = (scale, seed)`` adds [loss.teacher] (and an mmd [loss] if none).
    """
    doc: dict[str, Any] = {"dim": dim}
    if cells is not None:
        doc["grid"] = {"lower": [-box] * dim, "upper": [box] * dim, "cells": [cells] * dim}
    doc["model"] = {"layers": layers, "heads": heads, "head_dim": head_dim or dim,
                    "init": {"scale": init[0], "seed": init[1]}}
    doc["prompts"] = [dict(p) for p in prompts]
    if teacher is not None:
        loss = dict(loss or {"kind": "mmd", "sigma": 1.0})
        loss["teacher"] = {"init": {"scale": teacher[0], "seed": teacher[1]}}
    for name, table in (("loss", loss), ("solver", solver), ("train", train), ("output", output)):
        if table is not None:
            doc[name] = dict(table)
    return doc


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return repr(v) if math.isfinite(v) else ("nan" if v != v else ("inf" if v > 0 else "-inf"))
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, np.ndarray):
        return _value(v.tolist())
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"dump_case: cannot write {type(v).__name__} as TOML")


def dump_case(doc: dict) -> str:
    """TOML text of a case document (tables, arrays of tables, inline tables, arrays, scalars).

    Top-level tables whose values are dicts become [tables] (one level of
    sub-tables, e.g. [loss.teacher]); a list of dicts becomes [[arrays]].
    """
    def tables(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)

    lines = [f"{k} = {_value(v)}" for k, v in doc.items() if not isinstance(v, dict) and not tables(v)]
    for name, table in doc.items():
        if isinstance(table, dict):
            subs = {k: v for k, v in table.items() if isinstance(v, dict) and k not in ("init", "target")}
            lines.append(f"[{name}]")
            lines += [f"{k} = {_value(v)}" for k, v in table.items() if k not in subs]
            for sub, inner in subs.items():
                lines.append(f"[{name}.{sub}]")
                lines += [f"{k} = {_value(v)}" for k, v in inner.items()]
        elif tables(table):
            for item in table:
                lines.append(f"[[{name}]]")
                lines += [f"{k} = {_value(v)}" for k, v in item.items()]
    return "\n".join(lines) + "\n"
