"""Shared fixtures: the bundled models are loaded once per test session (from the cache)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def smollm2():
    """The bundled SmolLM2-135M (llama, 30 blocks) in float32, with its tokenizer."""
    from lorp_lightning.assets import load_model

    return load_model("smollm2-135m", dtype=torch.float32, progress=False)


@pytest.fixture
def tokenizer(smollm2):
    """SmolLM2's tokenizer (the tiny random models of the Lightning tests take its vocabulary)."""
    return smollm2[1]


@pytest.fixture(scope="session")
def wiki_heldout_windows(smollm2):
    from lorp_lightning.assets import load_text
    from lorp_lightning.evaluation import token_windows

    _, tokenizer = smollm2
    return token_windows(tokenizer, load_text("wiki", "heldout"), window=512, max_windows=4)
