"""In-context linear regression: prompts of labelled examples and a query whose label the model predicts.

Prompt p draws a task w_p ~ N(0, I_k) (k = d - 1 features). Its context is
the law of the token (x, w_p·x + noise xi), x Gaussian N(0, scale^2 I_k) or
uniform on [-scale, scale]^k, xi ~ N(0, 1): a measure on R^d with d = k + 1
(2-D for one feature, 3-D for two). Its queries are tokens (x_q, 0) with
x_q drawn from the same feature law and labels w_p·x_q (noise-free): the
readout loss compares their last coordinate at s = 1 with the label. They
move with the context's field and carry no mass, so the context is not
perturbed by them (the causal mask).

With ``examples = n > 0`` each context is instead n sampled examples of
weight 1/n (a :class:`~gridpde.prompts.TokensPrompt`): the finite-context
transformer of the particle method. Tasks and queries are drawn from one
generator seeded by ``seed``, in prompt order, and the examples from another
(seeded by ``seed``, n and ``example_seed``), so that contexts of every size
n, and every draw of them, share the same tasks and queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from gridpde.prompts import GaussianPrompt, Prompt, Queries, RegressionPrompt, TokensPrompt

Features = Literal["gaussian", "uniform"]


@dataclass(frozen=True)
class ICLSpec:
    """[icl]: ``prompts`` tasks with ``queries`` queries each (see the module docstring)."""

    prompts: int = 8
    features: Features = "gaussian"
    scale: float = 1.0
    noise: float = 0.1
    queries: int = 16
    examples: int = 0
    seed: int = 0
    example_seed: int = 0  # another draw of the examples, for the same tasks and queries

    def __post_init__(self):
        for name, lo in (("prompts", 1), ("queries", 1), ("examples", 0), ("seed", 0), ("example_seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"icl.{name} = {v!r}: expected an integer >= {lo}")
        if self.features not in ("gaussian", "uniform"):
            raise ValueError(f'icl.features = {self.features!r}: expected "gaussian" or "uniform"')
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"icl.scale = {self.scale!r}: expected a number > 0")
        if not (np.isfinite(self.noise) and self.noise >= 0):
            raise ValueError(f"icl.noise = {self.noise!r}: expected a number >= 0")
        if self.noise == 0 and self.examples == 0:
            raise ValueError("icl.noise = 0: the context law would live on a hyperplane (no density); "
                             "give noise > 0, or examples > 0 for token prompts")


def _features(spec: ICLSpec, rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    if spec.features == "gaussian":
        return spec.scale * rng.standard_normal((n, k))
    return rng.uniform(-spec.scale, spec.scale, size=(n, k))


def context_law(spec: ICLSpec, w: np.ndarray) -> Prompt:
    """The context measure of task w: Gaussian N(0, [[s^2 I, s^2 w], [s^2 w^T, s^2 |w|^2 + noise^2]]) or uniform."""
    if spec.features == "uniform":
        return RegressionPrompt(w, spec.scale, spec.noise)
    s2 = spec.scale**2
    k = w.size
    cov = np.empty((k + 1, k + 1))
    cov[:k, :k] = s2 * np.eye(k)
    cov[:k, k] = cov[k, :k] = s2 * w
    cov[k, k] = s2 * (w @ w) + spec.noise**2
    return GaussianPrompt(np.zeros(k + 1), cov)


def regression_prompts(spec: ICLSpec, dim: int) -> tuple[tuple[Prompt, ...], tuple[Queries, ...], np.ndarray]:
    """(prompts, their queries, the tasks w (P, dim - 1)) of in-context regression in ``dim`` dimensions."""
    if not 2 <= dim <= 3:
        raise ValueError(f"icl: dim = {dim}: expected 2 (one feature) or 3 (two features)")
    k = dim - 1
    rng = np.random.default_rng([spec.seed, 0])
    examples = np.random.default_rng([spec.seed, 1, spec.examples, spec.example_seed])
    prompts, queries, tasks = [], [], []
    for _ in range(spec.prompts):
        w = rng.standard_normal(k)
        xq = _features(spec, rng, spec.queries, k)
        queries.append(Queries(np.column_stack([xq, np.zeros(spec.queries)]), labels=(xq @ w)[:, None]))
        tasks.append(w)
    for w in tasks:
        if spec.examples:
            x = _features(spec, examples, spec.examples, k)
            y = x @ w + spec.noise * examples.standard_normal(spec.examples)
            prompts.append(TokensPrompt(np.column_stack([x, y])))
        else:
            prompts.append(context_law(spec, w))
    return tuple(prompts), tuple(queries), np.array(tasks)
