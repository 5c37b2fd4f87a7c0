"""Seed-faithful pipeline vs ours, side by side: `python benchmarks/bench_pipeline.py [--full]`.

Reads full MNIST from $MTL_DATA_DIR when it is there (e.g. MTL_DATA_DIR=../shared/data), else the
embedded subset. Same code as `python -m mtl_core bench`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mtl_core.bench import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
