"""Every causal-LM type of the installed transformers, pruned as a user would, or refused with a reason.

For each model type in ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES``, a tiny random model
(``benchmarks/decisions/tiny_models.py``: 6 blocks, hidden size 64, vocabulary 128) goes through four checks:

1. ``prune_layers(model, plan)``: the logits equal the dense model's with the plan's blocks
   skipped (each hands its input on unchanged). The plan is [1, 2], or the first of
   ``FALLBACK_PLANS`` the family accepts (Jamba, say, takes only plans that keep its period);
2. ``save_pretrained``, then plain ``AutoModelForCausalLM.from_pretrained``: no missing or
   unexpected weights, and the same logits;
3. greedy generation with the KV cache equals generation without it (where the dense model's do);
4. the reloaded model pruned again (its block 2) equals the dense model with all three skipped.

A type is then one of:

- ``supported``: all four hold, by its entry in ``lorp_lightning/architectures.py`` (*table*)
  or by the generic path, which proves each pruning on the spot (*generic*);
- ``refused``: ``lorp_lightning`` refuses it with a reason (an encoder-decoder; blocks that
  depend on their position; no block list to find);
- ``not tiny here``: it cannot be built tiny on this machine (why);
- ``WRONG``: pruning went through but a check failed, or it crashed. That is a bug, and
  ``tests/test_families.py`` fails on it.

    python benchmarks/decisions/family_sweep.py                 # every type; writes docs/families.md
    python benchmarks/decisions/family_sweep.py llama jamba     # some types, printed only
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from tiny_models import DEPTH, NotTiny, kind, tiny_model  # a module of this folder, on the path when run as a script
from transformers import AutoModelForCausalLM
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from lorp_lightning.architectures import ARCHITECTURES, architecture_of, decoder_layers
from lorp_lightning.surgery import PlanRefusedError, prune_layers

PAGE = Path(__file__).resolve().parents[2] / "docs" / "families.md"
FIRST_PLAN = [1, 2]
FALLBACK_PLANS = ([2, 3], [3, 4], [1], [2], [3], [4], [5])
AGAIN = [2]  # the second pruning, in the numbering after the first
LENGTH = 12  # tokens of the test input
NEW_TOKENS = 6
STATUSES = ("supported", "refused", "not tiny here", "WRONG")


@dataclass(frozen=True)
class Result:
    model_type: str
    status: str  # one of STATUSES
    how: str  # "table" or "generic" for a supported type; the kind of the type otherwise
    note: str  # the plan used and anything a reader should know; the reason for the other statuses
    seconds: float


def input_ids(model: torch.nn.Module) -> torch.Tensor:
    """A fixed input that avoids the config's special tokens (an image token would ask for pixels)."""
    config = model.config
    special = {
        value
        for c in (config, config.get_text_config(decoder=True))
        for name, value in vars(c).items()
        if name.endswith(("_token_id", "_token_index")) and isinstance(value, int)
    }
    allowed = torch.tensor([i for i in range(3, 120) if i not in special])
    return allowed[torch.randint(len(allowed), (1, LENGTH), generator=torch.Generator().manual_seed(1))]


