"""Token windows of a text as a LightningDataModule: calibration, evaluation and healing data.

Splits. A bundled text (``"wiki"``, ``"c4"``, ``"tinystories"``, ``"lambada"``) uses the splits of
`lorp_lightning.assets`. A text file is cut into documents at blank lines (paragraphs), a
list of strings is a list of documents, and each document goes to the held-out split by the same
rule as the bundled texts: when the first eight hex digits of the sha256 of its (stripped) text,
read as an integer, are divisible by 5 (about one document in five). The rule depends on the
document alone, so the split is deterministic and independent of the order of the documents.

Windows. The documents of a split are joined by blank lines, tokenized once and cut into
consecutive, non-overlapping windows of ``window`` tokens ([`token_windows`][lorp_lightning.evaluation.token_windows]);
``num_calibration_windows`` (or ``num_eval_windows``) of them are drawn with ``seed`` and kept
in text order.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from lorp_lightning._validation import ParameterError, check_choice, check_int
from lorp_lightning.assets import BUNDLED_TEXTS, SPLITS, load_documents, split_documents
from lorp_lightning.evaluation import check_window, token_windows

__all__ = ["ShuffledLoader", "TextDataModule", "calibration_documents", "calibration_windows", "text_documents"]


class ShuffledLoader(DataLoader):
    """A DataLoader that shuffles with a generator seeded by ``seed``, and resumes in the middle of an epoch.

    It serves the batches of ``DataLoader(dataset, shuffle=True, generator=torch.Generator().manual_seed(seed))``,
    in the same order, epoch after epoch, and it has ``state_dict`` and ``load_state_dict``, so Lightning keeps its
    place in a checkpoint and gives it back on ``fit(ckpt_path=...)``: the resumed run is served the batches an
    uninterrupted run would have been served next. The state is the number of batches served in the current epoch
    and the generator's state at its start and now. (Lightning's training loop takes one batch per step from a loader
    with a length, and stops at its length, so that number is the batches trained; a new epoch then begins from the
    generator as it is, not from the state after a further draw that running the sampler to its end would make.)

    Given a ``sampler`` (as Lightning gives a ``DistributedSampler`` under DDP), it serves that sampler's order
    instead, and still resumes: its state is then the batches served.
    """

    def __init__(self, dataset: Dataset, batch_size: int = 1, *, seed: int = 0, **kwargs: Any) -> None:
        kwargs.pop("shuffle", None)
        if kwargs.get("sampler") is None and kwargs.get("batch_sampler") is None:
            kwargs.update(shuffle=True, generator=torch.Generator().manual_seed(seed))
        super().__init__(dataset, batch_size=batch_size, **kwargs)
        self.seed = seed
        self._epoch_start: Tensor | None = None  # the generator's state when the current epoch began
        self._served = 0
        self._resume: dict[str, Any] | None = None

    def __iter__(self):
        skip = 0
        if self._resume is not None:
            state, self._resume = self._resume, None
            skip = int(state["served"])
            at_end = skip >= len(self)  # taken after the last batch of an epoch: the next epoch begins
            if self.generator is not None:
                self.generator.set_state(state["generator"] if at_end else state["epoch_start"])
            skip = 0 if at_end else skip
        self._epoch_start = None if self.generator is None else self.generator.get_state()
        batches = super().__iter__()
        for _ in range(skip):
            next(batches)
        self._served = skip
        for batch in batches:
            self._served += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """Where the loader is: the batches served in this epoch, the generator's state at its start and now."""
        now = None if self.generator is None else self.generator.get_state()
        return {"served": self._served, "epoch_start": self._epoch_start, "generator": now}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Go on from ``state_dict`` (``state_dict()`` of a loader of the same data and seed) at the next ``iter``."""
        self._resume = dict(state_dict)


class _Windows(Dataset):
    """Rows of a (num_windows, window) tensor as ``{"input_ids", "attention_mask"}`` samples."""

    def __init__(self, windows: Tensor) -> None:
        self.windows = windows

    def __len__(self) -> int:
        return self.windows.shape[0]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        ids = self.windows[index]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def text_documents(text: str | os.PathLike | Sequence[str], split: str) -> list[str]:
    """The documents of one split of ``text``, in their original order: a bundled text name (its
    split, as `load_documents` gives it), the path of a text file
    (cut into documents at blank lines), or a list of documents; the split rule is in the module docs."""
    return _documents(*_check_text(text), split)


def calibration_documents(text: str | os.PathLike | Sequence[str]) -> list[str]:
    """The calibration split of ``text`` (``text_documents``), refused when it is empty."""
    documents = text_documents(text, "calibration")
    if not documents:
        raise ParameterError(
            "text",
            f"text={text!r} has no calibration documents (a file is cut into documents at blank "
            "lines, and about 1 in 5 is held out); give a text with more paragraphs",
        )
    return documents


def calibration_windows(
    tokenizer: Any, text: str | os.PathLike | Sequence[str], window: int = 512, num_windows: int = 32
) -> Tensor:
    """The first ``num_windows`` windows of ``window`` tokens of the calibration split of ``text``, in text order.

        windows = calibration_windows(tokenizer, "wiki", window=512, num_windows=32)   # (32, 512) token ids

    What ``lorp`` calibrates on (its ``--text``, ``--window`` and ``--windows``), and the first windows of it what
    the searched methods check plans on. ``text``: a bundled text name, a text file or a list of documents, split
    as ``text_documents`` splits it. A text with fewer windows is refused, naming how many it has.
    """
    num_windows = check_int(num_windows, "num_windows")
    windows = token_windows(tokenizer, "\n\n".join(calibration_documents(text)), window=window)
    if windows.shape[0] < num_windows:
        raise ParameterError(
            "num_windows",
            f"num_windows={num_windows} but the calibration split of text={text!r} has "
            f"only {windows.shape[0]} windows of {window} tokens; ask for at most "
            f"{windows.shape[0]}",
        )
    return windows[:num_windows]


def _check_text(text: Any) -> tuple[str, Any]:
    """("bundled", name) | ("file", path) | ("documents", tuple of strings)."""
    if isinstance(text, (str, os.PathLike)):
        if isinstance(text, str) and text in BUNDLED_TEXTS:
            return "bundled", text
        if Path(text).is_file():
            return "file", os.fspath(text)
        raise ParameterError(
            "text",
            f"text={text!r} is neither a bundled text ({', '.join(BUNDLED_TEXTS)}) nor an existing file; "
            "pass one of those names, the path of a text file, or a list of strings",
        )
    if isinstance(text, Sequence) and text and all(isinstance(doc, str) for doc in text):
        return "documents", tuple(text)
    raise ParameterError(
        "text",
        f"text must be a bundled text name ({', '.join(BUNDLED_TEXTS)}), the path of a text file, or a non-empty "
        f"list of strings; got {type(text).__name__} {text!r:.80}",
    )


def _documents(kind: str, source: Any, split: str) -> list[str]:
    check_choice(split, "split", SPLITS)
    if kind == "bundled":
        return load_documents(source, split)
    if kind == "file":
        documents = re.split(r"\n\s*\n", Path(source).read_text(encoding="utf-8"))
    else:
        documents = list(source)
    documents = [d.strip() for d in documents if d.strip()]
    return split_documents(documents, split)


class TextDataModule(pl.LightningDataModule):
    """Fixed-length token windows of a text: calibration windows for ``predict`` and ``train``,
    held-out windows for ``validate`` and ``test``.

    For example, choosing blocks on 32 calibration windows and scoring the pruned model on the
    held-out ones:

    ```python
    module, dm = LoRPModule("smollm2-135m"), TextDataModule("wiki", window=512, num_calibration_windows=32)
    Trainer(callbacks=[LoRPPruneCallback(0.25, prune_on="predict_end")]).predict(module, datamodule=dm)
    Trainer().validate(module, datamodule=dm)
    ```

    Args:
        text: a bundled text name (``"wiki"``, ``"c4"``, ``"tinystories"``, ``"lambada"``), the
            path of a UTF-8 text file, or a list of strings (documents). See the module docs for
            how a file or a list is split into calibration and held-out documents.
        tokenizer: a Hugging Face tokenizer. Default None: the ``tokenizer`` of the Trainer's
            LightningModule (a [`LoRPModule`][lorp_lightning.module.LoRPModule] has one).
        window: tokens per window (>= 2).
        num_calibration_windows: how many calibration windows to draw (None: all of them).
        num_eval_windows: how many held-out windows to draw (None: all of them).
        batch_size: windows per batch.
        seed: which windows are drawn, and the order of the training batches.
        num_workers: passed to the DataLoaders.

    After ``setup``, `windows` returns the drawn windows of a split as a tensor.
    """

    def __init__(
        self,
        text: str | os.PathLike | Sequence[str] = "wiki",
        tokenizer: Any = None,
        *,
        window: int = 512,
        num_calibration_windows: int | None = 32,
        num_eval_windows: int | None = 32,
        batch_size: int = 4,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self._source = _check_text(text)
        window = check_window(window)
        num_calibration_windows = check_int(
            num_calibration_windows,
            "num_calibration_windows",
            none_ok=True,
            what="a positive int (calibration windows to draw) or None for all of them",
        )
        num_eval_windows = check_int(
            num_eval_windows,
            "num_eval_windows",
            none_ok=True,
            what="a positive int (held-out windows to draw) or None for all of them",
        )
        batch_size = check_int(batch_size, "batch_size")
        seed = check_int(seed, "seed", low=0)
        num_workers = check_int(num_workers, "num_workers", low=0)
        self.tokenizer = tokenizer
        self.window = window
        self.num_windows = {"calibration": num_calibration_windows, "heldout": num_eval_windows}
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self._windows: dict[str, tuple[Any, Tensor]] = {}  # split -> (the tokenizer, its windows)
        self.save_hyperparameters(
            {
                "text": self._source[1] if self._source[0] != "documents" else f"{len(self._source[1])} documents",
                "window": window,
                "num_calibration_windows": num_calibration_windows,
                "num_eval_windows": num_eval_windows,
                "batch_size": batch_size,
                "seed": seed,
            }
        )

    # ------------------------------------------------------------------ the windows

    def documents(self, split: str) -> list[str]:
        """The documents of ``split`` (``"calibration"`` or ``"heldout"``), in their original order."""
        return _documents(*self._source, split)

    def windows(self, split: str) -> Tensor:
        """The drawn windows of ``split`` as a (num_windows, window) tensor of token ids.

        They are tokenized by the current tokenizer, and kept per tokenizer: the same data module
        used with another model's module gives that model's token ids.
        """
        tokenizer = self._tokenizer()
        cached = self._windows.get(split)
        if cached is None or cached[0] is not tokenizer:
            self._windows[split] = (tokenizer, self._draw(split, tokenizer))
        return self._windows[split][1]

    def _draw(self, split: str, tokenizer: Any) -> Tensor:
        documents = self.documents(split)
        if not documents:
            raise ValueError(
                f"text={self._source[1]!r:.80} has no {split} documents under the hash rule (see "
                "lorp_lightning.data); pass more documents (a file with more paragraphs, or a longer list)"
            )
        try:
            every = token_windows(tokenizer, "\n\n".join(documents), window=self.window)
        except ValueError as error:
            raise ValueError(f"the {split} split of text={self._source[1]!r:.80}: {error}") from error
        wanted = self.num_windows[split]
        if wanted is None:
            return every
        if wanted > every.shape[0]:
            option = "num_calibration_windows" if split == "calibration" else "num_eval_windows"
            raise ValueError(
                f"{option}={wanted} but the {split} split of text={self._source[1]!r:.80} has only "
                f"{every.shape[0]} windows of {self.window} tokens; ask for at most {every.shape[0]}, or pass None for all"
            )
        generator = torch.Generator().manual_seed(self.seed)
        chosen = torch.randperm(every.shape[0], generator=generator)[:wanted].sort().values
        return every[chosen]

    def _tokenizer(self) -> Any:
        if self.tokenizer is not None:
            return self.tokenizer
        module = self.trainer.lightning_module if self.trainer is not None else None
        tokenizer = getattr(module, "tokenizer", None)
        if tokenizer is None:
            raise ValueError(
                "TextDataModule has no tokenizer: pass TextDataModule(..., tokenizer=tokenizer), or use it with a "
                "LightningModule that has a `tokenizer` attribute (LoRPModule has one)"
            )
        return tokenizer

    # ------------------------------------------------------------------ Lightning hooks

    @override
    def setup(self, stage: str) -> None:
        needed = {"fit": SPLITS, "validate": ("heldout",), "test": ("heldout",), "predict": ("calibration",)}
        for split in needed.get(stage, SPLITS):
            self.windows(split)

    @override
    def train_dataloader(self) -> DataLoader:
        return ShuffledLoader(
            _Windows(self.windows("calibration")), batch_size=self.batch_size, seed=self.seed, num_workers=self.num_workers
        )

    @override
    def val_dataloader(self) -> DataLoader:
        return self._loader("heldout")

    @override
    def test_dataloader(self) -> DataLoader:
        return self._loader("heldout")

    @override
    def predict_dataloader(self) -> DataLoader:
        return self._loader("calibration")

    def _loader(self, split: str, **kwargs: Any) -> DataLoader:
        return DataLoader(_Windows(self.windows(split)), batch_size=self.batch_size, num_workers=self.num_workers, **kwargs)
