"""prune_checkpoint and `lorp apply`: pruning a checkpoint on disk, tensor by tensor, without loading it.

The reference is in-memory pruning: ``prune_layers`` of the same model, saved with
``save_pretrained``. The models are the small random models of test_surgery.py, one per family
of the architecture table, saved in shards of 100 KB (about ten shards each).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file
from test_surgery import FAMILIES, PRUNED, SECOND, VOCAB, N, Plan, build, logits
from transformers import AutoModelForCausalLM

from lorp_lightning import checkpoint as checkpoint_module
from lorp_lightning import prune_checkpoint
from lorp_lightning.cli import main
from lorp_lightning.selection import PruningPlan
from lorp_lightning.surgery import prune_layers, pruned_config, pruning_record

SHARD = "100KB"
INDEX = "model.safetensors.index.json"


def saved(family: str, directory: Path, max_shard_size: str | None = SHARD) -> Path:
    """The family's small model saved in ``directory`` (sharded unless max_shard_size is None)."""
    model = build(family)
    if max_shard_size is None:
        model.save_pretrained(directory)
    else:
        model.save_pretrained(directory, max_shard_size=max_shard_size)
    return directory


def in_memory(family: str, directory: Path, *steps) -> Path:
    """The reference: the family's model pruned by ``prune_layers`` (once per step), saved in ``directory``."""
    model = build(family)
    for step in steps:
        model = prune_layers(model, step)
    model.save_pretrained(directory, max_shard_size=SHARD)
    return directory


