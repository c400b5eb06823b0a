"""Benchmarks (not part of `make test`); each runs in one process and writes a markdown report with its command.

    python experiments/bench.py lora-core            # our LoRA vs peft vs full FT -> results/bench/lora_core.md
    python experiments/bench.py latency              # Table 1, scaled for a CPU -> results/latency/table1.md
    python experiments/bench.py latency --full --device cuda   # the paper's settings -> results/latency/table1_full.md

--quick runs small shapes with 2 repetitions and writes under outputs/ (a check that everything runs).
"""

import argparse
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from lora.bench import latency, lora_core
from lora.bench.timing import resolve_device
from lora.cli import friendly_errors

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bench", choices=["lora-core", "latency"])
    p.add_argument("--quick", action="store_true", help="small shapes, 2 repetitions, report under outputs/")
    p.add_argument("--full", action="store_true", help="latency: the paper's exact settings (for a GPU)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto (default cpu)")
    p.add_argument("--dtype", default=None, help="float32 (default on cpu) or bfloat16 (default on cuda)")
    p.add_argument("--reps", type=int, default=None, help="timed rounds (default: the benchmark's own)")
    p.add_argument("--out", type=Path, default=None, help="report path (default: see above)")
    args = p.parse_args(argv)
    if args.quick and args.full:
        p.error("--quick and --full exclude each other")
    if args.full and args.bench != "latency":
        p.error("--full applies to the latency benchmark only")
    return args


@friendly_errors
def main(argv: list[str]) -> None:
    args = parse_args(argv)
    command = shlex.join(["python", "experiments/bench.py", *argv])
    dtype = args.dtype or ("bfloat16" if resolve_device(args.device).type == "cuda" else "float32")
    if args.bench == "lora-core":
        base = lora_core.QUICK if args.quick else lora_core.CoreConfig()
        cfg = replace(base, device=args.device, dtype=dtype, reps=args.reps or base.reps)
        out = args.out or ROOT / (
            "outputs/bench/lora_core_quick.md" if args.quick else "results/bench/lora_core.md"
        )
        lora_core.run(cfg, out, command, log=lambda s: print(s, flush=True))
        return
    mode = "full" if args.full else "quick" if args.quick else "cpu"
    settings, scaling = latency.settings_for(mode)
    reps = args.reps or (2 if args.quick else latency.LatencyConfig.reps)
    cfg = latency.LatencyConfig(settings, scaling, device=args.device, dtype=dtype, reps=reps)
    default = {"full": "results/latency/table1_full.md", "quick": "outputs/latency/table1_quick.md"}
    out = args.out or ROOT / default.get(mode, "results/latency/table1.md")
    latency.run(cfg, out, command, log=lambda s: print(s, flush=True))


if __name__ == "__main__":
    main(sys.argv[1:])
