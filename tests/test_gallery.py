"""The gallery (cases/gallery/): every case runs at low resolution and shows its picture.

Resolution is lowered through the case objects (dataclasses.replace on the loaded case:
fewer tokens or depth substeps, fewer grid cells, fewer training steps), never by editing
the files. Each test checks the number the picture is about (clusters, the covariance's
fate, a falling risk) and that the figures and the movie are written.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from gridpde.casefile import load_case
from gridpde.driver import run_case
from gridpde.io.figures_lit import exact_gaussian, rescale_tokens
from gridpde.io.movie import write_movies
from gridpde.io.plot import plot_result
from gridpde.io.results import read_result
from gridpde.spec import GridSpec

np.seterr(all="raise", under="ignore")

GALLERY = Path(__file__).resolve().parents[1] / "cases" / "gallery"


def low_resolution(case, *, substeps: int | None = None, tokens: int | None = None,
                   cells: int | None = None, steps: int | None = None):
    """The case with its resolution lowered (each given field replaced)."""
    solver = dataclasses.replace(case.solver, **{k: v for k, v in
                                                 (("substeps", substeps), ("tokens", tokens)) if v})
    changes = {"solver": solver}
    if cells:
        changes["grid"] = GridSpec(case.grid.lower, case.grid.upper, (cells,) * case.dim)
    if steps:
        changes["train"] = dataclasses.replace(case.train, steps=steps, inner_steps=3)
    return dataclasses.replace(case, **changes)


def run(tmp_path, name, **low) -> Path:
    case = low_resolution(load_case(GALLERY / f"{name}.toml"), **low)
    out = tmp_path / f"{name}.h5"
    with np.errstate(all="ignore"):  # the driver's own handling of under/overflow in tails
        run_case(case, out, report=lambda line: None)
    assert read_result(out).attrs["status"] == "finished"
    return out


def clusters(values: np.ndarray, tol: float) -> int:
    """Number of groups of the points ``values`` (n, k) joined by gaps below ``tol``
    (single linkage)."""
    from scipy.cluster.hierarchy import fcluster, linkage

    return int(fcluster(linkage(values, "single"), tol, criterion="distance").max())


def test_readme_names_every_case():
    readme = (GALLERY / "README.md").read_text()
    for f in GALLERY.glob("*.toml"):
        assert f"`{f.name}`" in readme


@pytest.mark.parametrize(("name", "statistic", "most"), [
    ("glpr_polytope", lambda z, V: z, 4),                                 # vertices of a polytope
    ("glpr_hyperplanes", lambda z, V: z @ _leading_left(V)[:, None], 3),  # <phi, z>: parallel lines
    ("glpr_lines", lambda z, V: z[:, :1], 3),                             # x: vertical lines
])
def test_glpr_rescaled_tokens_cluster(tmp_path, name, statistic, most):
    out = run(tmp_path, name, substeps=100)
    res = read_result(out)
    V = res.heads["V"]
    z = rescale_tokens(res.snaps.positions[0], res.snaps.depth, V)
    first, last = statistic(z[0], V[0, 0]), statistic(z[-1], V[0, 0])
    spread = np.ptp(first, axis=0).max()
    assert clusters(first, 0.02 * spread) > 10  # 40 random tokens: no clusters at s = 0
    assert clusters(last, 0.02 * spread) <= most
    files = plot_result(out, tmp_path / "fig", rescaled=True)
    assert {f.name for f in files} >= {"tokens_p0.png", "moments.png", "cov_cone.png"}
    (movie,) = write_movies(out, tmp_path / "fig", rescaled=True)
    assert movie.stat().st_size > 10_000


def _leading_left(V: np.ndarray) -> np.ndarray:
    w, vecs = np.linalg.eig(V.T)
    return np.real(vecs[:, np.argmax(np.real(w))])


@pytest.mark.parametrize("name", ["cacp_zero", "cacp_line", "cacp_blowup"])
def test_cacp_covariances_in_the_cone(tmp_path, name):
    out = run(tmp_path, name, tokens=400, substeps=60)
    res = read_result(out)
    S = res.snaps.cov
    exact = exact_gaussian(res, res.snaps.depth)
    for p in range(S.shape[0]):  # the tokens' covariance follows the exact moment ODE ...
        Se = exact[p][2]
        # ... while S < 1: beyond, the tilted means of the outer tokens (at 8 sd) leave the
        # tokens' hull, and finitely many tokens are no longer Gaussian (cacp_blowup.toml)
        ok = np.linalg.eigvalsh(Se)[:, 1] < 0.9
        np.testing.assert_allclose(S[p, ok], Se[ok], rtol=2e-3, atol=2e-3 * np.abs(Se[ok]).max())
    lam0, lam1 = np.linalg.eigvalsh(S[:, 0]), np.linalg.eigvalsh(S[:, -1])
    grow = lam1.sum(axis=1) / lam0.sum(axis=1)
    if name == "cacp_zero":
        assert np.all(grow < 0.15)
    elif name == "cacp_line":
        assert np.all(lam1[:, 0] / lam1[:, 1] < 0.15) and np.all(lam1[:, 1] > 0.1)
    else:
        exact_grow = [np.trace(e[2][-1]) / np.trace(e[2][0]) for e in exact]
        assert max(exact_grow) > 8 and grow.max() > 4
    files = plot_result(out, tmp_path / "fig", fmt="svg")
    assert (tmp_path / "fig" / "cov_cone.svg") in files


def test_teacher_student_training_pictures(tmp_path):
    from gridpde.ntk import trajectory as ntk
    from gridpde.io.results import add_datasets

    case = low_resolution(load_case(GALLERY / "teacher_student.toml"), cells=16, steps=2)
    out = tmp_path / "ts.h5"
    with np.errstate(all="ignore"):
        run_case(case, out, report=lambda line: None)
        add_datasets(out, ntk.trajectory(case, case.solver.method, out))
    import h5py

    with h5py.File(out) as f:
        risk = f["train/risk"][()]
        assert risk[-1] < risk[0]
        assert f["ntk/trajectory/tangent_rel_min"].shape == (len(f["train/checkpoint_step"]), 2)
    names = {f.name for f in plot_result(out, tmp_path / "fig")}
    assert {"training.png", "heads.png", "ntk_trajectory.png", "target_p0.png", "target_p1.png"} <= names
    movies = {f.name for f in write_movies(out, tmp_path / "fig")}
    assert movies == {"movie.gif", "movie_heads.gif"} or movies == {"movie.mp4", "movie_heads.mp4"}
