"""Result files: a forward run's :class:`~gridpde.io.snapshots.Snapshots` in HDF5.

Layout (the README's "Result files"): root attributes describe the run, the
root datasets hold the snapshot record, the group ``/heads`` holds Q, K, V, B.
Every dataset carries its dimension names as HDF5 dimension scales, in the
form netCDF-4 uses, so ``xarray.open_dataset(path, engine="h5netcdf")`` (and
``group="heads"``) reads labelled arrays. Coordinates (depth, x, y, z) are
scales themselves; a dimension without coordinate values (prompt, token, ...)
is an empty scale named as netCDF names such dimensions.

Series along ``step`` or ``checkpoint`` (the training record) are chunked and
resizable along that axis, so a run can append rows in place
(:mod:`gridpde.io.append`); readers see them at their current length.
:func:`write_result` writes the whole file under a temporary name in the same
directory and renames it onto the target, so an interrupted write leaves the
previous file intact.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

import gridpde
from gridpde.errors import CaseError
from gridpde.heads import Heads
from gridpde.io.snapshots import Snapshots

AXES = ("x", "y", "z")
HEAD_DIMS = {
    "Q": ("layer", "head", "head_dim", "dim"),
    "K": ("layer", "head", "head_dim", "dim"),
    "V": ("layer", "head", "dim", "dim2"),
    "B": ("layer", "head", "dim", "dim2"),
}
# netCDF-4's name for a dimension scale that is not a variable (h5netcdf and
# netCDF-C both look for this prefix; the length follows, formatted %10d).
_NOT_A_VARIABLE = "This is a netCDF dimension but not a netCDF variable."
_COMPRESS_BYTES = 1 << 20
_SNAPSHOT_ATTRS = ("status", "message", "depth_done")
#: axes along which a run appends rows: datasets with one of these first are chunked, resizable along it
SERIES_AXES = ("step", "checkpoint")
_SERIES_CHUNK_BYTES = 1 << 12


# --------------------------------------------------------------- labelled data
def write_array(
    group: h5py.Group, name: str, data: Any, dims: tuple[str, ...]
) -> h5py.Dataset:
    """Write ``data`` as ``group[name]`` with dimension names ``dims``.

    A 1-D array whose single dim is its own name is a coordinate and becomes a
    dimension scale; write coordinates before the arrays that use them. Any
    other dim gets (or reuses) an empty netCDF-style dimension scale in
    ``group``. Arrays above 1 MB are gzip-compressed (level 1). A series (first
    dim in ``SERIES_AXES``) is chunked and unlimited along its first axis.
    """
    data = np.asarray(data)
    if data.ndim != len(dims):
        msg = f"{name}: {data.ndim}-D array for dims {dims}"
        raise ValueError(msg)
    extra = {"compression": "gzip", "compression_opts": 1} if data.nbytes > _COMPRESS_BYTES else {}
    if dims and dims[0] in SERIES_AXES:
        extra |= _series_layout(data.shape, data.dtype.itemsize)
    ds = group.create_dataset(name, data=data, **extra)
    base = name.rsplit("/", 1)[-1]
    if base in VARIABLES:
        ds.attrs["long_name"], ds.attrs["units"] = VARIABLES[base]
    if dims == (name,):
        ds.make_scale(name)
        return ds
    for axis, (dim, n) in enumerate(zip(dims, data.shape)):
        ds.dims[axis].attach_scale(_dimension(group, dim, n))
    return ds


#: long_name and units of every variable, by its name (units "1": a count or a pure number;
#: lengths are in the case's token coordinates)
VARIABLES = {
    "depth": ("depth s of the snapshot", "1"),
    "x": ("cell centre, axis 1", "length"), "y": ("cell centre, axis 2", "length"),
    "z": ("cell centre, axis 3", "length"),
    "density": ("density rho (cell averages)", "mass / length^dim"),
    "positions": ("token positions X_i", "length"), "weights": ("token weights w_i", "1"),
    "mass": ("mass inside the box", "1"), "mass_out": ("mass that left the box", "1"),
    "steps": ("depth steps taken so far", "1"), "mean": ("mean of the measure", "length"),
    "cov": ("covariance of the measure (grid: Sheppard-corrected)", "length^2"),
    "Q": ("query matrices Q", "1"), "K": ("key matrices K", "1"), "V": ("value matrices V", "1"),
    "B": ("score matrices B = K^T Q (with 1/sqrt(k) if scale_scores)", "1"),
    "risk": ("risk R = mean over prompts of F(mu_1; tau)", "1"), "risk_prompt": ("risk of each prompt", "1"),
    "grad_norm": ("norm of dR/d(Q, K, V)", "1"), "lr": ("time step taken", "1"),
    "w_c": ("conditional Wasserstein distance from the initial heads", "1"),
    "seconds": ("wall-clock time since the start", "s"),
    "evaluations": ("risk-and-gradient evaluations of the step", "1"),
    "depth_steps": ("depth steps of one evaluation", "1"),
}
#: axes whose coordinate is an index 0 .. n-1
INDEX_AXES = ("prompt", "token", "dim", "dim2", "layer", "head", "head_dim", "step", "checkpoint", "query")


def _series_layout(shape: tuple[int, ...], itemsize: int) -> dict:
    """Chunks of about 4 kB along the first axis, and no limit on that axis."""
    row = itemsize * int(np.prod(shape[1:], dtype=np.int64))
    return {"chunks": (max(1, _SERIES_CHUNK_BYTES // max(row, 1)), *shape[1:]), "maxshape": (None, *shape[1:])}


def _dimension(group: h5py.Group, name: str, size: int) -> h5py.Dataset:
    """The dimension scale of ``name`` and length ``size`` for ``group``, made if missing.

    A cell-centre axis (x, y, z) of the file's root is copied into the group, so that
    /targets/density is labelled by the centres; index axes get the coordinate 0 .. n-1; others an
    empty netCDF-style dimension.
    """
    if name in group:
        scale = group[name]
        if scale.shape != (size,):
            msg = f"dimension {name!r} has length {scale.shape[0]}, an array needs {size}"
            raise ValueError(msg)
        return scale
    root = group.file
    if name in AXES and name in root and root[name].shape == (size,):  # the cell centres, for this group too
        scale = group.create_dataset(name, data=root[name][()])
        scale.make_scale(name)
        for key in ("long_name", "units"):
            if key in root[name].attrs:
                scale.attrs[key] = root[name].attrs[key]
        return scale
    if name in INDEX_AXES:
        index = np.arange(size, dtype=np.int64)
        layout = _series_layout(index.shape, index.itemsize) if name in SERIES_AXES else {}
        scale = group.create_dataset(name, data=index, **layout)
        scale.make_scale(name)
        scale.attrs["long_name"] = f"{name} index"
        return scale
    scale = group.create_dataset(name, shape=(size,), dtype=">f4")
    scale.make_scale(f"{_NOT_A_VARIABLE}{size:10d}")
    return scale


def _is_dimension_only(ds: h5py.Dataset) -> bool:
    name = ds.attrs.get("NAME", b"")
    name = name.decode() if isinstance(name, bytes) else str(name)
    return name.startswith(_NOT_A_VARIABLE)


def _attr(value: Any) -> Any:
    """A typed HDF5 attribute value (paths as text, bools as 0/1 like netCDF)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, bool | np.bool_):
        return np.int8(value)
    return value


