"""Model cards: the ``README.md`` that ``lorp prune``, ``lorp heal`` and ``lorp apply`` write beside a model.

A card says what the directory holds to someone who finds it on a model hub: the Hub's metadata
header (base model, licence as far as it is known, library, tags), then the base model, the
method and the blocks removed, the calibration data, the held-out figures of the command's
``report.json``, and the command that made it. Everything is read from the directory's
``config.json`` (its ``lorp_pruning`` record) and the report; nothing is measured here.
``from_pretrained`` never reads ``README.md``, so the model loads as before.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from lorp_lightning._io import atomic_file

__all__ = ["base_model_of", "model_card", "write_model_card"]

CARD = "README.md"


def base_model_of(source: str) -> dict[str, str | None]:
    """What is known of the model ``source`` names (a bundled name, a model directory or a hub id): its hub id and
    its licence, each None when unknown. A directory inherits what its own card states (a model pruned again)."""
    from lorp_lightning.assets import BUNDLED_MODELS

    if source in BUNDLED_MODELS:
        bundled = BUNDLED_MODELS[source]
        return {"name": source, "hub_id": bundled.upstream, "license": bundled.license_id}
    path = Path(source).expanduser()
    if path.is_dir():
        header = _card_header(path / CARD)
        return {"name": source, "hub_id": header.get("base_model"), "license": header.get("license")}
    if re.fullmatch(r"[\w.-]+/[\w.-]+", source):
        return {"name": source, "hub_id": source, "license": None}
    return {"name": source, "hub_id": None, "license": None}


def _card_header(path: Path) -> dict[str, str]:
    """The flat ``key: value`` lines of a card's metadata header (between the first two ``---`` lines)."""
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8", errors="replace")
    match = re.match(r"---\n(.*?)\n---\n", text, flags=re.S)
    if not match:
        return {}
    pairs = (line.split(":", 1) for line in match.group(1).splitlines() if ":" in line and not line.startswith(" "))
    return {key.strip(): value.strip().strip("'\"") for key, value in pairs if value.strip()}


def model_card(directory: str | os.PathLike, report: dict[str, Any], command_line: str, base: dict[str, str | None]) -> str:
    """The card of the model saved in ``directory``, made by ``command_line`` with ``report`` (its report.json)."""
    config = json.loads((Path(directory) / "config.json").read_text())
    record = config.get("lorp_pruning") or {}
    header = ["---", "library_name: transformers", "pipeline_tag: text-generation"]
    if base["hub_id"]:
        header.append(f"base_model: {base['hub_id']}")
    if base["license"]:
        header.append(f"license: {base['license']}")
    header += ["tags:", "- lorp_lightning", "- depth-pruning", "- pruned", "---", ""]

    original = record.get("original_num_layers")
    removed = record.get("pruned_layers", [])
    lines = [f"# {Path(directory).name}", ""]
    depth = f" of its {original} decoder blocks" if original else ""
    lines += [
        f"`{base['name']}`"
        + (f" ([{base['hub_id']}](https://huggingface.co/{base['hub_id']}))" if base["hub_id"] else "")
        + f" with {len(removed)}{depth} removed by lorp_lightning (training-free depth pruning): "
        f"{config.get('num_hidden_layers', '?')} blocks remain. It is a plain `{config.get('model_type', '?')}` "
        "model of the same architecture: `AutoModelForCausalLM.from_pretrained` loads it without lorp_lightning.",
        "",
        f"**Licence.** {_licence_line(base)}",
        "",
        "## How it was made",
        "",
    ]
    for step in record.get("steps", []):
        how = f"chosen by `{step['method']}`" if step.get("method") else "given by hand"
        lines.append(f"- removed blocks {step.get('pruned_layers')} (numbered in the original model), {how}")
    for healing in record.get("healing", []) if isinstance(record.get("healing"), list) else []:
        lines.append(f"- healed: {healing.get('mode', 'lora')}, {healing.get('num_steps')} steps")
    calibration = report.get("calibration")
    if calibration:
        lines.append(
            f"- calibration data: {calibration.get('windows')} windows of {calibration.get('window')} tokens of "
            f"`{calibration.get('text')}` (its calibration split)"
        )
    lines += ["", "The command:", "", "```bash", command_line, "```", ""]
    figures = _figures(report)
    if figures:
        lines += ["## Held-out figures (from report.json)", "", *figures, ""]
    lines += [
        "The removed blocks and every step are recorded in `config.json` under `lorp_pruning`; `report.json` holds "
        "the whole report of the command.",
        "",
    ]
    return "\n".join(header + lines)


def _licence_line(base: dict[str, str | None]) -> str:
    if base["license"]:
        return f"that of the base model, `{base['license']}` (its terms apply to these weights as well)."
    return "not known: the base model's source states none. Check its terms before you share these weights."


def _figures(report: dict[str, Any]) -> list[str]:
    """Markdown lines with the held-out perplexities the report measured (none: no lines)."""
    evaluation = report.get("evaluation") or {}
    where = f"{evaluation.get('windows')} held-out windows of {evaluation.get('window')} tokens of `{evaluation.get('text')}`"
    metrics = report.get("metrics")
    if metrics and "dense" in metrics and "pruned" in metrics:
        dense, pruned = metrics["dense"].get("perplexity"), metrics["pruned"].get("perplexity")
        if dense and pruned:
            return [f"Perplexity on {where}: {pruned:.2f} pruned against {dense:.2f} dense ({pruned / dense:.2f} times)."]
    if "perplexity_before" in evaluation and evaluation.get("perplexity_after"):
        before, after = evaluation["perplexity_before"], evaluation["perplexity_after"]
        return [f"Perplexity on {where}: {after:.2f} after healing, {before:.2f} before."]
    return []


def write_model_card(directory: str | os.PathLike, report: dict[str, Any], command_line: str, source: str) -> Path:
    """Write the card of the model in ``directory`` (replacing a card copied from the base model); its path."""
    path = Path(directory) / CARD
    text = model_card(directory, report, command_line, base_model_of(source))
    with atomic_file(path) as file:
        file.write(text)
    return path
