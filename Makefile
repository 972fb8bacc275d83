# Two commands do everything on a fresh machine with Python 3.11:
#   make run   - the whole gateway locally (Kafka, Postgres, five services); Ctrl-C stops it
#   make test  - lint, type-check and every test (starts and stops what the tests need)

PYTHON ?= python3.11
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: install run test lint typecheck pytest chromium bench clean

$(UV): tools/uv-requirements.txt
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --require-hashes -r tools/uv-requirements.txt

$(VENV)/.synced: $(UV) uv.lock pyproject.toml libs/*/pyproject.toml services/*/pyproject.toml
	$(UV) sync --frozen --python $(PYTHON)
	touch $@

install: $(VENV)/.synced

run: install
	$(VENV)/bin/tollgate-dev --root .

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

# The browser tests drive Debian's chromium (installed here when missing and we are root).
chromium:
	sh scripts/ensure-chromium.sh

pytest: install chromium
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest

# The gateway under load beside the direct upstream and LiteLLM (installed on first use into
# var/bench/litellm from bench/litellm-requirements.txt, never into .venv), then a traced
# run that splits the OpenAI API's time to first token into its hops; ~10 minutes.
# BENCH_ARGS passes options through, e.g. BENCH_ARGS="--quick".
bench: install
	$(VENV)/bin/python bench/gateway_load.py --pairs 3 --out var/bench/gateway.json \
		--markdown var/bench/gateway.md $(BENCH_ARGS)
	$(VENV)/bin/python bench/gateway_load.py --paths direct,openai --loads c1 --principals 1 \
		--idle-seconds 0 --trace --markdown var/bench/ttft.md

clean:
	rm -rf $(TOOLS) $(VENV) var .pytest_cache .mypy_cache .ruff_cache
