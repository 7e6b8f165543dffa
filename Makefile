# authmigrate — see README.md.
#   make run      demo: local nx-27017 seeded with generated data → the DAG → validation report
#   make migrate  run the DAG once, headless, with the AIRFLOW_CONN_* connections of the environment
#   make test     the whole test suite (installs what it needs: venv, Chromium, services)
#   make unlock LOCK=<token or run id>   remove a dead run's migration lock (only that holder's)
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
AIRFLOW     := $(VENV)/bin/airflow
UV_VERSION  := 0.13.9
MONGO_PORT  ?= 27017
DEMO_USERS  ?= 20000
DEMO_DB     ?= authmigrate_demo
DEMO_REDIS_DB ?= 5
CONF        ?= {}
DEMO_SOURCE ?= mongodb
DEMO_FORMAT ?= bson
# make run DEMO_SOURCE=files [DEMO_FORMAT=bson|bson.gz|archive|jsonl|jsonarray]: the same generated data
# written as dump files under .run/dump (the default AUTHMIGRATE_SOURCE_ROOTS), migrated with source=files
DEMO_FILES_PATH = $(CURDIR)/.run/dump$(if $(filter archive,$(DEMO_FORMAT)),/idp.archive,)
DEMO_FILES_CONF = {"source": "files", "source_path": "$(DEMO_FILES_PATH)"}

# An Airflow home local to the project (git-ignored), this project's DAG and plugins.
export AIRFLOW_HOME ?= $(CURDIR)/.airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export PYTHONPATH := $(CURDIR)/plugins:$(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
# Arrow's jemalloc pool hands freed memory back; its default (mimalloc) keeps it (plugins/authmigrate/memory.py).
export ARROW_DEFAULT_MEMORY_POOL ?= jemalloc

DEMO_CONNS := AIRFLOW_CONN_MONGO_DEFAULT=mongo://127.0.0.1:$(MONGO_PORT)/idp \
	AIRFLOW_CONN_POSTGRES_DEFAULT=postgres://postgres@127.0.0.1:5432/$(DEMO_DB) \
	AIRFLOW_CONN_REDIS_DEFAULT='redis://127.0.0.1:6379?db=$(DEMO_REDIS_DB)'

.PHONY: help venv run migrate unlock test browser services mongo-start mongo-stop clean

help:
	@sed -n '2,6p' Makefile

venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q uv==$(UV_VERSION)
	# --compile-bytecode: every Airflow process otherwise compiles its imports anew where
	# PYTHONDONTWRITEBYTECODE is set (it is on this project's machines): ~9 s per process
	$(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) -r requirements.txt
	touch $@

services:
	@bash scripts/ensure_services.sh

$(AIRFLOW_HOME)/airflow.db: | venv
	$(AIRFLOW) db migrate > /dev/null

mongo-start: venv
	$(PY) -m tools.mongo_server start --dir .run/mongo --port $(MONGO_PORT)

mongo-stop:
	-$(PY) -m tools.mongo_server stop --dir .run/mongo --port $(MONGO_PORT)

migrate: venv $(AIRFLOW_HOME)/airflow.db
	@for v in AIRFLOW_CONN_MONGO_DEFAULT AIRFLOW_CONN_POSTGRES_DEFAULT; do \
	  [ -n "$${!v}" ] || { echo "$$v is not set: export the connection URI (see README)" >&2; exit 2; }; done
	$(PY) -m tools.migrate --conf '$(CONF)'

# the operator's override for a lock whose holder is dead (the lock also expires by itself
# within AUTHMIGRATE_LOCK_TTL_SECONDS): removes it only if it still names that holder
unlock: venv
	@[ -n "$(LOCK)" ] || { echo "usage: make unlock LOCK=<token or run id> (the refusal message names the run id)" >&2; exit 2; }
	$(PY) -m authmigrate.lock unlock '$(LOCK)'

run: venv services mongo-start
	$(PY) -m tools.seed_mongo --uri mongodb://127.0.0.1:$(MONGO_PORT) --db idp --users $(DEMO_USERS)
	$(PY) -m tools.seed_redis --db $(DEMO_REDIS_DB) --mongo mongodb://127.0.0.1:$(MONGO_PORT) --mongo-db idp
	psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$(DEMO_DB)'" | grep -q 1 \
	  || psql -h 127.0.0.1 -U postgres -qc 'CREATE DATABASE "$(DEMO_DB)"'
	$(if $(filter files,$(DEMO_SOURCE)),rm -rf .run/dump && $(PY) -m tools.seed_mongo --db idp --users $(DEMO_USERS) \
	  --format $(DEMO_FORMAT) --out .run/dump,)
	$(DEMO_CONNS) $(MAKE) --no-print-directory migrate $(if $(filter files,$(DEMO_SOURCE)),CONF='$(DEMO_FILES_CONF)',) \
	  > .run/migrate.log 2>&1 \
	  || { tail -n 60 .run/migrate.log; echo "the run failed: full log in .run/migrate.log" >&2; exit 1; }
	@echo "full log: .run/migrate.log"
	@$(DEMO_CONNS) $(PY) -m tools.show_report

browser:
	@bash scripts/install_browser.sh

test: venv services browser
	$(PY) -m pytest

clean: mongo-stop airflow-stop
	rm -rf .run .airflow

# ---------------------------------------------------------------- a local Airflow with the UI
#   make airflow        api-server + scheduler + dag-processor + triggerer (LocalExecutor, metadata DB
#                       $(AIRFLOW_DB) on the local PostgreSQL) serving this DAG against the demo data
#   make airflow-stop   stops exactly the processes `make airflow` started (state in $(AIRFLOW_STATE))
AIRFLOW_PORT  ?= 8080
AIRFLOW_STATE ?= .run/airflow
AIRFLOW_DB    ?= authmigrate_airflow

.PHONY: airflow airflow-stop

airflow: venv services mongo-start
	$(PY) -m tools.airflow_stack seed-if-empty --uri mongodb://127.0.0.1:$(MONGO_PORT) --mongo-db idp --users $(DEMO_USERS)
	psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$(DEMO_DB)'" | grep -q 1 \
	  || psql -h 127.0.0.1 -U postgres -qc 'CREATE DATABASE "$(DEMO_DB)"'
	$(DEMO_CONNS) $(PY) -m tools.airflow_stack start --state-dir $(AIRFLOW_STATE) --port $(AIRFLOW_PORT) --db $(AIRFLOW_DB)

airflow-stop:
	$(PY) -m tools.airflow_stack stop --state-dir $(AIRFLOW_STATE)

# Benchmark (not part of `make test`): ours vs the floor, the naive way and dlt on the same seeded data.
#   make bench BENCH_USERS=200000 [BENCH_RUNS=1] [BENCH_ARGS=--profile]   → bench-results/bench.{json,md,png}
#   BENCH_ARGS: --profile, --source DIR (reuse a seeded nx-27017), --peak-reference bench-results-100k/bench.json
BENCH_USERS ?= 200000
BENCH_RUNS  ?=
BENCH_ARGS  ?=
.PHONY: bench
bench: venv services
	$(PY) -m tools.bench --users $(BENCH_USERS) $(if $(BENCH_RUNS),--runs $(BENCH_RUNS)) --out bench-results $(BENCH_ARGS)
