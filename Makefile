# Two commands on a fresh machine: `make run` (builds what is missing, then runs the main job)
# and `make test`. Both install what they need first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Every dependency pinned with its hashes (scripts/lock_dependencies.py; `make lock` after editing
# pyproject.toml's dependencies); `make install` refuses a file whose hash differs.
LOCK   := requirements.lock
# `make test AUDIT=no` skips the dependency audit (it needs PyPI's vulnerability data).
AUDIT  ?= yes
# Debian packages the tests and tools call: dcmtk (dcmdump validates our DICOM files) and
# redis-server (the gateway's cache tests start a real one on a free loopback port) and
# docker-compose (its `config` validates docker-compose.yml; no Docker engine is needed for that)
# and chromium + chromium-driver (the web app's tests drive a real headless Chromium) and
# prometheus (its promtool checks and unit-tests the alert rules of deploy/observability/) and
# dicom3tools (its dciodvfy validates the DICOM SR and annotated copies the service writes) and
# kubernetes-client (`kubectl kustomize` renders deploy/k8s; Debian's is 1.20 with kustomize 2.0.3,
# which the manifests keep to, so it renders them as a newer kubectl does).
# checkov, the policy linter tests/test_k8s.py runs on the rendered manifests, lives in a venv of its
# own: its pins (packaging, boto3, networkx, …) would fight the project's lock.
CHECKOV_VENV := .venv-checkov
CHECKOV_VERSION := 3.3.30
CHECKOV := $(CHECKOV_VENV)/bin/checkov

.PHONY: install system-deps run test audit lock bench grid clean

install: system-deps $(STAMP) $(CHECKOV)

$(STAMP): pyproject.toml $(LOCK)
	@echo ">> creating $(VENV) and installing the locked dependencies (torch comes from this machine's disk)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --progress-bar on --require-hashes -r $(LOCK)
	$(BIN)/pip install --no-deps -e '.[test]'
	@touch $(STAMP)

$(CHECKOV):
	@echo ">> installing checkov $(CHECKOV_VERSION) into $(CHECKOV_VENV)"
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --progress-bar off checkov==$(CHECKOV_VERSION)

lock: install
	$(BIN)/python scripts/lock_dependencies.py

# Only the packages of missing tools: a kubectl from another package (gcloud) clashes with kubernetes-client.
system-deps:
	@missing=""; for pair in dcmdump:dcmtk redis-server:redis-server docker-compose:docker-compose chromium:chromium \
	  chromedriver:chromium-driver promtool:prometheus dciodvfy:dicom3tools kubectl:kubernetes-client; do \
	  command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo ">> installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

run: install
	$(BIN)/avn run

test: install audit
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

audit: install
ifeq ($(AUDIT),no)
	@echo ">> dependency audit skipped (AUDIT=no)"
else
	$(BIN)/python scripts/audit_dependencies.py $(LOCK)
endif

bench: install
	$(BIN)/python scripts/bench_phantom.py

grid: install
	$(BIN)/avn phantom-grid --out docs/img/phantom_grid.png

clean:
	rm -rf data/demo .pytest_cache
