"""The same model on weighted tokens: a finite transformer.

Tokens X_i with weights w_i (sum 1) move by dX_i/ds = v_s[mu_s](X_i),
mu_s = sum_i w_i delta_{X_i(s)}, every token attending to every token
(itself included) through the direct attention kernel, which the grid's
kernel agrees with to round-off.

Depth is stepped on a fixed grid s_k = k / (L * substeps). With
``integrator = "euler"`` and one substep this is exactly a residual
attention-only transformer with L layers of M heads,
X <- X + (1/L) v[mu](X); classic RK4 with several substeps approaches the
depth limit (the neural ODE/PDE).

Tokens come from a prompt by :meth:`gridpde.prompts.GaussianPrompt.tokens` and
its kin (sampled, quadrature, or as given).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gridpde.attention.direct import direct_velocity
from gridpde.attention.direct_vjp import direct_velocity_vjp
from gridpde.attention.table import AttentionStats, token_table_velocity, token_table_velocity_vjp
from gridpde.errors import NumericalError
from gridpde.heads import pad3


@dataclass(frozen=True)
class Tableau:
    """Explicit Runge-Kutta: stage i input X + h sum (j, a_ij) a_ij k_j; X' = X + h sum b_i k_i."""

    inputs: tuple[tuple[tuple[int, float], ...], ...]
    weights: tuple[float, ...]


EULER = Tableau(((),), (1.0,))
RK4 = Tableau(((), ((0, 0.5),), ((1, 0.5),), ((2, 1.0),)), (1 / 6, 1 / 3, 1 / 3, 1 / 6))

#: attention = "auto" takes the table from n M >= AUTO_TABLE_PAIRS 4^(d-1) (tokens x heads) on.
#: The table's node sums cost (nodes x n) against the direct kernel's n^2 M, and 2-D tables
#: at tol 1e-10 hold ~5e4-2e5 nodes (1-D ~200): at 8000 tokens and 2 heads in 2-D the table
#: made a forward pass only 1.5x faster; at 1e5 tokens and 16 heads one evaluation 10-290x.
AUTO_TABLE_PAIRS = 2**16