# --------------------------------------------------------------------- writing
def write_result(
    path: str | Path,
    snaps: Snapshots,
    *,
    case_text: str,
    dim: int,
    method: str,
    heads: Heads | dict[str, np.ndarray],
    attrs: dict[str, Any] | None = None,
    extra: dict[str, tuple[Any, tuple[str, ...]]] | None = None,
) -> None:
    """Write the snapshot record ``snaps`` and the heads to ``path`` atomically.

    Args:
        path: target file; parent directories are created.
        snaps: the record; all S depths are stored, the first ``snaps.done``
            are filled (the rest NaN).
        case_text: the case file's text, stored as the ``case`` attribute.
        dim: space dimension d.
        method: "grid" or "particles".
        heads: Q, K (L, M, k, d) and V, B (L, M, d, d); any subset.
        attrs: extra root attributes (numbers, text, arrays); None values skipped.
        extra: more datasets, name -> (array, dimension names); a name may
            hold a group path ("grad/Q"), whose group gets its own dimensions.
    """
    if isinstance(heads, Heads):
        heads = {**heads.arrays(), "B": heads.B}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write_file(tmp, snaps, case_text=case_text, dim=dim, method=method, heads=heads, attrs=attrs, extra=extra)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_file(path: Path, snaps: Snapshots, *, heads: dict[str, np.ndarray], extra: dict | None = None,
               **meta: Any) -> None:
    """Write the whole result file at ``path`` (created or truncated) and fsync it; no rename."""
    with h5py.File(path, "w") as f:
        _write(f, snaps, heads=heads, extra=extra, **meta)
    fsync(path)


