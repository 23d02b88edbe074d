"""Depth stepping of the neural PDE d/ds rho + div(rho v_s[rho]) = 0 on a grid.

Layer l is active on s in [l/L, (l+1)/L) with velocity
v_s[rho](x) = (1/M) sum_j V_j m_rho(B_j x), evaluated at face centres by the
tensor-grid attention kernel. Depth is advanced interval by interval between
breakpoints (layer boundaries and snapshot depths), which are hit exactly.

Step size: on entering an interval the Courant number
c = dt * sum_a max|u_a| / dx_a of the first stage fixes the number of equal
steps so that c <= cfl. If any stage of the interval then exceeds the
positivity limit (1/2, see :mod:`gridpde.grid.transport`), the interval is redone
from its start with twice the steps; the step count is thus a deterministic
function of the state at the start of the interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gridpde.attention.table import AttentionStats, table_velocity
from gridpde.attention.tensor import tensor_velocity
from gridpde.errors import NumericalError, RunError
from gridpde.grid.mesh import Grid
from gridpde.heads import pad3
from gridpde.grid.transport import POSITIVITY_LIMIT, Transport


#: SSP Runge-Kutta schemes in Shu-Osher form: stage k is
#: u_k = a_k u_n + (1 - a_k) (u_{k-1} + dt L(u_{k-1})), with u_0 = u_n.
SSP_COEFFS = {"euler": (0.0,), "ssprk2": (0.0, 0.5), "ssprk3": (0.0, 0.75, 1.0 / 3.0)}


#: attention = "auto" takes the table from this many cells on, per dimension (smaller grids:
#: exact sums, where the table's build and check cost more than they save). In 3-D a coarse
#: grid's cell masses make m(z) hard to tabulate: at 16^3 the table (a tree there) was 3-50x
#: slower than exact sums per stage, at 24^3 0.4-4x, at 32^3 1.2-10x faster (tol 1e-6,
#: 2 and 8 heads; python scripts/bench_auto.py).
AUTO_TABLE_CELLS = {1: 4096, 2: 4096, 3: 32**3}


class StepLimit(RunError):
    """A layer interval would take more than ``solver.max_steps`` depth steps (exit 1)."""


@dataclass
class Stage:
    """One right-hand side evaluation: drho/ds, outflow rate, Courant rate,
    the face velocities it used, and the attention table that made them (None: exact sums)."""

    drho: np.ndarray
    outflow: float
    rate: float
    u: list[np.ndarray]
    table: object = None
    #: where the next stage's table starts (:class:`~gridpde.attention.table.Layout`; None: exact sums asked for)
    layout: object = None


def _table_bytes(table) -> int:
    if table is None:
        return 0
    arrays = [table.coef, table.S0, table.m, table.bad, *table.E, *table.EY]
    return int(sum(a.nbytes for a in arrays if isinstance(a, np.ndarray)))


@dataclass
class StepRecord:
    """What the adjoint needs of one depth step: its layer and size, the
    state it started from, the table layout its first stage started from
    and, if kept, each stage's input and face velocities."""

    layer: int
    dt: float
    start: np.ndarray
    stages: list[tuple[np.ndarray, list[np.ndarray]]] | None
    layout: object = None


class Tape:
    """Forward steps recorded for the backward pass, within a memory budget.

    Every step's start state is kept; stage data are kept while the total
    stays within ``budget_bytes`` and are recomputed from the start state
    (bit for bit: the kernels are deterministic) for the steps beyond it.
    """

    def __init__(self, budget_bytes: float = 2048 * 2**20):
        self.budget = budget_bytes
        self.steps: list[StepRecord] = []
        self.bytes = 0
        self.recomputed = 0
        #: the tracked points' stage inputs per step (:func:`gridpde.grid.queries.advect`), if any
        self.query_history: list | None = None

    def add(self, rec: StepRecord) -> None:
        size = rec.start.nbytes
        if rec.stages is not None:
            # stage 0's input is the start state itself: count it once
            stage_bytes = sum((u.nbytes if u is not rec.start else 0) + sum(f.nbytes for f in U)
                              + _table_bytes(tab) for u, U, tab in rec.stages)
            if self.bytes + size + stage_bytes <= self.budget:
                size += stage_bytes
            else:
                rec.stages = None
        self.bytes += size
        self.steps.append(rec)


