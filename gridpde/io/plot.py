"""PNG figures of a result file: densities or tokens per prompt, and moments.

Figures are drawn on :class:`matplotlib.figure.Figure` objects (Agg canvas,
no pyplot state), so nothing stays open and no display is needed. Only the
first ``depth_done`` snapshots are drawn; the rest of the record is NaN.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from matplotlib.figure import Figure

from gridpde.heads import score_matrices
from gridpde.io.results import AXES, read_result

_COLS = 5  # panels per row for one-panel-per-depth figures


def plot_result(path: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write PNG figures of the result file ``path``; return their paths.

    Args:
        path: a result file written by :func:`gridpde.io.results.write_result`.
        out_dir: where to write; default ``<stem>_figures/`` next to ``path``.
    """
    path = Path(path)
    res = read_result(path)
    snaps, done = res.snaps, res.snaps.done
    out = Path(out_dir) if out_dir is not None else path.with_name(f"{path.stem}_figures")
    out.mkdir(parents=True, exist_ok=True)
    if done == 0:
        return []
    depth = snaps.depth[:done]
    figures: dict[str, Figure] = {}
    for p in range(snaps.mass.shape[0]):
        if snaps.density is not None:
            figures[f"density_p{p}"] = _density(snaps.density[p, :done], snaps.centres, depth)
        else:
            figures[f"tokens_p{p}"] = _tokens(snaps.positions[p, :done], snaps.weights[p], depth)
    figures["moments"] = _moments(snaps.mean[:, :done], snaps.cov[:, :done], depth)
    with h5py.File(path, "r") as f:
        if "train" in f and len(f["train/step"]) > 0:
            figures["training"] = _training(f["train"])
            scaled = bool(f.attrs.get("scale_scores", False))
            figures["heads"] = _head_paths(f["train"], scaled, f.get("teacher"))
        if "targets" in f:
            figures |= _versus_targets(f["targets"], snaps, done)
    written = []
    for name, fig in figures.items():
        fig.savefig(out / f"{name}.png", dpi=100)
        written.append(out / f"{name}.png")
    return written


