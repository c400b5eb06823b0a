#!/usr/bin/env bash
# One run on a lent GPU (an H200 here), about 10 minutes, that leaves everything under results/bench/gpu/:
#
#   env.txt                      GPU, driver, torch / transformers versions
#   tests.log, tests_cpu.log     the fast-path tests on the GPU (their CUDA cases), and the CPU suite of the switches
#   trace.md (+ .csv, trace_traces/*.json.gz)   torch.profiler traces of a LoRA and a full step, paper shapes
#   fast_path.md (+ .csv)        every fast-path switch off vs on, paper shapes, bf16 autocast
#   mfu.md (+ .csv)              MFU of full FT and LoRA at the paper's shapes, peak 989.4 TFLOP/s (H200 bf16 dense)
#   plan.md (+ .csv)             device-hours of every sweep target from step times measured on this GPU
#   logs/<job>.log, logs/summary.txt   each job's output and exit status
#
# The GPU jobs run one after another (timings must not share the GPU), each under its own time limit so that one
# slow job cannot eat the others' time; the CPU-only jobs (the CPU test suite, the storage report) run beside them.
# A job that fails or times out leaves its log and the others go on. Usage, from the repository root:
#
#   bash experiments/gpu_check.sh            # or: make bench-gpu-all
#   PY=python3 bash experiments/gpu_check.sh # another interpreter (the machine's own torch + transformers)
#
# Needs: torch with CUDA, transformers, peft, hydra-core, omegaconf, pandas, tabulate, datasets, matplotlib
# (`pip install -e .` from this repository installs them); no network (models are built from their configs).
set -u
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    PY=.venv/bin/python
  else
    PY=python3
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONDONTWRITEBYTECODE=1 TOKENIZERS_PARALLELISM=false
export HF_HOME="$PWD/.cache/hf" LORA_CACHE="$PWD/.cache/lora" MPLCONFIGDIR="$PWD/.cache/matplotlib"
OUT=results/bench/gpu
mkdir -p "$OUT/logs"
: > "$OUT/logs/summary.txt"
START=$(date +%s)

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| transformers', transformers.__version__)"
} > "$OUT/env.txt" 2>&1
if ! "$PY" -c "import torch, transformers, peft, hydra, omegaconf, pandas, tabulate, datasets; assert torch.cuda.is_available()" \
     > "$OUT/logs/imports.log" 2>&1; then
  echo "error: $PY lacks a CUDA torch or a dependency (see $OUT/logs/imports.log)" | tee -a "$OUT/logs/summary.txt" >&2
  exit 2
fi

job() {  # job NAME LIMIT_SECONDS COMMAND...: run it under `timeout`, log its output and status
  local name=$1 limit=$2 t0 rc
  shift 2
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$OUT/logs/$name.log" 2>&1
  rc=$?
  echo "$name: exit $rc$([ $rc = 124 ] && echo ' (timed out)') after $(( $(date +%s) - t0 )) s (limit $limit s)" \
    | tee -a "$OUT/logs/summary.txt"
}

# CPU-only job, side by side with the GPU ones (no GPU visible to it): the switches' CPU tests and the loralib
# oracle, on this machine's torch and transformers.
( export CUDA_VISIBLE_DEVICES=""; job tests_cpu 400 "$PY" -m pytest -q -p no:cacheprovider tests/test_fast_path.py \
    tests/methods/test_loralib_oracle.py ) &

# GPU jobs, one after another. Limits add up to 9.5 minutes; each job's own estimate is well under its limit:
# tests ~20 s, trace ~30 s, fast_path ~2 min (torch.compile's first step included), mfu ~1 min, plan ~2-3 min.
job tests      60 "$PY" -m pytest -q -p no:cacheprovider tests/test_fast_path.py -k cuda
job trace      60 "$PY" experiments/bench.py trace --full --out "$OUT/trace.md"
job fast_path 200 "$PY" experiments/bench.py fast-path --full --out "$OUT/fast_path.md"
job mfu        90 "$PY" experiments/bench.py mfu --full --peak-tflops 989.4 --out "$OUT/mfu.md"
job plan      160 "$PY" experiments/plan.py --device cuda --steps 2 --out "$OUT/plan.md"
wait
cp "$OUT/logs/tests.log" "$OUT/tests.log" 2>/dev/null
cp "$OUT/logs/tests_cpu.log" "$OUT/tests_cpu.log" 2>/dev/null
echo "total $(( $(date +%s) - START )) s" | tee -a "$OUT/logs/summary.txt"
