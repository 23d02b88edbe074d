"""The method interface: what a discretisation of the model does, in one place.

A :class:`Method` turns prompts into initial states, runs them forward for
given heads (recording a tape for the adjoint), runs the adjoint back to
gradients in B = K^T Q and V, exposes a state as the measure the losses
read, and records states into snapshots. The grid method
(:class:`gridpde.grid.method.GridMethod`) and the particle method
(:class:`gridpde.particles.method.ParticleMethod`) each implement it once;
the problem, the run loop and the NTK trajectory only talk to this
interface, and :func:`make_method` is the one place that looks at the
method's name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from gridpde.heads import Heads
from gridpde.io.snapshots import Snapshots
from gridpde.measures import Measure
from gridpde.objective.losses import Labelled, Objective
from gridpde.prompts import Prompt, Queries
from gridpde.spec import Case, velocity_scale

OnStep = Callable[[float, int], None]


class Method(ABC):
    """A discretisation of the forward model and its adjoint.

    Attributes:
        name: "grid" or "particles".
        label: a few words for progress lines (cells, or integrator).
        attrs: the solver choices, for the result file's attributes.
        version: counts changes of the discrete map (grid: refined depth-step
            schedules); a caller that sees it change evaluates again.
    """

    name: str
    label: str
    attrs: dict
    version: int = 0
    #: if set, the depth steps per layer interval a solver may take (below ``solver.max_steps``): training
    #: caps its trial evaluations so that an overshooting trial fails instead of refining the schedule
    step_cap: int | None = None

    def __init__(self, case: Case):
        self.case = case
        #: the factor on V in the dynamics ([model] horizon, and M with aggregate = "sum")
        self.v_scale = velocity_scale(case)

    def values(self, heads: Heads) -> np.ndarray:
        """The value matrices the dynamics use: V times :attr:`v_scale` (the adjoint scales dR/dV back)."""
        return heads.V * self.v_scale if self.v_scale != 1.0 else heads.V

    # ------------------------------------------------------------ states
    @abstractmethod
    @abstractmethod
    def initial(self, prompt: Prompt, where: str, seed: int, queries: Queries | None = None,
                flow: bool = True) -> Any:
        """The state of one prompt at s = 0 (``where`` names it in messages, ``seed`` for sampling),
        with its query tokens and (``flow``) the points the flow-map risk tracks."""

    def initial_states(self, prompts: Sequence[Prompt], seed_offset: int = 0, where: str = "prompts",
                       queries: Sequence[Queries | None] | None = None, flow: bool = True) -> list:
        """:meth:`initial` of every prompt (prompt i gets seed ``solver.seed + seed_offset + i``)."""
        seed = self.case.solver.seed + seed_offset
        queries = queries or [None] * len(prompts)
        return [self.initial(p, f"{where}[{i}]", seed + i, q, flow)
                for i, (p, q) in enumerate(zip(prompts, queries))]

    def case_states(self, flow: bool = True) -> list:
        """The initial states of the case's prompts with their queries (and the flow-map points)."""
        return self.initial_states(self.case.prompts, queries=self.case.queries, flow=flow)

    @abstractmethod
    def measure(self, state) -> Measure:
        """The state as the measure losses and diagnostics read."""

    @abstractmethod
    def points(self, state) -> np.ndarray | None:
        """The tracked points (n, d) the point losses read (rows named by ``state.labelled``), or None."""

    def queries(self, state) -> np.ndarray | None:
        """The prompt's query tokens (q, d) in ``state``, or None."""
        X = self.points(state)
        return None if X is None or state.query_rows is None else X[state.query_rows]

    def value(self, objective: Objective, state, target: Measure | None) -> float:
        """The objective F at ``state`` (measure terms against ``target``, point terms on the tracked points)."""
        return objective.value(self.measure(state), target, self.points(state), state.labelled)

    def labelled_sets(self, queries: Queries | None, query_row: int, flow: tuple | None, flow_row: int):
        """What the case's point losses track, as {name: Labelled}, for queries placed at rows
        ``query_row`` onwards and flow-map points ``flow`` = (X0, w0) at rows ``flow_row`` onwards."""
        loss = self.case.loss
        sets = {}
        if queries is not None and queries.labels is not None and loss is not None and "readout" in loss.kinds:
            sets["readout"] = Labelled(slice(query_row, query_row + len(queries)), queries.weights,
                                       queries.labels, loss.readout_coords(self.case.dim))
        if flow is not None:
            X0, w0 = flow
            sets["flowmap"] = Labelled(slice(flow_row, flow_row + len(w0)), w0 / w0.sum(), loss.target(X0))
        return sets

    # ------------------------------------------------------------ forward
    @abstractmethod
    def solver(self, heads: Heads) -> Any:
        """A forward solver for fixed heads (what :meth:`advance` and :meth:`solve` run)."""

    def attention_report(self, solver) -> dict:
        """Result-file attributes of how the attention was summed by ``solver`` (default: nothing to say)."""
        return {}

    @abstractmethod
    def advance(self, solver, state, s0: float, s1: float, on_step: OnStep | None = None):
        """The state moved from depth s0 to s1 (the run loop's snapshots)."""

    @abstractmethod
    def solve(self, solver, state, p: int, tape: list | None = None):
        """Prompt p's state moved from s = 0 to 1 on the method's fixed steps, recording ``tape``."""

    def plan(self, heads: Sequence[Heads], states: list, ranks=None) -> None:
        """Fix the depth steps every later :meth:`solve` takes, from these heads (default: nothing to fix)."""

    def share_schedules(self, gathered: list, before: list, version_before: int) -> None:
        """Adopt the schedules gathered from every rank (each prompt's from its own rank)."""

    @property
    def schedules(self) -> list | None:
        """The fixed depth-step schedules (grid), or None."""
        return None

    def use_schedules(self, schedules) -> None:
        """Follow saved schedules (from a checkpoint); a no-op where steps are fixed by the case."""

    def cost(self, state) -> float:
        """The relative cost of solving ``state`` (how prompts are shared out over MPI ranks)."""
        return 1.0

    @abstractmethod
    def depth_steps(self, states: list) -> int:
        """Depth steps of one :meth:`solve` over all prompts."""

    @abstractmethod
    def check_mass(self, state, p: int, where: str) -> None:
        """Raise :class:`gridpde.errors.MassLost` if prompt p lost more mass than ``solver.mass_tol``."""

    # ------------------------------------------------------------ adjoint
    @abstractmethod
    def new_tape(self) -> Any:
        """An empty tape for :meth:`solve`."""

    @abstractmethod
    def cotangent(self, objective: Objective, state, target: Measure | None, scale: float):
        """``scale`` times dF/d(state) at s = 1: the adjoint's final value."""

    @abstractmethod
    def backward(self, solver, tape, state, lam) -> tuple[np.ndarray, np.ndarray, int]:
        """(dR/dB, dR/dV, steps recomputed) from the cotangent ``lam`` of the output state."""

    @abstractmethod
    def memory(self) -> tuple[int, int, str, object, str]:
        """(bytes one prompt's solve keeps, bytes one snapshot of one prompt takes, the key that sets
        the size, its value, a few words): for the check before a run starts."""

    @abstractmethod
    def warm_up(self) -> None:
        """Compile the kernels a run uses (their parallel builds: sizes above SERIAL_BELOW)."""

    # ------------------------------------------------------------ snapshots
    @abstractmethod
    def snapshots(self, depth: np.ndarray, states: list) -> Snapshots:
        """An empty record for these states at these depths (the depths actually used)."""

    @abstractmethod
    def record(self, snaps: Snapshots, k: int, p: int, state) -> None:
        """Write prompt p's state into snapshot k."""

    @abstractmethod
    def restore(self, snaps: Snapshots, k: int, p: int, like):
        """Prompt p's state at snapshot k, as :meth:`record` wrote it (``like``: its initial state)."""


def make_method(case: Case, name: str | None = None) -> Method:
    """The case's method (or ``name``): a :class:`Method`."""
    name = name or case.solver.method
    if name == "grid":
        from gridpde.grid.method import GridMethod

        return GridMethod(case)
    if name == "particles":
        from gridpde.particles.method import ParticleMethod

        return ParticleMethod(case)
    raise ValueError(f"method = {name!r}: expected \"grid\" or \"particles\"")


def query_count(states: list) -> int:
    """The largest number of query tokens of any state (0: none)."""
    counts = [st.query_rows.stop - st.query_rows.start for st in states if st.query_rows is not None]
    return max(counts, default=0)
