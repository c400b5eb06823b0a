"""The paper's Table 1: inference latency of one forward pass of GPT-2 medium with adapters vs merged LoRA.

Hu et al. (2021), Section 3 and Table 1: adapter layers add latency because they run sequentially, most visibly at
small batch sizes; LoRA merged into the weights (Section 4.1) adds none. Three settings (batch, sequence length,
adapter parameter budget |Theta|): A 32 x 512 with 0.5M, B 16 x 256 with 11M, C 1 x 128 with 11M.

One process measures, per setting and interleaved (`lora.bench.timing.interleaved`): the model without any method
(the paper's "Fine-Tune/LoRA" row), our LoRA (r=4 on q, v, the paper's GPT-2 setting) after `merge`, and AdapterL
and AdapterH (`lora.methods.adapters`) with the bottleneck m whose trainable parameter count is nearest the
setting's |Theta|. Latency does not depend on weight values, so the model is built from its config (random
weights); every variant shares the base weights (no copies), except the matrices merged LoRA changes.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from lora import methods
from lora.bench.harness import Report, Session, forward_pass, sharing_copy
from lora.bench.timing import Ratio, Stats, paired_ratio, pct_over, threads_line
from lora.errors import ConfigError, InputNotFound
from lora.methods.lora import LoRAConfig, lora_modules, merge
from lora.models import build_model
from lora.params import count_parameters

PAPER_CSV = Path(__file__).resolve().parents[2] / "results" / "paper" / "table1_latency.csv"
BASE, LORA, ADAPTER_L, ADAPTER_H = "base (no method)", "LoRA, merged", "AdapterL", "AdapterH"
# Our variant -> the paper's row in table1_latency.csv (the paper prints one row for fine-tuning and merged LoRA).
PAPER_METHOD = {BASE: "FT/LoRA", LORA: "FT/LoRA", ADAPTER_L: "AdapterL", ADAPTER_H: "AdapterH"}
ADAPTER_METHODS = {ADAPTER_L: "adapter_l", ADAPTER_H: "adapter_h"}


@dataclass(frozen=True)
class Setting:
    """One column of Table 1: what we run (batch, seq) and the paper's (paper_batch, paper_seq); params: the
    adapters' parameter budget |Theta|."""

    name: str
    batch: int
    seq: int
    params: int
    paper_batch: int
    paper_seq: int

    @property
    def scaled(self) -> bool:
        return (self.batch, self.seq) != (self.paper_batch, self.paper_seq)


@dataclass(frozen=True)
class LatencyConfig:
    """settings: what to run; reps: timed rounds per setting (after `warmup` rounds); r, alpha: LoRA on q, v;
    threads: torch's CPU threads (None: torch's default)."""

    settings: tuple[Setting, ...]
    scaling: str = "the paper's exact settings"
    model: str = "gpt2-medium"
    r: int = 4
    alpha: float = 32.0
    reps: int = 8
    warmup: int = 1
    device: str = "cpu"
    dtype: str = "float32"
    threads: int | None = None
    paper_csv: Path = PAPER_CSV

    def __post_init__(self) -> None:
        if not self.settings:
            raise ConfigError("no latency settings to run")
        if self.reps < 1:
            raise ConfigError(f"reps must be >= 1, got {self.reps}")


@dataclass
class SettingResult:
    setting: Setting
    bottleneck: dict[str, int] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)
    stats: dict[str, Stats] = field(default_factory=dict)
    overhead: dict[str, Ratio] = field(default_factory=dict)
    cpu_overhead: dict[str, Ratio] = field(default_factory=dict)


@dataclass
class LatencyReport:
    cfg: LatencyConfig
    command: str
    device: torch.device
    results: list[SettingResult] = field(default_factory=list)
    paper: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    seconds: float = 0.0
    load_at_start: str = ""


