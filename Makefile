# kdlens: `make repro` runs the pipeline, `make test` the tests; both create .venv and install first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt | cksum | cut -d' ' -f1)
# dvc.yaml calls `python -m stages.<name>`: put the venv first on PATH for every recipe.
export PATH := $(CURDIR)/$(BIN):$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
UI_PORT ?= 5000

.PHONY: install repro test ui server

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements.txt
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

repro: install
	$(BIN)/dvc repro

# Whole files per worker (a pipeline file's tests share one project), the costliest first (tests/conftest.py).
test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder tests

# The MLflow UI for this project's tracking store, on 127.0.0.1 only.
ui: install
	$(BIN)/mlflow server --host 127.0.0.1 --port $(UI_PORT) --workers 1 \
	  --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --artifacts-destination $(CURDIR)/mlartifacts

# The team's tracking server: runs in PostgreSQL, artifacts uploaded through the server (proxied), so
# clients need only MLFLOW_TRACKING_URI=http://<host>:$(SERVER_PORT) and no database or storage
# credentials. The database password stays out of the URI (and `ps`): libpq reads ~/.pgpass or
# PGPASSWORD. ARTIFACTS may be s3://bucket/prefix (pip install boto3; AWS_* in the server's environment).
SERVER_HOST ?= 127.0.0.1
SERVER_PORT ?= 5000
DB_URI      ?= postgresql+psycopg2://mlflow@127.0.0.1:5432/mlflow
ARTIFACTS   ?= $(CURDIR)/mlartifacts
server: install
	$(BIN)/mlflow server --host $(SERVER_HOST) --port $(SERVER_PORT) --workers 2 \
	  --backend-store-uri $(DB_URI) --serve-artifacts --artifacts-destination $(ARTIFACTS)
