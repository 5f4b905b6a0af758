"""Distillation from a teacher: the loss of healing a pruned model towards the model it was cut from.

Minitron (Sreenivas, Muralidharan et al. 2024, arXiv 2407.14679) recovers a pruned model by
distillation from the unpruned one: the student is trained to give, at every position, the
teacher's next-token distribution (a KL divergence of the logits), rather than to predict the
next token of a little text. This module holds:

- ``distillation_loss``, the loss, a pure function of tensors (no model, no Lightning):
  KL(teacher || student) per token, averaged over the real tokens, optionally mixed with the
  next-token loss, in float32;
- ``causal_lm_labels``, the labels of the next-token loss (``lorp_lightning.next_token``, the one
  rule of that loss, re-exported here);
- ``check_teacher``, the checks of a teacher against its student, run before any training;
- ``Distillation``, a teacher with the loss's settings, which
  ``LoRPHealCallback`` attaches to the module it heals. The teacher is
  either a separate causal LM, or the student itself with its removed blocks put back and its
  adapters disabled (``Distillation.dense_student``: no second copy of the dense model).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lorp_lightning.architectures import decoder_layers
from lorp_lightning.healing.settings import check_lm_weight, check_temperature
from lorp_lightning.next_token import causal_lm_labels, next_token_loss
from lorp_lightning.surgery import SavedStack, pruning_record, removed_blocks, temporarily_restored

__all__ = [
    "Distillation",
    "causal_lm_labels",
    "check_dense_stack",
    "check_teacher",
    "distillation_loss",
    "vocabulary_size",
]

# --------------------------------------------------------------------------- the loss


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None = None,
    lm_weight: float = 0.0,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """The healing loss with a teacher, a scalar (tau the ``temperature``, w the ``lm_weight``)::

        loss = (1 - w) * tau^2 * mean over the positions of mask of KL(softmax(z_teacher / tau) || softmax(z_student / tau))
               + w * CE(z_student, the next tokens)

    - The KL is the forward one, KL(teacher || student) = sum over the vocabulary of
      p_teacher * (log p_teacher - log p_student): the student is pulled towards the whole
      teacher distribution at each position (Minitron's logit loss; Hinton et al. 2015 with
      the tau^2 factor, which keeps the gradient's scale when tau changes). It is a sum over the
      vocabulary and a mean over the real tokens, so it does not depend on the batch shape.
    - The next-token part is the cross-entropy of Hugging Face's causal-LM loss (the same number
      as ``model(..., labels=labels).loss``, which ``LoRPModule``
      trains with when there is no teacher): mean over the labels that are not -100.
    - Both are computed in float32, whatever the logits' dtype; no gradient flows into the
      teacher's logits.

    Args:
        student_logits: (B, T, V) logits of the model being trained.
        teacher_logits: (B, T, V) logits of the teacher for the same tokens.
        labels: (B, T) labels of the next-token part, Hugging Face's convention (unshifted,
            -100 where there is no loss; ``causal_lm_labels``); needed when ``lm_weight > 0``,
            unread otherwise.
        lm_weight: the share of the next-token loss, in [0, 1]: 0 (default) is pure
            distillation, 1 is the plain next-token loss.
        temperature: tau > 0, which softens both distributions (default 1: the distributions
            the models give).
        mask: (B, T), nonzero where the position's next-token distribution counts (an attention
            mask); default: every position. A mask without a position gives a KL of 0.

    Raises:
        ValueError: shapes that differ (the message gives both), a ``lm_weight`` outside [0, 1],
            a ``temperature`` <= 0, or ``lm_weight > 0`` without ``labels``.
    """
    if student_logits.dim() != 3 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits and teacher_logits must be (batch, tokens, vocabulary) of one shape, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    lm_weight = check_lm_weight(lm_weight)
    temperature = check_temperature(temperature)
    batch_tokens = tuple(student_logits.shape[:2])
    if mask is not None and tuple(mask.shape) != batch_tokens:
        raise ValueError(f"mask must be (batch, tokens) = {batch_tokens}, got {tuple(mask.shape)}")
    loss = student_logits.new_zeros((), dtype=torch.float32)
    if lm_weight < 1.0:
        log_student = _log_probabilities(student_logits, temperature)
        log_teacher = _log_probabilities(teacher_logits.detach(), temperature)
        # KL(teacher || student) of each position: sum_v p_T (log p_T - log p_S)
        per_token = F.kl_div(log_student, log_teacher, log_target=True, reduction="none").sum(-1)
        if mask is None:
            kl = per_token.mean()
        else:
            weights = (mask != 0).to(per_token.dtype)
            kl = (per_token * weights).sum() / weights.sum().clamp_min(1.0)
        loss = loss + (1.0 - lm_weight) * temperature**2 * kl
    if lm_weight > 0.0:
        if labels is None:
            raise ValueError(
                f"lm_weight={lm_weight!r} mixes in the next-token loss, which needs labels "
                "(causal_lm_labels(input_ids, attention_mask))"
            )
        if tuple(labels.shape) != batch_tokens:
            raise ValueError(f"labels must be (batch, tokens) = {batch_tokens}, got {tuple(labels.shape)}")
        loss = loss + lm_weight * next_token_loss(student_logits, labels)
    return loss


def _log_probabilities(logits: Tensor, temperature: float) -> Tensor:
    """log softmax(logits / temperature) in float32 (upcast inside log_softmax: no float32 copy of the logits kept)."""
    if temperature != 1.0:
        logits = logits.float() / temperature
    return F.log_softmax(logits, dim=-1, dtype=torch.float32)


# --------------------------------------------------------------------------- the checks


def vocabulary_size(model: nn.Module) -> int:
    """The size of the model's next-token distribution: the rows of its output head (or, without
    one, ``vocab_size`` of its text config). This, not the tokenizer's length, is the last
    dimension of the logits (some checkpoints pad the head beyond the tokenizer)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        if isinstance(head, nn.Linear):
            return int(head.out_features)
        weight = getattr(head, "weight", None)
        if isinstance(weight, Tensor):
            return int(weight.shape[0])
    return int(model.config.get_text_config(decoder=True).vocab_size)


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    return a.type == "cpu" or (a.index or 0) == (b.index or 0)


