"""The callbacks in a Lightning project of the user's own shape.

The user's LightningModule keeps its Hugging Face causal LM under another attribute
(``self.backbone``), deeper down (``self.net["lm"]``, reached as ``"net.lm"`` or by a getter), or
builds it in ``configure_model``; its batches are tensors, dicts with a mask and labels, lists
from a ``TensorDataset``, or a tokenizer's ``BatchEncoding``. Every statistic is checked against
``collect_layer_stats`` over the same batches (equal to the last bit), and every pruning against
``select_layers`` on those statistics. Small random Llamas built from a config; the SmolLM2 tokenizer where a real
tokenizer matters.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from transformers import LlamaConfig, LlamaForCausalLM

from lorp_lightning.architectures import decoder_layers
from lorp_lightning.callbacks import LayerStatsCallback, LoRPPruneCallback, get_causal_lm
from lorp_lightning.healing import LoRPHealCallback, healing_records
from lorp_lightning.methods import select_layers
from lorp_lightning.stats import LayerStats, collect_layer_stats, model_inputs
from lorp_lightning.surgery import prune_layers

VOCAB = 128
NUM_LAYERS = 8
WINDOW = 16


# --------------------------------------------------------------------------- the user's project


def tiny_llama(vocab_size: int = VOCAB) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab_size,
    )
    return LlamaForCausalLM(config).eval()


def run_lm(lm: nn.Module, batch):
    """How the user's steps call their causal LM, for each kind of batch their data gives."""
    if isinstance(batch, Mapping):  # a dict or a BatchEncoding: input_ids, attention_mask, maybe labels
        return lm(**batch)
    if isinstance(batch, (tuple, list)):  # a TensorDataset of (input ids, labels)
        input_ids, labels = batch
        return lm(input_ids=input_ids, labels=labels)
    return lm(input_ids=batch)


class BackboneProject(LightningModule):
    """The causal LM at ``self.backbone``."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.backbone = lm
        self.steps = 0

    @property
    def language_model(self) -> nn.Module:
        return self.backbone

    def validation_step(self, batch, batch_idx):
        self.steps += 1
        return run_lm(self.language_model, batch).logits.mean()

    def predict_step(self, batch, batch_idx):
        self.steps += 1
        return run_lm(self.language_model, batch).logits[:, -1]

    def training_step(self, batch, batch_idx):
        return run_lm(self.language_model, batch).loss

    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=1e-3)


class NestedProject(BackboneProject):
    """The causal LM at ``self.net["lm"]``, next to a head of the user's own."""

    def __init__(self, lm: nn.Module) -> None:
        LightningModule.__init__(self)
        self.net = nn.ModuleDict({"lm": lm, "head": nn.Linear(4, 4)})
        self.steps = 0

    @property
    def language_model(self) -> nn.Module:
        return self.net["lm"]


class BuiltInConfigureModel(BackboneProject):
    """Builds its causal LM in ``configure_model``, as Lightning advises for large models."""

    def __init__(self, attribute: str = "backbone") -> None:
        LightningModule.__init__(self)
        self.attribute = attribute
        self.backbone = None
        self.steps = 0

    def configure_model(self) -> None:
        if getattr(self, self.attribute, None) is None:
            setattr(self, self.attribute, tiny_llama())


def get_lm(pl_module):
    return pl_module.net["lm"]


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


def random_ids(count: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, VOCAB, (count, WINDOW), generator=torch.Generator().manual_seed(seed))


def tensor_loader() -> DataLoader:
    return DataLoader(random_ids(6), batch_size=2)


