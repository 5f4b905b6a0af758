"""Deprecated: ``select_checked`` is in `lorp_lightning.methods`, with the method table it belongs to.

``from lorp_lightning.checked import select_checked`` still works in this release, with a DeprecationWarning;
import it from ``lorp_lightning`` or ``lorp_lightning.methods`` instead.
"""

import warnings

from lorp_lightning.methods import select_checked
from lorp_lightning.search import calibration_loss

__all__ = ["METHOD", "calibration_loss", "select_checked"]

METHOD = "lorp_checked"

warnings.warn(
    "lorp_lightning.checked is deprecated: import select_checked from lorp_lightning (or "
    "lorp_lightning.methods) and calibration_loss from lorp_lightning.search",
    DeprecationWarning,
    stacklevel=2,
)
