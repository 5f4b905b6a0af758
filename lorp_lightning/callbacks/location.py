"""Where the callbacks find the causal LM in a LightningModule, and what they do to the Trainer
around it: a location (an attribute name or a callable), the lookup, whether FSDP shards the
model, and rebuilding the optimizers after the model changed in the middle of ``fit``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lorp_lightning.architectures import decoder_layers

__all__ = ["ModelLocation", "check_model_location", "get_causal_lm", "rebuild_optimizers"]

ModelLocation = str | Callable[[pl.LightningModule], nn.Module]
"""Where a callback finds the causal LM in a LightningModule: an attribute name (dotted paths
allowed, e.g. ``"net.lm"``) or a callable ``pl_module -> nn.Module``."""

_SHARDED_STRATEGIES = (FSDPStrategy, ModelParallelStrategy)
"""The strategies that shard the model's weights across processes: statistics work under them,
pruning in place does not (see ``LoRPPruneCallback``)."""


def _describe(model: ModelLocation) -> str:
    """``model=...`` as an error message shows it: a name in quotes, a callable by its name."""
    if isinstance(model, str):
        return f"model={model!r}"
    return f"model={getattr(model, '__qualname__', None) or repr(model)}"


def check_model_location(model: Any, owner: str = "get_causal_lm") -> ModelLocation:
    """``model`` checked to be a ``ModelLocation``; a ValueError naming it and its value otherwise.

    Callbacks call it in ``__init__``: a misspelt kind of value fails when the callback is built,
    a misspelt name at ``setup`` (``get_causal_lm``).
    """
    if isinstance(model, str):
        if not model or any(not part for part in model.split(".")):
            raise ValueError(
                f"{owner}({_describe(model)}) is not an attribute name: pass the name of the attribute of your "
                "LightningModule that holds the causal LM, e.g. model='model' or model='net.lm'"
            )
        return model
    if isinstance(model, nn.Module) or not callable(model):
        what = f"the {type(model).__name__} itself" if isinstance(model, nn.Module) else f"{model!r} ({type(model).__name__})"
        raise ValueError(
            f"{owner}(model=...) says where the causal LM is in your LightningModule, and got {what}: pass an "
            "attribute name (model='backbone', dotted paths allowed) or a callable pl_module -> the causal LM "
            "(model=lambda module: module.backbone)"
        )
    return model


def get_causal_lm(pl_module: pl.LightningModule, model: ModelLocation = "model", owner: str = "get_causal_lm") -> nn.Module:
    """The Hugging Face causal LM inside ``pl_module``, checked to have decoder blocks lorp_lightning knows.

    Args:
        pl_module: the LightningModule.
        model: where the causal LM is: an attribute name of ``pl_module`` (default ``"model"``,
            where ``LoRPModule`` keeps it; dotted paths walk down
            attributes, e.g. ``"net.lm"``), or a callable that takes ``pl_module`` and returns it.
        owner: the name the error messages start with (a callback passes its class name).

    Raises:
        ValueError: ``model`` is neither kind of value, names an attribute ``pl_module`` lacks,
            or is a callable that raised; the message names ``model`` and its value.
        TypeError: what ``model`` leads to is not a causal LM of a known architecture.
    """
    found = _find(pl_module, model, owner)
    try:
        decoder_layers(found)
    except (AttributeError, NotImplementedError, TypeError) as error:
        where = f"{type(pl_module).__name__}.{model}" if isinstance(model, str) else "what it returned"
        raise TypeError(
            f"{owner}({_describe(model)}) works on a Hugging Face causal LM (LoRPModule keeps one at .model), "
            f"but {where} is {type(found).__name__}: {error}"
        ) from error
    return found


def _find(pl_module: pl.LightningModule, model: ModelLocation, owner: str) -> Any:
    """What ``model`` leads to in ``pl_module``, unchecked; a ValueError naming ``model`` when it leads nowhere."""
    check_model_location(model, owner)
    if not isinstance(model, str):
        try:
            return model(pl_module)
        except Exception as error:
            raise ValueError(f"{owner}({_describe(model)}) raised {type(error).__name__}: {error}") from error
    found: Any = pl_module
    parts = model.split(".")
    for depth, part in enumerate(parts):
        try:
            found = getattr(found, part)
        except AttributeError:
            children = [name for name, _ in pl_module.named_children()]
            raise ValueError(
                f"{owner}({_describe(model)}): {type(pl_module).__name__} has no attribute "
                f"{'.'.join(parts[: depth + 1])!r}; its submodules are {children}. Pass model='<attribute>' naming "
                "the causal LM (dotted paths allowed), or a callable pl_module -> the causal LM"
            ) from None
    return found


def _is_sharded(model: nn.Module) -> bool:
    """Whether FSDP shards ``model``'s weights: an FSDP (1 or 2) module in it, or a DTensor weight."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.fsdp import FullyShardedDataParallel

    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch < 2.6
        FSDPModule = FullyShardedDataParallel
    from torch.distributed.tensor import DTensor

    return any(isinstance(m, (FullyShardedDataParallel, FSDPModule)) for m in model.modules()) or any(
        isinstance(p, DTensor) for p in model.parameters()
    )


def rebuild_optimizers(trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
    """After blocks were removed or trainable parameters added in the middle of ``fit``: a new DDP
    wrapper and new optimizers over the module's parameters as they are now."""
    strategy = trainer.strategy
    if isinstance(strategy.model, DistributedDataParallel):
        strategy.model = pl_module
        strategy.configure_ddp()
    strategy.setup_optimizers(trainer)
