# Invoice extraction platform. `make help` lists the targets.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENVS := .venvs
ML := $(VENVS)/ml
AIRFLOW := $(VENVS)/airflow
TOOLS := $(VENVS)/tools
LABEL_STUDIO := $(VENVS)/label-studio
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
# Profile. `embedded` (the default): SQLite stores and local folders, Airflow's LocalExecutor, one BentoML worker.
# `production` (PROFILE=production): the same code on shared services: PostgreSQL (POSTGRES_URL) holds Airflow's
# metadata, MLflow's backend store and the results, one database each, created by `make up` if missing; MLflow
# artifacts go through the server to MLFLOW_ARTIFACTS_DESTINATION (a folder here; s3://, gs://... elsewhere);
# Airflow runs the CeleryExecutor with Redis (REDIS_URL) as broker and CELERY_WORKERS workers on this machine,
# the first also on the `ml` queue (the tasks that need torch); BentoML runs INVOICE_WORKERS workers.
PROFILE ?= embedded
ifeq ($(PROFILE),production)
POSTGRES_URL ?= postgresql+psycopg2://postgres@127.0.0.1:5432
REDIS_URL ?= redis://127.0.0.1:6379/0
CELERY_WORKERS ?= 2
CELERY_CONCURRENCY ?= 2
MLFLOW_BACKEND_STORE_URI ?= $(POSTGRES_URL)/invoice_mlflow
MLFLOW_ARTIFACTS_DESTINATION ?= $(CURDIR)/var/mlflow/artifacts
MLFLOW_ARTIFACTS = --artifacts-destination $(MLFLOW_ARTIFACTS_DESTINATION) --serve-artifacts
PROFILE_SUMMARY = : PostgreSQL $(POSTGRES_URL); Celery $(CELERY_WORKER_NAMES) via $(REDIS_URL); BentoML $(INVOICE_WORKERS) workers
PROFILE_DATABASES = $(POSTGRES_URL)/invoice_airflow $(MLFLOW_BACKEND_STORE_URI) $(INVOICE_RESULTS_URL)
AIRFLOW_EXECUTOR := CeleryExecutor
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN ?= $(POSTGRES_URL)/invoice_airflow
export AIRFLOW__CELERY__BROKER_URL ?= $(REDIS_URL)
export AIRFLOW__CELERY__RESULT_BACKEND ?= db+$(AIRFLOW__DATABASE__SQL_ALCHEMY_CONN)
export INVOICE_RESULTS_URL ?= $(POSTGRES_URL)/invoice_results
export INVOICE_WORKERS ?= 2
# Every command talks to the MLflow server: no run may land in a local fallback store.
export MLFLOW_TRACKING_URI ?= http://127.0.0.1:$(MLFLOW_PORT)
else ifeq ($(PROFILE),embedded)
CELERY_WORKERS := 0
# MLflow: one SQLite store and artifact folder shared by the server and by runs made while it is down.
MLFLOW_BACKEND_STORE_URI ?= sqlite:///$(CURDIR)/var/mlflow/mlflow.db
MLFLOW_ARTIFACTS = --default-artifact-root $(MLFLOW_ARTIFACT_ROOT) --no-serve-artifacts
AIRFLOW_EXECUTOR := LocalExecutor
else
$(error PROFILE is embedded or production, not $(PROFILE))
endif
MLFLOW_PORT ?= 5000
MLFLOW_ARTIFACT_ROOT ?= file://$(CURDIR)/var/mlflow/artifacts
export MLFLOW_PORT
# BentoML: `make serve` listens here.
BENTO_PORT ?= 3000
# Airflow (`make up`): api-server (UI, REST and execution API) on AIRFLOW_PORT, scheduler and dag-processor (and
# the Celery workers of the production profile), all reading this configuration. Metadata DB: the default SQLite
# file $(AIRFLOW_HOME)/airflow.db, or PostgreSQL; task logs in $(AIRFLOW_HOME)/logs; component logs in
# var/log/airflow-<component>.log.
AIRFLOW_PORT ?= 8080
export AIRFLOW_HOME := $(CURDIR)/var/airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__EXECUTOR := $(AIRFLOW_EXECUTOR)
# At most 4 task instances at once. The LocalExecutor forks one worker per slot: the default 32 costs ~5 GB of
# RSS; 4 keeps all of Airflow at ~1.2 GB idle and ~1.8 GB with four tasks running, on this 2-core machine.
export AIRFLOW__CORE__PARALLELISM := 4
# The platform's DAGs are meant to run as soon as they are parsed.
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION := False
# Airflow 3 task processes report to the api-server's execution API.
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL := http://127.0.0.1:$(AIRFLOW_PORT)/execution/
# Simple auth manager: one user `admin` with the admin role; the api-server generates its password into
# $(AIRFLOW_HOME)/simple_auth_manager_passwords.json.generated.
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS := admin:admin
# The JWT secret all components share (the scheduler signs the tasks' tokens, the api-server checks them):
# generated once into this file, so restarts keep it.
AIRFLOW_JWT_SECRET_FILE := $(AIRFLOW_HOME)/jwt_secret
AIRFLOW_URL = http://127.0.0.1:$(AIRFLOW_PORT)
# Label Studio (`make up`): the reviewers' project on LABEL_STUDIO_PORT, its SQLite store and media in
# var/label-studio/, an admin user and API token generated once into var/label-studio/. It serves the review
# tasks' page images from the processing root (params.yaml processing.root).
LABEL_STUDIO_PORT ?= 8081
LABEL_STUDIO_HOME := $(CURDIR)/var/label-studio
LABEL_STUDIO_URL = http://127.0.0.1:$(LABEL_STUDIO_PORT)
LABEL_STUDIO_USER ?= admin@invoices.local
PROCESSING_ROOT ?= $(CURDIR)/var/processing
# Prefix of every Airflow command in a recipe: its own environment first on PATH (its components start
# subcommands from there), the JWT secret, and, for the DAGs' tasks, the services of `make up`. The tracking
# URI is not exported globally: the `invoice` CLI falls back to the SQLite store when no server answers.
AIRFLOW_RUN = PATH=$(abspath $(AIRFLOW)/bin):$$PATH AIRFLOW__API_AUTH__JWT_SECRET="$$(cat $(AIRFLOW_JWT_SECRET_FILE))" \
  MLFLOW_TRACKING_URI=http://127.0.0.1:$(MLFLOW_PORT) INVOICE_SERVICE_URL=http://127.0.0.1:$(BENTO_PORT) \
  LABEL_STUDIO_URL=$(LABEL_STUDIO_URL)

