"""What trains in a healing: LoRA adapters on the blocks' linear layers, or the blocks next to the
removed ones; how it goes in (``start``) and how it comes out (``merge``).

``start`` freezes the model and adds what trains, and returns a ``Healing`` that says what it
changed; ``merge`` merges the adapters into the weights and makes the parameters train as they
did before, so that the model is again a plain Hugging Face model. The record of the healing is
``record.add_entry``'s.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lorp_lightning.architectures import architecture_of, decoder_layers
from lorp_lightning.healing.settings import HealingSettings, peft
from lorp_lightning.surgery import RECORD_ATTRIBUTE, pruning_record

__all__ = [
    "Healing",
    "blocks_next_to_removed",
    "check_model",
    "check_settings",
    "checked_record",
    "lora_targets",
    "merge",
    "start",
]

_ADAPTER = "default"


def blocks_next_to_removed(original_num_layers: int, pruned_layers: Sequence[int]) -> list[int]:
    """The kept blocks next to a removed block, in the pruned model's numbering.

    For each removed block (original numbering), the nearest kept block below it and the nearest
    kept block above it, where they exist. A run of removed blocks has one neighbour on each side.

    Example: 10 blocks with blocks 2, 3 and 7 removed keep 0 1 4 5 6 8 9; the neighbours are the
    original blocks 1, 4, 6 and 8, which are blocks ``[1, 2, 4, 5]`` of the pruned model.
    """
    removed = set(int(i) for i in pruned_layers)
    kept = [i for i in range(int(original_num_layers)) if i not in removed]
    neighbours: set[int] = set()
    for block in removed:
        below = [i for i in kept if i < block]
        above = [i for i in kept if i > block]
        if below:
            neighbours.add(below[-1])
        if above:
            neighbours.add(above[0])
    return sorted(kept.index(i) for i in neighbours)


def checked_record(model: nn.Module) -> dict:
    """The model's pruning record, checked to be one and to match the model's depth (what healing needs)."""
    record = pruning_record(model)
    if record is None:
        raise ValueError(
            "healing recovers what pruning lost, but this model has no pruning record (config.lorp_pruning): prune it "
            "first (prune_layers, LoRPPruneCallback or `lorp prune`); for plain fine-tuning, fit a LoRPModule"
        )
    try:
        original = int(record["original_num_layers"])
        pruned = [int(i) for i in record["pruned_layers"]]
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"config.{RECORD_ATTRIBUTE}={record!r} is not a pruning record written by lorp_lightning") from error
    if original - len(pruned) != len(decoder_layers(model)):
        raise ValueError(
            f"config.{RECORD_ATTRIBUTE} says {original} - {len(pruned)} blocks remain, but the model has "
            f"{len(decoder_layers(model))}; the record is stale"
        )
    return record


def _linear_layers_of_blocks(model: nn.Module) -> tuple[dict[str, nn.Module], dict[str, nn.Module]]:
    """The linear layers inside the decoder blocks (``nn.Linear`` or GPT-2's ``Conv1D``), as two dicts of full
    name -> module: those LoRA may adapt, and the routing layers of the mixture-of-experts blocks, which it may not.

    A routing layer is a linear layer that is a direct child of a module that also has an ``experts`` child: the
    router that picks the experts of each token (Llama 4's ``router``; a plain ``nn.Linear`` ``gate`` in older
    transformers), or a gate that weighs a shared expert (``shared_expert_gate`` of Qwen's MoE blocks, which maps the
    hidden size to 1). The experts' own layers and a shared expert's are adapted like any other.
    """
    from transformers.pytorch_utils import Conv1D

    prefix = architecture_of(model).layers_path
    layers, routers = {}, {}
    for index, block in enumerate(decoder_layers(model)):
        routing = {
            f"{owner}.{child}" if owner else child
            for owner, module in block.named_modules()
            if isinstance(getattr(module, "experts", None), nn.Module)
            for child, layer in module.named_children()
            if isinstance(layer, (nn.Linear, Conv1D))
        }
        for name, module in block.named_modules():
            if isinstance(module, (nn.Linear, Conv1D)):
                (routers if name in routing else layers)[f"{prefix}.{index}.{name}"] = module
    return layers, routers


def _features(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    rows, columns = module.weight.shape  # transformers' Conv1D stores (in, out)
    return rows, columns


def lora_targets(model: nn.Module, settings: HealingSettings) -> dict[str, nn.Module]:
    """The linear layers LoRA adapts, checked against ``target_modules`` and the rank.

    Every linear layer of the decoder blocks (or those ``target_modules`` names), except the routing layers of the
    mixture-of-experts blocks (see ``_linear_layers_of_blocks``). An update of a router changes which experts each
    token runs through, where healing should only make up for what the removed blocks computed; the routers of most
    families are no linear layers peft can adapt anyway (transformers 5's ``TopKRouter`` modules hold a bare
    weight), and Llama 4's, which is one, returns a tuple that a LoRA layer cannot add to (peft fails in the first
    step). The experts of transformers 5's MoE blocks are fused 3-D parameters, not linear layers, so they get no
    adapter either: on Mixtral, GPT-OSS or OLMoE, LoRA adapts the attention only.
    """
    layers, routers = _linear_layers_of_blocks(model)
    leaf_names = sorted({name.rpartition(".")[2] for name in layers})
    if settings.target_modules is None:
        targets = layers
    else:
        unknown = [t for t in settings.target_modules if t not in leaf_names]
        if unknown:
            routing = sorted({name.rpartition(".")[2] for name in routers})
            why = (
                f"which routes tokens among the experts of the MoE blocks: LoRA leaves the routing layers {routing} as "
                "they are, so that a healing does not change which experts each token runs through"
                if unknown[0] in routing
                else "which is not a linear layer of the decoder blocks"
            )
            raise ValueError(
                f"target_modules={list(settings.target_modules)!r} names {unknown[0]!r}, {why}; the blocks' linear "
                f"layers are {leaf_names}"
            )
        wanted = set(settings.target_modules)
        targets = {name: m for name, m in layers.items() if name.rpartition(".")[2] in wanted}
    if not targets:
        raise ValueError(f"the decoder blocks of this {model.config.model_type} model have no linear layer for LoRA")
    narrowest = min(targets, key=lambda name: min(_features(targets[name])))
    fan_in, fan_out = _features(targets[narrowest])
    if settings.rank > min(fan_in, fan_out):
        raise ValueError(
            f"rank={settings.rank} does not fit: the target module {narrowest.rpartition('.')[2]!r} maps {fan_in} to "
            f"{fan_out} features, so a LoRA update of it has rank at most {min(fan_in, fan_out)}; pass "
            f"rank <= {min(fan_in, fan_out)}, or leave that module out of target_modules"
        )
    return targets


def _final_norms(model: nn.Module) -> dict[str, nn.Module]:
    """The normalisation layers that follow the blocks: children of the module holding them, named for a norm."""
    owner_path = architecture_of(model).layers_path.rpartition(".")[0]
    owner = model.get_submodule(owner_path)
    return {
        f"{owner_path}.{name}": module
        for name, module in owner.named_children()
        if "norm" in type(module).__name__.lower() or "norm" in name.lower() or name in ("ln_f",)
    }


def check_dtype(model: nn.Module, settings: HealingSettings) -> None:
    """The model's weights refused for settings that train them in low precision (``settings.needs_float32``)."""
    if settings.needs_float32:
        low = sorted({str(p.dtype) for p in model.parameters() if p.dtype in (torch.bfloat16, torch.float16)})
        if low:
            raise ValueError(
                f"mode='adjacent' trains the block weights themselves, which are {', '.join(low)} here: AdamW updates "
                "smaller than their precision would be lost. Heal a float32 model (model.float()), or use mode='lora' "
                "(float32 adapters on a frozen low-precision model)"
            )


