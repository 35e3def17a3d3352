# Dojo — see README.md. Every target sets up what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ADDR ?= 127.0.0.1:8000

# Settings come from the environment (see .env.example); a local .env is loaded when present.
ifneq (,$(wildcard .env))
include .env
export $(shell sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=.*/\1/p' .env)
endif

.PHONY: install demo test test-postgres serve lint browser-deps postgres-up

install: $(STAMP)

# Reinstall only when pyproject.toml changes, so a second `make install` takes seconds.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,postgres,redis]'
	touch $(STAMP)

demo: install sandbox-deps
	$(PY) manage.py migrate --noinput -v 0
	$(PY) manage.py dojo_demo

# The sandbox wants bubblewrap; install it when missing and apt-get can (root), else say so loudly:
# without it every experiment runs with the weaker fallback isolation.
sandbox-deps:
	@command -v bwrap >/dev/null 2>&1 || (command -v apt-get >/dev/null 2>&1 && \
		(DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null 2>&1 || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null 2>&1)) && \
		command -v bwrap >/dev/null 2>&1) || \
		echo "WARNING: bubblewrap (bwrap) is not installed and could not be installed here (needs apt-get as root)." \
		"Experiments will run with the WEAKER fallback isolation. Install it: sudo apt-get install bubblewrap" >&2

# Browser tests need Debian's chromium; install it when missing (never `playwright install`).
browser-deps: sandbox-deps
	@command -v chromium >/dev/null 2>&1 || (command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
		echo "chromium could not be installed: browser tests will be skipped")

lint: install
	$(VENV)/bin/ruff check .

test: install browser-deps lint
	$(VENV)/bin/pytest

# The whole suite again on PostgreSQL (this machine's, 127.0.0.1:5432, trust auth); CI runs both.
PG_URL ?= postgres://postgres@127.0.0.1:5432/dojo_ci
postgres-up:
	@pg_isready -q -h 127.0.0.1 -p 5432 || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start
	@psql -q -h 127.0.0.1 -U postgres -tc "SELECT 1 FROM pg_database WHERE datname = 'dojo_ci'" | grep -q 1 || \
		psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE dojo_ci"

test-postgres: install browser-deps postgres-up
	DATABASE_URL=$(PG_URL) SECRET_KEY=$${SECRET_KEY:-test-postgres-only-key} $(VENV)/bin/pytest -p no:cacheprovider

# runserver and qcluster together; Ctrl-C stops both. `make serve ADDR=0.0.0.0:8000` to listen wider.
serve: install sandbox-deps
	$(PY) manage.py migrate --noinput -v 0
	$(PY) manage.py dojo_serve $(ADDR)
