"""Query tokens on the grid: mass-free points moved by the density's velocity field, and their adjoint.

A query X moves by dX/ds = v_s[rho_s](X), the attention velocity of the
density evaluated at X with the exact tensor sums (the face velocities'
kernel, deconvolved quadrature included; queries are few, so the table is
not used for them). It takes the density's SSP Runge-Kutta stages: stage k
of a step is

    X_k = a_k X_n + (1 - a_k) (X_{k-1} + dt F(X_{k-1}; u_{k-1})),

with u_{k-1} the density stage input the forward pass recorded. Queries do
not act on the density, so they are advanced after it, over its tape
(:func:`advect`), and their positions at every stage are kept for the
adjoint. The adjoint of a stage, with xi_k the cotangent of X_k:

    xi_n      += a_k xi_k
    nu         = (1 - a_k) xi_k
    xi_{k-1}   = nu + dt (dF/dX)^T nu
    rho_bar   += dt (dF/drho)^T nu       (the queries' pull on the density's adjoint)
    (B, V)_bar += dt (dF/dtheta)^T nu

all from one call of the tensor VJP with the queries as targets
(:func:`gridpde.attention.tensor_vjp.tensor_velocity_vjp`, ``with_targets``).
"""

from __future__ import annotations

import numpy as np

from gridpde.attention.tensor import tensor_velocity
from gridpde.attention.tensor_vjp import tensor_velocity_vjp
from gridpde.errors import NumericalError
from gridpde.grid.forward import GridForward, StepRecord
from gridpde.heads import pad_points


def _masses(solver: GridForward, u: np.ndarray) -> np.ndarray:
    return (u * solver.grid.cell_volume).reshape(solver.grid.padded_shape)


def query_velocity(solver: GridForward, u: np.ndarray, X: np.ndarray, layer: int) -> np.ndarray:
    """v[u](X) for padded points X (n, 3): (n, 3)."""
    out = np.empty((X.shape[0], 3))
    lse = np.empty((solver.B.shape[1], X.shape[0]))
    tensor_velocity(X, _masses(solver, u), *solver.sources, solver.B[layer], solver.V[layer], solver.h, out, lse)
    return out


def advect(solver: GridForward, steps: list[StepRecord], X0: np.ndarray) -> tuple[np.ndarray, list[list[np.ndarray]]]:
    """Move points X0 (n, d) along the density's recorded ``steps``.

    Returns:
        (positions at the end (n, d), per step the padded stage inputs X_{k-1}).
    """
    d = solver.grid.dim
    X = pad_points(np.asarray(X0, float))
    history = []
    for rec in steps:
        st = solver.stages_of(rec)
        Xn = Xk = X
        inputs = []
        for k, a in enumerate(solver.coeffs):
            inputs.append(Xk)
            nX = Xk + rec.dt * query_velocity(solver, st[k][0], Xk, rec.layer)
            if a:
                nX = a * Xn + (1 - a) * nX
            Xk = nX
        history.append(inputs)
        X = Xk
    if not np.all(np.isfinite(X)):
        raise NumericalError("non-finite query positions", 1.0)
    return X[:, 3 - d :], history


def stage_vjp(solver: GridForward, u: np.ndarray, X: np.ndarray, nu: np.ndarray, layer: int):
    """(rho_bar (grid shape), B_bar, V_bar (M, 3, 3), X_bar (n, 3)) of F(X; u) for a cotangent nu (n, 3)."""
    w_bar, B_bar, V_bar, X_bar = tensor_velocity_vjp(
        X, _masses(solver, u), *solver.sources, solver.B[layer], solver.V[layer], solver.h, nu, with_targets=True)
    return w_bar.reshape(solver.grid.shape) * solver.grid.cell_volume, B_bar, V_bar, X_bar
