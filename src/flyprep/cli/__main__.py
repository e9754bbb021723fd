"""``python -m flyprep.cli``: the ``flyprep`` command."""

import sys

from .main import main

sys.exit(main())
