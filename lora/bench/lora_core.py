"""LoRA core micro-benchmark: the cost of our LoRA against peft's LoRA and full fine-tuning, measured side by side.

One process builds roberta-base from its config (random weights; timing and memory depend on shapes only), adds
a 2-label classification head, and measures, interleaved (`lora.bench.timing.interleaved`):

- the training step, forward + backward + AdamW step over the trainable parameters only, of
  our LoRA (`lora.methods.apply(model, "lora", ...)`), peft's LoRA (`peft.get_peft_model`, same r, alpha and
  target modules) and full fine-tuning; every variant also trains the classification head;
- the peak tensor memory of that step (parameters + AdamW state + what the step allocates, see `Memory`);
- the forward latency of our LoRA after `lora.methods.lora.merge` against the model without LoRA: merging is what
  makes LoRA's inference latency that of the base model (Hu et al., 2021, Section 4.1).

Targets: our step time within 5% of peft's (ratio <= 1.05); merged forward latency ratio <= 1.02.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from lora.architectures import resolve_sites
from lora.bench.harness import Memory, Report, Session, Variant, forward_pass, with_method
from lora.bench.timing import MiB, Ratio, Stats, paired_ratio, threads_line
from lora.errors import ConfigError
from lora.methods.lora import LoRAConfig, merge

OURS, PEFT, FULL = "LoRA (ours)", "LoRA (peft)", "full FT"
BASE, MERGED = "base model", "LoRA (ours), merged"
STEP_TARGET, MERGED_TARGET = 1.05, 1.02


@dataclass(frozen=True)
class CoreConfig:
    """Shapes, LoRA settings and repetitions. reps: timed rounds of training steps (after one plain and one
    memory-profiled step per variant, then one untimed round; a multiple of 3 puts each of the 3 variants in each
    position of the rotated order equally often); fwd_reps: timed rounds of forward passes (after one warm-up round);
    threads: torch's CPU threads (None: torch's default)."""

    model: str = "roberta-base"
    batch: int = 16
    seq: int = 128
    r: int = 8
    alpha: float = 8.0
    targets: tuple[str, ...] = ("q", "v")
    lr: float = 1e-4
    reps: int = 6
    fwd_reps: int = 10
    device: str = "cpu"
    dtype: str = "float32"
    threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("batch", "seq", "reps", "fwd_reps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not hasattr(torch, self.dtype) or not isinstance(getattr(torch, self.dtype), torch.dtype):
            raise ConfigError(f"unknown dtype {self.dtype!r}: use float32, bfloat16 or float16")


QUICK = CoreConfig(batch=4, seq=64, reps=3, fwd_reps=2)


@dataclass
class CoreReport:
    cfg: CoreConfig
    command: str
    device: torch.device
    trainable: dict[str, int] = field(default_factory=dict)
    step: dict[str, Stats] = field(default_factory=dict)
    memory: dict[str, Memory] = field(default_factory=dict)
    forward: dict[str, Stats] = field(default_factory=dict)
    ratios: dict[str, Ratio] = field(default_factory=dict)
    cpu_ratios: dict[str, Ratio] = field(default_factory=dict)
    seconds: float = 0.0
    load_at_start: str = ""


def with_peft_lora(base: nn.Module, cfg: CoreConfig) -> Variant:
    """peft's LoRA on exactly the modules ours adapts (their full paths), classifier trained (task SEQ_CLS), on a
    deep copy of `base`."""
    import copy

    import peft

    sites = resolve_sites(base, list(cfg.targets))
    if any(s is not None for uses in sites.values() for _, s in uses):
        raise ConfigError(
            f"{cfg.model} fuses q, k and v in one module; compare with peft on an unfused model"
        )
    lora_cfg = peft.LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=0.0, target_modules=list(sites), task_type="SEQ_CLS"
    )
    model = peft.get_peft_model(copy.deepcopy(base), lora_cfg)
    return Variant(model, [(p, p.requires_grad) for p in model.parameters()])


def run(
    cfg: CoreConfig, out: Path | None = None, command: str = "", log: Callable[[str], None] = print
) -> CoreReport:
    """Build the variants, measure them interleaved, and write the report to `out` (Markdown + CSV; when given)."""
    session = Session(cfg.device, cfg.dtype, cfg.threads, command, log)
    report = CoreReport(cfg=cfg, command=command, device=session.device, load_at_start=session.load_at_start)
    log(f"building {cfg.model} (random weights) on {session.device}, {cfg.dtype}")
    base = session.build(cfg.model, "classification")
    inputs = session.inputs(base, cfg.batch, cfg.seq)
    lora_cfg = LoRAConfig(r=cfg.r, alpha=cfg.alpha, targets=list(cfg.targets))
    variants = {
        OURS: with_method(
            base, "lora", lora_cfg, share=False
        ),  # private copies: the merge below changes them
        PEFT: with_peft_lora(base, cfg),
        FULL: with_method(base, "full", share=False),
    }
    steps: dict[str, Callable[[], None]] = {}
    for name, v in variants.items():
        steps[name] = v.step(inputs, lr=cfg.lr)
        report.trainable[name] = v.trainable
        log(f"{name}: {v.trainable:,} trainable parameters; warm-up step, then a memory-profiled step")
        report.memory[name] = session.memory(v, steps[name])
    log(f"training steps, 1 warm-up + {cfg.reps} interleaved rounds")
    report.step = session.time(steps, cfg.reps)

    merged = variants.pop(OURS).model.eval()
    merge(merged)
    variants.clear(), steps.clear()  # free the other variants (and their optimizers) before timing forwards
    base.eval()
    session.sync()
    log(f"forward passes, merged LoRA vs base model: 1 warm-up + {cfg.fwd_reps} interleaved rounds")
    fwd = {BASE: forward_pass(base, inputs), MERGED: forward_pass(merged, inputs)}
    report.forward = session.time(fwd, cfg.fwd_reps)

    pairs = {
        "step time, ours / peft": (report.step[OURS], report.step[PEFT]),
        "step time, ours / full FT": (report.step[OURS], report.step[FULL]),
        "forward latency, merged / base": (report.forward[MERGED], report.forward[BASE]),
    }
    report.ratios = {k: paired_ratio(a, b) for k, (a, b) in pairs.items()}
    report.cpu_ratios = {k: paired_ratio(a, b, clock="cpu") for k, (a, b) in pairs.items()}
    report.seconds = session.seconds
    for name, ratio in report.ratios.items():
        log(f"{name}: wall {ratio}; CPU time {report.cpu_ratios[name]}")
    for name in (PEFT, FULL):
        log(f"peak step memory, ours / {name}: {report.memory[OURS].peak / report.memory[name].peak:.3f}")
    if out is not None:
        render(report, session).write(out)
    return report


def _verdict(wall: Ratio, cpu: Ratio, target: float) -> str:
    word = lambda x: "met" if x <= target else "MISSED"  # noqa: E731
    return f"<= {target:.2f}: wall {word(wall.median)}, CPU time {word(cpu.median)} (medians)"


def _range(r: Ratio) -> str:
    return f"{r.median:.3f} ({r.low:.3f}-{r.high:.3f})"


def render(report: CoreReport, session: Session) -> Report:
    """The report: setup, step table, forward table, ratios, how memory is measured, machine."""
    cfg, mem = report.cfg, report.memory
    mib = lambda b: f"{b / MiB:,.1f}"  # noqa: E731
    steps = pd.DataFrame([
        {"variant": n, "trainable": report.trainable[n], "step_ms_mean": 1e3 * s.mean, "step_ms_std": 1e3 * s.std,
         "step_ms_median": 1e3 * s.median, "step_cpu_ms_median": 1e3 * s.cpu_median, "params_bytes": mem[n].params,
         "grads_bytes": mem[n].grads, "adamw_bytes": mem[n].optimizer, "step_alloc_bytes": mem[n].extra,
         "peak_bytes": mem[n].peak}
        for n, s in report.step.items()
    ])  # fmt: skip
    steps_shown = pd.DataFrame([
        [n, f"{report.trainable[n]:,}", s.ms(), f"{1e3 * s.median:.1f}", f"{1e3 * s.cpu_median:.1f}",
         mib(mem[n].params), mib(mem[n].grads), mib(mem[n].optimizer), mib(mem[n].extra), mib(mem[n].peak)]
        for n, s in report.step.items()
    ], columns=["variant", "trainable params", "step ms (mean ± std)", "step ms (median)", "step CPU ms (median)",
                "params MiB", "grads MiB", "AdamW state MiB", "step allocations MiB", "peak step memory MiB"])  # fmt: skip
    forwards = pd.DataFrame([
        {"model": n, "fwd_ms_mean": 1e3 * s.mean, "fwd_ms_std": 1e3 * s.std, "fwd_ms_median": 1e3 * s.median,
         "fwd_cpu_ms_median": 1e3 * s.cpu_median}
        for n, s in report.forward.items()
    ])  # fmt: skip
    forwards_shown = pd.DataFrame(
        [
            [n, s.ms(), f"{1e3 * s.median:.1f}", f"{1e3 * s.cpu_median:.1f}"]
            for n, s in report.forward.items()
        ],
        columns=["model", "forward ms (mean ± std)", "forward ms (median)", "forward CPU ms (median)"],
    )
    targets_by_ratio = {
        "step time, ours / peft": STEP_TARGET,
        "forward latency, merged / base": MERGED_TARGET,
    }
    rows, shown = [], []
    for name, r in report.ratios.items():
        c, target = report.cpu_ratios[name], targets_by_ratio.get(name)
        verdict = _verdict(r, c, target) if target else "(for information)"
        rows.append({"ratio": name, "wall_median": r.median, "wall_low": r.low, "wall_high": r.high,
                     "wall_of_minima": r.of_minima, "cpu_median": c.median, "cpu_low": c.low, "cpu_high": c.high,
                     "target": verdict})  # fmt: skip
        shown.append([name, _range(r), f"{r.of_minima:.3f}", _range(c), verdict])
    for other in (PEFT, FULL):
        value = mem[OURS].peak / mem[other].peak
        rows.append(
            {
                "ratio": f"peak step memory, ours / {other}",
                "wall_median": value,
                "target": "(one measurement)",
            }
        )
        shown.append([f"peak step memory, ours / {other}", f"{value:.3f}", "", "", "(one measurement)"])
    ratio_columns = ["ratio", "wall: median (range over rounds)", "wall: ratio of minima",
                     "CPU time: median (range over rounds)", "target"]  # fmt: skip
    rep = session.report("# LoRA core micro-benchmark: our LoRA vs peft's LoRA vs full fine-tuning")
    rep.text(
        f"- model: {cfg.model} built from its config with random weights, sequence classification (2 labels)",
        f"- input: batch {cfg.batch} x sequence {cfg.seq}, random token ids",
        f"- LoRA: r={cfg.r}, alpha={cfg.alpha:g}, dropout 0, targets {', '.join(cfg.targets)} in every layer, for "
        "ours and for peft (peft's `target_modules` = the exact module paths ours adapts); every variant trains "
        "the classification head (peft: `task_type=SEQ_CLS`)",
        f"- training step: forward + backward + AdamW (lr {cfg.lr:g}) over the trainable parameters only, then "
        "zero_grad(set_to_none), train mode (dropout on)",
        f"- protocol: per variant one warm-up step and one memory-profiled step, then 1 warm-up round and "
        f"{cfg.reps} timed rounds; forward: 1 warm-up round, then {cfg.fwd_reps} timed rounds. A round runs every "
        "variant once, back to back, in an order rotated each round (interleaved). Each call is timed by the wall "
        "clock and by the CPU time the process used (`time.process_time`). Ratios: the median over rounds of the "
        "per-round ratio (with its range), and for the wall clock also the ratio of the minima (best rounds).",
        threads_line(report.device),
        "- the CSV beside this report holds every table's raw values (column `table`; bytes, milliseconds)",
    )
    rep.heading("Training step").table(steps, "step", shown=steps_shown)
    rep.heading("Forward latency (eval, `torch.inference_mode()`, same batch)")
    rep.table(forwards, "forward", shown=forwards_shown)
    rep.heading("Ratios").table(
        pd.DataFrame(rows), "ratios", shown=pd.DataFrame(shown, columns=ratio_columns)
    )
    rep.heading("How memory is measured")
    rep.text(
        "params, grads and AdamW state are exact byte counts computed from the tensors' shapes (grads = one "
        "gradient per trainable parameter; AdamW state = exp_avg, exp_avg_sq and step). *Step allocations* is "
        "measured: the peak, during one steady-state step that starts with the gradients freed, of the tensor "
        "bytes allocated beyond those live at its start (gradients, activations saved for backward, "
        "temporaries). On CUDA it is `torch.cuda.max_memory_allocated()` minus the allocated bytes at the start; "
        "on CPU torch keeps no allocator statistics, so the step runs once under `torch.profiler` with "
        "`profile_memory=True` and the running sum of its allocation/free records gives the peak (memory that "
        "BLAS/oneDNN allocate outside torch's allocator is not included). *Peak step memory* = params + AdamW "
        "state + step allocations: the peak tensor memory one training step needs. Process RSS would add the "
        "Python interpreter, the other variants' models and allocator caching, so it is not used."
    )
    return rep.machine(threads=False)
