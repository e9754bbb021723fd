"""``python -m flyprep.cli``: the ``flyprep`` command."""

import sys

from .main import console

sys.exit(console())