class GridForward:
    """The forward neural PDE on a grid for fixed heads.

    Args:
        grid: the box and its cells.
        B: (L, M, d, d) score matrices B = K^T Q.
        V: (L, M, d, d) value matrices.
        limiter: "upwind" or a MUSCL limiter ("minmod", "mc", "vanleer").
        time: SSP Runge-Kutta scheme in depth.
        cfl: target Courant number.
        quadrature: "deconvolved" (tilted means of the smooth density whose
            cell averages are rho) or "midpoint" (of the cell masses at centres).
        attention: "exact" (tensor sums), "table" (one interpolation table of
            the tilted mean per stage, error-controlled, see
            :mod:`gridpde.attention.table`) or "auto" (the table from
            ``AUTO_TABLE_CELLS[dim]`` cells on: 4096 in 1-D and 2-D, 32^3 in 3-D).
        attention_tol: the table's relative error bound on the velocity.
    """

    def __init__(
        self,
        grid: Grid,
        B: np.ndarray,
        V: np.ndarray,
        limiter: str = "vanleer",
        time: str = "ssprk3",
        cfl: float = 0.4,
        quadrature: str = "deconvolved",
        attention: str = "exact",
        attention_tol: float = 1e-10,
        max_steps: int = 100_000,
    ):
        self.grid = grid
        self.layers = B.shape[0]
        self.B = np.ascontiguousarray(pad3(B))
        self.V = np.ascontiguousarray(pad3(V))
        self.coeffs = SSP_COEFFS[time]
        self.limiter = limiter
        self.cfl = min(cfl, POSITIVITY_LIMIT)
        self.transport = Transport(grid.shape, grid.dx, limiter)
        d = grid.dim
        self.sources = grid.padded_centres()
        self.h = np.zeros(3)
        if quadrature == "deconvolved":
            self.h[3 - d :] = grid.dx
        faces = [grid.face_points(a) for a in range(d)]
        self.targets = np.ascontiguousarray(np.concatenate(faces))
        self.face_slices = np.cumsum([0] + [f.shape[0] for f in faces])
        self.face_shapes = [grid.face_shape(a) for a in range(d)]
        self._vel = np.empty((self.targets.shape[0], 3))
        self._lse = np.empty((self.B.shape[1], self.targets.shape[0]))
        self.use_table = attention == "table" or (attention == "auto" and int(np.prod(grid.shape)) >= AUTO_TABLE_CELLS[d])
        self.attention_tol = attention_tol
        self.max_steps = max_steps
        self.stats = AttentionStats()

    def face_velocity(self, rho: np.ndarray, layer: int):
        """(normal velocity u_a at the faces of each axis a for density ``rho``, the table or None)."""
        u, table, _ = self._face_velocity(rho, layer)
        return u, table

    def _face_velocity(self, rho: np.ndarray, layer: int, layout=None):
        """:meth:`face_velocity` started from ``layout`` (an earlier stage's table on this layer),
        and the layout for the next stage."""
        d = self.grid.dim
        w = (rho * self.grid.cell_volume).reshape(self.grid.padded_shape)
        table = None
        if self.use_table:
            info = table_velocity(self.targets, w, *self.sources, self.B[layer], self.V[layer], self.h,
                                  self._vel, tol=self.attention_tol, layout=layout)
            table = self.stats.add(info)
            layout = info["layout"]
        else:
            tensor_velocity(
                self.targets, w, *self.sources, self.B[layer], self.V[layer], self.h, self._vel, self._lse
            )
        u = []
        for a in range(d):
            lo, hi = self.face_slices[a], self.face_slices[a + 1]
            u.append(self._vel[lo:hi, 3 - d + a].reshape(self.face_shapes[a]).copy())
        return u, table, layout

    def rhs(self, rho: np.ndarray, layer: int, layout=None) -> Stage:
        """drho/ds = -div(rho v_s[rho]) with layer ``layer``'s heads (``layout``: see :meth:`_face_velocity`)."""
        u, table, layout = self._face_velocity(rho, layer, layout)
        drho = np.empty_like(rho)
        outflow = self.transport.rhs(rho, u, drho)
        rate = sum(float(np.abs(ua).max()) / dx for ua, dx in zip(u, self.grid.dx))
        return Stage(drho, outflow, rate, u, table, layout)

    def step(
        self,
        rho: np.ndarray,
        dt: float,
        layer: int,
        first: Stage | None = None,
        record: list | None = None,
        layout=None,
    ):
        """One SSP Runge-Kutta step; appends (stage input, face velocities) to ``record``.

        Each stage's table starts from the previous stage's layout, the first from ``layout``
        (``first``, if given, must have been computed from it).

        Returns:
            (rho_new, mass that left during the step, largest stage Courant number,
            the last stage's table layout).
        """
        u, out = rho, 0.0
        courant = 0.0
        for k, a in enumerate(self.coeffs):
            st = first if (k == 0 and first is not None) else self.rhs(u, layer, layout)
            layout = st.layout
            if record is not None:
                record.append((u, st.u, st.table))
            courant = max(courant, dt * st.rate)
            nu = u + dt * st.drho
            nout = out + dt * st.outflow
            if a:
                nu = a * rho + (1 - a) * nu
                nout = (1 - a) * nout
            u, out = nu, nout
        return u, out, courant, layout

    def stages_of(self, rec: StepRecord) -> list:
        """A recorded step's (stage input, face velocities, table) triples: kept, or recomputed bit for bit."""
        if rec.stages is not None:
            return rec.stages
        out: list = []
        self.step(rec.start, rec.dt, rec.layer, None, out, rec.layout)
        return out

    def advance(
        self,
        rho: np.ndarray,
        s0: float,
        s1: float,
        layer: int,
        on_step: Callable[[float, int], None] | None = None,
        tape: Tape | None = None,
        steps: int | None = None,
    ) -> tuple[np.ndarray, float, int]:
        """Advance ``rho`` from depth s0 to s1 inside one layer.

        ``steps``: take this many steps (doubled while a stage would break the
        positivity limit) instead of choosing them from the cfl number.

        Returns:
            (rho at s1, mass that left the box, number of steps taken).
        """
        first = self.rhs(rho, layer)
        if not math.isfinite(first.rate):
            raise NumericalError(f"non-finite velocity at depth s = {s0:.6g}", s0)
        need = (s1 - s0) * first.rate / self.cfl * (1 - 1e-12)
        n = steps or max(1, math.ceil(need) if need < self.max_steps else self.max_steps + 1)
        while True:
            if n > self.max_steps:
                umax = max(float(np.abs(ua).max()) for ua in first.u)
                raise StepLimit(
                    f"depth s = {s0:.4g}..{s1:.4g} needs more than solver.max_steps = {self.max_steps} steps: "
                    f"the largest face velocity is {umax:.3g} (Courant rate {first.rate:.3g} per unit depth) "
                    f"at cfl = {self.cfl:g}; smaller heads (V, B), a coarser grid or a larger max_steps")
            dt = (s1 - s0) / n
            u, out, ok = rho, 0.0, True
            records = []
            layout = None  # the first stage was computed from none
            for i in range(n):
                stages = [] if tape is not None else None
                start, before = u, layout
                u, dout, courant, layout = self.step(u, dt, layer, first if i == 0 else None, stages, layout)
                out += dout
                if courant > POSITIVITY_LIMIT:
                    ok = False
                    break
                if tape is not None:
                    records.append(StepRecord(layer, dt, start, stages, before))
                if on_step is not None:
                    on_step(s0 + (i + 1) * dt, 1)
            if ok:
                break
            n *= 2
        if tape is not None:
            for rec in records:
                tape.add(rec)
        if not np.all(np.isfinite(u)):
            raise NumericalError(f"non-finite density by depth s = {s1:.6g}", s1)
        return u, out, n

    def solve(
        self,
        rho: np.ndarray,
        s0: float,
        s1: float,
        on_step: Callable[[float, int], None] | None = None,
        tape: Tape | None = None,
        schedule: list[int] | None = None,
    ) -> tuple[np.ndarray, float, int]:
        """Advance ``rho`` from s0 to s1 across layers; returns (rho, mass lost, steps).

        With a ``tape``, every step is recorded for :mod:`gridpde.grid.adjoint`.
        ``schedule``: steps per layer interval; an empty list is filled with
        the steps chosen, a filled one is followed (see :meth:`advance`) and
        holds the steps taken afterwards (larger where positivity doubled them).
        """
        lost, steps = 0.0, 0
        for i, (a, b, layer) in enumerate(layer_intervals(self.layers, s0, s1)):
            fixed = schedule[i] if schedule is not None and i < len(schedule) else None
            rho, out, n = self.advance(rho, a, b, layer, on_step, tape, fixed)
            if schedule is not None and fixed is None:
                schedule.append(n)
            elif schedule is not None:
                schedule[i] = n  # doubled for positivity
            lost += out
            steps += n
        return rho, lost, steps


def layer_intervals(layers: int, s0: float, s1: float) -> list[tuple[float, float, int]]:
    """The pieces (a, b, layer) of [s0, s1] cut at the layer boundaries l / L."""
    inner = [lb / layers for lb in range(1, layers) if s0 + 1e-12 < lb / layers < s1 - 1e-12]
    pts = [s0, *inner, s1]
    return [
        (a, b, min(int(math.floor(a * layers + 1e-9)), layers - 1)) for a, b in zip(pts[:-1], pts[1:])
    ]
