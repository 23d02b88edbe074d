"""The result file of a run, saved as the run goes: appended to, never rewritten, never half-written.

A run saves its file after every snapshot and training checkpoint. Rewriting
it whole each time costs the whole file per save, O(steps^2) over a training
run. :class:`ResultWriter` instead brings an existing file up to date in
place (:func:`sync`): it appends the new rows of the series (chunked datasets,
unlimited along ``step`` or ``checkpoint``: /train/*), writes the snapshot
depths filled since the last save, and overwrites the small fixed-size arrays
(/heads, /checkpoint, /risk, ...) and the root attributes. The writer remembers
what it wrote, so a dataset or attribute that did not change (the teacher,
the targets, the case text) is not touched. The file a reader sees has the
same datasets, shapes and attributes as one written whole by
:func:`gridpde.io.results.write_result`.

HDF5 does not keep a file consistent on disk while it is open for writing: a
kill -9 during an in-place update can leave it unreadable (scripts/kill_io.py
measures it: of 100 kill -9 of a run appending to its file in place, 6 left a
file that would not open or whose checkpoint and series disagreed; of 100 with
this writer, none). So the appends go to a private copy, never to the file
readers open. Beside ``NAME.h5`` the writer keeps ``.NAME.h5.spare.tmp``, a
complete closed copy as of the save before the last one. A save:

1. opens the spare, appends to it what changed since it was written (two
   saves' worth), closes and fsyncs it;
2. renames it to ``.NAME.h5.next.tmp``;
3. hard-links the current ``NAME.h5`` as the new spare (it then lags one save);
4. renames ``.NAME.h5.next.tmp`` onto ``NAME.h5`` (atomic).

``NAME.h5`` is therefore at every moment a closed file of the last or the one
before last save, whatever instant a kill -9 hits. The first save of a
process (fresh or ``--resume``), and any save after a failed one, writes the
file whole instead, so a spare left by a killed run is never trusted. The
spare is removed when the run ends (:meth:`ResultWriter.close`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from gridpde.heads import Heads
from gridpde.io.results import SERIES_AXES, _attr, _write, fsync, write_array, write_file
from gridpde.io.snapshots import Snapshots


class _Rewrite(Exception):
    """The file cannot be brought up to date by appending (a shape changed): write it whole."""


#: fixed-size arrays up to this size are remembered by value (larger ones are written at every save)
_MEMO_BYTES = 1 << 16


class ResultWriter:
    """Saves a run's result file at ``path``, appending to it after the first save (see the module)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.spare = self.path.with_name(f".{self.path.name}.spare.tmp")
        self.next = self.path.with_name(f".{self.path.name}.next.tmp")
        self.saves = 0  # saves by this writer; 0 also after a failed one (the next is written whole)
        self.rewrites = 0
        self._memo: list[dict | None] = [None, None]  # what the spare holds, what the file holds (None: unknown)

    def save(self, snaps: Snapshots, *, heads: Heads | dict[str, np.ndarray],
             extra: dict[str, tuple[Any, tuple[str, ...]]] | None = None, **meta: Any) -> None:
        """Save the run's state: the arguments of :func:`gridpde.io.results.write_result` but ``path``."""
        if isinstance(heads, Heads):
            heads = {**heads.arrays(), "B": heads.B}
        saved, self.saves = self.saves, 0
        try:
            if saved and self.spare.exists():
                try:
                    with h5py.File(self.spare, "a") as f:
                        memo = sync(f, snaps, heads=heads, extra=extra, spare=self._memo[0], **meta)
                    fsync(self.spare)
                    os.replace(self.spare, self.next)
                except _Rewrite:
                    saved = 0
            if saved:
                try:
                    os.link(self.path, self.spare)  # our last save becomes the spare
                    spare = self._memo[1]
                except OSError:  # no hard links on this file system
                    shutil.copyfile(self.next, self.spare)
                    spare = memo
            else:  # whole; the spare is a copy (a file found at path may be another run's)
                self.rewrites += 1
                self.path.parent.mkdir(parents=True, exist_ok=True)
                write_file(self.next, snaps, heads=heads, extra=extra, **meta)
                self.spare.unlink(missing_ok=True)
                shutil.copyfile(self.next, self.spare)
                spare = memo = None
            os.replace(self.next, self.path)
        except BaseException:
            self.next.unlink(missing_ok=True)
            raise
        self._memo = [spare, memo]
        self.saves = saved + 1

    def close(self) -> None:
        """Remove the spare copy (the result file stays)."""
        if self.saves:
            self.spare.unlink(missing_ok=True)
            self.next.unlink(missing_ok=True)
        self.saves = 0

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def sync(f: h5py.File, snaps: Snapshots, *, heads: dict[str, np.ndarray],
         extra: dict[str, tuple[Any, tuple[str, ...]]] | None = None, spare: dict | None = None,
         **meta: Any) -> dict:
    """Bring the result file ``f`` (written by gridpde for this run, at an earlier save) up to ``snaps``,
    ``heads``, ``extra`` and the root attributes, in place, as if it were written whole.

    Series rows already in ``f`` and snapshot depths below its ``depth_done`` are taken to be
    unchanged (a run's records only grow); raises _Rewrite where that cannot hold. ``spare`` is
    what an earlier call returned for the state ``f`` holds (None: not known); what it shows
    unchanged is not written again. Returns the same for the state written now.
    """
    before, now = int(f.attrs.get("depth_done", 0)), snaps.done
    if now < before:
        raise _Rewrite
    put = _Updater(before, now, None if spare is None else spare["datasets"])
    root = {k: _attr(v) for k, v in _write(f, snaps, heads=heads, extra=extra, put=put, set_attrs=False,
                                           **meta).items()}
    old = None if spare is None else spare["attrs"]
    for key in (set(f.attrs) if old is None else set(old)) - set(root):  # only the attributes given now
        del f.attrs[key]
    for key, value in root.items():  # the record's counts (depth_done, train_step) last
        if old is None or key not in old or not _same(old[key], value):
            f.attrs[key] = value
    return {"datasets": put.marks, "attrs": root}


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    return bool(a == b)