@torch.no_grad()
def logits(model: torch.nn.Module, ids: torch.Tensor, skipped: list[int] = ()) -> torch.Tensor:
    """The logits of ``model``, with the ``skipped`` blocks handing their input on unchanged (found by the library)."""

    def skip(module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        return hidden if isinstance(output, torch.Tensor) else (hidden, *output[1:])

    handles = [decoder_layers(model)[i].register_forward_hook(skip, with_kwargs=True) for i in skipped]
    try:
        return model(input_ids=ids, use_cache=False).logits.float()
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def greedy(model: torch.nn.Module, ids: torch.Tensor, use_cache: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens and the logits of greedy generation of NEW_TOKENS tokens after ``ids``."""
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        use_cache=use_cache,
        pad_token_id=0,
        return_dict_in_generate=True,
        output_logits=True,
    )
    return out.sequences, torch.stack(out.logits).float()


def cache_agrees(model: torch.nn.Module, ids: torch.Tensor) -> bool:
    """Greedy generation with the KV cache gives the tokens and (within 1e-3) the logits it gives without."""
    (tokens, logits_cached), (plain_tokens, logits_plain) = greedy(model, ids, True), greedy(model, ids, False)
    return torch.equal(tokens, plain_tokens) and torch.allclose(logits_cached, logits_plain, rtol=1e-3, atol=1e-3)


def reloaded(model: torch.nn.Module) -> tuple[torch.nn.Module, dict]:
    """``model`` saved and loaded back by plain transformers, with the loading info."""
    with tempfile.TemporaryDirectory() as directory:
        model.save_pretrained(directory)
        copy, info = AutoModelForCausalLM.from_pretrained(directory, output_loading_info=True)
    return copy.eval(), info


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, rtol=0, atol=1e-4)


def first_line(error: BaseException) -> str:
    """The error's class and its first sentence (the rest says what to do, which the page need not repeat)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    cut = text.find(". ", 60)
    text = text[: cut + 1] if 0 < cut else text
    return f"{type(error).__name__}: {text if len(text) <= 320 else text[:320].rsplit(' ', 1)[0] + ' ...'}"


def check(model_type: str) -> Result:
    """Build, prune and check one type; never raises."""
    start = time.perf_counter()

    def result(status: str, how: str, note: str) -> Result:
        return Result(model_type, status, how, note, time.perf_counter() - start)

    try:
        model = tiny_model(model_type)
    except NotTiny as error:
        return result("not tiny here", kind(model_type), str(error))
    try:
        architecture = architecture_of(model)
    except (NotImplementedError, ValueError) as error:
        return result("refused", kind(model_type), first_line(error))
    how = "generic" if architecture.generic else "table"
    try:
        ids = input_ids(model)
        logits(model, ids)
    except Exception as error:  # noqa: BLE001 - the dense model itself does not run on input ids alone
        return result("not tiny here", kind(model_type), f"the dense model does not run on input ids alone ({first_line(error)})")

    notes = []
    refusals = []
    plan = None
    for candidate in (FIRST_PLAN, *FALLBACK_PLANS):
        try:
            expected = logits(model, ids, skipped=candidate)
        except Exception as error:  # noqa: BLE001 - a block whose output is no (hidden, ...) tuple; lorp_lightning must refuse it
            expected = error
        try:
            prune_layers(model, candidate)
        except PlanRefusedError as error:
            refusals.append((candidate, error))
            continue
        except (ValueError, NotImplementedError) as error:
            return result("refused", how, first_line(error))
        except Exception as error:  # noqa: BLE001 - a crash inside lorp_lightning is a bug
            return result("WRONG", how, f"prune_layers crashed: {first_line(error)}")
        plan = candidate
        break
    if plan is None:
        return result("refused", how, first_line(refusals[0][1]))
    if refusals:
        notes.append(f"plan {plan}; {refusals[0][0]} refused ({first_line(refusals[0][1])})")
    else:
        notes.append(f"plan {plan}")
    if isinstance(expected, Exception):
        return result("WRONG", how, f"plan {plan} accepted, but skipping its blocks fails: {first_line(expected)}")
    pruned = logits(model, ids)
    if not close(pruned, expected):
        return result(
            "WRONG", how, f"plan {plan}: logits differ from skipping the blocks by {(pruned - expected).abs().max():.3g}"
        )

    try:
        reloaded(tiny_model(model_type))
    except Exception as error:  # noqa: BLE001 - saving and loading is the family's own affair
        notes.append(f"save and reload not compared: the dense model does not reload either ({first_line(error)})")
        copy = model
    else:
        try:
            copy, info = reloaded(model)
        except Exception as error:  # noqa: BLE001
            return result("WRONG", how, f"plan {plan}: save and reload failed: {first_line(error)}")
        if info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"]:
            return result("WRONG", how, f"plan {plan}: reload: {dict((k, sorted(v)[:3]) for k, v in info.items() if v)}")
        if not close(logits(copy, ids), pruned):  # bit for bit in tests/test_surgery.py; some families reload 1e-7 apart
            return result("WRONG", how, f"plan {plan}: the reloaded model's logits differ")

    try:
        dense_generates = cache_agrees(tiny_model(model_type), ids)
    except Exception as error:  # noqa: BLE001 - generation is the family's own affair
        dense_generates, why = False, first_line(error)
    else:
        why = "the dense model generates otherwise with its cache than without"
    if dense_generates:
        try:
            if not cache_agrees(copy, ids):
                return result("WRONG", how, f"plan {plan}: cached generation differs from uncached")
        except Exception as error:  # noqa: BLE001
            return result("WRONG", how, f"plan {plan}: the pruned model cannot generate: {first_line(error)}")
    else:
        notes.append(f"generation not compared ({why})")

    removed_twice = sorted(plan + [[i for i in range(DEPTH) if i not in plan][AGAIN[0]]])
    try:
        prune_layers(copy, AGAIN)
    except PlanRefusedError as error:
        notes.append(f"pruning again refused ({first_line(error)})")
    else:
        if not close(logits(copy, ids), logits(tiny_model(model_type), ids, skipped=removed_twice)):
            return result("WRONG", how, f"pruned again ({removed_twice}): logits differ from skipping the blocks")
    return result("supported", how, "; ".join(notes))


def sweep(model_types: list[str]) -> list[Result]:
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [check(model_type) for model_type in model_types]


def page(results: list[Result], command: str) -> str:
    """docs/families.md: a summary, the table families, then every type."""
    counts = {status: sum(r.status == status for r in results) for status in STATUSES}
    supported = [r for r in results if r.status == "supported"]
    lines = [
        "# Families: every causal-LM type, pruned or refused",
        "",
        f"transformers {transformers.__version__} ships {len(results)} causal-LM model types "
        "(`MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`). Each was built as a tiny random model and pruned as a user would "
        "(the checks are in `benchmarks/decisions/family_sweep.py`): the pruned model's logits equal the dense model's with "
        "the removed blocks skipped, it saves and reloads with plain transformers, generates with its KV cache as "
        "without it, and can be pruned again.",
        "",
        f"Produced by `{command}`; `tests/test_families.py` runs the same sweep in the test suite and fails on any "
        "type whose status changes, and on any *WRONG*.",
        "",
        "| status | types |",
        "|---|---|",
        f"| supported by its entry in `lorp_lightning/architectures.py` (*table*) | {sum(r.how == 'table' for r in supported)} |",
        f"| supported by the generic path, proven on the spot (*generic*) | {sum(r.how == 'generic' for r in supported)} |",
        f"| refused with a reason | {counts['refused']} |",
        f"| not buildable tiny here | {counts['not tiny here']} |",
        f"| WRONG (a bug) | {counts['WRONG']} |",
        "",
        "**The generic path.** A family not in the table is pruned by shape: its blocks are the `nn.ModuleList` "
        "under the decoder whose length is `num_hidden_layers`, its per-block config lists are trimmed, and before "
        "`prune_layers` returns, the pruned model's logits on a random input of 32 tokens must equal the dense "
        "model's with those blocks skipped; otherwise it raises and leaves the model as it was. A checkpoint on "
        "disk (`lorp apply`) has no model in memory to prove this on, so it takes table families only.",
        "",
        "**Plans a family refuses.** Some families tie a block's kind to its index (Jamba: attention every "
        "`attn_layer_period` blocks) or let later blocks read an earlier block's cache (Gemma 4's "
        "`num_kv_shared_layers`). A plan that would change a kept block is refused with `PlanRefusedError`, naming "
        "the config field; the searches give such a plan an infinite loss and choose among the others. The note "
        "column shows the plan the sweep could use.",
        "",
        "| type | status | how | note |",
        "|---|---|---|---|",
    ]
    for r in sorted(results, key=lambda r: r.model_type):
        note = r.note.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| `{r.model_type}` | {r.status} | {r.how} | {note} |")
    lines += ["", f"The table of `lorp_lightning/architectures.py` has {len(ARCHITECTURES)} entries.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("types", nargs="*", help="model types (default: every causal-LM type; then docs/families.md is written)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    results = sweep(args.types or sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES))
    for r in results:
        print(f"{r.model_type:28} {r.status:14} {r.how:16} {r.seconds:5.2f}s  {r.note[:160]}")
    print(
        f"{len(results)} types in {time.perf_counter() - start:.0f} s: "
        + ", ".join(f"{sum(r.status == s for r in results)} {s}" for s in STATUSES)
    )
    if not args.types:
        PAGE.write_text(page(results, "python benchmarks/decisions/family_sweep.py"))
        print(f"wrote {PAGE}")


if __name__ == "__main__":
    main()
