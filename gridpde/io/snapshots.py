"""What a forward run records at its snapshot depths, for any method.

Arrays are allocated for every snapshot up front and filled as the run goes;
``done`` counts the depths filled so far, so a run that stops early still
describes exactly what it computed (unfilled entries are NaN).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Status = Literal["running", "finished", "mass_lost", "nan", "interrupted", "failed"]


@dataclass
class Snapshots:
    """Snapshot record of P prompts at S depths in d dimensions.

    Attributes:
        depth: (S,) depths s of the snapshots, 0 and 1 included.
        mass: (P, S) mass inside the box (grid) or total token weight.
        mass_out: (P, S) mass that left the box through its boundary.
        mean: (P, S, d) mean of the density (or of the weighted tokens).
        cov: (P, S, d, d) covariance (grid: with Sheppard's correction, see
            :func:`gridpde.grid.mesh.Grid.moments`).
        density: (P, S, *cells) grid densities, or None for particles.
        centres: tuple of per-axis cell-centre arrays (grid), or None.
        positions: (P, S, T, d) token positions, or None for the grid.
        weights: (P, T) token weights, or None for the grid.
        steps: (P, S) cumulative depth steps taken when each snapshot was taken.
        queries: (P, S, Q, d) query token positions (NaN past a prompt's own count), or None.
        done: number of depths filled.
        status: why the run ended (or "running").
        message: one line for the user about the status.
    """

    depth: np.ndarray
    mass: np.ndarray
    mass_out: np.ndarray
    mean: np.ndarray
    cov: np.ndarray
    density: np.ndarray | None = None
    centres: tuple[np.ndarray, ...] | None = None
    positions: np.ndarray | None = None
    weights: np.ndarray | None = None
    steps: np.ndarray | None = None
    queries: np.ndarray | None = None
    done: int = 0
    status: Status = "running"
    message: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def empty(
        cls,
        depth: np.ndarray,
        prompts: int,
        dim: int,
        cells: tuple[int, ...] | None = None,
        centres: tuple[np.ndarray, ...] | None = None,
        tokens: int | None = None,
        queries: int = 0,
    ) -> Snapshots:
        """Allocate a record filled with NaN (grid if ``cells``, else particles; ``queries`` per prompt)."""
        S, P, d = len(depth), prompts, dim
        nan = np.nan
        rec = cls(
            depth=np.asarray(depth, dtype=float),
            mass=np.full((P, S), nan),
            mass_out=np.full((P, S), nan),
            mean=np.full((P, S, d), nan),
            cov=np.full((P, S, d, d), nan),
            steps=np.zeros((P, S), dtype=np.int64),
        )
        if cells is not None:
            rec.density = np.full((P, S, *cells), nan)
            rec.centres = centres
        if tokens is not None:
            rec.positions = np.full((P, S, tokens, d), nan)
            rec.weights = np.full((P, tokens), nan)
        if queries:
            rec.queries = np.full((P, S, queries, d), nan)
        return rec

    def record_queries(self, k: int, p: int, X: np.ndarray | None) -> None:
        """Prompt p's query positions (q, d) at snapshot k (nothing to do for a prompt without queries)."""
        if X is not None:
            self.queries[p, k, : X.shape[0]] = X

    @property
    def method(self) -> str:
        return "grid" if self.density is not None else "particles"
