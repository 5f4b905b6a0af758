"""Outputs: strict JSON everywhere, and files and directories that are whole or absent, whatever kills, races or fails."""

import errno
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import torch

from lorp_lightning._io import (
    OutputBusyError,
    OutputDirectory,
    OutputError,
    remove_stale_staging,
    to_json,
    write_json,
    write_jsonl,
)


def test_non_finite_floats_are_null_and_scalars_plain():
    value = {
        "ppl": math.inf,
        "stderr": float("nan"),
        "low": -math.inf,
        "steps": np.int64(3),
        "loss": torch.tensor(2.5),
        "pair": (1, np.float32(0.5)),
        7: "seven",
    }
    text = to_json(value)
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"ppl": None, "stderr": None, "low": None, "steps": 3, "loss": 2.5, "pair": [1, 0.5], "7": "seven"}


def test_write_json_and_jsonl_are_strict(tmp_path):
    write_json(tmp_path / "a.json", {"x": [1.0, math.nan]})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": [1.0, None]}
    write_jsonl(tmp_path / "b.jsonl", [{"x": math.inf}, {"x": 2}])
    assert [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()] == [{"x": None}, {"x": 2}]


def test_a_failed_write_leaves_the_earlier_file_and_no_temporary(tmp_path):
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [{"n": 1}])

    def rows():
        yield {"n": 2}
        raise RuntimeError("the source failed half-way")

    with pytest.raises(RuntimeError, match="half-way"):
        write_jsonl(path, rows())
    assert path.read_text() == '{"n": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]


def test_an_output_directory_appears_whole_or_not_at_all(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(FileExistsError, match="the output directory .*out exists"):
        final.mkdir()
        OutputDirectory(final, overwrite=False)
    (final / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt), OutputDirectory(final, overwrite=True) as out:
        (out.path / "new.txt").write_text("new")
        raise KeyboardInterrupt
    assert sorted(p.name for p in final.iterdir()) == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with OutputDirectory(final, overwrite=True) as out:
        (out.path / "new.txt").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]


def test_abandoning_inside_the_block_commits_nothing_and_keeps_the_earlier_directory(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with OutputDirectory(final, overwrite=True) as out:
        (out.path / "new.txt").write_text("new")
        out.abandon()  # not wanted after all: the block ends normally, without a commit
    assert sorted(p.name for p in final.iterdir()) == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# --------------------------------------------------------------------------- faults: kills, races, failing disks

_WRITER = """
import sys, time
from pathlib import Path
from lorp_lightning._io import OutputDirectory
with OutputDirectory(sys.argv[1], overwrite=True) as out:
    (out.path / "part.txt").write_text("half")
    print(out.path.name, flush=True)
    time.sleep(float(sys.argv[2]))
    (out.path / "rest.txt").write_text("whole")
"""


def _writer(final, seconds):
    """A process writing ``final`` through OutputDirectory, stopped in the middle for ``seconds``; its staging name."""
    process = subprocess.Popen([sys.executable, "-c", _WRITER, str(final), str(seconds)], stdout=subprocess.PIPE, text=True)
    return process, process.stdout.readline().strip()


def test_a_killed_writer_leaves_its_staging_folder_named_by_its_owner_and_the_next_writer_removes_it(tmp_path):
    final = tmp_path / "killed"
    process, staging = _writer(final, 60)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert staging == f".killed.lorp-staging.{process.pid}@{socket.gethostname()}.{staging.rsplit('.', 1)[1]}"
    assert (tmp_path / staging / "part.txt").read_text() == "half"  # SIGKILL runs no cleanup: it stays
    with OutputDirectory(final, overwrite=False) as out:
        (out.path / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed"]
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]


def test_a_live_writer_is_never_disturbed_and_a_second_writer_of_the_same_output_is_refused(tmp_path):
    final = tmp_path / "out"
    process, staging = _writer(final, 3)
    with pytest.raises(OutputBusyError, match=re.escape(f"another process is writing the output directory {final}")):
        OutputDirectory(final, overwrite=True)
    assert remove_stale_staging(final) == [] and (tmp_path / staging / "part.txt").exists()  # its owner lives
    assert process.wait() == 0
    assert sorted(p.name for p in final.iterdir()) == ["part.txt", "rest.txt"]  # one whole output, the winner's
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_waiting_writer_goes_after_the_live_one_and_sees_its_output(tmp_path):
    final = tmp_path / "cache-entry"
    process, _ = _writer(final, 2)
    with OutputDirectory(final, overwrite=True, wait=True) as out:
        assert (final / "rest.txt").read_text() == "whole"  # the lock came only once the first writer had committed
        out.abandon()
    assert process.wait() == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache-entry"]


def test_a_staging_folder_of_another_host_or_of_a_live_process_is_kept(tmp_path):
    final = tmp_path / "out"
    foreign = tmp_path / ".out.lorp-staging.12345@some-other-host.abcdefgh"
    mine = tmp_path / f".out.lorp-staging.{os.getpid()}@{socket.gethostname()}.abcdefgh"
    unrelated = tmp_path / ".out-abcdefgh"  # no owner recorded (written before owners were): not ours to judge
    for folder in (foreign, mine, unrelated):
        folder.mkdir()
    assert remove_stale_staging(final) == []
    assert {foreign, mine, unrelated} <= set(tmp_path.iterdir())


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_write_that_fails_on_the_disk_names_the_output_and_the_cause_and_leaves_the_earlier_one(tmp_path, code):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(OutputError, match=re.escape(f"could not write the output directory {final}: {os.strerror(code)}")):
        with OutputDirectory(final, overwrite=True) as out:
            with open(out.path / "model.safetensors", "wb") as f:
                f.write(b"0" * 10)
                raise OSError(code, os.strerror(code), str(out.path / "model.safetensors"))  # what a full disk raises
    assert sorted(p.name for p in final.iterdir()) == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder, no lock file


def test_a_staging_folder_that_cannot_be_made_is_an_output_error_and_releases_the_lock(tmp_path, monkeypatch):
    def read_only(**kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), kwargs["dir"])

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    with pytest.raises(OutputError, match=re.escape(f"{tmp_path / 'out'}: Read-only file system")):
        OutputDirectory(tmp_path / "out", overwrite=False)
    monkeypatch.undo()
    with OutputDirectory(tmp_path / "out", overwrite=False):  # the lock was released
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_folder_where_not_even_the_lock_can_be_made_is_an_output_error_naming_the_output(tmp_path, monkeypatch):
    real_open = os.open

    def read_only(path, *args, **kwargs):
        if str(path).endswith(".lorp-lock"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(OutputError, match=re.escape(f"could not write the output directory {tmp_path / 'out'}: Read-only")):
        OutputDirectory(tmp_path / "out", overwrite=False)
    with pytest.raises(OutputError, match=re.escape(f"could not write the file {tmp_path / 'a.json'}: Read-only")):
        write_json(tmp_path / "a.json", {})
    assert list(tmp_path.iterdir()) == []


def test_a_file_whose_write_fails_on_the_disk_is_an_output_error_leaving_the_earlier_file(tmp_path):
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [{"n": 1}])

    def rows():
        yield {"n": 2}
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OutputError, match=re.escape(f"could not write the file {path}: No space left on device")):
        write_jsonl(path, rows())
    assert path.read_text() == '{"n": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]
