"""The libraries whose private APIs the package uses are bounded on both sides, and the installed
versions are within the bounds (lorp_lightning/_versions.py says which private parts, and why)."""

from importlib import metadata

import pytest
from packaging.version import Version

from lorp_lightning import _versions
from lorp_lightning._versions import PRIVATE_APIS, check_version, version_bounds


@pytest.mark.parametrize("distribution", sorted(PRIVATE_APIS))
def test_private_apis_are_used_under_two_sided_bounds_that_the_installed_version_meets(distribution):
    bounds = version_bounds(distribution)
    assert bounds is not None, f"pyproject.toml names no bounds for {distribution}, whose private APIs are used"
    operators = {spec.operator for spec in bounds}
    assert operators & {">=", ">"} and operators & {"<", "<="}, (
        f"{distribution}{bounds}: the private APIs used ({PRIVATE_APIS[distribution]}) need a lower and an upper bound"
    )
    installed = metadata.version(distribution)
    assert Version(installed) in bounds, (
        f"{distribution} {installed} is installed, outside {distribution}{bounds}, the versions whose private APIs "
        f"({PRIVATE_APIS[distribution]}) were checked: check them on {installed}, then move the bound in pyproject.toml"
    )


def test_an_older_version_is_refused_naming_the_bounds(monkeypatch):
    monkeypatch.setattr(_versions.metadata, "version", lambda name: "0.4.11")
    with pytest.raises(ImportError, match=r"checked for lm-eval<0.5,>=0.4.12; 0.4.11 is installed: pip install 'lm-eval"):
        check_version("lm-eval")


def test_a_newer_version_is_warned_of(monkeypatch):
    monkeypatch.setattr(_versions.metadata, "version", lambda name: "0.22.0")
    with pytest.warns(UserWarning, match=r"peft<0.22,>=0.13; 0.22.0 is installed, newer than checked"):
        check_version("peft")
