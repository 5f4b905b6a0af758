"""The import boundary: the mathematics and the model surgery stand without Lightning.

``locality``, ``next_token``, ``selection``, ``stats`` and ``surgery`` are usable from a plain PyTorch script;
importing them (the package's ``__init__`` included) must not import ``lightning``. Each import
runs in a fresh interpreter, since this test process has imported Lightning long ago.
"""

import subprocess
import sys

import pytest

import lorp_lightning


def _lightning_modules_after(statement: str) -> list[str]:
    code = (
        f"import sys\n{statement}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning', 'lightning_fabric')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return eval(out.stdout.strip().splitlines()[-1])


def test_the_pure_modules_do_not_import_lightning():
    # one fresh interpreter for the five: if together they import no Lightning, none of them does
    pure = "\n".join(f"import lorp_lightning.{module}" for module in ("locality", "next_token", "selection", "stats", "surgery"))
    assert _lightning_modules_after(pure) == []


def test_the_package_names_are_still_there():
    for name in lorp_lightning.__all__:
        assert getattr(lorp_lightning, name) is not None, name
    assert lorp_lightning.healing.__name__ == "lorp_lightning.healing"  # submodules stay reachable as attributes
    # the package's ``heal`` is the function; the healing package is ``healing``, its callback one of the callbacks
    from lorp_lightning.callbacks.heal import LoRPHealCallback
    from lorp_lightning.recipes.heal import heal

    assert lorp_lightning.heal is heal and lorp_lightning.healing.heal is heal
    assert lorp_lightning.LoRPHealCallback is LoRPHealCallback is lorp_lightning.healing.LoRPHealCallback
    for name in lorp_lightning.healing.__all__:
        assert getattr(lorp_lightning.healing, name) is not None, name
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        lorp_lightning.no_such_name  # noqa: B018