@dataclass
class Healing:
    """What one healing changed in the model, to undo the freezing and merge the adapters at the end."""

    settings: HealingSettings
    requires_grad: dict[str, bool]
    trainable: list[str]
    target_modules: list[str] | None
    trained_blocks: list[int] | None
    num_trainable_parameters: int
    start_step: int
    tuner: Any = None
    distillation: dict | None = None
    tokens: int = 0
    losses: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    seconds_before: float = 0.0  # spent before a resume, in the run that wrote the checkpoint
    resumed_at: list[int] = field(default_factory=list)  # the global steps of the checkpoints it was resumed from

    @property
    def seconds(self) -> float:
        """The time this healing has trained, across resumes."""
        return self.seconds_before + time.perf_counter() - self.started


def check_settings(model: nn.Module, settings: HealingSettings) -> None:
    """The checks of the settings against the model that need no pruning record: the dtype (``"adjacent"``), the
    LoRA targets and rank, and peft (``"lora"``)."""
    check_dtype(model, settings)
    if settings.mode == "lora":
        lora_targets(model, settings)
        peft()


class _Holder(nn.Module):
    """The model as peft's ``LoraModel`` is given it: a module that holds it (as ``model``) and has no ``config``.

    For transformers 5's MoE families (Mixtral, Qwen3-MoE, Qwen3-Next, DeepSeek-V3, MiniMax, OLMoE, ...), peft
    renames the targets of a model with a ``config`` as if they were written for transformers 4, whose experts were
    linear layers: a target ending in ``gate_proj``, ``up_proj``, ``down_proj``, ``w1``, ``w2``, ``w3`` or ``gate``
    becomes the fused 3-D parameters of every expert (``experts.gate_up_proj``, ``experts.down_proj``) or the router's
    weight. The targets here are this model's own modules under their own names (a dense block's MLP, a shared
    expert), so that renaming would put the adapters on other weights than those asked for, and the record would say
    otherwise. Held in a module without a config, the model keeps its names; the adapters still go into its own
    modules, and ``merge_and_unload`` merges them there.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model


def _misplaced(tuner: Any, targets: dict[str, nn.Module]) -> str | None:
    """None when the adapters are on ``targets`` and nowhere else; else where peft put them, in words."""
    placed = sorted(name.removeprefix("model.") for name in tuner.targeted_module_names)
    parameters = sorted(name.removeprefix("model.") for name in getattr(tuner, "targeted_parameter_names", None) or [])
    if placed == sorted(targets) and not parameters:
        return None
    extra = sorted(set(placed) - set(targets)) + parameters
    missing = sorted(set(targets) - set(placed))
    return (
        f"peft {peft().__version__} put the LoRA adapters on other weights than the {len(targets)} linear layers "
        f"asked for: also on {len(extra)} others ({', '.join(extra[:3])}), not on {len(missing)} of them "
        f"({', '.join(missing[:3])}); the model is left as it was. Heal with mode='adjacent', or with the peft "
        "version pyproject.toml names"
    )


def check_model(model: nn.Module, settings: HealingSettings) -> dict:
    """Every check that needs the model, before anything changes; returns the pruning record."""
    record = checked_record(model)
    check_settings(model, settings)
    return record


def start(model: nn.Module, settings: HealingSettings, start_step: int) -> Healing:
    """Freeze the model and add what trains: LoRA adapters, or the blocks next to the removed ones."""
    record = check_model(model, settings)
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    tuner, targets, trained_blocks = None, None, None
    if settings.mode == "lora":
        targets = lora_targets(model, settings)
        config = settings.lora_config(targets)
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # peft's notes on the config it fills in
            torch.manual_seed(settings.seed)  # the adapters' random initialisation
            # injects into `model` itself (seen through _Holder: see there) and freezes the rest
            tuner = peft().LoraModel(_Holder(model), config, _ADAPTER)
        problem = _misplaced(tuner, targets)
        if problem is not None:
            tuner.unload()
            for name, p in model.named_parameters():
                p.requires_grad_(requires_grad[name])
            raise RuntimeError(problem)
        tuner._cast_adapter_dtype(_ADAPTER, autocast_adapter_dtype=True)  # float32 adapters on a bf16/fp16 model
    else:
        trained_blocks = blocks_next_to_removed(record["original_num_layers"], record["pruned_layers"])
        prefix = architecture_of(model).layers_path
        modules = [f"{prefix}.{i}" for i in trained_blocks] + list(_final_norms(model))
        trainable_ids = {id(p) for path in modules for p in model.get_submodule(path).parameters()}
        head = model.get_output_embeddings()
        if head is not None:
            trainable_ids |= {id(p) for p in head.parameters()}
        for p in model.parameters():
            p.requires_grad_(id(p) in trainable_ids)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    count = sum(p.numel() for p in {id(p): p for p in model.parameters() if p.requires_grad}.values())
    leaf_names = None if targets is None else sorted({name.rpartition(".")[2] for name in targets})
    return Healing(settings, requires_grad, trainable, leaf_names, trained_blocks, count, start_step, tuner)


def merge(model: nn.Module, healing: Healing) -> None:
    """Merge the adapters (LoRA) into the weights, and make the parameters train as they did before ``start``."""
    if healing.tuner is not None:
        with torch.no_grad():
            healing.tuner.merge_and_unload(safe_merge=True)
    for name, p in model.named_parameters():
        p.requires_grad_(healing.requires_grad.get(name, True))
