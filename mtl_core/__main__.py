"""Entry point for `python -m mtl_core`."""

import sys

from .cli import main

sys.exit(main())
