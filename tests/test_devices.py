"""Where a model computes: ``load_model(device=...)`` and ``--device`` take cpu, cuda, cuda:N and
auto (accelerate's ``device_map="auto"``); a model placed by accelerate prunes, saves, reloads and
generates like any other, and one accelerate had to offload is refused without being changed.

Without a GPU, ``auto`` loads the model onto the CPU (transformers sets no ``hf_device_map``
for a single device); a model dispatched by accelerate's own ``dispatch_model`` (hooks on every
block, as across GPUs) prunes with its map renumbered; and the only split between two places
that accelerate makes without a GPU is cpu + disk, an offload, which pruning refuses. The test across two GPUs runs where two are
visible (``benchmarks/performance/gpu_check.sh`` runs it).
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from lorp_lightning.assets import check_device, compute_device, load_model
from lorp_lightning.cli import main
from lorp_lightning.surgery import prune_layers, pruning_record

BLOCKS = 4


@pytest.fixture(scope="module")
def tiny_dir(smollm2, tmp_path_factory):
    """A tiny random llama with SmolLM2's tokenizer, saved as a Hugging Face model directory."""
    _, tokenizer = smollm2
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=BLOCKS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    path = tmp_path_factory.mktemp("tiny") / "model"
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


IDS = torch.tensor([[1, 17, 300, 4000, 25, 9, 711, 12]])


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def generates_alike_with_its_cache_and_reloads(model, tmp_path):
    """Greedy generation with the KV cache equals it without; the model saved and reloaded by plain transformers."""
    with torch.no_grad():
        cached = model.generate(IDS, max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = model.generate(IDS, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    model.save_pretrained(tmp_path / "pruned")
    return AutoModelForCausalLM.from_pretrained(tmp_path / "pruned", dtype=torch.float32)


def test_check_device_accepts_cpu_auto_and_cuda_forms():
    assert check_device("cpu") == "cpu"
    assert check_device(torch.device("cpu")) == "cpu"
    assert check_device("auto") == "auto"
    assert compute_device("cpu") == "cpu"
    assert compute_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "CPU", "cuda:", 0, None])
def test_a_bad_device_names_the_parameter_and_the_value(bad):
    with pytest.raises(
        ValueError,
        match=r"device must be 'cpu', 'cuda', 'cuda:N' \(N a GPU index\) or 'auto', got device="
        + repr(bad).replace("(", r"\(").replace(")", r"\)"),
    ):
        check_device(bad)


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_visible_gpu_is_refused_with_what_to_do_instead(device, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=rf"device='{device}', but no CUDA device is visible here .* use device='cpu'"):
        check_device(device)


def test_a_gpu_index_beyond_the_visible_ones_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"device='cuda:2', but only 2 CUDA device\(s\) are visible \(cuda:0\.\.cuda:1\)"):
        check_device("cuda:2")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what auto does where no GPU is visible")
def test_device_auto_without_a_gpu_loads_onto_the_cpu_and_the_model_prunes_saves_reloads_and_generates(tiny_dir, tmp_path):
    on_cpu, _ = load_model(tiny_dir, dtype=torch.float32, progress=False)
    placed, _ = load_model(tiny_dir, dtype=torch.float32, progress=False, device="auto")
    assert placed.device == torch.device("cpu")
    assert torch.equal(logits(placed), logits(on_cpu))

    prune_layers(placed, [1, 2])
    prune_layers(on_cpu, [1, 2])
    assert torch.equal(logits(placed), logits(on_cpu))
    reloaded = generates_alike_with_its_cache_and_reloads(placed, tmp_path)
    assert reloaded.config.num_hidden_layers == BLOCKS - 2
    assert pruning_record(reloaded)["pruned_layers"] == [1, 2]
    assert torch.equal(logits(reloaded), logits(on_cpu))


