"""Writing outputs so that a failure leaves nothing half-written (private to the package).

    with OutputDirectory("pruned/model", overwrite=False) as out:
        model.save_pretrained(out.path)        # written into a temporary folder beside it
    out.final                                  # renamed into place only if the block succeeded
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["OutputDirectory"]


class OutputDirectory:
    """An output directory written in a temporary folder beside it and renamed at the end.

    ``path`` (a `Path`) is the temporary folder to write into; ``final`` the
    directory it becomes. As a context manager it commits when the block ends normally and
    removes the temporary folder when the block raises (a Ctrl-C included), leaving an earlier
    ``final`` as it was. `commit` and `abandon` do the same by hand.

    Raises:
        FileExistsError: ``final`` exists and ``overwrite`` is False.
    """

    def __init__(self, final: str | os.PathLike, overwrite: bool) -> None:
        self.final = Path(final)
        if self.final.exists() and not overwrite:
            raise FileExistsError(f"the output directory {self.final} exists")
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(dir=self.final.parent, prefix=f".{self.final.name}-"))

    def __enter__(self) -> OutputDirectory:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
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
        shutil.rmtree(self.path, ignore_errors=True)