def check_teacher(
    student: nn.Module,
    teacher: Any,
    *,
    device: torch.device | str | None = None,
    tokenizer: Any = None,
    teacher_tokenizer: Any = None,
) -> None:
    """Check that ``teacher`` can teach ``student``, before any training; nothing is changed.

    - ``teacher`` is a causal LM (an ``nn.Module`` with an output head) and neither the student
      nor a model sharing a parameter with it (training the student would change the teacher);
    - the two give distributions over the same vocabulary: the same logits size
      (``vocabulary_size``) and, when both tokenizers are given, the same vocabulary
      (``get_vocab()``, token for token);
    - every weight of the teacher is on ``device`` (default: the student's): a teacher elsewhere
      is refused, not moved. It may be a model in use elsewhere, and moving it would change the
      caller's object and take memory on ``device`` without being asked; the message says what
      to call. (A teacher on the ``meta`` device has no weights loaded.)

    Raises:
        TypeError: ``teacher`` is not a causal LM.
        ValueError: any other of the above, with what was found.
    """
    if not isinstance(teacher, nn.Module) or not hasattr(teacher, "get_output_embeddings"):
        raise TypeError(
            f"teacher must be a Hugging Face causal LM (a PreTrainedModel with an output head, e.g. from "
            f"AutoModelForCausalLM or load_model), got {type(teacher).__name__}"
        )
    if teacher is student:
        raise ValueError(
            "teacher is the student itself: pass the dense model it was pruned from (or, in "
            "LoRPHealCallback with LoRPPruneCallback, teacher='dense')"
        )
    student_parameters = {id(p) for p in student.parameters()}
    shared = [name for name, p in teacher.named_parameters() if id(p) in student_parameters]
    if shared:
        raise ValueError(
            f"the teacher shares {len(shared)} parameters with the student (e.g. {shared[0]}), so training "
            "the student would change the teacher; pass a separate model (load it again, or "
            "copy.deepcopy the dense model before pruning)"
        )
    student_size, teacher_size = vocabulary_size(student), vocabulary_size(teacher)
    if student_size != teacher_size:
        raise ValueError(
            f"the teacher's logits have {teacher_size} entries (its vocabulary), the student's {student_size}: "
            "distillation compares the two next-token distributions token by token, so the teacher needs the "
            "student's tokenizer (the dense model it was pruned from, or a model of the same family)"
        )
    if tokenizer is not None and teacher_tokenizer is not None:
        mine, theirs = tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
        if mine != theirs:
            differ = sorted(set(mine.items()) ^ set(theirs.items()), key=lambda item: (item[1], item[0]))
            token, index = differ[0]
            where = "the student's" if mine.get(token) == index else "the teacher's"
            raise ValueError(
                f"the teacher's tokenizer is not the student's ({len(theirs)} and {len(mine)} tokens; {where} maps "
                f"{token!r} to {index}, the other does not): distillation compares the next-token distributions token "
                "by token, so both must share one tokenizer"
            )
    where = torch.device(device) if device is not None else next(student.parameters()).device
    found = sorted({str(p.device) for p in teacher.parameters()} | {str(b.device) for b in teacher.buffers()})
    if "meta" in found:
        raise ValueError(
            f"the teacher has weights on the meta device (not loaded, e.g. from init_empty_weights): "
            f"load its weights on {where} before healing"
        )
    if any(not _same_device(torch.device(d), where) for d in found):
        on = found[0] if len(found) == 1 else f"{', '.join(found)} (spread)"
        raise ValueError(
            f"the teacher is on {on}, the student on {where}: the teacher is not moved for you (it may be a model "
            f"you use elsewhere, and it would take memory on {where}); move it first with teacher.to({str(where)!r})"
        )


