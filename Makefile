# Two commands do all the set-up on a fresh Debian 12 machine (as root):
#   make demo   - the scale-out demo on topologies/single.yaml
#   make test   - the whole test suite
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint format bench install

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

# systemd units, configuration, secrets, dashboards and alert rules (scripts/install.sh);
# DESTDIR, PREFIX, SYSCONFDIR, UNITDIR and NFSTEER_BIN are passed on.
install: setup
	DESTDIR="$(DESTDIR)" PREFIX="$(or $(PREFIX),/usr/local)" SYSCONFDIR="$(or $(SYSCONFDIR),/etc)" \
		UNITDIR="$(or $(UNITDIR),/etc/systemd/system)" NFSTEER_BIN="$(NFSTEER_BIN)" \
		bash scripts/install.sh

bench: setup
	$(PY) bench/steering.py
