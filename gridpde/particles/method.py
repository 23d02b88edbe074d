"""The particle method: weighted tokens moved by the attention of their own measure.

State: :class:`TokenState` (positions X, weights w, step index k). Depth is
stepped on the fixed grid s_k = k / (L substeps), so :meth:`solve` and the
run loop's :meth:`advance` take the same steps; nothing leaves, so the
mass check never fails.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gridpde.heads import Heads
from gridpde.io.snapshots import Snapshots
from gridpde.measures import TokenMeasure
from gridpde.method import Method
from gridpde.particles.solver import ParticleForward, steps_per_layer, token_moments


@dataclass
class TokenState:
    """X: (n, d) token positions; w: (n,) weights; steps: depth steps taken (s = steps / (L substeps))."""

    X: np.ndarray
    w: np.ndarray
    steps: int = 0

    @property
    def mass_out(self) -> float:
        return 0.0


class ParticleMethod(Method):
    name = "particles"

    def __init__(self, case):
        super().__init__(case)
        sv = case.solver
        self.substeps = steps_per_layer(sv.integrator, sv.substeps)
        self.steps_per_depth = case.heads.layers * self.substeps
        self.attrs = {"integrator": sv.integrator, "substeps": self.substeps, "init": sv.init,
                      "tokens_requested": sv.tokens, "seed": sv.seed}
        self.label = f"{sv.integrator} x {self.substeps} substeps"

    def initial(self, prompt, where, seed) -> TokenState:
        sv = self.case.solver
        return TokenState(*prompt.tokens(sv.tokens, sv.init, seed))

    def measure(self, state: TokenState) -> TokenMeasure:
        return TokenMeasure(state.X, state.w)

    def solver(self, heads: Heads) -> ParticleForward:
        return ParticleForward(heads.B, heads.V, self.case.solver.integrator, self.substeps)

    def _index(self, s: float) -> int:
        return int(round(s * self.steps_per_depth))

    def advance(self, solver, state: TokenState, s0, s1, on_step=None) -> TokenState:
        k1 = self._index(s1)
        return TokenState(solver.solve(state.X, state.w, state.steps, k1, on_step), state.w, k1)

    def solve(self, solver, state: TokenState, p: int, tape=None) -> TokenState:
        k1 = self.steps_per_depth
        return TokenState(solver.solve(state.X, state.w, state.steps, k1, tape=tape), state.w, k1)

    def depth_steps(self, states) -> int:
        return len(states) * self.steps_per_depth

    def check_mass(self, state, p, where) -> None:
        return None

    def new_tape(self) -> list:
        return []

    def cotangent(self, loss, state: TokenState, target, scale: float) -> np.ndarray:
        return loss.grad_points(state.X, state.w, target) * scale

    def backward(self, solver: ParticleForward, tape: list, state: TokenState, lam):
        _, B_bar, V_bar = solver.backward(tape, state.w, lam)
        return B_bar, V_bar, 0

    def memory(self):
        sv = self.case.solver
        n = max(p.points.shape[0] if p.kind == "tokens" else sv.tokens for p in self.case.prompts)
        d, M = self.case.dim, self.case.heads.width
        return 8 * n * (64 + 16 * M), 8 * n * d, "solver.tokens", n, f"{n} tokens"

    def warm_up(self) -> None:
        n = 800
        ParticleForward(np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 2, 2))).velocity(np.zeros((n, 2)), np.full(n, 1.0 / n), 0)

    def snapshots(self, depth, states) -> Snapshots:
        depth = np.array([self._index(s) / self.steps_per_depth for s in depth])
        tokens = max(st.X.shape[0] for st in states)
        snaps = Snapshots.empty(depth, len(states), self.case.dim, tokens=tokens)
        snaps.weights[:] = 0.0
        for p, st in enumerate(states):
            snaps.weights[p, : len(st.w)] = st.w
        return snaps

    def record(self, snaps: Snapshots, k: int, p: int, state: TokenState) -> None:
        n = len(state.w)
        snaps.positions[p, k, :n] = state.X
        snaps.mass_out[p, k] = 0.0
        snaps.mass[p, k], snaps.mean[p, k], snaps.cov[p, k] = token_moments(state.X, state.w)
        snaps.steps[p, k] = state.steps

    def restore(self, snaps: Snapshots, k: int, p: int, like: TokenState) -> TokenState:
        n = len(like.w)
        return TokenState(np.array(snaps.positions[p, k, :n]), like.w, int(snaps.steps[p, k]))
