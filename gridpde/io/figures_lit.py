"""The literature's pictures, drawn from a result file.

- Rescaled tokens z_i(s) = e^{-sV} x_i(s) (Geshkovski, Letrouit, Polyanskiy, Rigollet,
  "The emergence of clusters in self-attention dynamics"): the tokens grow like e^{sV},
  and the clusters (polytope vertices, hyperplanes, lines) appear in z.
- Covariance trajectories S(s) in the cone of 2 x 2 PSD matrices (Castin, Ablin, Carrillo,
  Peyré: Gaussian prompts stay Gaussian, docs/model.md section 7).
- The NTK diagnostics along training (/ntk/trajectory, written by ``gridpde ntk --result``).
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy.linalg import expm

from gridpde.errors import CaseError

DEPTH = "depth s (0 = prompt, 1 = output)"


# ---------------------------------------------------------------- rescaling
def propagators(depth: np.ndarray, V: np.ndarray) -> np.ndarray:
    """Phi(s) = e^{(s - l/L) Vbar_l} ... e^{Vbar_0 / L} at each depth s, Vbar_l = (1/M) sum_j V_lj.

    Phi is the flow of dx/ds = Vbar x, the value part of the velocity alone; with one
    value matrix for all heads and layers, Phi(s) = e^{s V} (V as in the case file, so a
    horizon T folded into V as T V gives e^{t V_paper} at t = s T).

    Args:
        depth: (S,) depths in [0, 1].
        V: (L, M, d, d) value matrices.

    Returns:
        (S, d, d)
    """
    L = V.shape[0]
    Vbar = V.mean(axis=1)
    out = np.empty((len(depth), V.shape[-1], V.shape[-1]))
    for i, s in enumerate(depth):
        phi = np.eye(V.shape[-1])
        for layer in range(L):
            lo, hi = layer / L, (layer + 1) / L
            if s <= lo:
                break
            phi = expm((min(s, hi) - lo) * Vbar[layer]) @ phi
        out[i] = phi
    return out


def rescale_tokens(pos: np.ndarray, depth: np.ndarray, V: np.ndarray) -> np.ndarray:
    """z_i(s) = Phi(s)^{-1} x_i(s) for positions ``pos`` (S, T, d) at ``depth`` (S,)."""
    inv = np.linalg.inv(propagators(depth, V))
    return np.einsum("sab,stb->sta", inv, pos)


# ------------------------------------------------------------ exact Gaussians
def exact_gaussian(res, depths: np.ndarray) -> list | None:
    """Per prompt, (s, means (n, d), covs (n, d, d)) of the exact moment ODE for a Gaussian
    prompt, None for any other prompt; None if no prompt of the case is Gaussian.

    The case is re-read from the result's ``case`` attribute with the heads stored in the
    file (after training: the final heads, which made the snapshots). Solutions that blow
    up end where the ODE solver stops (NaN beyond).
    """
    from gridpde.casefile import parse_case
    from gridpde.prompts import GaussianPrompt
    from gridpde.validation.gaussian import gaussian_moments

    text, heads = res.case_text, res.heads
    if not text or "B" not in heads or "V" not in heads:
        return None
    try:
        case = parse_case(text)
    except CaseError:
        return None
    if len(case.prompts) != res.snaps.mass.shape[0]:
        return None
    out, any_gauss = [], False
    for prompt in case.prompts:
        if not isinstance(prompt, GaussianPrompt):
            out.append(None)
            continue
        any_gauss = True
        out.append(_solve(prompt, heads["B"], heads["V"], depths, gaussian_moments))
    return out if any_gauss else None


def _solve(prompt, B, V, depths, gaussian_moments):
    """The moment ODE to the largest depth it reaches (blow-up: bisect on the horizon)."""
    with np.errstate(all="ignore"):
        for end in range(len(depths), 1, -max(1, len(depths) // 25)):
            try:
                m, S = gaussian_moments(prompt.mean, prompt.cov, B, V, depths[:end])
            except (ValueError, FloatingPointError, np.linalg.LinAlgError):
                continue
            if np.all(np.isfinite(S)) and np.all(np.isfinite(m)):
                return depths[:end], m, S
    return None


# ------------------------------------------------------------------ PSD cone
def cone_coordinates(S: np.ndarray) -> np.ndarray:
    """[[a, b], [b, c]] -> ((a - c)/sqrt2, sqrt2 b, (a + c)/sqrt2): an isometry for the
    Frobenius norm, in which the PSD cone is the round cone z >= sqrt(x² + y²) about the
    trace axis; rank-1 matrices lie on its surface, 0 at its apex."""
    a, b, c = S[..., 0, 0], S[..., 0, 1], S[..., 1, 1]
    r2 = np.sqrt(2.0)
    return np.stack([(a - c) / r2, r2 * b, (a + c) / r2], axis=-1)


def cone_figure(cov: np.ndarray, depth: np.ndarray, exact: list | None, title: str) -> Figure:
    """cov: (P, S, 2, 2) covariances at ``depth``; a 3-D view of the cone and, beside it,
    the eigenvalue ratio (0: collapsed onto a line) and the trace through depth."""
    fig = Figure(figsize=(13.0, 4.6), layout="constrained")
    grid = fig.add_gridspec(1, 3, width_ratios=[1.45, 1, 1])
    ax3 = fig.add_subplot(grid[0], projection="3d")
    ax_r, ax_t = fig.add_subplot(grid[1]), fig.add_subplot(grid[2])
    P = cov.shape[0]
    pts = cone_coordinates(cov)
    zmax = float(np.nanmax(pts[..., 2])) if np.isfinite(pts).any() else 1.0
    zmax = zmax if zmax > 0 else 1.0
    theta, z = np.meshgrid(np.linspace(0, 2 * np.pi, 37), np.linspace(0, 1.05 * zmax, 9))
    ax3.plot_wireframe(z * np.cos(theta), z * np.sin(theta), z, color="0.75", lw=0.4)
    for p in range(P):
        colour = f"C{p % 10}"
        x = pts[p]
        ok = np.isfinite(x).all(axis=1)
        ax3.plot(*x[ok].T, "-o", color=colour, ms=2, lw=1.4)
        if ok.any():
            ax3.scatter(*x[ok][0], color=colour, marker="o", s=30, edgecolor="k")
            ax3.scatter(*x[ok][-1], color=colour, marker="s", s=30, edgecolor="k")
        lam = np.linalg.eigvalsh(np.where(np.isfinite(cov[p]), cov[p], 0.0))
        ratio = np.where(ok, lam[:, 0] / np.where(lam[:, 1] > 0, lam[:, 1], np.nan), np.nan)
        ax_r.plot(depth, ratio, "o", color=colour, ms=3)
        ax_t.semilogy(depth, np.where(ok, lam.sum(axis=1), np.nan), "o", color=colour, ms=3,
                      label=f"prompt {p}")
        ex = exact[p] if exact is not None else None
        if ex is not None:
            s, _, S = ex
            ax3.plot(*cone_coordinates(S).T, "--", color="k", lw=0.7)
            le = np.linalg.eigvalsh(S)
            ax_r.plot(s, le[:, 0] / le[:, 1], "-", color=colour, lw=1)
            ax_t.semilogy(s, le.sum(axis=1), "-", color=colour, lw=1)
        else:
            ax_r.plot(depth, ratio, "-", color=colour, lw=0.8, alpha=0.6)
            ax_t.semilogy(depth, np.where(ok, lam.sum(axis=1), np.nan), "-", color=colour, lw=0.8, alpha=0.6)
    ax3.set_xlabel("(S_xx - S_yy)/√2", fontsize="small")
    ax3.set_ylabel("√2 S_xy", fontsize="small")
    ax3.set_zlabel("(S_xx + S_yy)/√2", fontsize="small")
    ax3.set_title("S(s) in the PSD cone (length²)\ncircle: s = 0, square: last s", fontsize="small")
    ax3.view_init(elev=18, azim=-60)
    ax3.set_box_aspect(None, zoom=0.82)
    ax_r.set(title="λ_min / λ_max of S (0: collapsed onto a line)", xlabel=DEPTH, ylabel="eigenvalue ratio",
             ylim=(-0.03, 1.03))
    ax_t.set(title="trace of S (0: collapsed to a point)", xlabel=DEPTH, ylabel="tr S (length²)")
    handles = [Line2D([], [], color=f"C{p % 10}", marker="o", ls="", label=f"prompt {p}") for p in range(min(P, 10))]
    if exact is not None:
        handles.append(Line2D([], [], color="k", ls="-", lw=1, label="exact Gaussian ODE"))
    ax_t.legend(handles=handles, fontsize="x-small")
    fig.suptitle(title + "\ndots: snapshots" + ("; lines: the exact moment ODE (docs/model.md 7)" if exact else ""))
    return fig


# ----------------------------------------------------------------------- NTK
def ntk_figure(g, title: str) -> Figure:
    """/ntk/trajectory: sigma_min / sigma_max and the numerical rank of each diagnostic
    against the checkpoint step, one line per layer (the measures entering it)."""
    from gridpde.ntk.diagnostics import RTOL
    from gridpde.ntk.trajectory import SUMMARY

    steps = g["step"][()]
    names = [n for n in SUMMARY if f"{n}_rel_min" in g]
    fig = Figure(figsize=(3.8 * len(names) + 0.5, 6.4), layout="constrained")
    axes = fig.subplots(2, len(names), squeeze=False)
    for k, name in enumerate(names):
        rel, rank = g[f"{name}_rel_min"][()], g[f"{name}_rank"][()]
        ax, axr = axes[0, k], axes[1, k]
        for layer in range(rel.shape[1]):
            ax.semilogy(steps, np.maximum(rel[:, layer], 1e-18), "o-", ms=3, label=f"layer {layer} (s = l/L)")
            axr.plot(steps, rank[:, layer], "o-", ms=3)
        ax.axhline(RTOL, color="C3", ls="--", lw=1, label=f"rank tolerance floor {RTOL:g}")
        ax.set(title=f"{name}: σ_min / σ_max", xlabel="training step", ylabel="relative singular value")
        axr.set(title=f"{name}: numerical rank", xlabel="training step", ylabel="rank")
        ax.legend(fontsize="x-small")
    fig.suptitle(f"{title}\na singular value counts in the rank above {RTOL:g}·sqrt(max(S, n))·σ_max "
                 "(S probes, n basis functions)")
    return fig