def padded_dict_loader() -> DataLoader:
    """Dicts of input_ids, attention_mask and labels; rows 1 and 4 right-padded."""
    ids = random_ids(6)
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    mask[4, 5:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    labels = ids.masked_fill(mask == 0, -100)
    rows = [{"input_ids": i, "attention_mask": m, "labels": lab} for i, m, lab in zip(ids, mask, labels, strict=True)]
    return DataLoader(rows, batch_size=2)


def tensor_dataset_loader() -> DataLoader:
    """A TensorDataset of (input ids, labels): each batch is a list [input_ids, labels] of the same shape."""
    ids = random_ids(6)
    return DataLoader(TensorDataset(ids, ids.clone()), batch_size=2)


def assert_same_stats(actual: LayerStats, expected: LayerStats) -> None:
    """Equal to the last bit: the callback's statistics are the same arithmetic as collect_layer_stats's,
    the decoder blocks over the same input ids and mask, batch by batch in the same order."""
    assert actual.num_tokens == expected.num_tokens
    assert actual.num_sequences == expected.num_sequences
    assert torch.equal(actual.similarity, expected.similarity)
    assert torch.equal(actual.last_token_similarity, expected.last_token_similarity)


# --------------------------------------------------------------------------- where the causal LM is


LOCATIONS = {
    "an attribute name": (BackboneProject, "backbone"),
    "a dotted path": (NestedProject, "net.lm"),
    "a getter": (NestedProject, get_lm),
}


@pytest.mark.parametrize("location", LOCATIONS)
def test_the_prune_callback_finds_the_causal_lm_where_model_says_and_prunes_it(location, tmp_path):
    project, model = LOCATIONS[location]
    lm = tiny_llama()
    dense = copy.deepcopy(lm)
    module = project(lm)
    callback = LoRPPruneCallback(2, method="lorp", prune_on="predict_end", model=model, verbose=False)
    make_trainer(tmp_path, callbacks=[callback]).predict(module, tensor_loader())

    expected = collect_layer_stats(dense, tensor_loader(), progress=False)
    assert_same_stats(callback.stats, expected)
    assert callback.stats.num_tokens == 6 * WINDOW
    assert callback.plan == select_layers(callback.stats, 2, method="lorp")
    assert callback.plan.pruned == select_layers(expected, 2, method="lorp").pruned
    assert module.language_model is lm and len(decoder_layers(lm)) == NUM_LAYERS - 2
    kept = [decoder_layers(dense)[i] for i in callback.plan.kept]
    for block, original in zip(decoder_layers(lm), kept, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(block.state_dict().values(), original.state_dict().values(), strict=True))


def test_a_method_that_tries_plans_gets_the_causal_lm_found_by_the_getter(tmp_path):
    lm = tiny_llama()
    module = NestedProject(lm)
    seen = {}

    def middle_pair(ctx):
        seen["model"], seen["windows"] = ctx.model, ctx.windows
        return [3, 4]

    callback = LoRPPruneCallback(2, method=middle_pair, model=get_lm, verbose=False)
    make_trainer(tmp_path, callbacks=[callback]).validate(module, tensor_loader())
    assert seen["model"] is lm
    assert torch.equal(seen["windows"], random_ids(6))  # the six unpadded validation windows
    assert callback.plan.pruned == [3, 4] and len(decoder_layers(lm)) == NUM_LAYERS - 2


def test_a_causal_lm_built_in_configure_model_is_found_when_the_loop_starts(tmp_path):
    module = BuiltInConfigureModel()
    stats_callback = LayerStatsCallback(model="backbone")
    make_trainer(tmp_path, callbacks=[stats_callback]).predict(module, tensor_loader())
    assert_same_stats(stats_callback.stats, collect_layer_stats(tiny_llama(), tensor_loader(), progress=False))


def test_get_causal_lm_is_the_lookup_every_callback_uses():
    lm = tiny_llama()
    module = NestedProject(lm)
    assert get_causal_lm(module, "net.lm") is lm and get_causal_lm(module, get_lm) is lm
    assert get_causal_lm(BackboneProject(lm), "backbone") is lm


# --------------------------------------------------------------------------- batches of each format


@pytest.mark.parametrize("loader", [tensor_loader, padded_dict_loader, tensor_dataset_loader])
def test_statistics_of_each_batch_format_equal_collect_layer_stats_over_the_same_batches(loader, tmp_path):
    lm = tiny_llama()
    stats_callback = LayerStatsCallback(model="backbone")
    make_trainer(tmp_path, callbacks=[stats_callback]).predict(BackboneProject(lm), loader())
    expected = collect_layer_stats(lm, loader(), progress=False)
    assert_same_stats(stats_callback.stats, expected)


def test_a_padded_dict_batch_counts_its_real_tokens_only():
    batches = list(padded_dict_loader())
    stats = collect_layer_stats(tiny_llama(), batches, progress=False)
    assert stats.num_tokens == 6 * WINDOW - 6 - 11 and stats.num_sequences == 6


def test_the_second_tensor_of_a_tuple_batch_is_not_read_as_a_mask():
    ids = random_ids(2)
    zeros_and_ones = torch.ones_like(ids)
    zeros_and_ones[:, 8:] = 0  # looks like a mask, but a tuple's second element may as well be labels
    input_ids, attention_mask = model_inputs((ids, zeros_and_ones), torch.device("cpu"))
    assert torch.equal(input_ids, ids) and torch.equal(attention_mask, torch.ones_like(ids))
    input_ids, attention_mask = model_inputs([ids, ids], torch.device("cpu"))
    assert torch.equal(input_ids, ids) and torch.equal(attention_mask, torch.ones_like(ids))


def test_a_tokenizers_batch_encoding_reads_as_its_input_ids_and_attention_mask(smollm2, tmp_path):
    _, tokenizer = smollm2
    texts = [
        "The river rose in the night.",
        "A short one.",
        "Maps of the old town were drawn by hand, street by street.",
        "Then it rained.",
    ]

    def loader():
        return DataLoader(texts, batch_size=2, collate_fn=lambda rows: tokenizer(rows, padding=True, return_tensors="pt"))

    first = next(iter(loader()))
    assert type(first).__name__ == "BatchEncoding" and not bool(first["attention_mask"].all())  # padded
    lm = tiny_llama(len(tokenizer))
    stats_callback = LayerStatsCallback(model="backbone")
    make_trainer(tmp_path, callbacks=[stats_callback]).predict(BackboneProject(lm), loader())
    expected = collect_layer_stats(lm, loader(), progress=False)
    assert_same_stats(stats_callback.stats, expected)
    assert stats_callback.stats.num_tokens == sum(int(b["attention_mask"].sum()) for b in loader())


@pytest.mark.parametrize(
    "batch, error, words",
    [
        (
            "some text",
            TypeError,
            "a batch must be a tensor of input ids, a dict (or other Mapping) with 'input_ids', "
            "or a tuple or list whose first element is the input ids; got str",
        ),
        (42, TypeError, "got int"),
        ((), TypeError, "a batch tuple must hold the input ids as its first element, got an empty one"),
        ([[1, 2, 3]], TypeError, "the first element of a batch list must be a tensor of token ids, got list"),
        (
            {"input_ids": [[1, 2, 3]]},
            TypeError,
            "batch['input_ids'] must be a tensor of token ids, got list (a tokenizer gives tensors with return_tensors='pt')",
        ),
        (torch.rand(2, 4), TypeError, "the batch must hold integer token ids, got a tensor of torch.float32"),
        (
            {"input_ids": torch.ones(2, 4, dtype=torch.long), "attention_mask": torch.ones(2, 3)},
            ValueError,
            "batch['attention_mask'] has shape (2, 3) but batch['input_ids'] has (2, 4)",
        ),
        ({"ids": torch.ones(2, 4, dtype=torch.long)}, ValueError, "a batch dict needs 'input_ids'; got keys ['ids']"),
    ],
)
def test_a_batch_of_no_known_format_is_a_clear_error_naming_what_it_got(batch, error, words):
    with pytest.raises(error, match=re.escape(words)):
        model_inputs(batch, torch.device("cpu"))


# --------------------------------------------------------------------------- mistakes, caught early


@pytest.mark.parametrize(
    "model, words",
    [
        (42, "LayerStatsCallback(model=...) says where the causal LM is in your LightningModule, and got 42 (int)"),
        (
            nn.Linear(2, 2),
            "and got the Linear itself: pass an attribute name (model='backbone', dotted paths allowed) "
            "or a callable pl_module -> the causal LM",
        ),
        ("", "LayerStatsCallback(model='') is not an attribute name"),
        ("net..lm", "LayerStatsCallback(model='net..lm') is not an attribute name"),
    ],
)
def test_a_model_argument_of_the_wrong_kind_is_refused_when_the_callback_is_built(model, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        LayerStatsCallback(model=model)


@pytest.mark.parametrize(
    "callback, error, words",
    [
        (
            LayerStatsCallback(model="backbon"),
            ValueError,
            "LayerStatsCallback(model='backbon'): NestedProject has no attribute 'backbon'; its submodules are ['net']",
        ),
        (
            LoRPPruneCallback(2, model="net.llm"),
            ValueError,
            "LoRPPruneCallback(model='net.llm'): NestedProject has no attribute 'net.llm'",
        ),
        (
            LoRPPruneCallback(2, model="net.head"),
            TypeError,
            "LoRPPruneCallback(model='net.head') works on a Hugging Face causal LM (LoRPModule keeps one at .model), "
            "but NestedProject.net.head is Linear",
        ),
        (
            LoRPPruneCallback(2, model=lambda module: module.backbone),
            ValueError,
            "LoRPPruneCallback(model=<lambda>) raised AttributeError",
        ),
        (LoRPPruneCallback(2), ValueError, "LoRPPruneCallback(model='model'): NestedProject has no attribute 'model'"),
    ],
)
def test_a_model_argument_that_leads_to_no_causal_lm_fails_at_setup_before_any_batch(callback, error, words, tmp_path):
    module = NestedProject(tiny_llama())
    with pytest.raises(error, match=re.escape(words)):
        make_trainer(tmp_path, callbacks=[callback]).validate(module, tensor_loader())
    assert module.steps == 0 and len(decoder_layers(module.net["lm"])) == NUM_LAYERS


def test_a_causal_lm_configure_model_does_not_build_is_missed_when_the_loop_starts_before_any_batch(tmp_path):
    module = BuiltInConfigureModel(attribute="lm")  # builds self.lm, while the callback looks at self.backbone
    callback = LoRPPruneCallback(2, model="backbone")
    with pytest.raises(
        TypeError,
        match=re.escape(
            "LoRPPruneCallback(model='backbone') works on a Hugging Face causal LM "
            "(LoRPModule keeps one at .model), but BuiltInConfigureModel.backbone is NoneType"
        ),
    ):
        make_trainer(tmp_path, callbacks=[callback]).validate(module, tensor_loader())
    assert module.steps == 0


# --------------------------------------------------------------------------- healing


def test_the_heal_callback_heals_the_causal_lm_where_model_says(tmp_path):
    lm = prune_layers(tiny_llama(), [3, 4])
    module = BackboneProject(lm)
    heal_callback = LoRPHealCallback(mode="adjacent", model="backbone", verbose=False)
    make_trainer(tmp_path, callbacks=[heal_callback], max_steps=1, limit_val_batches=0).fit(module, tensor_dataset_loader())
    [entry] = healing_records(lm)
    assert entry["mode"] == "adjacent" and entry["num_steps"] == 1 and entry["tokens"] == 2 * WINDOW
    with pytest.raises(ValueError, match=re.escape("LoRPHealCallback(model='model'): BackboneProject has no attribute 'model'")):
        make_trainer(tmp_path, callbacks=[LoRPHealCallback(mode="adjacent")], max_steps=1).fit(module, tensor_dataset_loader())
