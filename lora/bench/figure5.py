"""The paper's Figure 5: inference latency of adapters and merged LoRA over batch size x sequence length x
adapter bottleneck, as % over the model without any method.

Hu et al. (2021), Appendix B, Figure 5 extends Table 1 to batch {1, 2, 4, 8, 16, 32} x sequence {128, 256, 512} x
bottleneck {0, 10, 100, 250} on GPT-2 medium: AdapterL (top row) and AdapterH (bottom row) slow a forward pass down
most at small batches and short sequences ("as high as over 30%"), while LoRA merged into the weights (Section 4.1)
adds nothing. Per (batch, sequence) cell one process times, interleaved (`lora.bench.timing.interleaved`): the base
model, LoRA r=4 on q, v merged (`lora.bench.latency.merged_lora`) and AdapterL / AdapterH with each bottleneck m.
Every variant shares the base weights. The figure: one heatmap per (method, sequence length), batch on x,
bottleneck on y, colour and label = median % over the base.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from lora import methods
from lora.bench.harness import Report, Session, forward_pass, sharing_copy
from lora.bench.latency import ADAPTER_METHODS, BASE, LORA, merged_lora
from lora.bench.timing import Ratio, Stats, paired_ratio, pct_over
from lora.errors import ConfigError
from lora.models import spec


@dataclass(frozen=True)
class Figure5Config:
    """The grid, the model and the repetitions. layers: transformer layers to build (None: the model's own);
    lm_head: with the LM head (the paper's causal LM) or the transformer body only (`AutoModel`)."""

    batches: tuple[int, ...] = (1, 2, 4)
    seqs: tuple[int, ...] = (128, 256)
    bottlenecks: tuple[int, ...] = (10, 100, 250)
    model: str = "gpt2-medium"
    layers: int | None = 2
    lm_head: bool = False
    r: int = 4
    alpha: float = 32.0
    reps: int = 5
    warmup: int = 1
    device: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        spec(self.model)
        for name in ("batches", "seqs", "bottlenecks"):
            values = getattr(self, name)
            if not values or any(v < 1 for v in values):
                raise ConfigError(f"{name} must be a non-empty list of positive integers, got {values}")
        if self.layers is not None and self.layers < 1:
            raise ConfigError(f"layers must be >= 1 (or None for the model's own), got {self.layers}")
        if self.reps < 1 or self.warmup < 0:
            raise ConfigError(f"need reps >= 1 and warmup >= 0, got reps={self.reps}, warmup={self.warmup}")


FULL = Figure5Config(
    batches=(1, 2, 4, 8, 16, 32), seqs=(128, 256, 512), layers=None, lm_head=True, reps=30, warmup=3
)  # fmt: skip
QUICK = Figure5Config(batches=(1, 2), seqs=(32,), bottlenecks=(10, 250), layers=1, reps=1)


def variant_name(method: str, bottleneck: int) -> str:
    return f"{method} m={bottleneck}"


@dataclass
class Cell:
    batch: int
    seq: int
    stats: dict[str, Stats] = field(default_factory=dict)
    overhead: dict[str, Ratio] = field(default_factory=dict)


@dataclass
class Figure5Report:
    cfg: Figure5Config
    command: str
    device: torch.device
    n_layers: int = 0
    params: dict[str, int] = field(default_factory=dict)
    cells: list[Cell] = field(default_factory=list)
    seconds: float = 0.0
    load_at_start: str = ""

    def pct(self, name: str, batch: int, seq: int) -> float:
        """Median % over the base of variant `name` in cell (batch, seq)."""
        cell = next(c for c in self.cells if (c.batch, c.seq) == (batch, seq))
        return 100 * (cell.overhead[name].median - 1)


def build_variants(cfg: Figure5Config, session: Session) -> tuple[dict[str, nn.Module], dict[str, int]]:
    """The base model, merged LoRA and every adapter x bottleneck (weights shared), in eval mode, and the
    trainable parameter count of each."""
    kind = "causal_lm" if cfg.lm_head else "base"
    base = session.build(cfg.model, kind, layers=cfg.layers).eval()
    lora, n_lora = merged_lora(base, cfg.r, cfg.alpha)
    models: dict[str, nn.Module] = {BASE: base, LORA: lora.eval()}
    params = {BASE: 0, LORA: n_lora}
    for label, method in ADAPTER_METHODS.items():
        for m in cfg.bottlenecks:
            model = sharing_copy(base)
            report = methods.apply(model, method, methods.method_config(method, bottleneck=m))
            name = variant_name(label, m)
            models[name] = model.eval()
            params[name] = sum(p.numel() for n, p in model.named_parameters() if n in set(report.trainable))
    return models, params


def run(
    cfg: Figure5Config,
    out: Path | None = None,
    command: str = "",
    log: Callable[[str], None] = print,
    figure: Path | None = None,
) -> Figure5Report:
    """Time every cell of the grid (variants interleaved within a cell); write the report to `out` and the
    heatmaps to `figure` (when given)."""
    session = Session(cfg.device, cfg.dtype, None, command, log)
    report = Figure5Report(cfg, command, session.device, load_at_start=session.load_at_start)
    log(
        f"building {cfg.model} (random weights, layers: {cfg.layers or 'all'}) on {session.device}, {cfg.dtype}"
    )
    models, report.params = build_variants(cfg, session)
    report.n_layers = models[BASE].config.num_hidden_layers
    vocab = models[BASE].config.vocab_size
    for seq in cfg.seqs:
        for batch in cfg.batches:
            g = torch.Generator().manual_seed(0)
            ids = torch.randint(0, vocab, (batch, seq), generator=g).to(session.device)
            log(
                f"batch {batch} x seq {seq}: {len(models)} variants, {cfg.warmup} warm-up + {cfg.reps} rounds"
            )
            fns = {name: forward_pass(model, ids) for name, model in models.items()}
            cell = Cell(batch, seq, session.time(fns, cfg.reps, warmup=cfg.warmup, progress=False))
            cell.overhead = {n: paired_ratio(s, cell.stats[BASE]) for n, s in cell.stats.items() if n != BASE}
            report.cells.append(cell)
            worst = max(cell.overhead, key=lambda n: cell.overhead[n].median)
            log(
                f"  base {1e3 * cell.stats[BASE].median:.1f} ms; merged LoRA "
                f"{pct_over(cell.overhead[LORA].median)}; largest: {worst} {pct_over(cell.overhead[worst].median)}"
            )
    report.seconds = session.seconds
    if figure is not None:
        plot(report, figure)
        log(f"wrote {figure}")
    if out is not None:
        render(report, session, figure).write(out)
    return report


def plot(report: Figure5Report, path: Path) -> Path:
    """Heatmaps: rows AdapterL, AdapterH (y: bottleneck m) and merged LoRA (one row), a column per sequence
    length, x: batch size; colour and label: median % over the base model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = report.cfg
    rows = [(label, [variant_name(label, m) for m in cfg.bottlenecks], list(cfg.bottlenecks))
            for label in ADAPTER_METHODS] + [(LORA, [LORA], [f"r={cfg.r}"])]  # fmt: skip
    values = [
        [[[report.pct(n, b, s) for b in cfg.batches] for n in names] for s in cfg.seqs]
        for _, names, _ in rows
    ]
    vmax = max(1.0, max(abs(v) for grid in values for panel in grid for row in panel for v in row))
    heights = [len(names) + 0.6 for _, names, _ in rows]
    fig, axes = plt.subplots(
        len(rows), len(cfg.seqs), figsize=(3.2 * len(cfg.seqs) + 1.2, 0.55 * sum(heights) + 1.6),
        gridspec_kw={"height_ratios": heights}, squeeze=False, constrained_layout=True,
    )  # fmt: skip
    for i, (label, _, yticks) in enumerate(rows):
        for j, seq in enumerate(cfg.seqs):
            ax, grid = axes[i][j], values[i][j]
            im = ax.imshow(grid, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
            for y, row in enumerate(grid):
                for x, v in enumerate(row):
                    color = "white" if abs(v) > 0.6 * vmax else "black"
                    ax.text(x, y, f"{v:+.1f}", ha="center", va="center", fontsize=8, color=color)
            ax.set_xticks(range(len(cfg.batches)), [str(b) for b in cfg.batches])
            ax.set_yticks(range(len(yticks)), [str(t) for t in yticks])
            ax.set_title(f"{label}, seq {seq}", fontsize=9)
            if i == len(rows) - 1:
                ax.set_xlabel("batch size")
            if j == 0:
                ax.set_ylabel("bottleneck m" if label != LORA else "rank")
    fig.colorbar(im, ax=axes, shrink=0.8, label="% latency over the base model (median)")
    depth = f"{report.n_layers} layers" + ("" if cfg.lm_head else ", no LM head")
    fig.suptitle(f"Figure 5: forward latency over the base, {cfg.model} ({depth}), {report.device.type}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _frame(report: Figure5Report) -> pd.DataFrame:
    rows = []
    for c in report.cells:
        for n, o in c.overhead.items():
            rows.append({
                "batch": c.batch, "seq": c.seq, "variant": n, "params": report.params[n],
                "base_ms_median": 1e3 * c.stats[BASE].median, "ms_median": 1e3 * c.stats[n].median,
                "over_base_median": o.median - 1, "over_base_minima": o.of_minima - 1,
                "over_base_cpu_median": paired_ratio(c.stats[n], c.stats[BASE], clock="cpu").median - 1,
            })  # fmt: skip
    return pd.DataFrame(rows)


def render(report: Figure5Report, session: Session, figure: Path | None = None) -> Report:
    """The report: setup (and what differs from the paper), one row per cell, the merged-LoRA summary."""
    cfg = report.cfg
    names = [n for n in report.cells[0].stats if n != BASE] if report.cells else []
    cpu_clock = report.device.type == "cpu"

    def cell_text(c: Cell, n: str) -> str:
        o = c.overhead[n]
        cpu = (
            f"; cpu {pct_over(paired_ratio(c.stats[n], c.stats[BASE], clock='cpu').median)}"
            if cpu_clock
            else ""
        )
        return f"{pct_over(o.median)} (min {pct_over(o.of_minima)}{cpu})"

    rows = [[f"{c.batch}", f"{c.seq}", f"{1e3 * c.stats[BASE].median:,.1f}"] + [cell_text(c, n) for n in names]
            for c in report.cells]  # fmt: skip
    lora = [c.overhead[LORA] for c in report.cells]
    medians = [r.median for r in lora]
    summary = (
        f"Merged LoRA / base, per-cell median ratios over the {len(lora)} cells: median "
        f"{statistics.median(medians):.3f}, range {min(medians):.3f}-{max(medians):.3f}; ratio of minima "
        f"{min(r.of_minima for r in lora):.3f}-{max(r.of_minima for r in lora):.3f}"
        if lora
        else "no cells"
    )
    if lora and cpu_clock:
        cpu = [paired_ratio(c.stats[LORA], c.stats[BASE], clock="cpu").median for c in report.cells]
        summary += (
            f"; of process CPU time: median {statistics.median(cpu):.3f}, range {min(cpu):.3f}-{max(cpu):.3f}"
        )
    full_grid = (cfg.batches, cfg.seqs, cfg.bottlenecks) == (
        (1, 2, 4, 8, 16, 32),
        (128, 256, 512),
        (10, 100, 250),
    )
    paper_model = cfg.layers is None and cfg.lm_head and cfg.model == "gpt2-medium"
    reduced = []
    if not full_grid:
        reduced.append(
            f"the grid is reduced to batch {list(cfg.batches)} x sequence {list(cfg.seqs)} x bottleneck "
            f"{list(cfg.bottlenecks)} (paper: batch [1, 2, 4, 8, 16, 32] x sequence [128, 256, 512] x bottleneck "
            "[0, 10, 100, 250]; m = 0 is the base)"
        )
    if not paper_model:
        reduced.append(
            f"the model is {cfg.model} with {report.n_layers} of its layers"
            + ("" if cfg.lm_head else " and no LM head (`AutoModel`: embeddings + transformer body)")
            + ". Adapters and LoRA act per layer, so the % over the base of a body of identical layers does not "
            "depend on its depth"
            + (
                ""
                if cfg.lm_head
                else "; the LM head (for GPT-2 medium 50,257 x 1024, about 1/7 of its FLOPs) is "
                "a cost adapters do not add to, so with it the percentages are smaller"
            )
        )
    params = ", ".join(f"{n} {p:,}" for n, p in report.params.items() if n != BASE)
    rep = session.report(
        "# Figure 5: inference latency over batch size x sequence length x adapter bottleneck"
    )
    rep.text(
        "Paper (Hu et al., 2021, Appendix B, Figure 5; GPT-2 medium on a Quadro RTX8000): AdapterL and AdapterH "
        "add latency, most at small batch and short sequence (over 30%); merged LoRA adds none."
    )
    rep.text(
        f"- {'; '.join(reduced) if reduced else 'the paper grid and model (GPT-2 medium, 24 layers, LM head)'}",
        f"- random weights, {cfg.dtype}, eval mode, `torch.inference_mode()`, `use_cache=False`, random token ids",
        f"- variants: the base model; LoRA r={cfg.r}, alpha={cfg.alpha:g} on q, v with B non-zero, merged "
        "(`lora.methods.lora.merge`); AdapterL / AdapterH (`lora.methods.adapters`) with bottleneck m. Trainable "
        f"parameters: {params}",
        f"- protocol: per cell {cfg.warmup} warm-up round(s) + {cfg.reps} timed rounds; a round runs every variant "
        "once, in an order rotated each round (interleaved). Cells: the median over rounds of t_variant / t_base "
        "- 1 (same round) of the wall clock; in brackets the ratio of the minima (best rounds)"
        + (
            " and the median ratio of process CPU times (one thread: the compute's own cost)"
            if cpu_clock
            else ""
        ),
        "- the CSV beside this report holds one row per cell and variant (overheads as fractions)",
    )
    rep.table(
        _frame(report), "grid", shown=pd.DataFrame(rows, columns=["batch", "seq", "base ms (median)", *names])
    )
    rep.text(summary + ".")
    rep.figure(figure, "Figure 5")
    return rep.machine()
