"""In-context linear regression, trained: what the risk reaches, what the heads compute, context size, NTK.

The experiment of ``scripts/icl_study.py``. Each run trains the heads on the
readout risk of :mod:`gridpde.icl` prompts (Gaussian or uniform features,
grid or particles) and measures:

- the risk reached, against the trivial predictor (0: risk mean y_q^2) and
  the infinite-context optimum (0: the context determines w_p);
- the prediction map: per prompt the least-squares line yhat = a_p x_q + b_p
  through the queries' predictions, and how well a_p = c Sigma_x w_p (one step
  of preconditioned gradient descent from w = 0, the known optimum of linear
  attention, predicts x_q^T Gamma Sigma_x w_p: linear in the task) describes
  the trained map: the fitted c, and the relative distance of the predictions
  from that best linear-in-w predictor;
- the finite-context transformer: the trained heads on contexts of n sampled
  examples (the same tasks and queries), risk against n;
- the NTK diagnostics of the prompts (Gaussian contexts have a quadratic
  Lambda, the degenerate case; uniform ones do not).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from gridpde.builders import case_document, dump_case
from gridpde.casefile import parse_case
from gridpde.icl import ICLSpec, regression_prompts
from gridpde.method import make_method
from gridpde.objective.problem import Problem
from gridpde.train.flow import train_heads


@dataclass
class ICLRun:
    """One trained configuration and what it measured."""

    name: str
    risk: list[float]
    trivial: float
    final: float
    seconds: float
    steps: int
    message: str
    x: np.ndarray = field(repr=False)  # (P, q) query features (first feature)
    y: np.ndarray = field(repr=False)  # (P, q) labels
    yhat: np.ndarray = field(repr=False)  # (P, q) predictions
    tasks: np.ndarray = field(repr=False)  # (P, k)
    gd_slope: float = np.nan  # c of a_p = c Sigma_x w_p (d_x = 1)
    gd_distance: float = np.nan  # |yhat - c Sigma_x w_p x_q| / |yhat|
    heads: object = field(default=None, repr=False)


def _box(spec: ICLSpec, tasks: np.ndarray, growth: float) -> tuple[list[float], list[float]]:
    """A box holding the features and labels (7 sd, times ``growth`` for what the heads add)."""
    k = tasks.shape[1]
    sx = spec.scale if spec.features == "gaussian" else spec.scale / np.sqrt(3.0)
    xh = 7.0 * sx * growth if spec.features == "gaussian" else (spec.scale + 4 * sx) * growth
    ysd = np.sqrt(np.max(np.sum(tasks**2, axis=1)) * sx**2 + spec.noise**2)
    yh = 7.0 * ysd * growth
    half = [round(float(xh), 1)] * k + [round(float(yh), 1)]
    return [-h for h in half], half


def icl_case(method: str, spec: ICLSpec, dim: int = 2, cells: int = 32, tokens: int = 1024,
             layers: int = 1, heads: int = 2, init=(0.3, 1), train: dict | None = None, growth: float = 2.0):
    """A readout case on the [icl] prompts of ``spec`` (grid box sized from its tasks)."""
    tasks = regression_prompts(spec, dim)[2]
    doc = case_document(dim, cells=None, layers=layers, heads=heads, init=init, prompts=[],
                        loss={"kind": "readout"}, train=train,
                        solver={"method": method, "tokens": tokens, "mass_tol": 1e-3})
    del doc["prompts"]
    if method == "grid":
        lo, hi = _box(spec, tasks, growth)
        doc["grid"] = {"lower": lo, "upper": hi, "cells": [cells] * dim}
    doc["icl"] = dict(spec.__dict__)
    return parse_case(dump_case(doc))


def predictions(case, heads) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x_q (P, q), labels (P, q), predictions (P, q)): the label slot of each query at s = 1."""
    method = make_method(case)
    solver = method.solver(heads)
    xs, ys, yh = [], [], []
    for st, q in zip(method.case_states(flow=False), case.queries):
        out = method.advance(solver, st, 0.0, 1.0)
        yh.append(method.queries(out)[:, -1])
        xs.append(q.points[:, 0])
        ys.append(q.labels[:, 0])
    return np.array(xs), np.array(ys), np.array(yh)


