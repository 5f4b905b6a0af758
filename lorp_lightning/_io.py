"""Writing outputs so that a failure leaves nothing half-written, and strict JSON (private to the package).

with OutputDirectory("pruned/model", overwrite=False) as out:
    model.save_pretrained(out.path)        # written into a staging folder beside it
out.final                                  # renamed into place only if the block succeeded

write_json("report.json", report)          # strict JSON (a diverged perplexity is null), atomically
write_jsonl("rows.jsonl", rows)            # one strict JSON object per line, atomically

**The one staging mechanism.** Every output, a directory (`OutputDirectory`) or a file (`atomic_file`), is
written under a staging name beside it, ``.<name>.lorp-staging.<pid>@<host>.<random>``, which names its
owner, and renamed onto ``<name>`` at the end. While it is written, the writer holds an exclusive lock on
``.<name>.lorp-lock`` (``flock``; the kernel releases it when the process dies, however it dies), so a second
writer of the same output either waits (a cache: ``wait=True``) or is refused by `OutputBusyError`, never
mixing the two. A writer killed with SIGKILL leaves its staging entry; the next writer of the same output,
holding the lock, removes every staging entry of that output whose owner process is gone from this host
(`remove_stale_staging`), and never a live one's or another host's. A write that fails on the disk (full,
read-only, not permitted) removes its staging entry, leaves the earlier output as it was, and raises
`OutputError` naming the output and the cause.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

__all__ = [
    "OutputBusyError",
    "OutputDirectory",
    "OutputError",
    "atomic_file",
    "json_safe",
    "remove_stale_staging",
    "to_json",
    "write_json",
    "write_jsonl",
]

_STAGING = ".lorp-staging."
_LOCK = ".lorp-lock"
_DISK_ERRORS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EIO}


class OutputError(OSError):
    """An output could not be written (the disk is full, read-only, or not ours to write); the message names
    the output and the cause. The earlier output, if any, is as it was, and no staging entry is left."""


class OutputBusyError(OutputError):
    """Another live process is writing the same output."""


def _staging_prefix(final: Path) -> str:
    return f".{final.name}{_STAGING}{os.getpid()}@{socket.gethostname()}."


def _owner_gone(pid: int, host: str) -> bool:
    """True when the process ``pid`` on ``host`` has certainly ended: only a process of this host can be asked."""
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def remove_stale_staging(final: str | os.PathLike) -> list[Path]:
    """Remove the staging entries of ``final`` (folders or files) whose owner process has gone from this host, and
    return them. Call it holding ``final``'s lock (`OutputDirectory` and `atomic_file` do): a live writer's entry,
    or one from another host, is never touched."""
    final = Path(final)
    pattern = re.compile(re.escape(f".{final.name}{_STAGING}") + r"(\d+)@(.+)\.[^.]+")
    removed = []
    try:
        entries = list(final.parent.iterdir())
    except FileNotFoundError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or not _owner_gone(int(match[1]), match[2]):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


class _Lock:
    """An exclusive ``flock`` on ``.<name>.lorp-lock`` beside ``final``, removed when released."""

    def __init__(self, final: Path, wait: bool, what: str) -> None:
        self.path = final.parent / f".{final.name}{_LOCK}"
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                raise OutputBusyError(
                    f"another process is writing the {what} {final} (it holds {self.path}); wait for it to end, "
                    "or write elsewhere"
                ) from None
            # The lock file may have been removed by its last holder between our open and our lock: lock the one there.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                return
            os.close(fd)

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # still held: whoever opened this file meanwhile finds it gone and retries
        os.close(self._fd)
        self._fd = None


def _raise_disk_error(error: BaseException, final: Path, what: str) -> None:
    """Raise an `OutputError` naming ``final`` if ``error`` is a write that failed on the disk; else return, and
    the caller raises ``error`` itself."""
    if isinstance(error, OSError) and not isinstance(error, OutputError) and error.errno in _DISK_ERRORS:
        where = f" ({error.filename})" if error.filename else ""
        failure = OutputError(f"could not write the {what} {final}: {os.strerror(error.errno)}{where}")
        failure.errno = error.errno
        raise failure from error


def _locked(final: Path, wait: bool, what: str) -> _Lock:
    """``final``'s folder made if needed, ``final``'s lock taken, and the staging entries of ``final`` whose owner is
    gone removed under it; a disk that refuses any of it is an `OutputError`, and the lock is not kept."""
    lock = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        lock = _Lock(final, wait, what)
        remove_stale_staging(final)
        return lock
    except OSError as error:
        if lock is not None:
            lock.release()
        _raise_disk_error(error, final, what)
        raise


class OutputDirectory:
    """An output directory written in a staging folder beside it and renamed at the end.

    ``path`` (a `Path`) is the staging folder to write into; ``final`` the directory it becomes. As a context
    manager it commits when the block ends normally and removes the staging folder when the block raises (a
    Ctrl-C included), leaving an earlier ``final`` as it was; a write that failed on the disk is raised again as
    `OutputError` naming ``final``. `commit` and `abandon` do the same by hand; `abandon` inside the block ends
    it without committing (what was written is not wanted after all). From construction to commit or abandon it
    holds ``final``'s lock (see the module docstring); ``wait`` waits for another writer instead of refusing.

    Raises:
        FileExistsError: ``final`` exists and ``overwrite`` is False.
        OutputBusyError: another live process is writing ``final`` and ``wait`` is False.
    """

    def __init__(self, final: str | os.PathLike, overwrite: bool, *, wait: bool = False) -> None:
        self.final = Path(final)
        self._lock = _locked(self.final, wait, "output directory")
        try:
            if self.final.exists() and not overwrite:
                raise FileExistsError(f"the output directory {self.final} exists")
            self.path = Path(tempfile.mkdtemp(dir=self.final.parent, prefix=_staging_prefix(self.final)))
        except BaseException as error:
            self._lock.release()
            _raise_disk_error(error, self.final, "output directory")
            raise
        self._abandoned = False

    def __enter__(self) -> OutputDirectory:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None and not self._abandoned:
            self.commit()
            return
        self.abandon()
        _raise_disk_error(value, self.final, "output directory")

    def commit(self) -> Path:
        """Replace ``final`` (if any) by what was written, and return ``final``."""
        try:
            if self.final.exists():
                shutil.rmtree(self.final)
            os.replace(self.path, self.final)
        except OSError as error:
            self.abandon()
            _raise_disk_error(error, self.final, "output directory")
            raise
        self._lock.release()
        return self.final

    def abandon(self) -> None:
        """Remove what was written; ``final`` stays as it was."""
        self._abandoned = True
        shutil.rmtree(self.path, ignore_errors=True)
        self._lock.release()


def json_safe(value: Any) -> Any:
    """``value`` with every float that is not finite (inf, NaN) replaced by None, and NumPy or
    torch scalars, tuples and paths made plain JSON types, recursively."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()  # a NumPy or torch scalar
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def to_json(value: Any, indent: int | None = 2) -> str:
    """Strict JSON text of ``value`` (``json_safe``; never the non-standard ``NaN``/``Infinity``; another
    object that JSON lacks, such as a dtype, as its ``str``)."""
    return json.dumps(json_safe(value), indent=indent, allow_nan=False, ensure_ascii=False, default=str)


@contextmanager
def atomic_file(path: str | os.PathLike, *, wait: bool = True) -> Iterator[TextIO]:
    """A text file written under a staging name beside ``path`` and renamed onto it when the block ends normally;
    removed when the block raises, leaving an earlier ``path`` as it was (a write that failed on the disk raised
    again as `OutputError` naming ``path``). It holds ``path``'s lock meanwhile, waiting for another writer unless
    ``wait`` is False."""
    path = Path(path)
    lock = _locked(path, wait, "file")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_staging_prefix(path))
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        _raise_disk_error(error, path, "file")
        raise
    finally:
        lock.release()


def write_json(path: str | os.PathLike, value: Any, indent: int | None = 2) -> None:
    """``value`` as strict JSON (``to_json``) at ``path``, atomically."""
    with atomic_file(path) as f:
        f.write(to_json(value, indent=indent) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> None:
    """One strict JSON value per line at ``path``, atomically."""
    with atomic_file(path) as f:
        for row in rows:
            f.write(to_json(row, indent=None) + "\n")