def _panels(n: int, *, size: float = 3.0, cols: int = _COLS) -> tuple[Figure, list]:
    """A figure with ``n`` axes in rows of at most ``cols``; unused axes hidden."""
    cols = min(n, cols)
    rows = -(-n // cols)
    fig = Figure(figsize=(size * cols + 1, size * rows + 0.3), layout="constrained")
    axes = list(np.ravel(fig.subplots(rows, cols, squeeze=False)))
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _step(c: np.ndarray) -> float:
    return float(c[1] - c[0]) if len(c) > 1 else 1.0


def _extent(cx: np.ndarray, cy: np.ndarray) -> list[float]:
    hx, hy = _step(cx) / 2, _step(cy) / 2
    return [cx[0] - hx, cx[-1] + hx, cy[0] - hy, cy[-1] + hy]


def _images(fig: Figure, axes: list, images: list[np.ndarray], coords: list, titles: list[str]):
    """2-D densities rho(a, b) on a common colour scale, one per axes."""
    finite = [im[np.isfinite(im)] for im in images]
    vmax = max((float(v.max()) for v in finite if v.size), default=1.0) or 1.0
    for ax, im, (ca, cb, la, lb), title in zip(axes, images, coords, titles, strict=True):
        shown = ax.imshow(
            im.T, origin="lower", extent=_extent(ca, cb), aspect="equal", vmin=0, vmax=vmax
        )
        ax.set(title=title, xlabel=la, ylabel=lb)
    fig.colorbar(shown, ax=axes, shrink=0.8, label="density")


def _density(rho: np.ndarray, centres: tuple[np.ndarray, ...], depth: np.ndarray) -> Figure:
    """rho: (S, *cells) at the depths ``depth``."""
    d = rho.ndim - 1
    if d == 1:
        fig = Figure(figsize=(6, 4), layout="constrained")
        ax = fig.subplots()
        for r, s in zip(rho, depth, strict=True):
            ax.plot(centres[0], r, label=f"s={s:.3g}")
        ax.set(xlabel="x", ylabel="density")
        ax.legend()
        return fig
    if d == 2:
        fig, axes = _panels(len(depth))
        coords = [(centres[0], centres[1], "x", "y")] * len(depth)
        _images(fig, axes, list(rho), coords, [f"s={s:.3g}" for s in depth])
        return fig
    # 3-D: marginals over each axis (sum x dx) at the first and the last depth
    pairs = [(a, b) for a in range(3) for b in range(a + 1, 3)]
    picks = sorted({0, len(depth) - 1})
    fig, axes = _panels(3 * len(picks), cols=3)
    images, coords, titles = [], [], []
    for i in picks:
        for a, b in pairs:
            (c,) = set(range(3)) - {a, b}
            images.append(rho[i].sum(axis=c) * _step(centres[c]))
            coords.append((centres[a], centres[b], AXES[a], AXES[b]))
            titles.append(f"s={depth[i]:.3g}, {AXES[a]}{AXES[b]}-marginal")
    _images(fig, axes, images, coords, titles)
    return fig


def _tokens(pos: np.ndarray, w: np.ndarray, depth: np.ndarray) -> Figure:
    """pos: (S, T, d) token positions, w: (T,) weights; one panel per depth."""
    fig, axes = _panels(len(depth))
    d = pos.shape[-1]
    wmax = float(np.nanmax(w)) if np.isfinite(w).any() else 0.0
    size = 20 * w / wmax if wmax > 0 else np.full_like(w, 4.0)
    for ax, x, s in zip(axes, pos, depth, strict=True):
        ok = np.isfinite(x).all(axis=1) & np.isfinite(w)
        if d == 1:
            ax.hist(x[ok, 0], bins=50, weights=w[ok], density=True)
            ax.set(xlabel="x", ylabel="density")
        else:
            ax.scatter(x[ok, 0], x[ok, 1], s=size[ok], alpha=0.6, linewidths=0)
            ax.set(xlabel="x", ylabel="y", aspect="equal")
        ax.set_title(f"s={s:.3g}")
    return fig


def _moments(mean: np.ndarray, cov: np.ndarray, depth: np.ndarray) -> Figure:
    """mean: (P, S, d), cov: (P, S, d, d); one panel per component, a line per prompt."""
    d = mean.shape[-1]
    series = [(f"mean {AXES[a]}", mean[..., a]) for a in range(d)]
    series += [
        (f"cov {AXES[a]}{AXES[b]}", cov[..., a, b]) for a in range(d) for b in range(a, d)
    ]
    fig, axes = _panels(len(series), cols=d)
    for ax, (title, values) in zip(axes, series, strict=True):
        for p, v in enumerate(values):
            ax.plot(depth, v, marker="o", ms=3, label=f"prompt {p}")
        ax.set(title=title, xlabel="depth s")
    axes[0].legend(fontsize="small")
    return fig


def _training(t: h5py.Group) -> Figure:
    """Risk (log), gradient norm (log) and W_c against the training step."""
    fig, axes = _panels(3, size=3.5, cols=3)
    step = t["step"][()]
    for ax, name, label, log in zip(
        axes,
        ("risk", "grad_norm", "w_c"),
        ("risk (mean over prompts)", "gradient norm", "W_c from the initial heads"),
        (True, True, False),
    ):
        ax.plot(step, t[name][()], "-")
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(label)
    return fig


def _head_paths(t: h5py.Group, scale_scores: bool, teacher: h5py.Group | None = None) -> Figure:
    """Entries of B = K^T Q and V of every head against the checkpoint step, one row per layer.

    With ``teacher`` (/teacher), its entries are dashed grey lines: heads are exchangeable inside
    a layer, so a student head may end on any teacher head's line, or on none.
    """
    steps = t["checkpoint_step"][()]
    Q, K, V = (t["heads"][k][()] for k in "QKV")
    B = score_matrices(Q, K, scale_scores)  # as /heads/B and /teacher/B: with 1/sqrt(k) if scaled
    L, M, d = V.shape[1], V.shape[2], V.shape[-1]
    fig, axes = _panels(2 * L, size=3.5, cols=2)
    for layer in range(L):
        for col, (name, arr) in enumerate((("B", B), ("V", V))):
            ax = axes[2 * layer + col]
            if teacher is not None:
                for value in np.ravel(teacher[name][layer]):
                    ax.axhline(value, color="0.6", ls="--", lw=1)
            for j in range(M):
                for a in range(d):
                    for b in range(d):
                        ax.plot(steps, arr[:, layer, j, a, b], f"C{j}-", lw=1)
            ax.set_title(f"layer {layer}: entries of {name}")
            ax.set_xlabel("step")
    fig.suptitle("colour = head" + (", dashed = teacher" if teacher is not None else ""))
    return fig


def _versus_targets(g: h5py.Group, snaps, done: int) -> dict[str, Figure]:
    """The outputs at the last filled depth next to their targets."""
    figs = {}
    for p in range(snaps.mass.shape[0]):
        if "density" in g and snaps.density is not None:
            out, tgt = snaps.density[p, done - 1], g["density"][p]
            if out.ndim == 1:
                fig, (ax,) = _panels(1, size=4.0, cols=1)
                ax.plot(snaps.centres[0], out, label=f"output, s={snaps.depth[done - 1]:g}")
                ax.plot(snaps.centres[0], tgt, "--", label="target")
                ax.legend()
            else:
                img = [out, tgt] if out.ndim == 2 else [out.sum(axis=2), tgt.sum(axis=2)]
                fig, axes = _panels(2, cols=2)
                coords = (snaps.centres[0], snaps.centres[1], "x", "y")
                _images(fig, axes, img, [coords, coords], ["output", "target"])
        elif "positions" in g and snaps.positions is not None:
            fig, (ax,) = _panels(1, size=4.0, cols=1)
            X, w = snaps.positions[p, done - 1], snaps.weights[p]
            T, wt = g["positions"][p], g["weights"][p]
            if X.shape[1] == 1:
                ax.hist([X[:, 0], T[:, 0]], weights=[w, wt], bins=40, label=["output", "target"])
            else:
                ax.scatter(X[:, 0], X[:, 1], s=3, label="output")
                ax.scatter(T[:, 0], T[:, 1], s=3, marker="x", label="target")
            ax.legend()
        else:
            continue
        figs[f"target_p{p}"] = fig
    return figs
