"""Animations of a result file (``gridpde plot RESULT --movie``).

One frame per snapshot depth: the density (2-D: an image with the contours of rho(0);
1-D: the curve over rho(0); 3-D: the x-y marginal) or the tokens (coloured by their
position at s = 0, with their paths so far), on one scale for the whole movie. A training
result also gets a movie of its heads, one frame per checkpoint: every head's (B, V) in
the plane of the first two principal components of all heads of its layer, moving against
the teacher's heads, beside the risk. Written by matplotlib's animation writers: MP4 with
ffmpeg where it exists, else a GIF (PillowWriter; pillow ships with matplotlib).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from matplotlib import animation
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from gridpde.heads import score_matrices
from gridpde.io import figures_lit as lit
from gridpde.io import plot as pl
from gridpde.io.results import read_result


def _writer(fps: float) -> tuple[animation.AbstractMovieWriter, str]:
    if animation.writers.is_available("ffmpeg"):
        return animation.FFMpegWriter(fps=fps), "mp4"
    return animation.PillowWriter(fps=fps), "gif"


def _save(fig: Figure, frames: int, update, out: Path, stem: str, dpi: int) -> Path:
    """Draw ``update(i)`` for each frame i and write the movie ``out/stem.{mp4|gif}``."""
    FigureCanvasAgg(fig)
    fps = float(np.clip(frames / 5.0, 2.0, 12.0))  # about 5 s, at least 2 frames per second
    writer, ext = _writer(fps)
    target = out / f"{stem}.{ext}"
    with writer.saving(fig, str(target), dpi):
        for i in range(frames):
            update(i)
            writer.grab_frame()
        for _ in range(int(fps)):  # hold the last frame for a second
            writer.grab_frame()
    return target


def write_movies(path: str | Path, out_dir: str | Path | None = None, *, rescaled: bool = False,
                 dpi: int = 80) -> list[Path]:
    """Write the animations of the result file ``path``; return their paths (none if
    fewer than two snapshots or checkpoints are filled)."""
    path = Path(path)
    res = read_result(path)
    out = Path(out_dir) if out_dir is not None else path.with_name(f"{path.stem}_figures")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if res.snaps.done >= 2:
        fig, frames, update = (_density_movie if res.snaps.density is not None else _token_movie)(res, rescaled)
        written.append(_save(fig, frames, update, out, "movie", dpi))
    with h5py.File(path, "r") as f:
        if "train/checkpoint_step" in f and len(f["train/checkpoint_step"]) >= 2:
            fig, frames, update = _heads_movie(f, path.stem)
            written.append(_save(fig, frames, update, out, "movie_heads", dpi))
    return written


def _note(fig: Figure, res) -> None:
    note = pl.partial_note(res)
    if note:
        fig.supxlabel(note, color="C3", fontweight="bold", fontsize="small")


def _density_movie(res, rescaled: bool):
    snaps, done = res.snaps, res.snaps.done
    P, depth = snaps.mass.shape[0], snaps.depth[:done]
    rho = snaps.density[:, :done]
    d = rho.ndim - 2
    if d == 3:
        rho = rho.sum(axis=4) * pl._step(snaps.centres[2])
    cols = min(P, 4)
    fig = Figure(figsize=(3.6 * cols + 1.0, 3.9), layout="constrained")
    axes = np.ravel(fig.subplots(1, cols, squeeze=False))
    artists = []
    cx = snaps.centres[0]
    for p, ax in enumerate(axes):
        r = rho[p]
        if d == 1:
            lim = pl.mass_window(cx, np.nansum(r, axis=0))
            ax.plot(cx, r[0], color="0.6", lw=1, label="s = 0")
            (line,) = ax.plot(cx, r[0], "C0", lw=1.6, label="s")
            ax.set(xlim=lim, ylim=(0, 1.05 * float(np.nanmax(r))), xlabel=f"x {pl.LENGTH}",
                   ylabel="rho (mass / length)")
            ax.legend(fontsize="small")
            artists.append(("line", line))
        else:
            cy = snaps.centres[1]
            xlim = pl.mass_window(cx, np.nansum(r, axis=(0, 2)))
            ylim = pl.mass_window(cy, np.nansum(r, axis=(0, 1)))
            im = ax.imshow(r[0].T, origin="lower", extent=pl._extent(cx, cy), vmin=0,
                           vmax=float(np.nanmax(r)) or 1.0, cmap="magma")
            if np.nanmax(r[0]) > 0:
                X, Y = np.meshgrid(cx, cy, indexing="ij")
                ax.contour(X, Y, r[0], levels=np.array([0.15, 0.5, 0.85]) * float(np.nanmax(r[0])),
                           colors="w", linewidths=0.5, alpha=0.7)
            ax.set(xlim=xlim, ylim=ylim, xlabel=f"x {pl.LENGTH}", ylabel=f"y {pl.LENGTH}")
            artists.append(("image", im))
        ax.set_title(f"prompt {p}")
    if d >= 2:
        fig.colorbar(artists[-1][1], ax=axes, shrink=0.85,
                     label="rho (mass / length²)" + (", x-y marginal" if d == 3 else ""))
    _note(fig, res)
    head = f"{res.path.stem}: density through depth" + ("" if d == 1 else "; contours: rho(0)")

    def update(i: int) -> None:
        for p, (kind, art) in enumerate(artists):
            if kind == "line":
                art.set_ydata(rho[p, i])
            else:
                art.set_data(rho[p, i].T)
        fig.suptitle(f"{head}\ns = {depth[i]:.3f}")

    return fig, done, update


def _token_movie(res, rescaled: bool):
    snaps, done = res.snaps, res.snaps.done
    depth = snaps.depth[:done]
    P = snaps.mass.shape[0]
    cols = min(P, 4)
    fig = Figure(figsize=(3.8 * cols + 0.6, 4.2), layout="constrained")
    axes = np.ravel(fig.subplots(1, cols, squeeze=False))
    label = "rescaled tokens e^{-sV} x" if rescaled else "tokens"
    state = []
    for p, ax in enumerate(axes):
        pos, w = snaps.positions[p, :done], snaps.weights[p]
        keep = np.isfinite(pos).all(axis=2).all(axis=0) & np.isfinite(w) & (w > 0)
        pos, w = pos[:, keep], w[keep]
        if rescaled:
            pos = lit.rescale_tokens(pos, depth, res.heads["V"])
        if pos.shape[-1] == 1:  # 1-D: tokens against their index-free height 0, paths in s
            pos = np.concatenate([pos, np.broadcast_to(depth[:, None, None], pos.shape)], axis=2)
        colours = pl.token_colours(pos[0], fig)
        size, note = pl.marker_sizes(w)
        lims = pl.token_window(pos[..., 0], w), pl.token_window(pos[..., 1], w)
        trail = pos.shape[1] <= 300
        lines = [ax.plot([], [], "-", color=c, lw=0.5, alpha=0.5)[0] for c in colours] if trail else []
        dots = ax.scatter(pos[0, :, 0], pos[0, :, 1], s=size, c=colours, linewidths=0, alpha=0.85)
        unit = "" if rescaled else f" {pl.LENGTH}"
        ax.set(xlim=lims[0], ylim=lims[1], xlabel=f"x{unit}",
               ylabel="depth s" if snaps.positions.shape[-1] == 1 else f"y{unit}", title=f"prompt {p}")
        if snaps.positions.shape[-1] > 1:
            ax.set_aspect(pl.equal_or_auto(*lims))
        state.append((pos, dots, lines))
    _note(fig, res)
    head = f"{res.path.stem}: {label} through depth (colour: angle at s = 0; {note})"

    def update(i: int) -> None:
        for pos, dots, lines in state:
            dots.set_offsets(pos[i, :, :2])
            for t, line in enumerate(lines):
                line.set_data(pos[: i + 1, t, 0], pos[: i + 1, t, 1])
        fig.suptitle(f"{head}\ns = {depth[i]:.3f}", fontsize="medium")

    return fig, done, update


def _heads_movie(f: h5py.File, name: str):
    """Heads in the (B, V) space projected on its first two principal components per layer."""
    t = f["train"]
    steps = t["checkpoint_step"][()]
    Q, K, V = (t["heads"][k][()] for k in "QKV")
    scaled = bool(f.attrs.get("scale_scores", False))
    B = score_matrices(Q, K, scaled)
    C, L, M = V.shape[:3]
    student = np.concatenate([B.reshape(C, L, M, -1), V.reshape(C, L, M, -1)], axis=-1)  # (C, L, M, 2d²)
    teacher = None
    if "teacher" in f and f["teacher/V"].shape == V.shape[1:]:  # a teacher of another shape is not drawn
        teacher = np.concatenate([f["teacher/B"][()].reshape(L, M, -1), f["teacher/V"][()].reshape(L, M, -1)], -1)
    fig = Figure(figsize=(3.8 * L + 3.8, 4.2), layout="constrained")
    axes = np.ravel(fig.subplots(1, L + 1, squeeze=False))
    proj, dots, trails = [], [], []
    for layer in range(L):
        pts = student[:, layer].reshape(-1, student.shape[-1])
        allp = pts if teacher is None else np.concatenate([pts, teacher[layer]])
        centre = allp.mean(axis=0)
        _, _, vt = np.linalg.svd(allp - centre, full_matrices=False)
        basis = vt[:2].T if vt.shape[0] >= 2 else np.eye(allp.shape[1], 2)
        xy = (student[:, layer] - centre) @ basis  # (C, M, 2)
        ax = axes[layer]
        if teacher is not None:
            txy = (teacher[layer] - centre) @ basis
            ax.scatter(txy[:, 0], txy[:, 1], marker="*", s=160, c="k", label="teacher heads", zorder=3)
        trails.append([ax.plot([], [], "-", color=f"C{j % 10}", lw=1)[0] for j in range(M)])
        dots.append(ax.scatter(xy[0, :, 0], xy[0, :, 1], s=50, c=[f"C{j % 10}" for j in range(M)],
                               edgecolor="k", zorder=4))
        span = np.concatenate([xy.reshape(-1, 2)] + ([txy] if teacher is not None else []))
        lo, hi = span.min(axis=0), span.max(axis=0)
        pad = 0.12 * np.maximum(hi - lo, 1e-9)
        ax.set(xlim=(lo[0] - pad[0], hi[0] + pad[0]), ylim=(lo[1] - pad[1], hi[1] + pad[1]),
               title=f"layer {layer}: heads (B, V), first two PCs", xlabel="PC 1 (head units)",
               ylabel="PC 2 (head units)")
        ax.legend(handles=[*([ax.collections[0]] if teacher is not None else []),
                           *[ax.plot([], [], "o", color=f"C{j % 10}", label=f"head {j}")[0] for j in range(M)]],
                  fontsize="x-small")
        proj.append(xy)
    ax = axes[-1]
    ax.semilogy(t["step"][()], t["risk"][()], "k-", lw=1)
    risk_at = np.interp(steps, t["step"][()], t["risk"][()])
    (marker,) = ax.semilogy([steps[0]], [risk_at[0]], "o", color="C3", ms=8)
    ax.set(title="risk", xlabel="training step", ylabel="risk R")

    def update(i: int) -> None:
        for layer in range(L):
            xy = proj[layer]
            dots[layer].set_offsets(xy[i])
            for j, line in enumerate(trails[layer]):
                line.set_data(xy[: i + 1, j, 0], xy[: i + 1, j, 1])
        marker.set_data([steps[i]], [risk_at[i]])
        fig.suptitle(f"{name}: heads moving against the teacher (stars); checkpoint step {steps[i]}")

    return fig, len(steps), update
