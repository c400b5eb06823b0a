"""Benchmarks (not part of `make test`); each runs in one process and writes a markdown report with its command.

    python experiments/bench.py lora-core            # our LoRA vs peft vs full FT -> results/bench/lora_core.md
    python experiments/bench.py latency              # Table 1, scaled for a CPU -> results/latency/table1.md
    python experiments/bench.py latency --full --device cuda   # the paper's settings -> results/latency/table1_full.md
    python experiments/bench.py training             # memory and step time, LoRA vs FT vs baselines -> results/bench/
    python experiments/bench.py training --gpu-full  # paper-like shapes, 5 models, bf16, on a GPU
    python experiments/bench.py storage              # adapter checkpoint vs full model size -> results/bench/storage.md
    python experiments/bench.py figure5              # Figure 5 latency grid, reduced for a CPU -> results/bench/figure5.*
    python experiments/bench.py figure5 --full --device cuda   # the paper's grid on GPT-2 medium
    python experiments/bench.py cost                 # step time and memory vs r and width -> results/bench/cost.*
    python experiments/bench.py fast-path            # each fast-path switch off vs on -> results/bench/fast_path.*
    python experiments/bench.py fast-path --full --device cuda  # the same at the paper's shapes, bf16
    python experiments/bench.py mfu                  # MFU of full FT and LoRA, small shapes -> results/bench/mfu.*
    python experiments/bench.py mfu --full --device cuda --peak-tflops 989   # the paper's shapes on an H200
    python experiments/bench.py trace                # torch.profiler traces of a LoRA and a full step -> results/bench/trace*

Every report is Markdown with a CSV of its raw values beside it (`lora.bench.harness.Report`).

--quick runs small shapes with 2 repetitions and writes under outputs/ (a check that everything runs).
"""

import argparse
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from lora.bench import cost, fast_path, figure5, latency, lora_core, mfu, storage, trace, training
from lora.bench.timing import resolve_device
from lora.cli import friendly_errors

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bench", choices=["lora-core", "latency", *MORE])
    p.add_argument("--quick", action="store_true", help="small shapes, 2 repetitions, report under outputs/")
    p.add_argument(
        "--full",
        action="store_true",
        help="latency, figure5, cost, fast-path, mfu, trace: the paper's settings (for a GPU)",
    )
    p.add_argument(
        "--gpu-full", action="store_true", help="training: paper-like shapes, 5 models, bf16 on cuda"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default 1: on a shared CPU a second thread mostly waits)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto (default cpu)")
    p.add_argument("--dtype", default=None, help="float32 (default on cpu) or bfloat16 (default on cuda)")
    p.add_argument("--reps", type=int, default=None, help="timed rounds (default: the benchmark's own)")
    p.add_argument("--out", type=Path, default=None, help="report path (default: see above)")
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="fast-path, mfu: the device's peak TFLOP/s for the MFU (default: a known GPU's data sheet, e.g. "
        "H200 bf16 dense 989.4; on CPU a measured fp32 matmul rate)",
    )
    p.add_argument(
        "--pairs",
        default=None,
        help=f"fast-path: comma-separated pairs (default all: {','.join(fast_path.PAIRS)})",
    )
    p.add_argument(
        "--glue-dir",
        default=str(ROOT.parent / "shared" / "data" / "glue"),
        help="fast-path: GLUE tsv folders for the group-by-length counts",
    )
    args = p.parse_args(argv)
    if args.quick and args.full:
        p.error("--quick and --full exclude each other")
    if args.full and args.bench not in ("latency", "figure5", "cost", *FULL_TOO):
        p.error("--full applies to the latency, figure5, cost, fast-path, mfu and trace benchmarks only")
    if args.gpu_full and (args.bench != "training" or args.quick):
        p.error("--gpu-full applies to the training benchmark only, without --quick")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    return args


@friendly_errors
def main(argv: list[str]) -> None:
    args = parse_args(argv)
    command = shlex.join(["python", "experiments/bench.py", *argv])
    if args.bench in MORE:
        MORE[args.bench](args, command)
        return
    dtype = args.dtype or ("bfloat16" if resolve_device(args.device).type == "cuda" else "float32")
    if args.bench == "lora-core":
        base = lora_core.QUICK if args.quick else lora_core.CoreConfig()
        reps = args.reps or base.reps
        cfg = replace(base, device=args.device, dtype=dtype, reps=reps, threads=args.threads or 1)
        out = args.out or ROOT / (
            "outputs/bench/lora_core_quick.md" if args.quick else "results/bench/lora_core.md"
        )
        lora_core.run(cfg, out, command, log=lambda s: print(s, flush=True))
        return
    mode = "full" if args.full else "quick" if args.quick else "cpu"
    settings, scaling = latency.settings_for(mode)
    reps = args.reps or (2 if args.quick else latency.LatencyConfig.reps)
    cfg = latency.LatencyConfig(
        settings, scaling, device=args.device, dtype=dtype, reps=reps, threads=args.threads or 1
    )
    default = {"full": "results/latency/table1_full.md", "quick": "outputs/latency/table1_quick.md"}
    out = args.out or ROOT / default.get(mode, "results/latency/table1.md")
    latency.run(cfg, out, command, log=lambda s: print(s, flush=True))


