"""The particle method: weighted tokens moved by the attention of their own measure.

State: :class:`TokenState` (positions X, weights w, step index k). Depth is
stepped on the fixed grid s_k = k / (L substeps), so :meth:`solve` and the
run loop's :meth:`advance` take the same steps; nothing leaves, so the
mass check never fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gridpde.heads import Heads
from gridpde.io.snapshots import Snapshots
from gridpde.measures import TokenMeasure
from gridpde.method import Method, query_count
from gridpde.particles.solver import ParticleForward, steps_per_layer, token_moments


@dataclass
class TokenState:
    """X: (n, d) token positions; w: (n,) weights; steps: depth steps taken (s = steps / (L substeps)).

    The prompt's context tokens are the first ``context`` rows; its query tokens follow with weight 0
    (they move with the context's field and act on nothing) at ``query_rows``. labelled: what the
    point losses read ({name: Labelled}; the flow-map risk reads the context tokens themselves).
    """

    X: np.ndarray
    w: np.ndarray
    steps: int = 0
    context: int | None = None
    labelled: dict = field(default_factory=dict)
    query_rows: slice | None = None

    def __post_init__(self):
        if self.context is None:
            self.context = len(self.w)

    @property
    def mass_out(self) -> float:
        return 0.0

    def moved(self, X: np.ndarray, steps: int) -> TokenState:
        return TokenState(X, self.w, steps, self.context, self.labelled, self.query_rows)


class ParticleMethod(Method):
    name = "particles"

    def __init__(self, case):
        super().__init__(case)
        sv = case.solver
        self.substeps = steps_per_layer(sv.integrator, sv.substeps)
        self.steps_per_depth = case.heads.layers * self.substeps
        self.attrs = {"integrator": sv.integrator, "substeps": self.substeps, "init": sv.init,
                      "tokens_requested": sv.tokens, "seed": sv.seed, "attention": sv.attention,
                      "attention_tol": sv.attention_tol}
        self.label = f"{sv.integrator} x {self.substeps} substeps"

    def initial(self, prompt, where, seed, queries=None, flow=True) -> TokenState:
        sv = self.case.solver
        X, w = prompt.tokens(sv.tokens, sv.init, seed, sv.quadrature_sigmas)
        n = len(w)
        loss = self.case.loss
        flow_set = (X, w) if flow and loss is not None and "flowmap" in loss.kinds else None
        labelled = self.labelled_sets(queries, n, flow_set, 0)
        if queries is None:
            return TokenState(X, w, 0, n, labelled)
        X = np.concatenate([X, queries.points])
        w = np.concatenate([w, np.zeros(len(queries))])
        return TokenState(X, w, 0, n, labelled, slice(n, n + len(queries)))

    def measure(self, state: TokenState) -> TokenMeasure:
        n = state.context
        return TokenMeasure(state.X[:n], state.w[:n])

    def points(self, state: TokenState) -> np.ndarray:
        return state.X

    def solver(self, heads: Heads) -> ParticleForward:
        sv = self.case.solver
        return ParticleForward(heads.B, self.values(heads), sv.integrator, self.substeps, sv.attention,
                               sv.attention_tol)  # fmt: skip

    def attention_report(self, solver: ParticleForward) -> dict:
        return solver.stats.report(solver.use_table)

    def _index(self, s: float) -> int:
        return int(round(s * self.steps_per_depth))

    def advance(self, solver, state: TokenState, s0, s1, on_step=None) -> TokenState:
        k1 = self._index(s1)
        return state.moved(solver.solve(state.X, state.w, state.steps, k1, on_step), k1)

    def solve(self, solver, state: TokenState, p: int, tape=None) -> TokenState:
        k1 = self.steps_per_depth
        return state.moved(solver.solve(state.X, state.w, state.steps, k1, tape=tape), k1)

    def cost(self, state: TokenState) -> float:
        """Every token attends to every context token: n (n + q)."""
        return float(state.context * len(state.w))

    def depth_steps(self, states) -> int:
        return len(states) * self.steps_per_depth

    def check_mass(self, state, p, where) -> None:
        return None

    def new_tape(self) -> list:
        return []

    def cotangent(self, objective, state: TokenState, target, scale: float) -> np.ndarray:
        """dF/dX (every token, queries included), times ``scale``."""
        lam = np.zeros_like(state.X)
        n = state.context
        g = objective.grad_points(state.X[:n], state.w[:n], target)
        if g is not None:
            lam[:n] = g
        g = objective.point_grad(state.X, state.labelled)
        if g is not None:
            lam += g
        return lam * scale

    def backward(self, solver: ParticleForward, tape: list, state: TokenState, lam):
        _, B_bar, V_bar = solver.backward(tape, state.w, lam)
        return B_bar, V_bar * self.v_scale, 0

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
        tokens = max(st.context for st in states)
        snaps = Snapshots.empty(depth, len(states), self.case.dim, tokens=tokens, queries=query_count(states))
        snaps.weights[:] = 0.0
        for p, st in enumerate(states):
            snaps.weights[p, : st.context] = st.w[: st.context]
        return snaps

    def record(self, snaps: Snapshots, k: int, p: int, state: TokenState) -> None:
        n = state.context
        snaps.positions[p, k, :n] = state.X[:n]
        snaps.mass_out[p, k] = 0.0
        snaps.mass[p, k], snaps.mean[p, k], snaps.cov[p, k] = token_moments(state.X[:n], state.w[:n])
        snaps.steps[p, k] = state.steps
        snaps.record_queries(k, p, self.queries(state))

    def restore(self, snaps: Snapshots, k: int, p: int, like: TokenState) -> TokenState:
        n = like.context
        X = np.array(snaps.positions[p, k, :n])
        if like.query_rows is not None:
            X = np.concatenate([X, snaps.queries[p, k, : like.query_rows.stop - n]])
        return like.moved(X, int(snaps.steps[p, k]))