def fsync(path: Path) -> None:
    """Push ``path``'s contents to the disk (so a rename after it never exposes a short file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(
    f: h5py.File,
    snaps: Snapshots,
    *,
    case_text: str,
    dim: int,
    method: str,
    heads: dict[str, np.ndarray],
    attrs: dict[str, Any] | None,
    extra: dict[str, tuple[Any, tuple[str, ...]]] | None = None,
    put: Callable[[h5py.Group, str, Any, tuple[str, ...]], Any] | None = None,
    set_attrs: bool = True,
) -> dict[str, Any]:
    """Every root attribute and dataset of a result file, into ``f``; returns the root attributes.

    ``put`` writes each dataset: :func:`write_array` (None) for a new file, an updater
    of :func:`gridpde.io.append.sync` to bring an existing one up to date (which
    sets the attributes itself: ``set_attrs=False``).
    """
    root = {
        "gridpde_version": gridpde.__version__,
        "schema_version": gridpde.SCHEMA_VERSION,
        "case": case_text,
        "dim": dim,
        "method": method,
        "status": snaps.status,
        "message": snaps.message,
        "depth_done": snaps.done,
    }
    root |= {f"time_{k}": float(v) for k, v in snaps.timings.items()}
    root |= {k: v for k, v in (attrs or {}).items() if v is not None}
    put = put or write_array
    if set_attrs:
        for key, value in root.items():
            f.attrs[key] = _attr(value)

    pd = ("prompt", "depth")
    put(f, "depth", snaps.depth, ("depth",))
    if snaps.density is not None:
        axes = AXES[: snaps.density.ndim - 2]
        for name, c in zip(axes, snaps.centres, strict=True):
            put(f, name, c, (name,))
        put(f, "density", snaps.density, pd + axes)
    if snaps.positions is not None:
        put(f, "positions", snaps.positions, pd + ("token", "dim"))
        put(f, "weights", snaps.weights, ("prompt", "token"))
    put(f, "mass", snaps.mass, pd)
    put(f, "mass_out", snaps.mass_out, pd)
    if snaps.steps is not None:
        put(f, "steps", snaps.steps, pd)
    put(f, "mean", snaps.mean, pd + ("dim",))
    put(f, "cov", snaps.cov, pd + ("dim", "dim2"))
    if snaps.queries is not None:
        put(f.require_group("queries"), "positions", snaps.queries, pd + ("query", "dim"))

    g = f.require_group("heads")
    for name, value in heads.items():
        if name not in HEAD_DIMS:
            msg = f"heads: unknown array {name!r}, expected one of {sorted(HEAD_DIMS)}"
            raise ValueError(msg)
        put(g, name, value, HEAD_DIMS[name])
    groups = {"": f}
    for name, (data, dims) in (extra or {}).items():
        group, _, leaf = name.rpartition("/")
        if group not in groups:
            groups[group] = f.require_group(group)
        put(groups[group], leaf, data, dims)
    return root


def add_datasets(path: str | Path, extra: dict[str, tuple[Any, tuple[str, ...]]]) -> None:
    """Add (or replace) datasets in an existing result file, atomically.

    The file is copied to a temporary name, changed there and renamed back,
    so a crash leaves either the old file or the new one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(path, tmp)
        with h5py.File(tmp, "a") as f:
            for name, (data, dims) in extra.items():
                if name in f:
                    del f[name]
                group, _, leaf = name.rpartition("/")
                write_array(f.require_group(group) if group else f, leaf, data, dims)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------- reading
@dataclass
class Result:
    """What a result file holds: the snapshot record, the heads, root attributes.

    ``attrs`` holds every root attribute (gridpde_version, case, dim, method,
    status, ...); ``snaps.timings`` is rebuilt from the ``time_*`` ones.
    """

    path: Path
    snaps: Snapshots
    heads: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.attrs["dim"])

    @property
    def method(self) -> str:
        return str(self.attrs["method"])

    @property
    def case_text(self) -> str:
        return str(self.attrs.get("case", ""))


