"""Training cost of LoRA against full fine-tuning and the baselines: peak memory and step time, side by side.

Hu et al. (2021), Section 4.2 ("Practical benefits and limitations"): on GPT-3 175B, LoRA cuts the training VRAM from
1.2 TB to 350 GB (about 2/3 less, because the frozen weights need no gradients and no optimizer state) and trains
25% faster than full fine-tuning (no weight gradients for most parameters). This benchmark measures both on the
models we can build here, for LoRA, full FT and each baseline of Section 5.1, every one configured as the paper ran
it on that model (`configure`).

Per model, one process builds the model from its config (random weights: cost depends on shapes only) and one
copy of its module tree per method that shares the frozen base weights (no copies; `requires_grad` is set per
variant before each of its steps, since the flags live on the shared tensors). Per variant: one warm-up step
(which creates the AdamW state), one memory-measured step, then timed steps interleaved across the variants
(`lora.bench.timing.interleaved`). A step is forward + backward + AdamW over the trainable parameters + freeing the
gradients (`zero_grad(set_to_none=True)`), so no variant's gradients outlive its step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from lora import methods
from lora.bench.harness import Memory, Report, Session, Variant, with_method
from lora.bench.timing import MiB, Ratio, Stats, load_average, paired_ratio
from lora.errors import ConfigError
from lora.models import default_kind, spec

TRAINING_METHODS = (
    "full",
    "lora",
    "adapter_h",
    "adapter_l",
    "adapter_p",
    "bitfit",
    "prefix_embed",
    "prefix_layer",
)
ALL_METHODS = (*TRAINING_METHODS, "adapter_d", "ft_top2")
REFERENCE = "full"

# How the paper ran each method on each model (conf/method/*.yaml and the experiment files): Tables 2 and 3,
# Appendix D. A method the paper did not run on a model keeps its config's defaults (bottleneck 64, l_p = 10).
PAPER_OPTIONS: dict[str, dict[str, dict[str, Any]]] = {
    "roberta-base": {"lora": dict(r=8, alpha=8), "adapter_d": dict(bottleneck=48, drop_layers=8)},
    "roberta-large": {
        "lora": dict(r=8, alpha=16),
        "adapter_p": dict(bottleneck=16),  # AdptP 0.8M
        "adapter_h": dict(bottleneck=8, train_norms=False),  # AdptH 0.8M
    },
    "deberta-v2-xxlarge": {"lora": dict(r=8, alpha=8)},
    "gpt2-medium": {
        "lora": dict(r=4, alpha=32, dropout=0.1),
        "adapter_l": dict(bottleneck=6),  # AdapterL 0.37M
        "adapter_h": dict(bottleneck=112, train_norms=False),  # AdapterH 11M
        "prefix_layer": dict(prefix_length=14),  # PreLayer 0.35M
    },
    "gpt2-large": {
        "lora": dict(r=4, alpha=32, dropout=0.1),
        "adapter_l": dict(bottleneck=8),  # AdapterL 0.88M
        "prefix_layer": dict(prefix_length=17),  # PreLayer 0.77M
    },
}
# The config fields that set a method's size, shown in the reports.
_SIZE_FIELDS = (
    "r",
    "alpha",
    "targets",
    "bottleneck",
    "train_norms",
    "drop_layers",
    "prefix_length",
    "n_layers",
)


def configure(model: str, method: str) -> Any:
    """The config dataclass of `method` as the paper ran it on `model` (`PAPER_OPTIONS`, else the defaults)."""
    return methods.method_config(method, **PAPER_OPTIONS.get(model, {}).get(method, {}))


def config_label(cfg: Any) -> str:
    """The size-setting fields of a method config, e.g. `r=8 alpha=8 targets=q,v`; `-` when it has none."""
    items = [(k, v) for k, v in asdict(cfg).items() if k in _SIZE_FIELDS]
    text = " ".join(f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in items)
    return text or "-"


def model_kind(model: str) -> str:
    """Decoders (GPT-2, ...) are trained as causal LMs (the paper's NLG tasks), encoders as sequence classifiers."""
    return default_kind(model)


@dataclass(frozen=True)
class TrainingConfig:
    """models: what to build from config; batch x seq: random token ids per step; reps: timed rounds for models up
    to 200M parameters, large_reps above (after the warm-up and the memory-measured step)."""

    models: tuple[str, ...] = ("roberta-base", "roberta-large", "gpt2-medium")
    methods: tuple[str, ...] = TRAINING_METHODS
    batch: int = 2
    seq: int = 64
    reps: int = 3
    large_reps: int = 2
    lr: float = 1e-4
    device: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in ("batch", "seq", "reps", "large_reps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if REFERENCE not in self.methods:
            raise ConfigError(
                f"methods must include {REFERENCE!r}: every ratio is taken against full fine-tuning"
            )
        for m in self.methods:
            methods.method_config(m)  # a clear error for an unknown method name
        for m in self.models:
            spec(m)


# On a GPU, batch 8 and nearly the paper's maximum length (512 on GLUE and E2E; 496 leaves room for the virtual
# tokens of prefix_embed within RoBERTa's 512 positions), and the two larger models too.
GPU_FULL = TrainingConfig(
    models=("roberta-base", "roberta-large", "deberta-v2-xxlarge", "gpt2-medium", "gpt2-large"),
    batch=8, seq=496, reps=10, large_reps=10,
)  # fmt: skip
QUICK = TrainingConfig(models=("roberta-base",), methods=("full", "lora", "bitfit"), batch=1, seq=16, reps=1)


@dataclass
class ModelResult:
    model: str
    total_params: int
    reps: int
    labels: dict[str, str] = field(default_factory=dict)
    trainable: dict[str, int] = field(default_factory=dict)
    memory: dict[str, Memory] = field(default_factory=dict)
    step: dict[str, Stats] = field(default_factory=dict)
    time_ratio: dict[str, Ratio] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    load: str = ""

    def exact(self, method: str) -> int:
        """Parameters + gradients + AdamW state, in bytes, computed from the tensors."""
        return self.memory[method].exact


@dataclass
class TrainingReport:
    cfg: TrainingConfig
    command: str
    device: torch.device
    results: list[ModelResult] = field(default_factory=list)
    seconds: float = 0.0
    load_at_start: str = ""


def variant(base: nn.Module, model: str, method: str) -> Variant:
    """A copy of `base` sharing its weights, with `method` applied as the paper ran it on `model` (the task head is
    trained too), and its `requires_grad` flags, set again before each of its steps."""
    return with_method(base, method, configure(model, method))


def measure_model(cfg: TrainingConfig, name: str, session: Session) -> ModelResult:
    """Build `name` and every method's variant, measure memory per variant and step time interleaved."""
    log = session.log
    log(f"{name}: building from config (random weights) on {session.device}, {cfg.dtype}")
    base = session.build(name, model_kind(name))
    total = sum(p.numel() for p in base.parameters())
    res = ModelResult(name, total, cfg.reps if total <= 200_000_000 else cfg.large_reps)
    inputs = session.inputs(base, cfg.batch, cfg.seq)
    steps: dict[str, Callable[[], None]] = {}
    for method in cfg.methods:
        try:
            v = variant(base, name, method)
        except ValueError as e:  # e.g. prefix_layer on an encoder
            res.skipped[method] = str(e)
            log(f"  {method}: skipped ({e})")
            continue
        step = v.step(inputs, lr=cfg.lr)
        t0 = time.perf_counter()
        try:
            step()  # warm-up: creates the AdamW state
        except RuntimeError as e:  # a method that cannot train this model here: reported, the others go on
            res.skipped[method] = f"failed: {str(e).splitlines()[0]}"
            log(f"  {method}: {res.skipped[method]}")
            continue
        warm = time.perf_counter() - t0
        res.labels[method] = config_label(configure(name, method))
        res.trainable[method] = v.trainable
        res.memory[method] = session.memory(v, step, warm=False)
        log(
            f"  {method} ({res.labels[method]}): {res.trainable[method]:,} trainable; warm-up step {warm:.1f} s; "
            f"params+grads+AdamW {res.exact(method) / MiB:,.0f} MiB, measured peak "
            f"{res.memory[method].peak / MiB:,.0f} MiB"
        )
        steps[method] = step
    log(f"  timing {len(steps)} variants, {res.reps} interleaved rounds")
    res.step = session.time(steps, res.reps, warmup=0)
    res.time_ratio = {m: paired_ratio(s, res.step[REFERENCE]) for m, s in res.step.items()}
    res.load = load_average()
    return res


def run(
    cfg: TrainingConfig, out: Path | None = None, command: str = "", log: Callable[[str], None] = print
) -> TrainingReport:
    """Measure every model in turn (each freed before the next) and write the report to `out` (Markdown + CSV)."""
    session = Session(cfg.device, cfg.dtype, None, command, log)
    report = TrainingReport(cfg, command, session.device, load_at_start=session.load_at_start)
    for name in cfg.models:
        res = measure_model(cfg, name, session)
        report.results.append(res)
        for m in res.step:
            mem = res.exact(m) / res.exact(REFERENCE)
            peak = res.memory[m].peak / res.memory[REFERENCE].peak
            log(f"  {m}: memory {mem:.3f} (exact) / {peak:.3f} (peak) of full FT; time {res.time_ratio[m]}")
        session.free()
    report.seconds = session.seconds
    if out is not None:
        render(report, session).write(out)
    return report


def _mib(n: int) -> str:
    return f"{n / MiB:,.1f}"


def _frame(res: ModelResult) -> pd.DataFrame:
    """The raw values of one model's table (bytes, milliseconds, ratios), for the CSV."""
    ref = res.memory[REFERENCE]
    return pd.DataFrame([
        {"model": res.model, "method": m, "config": res.labels[m], "trainable": res.trainable[m],
         "params_bytes": mem.params, "grads_bytes": mem.grads, "adamw_bytes": mem.optimizer, "exact_bytes": mem.exact,
         "exact_vs_full": mem.exact / ref.exact, "peak_bytes": mem.peak, "peak_vs_full": mem.peak / ref.peak,
         "step_ms_median": 1e3 * res.step[m].median, "step_ms_min": 1e3 * res.step[m].min,
         "time_vs_full_median": res.time_ratio[m].median, "time_vs_full_low": res.time_ratio[m].low,
         "time_vs_full_high": res.time_ratio[m].high, "time_vs_full_minima": res.time_ratio[m].of_minima,
         "cpu_time_vs_full_median": paired_ratio(res.step[m], res.step[REFERENCE], clock="cpu").median}
        for m, mem in res.memory.items()
    ])  # fmt: skip


def _rows(res: ModelResult, cpu_clock: bool) -> list[list[str]]:
    """One row per method; cpu_clock: add the ratio of process CPU times (CPU runs)."""
    ref = res.memory[REFERENCE]
    rows = []
    for m, mem in res.memory.items():
        s, r = res.step[m], res.time_ratio[m]
        cpu = [f"{paired_ratio(s, res.step[REFERENCE], clock='cpu').median:.3f}"] if cpu_clock else []
        rows.append([
            m, res.labels[m], f"{res.trainable[m]:,}", _mib(mem.params), _mib(mem.grads), _mib(mem.optimizer),
            _mib(res.exact(m)), f"{res.exact(m) / res.exact(REFERENCE):.3f}", _mib(mem.peak),
            f"{mem.peak / ref.peak:.3f}", f"{1e3 * s.median:,.0f}", f"{1e3 * s.min:,.0f}",
            f"{r.median:.3f} ({r.low:.2f}-{r.high:.2f})", f"{r.of_minima:.3f}", *cpu,
        ])  # fmt: skip
    return rows


HEADER = [
    "method", "config", "trainable params (with head)", "params MiB", "grads MiB", "AdamW MiB", "exact p+g+AdamW MiB",
    "exact / full", "measured peak MiB", "peak / full", "step ms (median)", "step ms (min)",
    "time / full (median, range)", "time / full (minima)",
]  # fmt: skip
CPU_COLUMN = ["time / full, process CPU time (median)"]


def render(report: TrainingReport, session: Session) -> Report:
    """The report: claim, setup, one table per model, how memory is measured, machine."""
    cfg, dev = report.cfg, report.device
    cpu_clock = dev.type == "cpu"
    peak_how = (
        "`torch.cuda.max_memory_allocated()` during one steady-state step"
        if dev.type == "cuda"
        else "the peak of torch's CPU allocator during one steady-state step, from `torch.profiler` with "
        "`profile_memory=True` (memory BLAS/oneDNN allocate outside torch's allocator is not seen)"
    )
    rep = session.report("# Training memory and step time: LoRA vs full fine-tuning vs the baselines")
    rep.text(
        "Paper (Hu et al., 2021, Section 4.2), on GPT-3 175B: training VRAM 1.2 TB -> 350 GB with LoRA (x0.29), "
        "and 25% faster training than full fine-tuning. Here: the same comparison on models we can build, "
        "every ratio against full fine-tuning (*/ full*; below 1 = LoRA or the baseline needs less)."
    )
    rep.text(
        f"- models built from their configs with random weights (memory and time depend on shapes only), "
        f"{cfg.dtype}; encoders as 2-label sequence classifiers, GPT-2 as a causal LM with the next-token loss",
        f"- input: batch {cfg.batch} x sequence {cfg.seq}, random token ids"
        + (
            " (small shapes for a 2-core CPU: at this size the parameter-proportional costs, the AdamW update "
            "and the weight gradients, weigh more than at the paper's batch x 512, and activations less)"
            if cpu_clock
            else ""
        ),
        "- methods as the paper ran them on each model (*config*; `lora.bench.training.PAPER_OPTIONS`), the task "
        "head trained by every method; `full` trains every parameter. Every variant shares the frozen base "
        "weights with the others (no copies)",
        "- step: forward + backward + AdamW (lr "
        f"{cfg.lr:g}) over the trainable parameters + `zero_grad(set_to_none=True)`, train mode (dropout on). "
        "Per variant a warm-up step (it creates the AdamW state, so every measurement below includes it), a "
        "memory-measured step, then timed rounds; a round runs every variant once, back to back, in an order "
        "rotated each round (interleaved, against a shared machine's load drifts). *time / full*: the median "
        "over rounds of the per-round ratio (range in brackets) and the ratio of the fastest rounds"
        + (
            "; *process CPU time*: the median ratio of `time.process_time` over the same steps (with one thread, "
            "the compute's own cost, which other jobs on the machine barely change)"
            if cpu_clock
            else ""
        ),
        "- the CSV beside this report holds every table's raw values (bytes, milliseconds, ratios)",
    )
    rep.text(
        "**Memory, two numbers.** *exact p+g+AdamW* = bytes of all parameters + gradients of the trainable ones + "
        "AdamW state (exp_avg, exp_avg_sq, step), computed from the tensors: what training must hold besides "
        f"activations. *measured peak* = parameters + AdamW state + the measured peak of what one step allocates "
        f"on top (gradients, activations saved for backward, temporaries), measured as {peak_how}. "
        "LoRA and the baselines remove the gradients and optimizer state of the frozen weights (the exact "
        "column); they keep the activations (backward still runs through the frozen layers), so the measured "
        "peak ratio approaches the exact one where parameters dominate memory (GPT-3 175B) and 1 where "
        "activations do (long sequences, large batches, small models)."
    )
    for res in report.results:
        rep.heading(
            f"{res.model} ({res.total_params / 1e6:,.1f}M parameters, {model_kind(res.model)}, "
            f"{res.reps} timed rounds; load average after it: {res.load})"
        )
        shown = pd.DataFrame(_rows(res, cpu_clock), columns=HEADER + (CPU_COLUMN if cpu_clock else []))
        rep.table(_frame(res), res.model, shown=shown)
        if res.skipped:
            rep.text(*(f"- {m}: not run ({why})" for m, why in res.skipped.items()))
    return rep.machine()
