"""A LightningModule around a Hugging Face causal LM, for calibration, evaluation and healing."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torchmetrics.text import Perplexity
from typing_extensions import override

from lorp_lightning._validation import check_real
from lorp_lightning.architectures import decoder_layers
from lorp_lightning.assets import load_model
from lorp_lightning.distillation import Distillation
from lorp_lightning.next_token import IGNORE_INDEX, causal_lm_labels, next_token_loss, next_token_pairs
from lorp_lightning.precision import choose_dtype
from lorp_lightning.stats import backbone, last_token_index, model_inputs
from lorp_lightning.surgery import RECORD_ATTRIBUTE, prune_layers, pruning_record

__all__ = ["LoRPModule"]

CHECKPOINT_KEY = "lorp_pruning"
"""Key of the pruning record in a Lightning checkpoint (the model's ``config.lorp_pruning``)."""


class LoRPModule(pl.LightningModule):
    """A Hugging Face causal LM as a LightningModule: calibration, perplexity and healing steps.

    Example::

        module = LoRPModule("smollm2-135m")
        trainer = Trainer(callbacks=[LoRPPruneCallback(0.25)])
        trainer.validate(module, datamodule=TextDataModule("wiki", window=512))

    Args:
        model: a bundled model name or a model path (loaded with
            ``lorp_lightning.assets.load_model``), or a ``PreTrainedModel``.
        tokenizer: the model's tokenizer (optional; a name or path brings its own).
        lr: learning rate of the default optimizer (AdamW).
        weight_decay: weight decay of the default optimizer.
        dtype: the weights' dtype when ``model`` is a name or path: ``"auto"`` (bf16 on a CPU
            that runs it natively, float32 elsewhere; see
            ``lorp_lightning.precision.choose_dtype``), a ``torch.dtype`` or its name. A
            model object keeps its own dtype, and another one is an error.

    The steps: ``predict_step`` is the calibration pass (a forward pass through the decoder
    blocks, during which the statistics callbacks listen; it returns the final hidden state of
    each sequence's last token); ``validation_step`` and ``test_step`` log the perplexity of the
    windows as ``val_ppl`` and ``test_ppl``; ``training_step`` is the causal-LM loss (logged as
    ``train_loss``), or, while ``distillation`` is set (``LoRPHealCallback(teacher=...)`` sets
    it for the healing), the distillation loss from that teacher
    (``distillation_loss``, logged as ``train_loss`` too).
    Override ``configure_optimizers`` for another optimizer. During ``fit`` the
    model is in train mode, and it is left afterwards in the mode it came in.

    ``module.model`` is the plain Hugging Face model at all times. A checkpoint of a pruned model
    carries its pruning record, and loading it into a module of the unpruned model removes the
    same blocks before the weights load, so ``load_from_checkpoint`` and ``fit(ckpt_path=...)``
    work on pruned checkpoints. A module built from a name reloads with
    ``LoRPModule.load_from_checkpoint(path)``; one built from a model object needs the unpruned
    model again: ``LoRPModule.load_from_checkpoint(path, model=model)``.
    """

    def __init__(
        self,
        model: str | os.PathLike | Any,
        tokenizer: Any = None,
        lr: float = 1e-5,
        weight_decay: float = 0.0,
        dtype: torch.dtype | str = "auto",
    ) -> None:
        super().__init__()
        from transformers import PreTrainedModel

        lr = check_real(lr, "lr", low=0.0, what="a number >= 0")
        weight_decay = check_real(weight_decay, "weight_decay", low=0.0, what="a number >= 0")
        if isinstance(model, (str, os.PathLike)):
            model = os.fspath(model)  # saved as a hyper-parameter, so load_from_checkpoint(path) rebuilds it
            self.save_hyperparameters(ignore=["tokenizer"])
            hf_model, loaded_tokenizer = load_model(model, dtype=dtype, progress=False)
            tokenizer = tokenizer if tokenizer is not None else loaded_tokenizer
        elif isinstance(model, PreTrainedModel):
            if dtype != "auto" and choose_dtype(dtype).dtype != model.dtype:
                raise ValueError(
                    f"dtype={dtype!r} applies only to a model loaded by name or path; "
                    f"a model object keeps its own dtype ({model.dtype}): cast it with model.to(dtype)"
                )
            self.save_hyperparameters(ignore=["model", "tokenizer"])
            hf_model = model
        else:
            raise TypeError(
                f"model must be a bundled model name, a model path or a transformers PreTrainedModel, got {type(model).__name__}"
            )
        decoder_layers(hf_model)  # a causal LM whose blocks lorp_lightning finds, or a clear error now
        self.model = hf_model
        self.tokenizer = tokenizer
        self.val_ppl = Perplexity(ignore_index=IGNORE_INDEX)
        self.test_ppl = Perplexity(ignore_index=IGNORE_INDEX)
        self.distillation: Distillation | None = None

    # ------------------------------------------------------------------ steps

    def _inputs(self, batch: Tensor | Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        return model_inputs(batch, self.device)

    @override
    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, **kwargs: Any) -> Any:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)

    @override
    def training_step(self, batch: Tensor | Mapping[str, Tensor], batch_idx: int) -> Tensor:
        input_ids, attention_mask = self._inputs(batch)
        if self.distillation is None:
            loss = next_token_loss(self(input_ids, attention_mask).logits, causal_lm_labels(input_ids, attention_mask))
        else:  # the teacher's logits first: they need no graph, and a shared teacher borrows the student's blocks
            teacher_logits = self.distillation.teacher_logits(input_ids, attention_mask)
            logits = self(input_ids, attention_mask).logits
            loss = self.distillation.loss(logits, input_ids, attention_mask, teacher_logits=teacher_logits)
        self.log("train_loss", loss, prog_bar=True, batch_size=input_ids.shape[0])
        return loss

    def _update_perplexity(self, metric: Perplexity, batch: Tensor | Mapping[str, Tensor]) -> None:
        input_ids, attention_mask = self._inputs(batch)
        logits = self(input_ids, attention_mask).logits
        metric.update(*next_token_pairs(logits, causal_lm_labels(input_ids, attention_mask)))

    @override
    def on_validation_epoch_start(self) -> None:
        # Lightning resets a logged metric at the end of an epoch, under that loop's grad mode: after
        # ``validate`` (inference mode) its state is made of inference tensors, which the validation
        # inside ``fit`` (no_grad only) may not update in place. Fresh state in this loop's mode.
        self.val_ppl.reset()

    @override
    def on_test_epoch_start(self) -> None:
        self.test_ppl.reset()

    @override
    def validation_step(self, batch: Tensor | Mapping[str, Tensor], batch_idx: int) -> None:
        self._update_perplexity(self.val_ppl, batch)
        self.log("val_ppl", self.val_ppl, prog_bar=True)

    @override
    def test_step(self, batch: Tensor | Mapping[str, Tensor], batch_idx: int) -> None:
        self._update_perplexity(self.test_ppl, batch)
        self.log("test_ppl", self.test_ppl)

    @override
    def predict_step(self, batch: Tensor | Mapping[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """The calibration pass: the decoder blocks run, without the head, while the statistics callbacks listen.

        Returns the final hidden state of each sequence's last real token, a small (B, D) tensor.
        """
        input_ids, attention_mask = self._inputs(batch)
        hidden = backbone(self.model)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)[0]
        return hidden[torch.arange(input_ids.shape[0], device=hidden.device), last_token_index(attention_mask)]

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        return torch.optim.AdamW(parameters, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    @override
    def on_fit_start(self) -> None:
        # Hugging Face models load in eval mode; train in train mode, and leave the model as it came
        self._mode_before_fit = self.model.training
        self.model.train()

    @override
    def on_fit_end(self) -> None:
        self.model.train(getattr(self, "_mode_before_fit", True))

    # ------------------------------------------------------------------ checkpoints

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        record = pruning_record(self.model)
        if record is not None:
            checkpoint[CHECKPOINT_KEY] = copy.deepcopy(record)

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        record = checkpoint.get(CHECKPOINT_KEY)
        if record is not None:
            self._apply_pruning_record(record)

    def _apply_pruning_record(self, record: dict) -> None:
        """Remove the blocks ``record`` says were removed and this model still has."""
        current = pruning_record(self.model) or {}
        original = int(record["original_num_layers"])
        target = [int(i) for i in record["pruned_layers"]]
        done = [int(i) for i in current.get("pruned_layers", [])]
        num_layers = len(decoder_layers(self.model))
        if int(current.get("original_num_layers", num_layers)) != original or not set(done) <= set(target):
            raise ValueError(
                f"the checkpoint holds a model of {original} blocks with blocks {target} removed, but this module's "
                f"model has {num_layers} blocks (pruning record: {current or None}); build the LoRPModule from the "
                "model the checkpoint was pruned from"
            )
        if done == sorted(target):
            return
        remaining = [i for i in range(original) if i not in set(done)]  # original index of each current block
        with torch.inference_mode(False):
            prune_layers(self.model, [remaining.index(i) for i in target if i not in set(done)])
        setattr(self.model.config, RECORD_ATTRIBUTE, copy.deepcopy(record))  # keep the steps as they were
