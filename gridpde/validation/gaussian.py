"""The exact solution for Gaussian prompts (docs/model.md section 7).

For mu = N(m, S) every head's field is affine, Att[mu](x) = V (m + S B x), so
the prompt stays Gaussian with

    dm/ds = a + G m,   dS/ds = G S + S G^T,
    G = (1/M) sum_j V_j S B_j,   a = (1/M) sum_j V_j m   (active layer's heads).

A mass-free query token moves by the same affine field,
dX/ds = a + G X, so :func:`gaussian_queries` solves it beside the moments:
the exact query trajectories, and the in-context prediction as an affine
function of the query's start.

These ODEs are solved layer by layer to a relative tolerance of 1e-12.
"""

from __future__ import annotations

import numpy as np
from scipy.integrate import solve_ivp


def _moment_rhs(B: np.ndarray, V: np.ndarray, d: int):
    """Right-hand side of (m, S, X_1, ..., X_q) stacked: the moments, then query tokens."""
    def rhs(_s, y):
        m, S = y[:d], y[d : d + d * d].reshape(d, d)
        X = y[d + d * d :].reshape(-1, d)
        G = np.einsum("jab,bc,jcd->ad", V, S, B) / B.shape[0]
        a = np.einsum("jab,b->a", V, m) / B.shape[0]
        return np.concatenate([a + G @ m, (G @ S + S @ G.T).ravel(), (a + X @ G.T).ravel()])

    return rhs


def gaussian_moments(
    mean: np.ndarray, cov: np.ndarray, B: np.ndarray, V: np.ndarray, depths: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of a Gaussian prompt at the requested depths.

    Args:
        mean: (d,) initial mean m(0).
        cov: (d, d) initial covariance S(0).
        B: (L, M, d, d) score matrices B = K^T Q.
        V: (L, M, d, d) value matrices.
        depths: increasing depths s in [0, 1].

    Returns:
        (means (S, d), covs (S, d, d)) at ``depths``.
    """
    means, covs, _ = gaussian_queries(mean, cov, B, V, np.zeros((0, len(mean))), depths)
    return means, covs


def gaussian_queries(mean, cov, B, V, queries, depths):
    """Mean, covariance and query positions of a Gaussian prompt at the requested depths.

    Args:
        mean, cov, B, V, depths: as for :func:`gaussian_moments`.
        queries: (q, d) query tokens at s = 0.

    Returns:
        (means (S, d), covs (S, d, d), queries (S, q, d)).
    """
    d = len(mean)
    L = B.shape[0]
    depths = np.asarray(depths, float)
    X0 = np.asarray(queries, float).reshape(-1, d)
    y = np.concatenate([np.asarray(mean, float), np.asarray(cov, float).ravel(), X0.ravel()])
    means = np.empty((len(depths), d))
    covs = np.empty((len(depths), d, d))
    points = np.empty((len(depths), X0.shape[0], d))
    for layer in range(L):
        s0, s1 = layer / L, (layer + 1) / L
        sol = solve_ivp(
            _moment_rhs(B[layer], V[layer], d),
            (s0, s1),
            y,
            method="DOP853",
            rtol=1e-12,
            atol=1e-14,
            dense_output=True,
        )
        inside = (depths >= s0) & ((depths < s1) | (layer == L - 1))
        if inside.any():
            ys = sol.sol(depths[inside])
            means[inside] = ys[:d].T
            covs[inside] = ys[d : d + d * d].T.reshape(-1, d, d)
            points[inside] = ys[d + d * d :].T.reshape(len(ys[0]), X0.shape[0], d)
        y = sol.y[:, -1]
    return means, covs, points
