"""Recipes: the library's parts wired into one call, as torchtune's recipes are.

A recipe owns no mathematics; it composes the parts below it (statistics, selection, surgery,
healing, the Lightning module and callbacks) and may be read top to bottom:

- ``heal`` (``heal.py``): a pruned model healed by a short ``Trainer.fit`` on calibration windows.
- ``prune_and_heal`` (``prune_and_heal.py``): the budget removed in rounds, each healed before the next.

The command line (``lorp_lightning.cli``) is the other driver. Nothing below the drivers imports them.
"""

from lorp_lightning.recipes.heal import heal
from lorp_lightning.recipes.prune_and_heal import prune_and_heal

__all__ = ["heal", "prune_and_heal"]
