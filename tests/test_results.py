"""Result files: round trip, labelled dims for xarray, partial records, atomic writes."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import xarray as xr

import gridpde
from gridpde.io import results
from gridpde.errors import CaseError
from gridpde.io.results import describe, read_result, write_result
from gridpde.io.snapshots import Snapshots

np.seterr(all="raise", under="ignore")

L, M, K = 2, 3, 2


def heads(d: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "Q": rng.normal(size=(L, M, K, d)),
        "K": rng.normal(size=(L, M, K, d)),
        "V": rng.normal(size=(L, M, d, d)),
        "B": rng.normal(size=(L, M, d, d)),
    }


def fill(rec: Snapshots, done: int, rng: np.random.Generator) -> Snapshots:
    """Fill the first ``done`` depths with random numbers, as a run would."""
    for name in ("mass", "mass_out", "mean", "cov", "density", "positions"):
        a = getattr(rec, name)
        if a is not None:
            a[:, :done] = rng.random(a[:, :done].shape)
    rec.steps[:, :done] = np.arange(done) * 7
    if rec.weights is not None:
        rec.weights[:] = rng.random(rec.weights.shape)
    rec.done = done
    rec.timings = {"forward": 1.25, "write": 0.5}
    return rec


def grid_record(cells: tuple[int, ...], done: int, rng, prompts: int = 2) -> Snapshots:
    centres = tuple(np.linspace(-1, 1, 2 * n + 1)[1::2] for n in cells)
    rec = Snapshots.empty(np.linspace(0, 1, 4), prompts, len(cells), cells=cells, centres=centres)
    return fill(rec, done, rng)


def particle_record(dim: int, done: int, rng, tokens: int = 50) -> Snapshots:
    rec = Snapshots.empty(np.linspace(0, 1, 3), 2, dim, tokens=tokens)
    return fill(rec, done, rng)


def write(path, rec: Snapshots, rng, **attrs) -> dict[str, np.ndarray]:
    d = rec.mean.shape[-1]
    h = heads(d, rng)
    rec.status, rec.message = "finished", "all depths done"
    write_result(path, rec, case_text=f"dim = {d}\n", dim=d, method=rec.method, heads=h,
                 attrs=attrs)
    return h


def assert_same(a: Snapshots, b: Snapshots) -> None:
    for name in ("depth", "mass", "mass_out", "mean", "cov", "density", "positions", "weights",
                 "steps"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            np.testing.assert_array_equal(x, y, err_msg=name)
    if a.centres is not None:
        for x, y in zip(a.centres, b.centres, strict=True):
            np.testing.assert_array_equal(x, y)
    assert (a.done, a.status, a.message, a.timings) == (b.done, b.status, b.message, b.timings)


@pytest.mark.parametrize("make", [
    lambda rng: grid_record((16,), 4, rng),
    lambda rng: grid_record((8, 6), 4, rng),
    lambda rng: grid_record((4, 5, 3), 4, rng),
    lambda rng: particle_record(2, 3, rng),
], ids=["grid1d", "grid2d", "grid3d", "particles2d"])
def test_round_trip(tmp_path, make):
    rng = np.random.default_rng(0)
    rec = make(rng)
    path = tmp_path / "sub" / "dir" / "out.h5"
    h = write(path, rec, rng, cfl=0.4, scheme="muscl", plot=True, skipped=None)
    res = read_result(path)
    assert_same(rec, res.snaps)
    for k, v in h.items():
        np.testing.assert_array_equal(res.heads[k], v)
    assert res.dim == rec.mean.shape[-1]
    assert res.method == rec.method
    assert res.case_text.startswith("dim =")
    assert res.attrs["gridpde_version"] == gridpde.__version__
    assert res.attrs["schema_version"] == gridpde.SCHEMA_VERSION
    assert res.attrs["cfl"] == 0.4 and res.attrs["scheme"] == "muscl" and res.attrs["plot"] == 1
    assert "skipped" not in res.attrs
    assert list(path.parent.iterdir()) == [path]  # no temporary left behind


def test_xarray_dims_grid2d(tmp_path):
    rng = np.random.default_rng(1)
    rec = grid_record((8, 6), 4, rng)
    write(tmp_path / "g.h5", rec, rng)
    with xr.open_dataset(tmp_path / "g.h5", engine="h5netcdf") as ds:
        assert ds["density"].dims == ("prompt", "depth", "x", "y")
        assert ds["mass"].dims == ds["mass_out"].dims == ds["steps"].dims == ("prompt", "depth")
        assert ds["mean"].dims == ("prompt", "depth", "dim")
        assert ds["cov"].dims == ("prompt", "depth", "dim", "dim2")
        assert set(ds.coords) == {"depth", "x", "y", "prompt", "dim", "dim2"}  # every axis has coordinates
        np.testing.assert_array_equal(ds["prompt"].values, np.arange(rec.mass.shape[0]))
        np.testing.assert_array_equal(ds["x"].values, rec.centres[0])
        assert ds["density"].attrs["units"] == "mass / length^dim" and "rho" in ds["density"].attrs["long_name"]
        assert ds["x"].attrs["units"] == "length" and ds["depth"].attrs["long_name"]
        np.testing.assert_array_equal(ds["density"].values, rec.density)
        assert ds.attrs["method"] == "grid" and ds.attrs["depth_done"] == 4
        assert ds.attrs["time_forward"] == 1.25
    with xr.open_dataset(tmp_path / "g.h5", engine="h5netcdf", group="heads") as hs:
        assert hs["Q"].dims == hs["K"].dims == ("layer", "head", "head_dim", "dim")
        assert hs["V"].dims == hs["B"].dims == ("layer", "head", "dim", "dim2")
        assert hs.sizes == {"layer": L, "head": M, "head_dim": K, "dim": 2, "dim2": 2}


def test_xarray_dims_grid1d_3d_and_particles(tmp_path):
    rng = np.random.default_rng(2)
    cases = {
        "g1.h5": (grid_record((16,), 4, rng), {"density": ("prompt", "depth", "x")}),
        "g3.h5": (grid_record((4, 5, 3), 4, rng), {"density": ("prompt", "depth", "x", "y", "z")}),
        "p.h5": (particle_record(3, 3, rng), {
            "positions": ("prompt", "depth", "token", "dim"),
            "weights": ("prompt", "token"),
        }),
    }
    for name, (rec, dims) in cases.items():
        write(tmp_path / name, rec, rng)
        with xr.open_dataset(tmp_path / name, engine="h5netcdf") as ds:
            for var, expected in dims.items():
                assert ds[var].dims == expected, (name, var)
            assert ("density" in ds) == (rec.method == "grid")


def test_partial_record(tmp_path):
    rng = np.random.default_rng(3)
    rec = grid_record((8, 6), 1, rng)
    rec.status = "nan"
    path = tmp_path / "partial.h5"
    write_result(path, rec, case_text="", dim=2, method="grid", heads=heads(2, rng))
    res = read_result(path)
    assert_same(rec, res.snaps)
    assert res.snaps.done == 1
    assert np.isfinite(res.snaps.density[:, 0]).all()
    assert np.isnan(res.snaps.density[:, 1:]).all()
    text = describe(path)
    assert "status: nan" in text and "1 of 4" in text


def test_large_arrays_compressed(tmp_path):
    rng = np.random.default_rng(4)
    rec = grid_record((64, 64), 4, rng, prompts=9)  # 9 * 4 * 64 * 64 * 8 B > 1 MiB
    rec.density[:] = 0.0
    write(tmp_path / "big.h5", rec, rng)
    with h5py.File(tmp_path / "big.h5") as f:
        assert f["density"].compression == "gzip"
        assert f["mass"].compression is None
    np.testing.assert_array_equal(read_result(tmp_path / "big.h5").snaps.density, rec.density)


def test_interrupted_write_keeps_previous_file(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    path = tmp_path / "run.h5"
    rec = grid_record((8, 6), 2, rng)
    write(path, rec, rng)
    before = read_result(path)

    real = results.write_array

    def crash(group, name, data, dims):
        if name == "density":
            raise KeyboardInterrupt  # Ctrl-C halfway through the file
        return real(group, name, data, dims)

    monkeypatch.setattr(results, "write_array", crash)
    rec2 = grid_record((8, 6), 4, rng)
    with pytest.raises(KeyboardInterrupt):
        write(path, rec2, rng)
    monkeypatch.undo()

    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.h5"]
    after = read_result(path)
    assert_same(before.snaps, after.snaps)
    assert after.snaps.done == 2


def test_describe(tmp_path):
    rng = np.random.default_rng(6)
    rec = particle_record(2, 3, rng)
    write(tmp_path / "p.h5", rec, rng)
    text = describe(tmp_path / "p.h5")
    assert f"gridpde {gridpde.__version__}" in text
    assert "method particles, dim 2" in text
    assert "status: finished (all depths done)" in text
    assert "/positions" in text and "(prompt=2, depth=3, token=50, dim=2)" in text
    assert "/heads/V" in text and "(layer=2, head=3, dim=2, dim2=2)" in text
    assert "/depth" in text and "(depth=3)" in text
    assert "prompt" not in [line.split()[0].lstrip("/") for line in text.splitlines()
                            if line.startswith("  /")]  # dimension scales and index axes are hidden
    assert f"mass {rec.mass[1, 2]:.10g}" in text


def test_bad_files(tmp_path):
    with pytest.raises(CaseError, match="does not exist"):
        read_result(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(CaseError, match="not an HDF5 file"):
        describe(tmp_path / "text.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["a"] = 1
    with pytest.raises(CaseError, match="not a gridpde result"):
        read_result(tmp_path / "other.h5")


def test_targets_density_shares_the_cell_centres(tmp_path):
    """/targets/density's x axis is the file's /x coordinate (xarray labels it with the centres)."""
    rng = np.random.default_rng(3)
    rec = grid_record((8,), 3, rng)
    path = tmp_path / "t.h5"
    write(path, rec, rng)
    results.add_datasets(path, {"targets/density": (rng.random((rec.mass.shape[0], 8)), ("prompt", "x"))})
    with xr.open_dataset(path, engine="h5netcdf", group="targets") as ds:
        np.testing.assert_array_equal(ds["x"].values, rec.centres[0])
