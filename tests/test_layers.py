"""Layers that run one way: mathematics and surgery, then Lightning glue, then drivers.

Each module of the package has a layer (``LAYERS``, by the longest matching prefix of its name):

0. foundations: argument checks, files, versions, the table of architectures, dtypes, the next-token rule, pictures;
1. the core: statistics, locality, selection, search, plan stability, surgery, compensation, rounds, evaluation,
   assets, model cards, the healing parts; plain PyTorch and Hugging Face, usable from any script;
2. the Lightning glue: ``LoRPModule``, ``TextDataModule`` and the callbacks;
3. the drivers: the recipes (``heal``, ``prune_and_heal``) and the command line.

A module imports only modules of its own layer or below, and no two modules import each other in
a circle, directly or through others. A package's ``__init__`` that only gathers names for the user
(``lorp_lightning``, ``lorp_lightning.healing``, ...) has no layer, and no module of the package
imports it: modules import the module that defines a name. Imports inside functions and under
``TYPE_CHECKING`` count. A new module has to be placed in ``LAYERS`` before the test passes.
"""

from pathlib import Path

import pytest
from import_graph import cycle_edges, cycles, import_graph, upward_edges

import lorp_lightning

PACKAGE = Path(lorp_lightning.__file__).parent

FOUNDATIONS, CORE, GLUE, DRIVERS = 0, 1, 2, 3
LAYERS = {
    "lorp_lightning._validation": FOUNDATIONS,
    "lorp_lightning._io": FOUNDATIONS,
    "lorp_lightning._versions": FOUNDATIONS,
    "lorp_lightning.architectures": FOUNDATIONS,
    "lorp_lightning.precision": FOUNDATIONS,
    "lorp_lightning.next_token": FOUNDATIONS,
    "lorp_lightning.plots": FOUNDATIONS,
    "lorp_lightning.stats": CORE,
    "lorp_lightning.locality": CORE,
    "lorp_lightning.selection": CORE,
    "lorp_lightning.search": CORE,
    "lorp_lightning.checked": CORE,
    "lorp_lightning.baselines": CORE,
    "lorp_lightning.methods": CORE,
    "lorp_lightning.stability": CORE,
    "lorp_lightning.surgery": CORE,
    "lorp_lightning.compensation": CORE,
    "lorp_lightning.rounds": CORE,
    "lorp_lightning.checkpoint": CORE,
    "lorp_lightning.evaluation": CORE,
    "lorp_lightning.assets": CORE,
    "lorp_lightning.model_card": CORE,
    "lorp_lightning.zeroshot": CORE,
    "lorp_lightning.distillation": CORE,
    "lorp_lightning.healing.": CORE,
    "lorp_lightning.module": GLUE,
    "lorp_lightning.data": GLUE,
    "lorp_lightning.callbacks.": GLUE,
    "lorp_lightning.recipes.": DRIVERS,
    "lorp_lightning.cli": DRIVERS,
}
GATHERERS = {"lorp_lightning", "lorp_lightning.callbacks", "lorp_lightning.healing", "lorp_lightning.recipes"}


def layer_of(module: str, layers: dict[str, int] = LAYERS, gatherers: set[str] = GATHERERS) -> int | None:
    if module in gatherers:
        return None
    matches = [
        prefix
        for prefix in layers
        if module == prefix or (prefix.endswith(".") and module.startswith(prefix)) or module.startswith(prefix + ".")
    ]
    if not matches:
        raise AssertionError(f"{module} has no layer: place it in LAYERS of tests/test_layers.py")
    return layers[max(matches, key=len)]


def _problems(root: Path, layers: dict[str, int], gatherers: set[str]) -> list[str]:
    """Every breach of the rules in the package at ``root``, one line each, naming the import."""
    graph = import_graph(root)
    problems = [f"circle: {' -> '.join(f'{a} imports {b}' for a, b in cycle_edges(graph, group))}" for group in cycles(graph)]
    problems += [
        f"upward: {a} (layer {layer_of(a, layers, gatherers)}) imports {b} (layer {layer_of(b, layers, gatherers)})"
        for a, b in upward_edges(graph, lambda m: layer_of(m, layers, gatherers))
    ]
    problems += [
        f"through a gatherer: {a} imports {b}; import the module that defines the name"
        for a, targets in sorted(graph.items())
        if a not in gatherers
        for b in sorted(targets)
        if b in gatherers
    ]
    return problems


def test_the_package_has_no_circle_and_no_upward_import():
    assert _problems(PACKAGE, LAYERS, GATHERERS) == []


def test_the_drivers_are_above_the_callbacks_which_are_above_the_healing_parts():
    graph = import_graph(PACKAGE)
    assert "lorp_lightning.callbacks.heal" in graph["lorp_lightning.recipes.heal"]
    assert {"lorp_lightning.healing.adapters", "lorp_lightning.healing.record"} <= graph["lorp_lightning.callbacks.heal"]
    healing_parts = [m for m in graph if m.startswith("lorp_lightning.healing.")]
    assert healing_parts and all(
        not b.startswith(("lorp_lightning.callbacks", "lorp_lightning.recipes")) for m in healing_parts for b in graph[m]
    )


# ----------------------------------------------------------------------------- the checker itself, on a tiny package


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "tiny" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "tiny"


TINY_LAYERS = {"tiny.maths": 0, "tiny.glue": 1, "tiny.parts.": 0}


def test_a_clean_tiny_package_passes(tmp_path):
    root = _package(
        tmp_path,
        {
            "__init__.py": "from tiny.glue import run\n",
            "maths.py": "X = 1\n",
            "glue.py": "from tiny.maths import X\nfrom .parts import a\n\ndef run():\n    return X\n",
            "parts/__init__.py": "",
            "parts/a.py": "import tiny.maths\n",
        },
    )
    assert _problems(root, TINY_LAYERS, {"tiny", "tiny.parts"}) == []


def test_a_deliberate_circle_fails_with_its_imports_named(tmp_path):
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "maths.py": "from tiny.parts.a import Y\n",
            "glue.py": "",
            "parts/__init__.py": "",
            "parts/a.py": "def f():\n    from ..maths import X  # deferred, still a dependency\n",
        },
    )
    assert _problems(root, TINY_LAYERS, {"tiny", "tiny.parts"}) == [
        "circle: tiny.maths imports tiny.parts.a -> tiny.parts.a imports tiny.maths"
    ]


def test_an_upward_import_fails_with_the_edge_named(tmp_path):
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "glue.py": "",
            "maths.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import tiny.glue\n",
        },
    )
    assert _problems(root, TINY_LAYERS, {"tiny"}) == ["upward: tiny.maths (layer 0) imports tiny.glue (layer 1)"]


def test_an_import_through_a_gatherer_fails(tmp_path):
    root = _package(
        tmp_path, {"__init__.py": "from tiny.maths import X\n", "maths.py": "X = 1\n", "glue.py": "from tiny import X\n"}
    )
    assert _problems(root, TINY_LAYERS, {"tiny"}) == [
        "through a gatherer: tiny.glue imports tiny; import the module that defines the name"
    ]


def test_a_module_without_a_layer_is_named(tmp_path):
    root = _package(tmp_path, {"__init__.py": "", "maths.py": "", "extra.py": "import tiny.maths\n"})
    with pytest.raises(AssertionError, match="tiny.extra has no layer"):
        _problems(root, TINY_LAYERS, {"tiny"})
