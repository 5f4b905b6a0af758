"""The documentation site builds, with every warning treated as an error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_docs_build_in_strict_mode_without_a_warning(tmp_path):
    # mkdocs-material prints a notice about its end of life on every run; it is not a build warning.
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "WARNING" not in result.stderr
    assert (tmp_path / "site" / "api" / "index.html").is_file()
    assert "select_layers" in (tmp_path / "site" / "api" / "index.html").read_text()
    notebooks = sorted(path.stem for path in (ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks and all((tmp_path / "site" / "notebooks" / name / "index.html").is_file() for name in notebooks)
    _formulas_are_typeset_by_mathjax_from_the_site(tmp_path / "site", notebooks)


def _formulas_are_typeset_by_mathjax_from_the_site(site: Path, notebooks: list[str]) -> None:
    """The formulas are marked for MathJax, and every page loads MathJax from the site itself, none from elsewhere."""
    import re

    assert (site / "assets" / "mathjax" / "MathJax.js").is_file()
    assert (site / "assets" / "mathjax" / "config" / "TeX-AMS-MML_HTMLorMML-full.js").is_file()
    assert (site / "assets" / "mathjax" / "config" / "local" / "lorp.js").is_file()  # the fonts it ships
    method = (site / "method" / "index.html").read_text()
    assert '<span class="arithmatex">\\(\\mathrm{RLS} = -\\log_2' in method
    pages = {path: path.read_text() for path in site.rglob("*.html")}
    sources = {src for text in pages.values() for src in re.findall(r'<script[^>]*\bsrc="([^"]*)"', text)}
    assert not [src for src in sources if re.match(r"(https?:)?//", src)], "a script from another site"
    for name in notebooks:
        text = pages[site / "notebooks" / name / "index.html"]
        assert '<script src="../../assets/mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe,local/lorp">' in text


GATHERERS = ("lorp_lightning", "lorp_lightning.callbacks", "lorp_lightning.healing", "lorp_lightning.recipes")
"""The packages whose ``__all__`` is the public API: the package itself and the subpackages a user imports from."""


def _documented() -> list[tuple[str, str]]:
    """Every ``::: lorp_lightning.module.Name`` entry of docs/api.md, as (module, name)."""
    import re

    entries = re.findall(r"^::: (lorp_lightning[\w.]*)\.(\w+)$", (ROOT / "docs" / "api.md").read_text(), flags=re.M)
    assert entries, "docs/api.md documents nothing"
    return entries


def test_every_public_name_of_the_package_is_in_the_api_reference():
    import importlib

    documented = {name for _, name in _documented()}
    undocumented = [
        f"{package}.{name}"
        for package in GATHERERS
        for name in importlib.import_module(package).__all__
        if name != "__version__" and name not in documented
    ]
    assert undocumented == []


def test_every_name_the_api_reference_documents_exists_where_it_says():
    import importlib

    missing = []
    for module, name in _documented():
        try:
            getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as error:
            missing.append(f"{module}.{name} ({error})")
    assert missing == []


def test_a_name_the_gatherers_export_is_the_object_documented_under_that_name():
    import importlib

    where = {name: module for module, name in _documented()}
    for package in GATHERERS:
        for name in importlib.import_module(package).__all__:
            if name in where:
                assert getattr(importlib.import_module(package), name) is getattr(importlib.import_module(where[name]), name), (
                    f"{package}.{name} is not {where[name]}.{name}"
                )


def test_the_readme_lists_exactly_the_architectures_of_the_table():
    import re

    from lorp_lightning.architectures import ARCHITECTURES

    readme = (ROOT / "README.md").read_text()
    line = re.search(r"\*\*Supported architectures\*\*.*?:\n\s*(.*?)\.\n", readme, flags=re.S)
    assert line, "README.md lost its 'Supported architectures' item"
    assert re.findall(r"`(\w+)`", line.group(1)) == sorted(ARCHITECTURES)


def test_no_page_is_left_with_a_placeholder_for_a_figure_or_a_text_still_to_write():
    import json
    import re

    pages = {path: path.read_text() for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        pages[path] = "\n".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "markdown")
    placeholder = re.compile(r"\b(TODO|TBD|FIXME|XXX)\b|\bto come\b|@@")
    found = [
        f"{path.relative_to(ROOT)}: {match.group(0)!r}" for path, text in pages.items() for match in placeholder.finditer(text)
    ]
    assert found == []


def test_every_test_the_fault_table_names_exists():
    import re

    text = (ROOT / "docs" / "reliability.md").read_text()
    named, missing = [], []
    for cell in re.findall(r"^\|[^\n]*\| ([^|\n]*tests/[^|\n]*)\|$", text, flags=re.M):
        file = None
        for part in re.findall(r"`([^`]+)`", cell):
            path, _, name = part.partition("::")
            file = path if path.startswith("tests/") else file
            if name:
                named.append((file, name))
                if not re.search(rf"^def {re.escape(name)}\(", (ROOT / file).read_text(), flags=re.M):
                    missing.append(f"{file}::{name}")
    assert len(named) >= 10 and missing == []
