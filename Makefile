# Invoice extraction platform. `make help` lists the targets.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENVS := .venvs
ML := $(VENVS)/ml
AIRFLOW := $(VENVS)/airflow
TOOLS := $(VENVS)/tools
UV := $(TOOLS)/bin/uv
# Where pip finds local wheels (this machine's CPU torch); uv does not read pip's config, so pass it on.
FIND_LINKS ?= $(shell pip config list 2>/dev/null | sed -n "s/^global.find-links='\(.*\)'/\1/p")
UV_INSTALL := $(UV) pip sync --quiet --compile-bytecode $(if $(FIND_LINKS),--find-links $(FIND_LINKS))
DVC_REMOTE_URL ?= $(HOME)/.local/share/invoice-mlops/dvc-remote
DATA ?= data
N ?=
PYTEST_ARGS ?=

export PATH := $(abspath $(ML)/bin):$(PATH)
export INVOICE_PROJECT_ROOT := $(CURDIR)

.PHONY: help setup lock data validate test lint bench demo clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv==0.13.9

# Each environment is rebuilt only when its lock file or pyproject.toml changes.
$(ML)/.installed: training/locks/ml.txt pyproject.toml | $(UV)
	[ -x $(ML)/bin/python ] || $(UV) venv --quiet --python $(PYTHON) $(ML)
	VIRTUAL_ENV=$(ML) $(UV_INSTALL) training/locks/ml.txt
	VIRTUAL_ENV=$(ML) $(UV) pip install --quiet --no-deps --compile-bytecode -e .
	touch $@

$(AIRFLOW)/.installed: training/locks/airflow.txt pyproject.toml | $(UV)
	[ -x $(AIRFLOW)/bin/python ] || $(UV) venv --quiet --python $(PYTHON) $(AIRFLOW)
	VIRTUAL_ENV=$(AIRFLOW) $(UV_INSTALL) training/locks/airflow.txt
	VIRTUAL_ENV=$(AIRFLOW) $(UV) pip install --quiet --no-deps --compile-bytecode -e .
	touch $@

.dvc/config.local:
	mkdir -p $(if $(findstring ://,$(DVC_REMOTE_URL)),,$(DVC_REMOTE_URL))
	$(ML)/bin/dvc remote add --local --force --default storage $(DVC_REMOTE_URL)

setup: $(ML)/.installed $(AIRFLOW)/.installed .dvc/config.local ## Create the ML and Airflow environments and the DVC remote (idempotent)
	@echo "environments ready: $(ML) (ML stack) and $(AIRFLOW) (Airflow, no torch); DVC remote: $$($(ML)/bin/dvc remote list --local)"

lock: | $(UV) ## Re-resolve the pinned dependencies into training/locks/
	$(UV) pip compile --quiet pyproject.toml --extra ml --extra dev --python-version 3.11 $(if $(FIND_LINKS),--find-links $(FIND_LINKS)) -o training/locks/ml.txt
	$(UV) pip compile --quiet pyproject.toml --extra airflow --extra dev --python-version 3.11 -o training/locks/airflow.txt

data: setup ## Generate the synthetic invoices (N=... overrides params.yaml), merge them into data/ and version it with DVC
	$(if $(N),invoice data generate --out var/synthetic --n $(N),dvc repro generate)
	invoice data merge var/synthetic --out data --replace-source synthetic
	dvc add data
	dvc push data.dvc || echo "warning: dvc push failed; the new version is in the local cache only"
	invoice data version

validate: setup ## Run the Great Expectations suite on DATA (default data/); report in var/reports/validation/
	invoice data validate $(DATA) --report-dir var/reports/validation

test: setup ## Run the test suite (code, data and model behaviour)
	$(ML)/bin/pytest $(PYTEST_ARGS)

lint: setup ## Ruff over the code
	$(ML)/bin/ruff check training tests dags serving
	$(ML)/bin/ruff format --check training tests dags serving

bench: setup ## Measure and write the figures into BENCHMARKS.md
	$(ML)/bin/python tests/benchmarks/run.py --write BENCHMARKS.md

demo: setup ## The main job: everything built so far, end to end on this machine
	$(MAKE) --no-print-directory data
	$(MAKE) --no-print-directory validate
	@echo "demo: labeled data generated, validated and versioned (data.dvc). Training, serving and the DAGs arrive with issues 3-5."

clean: ## Remove pipeline outputs and service state (not the environments, data/ or the DVC cache)
	rm -rf var
