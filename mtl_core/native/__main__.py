"""`python -m mtl_core.native`: build the C++ parts now (scripts/setup.sh does, once per machine)."""

from mtl_core.native import main

raise SystemExit(main())