def parse_count(label: str) -> int:
    """`0.5M` -> 500000, `11M` -> 11000000, `20K` -> 20000, `1B` -> 1e9, `1234` -> 1234."""
    scale = {"K": 10**3, "M": 10**6, "B": 10**9}
    text = label.strip().upper()
    try:
        if text and text[-1] in scale:
            return round(float(text[:-1]) * scale[text[-1]])
        return int(text)
    except ValueError:
        raise ConfigError(
            f"cannot read the parameter count {label!r}: expected e.g. 0.5M, 11M or 20K"
        ) from None


def read_paper(path: Path = PAPER_CSV) -> dict[tuple[str, str], dict[str, str]]:
    """The paper's Table 1 as {(setting, method): csv row}; methods FT/LoRA, AdapterL, AdapterH."""
    if not path.exists():
        raise InputNotFound(
            f"{path} not found: the paper's Table 1 is read from results/paper/table1_latency.csv"
        )
    with path.open(newline="") as f:
        return {(row["setting"], row["method"]): row for row in csv.DictReader(f)}


def paper_settings(path: Path = PAPER_CSV) -> list[Setting]:
    """The paper's three settings, exactly (batch, seq and |Theta| as printed)."""
    out: dict[str, Setting] = {}
    for (name, _), row in read_paper(path).items():
        b, s = int(row["batch"]), int(row["seq"])
        out.setdefault(name, Setting(name, b, s, parse_count(row["adapter_params"]), b, s))
    return [out[k] for k in sorted(out)]


