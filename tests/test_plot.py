"""Figures from result files: every kind of record gives non-empty PNGs."""

from __future__ import annotations

import numpy as np
import pytest

from gridpde.io.plot import plot_result
from gridpde.io.results import write_result
from gridpde.io.snapshots import Snapshots

np.seterr(all="raise", under="ignore")


def gaussian_grid(cells: tuple[int, ...], done: int) -> Snapshots:
    """Two prompts: Gaussians that drift and widen with depth s."""
    depth = np.linspace(0, 1, 4)
    centres = tuple(np.linspace(-4, 4, 2 * n + 1)[1::2] for n in cells)
    rec = Snapshots.empty(depth, 2, len(cells), cells=cells, centres=centres)
    mesh = np.meshgrid(*centres, indexing="ij")
    for p in range(2):
        for i, s in enumerate(depth[:done]):
            var = 0.5 + s
            shift = (-1) ** p * s
            r2 = sum((x - shift) ** 2 for x in mesh)
            rec.density[p, i] = np.exp(-r2 / (2 * var)) / (2 * np.pi * var) ** (len(cells) / 2)
            rec.mass[p, i], rec.mass_out[p, i] = 1.0, 0.0
            rec.mean[p, i] = shift
            rec.cov[p, i] = var * np.eye(len(cells))
    rec.done = done
    return rec


def particles(dim: int, done: int, tokens: int = 200) -> Snapshots:
    rng = np.random.default_rng(0)
    depth = np.linspace(0, 1, 3)
    rec = Snapshots.empty(depth, 2, dim, tokens=tokens)
    rec.weights[:] = rng.random((2, tokens))
    rec.weights /= rec.weights.sum(axis=1, keepdims=True)
    x0 = rng.normal(size=(2, tokens, dim))
    for i, s in enumerate(depth[:done]):
        rec.positions[:, i] = x0 * (1 + s)
        rec.mass[:, i] = 1.0
        rec.mean[:, i] = np.einsum("pt,ptd->pd", rec.weights, rec.positions[:, i])
        rec.cov[:, i] = (1 + s) ** 2 * np.eye(dim)
    rec.done = done
    return rec