def token_moments(X: np.ndarray, w: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Mass sum w, mean and covariance of the weighted tokens."""
    mass = float(w.sum())
    mean = w @ X / mass
    R = X - mean
    return mass, mean, (R * w[:, None]).T @ R / mass


class ParticleForward:
    """The forward pass on weighted tokens for fixed heads.

    Args:
        B: (L, M, d, d) score matrices B = K^T Q.
        V: (L, M, d, d) value matrices.
        integrator: "euler" or "rk4".
        substeps: steps per layer (euler with 1: the residual transformer).
        attention: "exact" (direct sums), "table" (one interpolation table of the tilted mean
            per velocity evaluation, :func:`~gridpde.attention.table.token_table_velocity`) or
            "auto" (the table from ``AUTO_TABLE_PAIRS`` 4^(d-1) tokens x heads on).
        attention_tol: the table's relative error bound on the velocity.
    """

    def __init__(self, B: np.ndarray, V: np.ndarray, integrator: str = "rk4", substeps: int = 4,
                 attention: str = "exact", attention_tol: float = 1e-10):  # fmt: skip
        self.layers = B.shape[0]
        self.dim = B.shape[-1]
        self.B = np.ascontiguousarray(pad3(B))
        self.V = np.ascontiguousarray(pad3(V))
        self.integrator = integrator
        self.substeps = substeps
        self.attention = attention
        self.attention_tol = attention_tol
        self.stats = AttentionStats()

    def uses_table(self, n: int) -> bool:
        """Whether an evaluation on ``n`` tokens takes the table."""
        pairs = n * self.B.shape[1]
        return self.attention == "table" or (self.attention == "auto" and pairs >= AUTO_TABLE_PAIRS * 4 ** (self.dim - 1))

    @property
    def use_table(self) -> bool:
        """Whether any evaluation so far asked for the table (the result file's ``attention_used``)."""
        return self.stats.calls > 0

    @property
    def dt(self) -> float:
        return 1.0 / (self.layers * self.substeps)

    def velocity(self, X: np.ndarray, w: np.ndarray, layer: int, infos: list | None = None) -> np.ndarray:
        """v_s[mu](X_i) for the tokens' own measure mu = sum_i w_i delta_{X_i}.

        With the table, the call's info (its frozen table) is appended to ``infos`` for the VJP.
        """
        n, d = X.shape
        P = np.zeros((n, 3))
        P[:, 3 - d :] = X
        out = np.empty((n, 3))
        w = np.ascontiguousarray(w)
        if self.uses_table(n):
            info = token_table_velocity(P, w, self.B[layer], self.V[layer], out, tol=self.attention_tol)
            self.stats.add(info)
            if infos is not None:
                infos.append(info)
        else:
            lse = np.empty((self.B.shape[1], n))
            direct_velocity(P, P, w, self.B[layer], self.V[layer], out, lse)
            if infos is not None:
                infos.append(None)
        return out[:, 3 - d :]

    def step(self, X: np.ndarray, w: np.ndarray, layer: int, record: list | None = None) -> np.ndarray:
        """One step of size ``dt`` inside ``layer``; appends (stage input, table info or None) to ``record``."""
        h = self.dt
        stages = EULER if self.integrator == "euler" else RK4
        ks = []
        for shifts in stages.inputs:
            Y = X
            for j, c in shifts:
                Y = Y + (c * h) * ks[j]
            infos = [] if record is not None else None
            ks.append(self.velocity(Y, w, layer, infos))
            if record is not None:
                record.append((Y, infos[0]))
        out = X
        for b, k in zip(stages.weights, ks):
            out = out + (b * h) * k
        return out

    def backward(self, tape: list, w: np.ndarray, lam: np.ndarray):
        """Adjoint of the recorded steps: (dR/dX(0), dR/dB, dR/dV) from lam = dR/dX(1).

        Reverses each Runge-Kutta step exactly (Y_i = X + h sum_j a_ij k_j,
        k_i = v(Y_i), X' = X + h sum_i b_i k_i), with the attention VJP taking
        both roles of the tokens (targets, and sources of the measure).
        """
        n, d = lam.shape
        L, M = self.B.shape[:2]
        B_bar = np.zeros((L, M, 3, 3))
        V_bar = np.zeros((L, M, 3, 3))
        stages = EULER if self.integrator == "euler" else RK4
        h = self.dt
        for layer, inputs in reversed(tape):
            kbar = [(b * h) * lam for b in stages.weights]
            lam_x = lam.copy()
            for i in range(len(inputs) - 1, -1, -1):
                Y, info = inputs[i]
                P = np.zeros((n, 3))
                P[:, 3 - d :] = Y
                ubar = np.zeros((n, 3))
                ubar[:, 3 - d :] = kbar[i]
                if info is None:
                    Pb, Bb, Vb = direct_velocity_vjp(P, w, self.B[layer], self.V[layer], ubar)
                else:  # the transpose of the table this stage used
                    Pb, Bb, Vb = token_table_velocity_vjp(info, P, w, self.B[layer], self.V[layer], ubar)
                ybar = Pb[:, 3 - d :]
                B_bar[layer] += Bb
                V_bar[layer] += Vb
                lam_x += ybar
                for j, c in stages.inputs[i]:
                    kbar[j] = kbar[j] + (c * h) * ybar
            lam = lam_x
        return lam, B_bar[:, :, 3 - d :, 3 - d :], V_bar[:, :, 3 - d :, 3 - d :]

    def solve(
        self,
        X: np.ndarray,
        w: np.ndarray,
        k0: int,
        k1: int,
        on_step: Callable[[float, int], None] | None = None,
        tape: list | None = None,
    ) -> np.ndarray:
        """Advance the tokens from step index k0 to k1 (depths k / (L substeps)).

        With a ``tape`` (a list), each step's (layer, stage inputs) is appended
        for :meth:`backward`.
        """
        for k in range(k0, k1):
            layer = k // self.substeps
            record = [] if tape is not None else None
            X = self.step(X, w, layer, record)
            if tape is not None:
                tape.append((layer, record))
            if not np.all(np.isfinite(X)):
                s = (k + 1) * self.dt
                raise NumericalError(f"non-finite token positions by depth s = {s:.6g}", s)
            if on_step is not None:
                on_step((k + 1) * self.dt, 1)
        return X


def steps_per_layer(integrator: str, substeps: int | None) -> int:
    """Default substeps: 1 for euler (the transformer), 4 for rk4."""
    if substeps is not None:
        return substeps
    return 1 if integrator == "euler" else 4

