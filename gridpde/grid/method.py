"""The grid method: densities on the case's box, advanced by finite volumes.

State: :class:`GridState` (cell averages rho, mass that left the box, depth
steps taken). A full-depth :meth:`GridMethod.solve` follows a depth-step
schedule per prompt, fixed by :meth:`GridMethod.plan` from the case's heads
and the teacher's (the larger count per layer interval), so the discrete
risk is a smooth function of the heads instead of jumping wherever an
adaptive step count would change. Where heads need more steps for
positivity the schedule is refined for good and ``version`` counts it: the
discrete map changed, and the caller evaluates again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from gridpde.errors import CaseError, MassLost
from gridpde.grid.adjoint import backward
from gridpde.grid.forward import GridForward, Tape
from gridpde.grid.mesh import Grid
from gridpde.grid.queries import advect
from gridpde.heads import Heads
from gridpde.io.snapshots import Snapshots
from gridpde.measures import GridMeasure
from gridpde.method import Method, query_count
from gridpde.prompts import cell_averages


#: float64 arrays of the grid's size a grid solve keeps at once (states, stages, faces, ghosts, work)
GRID_ARRAYS = 48


@dataclass
class GridState:
    """rho: cell averages; mass_out: mass that left the box (at s = 0 included); steps: depth steps.

    points: mass-free tracked points (n, d) moved by the density's field (the prompt's queries at
    ``query_rows``, then the flow-map risk's Gauss points), or None; labelled: what the point losses
    read of them ({name: Labelled}).
    """

    rho: np.ndarray
    mass_out: float = 0.0
    steps: int = 0
    points: np.ndarray | None = None
    labelled: dict = field(default_factory=dict)
    query_rows: slice | None = None

    def moved(self, rho, lost: float, steps: int, points) -> GridState:
        return GridState(rho, self.mass_out + lost, self.steps + steps, points, self.labelled, self.query_rows)


class GridMethod(Method):
    name = "grid"

    def __init__(self, case):
        super().__init__(case)
        if case.grid is None:
            raise CaseError("[grid]: required for the grid method (lower, upper, cells)")
        sv = case.solver
        self.grid = Grid(case.grid.lower, case.grid.upper, case.grid.cells)
        self.limiter = sv.limiter if sv.scheme == "muscl" else "upwind"
        self.attrs = {"scheme": sv.scheme, "limiter": sv.limiter, "time": sv.time, "cfl": sv.cfl,
                      "quadrature": sv.quadrature, "mass_tol": sv.mass_tol, "attention": sv.attention,
                      "attention_tol": sv.attention_tol}
        self.label = f"{'x'.join(map(str, self.grid.cells))} cells"
        self._schedules: list[list[int]] | None = None
        self.version = 0

    def initial(self, prompt, where, seed, queries=None, flow=True) -> GridState:
        rho, outside = cell_averages(prompt, self.grid, where)
        blocks = [] if queries is None else [queries.points]
        nq = 0 if queries is None else len(queries)
        loss = self.case.loss
        # the flow-map risk's mass-free points: a tensor Gauss rule of the prompt
        flow = prompt.gauss_tokens(loss.flowmap_points) if flow and loss is not None and "flowmap" in loss.kinds \
            else None
        if flow is not None:
            blocks.append(flow[0])
        points = np.concatenate(blocks) if blocks else None
        return GridState(rho, outside, 0, points, self.labelled_sets(queries, 0, flow, nq),
                         slice(0, nq) if queries is not None else None)

    def measure(self, state: GridState) -> GridMeasure:
        return GridMeasure(self.grid, state.rho)

    def points(self, state: GridState):
        return state.points

    def _run(self, solver: GridForward, state: GridState, s0: float, s1: float, on_step=None, tape=None,
             schedule=None) -> tuple[GridState, list | None]:
        """The density from s0 to s1 and the tracked points after it over its steps (a tape is kept
        for them); returns the new state and the points' stage inputs (None without points)."""
        if state.points is not None and tape is None:
            tape = self.new_tape()
        first = len(tape.steps) if tape is not None else 0
        rho, lost, n = solver.solve(state.rho, s0, s1, on_step, tape, schedule)
        if state.points is None:
            return state.moved(rho, lost, n, None), None
        points, history = advect(solver, tape.steps[first:], state.points)
        return state.moved(rho, lost, n, points), history

    def solver(self, heads: Heads) -> GridForward:
        sv = self.case.solver
        return GridForward(self.grid, heads.B, self.values(heads), self.limiter, sv.time, sv.cfl, sv.quadrature,
                           sv.attention, sv.attention_tol,
                           sv.max_steps if self.step_cap is None else min(sv.max_steps, self.step_cap))

    def attention_report(self, solver: GridForward) -> dict:
        return solver.stats.report(solver.use_table)

    def advance(self, solver: GridForward, state: GridState, s0, s1, on_step=None) -> GridState:
        return self._run(solver, state, s0, s1, on_step)[0]

    # ------------------------------------------------------------ schedules
    def plan(self, heads, states, ranks=None) -> None:
        """Per prompt and layer interval, the larger step count the given heads need.

        A student trained towards the teacher's velocities then stays inside
        the schedule instead of crossing a doubling (a jump of the risk that
        stalls the line search).
        """
        solvers = [self.solver(h) for h in heads]

        def one(p: int) -> list[int]:
            best = [0] * self.case.heads.layers
            for solver in solvers:
                sched: list[int] = []
                solver.solve(states[p].rho, 0.0, 1.0, schedule=sched)
                best = [max(a, b) for a, b in zip(best, sched, strict=True)]
            return best

        if ranks is None or ranks.size == 1:
            self._schedules = [one(p) for p in range(len(states))]
        else:
            self._schedules = ranks.run(one, len(states))

    def share_schedules(self, gathered, before, version_before: int) -> None:
        """Every rank ends with the same schedules and one version step if any prompt's changed."""
        gathered = [[int(n) for n in s] for s in gathered]
        changed = gathered != [list(s) for s in before]
        self._schedules = gathered
        self.version = version_before + 1 if changed else version_before

    @property
    def schedules(self) -> list[list[int]] | None:
        return self._schedules

    def use_schedules(self, schedules) -> None:
        schedules = [[int(n) for n in s] for s in schedules]
        if schedules != self._schedules:
            self._schedules = schedules
            self.version += 1

    def solve(self, solver: GridForward, state: GridState, p: int, tape=None) -> GridState:
        """Prompt p on its schedule; a doubling for positivity refines the schedule for good."""
        sched = list(self._schedules[p]) if self._schedules is not None else []
        out, history = self._run(solver, state, 0.0, 1.0, tape=tape, schedule=sched)
        if tape is not None:
            tape.query_history = history
        if self._schedules is not None and sched != self._schedules[p]:
            self.use_schedules([sched if q == p else s for q, s in enumerate(self._schedules)])
        return out

    def depth_steps(self, states) -> int:
        return sum(map(sum, self._schedules)) if self._schedules is not None else 0

    def check_mass(self, state: GridState, p: int, where: str) -> None:
        tol = self.case.solver.mass_tol
        if state.mass_out > tol:
            raise MassLost(f"prompt {p}: mass that left the box {state.mass_out:.3g} exceeds "
                           f"solver.mass_tol = {tol:g} {where}; enlarge [grid] lower/upper"
                           + ("" if min(self.grid.cells) >= 16 else
                              ", or refine [grid] cells (on so coarse a grid numerical diffusion reaches the walls)"))

    # ------------------------------------------------------------ adjoint
    def new_tape(self) -> Tape:
        return Tape(self.case.solver.adjoint_memory_mb * 2**20)

    def cotangent(self, objective, state: GridState, target, scale: float):
        """(dF/drho, dF/dpoints or None), times ``scale``."""
        fv = objective.first_variation(self.measure(state), target)
        lam = np.zeros(self.grid.shape) if fv is None else fv * (self.grid.cell_volume * scale)
        xi = objective.point_grad(state.points, state.labelled)
        return lam, None if xi is None else xi * scale

    def backward(self, solver: GridForward, tape: Tape, state: GridState, lam):
        lam_rho, xi = lam
        _, B_bar, V_bar = backward(solver, tape, lam_rho, xi, tape.query_history)
        return B_bar, V_bar * self.v_scale, tape.recomputed

    def memory(self):
        n = math.prod(self.case.grid.cells)
        return 8 * n * GRID_ARRAYS, 8 * n, "grid.cells", list(self.case.grid.cells), f"{n:.3g} cells"

    def warm_up(self) -> None:
        zero = np.zeros((1, 1, 2, 2))
        grid = Grid((-1.0, -1.0), (1.0, 1.0), (48, 48))
        GridForward(grid, zero, zero).rhs(np.ones(grid.shape), 0)

    # ------------------------------------------------------------ snapshots
    def snapshots(self, depth, states) -> Snapshots:
        g = self.grid
        return Snapshots.empty(depth, len(states), g.dim, cells=g.shape,
                               centres=tuple(g.centres(a) for a in range(g.dim)), queries=query_count(states))

    def record(self, snaps: Snapshots, k: int, p: int, state: GridState) -> None:
        snaps.density[p, k] = state.rho
        snaps.mass_out[p, k] = state.mass_out
        snaps.mass[p, k], snaps.mean[p, k], snaps.cov[p, k] = self.grid.moments(state.rho)
        snaps.steps[p, k] = state.steps
        snaps.record_queries(k, p, self.queries(state))

    def restore(self, snaps: Snapshots, k: int, p: int, like: GridState) -> GridState:
        """The state at snapshot k (its queries included; flow-map points are not recorded)."""
        points = None
        if like.query_rows is not None:
            points = np.array(snaps.queries[p, k, : like.query_rows.stop])
        return GridState(np.array(snaps.density[p, k]), float(snaps.mass_out[p, k]), int(snaps.steps[p, k]),
                         points, {}, like.query_rows)



