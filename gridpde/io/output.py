"""The output file of a run: checked before any work starts, and locked while the run writes it.

:func:`claim_output` fails with one line (a :class:`~gridpde.errors.CaseError`,
exit status 2) for a path that could only fail minutes into a run: an empty
or over-long name, a NUL byte, an existing directory, a parent that is a
regular file or cannot be created or written. It then takes an exclusive
lock (``flock``) on ``NAME.lock`` beside the file, holding the run's pid, so
that a second run writing the same file exits 2 naming the first run's pid
instead of both finishing and the last one silently winning. The lock goes
with the process (also on kill -9); the lock file is removed on release.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from gridpde.errors import CaseError


class OutputLock:
    """An exclusive lock on a run's output path; release it with :meth:`release` (or use ``with``)."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self.lock_path = _lock_path(path)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            self.lock_path.unlink(missing_ok=True)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def check_output_path(path: str | Path, key: str = "output.path") -> Path:
    """The output path as a Path, or CaseError naming ``key`` and what is wrong with it."""
    text = os.fspath(path)
    if "\0" in text:
        raise CaseError(f"{key} = {text!r}: contains a NUL byte")
    p = Path(text)
    if not text or text.endswith(("/", os.sep)) or p.name in ("", ".", ".."):
        raise CaseError(f"{key} = {text!r}: expected a file name (e.g. runs/result.h5), not a folder")
    if len(p.name.encode()) + len(".lock") > 255:
        raise CaseError(f"{key}: the file name is {len(p.name.encode())} bytes long; at most 250 are allowed")
    if p.is_dir():
        raise CaseError(f"{key} = {text!r}: is an existing directory; expected a file name")
    parent = p.parent
    for up in (parent, *parent.parents):
        if up.exists():
            if not up.is_dir():
                raise CaseError(f"{key} = {text!r}: {up} is a file, so no folder can be made below it")
            break
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CaseError(f"{key} = {text!r}: cannot create the folder {parent} ({exc.strerror})") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CaseError(f"{key} = {text!r}: the folder {parent} is not writable")
    if p.exists() and not os.access(p, os.W_OK):
        raise CaseError(f"{key} = {text!r}: the file exists and is not writable")
    return p


def claim_output(path: str | Path, key: str = "output.path") -> OutputLock:
    """Check ``path`` (see :func:`check_output_path`) and lock it for this process."""
    p = check_output_path(path, key)
    lock = _lock_path(p)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise CaseError(f"{key} = {os.fspath(path)!r}: cannot create the lock file {lock} ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise CaseError(f"{key} = {os.fspath(path)!r}: another run (pid {other}) is writing this file; "
                        "wait for it or choose another output path") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return OutputLock(p, fd)
