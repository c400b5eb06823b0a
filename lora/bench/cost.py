"""LoRA's cost curve: how its training step time and memory grow with the rank r and with the model width.

LoRA adds 2 r d parameters per adapted d x d matrix (Hu et al., 2021, Section 4.1), so its trainable memory (the
parameters, their gradients and the AdamW state: 16 bytes a parameter in fp32) grows linearly in r and d, while
full fine-tuning's grows with d^2; its extra compute per token, 2 * 2 r d per adapted matrix and pass, is small
next to the frozen d x d product until r approaches d. One process builds GPT-2 of each width from its config
(fixed depth, head size 64, random weights) and times, interleaved (`lora.bench.timing.interleaved`): LoRA on q, v
for every r at the largest width, LoRA with `width_rank` at the other widths, and full fine-tuning at every width.
The training step and the memory measurement are those of `lora.bench.training`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from lora.bench.harness import Memory, Report, Session, Variant, with_method
from lora.bench.timing import MiB, Ratio, Stats, paired_ratio
from lora.errors import ConfigError
from lora.methods.lora import LoRAConfig
from lora.models import spec


@dataclass(frozen=True)
class CostConfig:
    """model: a GPT-2 config whose width (`widths`, heads of `head_dim`) and depth (`layers`) are replaced; ranks:
    the r sweep at the largest width; width_rank: r at the other widths; batch x seq: random tokens per step."""

    model: str = "gpt2-medium"
    layers: int = 4
    widths: tuple[int, ...] = (256, 512, 1024)
    ranks: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    width_rank: int = 4
    head_dim: int = 64
    batch: int = 2
    seq: int = 64
    reps: int = 4
    lr: float = 1e-4
    device: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if spec(self.model).family != "gpt2":
            raise ConfigError(f"the cost curve varies GPT-2's width; {self.model!r} is not a GPT-2 model")
        bad = [w for w in self.widths if w < self.head_dim or w % self.head_dim]
        if not self.widths or bad:
            raise ConfigError(
                f"widths must be multiples of head_dim={self.head_dim}, got {list(self.widths)}"
            )
        if not self.ranks or min(self.ranks) < 1 or self.width_rank < 1:
            raise ConfigError(
                f"ranks must be positive integers, got {list(self.ranks)} and {self.width_rank}"
            )
        for name in ("layers", "batch", "seq", "reps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def width(self) -> int:
        """The width of the r sweep: the largest."""
        return max(self.widths)


FULL = CostConfig(layers=24, widths=(256, 512, 1024, 2048), batch=8, seq=512, reps=10)
QUICK = CostConfig(layers=1, widths=(64, 128), ranks=(1, 8), width_rank=2, batch=1, seq=8, reps=1)


@dataclass(frozen=True)
class Point:
    """One variant: `r` None for full fine-tuning."""

    width: int
    r: int | None

    @property
    def name(self) -> str:
        return f"d={self.width} " + ("full FT" if self.r is None else f"LoRA r={self.r}")


@dataclass
class CostReport:
    cfg: CostConfig
    command: str
    device: torch.device
    trainable: dict[Point, int] = field(default_factory=dict)
    memory: dict[Point, Memory] = field(default_factory=dict)
    step: dict[Point, Stats] = field(default_factory=dict)
    vs_full: dict[Point, Ratio] = field(default_factory=dict)
    seconds: float = 0.0
    load_at_start: str = ""

    def trainable_bytes(self, p: Point) -> int:
        """Bytes of the trainable parameters, their gradients and their AdamW state (exact, from the tensors)."""
        m = self.memory[p]
        return 2 * m.grads + m.optimizer


def points(cfg: CostConfig) -> list[Point]:
    """The r sweep (with `width_rank`) and full FT at the largest width, then both at every other width."""
    out = [Point(cfg.width, r) for r in sorted({*cfg.ranks, cfg.width_rank})] + [Point(cfg.width, None)]
    for w in sorted(set(cfg.widths) - {cfg.width}):
        out += [Point(w, cfg.width_rank), Point(w, None)]
    return out


def build_base(cfg: CostConfig, width: int, session: Session) -> nn.Module:
    overrides = {"hidden_size": width, "num_attention_heads": width // cfg.head_dim}
    return session.build(cfg.model, "causal_lm", layers=cfg.layers, overrides=overrides)


def with_method_at(base: nn.Module, r: int | None) -> Variant:
    """A weight-sharing copy of `base` with LoRA r on q, v (None: full fine-tuning), and its requires_grad flags."""
    if r is None:
        return with_method(base, "full", head=False)
    return with_method(base, "lora", LoRAConfig(r=r, alpha=float(r), targets=["q", "v"]), head=False)


def run(
    cfg: CostConfig,
    out: Path | None = None,
    command: str = "",
    log: Callable[[str], None] = print,
    figure: Path | None = None,
) -> CostReport:
    """Build every variant, measure its memory, time all of them interleaved; write the report and the figure."""
    session = Session(cfg.device, cfg.dtype, None, command, log)
    report = CostReport(cfg, command, session.device, load_at_start=session.load_at_start)
    bases = {w: build_base(cfg, w, session) for w in cfg.widths}
    inputs = {w: session.inputs(bases[w], cfg.batch, cfg.seq) for w in cfg.widths}
    steps: dict[Point, Callable[[], None]] = {}
    for p in points(cfg):
        v = with_method_at(bases[p.width], p.r)
        steps[p] = v.step(inputs[p.width], lr=cfg.lr)
        report.trainable[p] = v.trainable
        report.memory[p] = session.memory(v, steps[p])
        log(
            f"{p.name}: {report.trainable[p]:,} trainable, p+g+AdamW of those "
            f"{report.trainable_bytes(p) / MiB:,.2f} MiB, measured peak {report.memory[p].peak / MiB:,.0f} MiB"
        )
    log(f"timing {len(steps)} variants, {cfg.reps} interleaved rounds")
    named = session.time({p.name: s for p, s in steps.items()}, cfg.reps, warmup=0)
    report.step = {p: named[p.name] for p in steps}
    report.vs_full = {p: paired_ratio(report.step[p], report.step[Point(p.width, None)]) for p in steps}
    report.seconds = session.seconds
    if figure is not None:
        plot(report, figure)
        log(f"wrote {figure}")
    if out is not None:
        render(report, session, figure).write(out)
    return report


def plot(report: CostReport, path: Path) -> Path:
    """Three panels: step time vs r, trainable memory vs r (both at the largest width, full FT dashed), and step
    time vs width for LoRA and full FT."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = report.cfg
    ranks = sorted(p.r for p in report.step if p.width == cfg.width and p.r is not None)
    lora = [Point(cfg.width, r) for r in ranks]
    full = Point(cfg.width, None)
    ms = lambda p: 1e3 * report.step[p].median  # noqa: E731
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(14, 4.2), constrained_layout=True)
    lo = [ms(p) - 1e3 * report.step[p].min for p in lora]
    hi = [1e3 * max(report.step[p].samples) - ms(p) for p in lora]
    a.errorbar(
        ranks, [ms(p) for p in lora], yerr=[lo, hi], marker="o", capsize=3, label="LoRA (median, min-max)"
    )
    a.axhline(ms(full), color="C3", ls="--", label="full FT (median)")
    a.set(xscale="log", xlabel="rank r", ylabel="step ms", title=f"step time vs r (d={cfg.width})")
    a.set_xticks(ranks, [str(r) for r in ranks])
    a.set_ylim(0, 1.1 * max(ms(full), *(ms(p) + h for p, h in zip(lora, hi, strict=True))))
    a.legend(fontsize=8)
    b.plot(
        ranks, [report.trainable_bytes(p) / MiB for p in lora], marker="o", label="LoRA: p+g+AdamW (exact)"
    )
    b.plot(ranks, [report.memory[p].peak / MiB for p in lora], marker="s", label="LoRA: measured step peak")
    b.axhline(report.trainable_bytes(full) / MiB, color="C3", ls="--", label="full FT: p+g+AdamW (exact)")
    b.axhline(report.memory[full].peak / MiB, color="C3", ls=":", label="full FT: measured step peak")
    b.set(xscale="log", yscale="log", xlabel="rank r", ylabel="MiB", title=f"memory vs r (d={cfg.width})")
    b.set_xticks(ranks, [str(r) for r in ranks])
    b.legend(fontsize=8)
    widths = sorted(cfg.widths)
    for r, label, color in ((cfg.width_rank, f"LoRA r={cfg.width_rank}", "C0"), (None, "full FT", "C3")):
        c.plot(widths, [ms(Point(w, r)) for w in widths], marker="o", color=color, label=label)
    c.plot([], [], " ", label="xN: LoRA / full FT (median)")
    for w in widths:
        ratio = report.vs_full[Point(w, cfg.width_rank)].median
        c.annotate(f"x{ratio:.2f}", (w, ms(Point(w, cfg.width_rank))), textcoords="offset points",
                   xytext=(0, 8), ha="center", fontsize=8)  # fmt: skip
    c.set(xscale="log", xlabel="width d", ylabel="step ms", title=f"step time vs width ({cfg.layers} layers)")
    c.set_xticks(widths, [str(w) for w in widths])
    c.set_ylim(bottom=0)
    for ax in (a, b, c):
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    c.legend(fontsize=8)
    fig.suptitle(
        f"LoRA cost curve: GPT-2 ({cfg.layers} layers, LM head), batch {cfg.batch} x seq {cfg.seq}, "
        f"{cfg.dtype}, {report.device.type}"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _row(report: CostReport, p: Point) -> list[str]:
    s, r, m = report.step[p], report.vs_full[p], report.memory[p]
    full = Point(p.width, None)
    cpu = (
        [f"{paired_ratio(s, report.step[full], clock='cpu').median:.3f}"]
        if report.device.type == "cpu"
        else []
    )
    return [
        str(p.width), "full FT" if p.r is None else str(p.r), f"{report.trainable[p]:,}",
        f"{report.trainable_bytes(p) / MiB:,.2f}", f"{report.trainable_bytes(p) / report.trainable_bytes(full):.4f}",
        f"{m.peak / MiB:,.0f}", f"{m.peak / report.memory[full].peak:.3f}", f"{1e3 * s.median:,.0f}",
        f"{1e3 * s.min:,.0f}", f"{r.median:.3f} ({r.low:.2f}-{r.high:.2f})", f"{r.of_minima:.3f}", *cpu,
    ]  # fmt: skip


HEADER = [
    "width d", "r", "trainable params", "trainable p+g+AdamW MiB", "/ full", "measured peak MiB", "/ full",
    "step ms (median)", "step ms (min)", "time / full (median, range)", "time / full (minima)",
]  # fmt: skip


def _frame(report: CostReport, points: list[Point]) -> pd.DataFrame:
    rows = []
    for p in points:
        s, r, m, full = report.step[p], report.vs_full[p], report.memory[p], Point(p.width, None)
        rows.append({
            "width": p.width, "r": p.r, "trainable": report.trainable[p], "trainable_bytes": report.trainable_bytes(p),
            "trainable_bytes_vs_full": report.trainable_bytes(p) / report.trainable_bytes(full),
            "peak_bytes": m.peak, "peak_vs_full": m.peak / report.memory[full].peak,
            "step_ms_median": 1e3 * s.median, "step_ms_min": 1e3 * s.min, "time_vs_full_median": r.median,
            "time_vs_full_low": r.low, "time_vs_full_high": r.high, "time_vs_full_minima": r.of_minima,
            "cpu_time_vs_full_median": paired_ratio(s, report.step[full], clock="cpu").median,
        })  # fmt: skip
    return pd.DataFrame(rows)


def render(report: CostReport, session: Session, figure: Path | None = None) -> Report:
    """The report: setup, the r sweep, the width sweep, machine."""
    cfg = report.cfg
    header = HEADER + (["time / full, process CPU time (median)"] if report.device.type == "cpu" else [])
    by_r = sorted((p for p in report.step if p.width == cfg.width), key=lambda p: (p.r is None, p.r or 0))
    by_w = sorted(
        (p for p in report.step if p.r in (None, cfg.width_rank)), key=lambda p: (p.width, p.r is None)
    )
    rep = session.report("# LoRA cost curve: step time and memory vs rank r and model width")
    rep.text(
        f"- model: GPT-2 ({cfg.model}'s config) with {cfg.layers} layers, width d in {list(cfg.widths)} (heads of "
        f"{cfg.head_dim}), its 50,257-token LM head (tied to the embedding), random weights, {cfg.dtype}; causal LM "
        f"loss on batch {cfg.batch} x sequence {cfg.seq} random tokens",
        f"- LoRA on q and v (the slices of `c_attn`) in every layer, alpha = r; r in {list(cfg.ranks)} at d = "
        f"{cfg.width}, r = {cfg.width_rank} at every width; full FT at every width. Every variant of a width "
        "shares its frozen weights",
        "- step, memory and protocol as in `results/bench/training.md`: a warm-up step (creates the AdamW state), "
        f"a memory-measured step, then {cfg.reps} interleaved timed rounds over all {len(report.step)} variants. "
        "*trainable p+g+AdamW*: exact bytes of the trainable parameters, their gradients and AdamW state; "
        "*measured peak*: all parameters + AdamW state + the measured peak of one step's allocations "
        + ("(`torch.cuda.max_memory_allocated`)" if report.device.type == "cuda" else "(torch profiler, CPU)")
        + ". *time / full*: against full FT of the same width, of the wall clock (median over rounds, range) "
        "and of the best rounds"
        + (
            "; *process CPU time*: the median ratio of `time.process_time`"
            if report.device.type == "cpu"
            else ""
        )
        + ". The CSV beside this report holds the raw values (column `table`: `rank`, `width`)",
    )
    rep.heading(f"Rank sweep (d = {cfg.width})")
    rep.table(
        _frame(report, by_r), "rank", shown=pd.DataFrame([_row(report, p) for p in by_r], columns=header)
    )
    rep.heading(f"Width sweep (LoRA r = {cfg.width_rank} vs full FT)")
    rep.table(
        _frame(report, by_w), "width", shown=pd.DataFrame([_row(report, p) for p in by_w], columns=header)
    )
    rep.figure(figure, "cost curve")
    return rep.machine()
