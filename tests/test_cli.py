"""The `lorp` command line, run for real on SmolLM2 with small budgets."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from lorp_lightning.cli import build_parser, main

SMALL = ["--windows", "4", "--window", "128", "--batch-size", "2", "--quiet"]
SMALL_EVAL = ["--eval-windows", "2", "--speed-repeats", "1", "--prompt-tokens", "64", "--new-tokens", "8"]


def test_analyze_writes_reloadable_stats_a_report_and_a_heatmap(tmp_path, capsys):
    from lorp_lightning import LayerStats, select_layers

    out = tmp_path / "analysis"
    assert main(["analyze", "smollm2-135m", *SMALL, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "similarity.png", "stats.pt"]
    stats = LayerStats.load(out / "stats.pt")
    report = json.loads((out / "report.json").read_text())
    plan = select_layers(stats, 1)
    assert stats.num_layers == 30 and stats.num_tokens == 4 * 128
    assert report["statistics"]["rls"] == plan.rls
    assert report["statistics"]["num_clusters"] == plan.num_clusters
    assert report["statistics"]["labels"] == plan.labels
    assert set(report["versions"]) == {"torch", "transformers", "lorp_lightning"}
    printed = capsys.readouterr().out
    assert f"RLS {plan.rls:.3f}  ->  K {plan.num_clusters}" in printed


def test_prune_saves_a_model_that_plain_transformers_reloads_and_reports_both_sides(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorp_lightning import LayerStats, select_layers
    from lorp_lightning.compensation import STRENGTHS, gap_factors

    analysis = tmp_path / "analysis"
    assert main(["analyze", *SMALL, "--out", str(analysis)]) == 0
    out = tmp_path / "pruned"
    code = main(
        [
            "prune",
            "--amount",
            "0.25",
            "--method",
            "shortgpt",
            "--stats",
            str(analysis / "stats.pt"),
            "--compensate",
            "--out",
            str(out),
            *SMALL,
            *SMALL_EVAL,
        ]
    )
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    stats = LayerStats.load(analysis / "stats.pt")
    expected = select_layers(stats, 0.25, method="shortgpt")
    assert report["plan"]["pruned"] == expected.pruned and len(expected.pruned) == 7
    compensation = report["plan"]["compensation"]  # its strength checked on the calibration windows, the factors folded in
    assert compensation["strength"] in STRENGTHS
    factors = gap_factors(stats.norms.tolist(), expected.pruned, compensation["strength"])
    assert compensation["factors"] == [{"block": b, "factor": pytest.approx(f)} for b, f in sorted(factors.items())]
    assert report["metrics"]["dense"]["num_layers"] == 30 and report["metrics"]["pruned"]["num_layers"] == 23
    for side in ("dense", "pruned"):
        metrics = report["metrics"][side]
        assert math.isfinite(metrics["perplexity"]) and metrics["perplexity"] > 1
        assert metrics["prefill_seconds"] > 0 and metrics["decode_tokens_per_second"] > 0 and metrics["peak_memory_mb"] > 0
    assert report["metrics"]["pruned"]["num_parameters"] < report["metrics"]["dense"]["num_parameters"]
    assert report["timings"]["calibration_seconds"] == 0.0  # statistics were reused, not recomputed

    reloaded = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert reloaded.config.num_hidden_layers == 23
    assert reloaded.config.lorp_pruning["pruned_layers"] == expected.pruned
    assert reloaded.config.lorp_pruning["steps"][-1]["compensation"] == compensation["factors"]
    ids = tokenizer("The history of the city", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.isfinite(reloaded(ids).logits).all()
    printed = capsys.readouterr().out
    assert "held-out perplexity" in printed and "ideal from matmul FLOPs" in printed

    # the model card: the Hub's header, then the base model, the plan, the data, the figures and the command
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: text-generation\n")
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct\nlicense: apache-2.0\n" in card
    assert f"removed blocks {expected.pruned} (numbered in the original model), chosen by `shortgpt`" in card
    assert "- calibration data: 4 windows of 128 tokens of `wiki` (its calibration split)" in card
    dense, pruned = report["metrics"]["dense"]["perplexity"], report["metrics"]["pruned"]["perplexity"]
    assert f"{pruned:.2f} pruned against {dense:.2f} dense" in card
    assert f"lorp prune --amount 0.25 --method shortgpt --stats {analysis / 'stats.pt'} --compensate --out {out}" in card


def test_prune_by_default_with_lorp_search_reuses_saved_statistics_and_checks_on_the_calibration_windows(tmp_path):
    from lorp_lightning import LayerStats, load_model, load_text, select_layers
    from lorp_lightning.evaluation import token_windows

    analysis = tmp_path / "analysis"
    assert main(["analyze", *SMALL, "--out", str(analysis)]) == 0
    out = tmp_path / "pruned"
    assert main(["prune", "--amount", "3", "--stats", str(analysis / "stats.pt"), "--out", str(out), *SMALL, *SMALL_EVAL]) == 0
    report = json.loads((out / "report.json").read_text())
    model, tokenizer = load_model("smollm2-135m", dtype=report["dtype"], progress=False)  # the dtype "auto" chose
    windows = token_windows(tokenizer, load_text("wiki", "calibration"), window=128, max_windows=4)
    expected = select_layers(LayerStats.load(analysis / "stats.pt"), 3, method="lorp_search", model=model, windows=windows)
    assert report["plan"]["method"] == "lorp_search"
    assert report["plan"]["pruned"] == expected.pruned
    assert [c["pruned"] for c in report["plan"]["candidates"]] == [c["pruned"] for c in expected.candidates]
    assert report["plan"]["cost"]["check_windows"] == expected.cost["check_windows"] > 0
    assert report["metrics"]["pruned"]["num_layers"] == 27


def test_prune_in_rounds_saves_the_plan_select_layers_chooses_in_rounds(tmp_path):
    from lorp_lightning import LayerStats, load_model, load_text, select_layers
    from lorp_lightning.evaluation import token_windows

    analysis = tmp_path / "analysis"
    assert main(["analyze", *SMALL, "--out", str(analysis)]) == 0
    out = tmp_path / "pruned"
    assert (
        main(
            [
                "prune",
                "--amount",
                "2",
                "--method",
                "shortgpt",
                "--rounds",
                "2",
                "--stats",
                str(analysis / "stats.pt"),
                "--out",
                str(out),
                *SMALL,
                *SMALL_EVAL,
            ]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    model, tokenizer = load_model("smollm2-135m", dtype=report["dtype"], progress=False)
    windows = token_windows(tokenizer, load_text("wiki", "calibration"), window=128, max_windows=4)
    expected = select_layers(LayerStats.load(analysis / "stats.pt"), 2, method="shortgpt", model=model, windows=windows, rounds=2)
    assert report["plan"]["pruned"] == expected.pruned
    assert [r["pruned"] for r in report["plan"]["rounds"]] == [r["pruned"] for r in expected.rounds]
    assert report["plan"]["cost"]["statistics_windows"] == 4 + 4  # the statistics of the second round: one more pass
    assert report["metrics"]["pruned"]["num_layers"] == 28


@pytest.mark.parametrize("dtype, expected", [(None, None), ("float32", "dtype: float32 (requested)")])
def test_a_command_says_once_which_dtype_it_computes_in_and_why(tmp_path, capsys, dtype, expected):
    from lorp_lightning.precision import choose_dtype

    out = tmp_path / "analysis"
    assert main(["analyze", *SMALL, "--out", str(out), *(["--dtype", dtype] if dtype else [])]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("dtype: ")]
    assert lines == [expected or str(choose_dtype("auto"))]  # the default is auto, decided by this CPU
    assert json.loads((out / "report.json").read_text())["dtype"] == (dtype or choose_dtype("auto").name)


def test_a_bad_lorp_dtype_variable_is_one_clear_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LORP_DTYPE", "fp32")
    assert main(["analyze", *SMALL, "--out", str(tmp_path / "analysis")]) == 2
    assert capsys.readouterr().err.strip() == (
        "lorp analyze: error: the environment variable LORP_DTYPE must be one of "
        "float32, bfloat16, float16 (or unset), got LORP_DTYPE='fp32'"
    )
    assert not (tmp_path / "analysis").exists()


def test_auto_heals_the_adjacent_blocks_in_float32(capsys):
    from lorp_lightning.cli import build_parser
    from lorp_lightning.cli._shared import resolve_dtype as _resolve_dtype

    args = build_parser().parse_args(["heal", "pruned/any", "--mode", "adjacent"])
    _resolve_dtype(args)
    assert args.dtype == "float32"
    assert capsys.readouterr().out == "dtype: float32 (auto: --mode adjacent trains the block weights, which needs float32)\n"


def test_an_existing_output_directory_needs_overwrite_and_is_left_as_it_was(tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert main(["analyze", *SMALL, "--out", str(out)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]  # no temporary folder left beside it


@pytest.mark.parametrize(
    "argv, message",
    [
        (["prune", "no-such-model"], "unknown model name_or_path='no-such-model'"),
        # a path, not a hub id, though "./x/y" has the shape of one
        (["prune", "./nope.gguf"], "no such file or directory: nope.gguf (name_or_path='./nope.gguf')"),
        (["prune", "./models/nope"], "no such file or directory: models/nope"),
        (["prune", "~/nope.safetensors"], "no such file or directory: "),
        (["prune", "--method", "best"], "unknown method 'best'"),
        (["prune", "--amount", "29"], "--amount: num_prune=29 exceeds the 28 unprotected blocks"),
        (["analyze", "--text", "ptb"], "--text: text='ptb' is neither a bundled text"),
        # with --stats nothing is calibrated, but healing would train on --text: refused before loading
        (
            ["prune", "--stats", "no-such-stats.pt", "--heal-steps", "2", "--text", "ptb"],
            "--text: text='ptb' is neither a bundled text",
        ),
        (["prune", "--rounds", "3", "--heal-steps", "2"], "--heal-steps 2 are split over the --rounds 3, each round healed"),
        (
            ["prune", "--amount", "2", "--rounds", "3"],
            "--rounds: rounds must be between 1 and the 2 blocks to prune, got rounds=3",
        ),
    ],
)
def test_bad_arguments_end_with_one_clear_line_and_exit_status_2(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    assert main([*argv, *SMALL, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert list(tmp_path.iterdir()) == []


def _held_out(document: str) -> bool:
    """The split rule, restated: a document is held out when sha256's first 8 hex digits are divisible by 5."""
    import hashlib

    return int(hashlib.sha256(document.encode("utf-8")).hexdigest()[:8], 16) % 5 == 0