def settings_for(mode: str, path: Path = PAPER_CSV) -> tuple[tuple[Setting, ...], str]:
    """The settings of a run mode and a sentence saying how they differ from the paper's.

    `full`: the paper's settings (for a GPU). `cpu`: batch 1 everywhere, sequence lengths kept (A: 32 -> 1, B:
    16 -> 1; C is already batch 1), so that one round fits a 2-core CPU. `quick`: batch 1 and sequences / 4.
    """
    paper = paper_settings(path)
    if mode == "full":
        return tuple(paper), "the paper's exact settings"
    if mode == "cpu":
        ours = tuple(replace(s, batch=1) for s in paper)
        note = "batch size scaled to 1 in every setting, sequence length kept"
    elif mode == "quick":
        ours = tuple(replace(s, batch=1, seq=max(s.seq // 4, 8)) for s in paper)
        note = "quick check: batch size 1 and sequence length / 4 in every setting"
    else:
        raise ConfigError(f"unknown latency mode {mode!r}: choose full, cpu or quick")
    changed = [f"{s.name} {s.paper_batch}x{s.paper_seq} -> {s.batch}x{s.seq}" for s in ours if s.scaled]
    return ours, note + (f" ({'; '.join(changed)})" if changed else "")


@functools.cache
def adapter_params(model_name: str, method: str, bottleneck: int) -> int:
    """Trainable parameters of `method` (adapter_l / adapter_h) with this bottleneck, counted on the meta device."""
    model = build_model(model_name, "causal_lm", pretrained=False, device="meta")
    methods.apply(model, method, methods.method_config(method, bottleneck=bottleneck))
    return count_parameters(model).trainable


def bottleneck_for(model_name: str, method: str, target: int) -> tuple[int, int]:
    """The bottleneck m >= 1 whose parameter count is nearest `target`, and that count.

    The count is affine in m (per adapter 2 d m + m + d, plus LayerNorms that do not depend on m), so two counts
    give its slope and intercept; the chosen m is then counted exactly."""
    one, two = adapter_params(model_name, method, 1), adapter_params(model_name, method, 2)
    slope, intercept = two - one, one - (two - one)
    m = max(1, round((target - intercept) / slope))
    return m, adapter_params(model_name, method, m)


def merged_lora(base: nn.Module, r: int, alpha: float) -> tuple[nn.Module, int]:
    """LoRA r on q, v with a non-zero B (as after training) merged into private copies of the adapted weights."""
    model = sharing_copy(base)
    methods.apply(model, "lora", LoRAConfig(r=r, alpha=alpha, targets=["q", "v"]))
    n_params = count_parameters(model).trainable
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, m in lora_modules(model):
            # A private copy of the adapted weight, so that merging leaves the shared base weight as it is.
            m.weight = nn.Parameter(m.weight.detach().clone(), requires_grad=False)
            for name in m.lora_names():
                p = m.get_parameter(name)
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    merge(model)
    return model, n_params


def run(
    cfg: LatencyConfig, out: Path | None = None, command: str = "", log: Callable[[str], None] = print
) -> LatencyReport:
    """Measure every setting (variants interleaved within a setting) and write the report to `out`."""
    session = Session(cfg.device, cfg.dtype, cfg.threads, command, log)
    report = LatencyReport(cfg=cfg, command=command, device=session.device, paper=read_paper(cfg.paper_csv))
    report.load_at_start = session.load_at_start
    log(f"building {cfg.model} (random weights) on {session.device}, {cfg.dtype}")
    base = session.build(cfg.model, "causal_lm").eval()
    lora_model, lora_params = merged_lora(base, cfg.r, cfg.alpha)
    adapters: dict[tuple[str, int], nn.Module] = {}
    for setting in cfg.settings:
        res = SettingResult(setting, params={BASE: 0, LORA: lora_params})
        models = {BASE: base, LORA: lora_model.eval()}
        for name, method in ADAPTER_METHODS.items():
            m, n = bottleneck_for(cfg.model, method, setting.params)
            res.bottleneck[name], res.params[name] = m, n
            if (method, m) not in adapters:
                adapters[method, m] = sharing_copy(base)
                methods.apply(adapters[method, m], method, methods.method_config(method, bottleneck=m))
            models[name] = adapters[method, m].eval()
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, base.config.vocab_size, (setting.batch, setting.seq), generator=g)
        ids = ids.to(session.device)
        log(
            f"setting {setting.name}: batch {setting.batch} x seq {setting.seq}, |Theta| {setting.params:,} "
            f"(AdapterL m={res.bottleneck[ADAPTER_L]}, AdapterH m={res.bottleneck[ADAPTER_H]}); "
            f"{cfg.warmup} warm-up + {cfg.reps} interleaved rounds"
        )
        fns = {name: forward_pass(model, ids) for name, model in models.items()}
        res.stats = session.time(fns, cfg.reps, warmup=cfg.warmup)
        others = [name for name in res.stats if name != BASE]
        res.overhead = {name: paired_ratio(res.stats[name], res.stats[BASE]) for name in others}
        res.cpu_overhead = {n: paired_ratio(res.stats[n], res.stats[BASE], clock="cpu") for n in others}
        for name in others:
            r, c = res.overhead[name], res.cpu_overhead[name]
            log(f"  {name}: {pct_over(r.median)} over the base model (CPU time {pct_over(c.median)})")
        report.results.append(res)
    report.seconds = session.seconds
    if out is not None:
        render(report, session).write(out)
    return report


def _pct_range(r: Ratio) -> str:
    return f"{pct_over(r.median)} ({pct_over(r.low)} to {pct_over(r.high)})"


def _count(n: int) -> str:
    """500000 -> 0.5M, 11000000 -> 11M (the paper's labels); small counts in full."""
    return f"{n / 1e6:g}M" if n >= 100_000 else f"{n:,}"


def _paper_cells(report: LatencyReport, setting: str, name: str) -> list[str]:
    row = report.paper.get((setting, PAPER_METHOD[name]))
    if row is None:
        return ["", ""]
    spread = f" ± {row['spread']}" if row.get("spread") else ""
    pct = f"+{row['overhead_pct']}%" if row.get("overhead_pct") else "(the base)"
    return [f"{row['value']}{spread}", pct]


def _frame(report: LatencyReport) -> pd.DataFrame:
    rows = []
    for res in report.results:
        s = res.setting
        for name, st in res.stats.items():
            r, c = res.overhead.get(name), res.cpu_overhead.get(name)
            paper = report.paper.get((s.name, PAPER_METHOD[name]), {})
            rows.append({
                "setting": s.name, "paper_batch": s.paper_batch, "paper_seq": s.paper_seq, "budget": s.params,
                "batch": s.batch, "seq": s.seq, "variant": name, "bottleneck": res.bottleneck.get(name),
                "params": res.params[name], "ms_mean": 1e3 * st.mean, "ms_std": 1e3 * st.std,
                "ms_median": 1e3 * st.median, "cpu_ms_median": 1e3 * st.cpu_median,
                "over_base_median": None if r is None else r.median - 1, "over_base_low": None if r is None else r.low - 1,
                "over_base_high": None if r is None else r.high - 1,
                "over_base_minima": None if r is None else r.of_minima - 1,
                "over_base_cpu_median": None if c is None else c.median - 1,
                "paper_ms": paper.get("value"), "paper_over_base_pct": paper.get("overhead_pct"),
            })  # fmt: skip
    return pd.DataFrame(rows)


def render(report: LatencyReport, session: Session) -> Report:
    """The report: setup, one table of all settings and variants beside the paper, machine."""
    cfg = report.cfg
    rows = []
    for res in report.results:
        s = res.setting
        for name, st in res.stats.items():
            r, c = res.overhead.get(name), res.cpu_overhead.get(name)
            over = ["(the base)", "", ""]
            if r is not None and c is not None:
                over = [_pct_range(r), pct_over(r.of_minima), _pct_range(c)]
            rows.append([
                f"{s.name}: {s.paper_batch} x {s.paper_seq}, {_count(s.params)}", f"{s.batch} x {s.seq}", name,
                str(res.bottleneck.get(name, "")), f"{res.params[name]:,}", st.ms(), f"{1e3 * st.median:.1f}",
                f"{1e3 * st.cpu_median:.1f}", *over, *_paper_cells(report, s.name, name),
            ])  # fmt: skip
    columns = ["setting (paper)", "ours: batch x seq", "variant", "bottleneck m", "|Theta|", "ms (mean ± std)",
               "ms (median)", "CPU ms (median)", "over base: wall (range)", "over base: wall, of minima",
               "over base: CPU time (range)", "paper ms", "paper over base"]  # fmt: skip
    paper_note = next(iter(report.paper.values()), {}).get("note", "")
    rep = session.report(f"# Table 1: inference latency of one forward pass of {cfg.model}")
    rep.text(
        f"- model: {cfg.model} built from its config with random weights (latency depends on shapes only), causal "
        "LM head, eval mode, `torch.inference_mode()`, `use_cache=False`, random token ids, no padding",
        f"- settings: {cfg.scaling}. The paper's settings (batch x seq, |Theta|) label each row; the ratios to "
        "the base model are what compare across machines",
        f"- LoRA: r={cfg.r}, alpha={cfg.alpha:g} on q and v (the slices of the fused `c_attn`), B drawn non-zero "
        "(as after training), then merged with `lora.methods.lora.merge`",
        "- AdapterL: one adapter (with its own LayerNorm) after the feed-forward block; AdapterH: adapters after "
        "the attention and the feed-forward output projections, layer norms trained. Bottleneck m: the one whose "
        "trainable parameter count (|Theta| column, exact) is nearest the setting's budget",
        f"- protocol: per setting {cfg.warmup} warm-up round(s), then {cfg.reps} timed rounds; a round runs every "
        "variant once, back to back, in an order rotated each round (interleaved). Each forward is timed by the "
        "wall clock and by the CPU time the process used (`time.process_time`). *Over base*: the median over "
        "rounds of t_variant / t_base - 1 (same round), with its range over rounds; *of minima*: min t_variant / "
        "min t_base - 1 (best rounds: other jobs only add time)",
        threads_line(report.device),
        f"- paper: Hu et al. (2021) Table 1 ({paper_note}), read from `results/paper/table1_latency.csv`",
        "- the CSV beside this report holds the raw values (milliseconds; overheads as fractions)",
    )
    rep.table(_frame(report), "table1", shown=pd.DataFrame(rows, columns=columns))
    return rep.machine(threads=False)
