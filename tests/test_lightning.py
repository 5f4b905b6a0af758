"""The Lightning layer: LoRPModule, TextDataModule, LayerStatsCallback and LoRPPruneCallback.

End to end on SmolLM2-135M (30 blocks; a quarter is 7 blocks, leaving 23), with a few windows
of 128 tokens; the behaviours that need no real model use a tiny random Llama (8 blocks).
Every pruning is checked against the statistics computed independently with
``collect_layer_stats`` over the same windows, and against ``select_layers`` on them.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import CSVLogger
from transformers import LlamaConfig, LlamaForCausalLM

from lorp_lightning.architectures import decoder_layers
from lorp_lightning.assets import is_heldout, load_text
from lorp_lightning.callbacks import LayerStatsCallback, LoRPPruneCallback
from lorp_lightning.data import TextDataModule
from lorp_lightning.evaluation import perplexity, token_windows
from lorp_lightning.methods import select_layers
from lorp_lightning.module import LoRPModule
from lorp_lightning.selection import PruningPlan
from lorp_lightning.stats import LayerStats, collect_layer_stats
from lorp_lightning.surgery import prune_layers, pruning_record

WINDOW = 128
BATCH = 2


# --------------------------------------------------------------------------- helpers


def make_trainer(tmp_path, **kwargs) -> Trainer:
    options = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    options.update(kwargs)
    return Trainer(**options)


def tiny_llama(vocab_size: int, num_layers: int = 8, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab_size,
    )
    return LlamaForCausalLM(config).eval()


def wiki(tokenizer, **kwargs) -> TextDataModule:
    options = dict(window=WINDOW, num_calibration_windows=4, num_eval_windows=4, batch_size=BATCH)
    options.update(kwargs)
    return TextDataModule("wiki", tokenizer, **options)


def stories(tokenizer, **kwargs) -> TextDataModule:
    options = dict(window=64, num_calibration_windows=4, num_eval_windows=4, batch_size=BATCH)
    options.update(kwargs)
    return TextDataModule("tinystories", tokenizer, **options)


def assert_same_stats(actual: LayerStats, expected: LayerStats) -> None:
    assert actual.num_tokens == expected.num_tokens
    assert actual.num_sequences == expected.num_sequences
    torch.testing.assert_close(actual.similarity, expected.similarity, atol=1e-6, rtol=0)
    torch.testing.assert_close(actual.last_token_similarity, expected.last_token_similarity, atol=1e-6, rtol=0)


def assert_kept_blocks_are(pruned_model, original_blocks, kept: list[int]) -> None:
    """The pruned model's blocks are, in order, the original blocks at ``kept`` (same weights)."""
    blocks = decoder_layers(pruned_model)
    assert len(blocks) == len(kept)
    for new, old in enumerate(kept):
        new_state, old_state = blocks[new].state_dict(), original_blocks[old].state_dict()
        assert new_state.keys() == old_state.keys()
        assert all(torch.equal(new_state[k], old_state[k]) for k in new_state), f"block {new} is not block {old}"


def optimizer_parameter_ids(trainer: Trainer) -> list[int]:
    return [id(p) for optimizer in trainer.optimizers for group in optimizer.param_groups for p in group["params"]]


class Record(Callback):
    """Records what the model looks like at moments of a fit."""

    def __init__(self, snapshot: bool = False) -> None:
        self.take_snapshot = snapshot
        self.blocks_at_train_start: int | None = None
        self.blocks_at_epoch_start: list[int] = []
        self.losses: dict[int, list[float]] = {}
        self.optimizer_matches_model: list[bool] = []
        self.optimizer_ids: list[set[int]] = []
        self.snapshot = None

    def on_train_start(self, trainer, pl_module):
        self.blocks_at_train_start = len(decoder_layers(pl_module.model))

    def on_train_epoch_start(self, trainer, pl_module):
        self.blocks_at_epoch_start.append(len(decoder_layers(pl_module.model)))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        ids = optimizer_parameter_ids(trainer)
        model_ids = [id(p) for p in pl_module.model.parameters()]
        self.optimizer_matches_model.append(len(ids) == len(model_ids) and set(ids) == set(model_ids))
        self.optimizer_ids.append(set(ids))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.setdefault(trainer.current_epoch, []).append(float(outputs["loss"]))

    def on_train_end(self, trainer, pl_module):
        if self.take_snapshot:
            self.snapshot = copy.deepcopy(pl_module.model)  # the weights the last validation saw


# --------------------------------------------------------------------------- argument checks


