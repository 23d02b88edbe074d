"""Prompts distributed over MPI ranks, with results identical to a serial run.

A data set's risk, gradient and forward snapshots are sums (or lists) over
prompts of independent solves. Under ``mpiexec -n R`` each rank solves the
prompts ``p`` with ``p % R == rank`` and the per-prompt results are gathered
to every rank and combined *in prompt order*, exactly as the serial loop
adds them: the sums are bit-for-bit those of a serial run (an MPI Allreduce
would fix no order). Every rank then holds the same risk and gradient, so
training takes the same decisions everywhere.

A failure on one rank (lost mass, NaN, a step bound) must not leave the
others waiting in a collective: :meth:`Ranks.run` catches the exception,
the ranks exchange what happened, and every rank raises the same exception,
the one of the lowest prompt, with its message.

Ctrl-C and SIGTERM reach every rank (mpiexec forwards them), each at its
own moment, maybe while another rank waits in a collective. Under MPI the
command line therefore only notes the signal (:meth:`Ranks.note_stop`), and
the run loop asks at points every rank passes alike (after each snapshot,
training step and inner iterate: :meth:`Ranks.agree_stop`); there every rank
raises the same KeyboardInterrupt (or Terminated) together, so rank 0 saves
the last checkpoint and all exit with the same status.

Without mpi4py, or with one process, :data:`SERIAL` is used and nothing is
communicated. Numba threads per rank come from ``NUMBA_NUM_THREADS``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any


class Ranks:
    """The processes a run is spread over (one: the serial run)."""

    def __init__(self, comm=None):
        self.comm = comm
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1
        #: the stop signal noted on this rank: 0 none, 1 Ctrl-C (SIGINT), 2 SIGTERM
        self.stop_code = 0
        #: the rank of each prompt (:meth:`balance`), or None: prompt p on rank p mod R
        self.owner: list[int] | None = None

    @property
    def root(self) -> bool:
        """Rank 0 owns the output file and the progress lines."""
        return self.rank == 0

    def mine(self, p: int) -> bool:
        if self.owner is not None and p < len(self.owner):
            return self.owner[p] == self.rank
        return p % self.size == self.rank

    def balance(self, costs) -> None:
        """Assign the prompts by cost: largest first, each to the least loaded rank (ties: the lowest
        rank), the same on every rank. Equal costs give p mod R. Results are gathered in prompt order
        whatever the assignment, so the sums stay the serial run's."""
        load = [0.0] * self.size
        owner = [0] * len(costs)
        for p in sorted(range(len(costs)), key=lambda q: (-float(costs[q]), q)):
            r = min(range(self.size), key=lambda k: (load[k], k))
            owner[p] = r
            load[r] += float(costs[p])
        self.owner = owner

    def run(self, fn: Callable[[int], Any], P: int) -> list:
        """[fn(p) for p in range(P)], each p computed on its rank, the list gathered to every rank.

        An exception in ``fn`` on any rank is raised on every rank: the one of the lowest prompt
        (same type, same message), after all ranks have finished their part.
        """
        local, error = {}, None
        for p in range(P):
            if not self.mine(p):
                continue
            try:
                local[p] = fn(p)
            except Exception as exc:  # re-raised below on every rank
                error = (p, exc)
                break
        if self.comm is None:
            if error is not None:
                raise error[1]
            return [local[p] for p in range(P)]
        parts = self.comm.allgather((local, None if error is None else (error[0], type(error[1]), str(error[1]),
                                                                          getattr(error[1], "depth", None))))
        errors = [e for _, e in parts if e is not None]
        if errors:
            p, cls, message, depth = min(errors, key=lambda e: e[0])
            if error is not None and error[0] == p:
                raise error[1]
            raise (cls(message, depth) if depth is not None else cls(message))
        merged = {}
        for part, _ in parts:
            merged.update(part)
        return [merged[p] for p in range(P)]

    def note_stop(self, signum: int) -> None:
        """A signal handler's part under MPI: remember the stop, act at the next :meth:`agree_stop`."""
        import signal

        self.stop_code = max(self.stop_code, 2 if signum == signal.SIGTERM else 1)

    def agree_stop(self) -> None:
        """Every rank raises Terminated (SIGTERM) or KeyboardInterrupt (Ctrl-C) if any rank noted one.

        Serial runs raise in the signal handler itself; the noted stop catches the signal that Python
        swallowed because it arrived inside a callback ("Exception ignored in ..."), seen once in CI.
        """
        from gridpde.errors import Terminated

        if self.comm is None:
            code = self.stop_code
        else:
            from mpi4py import MPI

            code = self.comm.allreduce(self.stop_code, op=MPI.MAX)
        if code == 2:
            raise Terminated()
        if code == 1:
            raise KeyboardInterrupt()

    def bcast(self, value):
        return value if self.comm is None else self.comm.bcast(value, root=0)

    def barrier(self) -> None:
        if self.comm is not None:
            self.comm.Barrier()


SERIAL = Ranks()


@functools.cache
def world() -> Ranks:
    """The ranks of this process: MPI's world when launched by mpiexec with mpi4py installed, else serial."""
    launched = any(k in os.environ for k in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK",
                                              "HYDRA_CONTROL_FD", "MPI_LOCALNRANKS"))
    if not launched:
        return SERIAL
    try:
        from mpi4py import MPI
    except ImportError:
        return SERIAL
    comm = MPI.COMM_WORLD
    return Ranks(comm) if comm.Get_size() > 1 else SERIAL