def _open(path: str | Path) -> h5py.File:
    """Open a gridpde result file for reading, or raise CaseError."""
    path = Path(path)
    if not path.is_file():
        msg = f"result file {str(path)!r} does not exist"
        raise CaseError(msg)
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        msg = f"{str(path)!r} is not an HDF5 file ({err})"
        raise CaseError(msg) from None
    if "gridpde_version" not in f.attrs or "depth" not in f:
        f.close()
        msg = f"{str(path)!r} is an HDF5 file but not a gridpde result (no gridpde_version/depth)"
        raise CaseError(msg)
    version = int(f.attrs.get("schema_version", 0))
    if version > gridpde.SCHEMA_VERSION:
        f.close()
        msg = (
            f"{str(path)!r} has schema_version {version}; this gridpde "
            f"({gridpde.__version__}) reads up to {gridpde.SCHEMA_VERSION}"
        )
        raise CaseError(msg)
    return f


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_result(path: str | Path) -> Result:
    """Read a result file written by :func:`write_result`.

    Raises:
        CaseError: the file is missing or not a gridpde result file.
    """
    with _open(path) as f:
        attrs = {k: _plain(v) for k, v in f.attrs.items()}

        def get(name: str) -> np.ndarray | None:
            return f[name][()] if name in f else None

        centres = tuple(f[a][()] for a in AXES if a in f) or None
        snaps = Snapshots(
            depth=f["depth"][()],
            mass=f["mass"][()],
            mass_out=f["mass_out"][()],
            mean=f["mean"][()],
            cov=f["cov"][()],
            density=get("density"),
            centres=centres,
            positions=get("positions"),
            weights=get("weights"),
            steps=get("steps"),
            queries=get("queries/positions"),
            done=int(attrs.get("depth_done", 0)),
            status=str(attrs.get("status", "running")),
            message=str(attrs.get("message", "")),
            timings={k[5:]: float(v) for k, v in attrs.items() if k.startswith("time_")},
        )
        heads = {k: v[()] for k, v in f["heads"].items() if k in HEAD_DIMS} if "heads" in f else {}
    return Result(path=Path(path), snaps=snaps, heads=heads, attrs=attrs)


# ------------------------------------------------------------------- describe
def _dims(ds: h5py.Dataset) -> str:
    """``(name=size, ...)`` from the dimension scales (a coordinate is its own)."""
    names = []
    for axis, n in enumerate(ds.shape):
        scales = [ds] if ds.is_scale else ds.dims[axis]
        label = scales[-1].name.rsplit("/", 1)[-1] if len(scales) else f"axis{axis}"
        names.append(f"{label}={n}")
    return "(" + ", ".join(names) + ")"


def _fmt(a: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in np.ravel(a)) + "]"


def describe(path: str | Path) -> str:
    """The text ``gridpde info`` prints about the result file at ``path``."""
    with _open(path) as f:
        a = {k: _plain(v) for k, v in f.attrs.items()}
        lines = [
            f"{path}: gridpde {a['gridpde_version']} (schema {a.get('schema_version', '?')}), "
            f"method {a.get('method', '?')}, dim {a.get('dim', '?')}",
            f"status: {a.get('status', '?')}" + (f" ({a['message']})" if a.get("message") else ""),
        ]
        depth = f["depth"][()]
        done = int(a.get("depth_done", 0))
        lines.append(
            f"depths done: {done} of {len(depth)} snapshots, s = {_fmt(depth[:done]) if done else '-'}"
        )
        times = {k[5:]: v for k, v in a.items() if k.startswith("time_")}
        if times:
            lines.append("time: " + ", ".join(f"{k} {v:.3g} s" for k, v in times.items()))
        known = {"gridpde_version", "schema_version", "case", "dim", "method", *_SNAPSHOT_ATTRS}
        extra = sorted(k for k in a if k not in known and not k.startswith("time_"))
        if extra:
            lines.append("attributes: " + ", ".join(f"{k}={a[k]}" for k in extra))

        lines.append("datasets:")

        def visit(name: str, obj: Any) -> None:
            if not isinstance(obj, h5py.Dataset):  # a group (/heads, /train, /checkpoint, ...)
                return
            index = name.rsplit("/", 1)[-1] in INDEX_AXES and obj.ndim == 1 and obj.dtype.kind == "i"
            if not _is_dimension_only(obj) and not index:
                lines.append(f"  /{name:<14} {_dims(obj)} {obj.dtype}")

        f.visititems(visit)

        if done:
            last = done - 1
            mass, out, mean = f["mass"][:, last], f["mass_out"][:, last], f["mean"][:, last]
            lines.append(f"prompts at s = {depth[last]:.4g} (snapshot {done} of {len(depth)}):")
            for p in range(len(mass)):
                lines.append(
                    f"  {p}: mass {mass[p]:.10g}  mass_out {out[p]:.3g}  mean {_fmt(mean[p])}"
                )
    return "\n".join(lines)