def check_dense_stack(model: nn.Module, dense: SavedStack) -> list[nn.Module]:
    """Check that ``dense`` (saved by ``save_stack`` before the
    pruning) is the stack ``model`` was pruned from; return the removed blocks it keeps aside.

    Raises:
        ValueError: a block of the model is not in ``dense``, or the model's pruning record does
            not start from ``dense``'s depth.
    """
    record = pruning_record(model) or {}
    try:
        removed = removed_blocks(model, dense)
        if int(record.get("original_num_layers", -1)) != dense.num_layers:
            raise ValueError("depth")
    except ValueError as error:
        raise ValueError(
            f"the dense stack kept aside ({dense.num_layers} blocks) is not the one this model of "
            f"{len(decoder_layers(model))} blocks was pruned from (pruning record: {record or None}); the teacher "
            "'dense' needs the blocks removed from this very model"
        ) from error
    return removed


# --------------------------------------------------------------------------- the teacher


class Distillation:
    """A teacher and the settings of ``distillation_loss``: what a healing module needs to
    train on the distillation loss instead of the next-token loss.

    ``LoRPHealCallback(teacher=...)`` builds one when healing starts and sets it as
    ``LoRPModule.distillation`` (which ``training_step`` then uses); it is removed when healing
    ends. Build one yourself with ``from_model`` or ``dense_student``.

    The teacher runs under ``torch.no_grad``, in eval mode, in its own dtype (autocast off: a
    bfloat16 teacher runs in bfloat16, a float32 one in float32, whatever the Trainer's
    precision), and only its logits are kept.
    """

    def __init__(
        self,
        teacher_logits: Callable[[Tensor, Tensor], Tensor],
        *,
        temperature: float = 1.0,
        lm_weight: float = 0.0,
        description: dict[str, Any] | None = None,
        on_start: Callable[[], None] | None = None,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        self._teacher_logits = teacher_logits
        self.temperature = check_temperature(temperature)
        self.lm_weight = check_lm_weight(lm_weight)
        self.description = dict(description or {})
        self.calls = 0
        self._on_start, self._on_stop = on_start, on_stop

    # ------------------------------------------------------------------ the two teachers

    @classmethod
    def from_model(
        cls, teacher: nn.Module, *, temperature: float = 1.0, lm_weight: float = 0.0, name: str | None = None
    ) -> Distillation:
        """A separate causal LM as the teacher (check it first with ``check_teacher``).

        It is put in eval mode by ``start`` and back in the mode it was in by ``stop``;
        its weights are never changed.
        """
        was_training = [teacher.training]

        def logits(input_ids: Tensor, attention_mask: Tensor) -> Tensor:
            return teacher(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

        def start() -> None:
            was_training[0] = teacher.training
            teacher.eval()

        description = {
            "teacher": name or getattr(teacher.config, "_name_or_path", None) or type(teacher).__name__,
            "shared_weights": False,
            "teacher_dtype": str(next(teacher.parameters()).dtype).replace("torch.", ""),
            "teacher_num_layers": len(decoder_layers(teacher)) if _has_blocks(teacher) else None,
        }
        return cls(
            logits,
            temperature=temperature,
            lm_weight=lm_weight,
            description=description,
            on_start=start,
            on_stop=lambda: teacher.train(was_training[0]),
        )

    @classmethod
    def dense_student(
        cls, model: nn.Module, dense: SavedStack, tuner: Any, *, temperature: float = 1.0, lm_weight: float = 0.0
    ) -> Distillation:
        """The student as its own teacher: its removed blocks put back and its LoRA adapters disabled.

        ``dense`` is the stack ``save_stack`` saved before the pruning
        (it holds the removed blocks), ``tuner`` peft's ``LoraModel`` injected into ``model``. With
        the adapters off, the kept blocks compute with their frozen weights, which are the dense
        model's, so the teacher is the dense model; it costs the memory of the removed blocks only
        (kept aside, not copied). Each call puts the blocks back
        (``temporarily_restored``), turns the adapters off and the model
        to eval mode, runs, and undoes all three, so the student trains as before. The removed
        blocks follow the student to its device and dtype (Lightning moves the model after they
        were removed).

        Raises:
            ValueError: ``model`` is not the saved model with blocks removed, or its pruning
                record does not start from the saved depth.
        """
        removed = check_dense_stack(model, dense)

        def follow_the_student() -> None:
            # a frozen weight of a kept block (not an adapter's, which is float32 on a bf16 model)
            reference = next(p for block in decoder_layers(model) for n, p in block.named_parameters() if "lora_" not in n)
            for block in removed:
                first = next(block.parameters(), None)
                if first is not None and (first.device != reference.device or first.dtype != reference.dtype):
                    block.to(device=reference.device, dtype=reference.dtype)

        def logits(input_ids: Tensor, attention_mask: Tensor) -> Tensor:
            follow_the_student()
            training = model.training
            requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
            model.eval()
            tuner.disable_adapter_layers()
            try:
                with temporarily_restored(model, dense):
                    return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
            finally:
                tuner.enable_adapter_layers()  # peft turns the adapters' requires_grad off and on: put back exactly
                for name, p in model.named_parameters():
                    p.requires_grad_(requires_grad.get(name, p.requires_grad))
                model.train(training)

        description = {
            "teacher": "dense",
            "shared_weights": True,
            "teacher_dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "teacher_num_layers": dense.num_layers,
        }
        return cls(logits, temperature=temperature, lm_weight=lm_weight, description=description)

    # ------------------------------------------------------------------ use

    def start(self) -> None:
        """Before the first step: the teacher in eval mode."""
        if self._on_start is not None:
            self._on_start()

    def stop(self) -> None:
        """After the last step: the teacher back in the mode it was in."""
        if self._on_stop is not None:
            self._on_stop()

    def teacher_logits(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """The teacher's logits for a batch, (B, T, V), without gradient, in the teacher's dtype."""
        self.calls += 1
        with torch.no_grad(), torch.autocast(device_type=input_ids.device.type, enabled=False):
            return self._teacher_logits(input_ids, attention_mask)

    def loss(
        self, student_logits: Tensor, input_ids: Tensor, attention_mask: Tensor, teacher_logits: Tensor | None = None
    ) -> Tensor:
        """``distillation_loss`` of the student's logits for a batch, with these settings (the
        teacher's logits computed now unless given; the labels by ``causal_lm_labels``; the
        attention mask as the mask)."""
        if teacher_logits is None:
            teacher_logits = self.teacher_logits(input_ids, attention_mask)
        labels = causal_lm_labels(input_ids, attention_mask) if self.lm_weight > 0 else None
        return distillation_loss(
            student_logits, teacher_logits, labels, lm_weight=self.lm_weight, temperature=self.temperature, mask=attention_mask
        )

    def record(self) -> dict[str, Any]:
        """What the healing record says of the distillation: the teacher and the loss's settings."""
        return {**self.description, "loss": "kl(teacher||student)", "temperature": self.temperature, "lm_weight": self.lm_weight}


def _has_blocks(model: nn.Module) -> bool:
    try:
        decoder_layers(model)
    except (AttributeError, NotImplementedError, TypeError):
        return False
    return True
