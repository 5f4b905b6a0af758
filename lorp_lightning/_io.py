"""Writing outputs so that a failure leaves nothing half-written, and strict JSON (private to the package).

with OutputDirectory("pruned/model", overwrite=False) as out:
    model.save_pretrained(out.path)        # written into a temporary folder beside it
out.final                                  # renamed into place only if the block succeeded

write_json("report.json", report)          # strict JSON (a diverged perplexity is null), atomically
write_jsonl("rows.jsonl", rows)            # one strict JSON object per line, atomically
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

__all__ = ["OutputDirectory", "atomic_file", "json_safe", "to_json", "write_json", "write_jsonl"]


class OutputDirectory:
    """An output directory written in a temporary folder beside it and renamed at the end.

    ``path`` (a `Path`) is the temporary folder to write into; ``final`` the
    directory it becomes. As a context manager it commits when the block ends normally and
    removes the temporary folder when the block raises (a Ctrl-C included), leaving an earlier
    ``final`` as it was. `commit` and `abandon` do the same by hand; `abandon` inside the block
    ends it without committing (what was written is not wanted after all).

    Raises:
        FileExistsError: ``final`` exists and ``overwrite`` is False.
    """

    def __init__(self, final: str | os.PathLike, overwrite: bool) -> None:
        self.final = Path(final)
        if self.final.exists() and not overwrite:
            raise FileExistsError(f"the output directory {self.final} exists")
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(dir=self.final.parent, prefix=f".{self.final.name}-"))
        self._abandoned = False

    def __enter__(self) -> OutputDirectory:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None and not self._abandoned:
            self.commit()
        else:
            self.abandon()

    def commit(self) -> Path:
        """Replace ``final`` (if any) by what was written, and return ``final``."""
        if self.final.exists():
            shutil.rmtree(self.final)
        os.replace(self.path, self.final)
        return self.final

    def abandon(self) -> None:
        """Remove what was written; ``final`` stays as it was."""
        self._abandoned = True
        shutil.rmtree(self.path, ignore_errors=True)


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
def atomic_file(path: str | os.PathLike) -> Iterator[TextIO]:
    """A text file written beside ``path`` and renamed onto it when the block ends normally;
    removed when the block raises, leaving an earlier ``path`` as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, value: Any, indent: int | None = 2) -> None:
    """``value`` as strict JSON (``to_json``) at ``path``, atomically."""
    with atomic_file(path) as f:
        f.write(to_json(value, indent=indent) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> None:
    """One strict JSON value per line at ``path``, atomically."""
    with atomic_file(path) as f:
        for row in rows:
            f.write(to_json(row, indent=None) + "\n")
