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

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lora import methods
from lora.architectures import resolve_sites
from lora.bench.timing import (
    MiB,
    Ratio,
    Stats,
    gradient_bytes,
    interleaved,
    load_average,
    machine_lines,
    markdown_table,
    optimizer_state_bytes,
    paired_ratio,
    parameter_bytes,
    peak_bytes,
    resolve_device,
    set_threads,
    sync,
    threads_line,
    write_report,
)
from lora.errors import ConfigError
from lora.methods.lora import LoRAConfig, merge
from lora.models import build_model, head_parameter_names

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


@dataclass(frozen=True)
class Memory:
    """Bytes of one training step. params, grads, optimizer: computed exactly from shapes (grads: of the
    trainable parameters); extra: measured peak of the tensor bytes the step allocates beyond what is live at its
    start (gradients, activations saved for backward, temporaries); peak = params + optimizer + extra."""

    params: int
    grads: int
    optimizer: int
    extra: int

    @property
    def peak(self) -> int:
        return self.params + self.optimizer + self.extra


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


def make_batch(
    model: nn.Module, batch: int, seq: int, device: torch.device, seed: int = 0
) -> dict[str, torch.Tensor]:
    """input_ids (batch, seq) drawn from non-special ids, an all-ones attention mask, and random labels (batch,)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, model.config.vocab_size, (batch, seq), generator=g)
    labels = torch.randint(0, model.config.num_labels, (batch,), generator=g)
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    return {k: v.to(device) for k, v in out.items()}


def with_our_lora(base: nn.Module, cfg: CoreConfig) -> nn.Module:
    model = copy.deepcopy(base)
    lora_cfg = LoRAConfig(r=cfg.r, alpha=cfg.alpha, targets=list(cfg.targets))
    methods.apply(model, "lora", lora_cfg, head=head_parameter_names(model))
    return model


def with_peft_lora(base: nn.Module, cfg: CoreConfig) -> nn.Module:
    """peft's LoRA on exactly the modules ours adapts (their full paths), classifier trained (task SEQ_CLS)."""
    import peft

    model = copy.deepcopy(base)
    sites = resolve_sites(model, list(cfg.targets))
    if any(s is not None for uses in sites.values() for _, s in uses):
        raise ConfigError(
            f"{cfg.model} fuses q, k and v in one module; compare with peft on an unfused model"
        )
    lora_cfg = peft.LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=0.0, target_modules=list(sites), task_type="SEQ_CLS"
    )
    return peft.get_peft_model(model, lora_cfg)


def fully_trainable(base: nn.Module) -> nn.Module:
    model = copy.deepcopy(base)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def training_step(
    model: nn.Module, opt: torch.optim.Optimizer, batch: dict[str, torch.Tensor]
) -> Callable[[], None]:
    """A closure running one step: zero the gradients (freeing them), forward, loss.backward(), AdamW step."""

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        opt.step()

    return step


def forward_pass(model: nn.Module, batch: dict[str, torch.Tensor]) -> Callable[[], None]:
    inputs = {k: v for k, v in batch.items() if k != "labels"}

    def forward() -> None:
        with torch.inference_mode():
            model(**inputs)

    return forward