# --- training, storage, figure5, cost (lora/bench/{training,storage,figure5,cost}.py) ------------------------------


def _setup(args: argparse.Namespace, device: str) -> tuple[str, str]:
    """Set torch's CPU threads (default 1) and return (device, dtype): bf16 on cuda, fp32 on cpu by default."""
    import torch

    torch.set_num_threads(args.threads or 1)
    return device, args.dtype or ("bfloat16" if resolve_device(device).type == "cuda" else "float32")


def _out(args: argparse.Namespace, name: str) -> Path:
    """--out, else outputs/bench/<name>_quick.md with --quick, results/bench/<name>[_full|_gpu].md otherwise."""
    if args.out is not None:
        return args.out
    if args.quick:
        return ROOT / f"outputs/bench/{name}_quick.md"
    suffix = "_full" if args.full else "_gpu" if args.gpu_full else ""
    return ROOT / f"results/bench/{name}{suffix}.md"


def _log(s: str) -> None:
    print(s, flush=True)


def run_training(args: argparse.Namespace, command: str) -> None:
    base = training.GPU_FULL if args.gpu_full else training.QUICK if args.quick else training.TrainingConfig()
    device = ("cuda" if args.device == "cpu" else args.device) if args.gpu_full else args.device
    device, dtype = _setup(args, device)
    reps = {"reps": args.reps, "large_reps": args.reps} if args.reps else {}
    cfg = replace(base, device=device, dtype=dtype, **reps)
    training.run(cfg, _out(args, "training"), command, log=_log)


def run_storage(args: argparse.Namespace, command: str) -> None:
    _setup(args, "cpu")
    cfg = (
        storage.StorageConfig(models=("roberta-base", "gpt2-medium"))
        if args.quick
        else storage.StorageConfig()
    )
    storage.run(cfg, _out(args, "storage"), command, log=_log)


def run_figure5(args: argparse.Namespace, command: str) -> None:
    base = figure5.FULL if args.full else figure5.QUICK if args.quick else figure5.Figure5Config()
    device, dtype = _setup(args, args.device)
    cfg = replace(base, device=device, dtype=dtype, reps=args.reps or base.reps)
    out = _out(args, "figure5")
    figure5.run(cfg, out, command, log=_log, figure=out.with_suffix(".png"))


def run_cost(args: argparse.Namespace, command: str) -> None:
    base = cost.FULL if args.full else cost.QUICK if args.quick else cost.CostConfig()
    device, dtype = _setup(args, args.device)
    cfg = replace(base, device=device, dtype=dtype, reps=args.reps or base.reps)
    out = _out(args, "cost")
    cost.run(cfg, out, command, log=_log, figure=out.with_suffix(".png"))


def _device(args: argparse.Namespace) -> str:
    """--full means a GPU: cuda unless --device names another."""
    return "cuda" if args.full and args.device == "cpu" else args.device


def run_fast_path(args: argparse.Namespace, command: str) -> None:
    base = fast_path.FULL if args.full else fast_path.QUICK if args.quick else fast_path.FastPathConfig()
    pairs = tuple(args.pairs.split(",")) if args.pairs else None
    cfg = fast_path.with_overrides(
        base, device=_device(args), reps=args.reps, threads=args.threads, peak_tflops=args.peak_tflops, pairs=pairs,
        glue_dir=args.glue_dir,
    )  # fmt: skip
    fast_path.run(cfg, _out(args, "fast_path"), command, log=_log)


def run_mfu(args: argparse.Namespace, command: str) -> None:
    base = mfu.FULL if args.full else mfu.QUICK if args.quick else mfu.MfuConfig()
    over = {
        "device": _device(args),
        "reps": args.reps,
        "threads": args.threads,
        "peak_tflops": args.peak_tflops,
    }
    cfg = replace(base, **{k: v for k, v in over.items() if v is not None})
    mfu.run(cfg, _out(args, "mfu"), command, log=_log)


def run_trace(args: argparse.Namespace, command: str) -> None:
    base = trace.FULL if args.full else trace.QUICK if args.quick else trace.TraceConfig()
    over = {"device": _device(args), "threads": args.threads}
    cfg = replace(base, **{k: v for k, v in over.items() if v is not None})
    trace.run(cfg, _out(args, "trace"), command, log=_log)


MORE = {
    "training": run_training,
    "storage": run_storage,
    "figure5": run_figure5,
    "cost": run_cost,
    "fast-path": run_fast_path,
    "mfu": run_mfu,
    "trace": run_trace,
}
FULL_TOO = ("fast-path", "mfu", "trace")


if __name__ == "__main__":
    main(sys.argv[1:])
