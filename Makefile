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
ARGS ?=
DATASET ?= data/test
MODEL ?=
CANDIDATE ?= challenger
CURRENT ?=
# MLflow: one SQLite store and artifact folder shared by the server and by runs made while it is down.
MLFLOW_PORT ?= 5000
MLFLOW_BACKEND_STORE_URI ?= sqlite:///$(CURDIR)/var/mlflow/mlflow.db
MLFLOW_ARTIFACT_ROOT ?= file://$(CURDIR)/var/mlflow/artifacts
export MLFLOW_PORT
# BentoML: `make serve` listens here.
BENTO_PORT ?= 3000

export PATH := $(abspath $(ML)/bin):$(PATH)
export INVOICE_PROJECT_ROOT := $(CURDIR)

.PHONY: help setup lock data validate train evaluate gate rollback up down test lint bench demo clean

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

train: setup ## Fine-tune Donut (params.yaml train:; ARGS="--max-steps 200"), tracked in MLflow, registered as challenger
	invoice model train $(ARGS)

evaluate: setup ## Score MODEL (default: champion, else challenger) on DATASET (Donut split or labels.jsonl folder)
	invoice model evaluate $(DATASET) $(if $(MODEL),--model $(MODEL)) $(ARGS)

gate: setup ## Judge CANDIDATE (default challenger) against the champion (params.yaml gate:; CURRENT=folder of production pages for drift)
	invoice model gate --candidate $(CANDIDATE) $(if $(CURRENT),--current $(CURRENT))

rollback: setup ## Move the champion alias back to the previous champion
	invoice model rollback $(if $(ARGS),$(ARGS))

up: setup ## Start MLflow (MLFLOW_PORT) and the BentoML service (BENTO_PORT), health-checked; logs in var/log/
	mkdir -p var/log var/run var/mlflow/artifacts
	if [ -f var/run/mlflow.pid ] && kill -0 $$(cat var/run/mlflow.pid) 2>/dev/null; then echo "MLflow already running"; else \
	  nohup $(ML)/bin/mlflow server --backend-store-uri $(MLFLOW_BACKEND_STORE_URI) --default-artifact-root $(MLFLOW_ARTIFACT_ROOT) \
	    --no-serve-artifacts --host 127.0.0.1 --port $(MLFLOW_PORT) --workers 1 > var/log/mlflow.log 2>&1 & echo $$! > var/run/mlflow.pid; fi
	for i in $$(seq 90); do curl -sf http://127.0.0.1:$(MLFLOW_PORT)/health >/dev/null && break; sleep 1; done
	curl -sf http://127.0.0.1:$(MLFLOW_PORT)/health >/dev/null || (tail -20 var/log/mlflow.log; exit 1)
	@echo "MLflow UI: http://127.0.0.1:$(MLFLOW_PORT)  (store $(MLFLOW_BACKEND_STORE_URI), artifacts $(MLFLOW_ARTIFACT_ROOT))"
	if [ -f var/run/bentoml.pid ] && kill -0 $$(cat var/run/bentoml.pid) 2>/dev/null; then echo "BentoML already running"; else \
	  BENTOML_DO_NOT_TRACK=true MLFLOW_TRACKING_URI=http://127.0.0.1:$(MLFLOW_PORT) nohup $(ML)/bin/bentoml serve \
	    serving.service:InvoiceService --host 127.0.0.1 --port $(BENTO_PORT) > var/log/bentoml.log 2>&1 & echo $$! > var/run/bentoml.pid; fi
	for i in $$(seq 90); do curl -sf http://127.0.0.1:$(BENTO_PORT)/healthz >/dev/null && break; sleep 1; done
	curl -sf http://127.0.0.1:$(BENTO_PORT)/healthz >/dev/null || (tail -20 var/log/bentoml.log; exit 1)
	@echo "BentoML: http://127.0.0.1:$(BENTO_PORT)  (POST /extract, API at /docs.json; $$(curl -s -o /dev/null -w '%{http_code}' \
	  http://127.0.0.1:$(BENTO_PORT)/readyz | sed 's/200/ready: champion loaded/; s/503/not ready yet: loading the champion, or none promoted (make gate)/'))"

down: ## Stop the services started by make up
	for pidfile in var/run/*.pid; do [ -f "$$pidfile" ] || continue; kill $$(cat $$pidfile) 2>/dev/null || true; rm -f $$pidfile; done
	@echo "services stopped"

.PHONY: serve bento
serve: setup ## Serve POST /extract on BENTO_PORT (default 3000) with the champion of the make-up MLflow store (foreground)
	BENTOML_DO_NOT_TRACK=true bentoml serve serving.service:InvoiceService --port $(BENTO_PORT)

bento: setup ## Build the service's bento (serving/bentofile.yaml) into the local BentoML store, offline
	BENTOML_DO_NOT_TRACK=true PATH=$(abspath $(TOOLS)/bin):$$PATH bentoml build -f serving/bentofile.yaml .

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
