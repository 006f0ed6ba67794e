# Set-up and everyday commands. `make run` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install ferretdb validator run test lint definitions db-start db-stop db-status clean bench

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements.lock -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

ferretdb: $(STAMP)
	$(BIN)/fhirserver db build

run: ferretdb
	$(BIN)/fhirserver run

# HAPI FHIR validator harness (Java 17 + Maven; first build downloads HAPI from Maven Central): the jar is cached
# under .local/validator/ and rebuilt only when conformance/validator/ changes. The test suite validates every
# FHIR body the server returns with it (FHIR_VALIDATE=0 turns that off).
validator: $(STAMP)
	$(BIN)/python -m conformance.validator build

test: ferretdb validator
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

# The benchmark suite (bench/run.py): FerretDB on PostgreSQL, data loaded once and cached in .local/bench/, the server
# under gunicorn next to the pymongo floor; report in bench/results/run-postgresql.md. BENCH_ARGS=--quick: a smoke run.
bench: ferretdb
	$(BIN)/python -m bench.run $(BENCH_ARGS)

definitions: $(STAMP)
	$(BIN)/python scripts/fetch_r4_definitions.py

db-start: ferretdb
	$(BIN)/fhirserver db start

db-stop: $(STAMP)
	$(BIN)/fhirserver db stop

db-status: $(STAMP)
	$(BIN)/fhirserver db status

clean:
	-$(BIN)/fhirserver db stop
	rm -rf $(VENV) .local .pytest_cache .ruff_cache
