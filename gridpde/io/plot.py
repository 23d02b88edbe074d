"""Figures of a result file (``gridpde plot``): densities or tokens per prompt, moments,
training, heads against the teacher, outputs against targets, the NTK along training,
covariances in the PSD cone (2-D).

Every figure carries a title (the case name, i.e. the result file's stem, and what is
shown), labelled axes (lengths are in the case's token coordinates, depth s and training
steps are pure numbers), legends, one colour scale per row of panels that are compared,
and a red note at the bottom when the run did not finish. Densities and tokens are zoomed
to where the mass is. Figures are drawn on :class:`matplotlib.figure.Figure` objects (no
pyplot state), so nothing stays open and no display is needed. Only the first
``depth_done`` snapshots are drawn; the rest of the record is NaN.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import h5py
import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from gridpde.heads import score_matrices
from gridpde.io import figures_lit as lit
from gridpde.io.results import AXES, Result, read_result

Format = Literal["png", "pdf", "svg"]
FORMATS = ("png", "pdf", "svg")
_SHOWN = 5  # snapshot panels per figure (first and last always among them)
LENGTH = "(length)"  # the unit of token coordinates
DEPTH = "depth s (0 = prompt, 1 = output)"


def plot_result(
    path: str | Path,
    out_dir: str | Path | None = None,
    *,
    fmt: Format = "png",
    rescaled: bool = False,
    dpi: int = 100,
    only: tuple[str, ...] | None = None,
    prefix: str = "",
) -> list[Path]:
    """Write the figures of the result file ``path``; return their paths.

    Args:
        path: a result file written by :func:`gridpde.io.results.write_result`.
        out_dir: where to write; default ``<stem>_figures/`` next to ``path``.
        fmt: "png" (default), or "pdf" / "svg" for vector output.
        rescaled: draw tokens as e^{-sV} x (GLPR's rescaled tokens; see
            :func:`gridpde.io.figures_lit.rescale_tokens`), for particle results.
        dpi: resolution of PNGs.
        only: write only the figures of these names (e.g. ("density_p0",)); None: all.
        prefix: put before each file name (e.g. "quickstart_").
    """
    if fmt not in FORMATS:
        msg = f"--format {fmt!r}: expected one of {', '.join(FORMATS)}"
        raise ValueError(msg)
    path = Path(path)
    res = read_result(path)
    out = Path(out_dir) if out_dir is not None else path.with_name(f"{path.stem}_figures")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in figures(res, rescaled=rescaled).items():
        if only is not None and name not in only:
            continue
        target = out / f"{prefix}{name}.{fmt}"
        fig.savefig(target, dpi=dpi)
        written.append(target)
    return written


def figures(res: Result, *, rescaled: bool = False) -> dict[str, Figure]:
    """Every figure of the result ``res``, by file name (without suffix)."""
    snaps, done = res.snaps, res.snaps.done
    if done == 0:
        return {}
    name, note = res.path.stem, partial_note(res)
    depth = snaps.depth[:done]
    P = snaps.mass.shape[0]
    figs: dict[str, Figure] = {}
    for p in range(P):
        what = f"prompt {p}" if P > 1 else "the prompt"
        if snaps.density is not None:
            figs[f"density_p{p}"] = _density(snaps.density[p, :done], snaps.centres, depth,
                                             snaps.mean[p, :done], f"{name}: density rho(s) of {what}")
        else:
            pos = snaps.positions[p, :done]
            label = "tokens"
            if rescaled:
                pos, label = lit.rescale_tokens(pos, depth, res.heads["V"]), "rescaled tokens e^{-sV} x"
            figs[f"tokens_p{p}"] = _tokens(pos, snaps.weights[p], depth, f"{name}: {label} of {what}",
                                           rescaled)
    exact = lit.exact_gaussian(res, np.linspace(0.0, float(depth[-1]), 101))
    figs["moments"] = _moments(snaps.mean[:, :done], snaps.cov[:, :done], depth, exact,
                               f"{name}: mean and covariance through depth")
    if res.dim == 2:
        figs["cov_cone"] = lit.cone_figure(snaps.cov[:, :done], depth, exact,
                                           f"{name}: covariance S(s) in the cone of 2x2 PSD matrices")
    with h5py.File(res.path, "r") as f:
        if "train" in f and len(f["train/step"]) > 0:
            figs["training"] = _training(f["train"], f"{name}: training")
            if "checkpoint_step" in f["train"] and len(f["train/checkpoint_step"]):
                teacher = f.get("teacher")
                if teacher is not None and teacher["V"].shape != f["train/heads/V"].shape[1:]:
                    teacher = None  # a teacher of another width or depth: no head-by-head match to draw
                figs["heads"] = _head_paths(f["train"], bool(f.attrs.get("scale_scores", False)),
                                            teacher, title=f"{name}: heads along training")
        if "targets" in f:
            for p, fig in _versus_targets(f["targets"], snaps, done, name).items():
                figs[f"target_p{p}"] = fig
        if "ntk/trajectory" in f:
            figs["ntk_trajectory"] = lit.ntk_figure(f["ntk/trajectory"], f"{name}: NTK along training")
    for fig in figs.values():
        if note:
            fig.supxlabel(note, color="C3", fontsize="medium", fontweight="bold")
    return figs


def partial_note(res: Result) -> str:
    """"" for a finished run; else a line saying what the figures hold."""
    status = str(res.attrs.get("status", "running"))
    if status == "finished":
        return ""
    done, total = res.snaps.done, len(res.snaps.depth)
    msg = str(res.attrs.get("message", ""))
    last = f", last s = {res.snaps.depth[done - 1]:.3g}" if done else ""
    return (f"PARTIAL RESULT: status {status!r}, {done} of {total} snapshots{last}"
            + (f" ({msg[:90]})" if msg else ""))


# ------------------------------------------------------------------- helpers
def _panels(rows: int, cols: int, *, size: float = 3.0, extra: float = 1.2) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(size * cols + extra, size * rows + 0.8), layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def shown_depths(done: int, n: int = _SHOWN) -> list[int]:
    """At most ``n`` snapshot indices, evenly spread, first and last included."""
    return sorted({int(round(i)) for i in np.linspace(0, done - 1, min(n, done))})


def _step(c: np.ndarray) -> float:
    return float(c[1] - c[0]) if len(c) > 1 else 1.0


def _extent(cx: np.ndarray, cy: np.ndarray) -> list[float]:
    hx, hy = _step(cx) / 2, _step(cy) / 2
    return [cx[0] - hx, cx[-1] + hx, cy[0] - hy, cy[-1] + hy]


def mass_window(c: np.ndarray, marginal: np.ndarray, tail: float = 1e-3, pad: float = 0.15) -> tuple[float, float]:
    """The interval of the axis with centres ``c`` holding all but ``tail`` of the mass
    ``marginal`` (non-negative, per cell), widened by ``pad`` of its width, inside the box."""
    h = _step(c)
    lo_box, hi_box = c[0] - h / 2, c[-1] + h / 2
    m = np.where(np.isfinite(marginal), np.maximum(marginal, 0.0), 0.0)
    if m.sum() <= 0:
        return lo_box, hi_box
    cdf = np.cumsum(m) / m.sum()
    lo = c[min(np.searchsorted(cdf, tail / 2), len(c) - 1)] - h / 2
    hi = c[min(np.searchsorted(cdf, 1 - tail / 2), len(c) - 1)] + h / 2
    w = max(hi - lo, 4 * h)
    return max(lo_box, lo - pad * w), min(hi_box, hi + pad * w)


def token_window(x: np.ndarray, w: np.ndarray, tail: float = 2e-3, pad: float = 0.1) -> tuple[float, float]:
    """Like :func:`mass_window` for token coordinates ``x`` (S, T) of weights ``w`` (T,)."""
    ok = np.isfinite(x)
    xs, ws = x[ok], np.broadcast_to(w, x.shape)[ok]
    if xs.size == 0:
        return -1.0, 1.0
    order = np.argsort(xs)
    xs, cdf = xs[order], np.cumsum(ws[order])
    cdf = cdf / cdf[-1] if cdf[-1] > 0 else np.linspace(0, 1, xs.size)
    lo = xs[min(np.searchsorted(cdf, tail / 2), xs.size - 1)]
    hi = xs[min(np.searchsorted(cdf, 1 - tail / 2), xs.size - 1)]
    span = max(hi - lo, 1e-9 * max(1.0, abs(hi)))
    return lo - pad * span, hi + pad * span


# ------------------------------------------------------------------ densities
def _density(rho, centres, depth, mean, title) -> Figure:
    """rho: (S, *cells) at the depths ``depth``; mean: (S, d)."""
    d = rho.ndim - 1
    if d == 1:
        return _density_1d(rho, centres[0], depth, title)
    if d == 2:
        return _density_2d(rho, centres, depth, mean, title)
    return _density_3d(rho, centres, depth, title)


def _density_1d(rho, c, depth, title) -> Figure:
    S = len(depth)
    cols = 3 if S >= 6 else 2
    fig, ax = _panels(1, cols, size=3.8)
    ax = ax[0]
    lim = mass_window(c, np.nansum(rho, axis=0))
    cmap = Normalize(0.0, 1.0)
    for r, s in zip(rho, depth, strict=True):
        ax[0].plot(c, r, color=colormaps["viridis"](cmap(s)), lw=1.4)
        if s > 0:
            ax[1].plot(c, r - rho[0], color=colormaps["viridis"](cmap(s)), lw=1.4)
    ax[0].set(title="density rho(s, x)", xlabel=f"x {LENGTH}", ylabel="rho (mass / length)", xlim=lim)
    ax[1].axhline(0, color="0.5", lw=0.8)
    ax[1].set(title="change from s = 0", xlabel=f"x {LENGTH}", ylabel="rho(s) - rho(0)", xlim=lim)
    sm = fig.colorbar(_mappable(fig, cmap), ax=ax[:2], label="depth s", shrink=0.85)
    sm.ax.tick_params(labelsize="small")
    if cols == 3:
        shown = ax[2].imshow(rho, origin="lower", aspect="auto", cmap="magma",
                             extent=[c[0] - _step(c) / 2, c[-1] + _step(c) / 2, depth[0], depth[-1]])
        ax[2].set(title="rho(s, x) in the depth-space plane", xlabel=f"x {LENGTH}", ylabel=DEPTH, xlim=lim)
        fig.colorbar(shown, ax=ax[2], label="rho (mass / length)")
    fig.suptitle(title)
    return fig


def _mappable(fig, norm):
    from matplotlib.cm import ScalarMappable

    return ScalarMappable(norm=norm, cmap="viridis")


def _density_2d(rho, centres, depth, mean, title) -> Figure:
    cx, cy = centres
    picks = shown_depths(len(depth))
    rows = 2 if len(picks) > 1 else 1
    xlim = mass_window(cx, np.nansum(rho, axis=(0, 2)))
    ylim = mass_window(cy, np.nansum(rho, axis=(0, 1)))
    aspect = float(np.clip((ylim[1] - ylim[0]) / (xlim[1] - xlim[0]), 0.45, 1.6))
    fig = Figure(figsize=(2.9 * len(picks) + 1.2, 2.9 * aspect * rows + 1.1), layout="constrained")
    axes = fig.subplots(rows, len(picks), squeeze=False)
    vmax = float(np.nanmax(rho[picks])) or 1.0
    first = rho[0]
    levels = np.array([0.15, 0.5, 0.85]) * float(np.nanmax(first)) if np.nanmax(first) > 0 else None
    X, Y = np.meshgrid(cx, cy, indexing="ij")
    for k, i in enumerate(picks):
        ax = axes[0, k]
        top = ax.imshow(rho[i].T, origin="lower", extent=_extent(cx, cy), vmin=0, vmax=vmax, cmap="magma")
        if i > 0 and levels is not None:
            ax.contour(X, Y, first, levels=levels, colors="w", linewidths=0.6, alpha=0.8)
        ax.plot(*mean[i], "+", color="c", ms=9, mew=1.5)
        ax.set(title=f"s = {depth[i]:.3g}", xlim=xlim, ylim=ylim, xlabel=f"x {LENGTH}")
        ax.set_ylabel(f"y {LENGTH}" if k == 0 else "")
    fig.colorbar(top, ax=axes[0, :], shrink=0.9, label="rho (mass / length²)")
    axes[0, 0].legend(handles=[Line2D([], [], color="w", lw=0.8, label="contours of rho(0)"),
                               Line2D([], [], color="c", marker="+", ls="", label="mean")],
                      loc="lower left", fontsize="x-small", facecolor="0.3", labelcolor="w", framealpha=0.7)
    if rows == 2:
        change = [rho[i] - first for i in picks[1:]]
        lim = max(float(np.nanmax(np.abs(c))) for c in change) or 1.0
        axes[1, 0].set_visible(False)
        for k, (i, dif) in enumerate(zip(picks[1:], change, strict=True), start=1):
            ax = axes[1, k]
            bottom = ax.imshow(dif.T, origin="lower", extent=_extent(cx, cy), vmin=-lim, vmax=lim, cmap="RdBu_r")
            ax.set(title=f"change from s = 0 at s = {depth[i]:.3g}", xlim=xlim, ylim=ylim, xlabel=f"x {LENGTH}")
            ax.set_ylabel(f"y {LENGTH}" if k == 1 else "")
            ax.title.set_fontsize("small")
        fig.colorbar(bottom, ax=axes[1, :], shrink=0.9, label="rho(s) - rho(0)")
    fig.suptitle(title + ("; magenta-to-yellow: density, red/blue: gained/lost mass" if rows == 2 else ""))
    return fig


def _density_3d(rho, centres, depth, title) -> Figure:
    """Marginals (sum over one axis times its cell width) at the first and last depth, and
    their change."""
    pairs = [(a, b) for a in range(3) for b in range(a + 1, 3)]
    picks = sorted({0, len(depth) - 1})
    rows = len(picks) + (len(picks) > 1)
    fig, axes = _panels(rows, 3, size=3.0)
    marg = {}
    for i in picks:
        for a, b in pairs:
            (c,) = set(range(3)) - {a, b}
            marg[i, a, b] = rho[i].sum(axis=c) * _step(centres[c])
    vmax = max(float(np.nanmax(m)) for m in marg.values()) or 1.0
    lims = [mass_window(centres[a], np.nansum(rho, axis=tuple(x for x in range(4) if x != a + 1)))
            for a in range(3)]
    for row, i in enumerate(picks):
        for col, (a, b) in enumerate(pairs):
            ax = axes[row, col]
            im = ax.imshow(marg[i, a, b].T, origin="lower", extent=_extent(centres[a], centres[b]),
                           vmin=0, vmax=vmax, cmap="magma")
            ax.set(title=f"s = {depth[i]:.3g}, {AXES[a]}{AXES[b]}-marginal", xlim=lims[a], ylim=lims[b],
                   xlabel=f"{AXES[a]} {LENGTH}", ylabel=f"{AXES[b]} {LENGTH}")
        fig.colorbar(im, ax=axes[row, :], shrink=0.9, label="marginal (mass / length²)")
    if len(picks) > 1:
        difs = [marg[picks[1], a, b] - marg[0, a, b] for a, b in pairs]
        lim = max(float(np.nanmax(np.abs(x))) for x in difs) or 1.0
        for col, ((a, b), dif) in enumerate(zip(pairs, difs, strict=True)):
            ax = axes[-1, col]
            im = ax.imshow(dif.T, origin="lower", extent=_extent(centres[a], centres[b]),
                           vmin=-lim, vmax=lim, cmap="RdBu_r")
            ax.set(title=f"change from s = 0, {AXES[a]}{AXES[b]}", xlim=lims[a], ylim=lims[b],
                   xlabel=f"{AXES[a]} {LENGTH}", ylabel=f"{AXES[b]} {LENGTH}")
        fig.colorbar(im, ax=axes[-1, :], shrink=0.9, label="change of the marginal")
    fig.suptitle(title)
    return fig


# --------------------------------------------------------------------- tokens
def token_colours(x0: np.ndarray, fig: Figure) -> np.ndarray:
    """A colour per token from its position at s = 0 (its angle about the mean in 2-D/3-D,
    its coordinate in 1-D), so that a token can be followed across panels."""
    ok = np.isfinite(x0).all(axis=1)
    if x0.shape[1] == 1:
        v = x0[:, 0]
        t = (v - np.nanmin(v)) / (np.nanmax(v) - np.nanmin(v) or 1.0)
        return colormaps["viridis"](np.where(ok, t, 0.0))
    c = x0 - np.nanmean(x0[ok], axis=0)
    t = (np.arctan2(c[:, 1], c[:, 0]) / (2 * np.pi)) % 1.0
    return colormaps["hsv"](np.where(ok, t, 0.0))


def equal_or_auto(xlim, ylim) -> str:
    """Equal axis scales unless one span is more than 3 times the other (then each fills its panel)."""
    r = (ylim[1] - ylim[0]) / (xlim[1] - xlim[0])
    return "equal" if 1 / 3 <= r <= 3 else "auto"


def marker_sizes(w: np.ndarray) -> tuple[np.ndarray, str]:
    """Marker areas (points²) proportional to the token weights, and what they mean."""
    w = np.where(np.isfinite(w), w, 0.0)
    wmax = float(w.max()) if w.size else 0.0
    if wmax <= 0 or np.allclose(w[w > 0], wmax):
        return np.full(w.shape, 14.0), "equal token weights"
    return np.maximum(40.0 * w / wmax, 1.0), "marker area ∝ token weight w_i"


def _tokens(pos: np.ndarray, w: np.ndarray, depth: np.ndarray, title: str, rescaled: bool) -> Figure:
    """pos: (S, T, d) token positions, w: (T,) weights."""
    d = pos.shape[-1]
    fin = np.isfinite(pos).all(axis=2).all(axis=0) & np.isfinite(w) & (w > 0)
    pos, w = pos[:, fin], w[fin]
    if d == 1:
        return _tokens_1d(pos[..., 0], w, depth, title)
    picks = shown_depths(len(depth))
    fig, axes = _panels(1, len(picks) + (len(depth) > 1), size=3.0)
    axes = axes[0]
    colours = token_colours(pos[0], fig)
    size, size_note = marker_sizes(w)
    xlim, ylim = token_window(pos[..., 0], w), token_window(pos[..., 1], w)
    aspect = equal_or_auto(xlim, ylim)
    unit = "" if rescaled else f" {LENGTH}"
    for ax, i in zip(axes, picks, strict=False):
        ax.scatter(pos[i, :, 0], pos[i, :, 1], s=size, c=colours, alpha=0.75, linewidths=0)
        ax.set(title=f"s = {depth[i]:.3g}", xlim=xlim, ylim=ylim, xlabel=f"x{unit}", aspect=aspect)
    axes[0].set_ylabel(f"y{unit}")
    if len(depth) > 1:
        ax = axes[-1]
        sub = np.arange(pos.shape[1]) if pos.shape[1] <= 300 else \
            np.random.default_rng(0).choice(pos.shape[1], 300, replace=False)
        for t in sub:
            ax.plot(pos[:, t, 0], pos[:, t, 1], "-", color=colours[t], lw=0.6, alpha=0.7)
        ax.scatter(pos[-1, sub, 0], pos[-1, sub, 1], s=10, c=colours[sub], linewidths=0)
        ax.set(title="paths through depth (dot: last s)", xlim=xlim, ylim=ylim, xlabel=f"x{unit}",
               aspect=aspect)
    proj = ", x-y projection" if d == 3 else ""
    fig.suptitle(f"{title}{proj}\ncolour: the token's angle about the mean at s = 0; {size_note}")
    return fig


def _tokens_1d(x: np.ndarray, w: np.ndarray, depth: np.ndarray, title: str) -> Figure:
    fig, axes = _panels(1, 2, size=3.8)
    ax0, ax1 = axes[0]
    colours = token_colours(x[0][:, None], fig)
    sub = np.arange(x.shape[1]) if x.shape[1] <= 300 else np.linspace(0, x.shape[1] - 1, 300).astype(int)
    for t in sub:
        ax0.plot(depth, x[:, t], "-", color=colours[t], lw=0.7, alpha=0.8)
    lim = token_window(x, w)
    ax0.set(title="token paths x_i(s)", xlabel=DEPTH, ylabel=f"x {LENGTH}", ylim=lim)
    ax1.hist([x[0], x[-1]], bins=40, range=lim, weights=[w, w], density=True, histtype="step",
             label=[f"s = {depth[0]:.3g}", f"s = {depth[-1]:.3g}"])
    ax1.set(title="weighted histogram", xlabel=f"x {LENGTH}", ylabel="density (1 / length)")
    ax1.legend(fontsize="small")
    fig.suptitle(f"{title}\ncolour: the token's position at s = 0")
    return fig


# -------------------------------------------------------------------- moments
def _moments(mean, cov, depth, exact, title) -> Figure:
    """mean: (P, S, d), cov: (P, S, d, d); exact: per prompt (s, means, covs) or None."""
    d, P = mean.shape[-1], mean.shape[0]
    fig, axes = _panels(1, 2, size=3.8)
    ax_m, ax_c = axes[0]
    styles = ["-", "--", ":", "-."]
    entries = [(a, b) for a in range(d) for b in range(a, d)]
    dense = len(depth) >= 12
    for p in range(P):
        colour = f"C{p % 10}"
        ex = exact[p] if exact is not None else None
        for ax, k, style, values, exact_values in (
            *[(ax_m, a, styles[a % 4], mean[p, :, a], None if ex is None else ex[1][:, a]) for a in range(d)],
            *[(ax_c, k, styles[k % 4], cov[p, :, a, b], None if ex is None else ex[2][:, a, b])
              for k, (a, b) in enumerate(entries)],
        ):
            ax.plot(depth, values, "o", ms=3.5, color=colour)
            if exact_values is not None:
                ax.plot(ex[0], exact_values, style, color=colour, lw=1)
            else:
                ax.plot(depth, values, style, color=colour, lw=1 if dense else 0.8, alpha=1 if dense else 0.6)
    for ax in (ax_m, ax_c):  # round-off (a mean of 1e-16) is not a curve
        lo, hi = ax.get_ylim()
        if hi - lo < 1e-9:
            ax.set_ylim(lo - 1e-6, hi + 1e-6)
    ax_m.set(title="mean m(s)", xlabel=DEPTH, ylabel=f"mean {LENGTH}")
    ax_c.set(title="covariance S(s)", xlabel=DEPTH, ylabel="covariance (length²)")
    hm = [Line2D([], [], color="k", ls=styles[a % 4], label=f"m_{AXES[a]}") for a in range(d)]
    hc = [Line2D([], [], color="k", ls=styles[k % 4], label=f"S_{AXES[a]}{AXES[b]}")
          for k, (a, b) in enumerate(entries)]
    hp = [Line2D([], [], color=f"C{p % 10}", marker="o", ms=3.5, ls="", label=f"prompt {p}") for p in range(min(P, 10))]
    ax_m.legend(handles=hm + hp, fontsize="x-small")
    ax_c.legend(handles=hc, fontsize="x-small")
    if exact is not None:
        how = "dots: snapshots; lines: the exact Gaussian moment ODE (docs/model.md 7)"
    elif dense:
        how = "dots: snapshots, joined"
    else:
        how = (f"dots: the {len(depth)} snapshots (thin lines join them; raise output.snapshots "
               "for the path in between)")
    fig.suptitle(f"{title}\n{how}")
    return fig


# ------------------------------------------------------------------- training
def _training(t: h5py.Group, title: str = "training") -> Figure:
    """Risk (log), gradient norm (log) and W_c against the training step."""
    fig, axes = _panels(1, 3, size=3.4)
    axes = axes[0]
    step = t["step"][()]
    if "risk_prompt" in t and t["risk_prompt"].ndim == 2 and t["risk_prompt"].shape[1] > 1:
        for p, r in enumerate(t["risk_prompt"][()].T):
            axes[0].semilogy(step, r, "-", lw=0.8, alpha=0.6, label=f"prompt {p}")
    axes[0].semilogy(step, t["risk"][()], "k-o", ms=3, label="mean over prompts")
    axes[0].set(title="risk R before each step", xlabel="training step", ylabel="risk (loss units)")
    axes[0].legend(fontsize="x-small")
    axes[1].semilogy(step, t["grad_norm"][()], "-o", ms=3)
    axes[1].set(title="gradient norm |dR/d(Q,K,V)|", xlabel="training step", ylabel="norm")
    axes[2].plot(step, t["w_c"][()], "-o", ms=3)
    axes[2].set(title="W_c from the initial heads", xlabel="training step", ylabel="W_c (head units)")
    fig.suptitle(title)
    return fig


def _match(student: np.ndarray, teacher: np.ndarray) -> np.ndarray:
    """perm[layer, i] = the student head matched to teacher head i (assignment on the
    distance of (B, V), per layer); heads are exchangeable inside a layer."""
    from scipy.optimize import linear_sum_assignment

    L, M = student.shape[:2]
    perm = np.zeros((L, M), int)
    for layer in range(L):
        cost = ((student[layer][:, None] - teacher[layer][None]) ** 2).reshape(M, M, -1).sum(axis=-1)
        rows, cols = linear_sum_assignment(cost)
        perm[layer, cols] = rows
    return perm


def _head_paths(t: h5py.Group, scale_scores: bool, teacher: h5py.Group | None = None, *,
                title: str = "heads along training") -> Figure:
    """Entries of B = K^T Q and V of every head against the checkpoint step, one row per layer.

    With ``teacher`` (/teacher), its entries are dashed lines in the colour of the student head
    matched to it at the last checkpoint: heads are exchangeable inside a layer, so a student
    head may end on any teacher head's line, or on none.
    """
    steps = t["checkpoint_step"][()]
    Q, K, V = (t["heads"][k][()] for k in "QKV")
    B = score_matrices(Q, K, scale_scores)  # as /heads/B and /teacher/B: with 1/sqrt(k) if scaled
    L, M, d = V.shape[1], V.shape[2], V.shape[-1]
    fig, axes = _panels(L, 2, size=3.6)
    perm = None
    if teacher is not None:
        final = np.concatenate([B[-1].reshape(L, M, -1), V[-1].reshape(L, M, -1)], axis=-1)
        tt = np.concatenate([teacher["B"][()].reshape(L, M, -1), teacher["V"][()].reshape(L, M, -1)], axis=-1)
        perm = _match(final, tt)
    for layer in range(L):
        for col, (name, arr) in enumerate((("B", B), ("V", V))):
            ax = axes[layer, col]
            if teacher is not None:
                tarr = teacher[name][layer]
                for i in range(M):
                    for value in np.ravel(tarr[i]):
                        ax.axhline(value, color=f"C{perm[layer, i] % 10}", ls="--", lw=0.9, alpha=0.8)
            for j in range(M):
                for a in range(d):
                    for b in range(d):
                        ax.plot(steps, arr[:, layer, j, a, b], "-", color=f"C{j % 10}", lw=1.2,
                                marker="o" if len(steps) < 12 else None, ms=2.5)
            ax.set(title=f"layer {layer}: the {d * d} entries of {name} per head", xlabel="training step",
                   ylabel=f"entry of {name}")
    handles = [Line2D([], [], color=f"C{j % 10}", lw=1.5, label=f"head {j}") for j in range(min(M, 10))]
    if teacher is not None:
        handles.append(Line2D([], [], color="0.3", ls="--", label="teacher head matched to it"))
    axes[0, -1].legend(handles=handles, fontsize="x-small", loc="best")
    fig.suptitle(title + ("; dashed: the teacher (the planted minimum)" if teacher is not None else ""))
    return fig


# -------------------------------------------------------------------- targets
def _versus_targets(g: h5py.Group, snaps, done: int, name: str) -> dict[int, Figure]:
    """The outputs at the last filled depth next to their targets."""
    figs = {}
    s_last = snaps.depth[done - 1]
    for p in range(snaps.mass.shape[0]):
        title = f"{name}: output at s = {s_last:.3g} against the target, prompt {p}"
        if "density" in g and snaps.density is not None:
            out, tgt = snaps.density[p, done - 1], g["density"][p]
            if out.ndim == 1:
                c = snaps.centres[0]
                fig, ax = _panels(1, 2, size=3.8)
                ax = ax[0]
                lim = mass_window(c, np.nan_to_num(out) + tgt)
                ax[0].plot(c, out, label=f"output, s = {s_last:.3g}")
                ax[0].plot(c, tgt, "--", label="target")
                ax[0].set(xlabel=f"x {LENGTH}", ylabel="rho (mass / length)", xlim=lim, title="densities")
                ax[0].legend(fontsize="small")
                ax[1].plot(c, out - tgt, "C3")
                ax[1].axhline(0, color="0.5", lw=0.8)
                ax[1].set(xlabel=f"x {LENGTH}", ylabel="output - target", xlim=lim, title="difference")
            else:
                if out.ndim == 3:
                    h = _step(snaps.centres[2])
                    out, tgt = out.sum(axis=2) * h, tgt.sum(axis=2) * h
                    title += " (x-y marginals)"
                cx, cy = snaps.centres[0], snaps.centres[1]
                fig, ax = _panels(1, 3, size=3.0)
                ax = ax[0]
                both = np.nan_to_num(out) + tgt
                xlim, ylim = mass_window(cx, both.sum(axis=1)), mass_window(cy, both.sum(axis=0))
                vmax = float(max(np.nanmax(out), np.nanmax(tgt))) or 1.0
                for a, im, label in ((ax[0], out, "output"), (ax[1], tgt, "target")):
                    shown = a.imshow(im.T, origin="lower", extent=_extent(cx, cy), vmin=0, vmax=vmax, cmap="magma")
                    a.set(title=label, xlim=xlim, ylim=ylim, xlabel=f"x {LENGTH}", ylabel=f"y {LENGTH}")
                fig.colorbar(shown, ax=ax[:2], shrink=0.85, label="rho (mass / length²)")
                dif = out - tgt
                lim = float(np.nanmax(np.abs(dif))) or 1.0
                shown = ax[2].imshow(dif.T, origin="lower", extent=_extent(cx, cy), vmin=-lim, vmax=lim, cmap="RdBu_r")
                ax[2].set(title="output - target", xlim=xlim, ylim=ylim, xlabel=f"x {LENGTH}")
                fig.colorbar(shown, ax=ax[2], shrink=0.85, label="difference")
        elif "positions" in g and snaps.positions is not None:
            X, w = snaps.positions[p, done - 1], snaps.weights[p]
            T, wt = g["positions"][p], g["weights"][p]
            fig, ax = _panels(1, 1, size=4.2)
            ax = ax[0, 0]
            if X.shape[1] == 1:
                okx, okt = np.isfinite(X[:, 0]) & (w > 0), np.isfinite(T[:, 0]) & (wt > 0)
                ax.hist([X[okx, 0], T[okt, 0]], weights=[w[okx], wt[okt]], bins=40, density=True,
                        histtype="step", label=["output", "target"])
                ax.set(xlabel=f"x {LENGTH}", ylabel="density (1 / length)")
            else:
                size, _ = marker_sizes(w)
                ax.scatter(X[:, 0], X[:, 1], s=size, alpha=0.6, linewidths=0, label="output tokens")
                ax.scatter(T[:, 0], T[:, 1], s=12, marker="x", lw=0.8, label="target tokens")
                ax.set(xlabel=f"x {LENGTH}", ylabel=f"y {LENGTH}", aspect="equal")
            ax.legend(fontsize="small")
        else:
            continue
        fig.suptitle(title)
        figs[p] = fig
    return figs
