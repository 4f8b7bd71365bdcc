# Two commands do all the set-up on a fresh Debian 12 machine (as root):
#   make demo   - the scale-out demo on topologies/single.yaml
#   make test   - the whole test suite
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint format bench

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/nfsteer demo $(DEMO_ARGS)

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	$(PY) bench/steering.py
