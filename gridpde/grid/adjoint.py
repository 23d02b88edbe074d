"""The discrete adjoint of the grid forward solver: exact gradients of the
discrete risk with respect to every head.

The forward pass (:class:`gridpde.grid.forward.GridForward` with a
:class:`~gridpde.grid.forward.Tape`) records every depth step. A step is an SSP
Runge-Kutta scheme in Shu-Osher form, stage k:

    u_k = a_k u_n + (1 - a_k) (u_{k-1} + dt L(u_{k-1})),   u_0 = u_n,

and its exact transpose, with lambda_k the adjoint of u_k, runs backwards:

    lambda_n      += a_k lambda_k
    mu             = (1 - a_k) lambda_k
    lambda_{k-1}   = mu + dt J(u_{k-1})^T mu
    (B, V)_bar    += dt L_theta(u_{k-1})^T mu

J^T mu is the transport VJP (frozen upwind sides and limiter branches, as
the forward pass took them) plus the attention VJP through the cell masses
(the non-local term: the velocity depends on rho itself); L_theta^T mu is
the attention VJP in B = K^T Q and V. Step counts are frozen at the ones the
forward pass chose, so this is the gradient of the discrete map actually run.
"""

from __future__ import annotations

import numpy as np

from gridpde.attention.table import evaluate_vjp
from gridpde.attention.tensor_vjp import tensor_velocity_vjp
from gridpde.grid.forward import GridForward, Tape
from gridpde.grid.queries import stage_vjp
from gridpde.grid.transport_vjp import transport_vjp
from gridpde.heads import pad_points


def rhs_vjp(solver: GridForward, u: np.ndarray, faces: list[np.ndarray], mu: np.ndarray, layer: int,
            table=None):
    """(J(u)^T mu, B_bar, V_bar) of L(u) = -div(u v[u]) with ``faces`` the forward velocities.

    ``table``: the attention table the forward stage used (its exact transpose), or None (exact sums).

    B_bar, V_bar are (M, 3, 3) in the padded layout.
    """
    grid = solver.grid
    d = grid.dim
    rho_bar, ubar_faces = transport_vjp(u, faces, mu, grid.dx, solver.limiter)
    ubar = np.zeros((solver.targets.shape[0], 3))
    for a in range(d):
        lo, hi = solver.face_slices[a], solver.face_slices[a + 1]
        ubar[lo:hi, 3 - d + a] = ubar_faces[a].ravel()
    w = (u * grid.cell_volume).reshape(grid.padded_shape)
    if table is not None:
        w_bar, B_bar, V_bar = evaluate_vjp(table, solver.targets, solver.B[layer], solver.V[layer], ubar)
    else:
        w_bar, B_bar, V_bar = tensor_velocity_vjp(
            solver.targets, w, *solver.sources, solver.B[layer], solver.V[layer], solver.h, ubar
        )
    rho_bar = rho_bar + w_bar.reshape(grid.shape) * grid.cell_volume
    return rho_bar, B_bar, V_bar


def backward(solver: GridForward, tape: Tape, lam: np.ndarray, xi: np.ndarray | None = None,
             history: list | None = None):
    """Run the adjoint from s = 1 back to s = 0.

    Args:
        solver: the forward solver that filled ``tape``.
        tape: the recorded forward steps.
        lam: dR/drho at the final state (shape of the grid).
        xi: dR/dX of query tokens at the final state (n, d), or None (no queries).
        history: the queries' stage inputs per step (:func:`gridpde.grid.queries.advect`).

    Returns:
        (dR/drho(0), dR/dB (L, M, d, d), dR/dV (L, M, d, d)).
    """
    d = solver.grid.dim
    L, M = solver.B.shape[:2]
    B_bar = np.zeros((L, M, 3, 3))
    V_bar = np.zeros((L, M, 3, 3))
    coeffs = solver.coeffs
    if xi is not None:
        xi = pad_points(xi)
    for i in range(len(tape.steps) - 1, -1, -1):
        rec = tape.steps[i]
        stages = solver.stages_of(rec)
        if rec.stages is None:
            tape.recomputed += 1
        lam_n = np.zeros_like(lam)
        lam_k = lam
        xi_n = xi_k = None
        if xi is not None:
            xi_n, xi_k = np.zeros_like(xi), xi
        for k in range(len(coeffs) - 1, -1, -1):
            a = coeffs[k]
            if a:
                lam_n += a * lam_k
            mu = (1.0 - a) * lam_k
            u_in, faces, table = stages[k]
            rho_bar, Bb, Vb = rhs_vjp(solver, u_in, faces, mu, rec.layer, table)
            if xi is not None:
                if a:
                    xi_n += a * xi_k
                nu = (1.0 - a) * xi_k
                q_rho, qB, qV, qX = stage_vjp(solver, u_in, history[i][k], nu, rec.layer)
                rho_bar = rho_bar + q_rho
                Bb = Bb + qB
                Vb = Vb + qV
                xi_k = nu + rec.dt * qX
            lam_k = mu + rec.dt * rho_bar
            B_bar[rec.layer] += rec.dt * Bb
            V_bar[rec.layer] += rec.dt * Vb
        lam = lam_n + lam_k
        if xi is not None:
            xi = xi_n + xi_k
    return lam, B_bar[:, :, 3 - d :, 3 - d :], V_bar[:, :, 3 - d :, 3 - d :]