def _paragraphs() -> list[str]:
    """Real paragraphs: the bundled wiki's articles cut at blank lines, as a text file is cut."""
    import re

    from lorp_lightning.assets import load_documents

    articles = load_documents("wiki", "calibration")[:20]
    return [p.strip() for article in articles for p in re.split(r"\n\s*\n", article) if p.strip()]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["prune", "--amount", "29"], "--amount: num_prune=29 exceeds the 28 unprotected blocks (of 30)"),
        (["compare", "--amounts", "0.1,40"], "--amounts: num_prune=40 exceeds the 28 unprotected blocks (of 30)"),
        (
            ["prune", "--window", "100000"],
            "--window: window=100000 exceeds the longest context of smollm2-135m, 8192 tokens (max_position_embeddings",
        ),
        (["analyze", "--window", "8193"], "--window: window=8193 exceeds the longest context of smollm2-135m, 8192 tokens"),
        (["eval", "smollm2-135m", "--window", "9000"], "--window: window=9000 exceeds the longest context"),
    ],
)
def test_what_the_config_alone_refuses_is_refused_before_any_weight_loads(tmp_path, capsys, monkeypatch, argv, message):
    from lorp_lightning import assets

    def no_loading(*args, **kwargs):
        raise AssertionError("the weights were loaded before the config was checked")

    monkeypatch.setattr(assets, "load_model", no_loading)
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("cut", ["truncated", "header", "magic"])
def test_a_damaged_gguf_file_is_one_clear_line_naming_it_and_nothing_is_written(tmp_path, capsys, monkeypatch, cut):
    from lorp_lightning.assets import BUNDLED_MODELS, package_dir

    monkeypatch.setenv("LORP_CACHE_DIR", str(tmp_path / "cache"))
    bundled = BUNDLED_MODELS["smollm2-135m"]
    whole = (package_dir(bundled.parts[0][0]) / bundled.parts[0][1]).read_bytes()
    damaged = tmp_path / "damaged.gguf"
    # cut on disk: half the file (its tensors run past the end), the first 1,000 bytes (the header itself), or
    # another format's first bytes
    damaged.write_bytes({"truncated": whole[: len(whole) // 2], "header": whole[:1000], "magic": b"XXXX" + whole[4:1000]}[cut])
    assert main(["prune", str(damaged), "--out", str(tmp_path / "out"), *SMALL]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"the GGUF file {damaged} ({damaged.stat().st_size:,} bytes) is damaged or truncated" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged.gguf"]  # no output, and no cache entry


@pytest.mark.parametrize("cut", ["half", "header"])
def test_a_model_directory_with_a_damaged_safetensors_file_is_one_clear_line_naming_it(tmp_path, capsys, cut):
    from transformers import AutoTokenizer

    from lorp_lightning.assets import load_model

    model, tokenizer = load_model("smollm2-135m", progress=False)
    directory = tmp_path / "model"
    tiny = type(model)(type(model.config)(**{**model.config.to_dict(), "num_hidden_layers": 4}))
    tiny.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    assert AutoTokenizer.from_pretrained(directory) is not None
    capsys.readouterr()
    weights = directory / "model.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[: len(whole) // 2] if cut == "half" else whole[:20])  # cut on disk
    for argv in (["prune", str(directory), "--amount", "1"], ["eval", str(directory)]):
        assert main([*argv, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"the safetensors file {str(weights)!r} is damaged" in err[0], err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_text_file_calibrates_on_its_calibration_documents_only(tmp_path):
    from lorp_lightning import LayerStats

    paragraphs = _paragraphs()
    first = next(p for p in paragraphs if _held_out(p))
    paragraphs = [first] + [p for p in paragraphs if p != first]  # a held-out paragraph opens the file
    assert not all(_held_out(p) for p in paragraphs)
    whole, kept = tmp_path / "whole.txt", tmp_path / "kept.txt"
    whole.write_text("\n\n".join(paragraphs), encoding="utf-8")
    kept.write_text("\n\n".join(p for p in paragraphs if not _held_out(p)), encoding="utf-8")
    stats = {}
    for path in (whole, kept):
        assert main(["analyze", "smollm2-135m", "--text", str(path), *SMALL, "--out", str(tmp_path / path.stem)]) == 0
        stats[path] = LayerStats.load(tmp_path / path.stem / "stats.pt")
        assert stats[path].num_tokens == 4 * 128  # the windows asked for
    # the held-out paragraphs were never read: dropping them from the file changes nothing
    assert torch.equal(stats[whole].similarity, stats[kept].similarity)


def test_the_calibration_file_as_eval_text_is_measured_on_its_held_out_paragraphs_only(tmp_path, capsys):
    from lorp_lightning.assets import load_model
    from lorp_lightning.evaluation import perplexity, token_windows

    paragraphs = _paragraphs()
    text = tmp_path / "mine.txt"
    text.write_text("\n\n".join(paragraphs), encoding="utf-8")
    out = tmp_path / "pruned"
    assert (
        main(
            [
                "prune",
                "--method",
                "shortgpt",
                "--text",
                str(text),
                "--eval-text",
                str(text),
                "--out",
                str(out),
                *SMALL,
                *SMALL_EVAL,
            ]
        )
        == 0
    )
    assert f"eval text: the held-out split of {text}" in capsys.readouterr().out
    model, tokenizer = load_model("smollm2-135m", progress=False)
    held_out = "\n\n".join(p for p in paragraphs if _held_out(p))
    expected = perplexity(model, token_windows(tokenizer, held_out, window=128, max_windows=2))
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"]["dense"]["perplexity"] == pytest.approx(expected, rel=1e-5)


def test_a_text_file_without_enough_calibration_text_is_one_clear_line(tmp_path, capsys):
    paragraphs = _paragraphs()
    only_held_out, short = tmp_path / "held_out.txt", tmp_path / "short.txt"
    only_held_out.write_text(next(p for p in paragraphs if _held_out(p)), encoding="utf-8")
    short.write_text("\n\n".join(p for p in paragraphs[:60] if not _held_out(p)), encoding="utf-8")
    for path, argv, message in (
        (only_held_out, SMALL, "has no calibration documents"),
        (short, ["--windows", "1000", *SMALL[2:]], "--windows: num_windows=1000 but the calibration split of text="),
    ):
        assert main(["analyze", "--text", str(path), *argv, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and str(path) in err[0], err
        assert not (tmp_path / "out").exists()


def test_the_console_script_rejects_an_amount_out_of_range():
    result = subprocess.run(
        [sys.executable, "-m", "lorp_lightning.cli", "prune", "--amount", "1.5"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "lorp prune: error: --amount: amount=1.5 is not a fraction in (0, 1)" in result.stderr


@pytest.mark.parametrize(
    "text, expected",
    [
        ("3", 3),
        ("0.25", 0.25),
        ("3.0", "amount=3.0 is not a fraction in (0, 1): pass e.g. 0.25 for a quarter of the blocks, or an int count"),
        ("0", "amount=0 prunes no block: pass a count >= 1 or a fraction in (0, 1)"),
        ("1.0", "amount=1.0 is not a fraction in (0, 1): pass e.g. 0.25 for a quarter of the blocks, or an int count"),
    ],
)
def test_amount_follows_the_librarys_budget_rule(text, expected, tmp_path, capsys):
    # as LoRPPruneCallback(amount) and select_layers: an int is a count, a float a fraction in (0, 1); refused by the
    # settings (the callback's message) before anything is loaded
    if not isinstance(expected, str):
        assert build_parser().parse_args(["prune", "--amount", text]).amount == expected
        return
    assert main(["prune", "--amount", text, "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"lorp prune: error: --amount: {expected}"]
    assert list(tmp_path.iterdir()) == []


def test_an_amount_that_is_no_number_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_status:
        main(["prune", "--amount", "x"])
    assert exit_status.value.code == 2
    assert "argument --amount: expected a number, got 'x'" in capsys.readouterr().err


def test_compare_runs_every_method_at_every_budget_from_one_pass(tmp_path):
    out = tmp_path / "compare"
    code = main(["compare", "--amounts", "0.1,0.2", "--methods", "lorp,last", "--eval-windows", "1", "--out", str(out), *SMALL])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert [(r["amount"], r["method"], r["num_pruned"]) for r in report["results"]] == [
        (0.1, "lorp", 3),
        (0.1, "last", 3),
        (0.2, "lorp", 6),
        (0.2, "last", 6),
    ]
    assert [r["pruned"] for r in report["results"] if r["method"] == "last"] == [[26, 27, 28], [23, 24, 25, 26, 27, 28]]
    assert (out / "perplexity.png").is_file()


def test_eval_reports_perplexity_on_each_text_size_speed_and_memory(tmp_path, capsys):
    text_file = tmp_path / "mine.txt"
    text_file.write_text("The river flows through the old town and under seven stone bridges. " * 40)
    out = tmp_path / "eval"
    code = main(
        [
            "eval",
            "smollm2-135m",
            "--texts",
            f"wiki,lambada,{text_file}",
            "--window",
            "64",
            "--quiet",
            "--tasks",
            "copa",
            "--limit",
            "4",
            "--out",
            str(out),
            *SMALL_EVAL,
        ]
    )
    assert code == 0
    metrics = json.loads((out / "report.json").read_text())["metrics"]
    assert list(metrics["perplexity"]) == ["wiki", "lambada", str(text_file)]
    assert all(math.isfinite(v) and v > 1 for v in metrics["perplexity"].values())
    assert metrics["perplexity"][str(text_file)] < metrics["perplexity"]["wiki"]  # a repeated sentence is easy
    assert metrics["num_layers"] == 30 and metrics["num_parameters"] == 134_515_008
    copa = metrics["zero_shot"]["copa"]
    assert copa["num_examples"] == 4 and copa["acc"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert metrics["zero_shot"]["average"] == {"acc": copa["acc"], "num_tasks": 1}
    printed = capsys.readouterr().out
    assert "held-out perplexity on lambada" in printed and "copa: acc" in printed


def test_an_unknown_zero_shot_task_is_one_clear_line(tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "smollm2-135m", "--tasks", "race", "--window", "64", "--quiet", "--out", str(out), *SMALL_EVAL]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'race'" in err[0] and "piqa" in err[0], err
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- lorp heal, lorp prune --heal-steps

HEAL_SMALL = ["--steps", "2", "--window", "64", "--batch-size", "2", "--eval-windows", "1", "--eval-window", "64", "--quiet"]


@pytest.fixture(scope="module")
def pruned_dir(smollm2, tmp_path_factory):
    """SmolLM2 without blocks 4-6, saved in bfloat16 as `lorp prune` saves it."""
    from lorp_lightning import prune_layers

    model, tokenizer = smollm2
    directory = tmp_path_factory.mktemp("pruned") / "smollm2-pruned"
    prune_layers(model, [4, 5, 6], inplace=False).to(torch.bfloat16).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_heal_saves_a_healed_model_that_plain_transformers_reloads_with_a_report(pruned_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "healed"
    assert main(["heal", str(pruned_dir), *HEAL_SMALL, "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    record = report["healing"]
    assert (record["mode"], record["rank"], record["num_steps"], record["tokens"]) == ("lora", 8, 2, 2 * 2 * 64)
    assert record["text"] == "wiki" and record["split"] == "calibration" and len(report["losses"]) == 2
    evaluation = report["evaluation"]
    assert evaluation["split"] == "heldout" and evaluation["windows"] == 1
    assert evaluation["perplexity_after"] < evaluation["perplexity_before"]  # blocks 4-6 cost a lot; 2 steps win some back

    card = (out / "README.md").read_text()  # pruned_dir has no card: the base model is not known, and the card says so
    assert "base_model" not in card and "**Licence.** not known" in card
    assert "- healed: lora, 2 steps" in card and f"{evaluation['perplexity_after']:.2f} after healing" in card

    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.config.num_hidden_layers == 27 and reloaded.dtype == getattr(torch, report["dtype"])
    assert reloaded.config.lorp_pruning["pruned_layers"] == [4, 5, 6]
    assert reloaded.config.lorp_pruning["healing"] == [record]
    assert sorted(p.name for p in out.iterdir() if p.suffix in (".json", ".safetensors")) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "report.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    printed = capsys.readouterr().out
    assert "healed for 2 steps (LoRA rank 8" in printed and "held-out perplexity" in printed


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--rank", "1000"], "rank=1000 does not fit: the target module 'k_proj' maps 576 to 192 features"),
        (
            ["--mode", "adjacent", "--dtype", "bfloat16"],
            "--mode adjacent trains the block weights themselves and needs --dtype float32",
        ),
        (["--text", "ptb"], "--text: text='ptb' is neither a bundled text"),
    ],
)
def test_heal_with_bad_arguments_ends_with_one_clear_line_and_writes_nothing(pruned_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "healed"
    assert main(["heal", str(pruned_dir), *HEAL_SMALL, *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_heal_refuses_a_model_that_was_never_pruned(tmp_path, capsys):
    out = tmp_path / "healed"
    assert main(["heal", "smollm2-135m", *HEAL_SMALL, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "smollm2-135m holds a model that was not pruned" in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_zero_heal_steps_are_refused_by_the_settings_before_anything_is_loaded(tmp_path, capsys):
    assert main(["heal", str(tmp_path / "no-such-dir"), "--steps", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "lorp heal: error: --steps: steps must be a positive int (optimizer steps; steps=0 would train nothing), got steps=0"
    ]
    assert list(tmp_path.iterdir()) == []


def test_prune_with_heal_steps_saves_the_healed_model_and_reports_both_perplexities(tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "pruned"
    code = main(["prune", "--amount", "3", "--method", "last", "--heal-steps", "2", "--out", str(out), *SMALL, *SMALL_EVAL])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    healing = report["healing"]
    assert healing["record"]["num_steps"] == 2 and healing["record"]["window"] == 128 and len(healing["losses"]) == 2
    assert healing["perplexity_before_healing"] > report["metrics"]["pruned"]["perplexity"]
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.config.lorp_pruning["pruned_layers"] == [26, 27, 28]
    assert reloaded.config.lorp_pruning["healing"] == [healing["record"]]
    assert "healed for 2 steps" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["analyze", "prune", "compare", "eval"])
def test_help_names_the_four_ways_to_give_a_model(command, capsys):
    with pytest.raises(SystemExit) as exit_status:
        main([command, "--help"])
    assert exit_status.value.code == 0  # help is an answer, not an error
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for form in ("bundled name", "model directory", ".gguf file", "hub id org/name", "HF_HUB_OFFLINE=1"):
        assert form in text, (command, form)


def test_prune_in_rounds_with_heal_steps_heals_each_round_before_the_next_and_reports_every_healing(tmp_path, capsys):
    out = tmp_path / "pruned"
    code = main(
        [
            "prune",
            "--amount",
            "3",
            "--method",
            "shortgpt",
            "--rounds",
            "2",
            "--heal-steps",
            "3",
            "--out",
            str(out),
            *SMALL,
            *SMALL_EVAL,
        ]
    )
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    healing = report["healing"]
    assert [r["num_steps"] for r in healing["records"]] == [2, 1] and len(healing["losses"]) == 3
    plan = report["plan"]
    assert [len(r["pruned"]) for r in plan["rounds"]] == [2, 1] and sorted(
        sum((r["pruned"] for r in plan["rounds"]), [])
    ) == plan["pruned"]
    assert plan["cost"]["statistics_windows"] == 4 + 4  # the first round's pass, and the second's on the healed model
    assert report["metrics"]["pruned"]["num_layers"] == 27
    config = json.loads((out / "config.json").read_text())
    assert config["lorp_pruning"]["pruned_layers"] == plan["pruned"] and len(config["lorp_pruning"]["healing"]) == 2
    printed = capsys.readouterr().out
    assert "round 1: healed for 2 steps" in printed and "round 2: healed for 1 steps" in printed


def test_analyze_with_stability_reports_each_methods_resamples_and_saves_what_prune_resamples_again(tmp_path, capsys):
    from lorp_lightning import LayerStats, plan_stability

    analysis = tmp_path / "analysis"
    assert main(["analyze", *SMALL, "--stability", "6", "--out", str(analysis)]) == 0
    assert sorted(p.name for p in analysis.iterdir()) == ["report.json", "similarity.png", "stability.png", "stats.pt"]
    report = json.loads((analysis / "report.json").read_text())
    stats = LayerStats.load(analysis / "stats.pt")
    assert stats.per_window.num_windows == 4
    assert [r["method"] for r in report["stability"]] == ["lorp", "shortgpt", "streamline", "angular"]
    for entry in report["stability"]:  # what the library gives on the saved statistics
        assert entry == json.loads(json.dumps(plan_stability(stats, 0.25, entry["method"], 6).summary())) | {
            "cost": entry["cost"]
        }
    assert "lorp over 6 resamples: the plan" in capsys.readouterr().out

    out = tmp_path / "pruned"
    argv = ["prune", "--method", "shortgpt", "--stats", str(analysis / "stats.pt"), "--stability", "6"]
    assert main([*argv, "--out", str(out), *SMALL, *SMALL_EVAL]) == 0
    pruned = json.loads((out / "report.json").read_text())
    assert pruned["stability"]["plan"] == pruned["plan"]["pruned"]
    assert pruned["stability"]["removal_frequency"] == report["stability"][1]["removal_frequency"]
    assert (out / "stability.png").is_file()


@pytest.mark.parametrize("value", ["0", "-2", "10001", "many"])
def test_a_number_of_resamples_out_of_range_is_refused_by_the_parser_naming_it(value, capsys):
    with pytest.raises(SystemExit) as exit_status:
        main(["analyze", "--stability", value])
    assert exit_status.value.code == 2
    assert f"argument --stability: B must be an int from 1 to 10,000, got {value!r}" in capsys.readouterr().err


def test_stability_from_saved_statistics_without_per_window_sums_is_one_clear_line(tmp_path, capsys):
    analysis = tmp_path / "analysis"
    assert main(["analyze", *SMALL, "--out", str(analysis)]) == 0
    capsys.readouterr()
    out = tmp_path / "pruned"
    assert main(["prune", "--stats", str(analysis / "stats.pt"), "--stability", "5", "--out", str(out), *SMALL]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no per-window statistics, which --stability resamples" in err[0], err
    assert not out.exists()
