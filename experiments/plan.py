"""The device-hours of every sweep target before it starts (lora/plan.py), from step times measured here.

python experiments/plan.py                                  # all sweeps, this machine -> results/bench/plan_cpu.*
python experiments/plan.py --device cuda                    # on a GPU -> results/bench/gpu/plan.*
python experiments/plan.py --sweeps glue-roberta,e2e-gpt2 --steps 3
python experiments/plan.py --from-report results/bench/gpu/plan.csv --out outputs/plan.md   # no measuring
make plan SEEDS=0 TASKS=rte,mrpc                            # the Makefile's sweep knobs apply
"""

import argparse
import shlex
import sys
from pathlib import Path

from lora import plan
from lora.bench.timing import resolve_device, set_threads
from lora.cli import friendly_errors

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--sweeps", default=",".join(plan.SWEEPS), help="comma-separated sweep targets (default: all)"
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default: cuda when present)")
    p.add_argument(
        "--steps", type=int, default=2, help="timed steps per shape, after one warm-up (default 2)"
    )
    p.add_argument(
        "--fit", choices=("depth", "full"), default="depth",
        help="depth (default): shallow copies at two depths, extrapolated to the model's; full: the whole model",
    )  # fmt: skip
    p.add_argument(
        "--micro-batch", type=int, default=None,
        help="examples per measured forward + backward (default: 1 on a CPU, the global batch on a GPU)",
    )  # fmt: skip
    p.add_argument(
        "--from-report", type=Path, default=None, help="reuse the step times of a plan CSV written before"
    )
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--out", type=Path, default=None, help="report (default results/bench/plan_cpu.md, on a GPU "
                   "results/bench/gpu/plan.md); the CSV goes beside it")  # fmt: skip
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error(f"--steps must be >= 1, got {args.steps}")
    return args


@friendly_errors
def main(argv: list[str]) -> None:
    args = parse_args(argv)
    set_threads(args.threads)
    device = resolve_device(args.device)
    fit = args.fit == "depth"
    command = shlex.join(["python", "experiments/plan.py", *argv])
    result = plan.make_plan(
        [s for s in args.sweeps.split(",") if s], device=str(device), steps=args.steps, fit=fit,
        from_report=args.from_report, micro=args.micro_batch, log=lambda s: print(s, flush=True),
    )  # fmt: skip
    out = args.out or ROOT / (
        "results/bench/gpu/plan.md" if device.type == "cuda" else "results/bench/plan_cpu.md"
    )
    plan.write(result, out, command)
    for sweep, (_, runs, hours) in result.sweep_hours().items():
        print(f"{sweep:20s} {runs:5d} runs  {plan.fmt_hours(hours):>10s} device-hours")


if __name__ == "__main__":
    main(sys.argv[1:])
