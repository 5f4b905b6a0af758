"""Outputs: strict JSON everywhere, and files and directories that are whole or absent."""

import json
import math

import numpy as np
import pytest
import torch

from lorp_lightning._io import OutputDirectory, to_json, write_json, write_jsonl


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
