# The two commands of the README:  `make run`  and  `make test`.
SHELL := /bin/bash
PY := .venv/bin/python
VENV_STAMP := .venv/.installed

.PHONY: run test lint up down status bench faults clean k8s-tools

$(VENV_STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

## run: start Kafka, etcd and S3 locally, then the runstream worker on its local defaults
run: $(VENV_STAMP)
	deploy/local up
	.venv/bin/runstream worker

## test: install, start the stack, lint, run every test (unit, contract, integration, faults)
test: $(VENV_STAMP) k8s-tools
	deploy/local up
	$(MAKE) --no-print-directory lint
	set -a; eval "$$(deploy/local env | sed 's/^export //')"; set +a; \
	  .venv/bin/pytest -rA $(PYTEST_ARGS)

lint: $(VENV_STAMP)
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/lint-imports
	.venv/bin/mypy

up: $(VENV_STAMP)
	deploy/local up

## k8s-tools: kubeconform and offline Kubernetes schemas for tests/unit/test_k8s.py (cached in var/cache/k8s)
k8s-tools: $(VENV_STAMP)
	deploy/k8s/tools >/dev/null
down:
	deploy/local down
status:
	deploy/local status
clean:
	deploy/local clean

## faults: every fault test of tests/faults (issue 8), slow ones included, then the table
faults: $(VENV_STAMP)
	deploy/local up
	set -a; eval "$$(deploy/local env | sed 's/^export //')"; set +a; \
	  RUNSTREAM_FAULTS=all .venv/bin/pytest -m faults tests/faults -p no:cacheprovider $(PYTEST_ARGS)
