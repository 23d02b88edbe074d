"""Gradient checks: the adjoint against finite differences and a Taylor test.

For a direction delta (random, seeded, unit Frobenius norm):

- per parameter block (Q, K, V): the directional derivative <grad R, delta>
  against the central difference (R(theta + eps delta) - R(theta - eps delta)) / 2 eps;
- Taylor test on all blocks at once: the remainder
  r(eps) = |R(theta + eps delta) - R(theta) - eps <grad R, delta>| falls as
  eps^2 when the gradient is right (as eps if it is wrong); its slope is
  fitted over the decades of eps where r is above round-off.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gridpde.heads import Heads
from gridpde.objective.problem import Problem

BLOCKS = ("Q", "K", "V")


@dataclass
class BlockCheck:
    block: str
    adjoint: float
    finite_difference: float

    @property
    def rel_error(self) -> float:
        return abs(self.adjoint - self.finite_difference) / max(abs(self.finite_difference), 1e-300)


@dataclass
class TaylorTest:
    eps: np.ndarray
    remainder: np.ndarray
    slope: float
    #: the probes refined the depth-step schedule even after a retake: the checks compare two risks
    note: str = ""


def _direction(heads: Heads, blocks, rng) -> np.ndarray:
    """A unit vector in the layout of ``heads.flat()``, random in ``blocks``, zero elsewhere."""
    parts = [rng.standard_normal(a.size) if k in blocks else np.zeros(a.size) for k, a in heads.arrays().items()]
    delta = np.concatenate(parts)
    return delta / np.linalg.norm(delta)


def gradient_checks(problem: Problem, heads: Heads, eps: float = 1e-4, seed: int = 0,
                    taylor_eps=tuple(10.0 ** -np.arange(1, 6))):
    """Run the per-block checks and the Taylor test at ``heads``.

    Returns:
        (risk, list of BlockCheck, TaylorTest).
    """
    for _ in range(3):
        version = problem.version
        result = _checks(problem, heads, eps, seed, taylor_eps)
        if problem.version == version:
            return result
    # the probes keep refining the schedule (eps moves the heads far): the risk they see jumps
    result[2].note = ("the probes refined the depth-step schedule (the discrete risk changed under them): "
                      "take a smaller --eps; the Taylor slope is not meaningful here")
    return result


def _checks(problem: Problem, heads: Heads, eps: float, seed: int, taylor_eps):
    rng = np.random.default_rng(seed)
    res = problem.risk_and_grad(heads)
    g, x = res.grad.flat(), heads.flat()

    def risk(e: float, delta: np.ndarray) -> float:
        return problem.risk(heads.with_flat(x + e * delta)).risk

    checks = []
    for block in BLOCKS:
        delta = _direction(heads, (block,), rng)
        fd = (risk(eps, delta) - risk(-eps, delta)) / (2 * eps)
        checks.append(BlockCheck(block, float(g @ delta), fd))
    delta = _direction(heads, BLOCKS, rng)
    slope_dir = float(g @ delta)
    eps_arr = np.asarray(taylor_eps, float)
    rem = np.array([abs(risk(e, delta) - res.risk - e * slope_dir) for e in eps_arr])
    floor = 1e-13 * max(abs(res.risk), 1e-300)
    ok = rem > 100 * floor
    slope = float(np.polyfit(np.log(eps_arr[ok]), np.log(rem[ok]), 1)[0]) if ok.sum() >= 2 else float("nan")
    return res.risk, checks, TaylorTest(eps_arr, rem, slope)


def report(risk: float, checks, taylor: TaylorTest) -> str:
    lines = [f"risk {risk:.10g}", f"{'block':<6} {'adjoint':>16} {'finite diff':>16} {'rel error':>10}"]
    for c in checks:
        lines.append(f"{c.block:<6} {c.adjoint:>16.9e} {c.finite_difference:>16.9e} {c.rel_error:>10.2e}")
    lines.append("Taylor test (all blocks): eps -> |R(theta+eps d) - R - eps <g, d>|")
    for e, r in zip(taylor.eps, taylor.remainder):
        lines.append(f"  {e:8.1e}  {r:.3e}")
    lines.append(f"fitted slope {taylor.slope:.3f} (2 when the gradient is exact)")
    if taylor.note:
        lines.append(f"note: {taylor.note}")
    return "\n".join(lines)