def test_a_model_dispatched_by_accelerate_with_hooks_on_every_block_prunes_and_its_device_map_follows(tiny_dir, tmp_path):
    from accelerate import dispatch_model

    device_map = {
        "model.embed_tokens": "cpu",
        "model.rotary_emb": "cpu",
        "model.norm": "cpu",
        "lm_head": "cpu",
        **{f"model.layers.{i}": "cpu" for i in range(BLOCKS)},
    }
    reference, _ = load_model(tiny_dir, dtype=torch.float32, progress=False)
    dispatched, _ = load_model(tiny_dir, dtype=torch.float32, progress=False)
    dispatched = dispatch_model(dispatched, device_map, force_hooks=True)  # accelerate's hooks, as across GPUs
    assert all(hasattr(block, "_hf_hook") for block in dispatched.model.layers)

    prune_layers(dispatched, [1, 2])
    prune_layers(reference, [1, 2])
    assert dispatched.hf_device_map == {
        "model.embed_tokens": "cpu",
        "model.rotary_emb": "cpu",
        "model.norm": "cpu",
        "lm_head": "cpu",
        "model.layers.0": "cpu",
        "model.layers.1": "cpu",
    }
    assert torch.equal(logits(dispatched), logits(reference))
    reloaded = generates_alike_with_its_cache_and_reloads(dispatched, tmp_path)
    assert torch.equal(logits(reloaded), logits(reference))


def test_a_model_accelerate_split_between_cpu_and_disk_is_refused_and_keeps_computing(tiny_dir, tmp_path):
    device_map = {
        "model.embed_tokens": "cpu",
        "model.rotary_emb": "cpu",
        "model.norm": "cpu",
        "lm_head": "cpu",
        **{f"model.layers.{i}": "cpu" if i < 2 else "disk" for i in range(BLOCKS)},
    }
    reference, _ = load_model(tiny_dir, dtype=torch.float32, progress=False)
    split = AutoModelForCausalLM.from_pretrained(
        tiny_dir, dtype=torch.float32, device_map=device_map, offload_folder=str(tmp_path / "offload")
    )
    assert set(split.hf_device_map.values()) == {"cpu", "disk"}
    before = logits(split)
    assert torch.allclose(before, logits(reference), atol=1e-6)
    with pytest.raises(ValueError, match=r"cannot prune a model whose weights accelerate offloads"):
        prune_layers(split, [1])
    assert len(split.model.layers) == BLOCKS and pruning_record(split) is None
    assert torch.equal(logits(split), before)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two visible GPUs")
def test_a_model_spread_over_two_gpus_prunes_and_generates_with_its_cache(tiny_dir):  # pragma: no cover - GPU only
    half = BLOCKS // 2
    device_map = {
        "model.embed_tokens": 0,
        "model.rotary_emb": 0,
        "model.norm": 1,
        "lm_head": 1,
        **{f"model.layers.{i}": 0 if i < half else 1 for i in range(BLOCKS)},
    }
    spread = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32, device_map=device_map)
    reference, _ = load_model(tiny_dir, dtype=torch.float32, progress=False)
    prune_layers(spread, [1, half])
    prune_layers(reference, [1, half])
    assert spread.hf_device_map["model.layers.0"] == 0 and spread.hf_device_map[f"model.layers.{BLOCKS - 3}"] == 1
    with torch.no_grad():
        got = spread(IDS.to("cuda:0")).logits.cpu()
        cached = spread.generate(IDS.to("cuda:0"), max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = spread.generate(IDS.to("cuda:0"), max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.allclose(got, logits(reference), atol=1e-4)
    assert torch.equal(cached, uncached)


def test_heal_refuses_a_model_spread_over_several_devices_before_training(tiny_dir):
    pytest.importorskip("peft")
    from lorp_lightning.healing import heal

    model, tokenizer = load_model(tiny_dir, dtype=torch.float32, progress=False)
    prune_layers(model, [1])
    model.hf_device_map = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 1, "model.layers.2": 1}
    with pytest.raises(ValueError, match=r"heal\(\) trains on one device, but the model is spread over \['0', '1'\]"):
        heal(model, tokenizer, steps=1)


def test_the_command_line_refuses_a_bad_device_in_one_line_naming_the_flag(capsys):
    assert main(["analyze", "--device", "gpu", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert (
        "lorp analyze: error: --device: device must be 'cpu', 'cuda', 'cuda:N' (N a GPU index) or 'auto', got device='gpu'" in err
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU placement of --device auto")
def test_the_command_line_runs_with_device_auto_and_reports_it(tiny_dir, tmp_path):
    out = tmp_path / "analysis"
    args = [
        "analyze",
        str(tiny_dir),
        "--device",
        "auto",
        "--dtype",
        "float32",
        "--windows",
        "2",
        "--window",
        "32",
        "--batch-size",
        "2",
        "--quiet",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["device"] == "auto" and report["statistics"]["num_layers"] == BLOCKS
