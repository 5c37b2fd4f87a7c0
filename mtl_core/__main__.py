"""Entry point for `python -m mtl_core`."""

import sys

from mtl_core.cli import main

sys.exit(main())