def run(
    cfg: CoreConfig, out: Path | None = None, command: str = "", log: Callable[[str], None] = print
) -> CoreReport:
    """Build the variants, measure them interleaved, and write the markdown report to `out` (when given)."""
    t_start, load_at_start = time.perf_counter(), load_average()
    device, dtype = resolve_device(cfg.device), getattr(torch, cfg.dtype)
    set_threads(cfg.threads)
    report = CoreReport(cfg=cfg, command=command, device=device)
    log(f"building {cfg.model} (random weights) on {device}, {cfg.dtype}")
    base = build_model(cfg.model, "classification", pretrained=False, device=device).to(dtype)
    batch = make_batch(base, cfg.batch, cfg.seq, device)
    models = {OURS: with_our_lora(base, cfg), PEFT: with_peft_lora(base, cfg), FULL: fully_trainable(base)}
    steps: dict[str, Callable[[], None]] = {}
    for name, model in models.items():
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        report.trainable[name] = sum(p.numel() for p in params)
        opt = torch.optim.AdamW(params, lr=cfg.lr)
        steps[name] = training_step(model, opt, batch)
        log(
            f"{name}: {report.trainable[name]:,} trainable parameters; warm-up step, then a memory-profiled step"
        )
        steps[name]()  # warm-up; creates the AdamW state, so the profiled step below is a steady-state one
        opt.zero_grad(set_to_none=True)
        extra = peak_bytes(steps[name], device)
        report.memory[name] = Memory(
            parameter_bytes(model), gradient_bytes(model), optimizer_state_bytes(opt), extra
        )
    log(f"training steps, 1 warm-up + {cfg.reps} interleaved rounds")
    report.step = interleaved(steps, cfg.reps, device, warmup=1, progress=log)

    merged = models.pop(OURS).eval()
    merge(merged)
    models.clear(), steps.clear()  # free the other variants (and their optimizers) before timing forwards
    base.eval()
    sync(device)
    log(f"forward passes, merged LoRA vs base model: 1 warm-up + {cfg.fwd_reps} interleaved rounds")
    fwd = {BASE: forward_pass(base, batch), MERGED: forward_pass(merged, batch)}
    report.forward = interleaved(fwd, cfg.fwd_reps, device, warmup=1, progress=log)

    pairs = {
        "step time, ours / peft": (report.step[OURS], report.step[PEFT]),
        "step time, ours / full FT": (report.step[OURS], report.step[FULL]),
        "forward latency, merged / base": (report.forward[MERGED], report.forward[BASE]),
    }
    report.ratios = {k: paired_ratio(a, b) for k, (a, b) in pairs.items()}
    report.cpu_ratios = {k: paired_ratio(a, b, clock="cpu") for k, (a, b) in pairs.items()}
    report.seconds, report.load_at_start = time.perf_counter() - t_start, load_at_start
    for name, ratio in report.ratios.items():
        log(f"{name}: wall {ratio}; CPU time {report.cpu_ratios[name]}")
    for name in (PEFT, FULL):
        log(f"peak step memory, ours / {name}: {report.memory[OURS].peak / report.memory[name].peak:.3f}")
    if out is not None:
        write_report(out, render(report), log)
    return report


def _verdict(wall: Ratio, cpu: Ratio, target: float) -> str:
    word = lambda x: "met" if x <= target else "MISSED"  # noqa: E731
    return f"<= {target:.2f}: wall {word(wall.median)}, CPU time {word(cpu.median)} (medians)"


def _median_range(r: Ratio) -> str:
    return f"{r.median:.3f} ({r.low:.3f}-{r.high:.3f})"