export PATH := $(abspath $(ML)/bin):$(PATH)
export INVOICE_PROJECT_ROOT := $(CURDIR)

.PHONY: help setup lock data validate train pretrain gpu-bundle evaluate gate rollback up down test lint bench demo clean

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

$(LABEL_STUDIO)/.installed: training/locks/label-studio.txt | $(UV)
	[ -x $(LABEL_STUDIO)/bin/python ] || $(UV) venv --quiet --python $(PYTHON) $(LABEL_STUDIO)
	VIRTUAL_ENV=$(LABEL_STUDIO) $(UV_INSTALL) training/locks/label-studio.txt
	touch $@

$(AIRFLOW)/.installed: training/locks/airflow.txt pyproject.toml | $(UV)
	[ -x $(AIRFLOW)/bin/python ] || $(UV) venv --quiet --python $(PYTHON) $(AIRFLOW)
	VIRTUAL_ENV=$(AIRFLOW) $(UV_INSTALL) training/locks/airflow.txt
	VIRTUAL_ENV=$(AIRFLOW) $(UV) pip install --quiet --no-deps --compile-bytecode -e .
	touch $@

.dvc/config.local:
	mkdir -p $(if $(findstring ://,$(DVC_REMOTE_URL)),,$(DVC_REMOTE_URL))
	$(ML)/bin/dvc remote add --local --force --default storage $(DVC_REMOTE_URL)

setup: $(ML)/.installed $(AIRFLOW)/.installed $(LABEL_STUDIO)/.installed .dvc/config.local ## Create the ML, Airflow and Label Studio environments and the DVC remote (idempotent)
	@echo "environments ready: $(ML) (ML stack), $(AIRFLOW) (Airflow, no torch), $(LABEL_STUDIO); DVC remote: $$($(ML)/bin/dvc remote list --local)"

lock: | $(UV) ## Re-resolve the pinned dependencies into training/locks/
	$(UV) pip compile --quiet pyproject.toml --extra ml --extra dev --python-version 3.11 $(if $(FIND_LINKS),--find-links $(FIND_LINKS)) -o training/locks/ml.txt
	$(UV) pip compile --quiet pyproject.toml --extra airflow --extra dev --python-version 3.11 -o training/locks/airflow.txt
	$(UV) pip compile --quiet training/locks/label-studio.in --python-version 3.11 -o training/locks/label-studio.txt

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

pretrain: setup ## Reproduce the shipped base reader training/base (params.yaml pretrain:; ARGS="--smoke" for a few steps), tracked in MLflow
	invoice model pretrain $(ARGS)

GPU_SITE_PACKAGES := zss font_lato font_caladea font_source_sans_pro font_source_serif_pro font_roboto
gpu-bundle: setup ## The packages a bare GPU machine lacks for training/gpu_pretrain.sh, into .gpu/site (pure Python)
	rm -rf .gpu/site && mkdir -p .gpu/site
	cd $$($(ML)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') && \
		cp -r $(GPU_SITE_PACKAGES) $(CURDIR)/.gpu/site/
	@du -sh .gpu/site

evaluate: setup ## Score MODEL (default: champion, else challenger) on DATASET (Donut split or labels.jsonl folder)
	invoice model evaluate $(DATASET) $(if $(MODEL),--model $(MODEL)) $(ARGS)

gate: setup ## Judge CANDIDATE (default challenger) against the champion (params.yaml gate:; CURRENT=folder of production pages for drift)
	invoice model gate --candidate $(CANDIDATE) $(if $(CURRENT),--current $(CURRENT))

rollback: setup ## Move the champion alias back to the previous champion
	invoice model rollback $(if $(ARGS),$(ARGS))

$(AIRFLOW_JWT_SECRET_FILE): | $(AIRFLOW)/.installed
	mkdir -p $(@D)
	(umask 077; $(AIRFLOW)/bin/python -c 'import secrets; print(secrets.token_urlsafe(64))' > $@)

# Label Studio's admin password and API token (a legacy token: 40 hex digits), generated once.
$(LABEL_STUDIO_HOME)/token $(LABEL_STUDIO_HOME)/password:
	mkdir -p $(@D)
	(umask 077; $(PYTHON) -c 'import secrets; print(secrets.token_hex(20))' > $@)

# Each service runs in its own session (setsid: pid = process group) so that `make down` can stop its children.
# MLflow's job runner (GenAI scorers; 8 huey processes, ~1.9 GB) is off: the platform does not use it.
# Airflow: no triggerer (no DAG defers) and no scheduler log server (port 8793 on all interfaces, ~140 MB):
# the api-server reads task logs from $(AIRFLOW_HOME)/logs on this same machine.
# Celery workers (production profile): worker-1 takes the default and the `ml` queue (it has the ML environment),
# the others the default queue only; each runs CELERY_CONCURRENCY tasks at once.
CELERY_WORKER_NAMES := $(if $(filter-out 0,$(CELERY_WORKERS)),$(addprefix worker-,$(shell seq $(CELERY_WORKERS))))
AIRFLOW_COMPONENTS := api-server scheduler dag-processor $(CELERY_WORKER_NAMES)
AIRFLOW_HEALTHY = curl -sf $(AIRFLOW_URL)/api/v2/monitor/health | $(AIRFLOW)/bin/python -c 'import json, sys; \
  health = json.load(sys.stdin); sys.exit(not all(health[c]["status"] == "healthy" for c in ("metadatabase", "scheduler")))' 2>/dev/null
AIRFLOW_PASSWORD = $$($(AIRFLOW)/bin/python -c 'import json, sys; print(json.load(open(sys.argv[1]))["admin"])' \
  $(AIRFLOW_HOME)/simple_auth_manager_passwords.json.generated 2>/dev/null || echo "?")

up: setup $(AIRFLOW_JWT_SECRET_FILE) $(LABEL_STUDIO_HOME)/token $(LABEL_STUDIO_HOME)/password ## Start MLflow, the BentoML service, Label Studio and Airflow (MLFLOW_PORT, BENTO_PORT, LABEL_STUDIO_PORT, AIRFLOW_PORT), health-checked; logs in var/log/
	mkdir -p var/log var/run var/mlflow/artifacts
	$(if $(PROFILE_DATABASES),$(ML)/bin/invoice db create $(PROFILE_DATABASES))
	$(ML)/bin/invoice db migrate
	if [ -f var/run/mlflow.pid ] && kill -0 $$(cat var/run/mlflow.pid) 2>/dev/null; then echo "MLflow already running"; else \
	  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid nohup $(ML)/bin/mlflow server --backend-store-uri $(MLFLOW_BACKEND_STORE_URI) $(MLFLOW_ARTIFACTS) \
	    --host 127.0.0.1 --port $(MLFLOW_PORT) --workers 1 > var/log/mlflow.log 2>&1 < /dev/null & echo $$! > var/run/mlflow.pid; fi
	for i in $$(seq 90); do curl -sf http://127.0.0.1:$(MLFLOW_PORT)/health >/dev/null && break; sleep 1; done
	curl -sf http://127.0.0.1:$(MLFLOW_PORT)/health >/dev/null || (tail -20 var/log/mlflow.log; exit 1)
	@echo "MLflow UI: http://127.0.0.1:$(MLFLOW_PORT)  (store $(MLFLOW_BACKEND_STORE_URI), artifacts $(or $(MLFLOW_ARTIFACTS_DESTINATION),$(MLFLOW_ARTIFACT_ROOT)))"
	if [ -f var/run/bentoml.pid ] && kill -0 $$(cat var/run/bentoml.pid) 2>/dev/null; then echo "BentoML already running"; else \
	  BENTOML_DO_NOT_TRACK=true MLFLOW_TRACKING_URI=http://127.0.0.1:$(MLFLOW_PORT) setsid nohup $(ML)/bin/bentoml serve \
	    serving.service:InvoiceService --host 127.0.0.1 --port $(BENTO_PORT) > var/log/bentoml.log 2>&1 < /dev/null & echo $$! > var/run/bentoml.pid; fi
	for i in $$(seq 90); do curl -sf http://127.0.0.1:$(BENTO_PORT)/healthz >/dev/null && break; sleep 1; done
	curl -sf http://127.0.0.1:$(BENTO_PORT)/healthz >/dev/null || (tail -20 var/log/bentoml.log; exit 1)
	@echo "BentoML: http://127.0.0.1:$(BENTO_PORT)  (POST /extract, API at /docs.json; $$(curl -s -o /dev/null -w '%{http_code}' \
	  http://127.0.0.1:$(BENTO_PORT)/readyz | sed 's/200/ready: champion loaded/; s/503/not ready yet: loading the champion, or none promoted (make gate)/'))"
	if [ -f var/run/label-studio.pid ] && kill -0 $$(cat var/run/label-studio.pid) 2>/dev/null; then echo "Label Studio already running"; else \
	  mkdir -p $(PROCESSING_ROOT); LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=$(PROCESSING_ROOT) \
	  setsid nohup $(LABEL_STUDIO)/bin/label-studio start --no-browser --internal-host 127.0.0.1 --port $(LABEL_STUDIO_PORT) \
	    --data-dir $(LABEL_STUDIO_HOME)/data --username $(LABEL_STUDIO_USER) --password "$$(cat $(LABEL_STUDIO_HOME)/password)" \
	    --user-token "$$(cat $(LABEL_STUDIO_HOME)/token)" --enable-legacy-api-token > var/log/label-studio.log 2>&1 < /dev/null & \
	  echo $$! > var/run/label-studio.pid; fi
	for i in $$(seq 180); do curl -sf $(LABEL_STUDIO_URL)/health >/dev/null && break; sleep 1; done
	curl -sf $(LABEL_STUDIO_URL)/health >/dev/null || (tail -20 var/log/label-studio.log; exit 1)
	LABEL_STUDIO_URL=$(LABEL_STUDIO_URL) invoice review setup
	start=; for c in $(AIRFLOW_COMPONENTS); do \
	  if [ -f var/run/airflow-$$c.pid ] && kill -0 $$(cat var/run/airflow-$$c.pid) 2>/dev/null; then echo "Airflow $$c already running"; \
	  else start="$$start $$c"; fi; done; \
	if [ -n "$$start" ]; then $(AIRFLOW_RUN) $(AIRFLOW)/bin/airflow db migrate > var/log/airflow-db-migrate.log 2>&1 \
	  || { tail -20 var/log/airflow-db-migrate.log; exit 1; }; fi; \
	for c in $$start; do case $$c in api-server) args="api-server --host 127.0.0.1 --port $(AIRFLOW_PORT)";; \
	  scheduler) args="scheduler --skip-serve-logs";; dag-processor) args=dag-processor;; \
	  worker-*) args="celery worker --celery-hostname $$c@%h --skip-serve-logs --concurrency $(CELERY_CONCURRENCY) \
	    --queues default$$([ $$c != worker-1 ] || echo ,ml)";; esac; \
	  $(AIRFLOW_RUN) setsid nohup $(AIRFLOW)/bin/airflow $$args > var/log/airflow-$$c.log 2>&1 < /dev/null & echo $$! > var/run/airflow-$$c.pid; done
	for i in $$(seq 90); do $(AIRFLOW_HEALTHY) && { echo "Airflow healthy after $${SECONDS} s"; break; }; sleep 1; done
	$(AIRFLOW_HEALTHY) || { curl -s $(AIRFLOW_URL)/api/v2/monitor/health; tail -n 20 var/log/airflow-*.log; exit 1; }
	for c in $(CELERY_WORKER_NAMES); do for i in $$(seq 90); do grep -q "$$c@.* ready" var/log/airflow-$$c.log && break; sleep 1; done; \
	  grep -q "$$c@.* ready" var/log/airflow-$$c.log || { tail -n 20 var/log/airflow-$$c.log; exit 1; }; echo "Celery $$c ready"; done
	@echo "Airflow UI: $(AIRFLOW_URL)  (login admin / $(AIRFLOW_PASSWORD); DAGs from dags/, AIRFLOW_HOME var/airflow)"
	@echo; echo "services ($(PROFILE) profile$(PROFILE_SUMMARY)):"; \
	echo "  MLflow UI   http://127.0.0.1:$(MLFLOW_PORT)"; \
	echo "  Airflow UI  $(AIRFLOW_URL)  (login admin / $(AIRFLOW_PASSWORD))"; \
	echo "  BentoML     http://127.0.0.1:$(BENTO_PORT)  (Swagger UI; POST /extract, OpenAPI at /docs.json)"; \
	echo "  Label Studio $(LABEL_STUDIO_URL)  (login $(LABEL_STUDIO_USER) / $$(cat $(LABEL_STUDIO_HOME)/password); project \"Invoice review\")"; \
	echo "  logs in var/log/, stop with: make down"