class _Updater:
    """The ``put`` of :func:`gridpde.io.results._write` that updates datasets in place.

    ``marks`` records, per dataset, what the file holds after the call: dtype and shape, the
    length of a series, and the bytes of a small fixed-size array.
    """

    def __init__(self, before: int, now: int, old: dict | None):
        self.depths = slice(before, now)  # snapshot depths filled since the file was written
        self.old = old or {}
        self.marks: dict[str, tuple] = {}
        self.lengths: dict[str, int] = {}  # series coordinates brought to a length by this call

    def __call__(self, group: h5py.Group, name: str, data: Any, dims: tuple[str, ...]) -> None:
        data = np.asarray(data)
        key = f"{group.name.rstrip('/')}/{name}"
        series = bool(dims) and dims[0] in SERIES_AXES
        snapshot = dims[:2] == ("prompt", "depth")
        mark: tuple = (data.dtype.str, data.shape[1:] if series else data.shape)
        if series:
            mark += (data.shape[0],)
        elif not snapshot and data.nbytes <= _MEMO_BYTES:
            mark += (data.tobytes(),)
        prev = self.old.get(key)
        unchanged = prev == mark and (
            series or (snapshot and self.depths.stop == self.depths.start) or len(mark) == 3)
        self.marks[key] = mark
        if unchanged:  # the file holds exactly this already
            return
        try:
            ds = group[name]
        except KeyError:
            write_array(group, name, data, dims)
            return
        shape = ds.shape
        if (prev is None or prev[:2] != mark[:2]) and (ds.dtype != data.dtype or len(shape) != data.ndim):
            raise _Rewrite
        if shape[1:] != data.shape[1:]:
            raise _Rewrite
        if series:  # rows appended since
            old, new = shape[0], data.shape[0]
            if new < old:
                raise _Rewrite
            if new > old:
                ds.resize(new, axis=0)
                ds[old:] = data[old:]
            scale = f"{group.name}/{dims[0]}"
            if dims[0] == name:  # a value coordinate: the arrays along it come after it
                self.lengths[scale] = new
            elif self.lengths.get(scale) != new:  # an index coordinate 0 .. n-1
                index = group[dims[0]]
                start = index.shape[0]
                if start != new:
                    index.resize(new, axis=0)
                    index[start:] = np.arange(start, new, dtype=index.dtype)
                self.lengths[scale] = new
            return
        if shape != data.shape:
            raise _Rewrite
        if snapshot:  # the snapshot record: only the depths filled since
            ds[:, self.depths] = data[:, self.depths]
            return
        ds[()] = data