def render(report: CoreReport) -> str:
    """The markdown report: setup, step table, forward table, ratios, how memory is measured, machine."""
    cfg, mem = report.cfg, report.memory
    targets = ", ".join(cfg.targets)
    mib = lambda b: f"{b / MiB:,.1f}"  # noqa: E731
    step_rows = [
        [name, f"{report.trainable[name]:,}", s.ms(), f"{1e3 * s.median:.1f}", f"{1e3 * s.cpu_median:.1f}",
         mib(mem[name].params), mib(mem[name].grads), mib(mem[name].optimizer), mib(mem[name].extra),
         mib(mem[name].peak)]
        for name, s in report.step.items()
    ]  # fmt: skip
    fwd_rows = [
        [name, s.ms(), f"{1e3 * s.median:.1f}", f"{1e3 * s.cpu_median:.1f}"]
        for name, s in report.forward.items()
    ]
    targets_by_ratio = {
        "step time, ours / peft": STEP_TARGET,
        "forward latency, merged / base": MERGED_TARGET,
    }
    ratio_rows = []
    for name, r in report.ratios.items():
        c, target = report.cpu_ratios[name], targets_by_ratio.get(name)
        verdict = _verdict(r, c, target) if target else "(for information)"
        ratio_rows.append([name, _median_range(r), f"{r.of_minima:.3f}", _median_range(c), verdict])
    for other in (PEFT, FULL):
        value = f"{mem[OURS].peak / mem[other].peak:.3f}"
        ratio_rows.append([f"peak step memory, ours / {other}", value, "", "", "(one measurement)"])
    return "\n".join([
        "# LoRA core micro-benchmark: our LoRA vs peft's LoRA vs full fine-tuning",
        "",
        f"Made by: `{report.command}` (total {report.seconds:.0f} s).",
        "",
        f"- model: {cfg.model} built from its config with random weights, sequence classification (2 labels)",
        f"- input: batch {cfg.batch} x sequence {cfg.seq}, random token ids",
        f"- LoRA: r={cfg.r}, alpha={cfg.alpha:g}, dropout 0, targets {targets} in every layer, for ours and for "
        "peft (peft's `target_modules` = the exact module paths ours adapts); every variant trains the "
        "classification head (peft: `task_type=SEQ_CLS`)",
        f"- training step: zero_grad(set_to_none) + forward + backward + AdamW (lr {cfg.lr:g}) over the trainable "
        "parameters only, train mode (dropout on)",
        f"- protocol: per variant one warm-up step and one memory-profiled step, then 1 warm-up round and "
        f"{cfg.reps} timed rounds; "
        f"forward: 1 warm-up round, then {cfg.fwd_reps} timed rounds. A round runs every variant once, back to "
        "back, in an order rotated each round (interleaved). Each call is timed by the wall clock and by the CPU "
        "time the process used (`time.process_time`). Ratios: the median over rounds of the per-round ratio "
        "(with its range), and for the wall clock also the ratio of the minima (best rounds).",
        threads_line(report.device),
        "",
        "## Training step",
        "",
        markdown_table(
            ["variant", "trainable params", "step ms (mean ± std)", "step ms (median)", "step CPU ms (median)",
             "params MiB", "grads MiB", "AdamW state MiB", "step allocations MiB", "peak step memory MiB"],
            step_rows,
        ),  # fmt: skip
        "",
        "## Forward latency (eval, `torch.inference_mode()`, same batch)",
        "",
        markdown_table(
            ["model", "forward ms (mean ± std)", "forward ms (median)", "forward CPU ms (median)"], fwd_rows
        ),
        "",
        "## Ratios",
        "",
        markdown_table(
            ["ratio", "wall: median (range over rounds)", "wall: ratio of minima",
             "CPU time: median (range over rounds)", "target"],
            ratio_rows,
        ),  # fmt: skip
        "",
        "## How memory is measured",
        "",
        "params, grads and AdamW state are exact byte counts computed from the tensors' shapes (grads = one "
        "gradient per trainable parameter; AdamW state = exp_avg, exp_avg_sq and step). *Step allocations* is "
        "measured: the peak, during one steady-state step that starts with the gradients freed, of the tensor "
        "bytes allocated beyond those live at its start (gradients, activations saved for backward, "
        "temporaries). On CUDA it is `torch.cuda.max_memory_allocated()` minus the allocated bytes at the start; "
        "on CPU torch keeps no allocator statistics, so the step runs once under `torch.profiler` with "
        "`profile_memory=True` and the running sum of its allocation/free records gives the peak (memory that "
        "BLAS/oneDNN allocate outside torch's allocator is not included). *Peak step memory* = params + AdamW "
        "state + step allocations: the peak tensor memory one training step needs. Process RSS would add the "
        "Python interpreter, the other variants' models and allocator caching, so it is not used.",
        "",
        "## Machine",
        "",
        *machine_lines(report.device, getattr(torch, cfg.dtype), report.load_at_start),
        "",
    ])  # fmt: skip
