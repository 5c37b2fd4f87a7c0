# The two commands of the README. Both install what they need first (into .venv).
.PHONY: run test bench lint

PORT ?= 8501

run:
	scripts/setup.sh app
	.venv/bin/python -m dashboard.serve --server.port $(PORT)

test:
	scripts/setup.sh test
	.venv/bin/python -m pytest

bench:
	scripts/setup.sh app
	MTL_DATA_DIR=$${MTL_DATA_DIR:-../shared/data} .venv/bin/python benchmarks/speed.py

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