# Stops each pid file's process, its process group and every descendant (LocalExecutor workers; task processes
# and their commands, which Airflow puts in process groups of their own; uvicorn and BentoML workers): SIGTERM to
# the groups, after 10 s SIGTERM to every survivor, after 20 s SIGKILL. The Airflow api-server goes last, so that
# tasks stopped with the scheduler can still report their state.
down: ## Stop the services started by make up
	@stop() { \
	  leaders=; for pidfile in "$$@"; do [ -f "$$pidfile" ] || continue; leaders="$$leaders $$(cat $$pidfile)"; rm -f $$pidfile; done; \
	  [ -n "$$leaders" ] || return 0; \
	  pids=$$(ps -eo pid=,ppid=,pgid= | awk -v leaders="$$leaders" 'BEGIN { split(leaders, l, " "); for (i in l) keep[l[i]] = 1 } \
	    { parent[$$1] = $$2; group[$$1] = $$3 } \
	    END { for (p in group) if (group[p] in keep) keep[p] = 1; \
	          do { more = 0; for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; more = 1 } } while (more); \
	          for (p in keep) if (p in parent) print p }'); \
	  for pid in $$leaders; do kill -TERM -- -$$pid 2>/dev/null || kill -TERM $$pid 2>/dev/null || true; done; \
	  for i in $$(seq 20); do alive=; for pid in $$pids; do kill -0 $$pid 2>/dev/null && alive="$$alive $$pid"; done; \
	    [ -n "$$alive" ] || break; [ $$i != 10 ] || kill -TERM $$alive 2>/dev/null || true; sleep 1; done; \
	  [ -z "$$alive" ] || { echo "killing what outlived SIGTERM:$$alive"; kill -KILL $$alive 2>/dev/null || true; }; \
	}; \
	stop $$(ls var/run/*.pid 2>/dev/null | grep -v airflow-api-server.pid); stop var/run/airflow-api-server.pid
	@echo "services stopped"

.PHONY: serve bento container worker-image
serve: setup ## Serve POST /extract on BENTO_PORT (default 3000) with the champion of the make-up MLflow store (foreground)
	BENTOML_DO_NOT_TRACK=true bentoml serve serving.service:InvoiceService --port $(BENTO_PORT)

bento: setup ## Build the service's bento (serving/bentofile.yaml) into the local BentoML store, offline
	BENTOML_DO_NOT_TRACK=true PATH=$(abspath $(TOOLS)/bin):$$PATH bentoml build -f serving/bentofile.yaml .

# Images for a cluster (serving/deploy/): they need a Docker daemon and the base images' registry.
IMAGE_TAG ?= latest
container: bento ## Build the service's image invoice-extractor:IMAGE_TAG from the newest bento (bentoml containerize)
	BENTOML_DO_NOT_TRACK=true bentoml containerize invoice-extractor:latest --image-tag invoice-extractor:$(IMAGE_TAG)

worker-image: ## Build the Airflow worker / ML task image invoice-mlops-worker:IMAGE_TAG (serving/deploy/worker.Dockerfile)
	docker build -f serving/deploy/worker.Dockerfile -t invoice-mlops-worker:$(IMAGE_TAG) .

test: setup ## Run the test suite (code, data and model behaviour)
	$(ML)/bin/pytest $(PYTEST_ARGS)

lint: setup ## Ruff over the code
	$(ML)/bin/ruff check training tests dags serving
	$(ML)/bin/ruff format --check training tests dags serving

bench: setup ## Measure and write the figures into BENCHMARKS.md
	$(ML)/bin/python tests/benchmarks/run.py --write BENCHMARKS.md

DEMO_N ?= 400
demo: setup ## The main job: services up, labeled data, invoice_training to a champion, a batch through invoice_processing, a summary
	$(MAKE) --no-print-directory up
	if [ -f data.dvc ] && dvc status --quiet data.dvc 2>/dev/null; then echo "data: reusing version $$(invoice data version 2>/dev/null | tail -1)"; \
	else $(MAKE) --no-print-directory data N=$(DEMO_N); fi
	$(AIRFLOW_RUN) $(ML)/bin/python -m training.demo --airflow-url $(AIRFLOW_URL)

clean: ## Stop the services, then remove pipeline outputs and service state (not the environments, data/ or the DVC cache)
	$(MAKE) --no-print-directory down
	rm -rf var
