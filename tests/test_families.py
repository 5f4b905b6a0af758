"""Every causal-LM type of the installed transformers, pruned exactly or refused with a reason.

The sweep of ``benchmarks/decisions/family_sweep.py`` runs here on every type (about a minute on one
thread): each type's status must be the one ``docs/families.md`` publishes, no type may be
*WRONG* (pruned, but not equal to skipping the blocks, or not reloading, or generating otherwise
with its cache), and today's families are supported by name.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks" / "decisions"))
import family_sweep  # noqa: E402

from lorp_lightning.architectures import ARCHITECTURES  # noqa: E402

# The families issue 34 names, each supported by an entry of the table (Gemma 4 with its per-layer inputs,
# the E2B/E4B layout; Jamba with plans that keep its period).
TODAYS_FAMILIES = [
    "qwen3_5_text",
    "gpt_oss",
    "llama4_text",
    "smollm3",
    "qwen3_moe",
    "mixtral",
    "olmoe",
    "deepseek_v3",
    "granite",
    "olmo3",
    "cohere2",
    "glm4",
    "phi",
    "exaone4",
    "ernie4_5",
    "nemotron",
    "seed_oss",
    "minimax",
    "qwen3_next",
    "lfm2",
    "falcon_h1",
    "jamba",
    "granitemoehybrid",
    "gemma4_text",
]


@pytest.fixture(scope="module")
def sweep() -> dict[str, family_sweep.Result]:
    return {r.model_type: r for r in family_sweep.sweep(sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES))}


def published() -> dict[str, str]:
    """type -> status, as docs/families.md gives them."""
    rows = re.findall(r"^\| `([^`]+)` \| ([^|]+) \|", family_sweep.PAGE.read_text(), flags=re.MULTILINE)
    return {model_type: status.strip() for model_type, status in rows}


def test_no_type_is_pruned_wrongly(sweep):
    wrong = {t: r.note for t, r in sweep.items() if r.status == "WRONG"}
    assert not wrong


def test_every_type_has_the_status_the_families_page_publishes(sweep):
    page = published()
    assert sorted(page) == sorted(sweep), "a type was added or removed: run python benchmarks/decisions/family_sweep.py"
    changed = {t: (page[t], r.status, r.note) for t, r in sweep.items() if page[t] != r.status}
    assert not changed, "statuses changed: run python benchmarks/decisions/family_sweep.py and check docs/families.md"


@pytest.mark.parametrize("model_type", TODAYS_FAMILIES)
def test_todays_families_are_supported_by_their_table_entry(sweep, model_type):
    assert model_type in ARCHITECTURES
    assert (sweep[model_type].status, sweep[model_type].how) == ("supported", "table"), sweep[model_type].note


def test_every_family_of_the_table_that_builds_here_is_supported(sweep):
    assert {t: r.note for t, r in sweep.items() if t in ARCHITECTURES and r.status != "supported"} == {}


def test_the_decoder_of_an_encoder_decoder_is_refused_since_its_config_depth_counts_the_encoder(sweep):
    # BartForCausalLM is the decoder half; num_hidden_layers is BartConfig's alias of encoder_layers
    assert sweep["bart"].status == "refused" and "does not count the blocks at model.decoder.layers" in sweep["bart"].note