@pytest.mark.parametrize(
    "amount, words",
    [
        (0, "amount=0 prunes no block"),
        (1.5, "amount=1.5 is not a fraction in (0, 1)"),
        ("x", "amount must be an int (a number of blocks) or a float in (0, 1) (a fraction of them), got amount='x'"),
        (-2, "amount=-2"),
        (True, "got amount=True"),
    ],
)
def test_prune_callback_rejects_an_amount_that_is_neither_a_count_nor_a_fraction(amount, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        LoRPPruneCallback(amount)


def test_prune_callback_rejects_an_unknown_prune_on_and_lists_the_choices():
    choices = "'validation_end', 'fit_end', 'predict_end'"
    with pytest.raises(ValueError, match=rf"prune_on must be one of {choices}, got prune_on='train_end'"):
        LoRPPruneCallback(0.25, prune_on="train_end")


def test_prune_callback_rejects_an_unknown_method_and_lists_the_methods():
    with pytest.raises(
        ValueError, match=r"method must be one of 'lorp_search', 'lorp', .*'last' or a callable, got method='magic'"
    ):
        LoRPPruneCallback(0.25, method="magic")


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(num_clusters=3, method="shortgpt"), "num_clusters applies only to method='lorp'"),
        (dict(num_clusters=0), "num_clusters=0"),
        (dict(protect="0"), "protect='0'"),
        (dict(protect=[0, -1]), "protect holds -1, which is not a block index"),
        (dict(seed=-1), "seed=-1"),
        (dict(compensate="yes"), "compensate='yes'"),
        (dict(rounds=0), "rounds must be a positive int, got rounds=0"),
    ],
)
def test_prune_callback_rejects_other_bad_arguments_naming_the_value(kwargs, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        LoRPPruneCallback(0.25, **kwargs)


def test_layer_stats_callback_rejects_an_unknown_stage():
    with pytest.raises(ValueError, match=r"stages=\('predict', 'training'\)"):
        LayerStatsCallback(stages=("predict", "training"))


def test_text_datamodule_rejects_an_unknown_text_and_a_window_under_two(tmp_path):
    with pytest.raises(ValueError, match=r"text='no-such-text' is neither a bundled text \(wiki, c4, tinystories, lambada\)"):
        TextDataModule("no-such-text")
    with pytest.raises(ValueError, match=r"window must be an int >= 2.*window=1"):
        TextDataModule("wiki", window=1)
    with pytest.raises(ValueError, match=r"num_eval_windows=0"):
        TextDataModule("wiki", num_eval_windows=0)


def test_module_rejects_what_is_not_a_model_or_a_name():
    with pytest.raises(TypeError, match="got int"):
        LoRPModule(42)


def test_a_model_object_keeps_its_own_dtype_and_another_is_refused(tokenizer):
    model = tiny_llama(len(tokenizer))
    assert LoRPModule(model, tokenizer, dtype=torch.float32).model.dtype == torch.float32  # its own: accepted
    with pytest.raises(
        ValueError,
        match=r"dtype=torch.bfloat16 applies only to a model loaded by name or path; "
        r"a model object keeps its own dtype \(torch.float32\)",
    ):
        LoRPModule(model, tokenizer, dtype=torch.bfloat16)
    assert model.dtype == torch.float32


def test_a_budget_beyond_the_unprotected_blocks_fails_at_setup_before_any_batch(tokenizer, tmp_path):
    module = LoRPModule(tiny_llama(len(tokenizer)), tokenizer)
    with pytest.raises(ValueError, match="num_prune=7 exceeds the 6 unprotected blocks"):
        make_trainer(tmp_path, callbacks=[LoRPPruneCallback(7)]).validate(module, datamodule=stories(tokenizer))
    assert len(decoder_layers(module.model)) == 8 and pruning_record(module.model) is None


def test_a_layer_stats_callback_deaf_to_the_pruning_loop_is_refused_at_setup(tokenizer, tmp_path):
    module = LoRPModule(tiny_llama(len(tokenizer)), tokenizer)
    trainer = make_trainer(tmp_path, callbacks=[LayerStatsCallback("predict"), LoRPPruneCallback(2, method="lorp")])
    with pytest.raises(ValueError, match=r"reads the statistics of the validation loop.*stages=\('predict', 'validation'\)"):
        trainer.validate(module, datamodule=stories(tokenizer))


# --------------------------------------------------------------------------- TextDataModule


def test_a_list_of_documents_is_split_by_the_assets_hash_rule_whatever_its_order(tokenizer):
    documents = [f"Document number {i} says something about topic {i % 7}." for i in range(40)]
    heldout = [d for d in documents if is_heldout(d)]
    calibration = [d for d in documents if not is_heldout(d)]
    assert heldout and calibration
    dm = TextDataModule(documents, tokenizer)
    assert dm.documents("heldout") == heldout and dm.documents("calibration") == calibration
    backwards = TextDataModule(documents[::-1], tokenizer)
    assert backwards.documents("heldout") == heldout[::-1]


def test_a_text_file_is_split_into_paragraphs_at_blank_lines(tokenizer, tmp_path):
    paragraphs = [f"Paragraph {i}.\nIt has two lines." for i in range(30)]
    path = tmp_path / "text.txt"
    path.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    dm = TextDataModule(path, tokenizer, window=4, num_calibration_windows=None, num_eval_windows=None)
    assert dm.documents("heldout") == [p for p in paragraphs if is_heldout(p)]
    assert dm.documents("calibration") == [p for p in paragraphs if not is_heldout(p)]
    expected = token_windows(tokenizer, "\n\n".join(dm.documents("heldout")), window=4)
    assert torch.equal(dm.windows("heldout"), expected)


def test_windows_are_a_seeded_choice_of_the_split_windows_in_text_order(tokenizer):
    every = {split: token_windows(tokenizer, load_text("tinystories", split), window=64) for split in ("calibration", "heldout")}
    dm = stories(tokenizer, num_calibration_windows=6, num_eval_windows=5, seed=0)
    for split, count in (("calibration", 6), ("heldout", 5)):
        windows = dm.windows(split)
        assert windows.shape == (count, 64)
        rows = [next(i for i in range(len(every[split])) if torch.equal(every[split][i], w)) for w in windows]
        assert rows == sorted(rows) and len(set(rows)) == count
    assert torch.equal(stories(tokenizer, num_calibration_windows=6, seed=0).windows("calibration"), dm.windows("calibration"))
    other_seed = stories(tokenizer, num_calibration_windows=6, seed=1)
    assert not torch.equal(other_seed.windows("calibration"), dm.windows("calibration"))


def test_dataloaders_serve_calibration_to_predict_and_train_and_heldout_to_val_and_test(tokenizer):
    dm = stories(tokenizer, num_calibration_windows=4, num_eval_windows=3, batch_size=2)
    dm.setup("fit")

    def ids(loader):
        batches = list(loader)
        assert all(torch.equal(b["attention_mask"], torch.ones_like(b["input_ids"])) for b in batches)
        return torch.cat([b["input_ids"] for b in batches])

    assert torch.equal(ids(dm.predict_dataloader()), dm.windows("calibration"))
    assert torch.equal(ids(dm.val_dataloader()), dm.windows("heldout"))
    assert torch.equal(ids(dm.test_dataloader()), dm.windows("heldout"))
    train = ids(dm.train_dataloader())
    assert sorted(map(tuple, train.tolist())) == sorted(map(tuple, dm.windows("calibration").tolist()))


def test_asking_for_more_windows_than_the_split_has_names_both_numbers(tokenizer):
    dm = stories(tokenizer, num_eval_windows=10_000)
    words = r"num_eval_windows=10000 but the heldout split of text='tinystories' has only \d+ windows"
    with pytest.raises(ValueError, match=words):
        dm.windows("heldout")


# --------------------------------------------------------------------------- LoRPModule


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # called outside a Trainer on purpose
def test_training_step_is_the_causal_lm_loss_and_padding_is_not_predicted(tokenizer):
    model = tiny_llama(len(tokenizer))
    module = LoRPModule(model, tokenizer)
    ids = torch.randint(0, len(tokenizer), (2, 16), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    loss = module.training_step({"input_ids": ids, "attention_mask": mask}, 0)
    labels = ids.clone()
    labels[1, 12:] = -100
    assert torch.equal(loss, model(input_ids=ids, attention_mask=mask, labels=labels).loss)
    assert module.model is model


def test_validate_and_test_log_the_heldout_perplexity_with_the_module_tokenizer_when_the_datamodule_has_none(tokenizer, tmp_path):
    module = LoRPModule(tiny_llama(len(tokenizer)), tokenizer)
    dm = TextDataModule("tinystories", window=64, num_eval_windows=2, batch_size=2)
    trainer = make_trainer(tmp_path)
    [validated] = trainer.validate(module, datamodule=dm)
    [tested] = trainer.test(module, datamodule=dm)
    windows = token_windows(tokenizer, load_text("tinystories", "heldout"), window=64)
    assert all(any(torch.equal(w, row) for row in windows) for w in dm.windows("heldout"))
    expected = perplexity(module.model, dm.windows("heldout"), batch_size=2)
    assert validated["val_ppl"] == pytest.approx(expected, rel=1e-5)
    assert tested["test_ppl"] == pytest.approx(expected, rel=1e-5)


def test_validate_then_fit_with_validation_logs_the_perplexity_of_the_trained_model(tokenizer, tmp_path):
    # validate runs under inference mode; the perplexity metric's state must not stay an inference
    # tensor, or the validation inside a later fit fails on its first in-place update
    module = LoRPModule(tiny_llama(len(tokenizer)), tokenizer, lr=1e-3)
    dm = TextDataModule("tinystories", window=64, num_calibration_windows=4, num_eval_windows=2, batch_size=2)
    trainer = make_trainer(tmp_path, max_steps=2, num_sanity_val_steps=0)
    [before] = trainer.validate(module, datamodule=dm)
    trainer.fit(module, datamodule=dm)  # two steps, one epoch: its validation runs after the last step
    in_fit = trainer.callback_metrics["val_ppl"].item()
    [after] = trainer.validate(module, datamodule=dm)
    assert in_fit == pytest.approx(after["val_ppl"], rel=1e-6)
    expected = perplexity(module.model, dm.windows("heldout"), batch_size=2)
    assert after["val_ppl"] == pytest.approx(expected, rel=1e-5) and after["val_ppl"] != before["val_ppl"]


def test_a_checkpoint_of_another_model_is_refused_before_its_weights_load(tokenizer):
    pruned = LoRPModule(prune_layers(tiny_llama(len(tokenizer)), [2, 3]), tokenizer)
    checkpoint = {}
    pruned.on_save_checkpoint(checkpoint)
    assert checkpoint["lorp_pruning"]["pruned_layers"] == [2, 3]
    deeper = LoRPModule(tiny_llama(len(tokenizer), num_layers=10), tokenizer)
    with pytest.raises(ValueError, match=r"a model of 8 blocks with blocks \[2, 3\] removed, but this module's model has 10"):
        deeper.on_load_checkpoint(checkpoint)
    assert len(decoder_layers(deeper.model)) == 10
    fresh = LoRPModule(tiny_llama(len(tokenizer)), tokenizer)
    fresh.on_load_checkpoint(checkpoint)
    assert fresh.model.state_dict().keys() == pruned.model.state_dict().keys()
    assert pruning_record(fresh.model) == pruning_record(pruned.model)


# --------------------------------------------------------------------------- scenario 1: validate


def test_validate_prunes_smollm2_from_30_to_23_blocks_exactly_as_select_layers_on_the_same_statistics(smollm2, tmp_path):
    model, tokenizer = smollm2
    module = LoRPModule(copy.deepcopy(model), tokenizer)
    dm = wiki(tokenizer)
    callback = LoRPPruneCallback(0.25)  # the default method, lorp_search, checks plans on the validation windows
    trainer = make_trainer(tmp_path, callbacks=[callback], logger=CSVLogger(tmp_path))
    [results] = trainer.validate(module, datamodule=dm)

    windows = dm.windows("heldout")
    expected_stats = collect_layer_stats(model, windows.split(BATCH), progress=False)
    expected_plan = select_layers(expected_stats, 0.25, method="lorp_search", model=model, windows=windows)
    assert_same_stats(callback.stats, expected_stats)
    assert callback.stats.num_tokens == 4 * WINDOW and callback.stats.num_layers == 30
    assert torch.equal(callback.windows, windows)
    assert callback.plan.method == "lorp_search"
    assert callback.plan.pruned == expected_plan.pruned and len(expected_plan.pruned) == 7
    assert callback.plan.labels == expected_plan.labels and callback.plan.num_clusters == expected_plan.num_clusters
    assert callback.plan.rls == pytest.approx(expected_plan.rls, abs=1e-9)

    assert module.model.config.num_hidden_layers == 23
    assert_kept_blocks_are(module.model, decoder_layers(model), expected_plan.kept)
    assert pruning_record(module.model)["pruned_layers"] == expected_plan.pruned
    assert all(not block._forward_pre_hooks and not block._forward_hooks for block in decoder_layers(module.model))
    # the perplexity was measured before the pruning, on the dense model
    assert results["val_ppl"] == pytest.approx(perplexity(model, windows, batch_size=BATCH), rel=1e-5)

    log_dir = Path(trainer.logger.log_dir)
    rows = (log_dir / "metrics.csv").read_text().splitlines()
    logged = dict(zip(rows[0].split(","), rows[-1].split(","), strict=True))
    assert float(logged["lorp/rls"]) == pytest.approx(expected_plan.rls, rel=1e-6)
    assert float(logged["lorp/num_clusters"]) == expected_plan.num_clusters
    assert float(logged["lorp/num_pruned"]) == 7 and float(logged["lorp/num_layers"]) == 23
    hparams = yaml.safe_load((log_dir / "hparams.yaml").read_text())
    assert hparams["lorp_pruned_layers"] == expected_plan.pruned and hparams["lorp_method"] == "lorp_search"


# --------------------------------------------------------------------------- scenario 2: predict


def test_predict_with_layer_stats_callback_then_select_and_prune_by_hand(smollm2, tmp_path):
    model, tokenizer = smollm2
    module = LoRPModule(copy.deepcopy(model), tokenizer)
    dm = wiki(tokenizer)
    stats_callback = LayerStatsCallback()
    predictions = make_trainer(tmp_path, callbacks=[stats_callback]).predict(module, datamodule=dm)

    windows = dm.windows("calibration")
    with torch.no_grad():  # the calibration step returns the final hidden state of each window's last token
        last_states = model.model(input_ids=windows, use_cache=False).last_hidden_state[:, -1]
    torch.testing.assert_close(torch.cat(predictions), last_states, atol=1e-4, rtol=1e-4)
    expected = collect_layer_stats(model, windows.split(BATCH), progress=False)
    assert_same_stats(stats_callback.stats, expected)
    assert all(not block._forward_pre_hooks and not block._forward_hooks for block in decoder_layers(module.model))

    plan = select_layers(stats_callback.stats, 0.25)
    assert plan.pruned == select_layers(expected, 0.25).pruned
    prune_layers(module.model, plan)
    assert len(decoder_layers(module.model)) == 23
    assert_kept_blocks_are(module.model, decoder_layers(model), plan.kept)

    restored = LayerStatsCallback()
    restored.load_state_dict(stats_callback.state_dict())
    assert torch.equal(restored.stats.similarity, stats_callback.stats.similarity)
    assert restored.stats.num_tokens == stats_callback.stats.num_tokens


# --------------------------------------------------------------------------- scenario 3: fit end


def test_fit_prunes_at_fit_end_from_the_statistics_of_the_last_validation(smollm2, tmp_path):
    model, tokenizer = smollm2
    module = LoRPModule(copy.deepcopy(model), tokenizer, lr=1e-4)
    dm = wiki(tokenizer)
    record, callback = Record(snapshot=True), LoRPPruneCallback(0.25, method="lorp", prune_on="fit_end")
    trainer = make_trainer(tmp_path, callbacks=[record, callback], max_epochs=1, limit_train_batches=1, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)

    trained = record.snapshot  # the trained model as it was at the end of training, before the pruning
    assert len(decoder_layers(trained)) == 30 and trainer.global_step == 1
    assert not torch.equal(decoder_layers(trained)[5].mlp.up_proj.weight, decoder_layers(model)[5].mlp.up_proj.weight)
    expected_stats = collect_layer_stats(trained, dm.windows("heldout").split(BATCH), progress=False)
    assert_same_stats(callback.stats, expected_stats)
    expected_plan = select_layers(expected_stats, 0.25)
    assert callback.plan.pruned == expected_plan.pruned
    assert_kept_blocks_are(module.model, decoder_layers(trained), expected_plan.kept)
    assert pruning_record(module.model)["pruned_layers"] == expected_plan.pruned


# --------------------------------------------------------------------------- scenario 4: prune inside fit


def test_pruning_at_the_first_validation_inside_fit_then_training_the_pruned_model(smollm2, tmp_path):
    model, tokenizer = smollm2
    module = LoRPModule(copy.deepcopy(model), tokenizer, lr=1e-4)
    hf_model = module.model
    dm = wiki(tokenizer, num_calibration_windows=BATCH)  # one training batch: the same windows every epoch
    original_blocks = list(decoder_layers(module.model))  # holds the removed blocks, so their ids stay unique
    record, callback = Record(), LoRPPruneCallback(0.25, method="lorp")
    trainer = make_trainer(tmp_path, callbacks=[record, callback], max_epochs=3, num_sanity_val_steps=1)
    trainer.fit(module, datamodule=dm)

    # the sanity check did not prune; the first validation did; the two later ones did not
    assert record.blocks_at_train_start == 30
    assert record.blocks_at_epoch_start == [30, 23, 23]
    assert len(pruning_record(module.model)["steps"]) == 1 and module.model.config.num_hidden_layers == 23
    assert module.model is hf_model and isinstance(module.model, LlamaForCausalLM)
    assert callback.stats.num_tokens == 4 * WINDOW  # one full validation, not the sanity check's batch
    assert callback.plan == select_layers(callback.stats, 0.25)
    kept = [original_blocks[i] for i in callback.plan.kept]
    assert all(a is b for a, b in zip(decoder_layers(module.model), kept, strict=True))

    # the optimizer holds exactly the pruned model's parameters from the first step after pruning
    assert record.optimizer_matches_model == [True] * 3
    removed = {id(p) for i in callback.plan.pruned for p in original_blocks[i].parameters()}
    assert removed <= record.optimizer_ids[0]  # before the pruning: the dense model's parameters
    assert all(not (ids & removed) for ids in record.optimizer_ids[1:])
    assert set(optimizer_parameter_ids(trainer)) == {id(p) for p in module.model.parameters()}
    assert {id(p) for p in trainer.optimizers[0].state} == {id(p) for p in module.model.parameters()}

    # and the pruned model learns: on the same batch as the step before, its loss is lower
    assert record.losses[2][0] < record.losses[1][0], record.losses


# --------------------------------------------------------------------------- scenario 5: checkpoints


def test_a_checkpoint_after_pruning_loads_into_a_fresh_module_and_resumes_fit(smollm2, tmp_path):
    model, tokenizer = smollm2
    module = LoRPModule("smollm2-135m", lr=1e-4, dtype=torch.float32)  # the dtype of the smollm2 fixture
    dm = wiki(tokenizer, num_calibration_windows=BATCH, num_eval_windows=BATCH)  # one batch of each
    callback = LoRPPruneCallback(0.25, method="lorp")
    trainer = make_trainer(tmp_path, callbacks=[callback], max_epochs=2, limit_train_batches=1, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)  # a step, the pruning, a step of the pruned model
    assert len(decoder_layers(module.model)) == 23
    path = tmp_path / "pruned.ckpt"
    trainer.save_checkpoint(path)
    trained = {k: v.clone() for k, v in module.model.state_dict().items()}

    # a module built from the name rebuilds from the checkpoint alone; one built from a model needs it again
    for restored in (LoRPModule.load_from_checkpoint(path), LoRPModule.load_from_checkpoint(path, model=copy.deepcopy(model))):
        assert len(decoder_layers(restored.model)) == restored.model.config.num_hidden_layers == 23
        assert pruning_record(restored.model) == pruning_record(module.model)
        state = restored.model.state_dict()
        assert state.keys() == trained.keys() and all(torch.equal(state[k], trained[k]) for k in trained)

    # resuming: the fresh dense module is pruned the same way, and the callback does not prune again
    resumed_module = LoRPModule(copy.deepcopy(model), tokenizer, lr=1e-4)
    resumed_callback, record = LoRPPruneCallback(0.25, method="lorp"), Record()
    resumed = make_trainer(
        tmp_path, callbacks=[record, resumed_callback], max_epochs=3, limit_train_batches=1, num_sanity_val_steps=0
    )
    resumed.fit(resumed_module, datamodule=dm, ckpt_path=path)
    assert resumed_callback.plan == callback.plan
    assert torch.equal(resumed_callback.stats.similarity, callback.stats.similarity)
    assert record.blocks_at_train_start == 23 and record.blocks_at_epoch_start == [23]
    assert pruning_record(resumed_module.model) == pruning_record(module.model)
    assert resumed.global_step == 3 and record.optimizer_matches_model == [True]
    # the Adam moments of the pruned model's step before the checkpoint were restored: two steps each
    adam_steps = {float(state["step"]) for state in resumed.optimizers[0].state.values()}
    assert adam_steps == {2.0} and len(resumed.optimizers[0].state) == len(list(resumed_module.model.parameters()))


# --------------------------------------------------------------------------- the other ways to prune


def test_the_prune_callback_uses_a_layer_stats_callback_instead_of_listening_itself(tokenizer, tmp_path):
    model = tiny_llama(len(tokenizer))
    module = LoRPModule(copy.deepcopy(model), tokenizer)
    stats_callback, callback = LayerStatsCallback(stages=("predict", "validation")), LoRPPruneCallback(2, method="lorp")
    make_trainer(tmp_path, callbacks=[callback, stats_callback]).validate(module, datamodule=stories(tokenizer))
    assert callback.stats is stats_callback.stats and callback._listener.metric is None
    expected = collect_layer_stats(model, stories(tokenizer).windows("heldout").split(BATCH), progress=False)
    assert_same_stats(callback.stats, expected)
    assert callback.plan.pruned == select_layers(expected, 2).pruned
    assert len(decoder_layers(module.model)) == 6


def test_prune_on_predict_end_prunes_from_the_calibration_windows(tokenizer, tmp_path):
    model = tiny_llama(len(tokenizer))
    module = LoRPModule(copy.deepcopy(model), tokenizer)
    dm = stories(tokenizer)
    callback = LoRPPruneCallback(0.25, method="shortgpt", prune_on="predict_end")
    trainer = make_trainer(tmp_path, callbacks=[callback])
    trainer.validate(module, datamodule=dm)
    assert callback.plan is None and len(decoder_layers(module.model)) == 8  # validation does not prune it
    trainer.predict(module, datamodule=dm)
    expected = collect_layer_stats(model, dm.windows("calibration").split(BATCH), progress=False)
    assert_same_stats(callback.stats, expected)
    assert callback.plan == select_layers(callback.stats, 0.25, method="shortgpt")
    assert callback.plan.pruned == select_layers(expected, 0.25, method="shortgpt").pruned
    assert_kept_blocks_are(module.model, decoder_layers(model), callback.plan.kept)


def test_lorp_checked_prunes_from_the_statistics_and_the_first_eight_calibration_windows(tokenizer, tmp_path):
    from lorp_lightning.methods import select_checked

    model = tiny_llama(len(tokenizer))
    module = LoRPModule(copy.deepcopy(model), tokenizer)
    dm = stories(tokenizer, num_calibration_windows=10)
    callback = LoRPPruneCallback(0.25, method="lorp_checked", prune_on="predict_end")
    make_trainer(tmp_path, callbacks=[callback]).predict(module, datamodule=dm)
    windows = dm.windows("calibration")
    assert torch.equal(callback.windows, windows[:8])
    expected = select_checked(model, windows, 0.25, stats=callback.stats, check_windows=8, progress=False)
    assert callback.plan.method == "lorp_checked" and callback.plan.pruned == expected.pruned
    assert [c["pruned"] for c in callback.plan.candidates] == [c["pruned"] for c in expected.candidates]
    assert_kept_blocks_are(module.model, decoder_layers(model), callback.plan.kept)


def test_pruning_at_fit_end_without_any_validation_batch_says_what_is_missing(tokenizer, tmp_path):
    module = LoRPModule(tiny_llama(len(tokenizer)), tokenizer)
    callback = LoRPPruneCallback(2, prune_on="fit_end")
    trainer = make_trainer(tmp_path, callbacks=[callback], max_epochs=1, limit_train_batches=1, limit_val_batches=0)
    with pytest.raises(RuntimeError, match=r"prune_on='fit_end'\) has no statistics.*no validation batch ran"):
        trainer.fit(module, datamodule=stories(tokenizer))
    assert len(decoder_layers(module.model)) == 8


def test_the_prune_callback_state_holds_the_plan_and_the_statistics(tokenizer, tmp_path):
    module = LoRPModule(tiny_llama(len(tokenizer)), tokenizer)
    callback = LoRPPruneCallback(2)
    make_trainer(tmp_path, callbacks=[callback]).validate(module, datamodule=stories(tokenizer))
    state = callback.state_dict()
    restored = LoRPPruneCallback(2)
    restored.load_state_dict(state)
    assert isinstance(restored.plan, PruningPlan) and restored.plan == callback.plan
    assert torch.equal(restored.stats.similarity, callback.stats.similarity)
    assert restored.stats.num_tokens == callback.stats.num_tokens == 4 * 64


def test_one_datamodule_used_with_another_tokenizer_gives_that_tokenizers_windows(smollm2):
    from lorp_lightning.assets import load_model

    _, smollm2_tokenizer = smollm2
    _, gemma_tokenizer = load_model("gemma3-270m", progress=False)
    dm = TextDataModule("wiki", tokenizer=smollm2_tokenizer, window=64, num_calibration_windows=2, num_eval_windows=2)
    first = dm.windows("heldout")
    dm.tokenizer = gemma_tokenizer
    second = dm.windows("heldout")
    fresh = TextDataModule("wiki", tokenizer=gemma_tokenizer, window=64, num_calibration_windows=2, num_eval_windows=2)
    assert torch.equal(second, fresh.windows("heldout"))
    assert not torch.equal(first, second)


def test_a_callable_method_prunes_the_blocks_it_returns(tokenizer, tmp_path):
    module = LoRPModule(tiny_llama(len(tokenizer)), tokenizer)
    before = list(decoder_layers(module.model))

    def middle_pair(ctx):
        assert ctx.num_prune == 2 and ctx.model is module.model and ctx.windows is not None
        return [4, 5]

    callback = LoRPPruneCallback(2, method=middle_pair, verbose=False)
    make_trainer(tmp_path, callbacks=[callback]).validate(module, datamodule=stories(tokenizer))
    assert callback.plan.method == "middle_pair" and callback.plan.pruned == [4, 5]
    assert_kept_blocks_are(module.model, before, callback.plan.kept)


def test_a_callable_method_returning_a_bad_plan_is_refused_and_the_model_is_left_unchanged(tokenizer, tmp_path):
    module = LoRPModule(tiny_llama(len(tokenizer)), tokenizer)
    state = {k: v.clone() for k, v in module.model.state_dict().items()}
    callback = LoRPPruneCallback(2, method=lambda ctx: [0, 5], verbose=False)
    with pytest.raises(ValueError, match=r"method '<lambda>' returned the plan \[0, 5\], which holds protected blocks \[0\]"):
        make_trainer(tmp_path, callbacks=[callback]).validate(module, datamodule=stories(tokenizer))
    assert module.model.state_dict().keys() == state.keys()
    assert all(torch.equal(module.model.state_dict()[k], v) for k, v in state.items())
    assert callback.plan is None


def test_compensate_prunes_and_folds_the_factors_select_layers_chooses_on_the_same_statistics_and_windows(tokenizer, tmp_path):
    model = tiny_llama(len(tokenizer))
    module = LoRPModule(copy.deepcopy(model), tokenizer)
    dm = stories(tokenizer, num_calibration_windows=10)
    callback = LoRPPruneCallback(0.25, method="shortgpt", prune_on="predict_end", compensate=True)
    make_trainer(tmp_path, callbacks=[callback]).predict(module, datamodule=dm)
    windows = dm.windows("calibration")
    assert torch.equal(callback.windows, windows[:8])  # a statistics-only method still checks the strength on windows
    expected = select_layers(callback.stats, 0.25, method="shortgpt", model=model, windows=windows, compensate=True)
    assert callback.plan == expected and callback.plan.compensation is not None
    factors = expected.factors
    reference = prune_layers(copy.deepcopy(model), expected.pruned, compensate=factors)
    ids = windows[:2]
    with torch.no_grad():
        torch.testing.assert_close(module.model(ids).logits, reference(ids).logits, rtol=0, atol=0)
    assert pruning_record(module.model)["steps"][-1]["compensation"] == expected.compensation["factors"]


def test_compensate_on_a_family_where_no_fold_is_exact_is_refused_at_setup_before_any_batch(tmp_path):
    from test_surgery import build

    class Never(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            raise AssertionError("no batch should be read")

    model = build("olmo2")
    callback = LoRPPruneCallback(0.25, method="shortgpt", prune_on="predict_end", compensate=True)
    with pytest.raises(ValueError, match=r"compensation is not available for the 'olmo2' family"):
        make_trainer(tmp_path, callbacks=[callback]).predict(LoRPModule(model), torch.utils.data.DataLoader(Never()))
    assert len(decoder_layers(model)) == 6


def test_rounds_prune_the_plan_select_layers_chooses_in_rounds_on_all_the_calibration_windows(tokenizer, tmp_path):
    model = tiny_llama(len(tokenizer))
    module = LoRPModule(copy.deepcopy(model), tokenizer)
    dm = stories(tokenizer, num_calibration_windows=10)
    callback = LoRPPruneCallback(3, method="shortgpt", prune_on="predict_end", rounds=2, compensate=True, verbose=False)
    make_trainer(tmp_path, callbacks=[callback]).predict(module, datamodule=dm)
    windows = dm.windows("calibration")
    assert torch.equal(callback.windows, windows)  # all 10: the second round's statistics are collected on them
    expected = select_layers(callback.stats, 3, method="shortgpt", model=model, windows=windows, compensate=True, rounds=2)
    assert callback.plan == expected and [len(r["pruned"]) for r in expected.rounds] == [2, 1]
    reference = prune_layers(copy.deepcopy(model), expected)
    ids = windows[:2]
    with torch.no_grad():
        torch.testing.assert_close(module.model(ids).logits, reference(ids).logits, rtol=0, atol=0)


def test_more_rounds_than_blocks_to_prune_is_refused_at_setup_before_any_batch(tokenizer, tmp_path):
    module = LoRPModule(tiny_llama(len(tokenizer)), tokenizer)
    callback = LoRPPruneCallback(2, method="shortgpt", prune_on="predict_end", rounds=3)
    with pytest.raises(ValueError, match=r"rounds=3 exceeds the 2 blocks amount=2 prunes; pass at most 2"):
        make_trainer(tmp_path, callbacks=[callback]).predict(module, datamodule=stories(tokenizer))
    assert callback.stats is None and len(decoder_layers(module.model)) == 8


def test_the_prune_callback_takes_its_settings_whole_or_as_arguments_which_replace_their_own():
    from lorp_lightning.methods import PruneSettings

    settings = PruneSettings(2, method="shortgpt", seed=1, protect=(0,))
    assert LoRPPruneCallback(settings=settings).settings is settings
    assert LoRPPruneCallback(2, method="shortgpt", seed=1, protect=[0]).settings == settings
    callback = LoRPPruneCallback(3, settings=settings)
    assert (callback.amount, callback.method, callback.seed, callback.protect) == (3, "shortgpt", 1, (0,))
    scheduled = LoRPPruneCallback([(0, 1), (4, 2)], settings=settings)
    assert scheduled.settings.amount is None and scheduled.amount == [(0, 1), (4, 2)]
    with pytest.raises(TypeError, match="needs an amount"):
        LoRPPruneCallback()
