"""``python -m stitchframe``: the ``stitchframe`` command."""

import sys

from .cli import main

sys.exit(main())