def gd_fit(spec: ICLSpec, x, yhat, tasks) -> tuple[float, float]:
    """(c, distance): a_p = c Sigma_x w_p fitted over prompts (one feature), and how far the predictions
    are from c Sigma_x w_p x_q relative to their size."""
    var = spec.scale**2 if spec.features == "gaussian" else spec.scale**2 / 3.0
    w = tasks[:, 0]
    basis = var * w[:, None] * x  # (P, q): the one-step-GD prediction per unit c
    c = float(np.sum(basis * yhat) / np.sum(basis * basis))
    return c, float(np.linalg.norm(yhat - c * basis) / np.linalg.norm(yhat))


def train_icl(method: str, spec: ICLSpec, dim: int = 2, steps: int = 20, lr: float = 100.0, scheme="explicit",
              **case_kw) -> ICLRun:
    case = icl_case(method, spec, dim, train={"steps": steps, "lr": lr, "scheme": scheme}, **case_kw)
    problem = Problem(case)
    t = time.perf_counter()
    state, record = train_heads(case, problem=problem)
    seconds = time.perf_counter() - t
    final = problem.risk(state.heads).risk
    x, y, yhat = predictions(case, state.heads)
    tasks = regression_prompts(spec, dim)[2]
    trivial = float(np.mean([q.weights @ q.labels[:, 0] ** 2 for q in case.queries]))
    c, dist = gd_fit(spec, x, yhat, tasks) if dim == 2 else (np.nan, np.nan)
    return ICLRun(f"{method}-{spec.features}-d{dim - 1}", list(record.risk) + [final], trivial, final, seconds,
                  state.step, state.message, x, y, yhat, tasks, c, dist, state.heads)


def context_sizes(spec: ICLSpec, heads, sizes=(8, 32, 128, 512, 2048), dim: int = 2, draws: int = 4):
    """The readout risk of ``heads`` on contexts of n sampled examples (the same tasks and queries),
    over ``draws`` draws of the examples.

    Returns:
        (sizes, mean risk per n, sd over the draws per n, the risk on the context law (4096 tokens)).
    """
    law = Problem(icl_case("particles", spec, dim, tokens=4096)).risk(heads).risk
    means, sds = [], []
    for n in sizes:
        r = [Problem(icl_case("particles", replace(spec, examples=n, example_seed=s), dim)).risk(heads).risk
             for s in range(draws)]
        means.append(float(np.mean(r)))
        sds.append(float(np.std(r)))
    return list(sizes), means, sds, law


def ntk_table(spec_g: ICLSpec, spec_u: ICLSpec, dim: int = 2) -> dict:
    """Tangent-map rank and smallest singular value of Gaussian and uniform ICL prompts."""
    from gridpde.ntk.diagnostics import ntk_diagnostics

    out = {}
    for name, spec in (("gaussian", spec_g), ("uniform", spec_u)):
        prompts = regression_prompts(spec, dim)[0]
        diag = ntk_diagnostics(prompts, degree=2)
        t = diag.tangent
        out[name] = {"rank": int(t.rank), "columns": int(t.n_cols),
                     "sigma_min_rel": float(t.sigma[-1] / t.sigma_ref),
                     "lse_a_rank": int(diag.lse_a_pooled.rank), "lse_a_columns": int(diag.lse_a_pooled.n_cols)}
    return out


def save_run(path, run: ICLRun) -> None:
    """One run to an HDF5 file (written to a temporary name and renamed: a crash leaves no half file)."""
    import os

    import h5py

    tmp = f"{path}.tmp"
    with h5py.File(tmp, "w") as f:
        for key in ("risk", "x", "y", "yhat", "tasks"):
            f[key] = np.asarray(getattr(run, key))
        for key in ("Q", "K", "V"):
            f[f"heads/{key}"] = getattr(run.heads, key)
        for key in ("name", "trivial", "final", "seconds", "steps", "message", "gd_slope", "gd_distance"):
            f.attrs[key] = getattr(run, key)
    os.replace(tmp, path)


def load_run(path) -> ICLRun:
    import h5py

    from gridpde.heads import Heads

    with h5py.File(path, "r") as f:
        arrays = {k: f[k][()] for k in ("risk", "x", "y", "yhat", "tasks")}
        heads = Heads(*(f[f"heads/{k}"][()] for k in ("Q", "K", "V")))
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
    return ICLRun(risk=list(arrays.pop("risk")), heads=heads, **arrays, **{k: attrs[k] for k in (
        "name", "trivial", "final", "seconds", "steps", "message", "gd_slope", "gd_distance")})
