"""Datasets of a loss case for the result file: risk, gradient, targets, teacher."""

from __future__ import annotations

import numpy as np

from gridpde.io.results import HEAD_DIMS
from gridpde.measures import GridMeasure


def target_datasets(problem) -> dict:
    """The targets tau^p of a :class:`~gridpde.objective.problem.Problem`: /targets/density
    (grid) or /targets/positions and weights (particles)."""
    if problem.targets[0] is None:
        return {}
    if isinstance(problem.targets[0], GridMeasure):
        rho = np.stack([t.rho for t in problem.targets])
        axes = ("x", "y", "z")[: rho.ndim - 1]
        return {"targets/density": (rho, ("prompt", *axes))}
    n = max(len(t.weights) for t in problem.targets)
    pos = np.full((len(problem.targets), n, problem.dim), np.nan)
    wts = np.zeros((len(problem.targets), n))
    for p, t in enumerate(problem.targets):
        pos[p, : len(t.weights)] = t.points
        wts[p, : len(t.weights)] = t.weights
    return {"targets/positions": (pos, ("prompt", "token", "dim")), "targets/weights": (wts, ("prompt", "token"))}


def teacher_datasets(case) -> dict:
    """/teacher/{Q,K,V,B}: the heads that made the targets, if a teacher did."""
    t = case.loss.teacher
    if t is None:
        return {}
    return {f"teacher/{k}": (v, HEAD_DIMS[k]) for k, v in {**t.arrays(), "B": t.B}.items()}


def risk_datasets(res) -> dict:
    """/risk, /risk_prompt and /grad/{Q,K,V,B} for the result file."""
    out = {"risk": (np.float64(res.risk), ()), "risk_prompt": (res.per_prompt, ("prompt",))}
    for k, v in {**res.grad.arrays(), "B": res.grad_B}.items():
        out[f"grad/{k}"] = (v, HEAD_DIMS[k])
    return out


