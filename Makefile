# The targets the README and CI run. Only python3 and make are assumed: uv is bootstrapped with pip.
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null)
ifeq ($(UV),)
UV := .tools/bin/uv
endif
DATA ?= ehrlift-data
DEMO ?= $(DATA)/demo
PATIENTS ?= 200
RUN := $(UV) run --frozen --no-sync
export EHRLIFT_CORPUS ?= $(abspath ../shared/corpus)

.PHONY: run test setup lint format bench golden clean data-docs-assets

setup: .venv/.synced

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/python -m pip install --quiet uv

.venv/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen
	@touch $@

run: setup
	@test -f $(DEMO)/demo-summary.json || $(RUN) ehrlift demo-data $(DEMO) --patients $(PATIENTS)
	$(RUN) ehrlift run $(DEMO)/sources --warehouse $(DATA)/warehouse.duckdb --source-system demo

test: setup lint
	$(RUN) pytest -n 2 --dist loadgroup -q

lint: setup
	$(RUN) ruff check .
	$(RUN) ruff format --check .

format: setup
	$(RUN) ruff check --fix .
	$(RUN) ruff format .

bench: setup
	$(RUN) python bench/ingest_fhir.py

# CSS/JS/fonts for the Data Docs pages, from npm, so they render styled with no external request.
data-docs-assets:
	./scripts/vendor-data-docs-assets.sh

golden: setup
	EHRLIFT_REGENERATE_GOLDEN=1 $(RUN) pytest -q tests/test_golden.py

clean:
	rm -rf $(DATA) .pytest_cache .ruff_cache
