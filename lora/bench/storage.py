"""Checkpoint storage: an adapter-only checkpoint against the full model, for every method and model.

Hu et al. (2021), Section 4.2: with r = 4 on W_q and W_v, a GPT-3 175B LoRA checkpoint is about 10,000x smaller than
the model (350 GB -> 35 MB), so one deployed model can switch between many tasks. Here every method of Section 5.1,
configured as the paper ran it on each model (`lora.bench.training.configure`), is applied to the model built on the
`meta` device (shapes only, no memory), and the size of the safetensors file `lora.checkpoint.save_adapter` would
write is computed exactly from shapes and dtypes (`lora.params.count_parameters(...).adapter_bytes`). For the models
in `verify` the adapters are really written (random weights, CPU) and the file sizes compared with the computed ones.
The GPT-3 row is computed from the paper's shapes, not measured.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from lora import methods
from lora.bench.harness import Report, Session, sharing_copy
from lora.bench.training import ALL_METHODS, config_label, configure, model_kind
from lora.checkpoint import WEIGHTS, save_adapter
from lora.errors import ConfigError
from lora.models import build_model, head_parameter_names, spec
from lora.params import count_parameters

STORAGE_MODELS = ("roberta-base", "roberta-large", "deberta-v2-xxlarge", "gpt2-medium", "gpt2-large")
FP32 = 4


@dataclass(frozen=True)
class StorageConfig:
    """models x methods to count; verify: models whose adapters are written for real (not `full`: its checkpoint
    is the model itself) to check the computed sizes byte for byte."""

    models: tuple[str, ...] = STORAGE_MODELS
    methods: tuple[str, ...] = ALL_METHODS
    verify: tuple[str, ...] = ("roberta-base", "gpt2-medium")

    def __post_init__(self) -> None:
        for m in (*self.models, *self.verify):
            spec(m)
        for m in self.methods:
            methods.method_config(m)
        if not set(self.verify) <= set(self.models):
            raise ConfigError(f"verify {self.verify} must be among models {self.models}")


@dataclass(frozen=True)
class StorageRow:
    """trainable: the method's parameters (paper convention: no task head); checkpoint_bytes: the adapter file with
    the task head (what `save_adapter(head=True)` writes), method_bytes: without it; full_bytes: every parameter of
    the unadapted model in fp32; written: the size of the file really written (None: not verified)."""

    model: str
    method: str
    config: str
    trainable: int
    checkpoint_bytes: int
    method_bytes: int
    full_bytes: int
    written: int | None = None

    @property
    def ratio(self) -> float:
        return self.full_bytes / self.checkpoint_bytes

    @property
    def method_ratio(self) -> float:
        return self.full_bytes / self.method_bytes


@dataclass(frozen=True)
class Gpt3LoRA:
    """LoRA on GPT-3 175B as Section 4.2 counts it: r on W_q and W_v (d x d each) in all L layers, 2 bytes a
    parameter (fp16: the paper's 350 GB for 175B parameters)."""

    d: int = 12288
    layers: int = 96
    r: int = 4
    matrices: int = 2
    total_params: float = 175e9
    bytes_per_param: int = 2

    @property
    def params(self) -> int:
        """|Theta| = L * matrices * r * (d_in + d_out)."""
        return self.layers * self.matrices * self.r * (self.d + self.d)

    @property
    def bytes(self) -> int:
        return self.params * self.bytes_per_param

    @property
    def full_bytes(self) -> float:
        return self.total_params * self.bytes_per_param

    @property
    def ratio(self) -> float:
        return self.full_bytes / self.bytes

    def formula(self) -> str:
        return (
            f"|Theta| = L x {self.matrices} matrices x r x (d + d) = {self.layers} x {self.matrices} x {self.r} x "
            f"({self.d} + {self.d}) = {self.params:,} parameters; x {self.bytes_per_param} bytes (fp16) = "
            f"{self.bytes:,} bytes ({self.bytes / 1e6:.1f} MB); full model {self.total_params:.3g} x "
            f"{self.bytes_per_param} bytes = {self.full_bytes / 1e9:,.0f} GB; ratio {self.ratio:,.0f}x"
        )


@dataclass
class StorageReport:
    cfg: StorageConfig
    command: str
    rows: list[StorageRow] = field(default_factory=list)
    skipped: dict[tuple[str, str], str] = field(default_factory=dict)
    seconds: float = 0.0
    load_at_start: str = ""


def written_size(model: torch.nn.Module, name: str, method: str) -> int:
    """Apply `method` as configured for model `name` to a weight-sharing copy of `model` (real tensors), write
    the adapter with `save_adapter` into a temporary directory, and return the file's size in bytes."""
    copy = sharing_copy(model)
    cfg = configure(name, method)
    report = methods.apply(copy, method, cfg, head=head_parameter_names(copy))
    with tempfile.TemporaryDirectory() as tmp:
        save_adapter(copy, tmp, method, cfg, report, head=True)
        return (Path(tmp) / WEIGHTS).stat().st_size


def count_model(
    name: str, cfg: StorageConfig, skipped: dict[tuple[str, str], str], log: Callable[[str], None]
) -> list[StorageRow]:
    """One row per method that applies to model `name` (counted on the meta device; verified when asked)."""
    kind = model_kind(name)
    base = build_model(name, kind, pretrained=False, device="meta")
    full_bytes = FP32 * sum(p.numel() for p in base.parameters())
    real = None
    if name in cfg.verify:
        log(f"{name}: building on cpu (random weights) to write the adapters")
        real = build_model(name, kind, pretrained=False, device="cpu")
    rows = []
    for method in cfg.methods:
        model = sharing_copy(base)
        try:
            report = methods.apply(model, method, configure(name, method), head=head_parameter_names(model))
        except ValueError as e:  # e.g. prefix_layer on an encoder
            skipped[name, method] = str(e)
            continue
        count = count_parameters(model)
        method_only = count_parameters(model, saved=list(report.trainable))
        written = written_size(real, name, method) if real is not None and method != "full" else None
        rows.append(StorageRow(
            name, method, config_label(configure(name, method)), count.trainable, count.adapter_bytes,
            method_only.adapter_bytes, full_bytes, written,
        ))  # fmt: skip
        check = "" if written is None else f" (file written: {written:,} bytes)"
        log(f"{name} {method}: {count.adapter_bytes:,} bytes, full/adapter {rows[-1].ratio:,.0f}x{check}")
    return rows


def run(
    cfg: StorageConfig, out: Path | None = None, command: str = "", log: Callable[[str], None] = print
) -> StorageReport:
    """Count every model x method and write the report to `out` (Markdown + CSV)."""
    session = Session("cpu", "float32", None, command, log)
    report = StorageReport(cfg, command, load_at_start=session.load_at_start)
    for name in cfg.models:
        report.rows += count_model(name, cfg, report.skipped, log)
    mismatched = [r for r in report.rows if r.written is not None and r.written != r.checkpoint_bytes]
    if mismatched:
        r = mismatched[0]
        raise RuntimeError(
            f"{r.model} {r.method}: computed {r.checkpoint_bytes:,} bytes, wrote {r.written:,}"
        )
    report.seconds = session.seconds
    if out is not None:
        render(report, session).write(out)
    return report


def human(n: float) -> str:
    """Bytes in binary units: 1536 -> 1.5 KiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def render(report: StorageReport, session: Session) -> Report:
    """The report: claim, method, one table of every model x method, the GPT-3 line, machine."""
    rows = [
        [r.model, r.method, r.config, f"{r.trainable:,}", f"{r.checkpoint_bytes:,}", human(r.checkpoint_bytes),
         human(r.method_bytes), human(r.full_bytes), f"{r.ratio:,.1f}x", f"{r.method_ratio:,.1f}x",
         "" if r.written is None else ("yes" if r.written == r.checkpoint_bytes else f"NO: {r.written:,}")]
        for r in report.rows
    ]  # fmt: skip
    raw = pd.DataFrame([
        {"model": r.model, "method": r.method, "config": r.config, "trainable": r.trainable,
         "checkpoint_bytes": r.checkpoint_bytes, "method_bytes": r.method_bytes, "full_bytes": r.full_bytes,
         "full_vs_checkpoint": r.ratio, "full_vs_method": r.method_ratio, "written_bytes": r.written}
        for r in report.rows
    ])  # fmt: skip
    columns = ["model", "method", "config", "trainable", "adapter checkpoint bytes", "adapter checkpoint",
               "method only", "full model (fp32)", "full / checkpoint", "full / method only",
               "file written = computed"]  # fmt: skip
    gpt3 = Gpt3LoRA()
    verified = ", ".join(report.cfg.verify) or "none"
    rep = session.report("# Checkpoint size: adapter-only checkpoints vs the full model")
    rep.text(
        "Paper (Hu et al., 2021, Section 4.2): on GPT-3 175B, LoRA with r = 4 on W_q and W_v shrinks the "
        "checkpoint about 10,000x, from 350 GB to 35 MB."
    )
    rep.text(
        "- every method configured as the paper ran it on that model (*config*; "
        "`lora.bench.training.PAPER_OPTIONS`, else the method's defaults); encoders with a 2-label "
        "classification head, GPT-2 as a causal LM (no task head)",
        "- *adapter checkpoint*: the exact size of the safetensors file `lora.checkpoint.save_adapter(head=True)` "
        "writes (the method's parameters + the task head + header), computed from shapes "
        "(`count_parameters(...).adapter_bytes`, on the `meta` device); *method only*: the same without the task "
        "head; *full model*: 4 bytes (fp32) x every parameter of the unadapted model. `full` and `ft_top2` store "
        "what they train, so their checkpoint is (a large part of) the model. *trainable*: the paper's count "
        "(no task head)",
        f"- *file written*: for {verified}, each adapter was also written with `save_adapter` (random weights) "
        "and its file size compared with the computed one (`full` is not written: it is the model)",
        "- the CSV beside this report holds the raw byte counts",
    )
    rep.table(raw, "storage", shown=pd.DataFrame(rows, columns=columns))
    if report.skipped:
        rep.text(
            *(
                f"- {model} {method}: not applicable ({why})"
                for (model, method), why in report.skipped.items()
            )
        )
    rep.text(
        "Reading: LoRA with rank r on W_q and W_v stores 2 x 2 r d parameters per layer against the layer's "
        "12 d^2 (attention 4 d^2, feed-forward 8 d^2), so full / LoRA is about 3 d / r ignoring embeddings: the "
        "ratio grows with the width (768 for GPT-2 medium at r = 4, 9,216 for GPT-3). For the classifiers the "
        "task head (RoBERTa's dense d x d + out_proj, 0.59M parameters on roberta-base) is stored with every "
        "adapter and outweighs LoRA's own parameters, hence the two ratio columns."
    )
    rep.heading("GPT-3 175B (computed from the paper's shapes, not measured)")
    rep.text(
        f"LoRA r = {gpt3.r} on W_q and W_v, d_model = {gpt3.d}, L = {gpt3.layers}: {gpt3.formula()}. The paper "
        "rounds this to 35 MB and 10,000x. In fp32, as the table above counts, both sides double and the ratio "
        "is the same."
    )
    return rep.machine(torch.float32, threads=False)
