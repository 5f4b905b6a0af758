"""``python -m lorp_lightning.cli``: the ``lorp`` command line."""

import sys

from lorp_lightning.cli import main

sys.exit(main())