def load(directory: Path):
    """``AutoModelForCausalLM.from_pretrained``, checked to find every weight it expects and no other."""
    model, info = AutoModelForCausalLM.from_pretrained(directory, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def contents(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def json_of(path: Path) -> dict:
    return json.loads(path.read_text())


def shard_names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.safetensors"))


def assert_same_weights(a, b) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert list(state_a) == list(state_b)
    for name, tensor in state_a.items():
        assert torch.equal(tensor, state_b[name]), name


every_family = pytest.mark.parametrize("family", list(FAMILIES))


# --------------------------------------------------------------------------- the result, for every family


@every_family
def test_the_pruned_checkpoint_equals_in_memory_pruning_saved_in_tensors_config_index_and_logits(family, tmp_path):
    checkpoint = saved(family, tmp_path / "checkpoint")
    assert len(shard_names(checkpoint)) >= 3
    out = prune_checkpoint(PRUNED, checkpoint, tmp_path / "pruned")
    assert out == tmp_path / "pruned"
    reference = in_memory(family, tmp_path / "in-memory", PRUNED)

    assert json_of(out / "config.json") == json_of(reference / "config.json")
    assert json_of(out / INDEX)["metadata"] == json_of(reference / INDEX)["metadata"]  # total_size, total_parameters
    assert sorted(json_of(out / INDEX)["weight_map"]) == sorted(json_of(reference / INDEX)["weight_map"])
    pruned, expected = load(out), load(reference)
    assert_same_weights(pruned, expected)
    torch.testing.assert_close(logits(pruned), logits(prune_layers(build(family), PRUNED)), rtol=0, atol=1e-6)


@pytest.mark.parametrize("copy_bytes", [16 * 2**20, 100])  # whole rows of the table at a time, or each kept range in pieces
def test_per_block_tables_outside_the_blocks_keep_the_kept_blocks_slices_on_disk_as_in_memory(copy_bytes, tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint_module, "_COPY_BYTES", copy_bytes)
    checkpoint = tmp_path / "checkpoint"
    build("gemma4_text").save_pretrained(checkpoint, max_shard_size=SHARD)  # with Gemma 4's per-layer input tables
    out = prune_checkpoint([1, 4], checkpoint, tmp_path / "pruned")
    reference = tmp_path / "in-memory"
    prune_layers(build("gemma4_text"), [1, 4]).save_pretrained(reference, max_shard_size=SHARD)
    assert json_of(out / INDEX)["metadata"] == json_of(reference / INDEX)["metadata"]
    pruned, expected = load(out), load(reference)
    assert pruned.model.embed_tokens_per_layer.weight.shape == (VOCAB, 4 * 8)
    assert_same_weights(pruned, expected)
    assert torch.equal(logits(pruned), logits(expected))


@every_family
def test_pruned_config_is_the_config_prune_layers_gives_and_leaves_its_argument_as_it_was(family):
    config = build(family).config
    before = config.to_dict()
    assert pruned_config(config, PRUNED).to_dict() == prune_layers(build(family), PRUNED).config.to_dict()
    assert config.to_dict() == before


def test_the_checkpoint_is_only_read(tmp_path):
    checkpoint = saved("gemma3_text", tmp_path / "checkpoint")
    before = contents(checkpoint)
    prune_checkpoint(PRUNED, checkpoint, tmp_path / "pruned")
    assert contents(checkpoint) == before


@pytest.mark.parametrize("family", ["llama", "gemma3"])  # gemma3: its blocks are named otherwise on disk
def test_pruning_the_output_again_composes_the_record_like_pruning_twice_in_memory(family, tmp_path):
    first = prune_checkpoint(PRUNED, saved(family, tmp_path / "checkpoint"), tmp_path / "once")
    twice = prune_checkpoint(Plan(pruned=SECOND, num_layers=N - len(PRUNED)), first, tmp_path / "twice")
    assert pruning_record(transformers.AutoConfig.from_pretrained(twice)) == {
        "original_num_layers": N,
        "pruned_layers": [1, 2, 4],
        "steps": [
            {"method": None, "pruned_layers": [1, 2], "rls": None, "num_clusters": None},
            {"method": "lorp", "pruned_layers": [4], "rls": 0.625, "num_clusters": 3},
        ],
    }
    reference = in_memory(family, tmp_path / "in-memory", PRUNED, Plan(pruned=SECOND, num_layers=N - len(PRUNED)))
    assert json_of(twice / "config.json") == json_of(reference / "config.json")
    assert_same_weights(load(twice), load(reference))


# --------------------------------------------------------------------------- the files


def test_every_output_shard_loads_with_safetensors_and_holds_exactly_the_tensors_the_index_gives_it(tmp_path):
    out = prune_checkpoint(PRUNED, saved("llama", tmp_path / "checkpoint"), tmp_path / "pruned")
    index = json_of(out / INDEX)
    assert sorted(set(index["weight_map"].values())) == shard_names(out)
    total = 0
    for name in shard_names(out):
        with safe_open(out / name, framework="pt") as file:
            assert sorted(file.keys()) == sorted(k for k, v in index["weight_map"].items() if v == name)
            assert file.metadata() == {"format": "pt"}
        total += sum(t.nbytes for t in load_file(out / name).values())
    assert index["metadata"]["total_size"] == total
    assert not any(re.match(r"model\.layers\.[4-9]\.", k) for k in index["weight_map"])  # 6 - 2 blocks: 0..3


def test_a_shard_that_held_only_removed_blocks_is_dropped_and_the_shards_are_renumbered(tmp_path):
    checkpoint = saved("llama", tmp_path / "checkpoint")
    out = prune_checkpoint(PRUNED, checkpoint, tmp_path / "pruned")
    count = len(shard_names(out))
    assert count < len(shard_names(checkpoint))
    assert shard_names(out) == [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def test_a_single_file_checkpoint_is_pruned_into_a_single_file_without_an_index(tmp_path):
    out = prune_checkpoint(PRUNED, saved("qwen2", tmp_path / "checkpoint", max_shard_size=None), tmp_path / "pruned")
    assert shard_names(out) == ["model.safetensors"] and not (out / INDEX).exists()
    assert_same_weights(load(out), prune_layers(build("qwen2"), PRUNED))


def test_tied_embeddings_stay_out_of_the_checkpoint_and_are_tied_again_after_loading(tmp_path):
    checkpoint = saved("gemma", tmp_path / "checkpoint")  # gemma ties lm_head to the embeddings
    assert "lm_head.weight" not in json_of(checkpoint / INDEX)["weight_map"]
    out = prune_checkpoint(PRUNED, checkpoint, tmp_path / "pruned")
    assert "lm_head.weight" not in json_of(out / INDEX)["weight_map"]
    pruned = load(out)
    assert pruned.lm_head.weight.data_ptr() == pruned.model.embed_tokens.weight.data_ptr()
    torch.testing.assert_close(logits(pruned), logits(prune_layers(build("gemma"), PRUNED)), rtol=0, atol=1e-6)


def test_the_tokenizer_generation_config_and_other_files_are_copied_byte_for_byte(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    checkpoint = saved("llama", tmp_path / "checkpoint")
    word_level = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="[UNK]").save_pretrained(checkpoint)
    (checkpoint / "README.md").write_text("a model card\n")
    out = prune_checkpoint(PRUNED, checkpoint, tmp_path / "pruned")
    others = ["README.md", "generation_config.json", "tokenizer.json", "tokenizer_config.json"]
    assert sorted(set(contents(checkpoint)) - {"config.json", INDEX, *shard_names(checkpoint)}) == others
    for name in others:
        assert (out / name).read_bytes() == (checkpoint / name).read_bytes()
    assert transformers.AutoTokenizer.from_pretrained(out)("a b")["input_ids"] == [1, 2]


def test_weights_in_other_formats_and_folders_are_left_out_with_a_warning_naming_them(tmp_path):
    checkpoint = saved("llama", tmp_path / "checkpoint")
    torch.save(build("llama").state_dict(), checkpoint / "pytorch_model.bin")
    (checkpoint / "original").mkdir()
    (checkpoint / "original" / "consolidated.00.pth").write_bytes(b"unpruned")
    with pytest.warns(UserWarning, match=r"leaves out of the pruned checkpoint original/, pytorch_model.bin from"):
        out = prune_checkpoint(PRUNED, checkpoint, tmp_path / "pruned")
    assert not (out / "pytorch_model.bin").exists() and not (out / "original").exists()


def test_tensors_larger_than_the_copy_buffer_are_copied_in_pieces_exactly(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint_module, "_COPY_BYTES", 1000)  # the embeddings are 32 KB
    out = prune_checkpoint(PRUNED, saved("llama", tmp_path / "checkpoint"), tmp_path / "pruned")
    assert_same_weights(load(out), prune_layers(build("llama"), PRUNED))


def test_overwrite_replaces_an_existing_output_directory(tmp_path):
    (tmp_path / "pruned").mkdir()
    (tmp_path / "pruned" / "old.txt").write_text("old")
    out = prune_checkpoint(PRUNED, saved("llama", tmp_path / "checkpoint"), tmp_path / "pruned", overwrite=True)
    assert not (out / "old.txt").exists() and (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint", "pruned"]


# --------------------------------------------------------------------------- plans


def lorp_prune_report(path: Path, plan: PruningPlan) -> Path:
    """A report.json as `lorp prune` writes it (the parts that matter here)."""
    path.mkdir()
    (path / "report.json").write_text(json.dumps({"command": "prune", "model": "m", "plan": plan.to_dict()}))
    return path / "report.json"


PLAN = PruningPlan(method="lorp", num_layers=N, pruned=[1, 2], kept=[0, 3, 4, 5], protected=[0, 5], rls=0.5, num_clusters=2)


@pytest.mark.parametrize("form", ["the report.json of lorp prune", "the output directory of lorp prune", "a plan.json"])
def test_a_saved_plan_is_read_from_the_report_of_lorp_prune_its_directory_or_a_plan_json(form, tmp_path):
    report = lorp_prune_report(tmp_path / "prune-output", PLAN)
    (tmp_path / "plan.json").write_text(PLAN.to_json())
    plan = {
        "the report.json of lorp prune": report,
        "the output directory of lorp prune": report.parent,
        "a plan.json": tmp_path / "plan.json",
    }[form]
    out = prune_checkpoint(str(plan), saved("llama", tmp_path / "checkpoint"), tmp_path / "pruned")
    assert pruning_record(transformers.AutoConfig.from_pretrained(out))["steps"] == [
        {"method": "lorp", "pruned_layers": [1, 2], "rls": 0.5, "num_clusters": 2}
    ]


# --------------------------------------------------------------------------- bad input: a clear error, nothing written


def _bloom(checkpoint: Path, tmp_path: Path) -> dict:
    for path in checkpoint.iterdir():
        path.unlink()
    config = transformers.BloomConfig(vocab_size=VOCAB, hidden_size=64, n_layer=4, n_head=4)
    transformers.BloomForCausalLM(config).save_pretrained(checkpoint)
    return {}


def _only_pytorch_weights(checkpoint: Path, tmp_path: Path) -> dict:
    for path in [checkpoint / INDEX, *checkpoint.glob("*.safetensors")]:
        path.unlink()
    torch.save(build("llama").state_dict(), checkpoint / "pytorch_model.bin")
    return {}


def _missing_shard(checkpoint: Path, tmp_path: Path) -> dict:
    (checkpoint / "model-00003-of-00011.safetensors").unlink()
    return {}


def _edit_index(change):
    def setup(checkpoint: Path, tmp_path: Path) -> dict:
        index = json_of(checkpoint / INDEX)
        change(index["weight_map"])
        (checkpoint / INDEX).write_text(json.dumps(index))
        return {}

    return setup


def _config_depth(checkpoint: Path, tmp_path: Path) -> dict:
    config = json_of(checkpoint / "config.json")
    (checkpoint / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 8}))
    return {}


def _truncated_shard(checkpoint: Path, tmp_path: Path) -> dict:
    shard = checkpoint / "model-00002-of-00011.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    return {}


def _existing_out(checkpoint: Path, tmp_path: Path) -> dict:
    (tmp_path / "pruned").mkdir()
    (tmp_path / "pruned" / "mine.txt").write_text("keep me")
    return {}


def _analyze_report(checkpoint: Path, tmp_path: Path) -> dict:
    (tmp_path / "analysis").mkdir()
    (tmp_path / "analysis" / "report.json").write_text(json.dumps({"command": "analyze", "statistics": {"rls": 0.5}}))
    return {"plan_or_blocks": str(tmp_path / "analysis" / "report.json")}


BAD_INPUT = [  # (what, setup -> arguments replaced, exception, message)
    (
        "a plan for another depth",
        lambda c, t: {"plan_or_blocks": Plan(pruned=[1], num_layers=N + 1)},
        ValueError,
        rf"plan.num_layers={N + 1} blocks, but this model has {N}",
    ),
    (
        "a block out of range",
        lambda c, t: {"plan_or_blocks": [1, N]},
        ValueError,
        rf"plan_or_blocks=\[1, {N}\] holds {N}, out of range",
    ),
    (
        "blocks of another type",
        lambda c, t: {"plan_or_blocks": {1, 2}},
        TypeError,
        r"plan_or_blocks must be a list or tuple .* got set",
    ),
    (
        "a plan file that does not exist",
        lambda c, t: {"plan_or_blocks": "1,2"},
        FileNotFoundError,
        r"plan_or_blocks='1,2' is not a file",
    ),
    (
        "the report of lorp analyze",
        _analyze_report,
        ValueError,
        r"plan_or_blocks='.*report.json' is the report of `lorp analyze`, which holds statistics but no plan",
    ),
    (
        "a missing checkpoint",
        lambda c, t: {"checkpoint_dir": t / "nowhere"},
        FileNotFoundError,
        r"checkpoint_dir='.*nowhere' does not exist",
    ),
    (
        "a missing shard",
        _missing_shard,
        FileNotFoundError,
        r"the shard 'model-00003-of-00011.safetensors', named in the weight_map of '.*index.json', is missing from checkpoint_dir=",
    ),
    (
        "a tensor in the index missing from its shard",
        _edit_index(lambda m: m.update({"model.layers.0.extra.weight": m["model.norm.weight"]})),
        ValueError,
        r"puts the tensor 'model.layers.0.extra.weight' in 'model-000\d\d-of-00011.safetensors', which does not hold it",
    ),
    (
        "a shard tensor not in the index",
        _edit_index(lambda m: m.pop("model.norm.weight")),
        ValueError,
        r"the shard 'model-000\d\d-of-00011.safetensors' holds the tensor 'model.norm.weight', which the index",
    ),
    ("a damaged shard", _truncated_shard, ValueError, r"the safetensors file '.*model-00002-of-00011.safetensors' is damaged"),
    (
        "a config of another depth",
        _config_depth,
        ValueError,
        r"config.json says num_hidden_layers=8, but the weights hold 6 blocks under 'model.layers'",
    ),
    (
        "only pytorch_model.bin",
        _only_pytorch_weights,
        ValueError,
        r"checkpoint_dir='.*' holds PyTorch weights only \(pytorch_model.bin\); only safetensors checkpoints can be pruned",
    ),
    (
        "an architecture not in the table",
        _bloom,
        NotImplementedError,
        r"model_type='bloom'.*ARCHITECTURES in lorp_lightning/architectures.py",
    ),
    ("an existing out_dir without overwrite", _existing_out, FileExistsError, r"out_dir='.*pruned' exists; pass overwrite=True"),
    (
        "out_dir the checkpoint itself",
        lambda c, t: {"out_dir": c, "overwrite": True},
        ValueError,
        r"out_dir='.*checkpoint' is checkpoint_dir=",
    ),
    (
        "out_dir inside the checkpoint",
        lambda c, t: {"out_dir": c / "pruned"},
        ValueError,
        r"out_dir='.*pruned' is inside checkpoint_dir=",
    ),
]


@pytest.mark.parametrize("what, setup, exception, message", BAD_INPUT, ids=[case[0] for case in BAD_INPUT])
def test_bad_input_is_an_error_naming_the_parameter_and_value_and_nothing_is_written(what, setup, exception, message, tmp_path):
    checkpoint = saved("llama", tmp_path / "checkpoint")
    assert len(shard_names(checkpoint)) == 11
    arguments = {"plan_or_blocks": PRUNED, "checkpoint_dir": checkpoint, "out_dir": tmp_path / "pruned", "overwrite": False}
    arguments.update(setup(checkpoint, tmp_path))
    before = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    with pytest.raises(exception, match=message):
        prune_checkpoint(**arguments)
    assert {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()} == before
    assert not [p for p in tmp_path.rglob(".*")]  # no temporary folder left behind


def test_a_failure_while_writing_leaves_no_output_and_an_overwritten_directory_as_it_was(tmp_path, monkeypatch):
    checkpoint = saved("llama", tmp_path / "checkpoint")
    (tmp_path / "pruned").mkdir()
    (tmp_path / "pruned" / "mine.txt").write_text("keep me")
    calls = []

    def failing(*args):
        calls.append(args)
        if len(calls) == 3:
            raise OSError("No space left on device")
        return write_shard(*args)

    write_shard = checkpoint_module._write_shard
    monkeypatch.setattr(checkpoint_module, "_write_shard", failing)
    with pytest.raises(OSError, match="No space left on device"):
        prune_checkpoint(PRUNED, checkpoint, tmp_path / "pruned", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint", "pruned"]
    assert contents(tmp_path / "pruned") == {"mine.txt": b"keep me"}


# --------------------------------------------------------------------------- lorp apply


def test_lorp_apply_removes_the_blocks_given_as_a_comma_separated_list(tmp_path, capsys):
    checkpoint = saved("llama", tmp_path / "checkpoint")
    assert main(["apply", "1,2", str(checkpoint), "--out", str(tmp_path / "pruned")]) == 0
    printed = capsys.readouterr().out
    assert f"removed blocks [1, 2] (original numbering) of {checkpoint}: 4 of 6 blocks remain" in printed
    assert_same_weights(load(tmp_path / "pruned"), prune_layers(build("llama"), PRUNED))


def test_lorp_apply_replaces_the_checkpoints_card_with_one_for_the_pruned_model(tmp_path):
    checkpoint = saved("llama", tmp_path / "checkpoint")
    (checkpoint / "README.md").write_text("---\nlicense: mit\nbase_model: org/base\n---\n# The dense model\n")
    assert main(["apply", "1,2", str(checkpoint), "--out", str(tmp_path / "pruned")]) == 0
    card = (tmp_path / "pruned" / "README.md").read_text()
    assert "base_model: org/base\nlicense: mit\n" in card and "# The dense model" not in card
    assert "- removed blocks [1, 2] (numbered in the original model), given by hand" in card
    assert f"lorp apply 1,2 {checkpoint} --out {tmp_path / 'pruned'}" in card
    assert (checkpoint / "README.md").read_text().endswith("# The dense model\n")  # the source is left as it was


def test_lorp_apply_reads_the_plan_from_the_report_of_lorp_prune(tmp_path):
    report = lorp_prune_report(tmp_path / "prune-output", PLAN)
    assert main(["apply", str(report), str(saved("llama", tmp_path / "checkpoint")), "--out", str(tmp_path / "pruned")]) == 0
    assert pruning_record(transformers.AutoConfig.from_pretrained(tmp_path / "pruned"))["pruned_layers"] == [1, 2]


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["1,6", "CHECKPOINT", "--out", "OUT"],
            "lorp apply: error: PLAN: plan_or_blocks=[1, 6] holds 6, out of range for a model of 6 blocks",
        ),
        (["1,2", "NOWHERE", "--out", "OUT"], "lorp apply: error: CHECKPOINT_DIR: checkpoint_dir='NOWHERE' does not exist"),
        (
            ["1,2", "CHECKPOINT", "--out", "CHECKPOINT", "--overwrite"],
            "lorp apply: error: --out: out_dir='CHECKPOINT' is checkpoint_dir=",
        ),
    ],
)
def test_lorp_apply_bad_input_is_one_line_naming_the_argument_with_exit_status_2_and_writes_nothing(
    argv, message, tmp_path, capsys
):
    checkpoint = saved("llama", tmp_path / "checkpoint")
    names = {"CHECKPOINT": str(checkpoint), "NOWHERE": str(tmp_path / "nowhere"), "OUT": str(tmp_path / "pruned")}
    message = message.replace("NOWHERE", names["NOWHERE"]).replace("CHECKPOINT'", f"{checkpoint}'")
    capsys.readouterr()
    assert main(["apply", *[names.get(a, a) for a in argv]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_lorp_apply_refuses_an_existing_out_without_overwrite_and_replaces_it_with_overwrite(tmp_path, capsys):
    checkpoint = saved("llama", tmp_path / "checkpoint")
    (tmp_path / "pruned").mkdir()
    argv = ["apply", "1,2", str(checkpoint), "--out", str(tmp_path / "pruned")]
    capsys.readouterr()
    assert main(argv) == 2
    assert f"the output directory {tmp_path / 'pruned'} exists; pass --overwrite to replace it" in capsys.readouterr().err
    assert list((tmp_path / "pruned").iterdir()) == []
    assert main([*argv, "--overwrite"]) == 0
    assert (tmp_path / "pruned" / "config.json").is_file()