CASES = {
    "grid1d": (lambda: gaussian_grid((64,), 4), "density_p"),
    "grid2d": (lambda: gaussian_grid((32, 24), 4), "density_p"),
    "grid3d": (lambda: gaussian_grid((12, 10, 8), 4), "density_p"),
    "grid2d_partial": (lambda: gaussian_grid((32, 24), 2), "density_p"),
    "grid3d_partial": (lambda: gaussian_grid((12, 10, 8), 1), "density_p"),
    "particles1d": (lambda: particles(1, 3), "tokens_p"),
    "particles2d": (lambda: particles(2, 3), "tokens_p"),
    "particles3d": (lambda: particles(3, 2), "tokens_p"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_plot_writes_pngs(tmp_path, name):
    make, prefix = CASES[name]
    rec = make()
    d = rec.mean.shape[-1]
    path = tmp_path / f"{name}.h5"
    heads = {"Q": np.zeros((1, 1, 1, d)), "K": np.zeros((1, 1, 1, d)),
             "V": np.zeros((1, 1, d, d))}
    write_result(path, rec, case_text="", dim=d, method=rec.method, heads=heads)

    files = plot_result(path)

    expected = {f"{prefix}0.png", f"{prefix}1.png", "moments.png"} | ({"cov_cone.png"} if d == 2 else set())
    assert {f.name for f in files} == expected
    for f in files:
        assert f.parent == tmp_path / f"{name}_figures"
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f.stat().st_size > 5000


def test_plot_out_dir_and_empty_record(tmp_path):
    rec = gaussian_grid((16,), 0)
    write_result(tmp_path / "r.h5", rec, case_text="", dim=1, method="grid", heads={})
    assert plot_result(tmp_path / "r.h5", tmp_path / "figs") == []
    rec.done = 1
    rec.density[:, 0] = 1.0
    write_result(tmp_path / "r.h5", rec, case_text="", dim=1, method="grid", heads={})
    files = plot_result(tmp_path / "r.h5", tmp_path / "figs")
    assert files and all(f.parent == tmp_path / "figs" and f.is_file() for f in files)


def test_head_paths_scale_B_like_the_result_file(tmp_path):
    """With scale_scores the student's B lines carry 1/sqrt(k), as /heads/B and /teacher/B do."""
    import h5py

    from gridpde.heads import Heads
    from gridpde.io.plot import _head_paths

    h = Heads.random(1, 2, 4, 1, 1.0, 0, scale_scores=True)
    with h5py.File(tmp_path / "t.h5", "w") as f:
        f["train/checkpoint_step"] = np.array([0, 1])
        for k, v in h.arrays().items():
            f[f"train/heads/{k}"] = np.stack([v, v])
        f["teacher/B"], f["teacher/V"] = h.B, h.V
        fig = _head_paths(f["train"], True, f["teacher"])
    ax_B = fig.axes[0]
    student = sorted(line.get_ydata()[0] for line in ax_B.lines if line.get_linestyle() == "-")
    teacher = sorted(line.get_ydata()[0] for line in ax_B.lines if line.get_linestyle() == "--")
    np.testing.assert_allclose(student, np.sort(h.B[0].ravel()), rtol=1e-15)
    np.testing.assert_allclose(student, teacher, rtol=1e-15)


def _written(tmp_path, rec, name="r"):
    d = rec.mean.shape[-1]
    path = tmp_path / f"{name}.h5"
    heads = {"Q": np.zeros((1, 1, 1, d)), "K": np.zeros((1, 1, 1, d)), "V": np.zeros((1, 1, d, d))}
    write_result(path, rec, case_text="", dim=d, method=rec.method, heads=heads)
    return path


def test_titles_labels_and_partial_note(tmp_path):
    """Every figure has a title naming the case; every visible axes has x and y labels; a run
    that did not finish says so on every figure, a finished one on none."""
    from gridpde.io.plot import figures
    from gridpde.io.results import read_result

    for rec, status in ((gaussian_grid((32, 24), 2), "interrupted"), (particles(2, 3), "finished")):
        rec.status = status
        res = read_result(_written(tmp_path, rec, status))
        for name, fig in figures(res).items():
            assert fig.get_suptitle().startswith(f"{status}: "), name
            note = fig._supxlabel.get_text() if fig._supxlabel is not None else ""
            assert ("PARTIAL RESULT: status 'interrupted', 2 of 4 snapshots" in note) == (status != "finished"), name
            for ax in fig.axes:
                if ax.get_visible() and ax.get_label() != "<colorbar>" and ax.name != "3d":
                    assert ax.get_xlabel() and (ax.get_ylabel() or ax.get_subplotspec().colspan.start > 0), (name, ax.get_title())


def test_token_panels_share_one_scale(tmp_path):
    from gridpde.io.plot import figures
    from gridpde.io.results import read_result

    fig = figures(read_result(_written(tmp_path, particles(2, 3))))["tokens_p0"]
    limits = {(ax.get_xlim(), ax.get_ylim()) for ax in fig.axes}
    assert len(limits) == 1


@pytest.mark.parametrize("fmt", ["pdf", "svg"])
def test_vector_formats(tmp_path, fmt):
    files = plot_result(_written(tmp_path, gaussian_grid((16, 12), 4)), tmp_path / "f", fmt=fmt)
    assert files and all(f.suffix == f".{fmt}" and f.stat().st_size > 5000 for f in files)
    head = files[0].read_bytes()[:100]
    assert head.startswith(b"%PDF") if fmt == "pdf" else b"<svg" in files[0].read_bytes()[:2000]


@pytest.mark.parametrize("make", [lambda: gaussian_grid((32, 24), 4), lambda: gaussian_grid((64,), 3),
                                  lambda: particles(2, 3), lambda: gaussian_grid((12, 10, 8), 2)])
def test_movie(tmp_path, make):
    from PIL import Image

    from gridpde.io.movie import write_movies

    rec = make()
    (movie,) = write_movies(_written(tmp_path, rec), tmp_path / "m")
    if movie.suffix == ".gif":
        with Image.open(movie) as im:
            assert im.n_frames >= rec.done  # one frame per snapshot, the last held


def test_cli_plot_format_and_movie(tmp_path, capsys):
    from gridpde.cli import main

    path = _written(tmp_path, gaussian_grid((16, 12), 4))
    assert main(["plot", str(path), "-o", str(tmp_path / "o"), "--format", "svg", "--movie"]) == 0
    out = capsys.readouterr().out.split()
    assert any(f.endswith("density_p0.svg") for f in out) and any("movie." in f for f in out)
    with pytest.raises(SystemExit) as exc:
        main(["plot", str(path), "--format", "jpg"])
    assert exc.value.code == 2


def test_rescaled_tokens_undo_the_value_flow():
    """z = e^{-sV} x: tokens moved by dx/ds = V x alone come back to their start."""
    from scipy.linalg import expm

    from gridpde.io.figures_lit import rescale_tokens

    V = np.array([[[[0.5, 1.0], [-0.3, 0.2]]], [[[1.0, 0.0], [0.0, -0.5]]]])  # 2 layers, 1 head
    x0 = np.random.default_rng(1).normal(size=(7, 2))
    depth = np.array([0.0, 0.3, 0.5, 0.8, 1.0])
    phi = [np.eye(2) if s == 0 else expm(s * V[0, 0]) if s <= 0.5 else
           expm((s - 0.5) * V[1, 0]) @ expm(0.5 * V[0, 0]) for s in depth]
    pos = np.stack([x0 @ p.T for p in phi])
    np.testing.assert_allclose(rescale_tokens(pos, depth, V), np.broadcast_to(x0, pos.shape), atol=1e-13)
