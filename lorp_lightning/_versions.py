"""The package's own version, and the version bounds of the libraries whose private APIs it uses (private to the
package).

``__version__`` is written here once: ``lorp_lightning.__version__`` and the command line read it, and
pyproject.toml takes it as the distribution's version (``[tool.setuptools.dynamic]``).

lorp_lightning reaches into a few private parts of its optional libraries:

- lm-eval: ``lm_eval.tasks._yaml_loader.load_yaml`` (its YAML loader, new in 0.4.12) and the
  ``tqdm`` names of ``lm_eval.api.task``, ``lm_eval.api.model`` and ``lm_eval.models.huggingface``,
  replaced while quiet (``zeroshot``);
- peft: ``LoraModel._cast_adapter_dtype`` (float32 adapters on a bf16 model; ``heal``).

Each library's extra in pyproject.toml bounds its version on both sides, and the bounds are read
back from the installed package's metadata, so that they are written once. Below the bound the
private API is missing: a clear ImportError. Above it, it may have changed: a warning, and
``tests/test_versions.py`` fails until the bound is moved on purpose.
"""

from __future__ import annotations

import warnings
from importlib import metadata

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

__all__ = ["PRIVATE_APIS", "__version__", "check_version", "version_bounds"]

__version__ = "0.1.0"

PRIVATE_APIS = {
    "lm-eval": "lm_eval.tasks._yaml_loader and the tqdm of lm_eval.api.task, lm_eval.api.model, lm_eval.models.huggingface",
    "peft": "LoraModel._cast_adapter_dtype",
}


def version_bounds(distribution: str) -> SpecifierSet | None:
    """The version bounds of ``distribution`` in lorp_lightning's requirements (its extras
    included), or None when lorp_lightning is not installed (run from a source tree)."""
    try:
        requirements = metadata.requires("lorp_lightning") or []
    except metadata.PackageNotFoundError:
        return None
    for text in requirements:
        requirement = Requirement(text)
        if requirement.name.lower().replace("_", "-") == distribution:
            return requirement.specifier
    return None


def check_version(distribution: str) -> None:
    """Raise ImportError if the installed ``distribution`` is older than its bounds, warn if newer."""
    bounds = version_bounds(distribution)
    if bounds is None:
        return
    installed = Version(metadata.version(distribution))
    if installed in bounds:
        return
    what = (
        f"lorp_lightning uses private parts of {distribution} ({PRIVATE_APIS[distribution]}), checked for {distribution}{bounds}"
    )
    if any(installed < Version(spec.version) for spec in bounds if spec.operator in (">=", ">")):
        raise ImportError(f"{what}; {installed} is installed: pip install '{distribution}{bounds}'")
    warnings.warn(
        f"{what}; {installed} is installed, newer than checked: if it fails, pip install '{distribution}{bounds}'", stacklevel=3
    )
