"""Profiler traces of a LoRA training step and a full fine-tuning step (torch.profiler), for a look at where the time
goes: a Chrome trace per step (`<out>/<model>_<method>.json.gz`, open it in https://ui.perfetto.dev or
chrome://tracing) and a Markdown report with each step's top operators by self time (device time on a GPU).

The paper's shapes on a GPU (`FULL`): RoBERTa-base 16 x 512 and GPT-2 medium 8 x 512, bf16 autocast; on a CPU a
small shape (`CPU`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from lora.bench.harness import Report, Session, with_method
from lora.bench.mfu import MfuShape
from lora.bench.training import configure

METHODS = ("lora", "full")


@dataclass(frozen=True)
class TraceConfig:
    shapes: tuple[MfuShape, ...] = (MfuShape("roberta-base", 2, 128),)
    amp: bool = False
    active: int = 2  # profiled steps, after 2 untraced warm-up steps
    top: int = 15
    device: str = "cpu"
    threads: int | None = 1


FULL = TraceConfig(
    shapes=(MfuShape("roberta-base", 16, 512), MfuShape("gpt2-medium", 8, 512)),
    amp=True,
    active=1,
    threads=None,
)
QUICK = TraceConfig(shapes=(MfuShape("tiny-roberta", 2, 16),), active=1)


@dataclass
class TraceReport:
    cfg: TraceConfig
    tables: dict[tuple[str, str], pd.DataFrame] = field(default_factory=dict)
    files: dict[tuple[str, str], Path] = field(default_factory=dict)


def run(cfg: TraceConfig, out: Path, command: str = "", log: Callable[[str], None] = print) -> TraceReport:
    """Trace every shape x method; the traces go beside the report `out` (in `<out stem>_traces/`)."""
    from torch.profiler import ProfilerActivity, profile, schedule

    session = Session(cfg.device, "float32", cfg.threads, command, log)
    report = TraceReport(cfg)
    folder = out.parent / f"{out.stem}_traces"
    folder.mkdir(parents=True, exist_ok=True)
    cuda = session.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    amp = torch.bfloat16 if cfg.amp else None
    for shape in cfg.shapes:
        base = session.build(shape.model)
        inputs = session.inputs(base, shape.batch, shape.seq)
        for method in METHODS:
            step = with_method(base, method, configure(shape.model, method)).step(inputs, 1e-4, amp)
            for _ in range(2):
                step()
            session.sync()
            with profile(
                activities=activities, schedule=schedule(wait=0, warmup=1, active=cfg.active, repeat=1)
            ) as prof:
                for _ in range(1 + cfg.active):
                    step()
                    session.sync()
                    prof.step()
            path = folder / f"{shape.model}_{method}.json.gz"
            prof.export_chrome_trace(str(path))
            key = "self_device_time_total" if cuda else "self_cpu_time_total"
            ops = [e for e in prof.key_averages() if not e.key.startswith("ProfilerStep")]
            events = sorted(ops, key=lambda e: getattr(e, key), reverse=True)[: cfg.top]
            total = sum(getattr(e, key) for e in ops) or 1.0
            report.tables[shape.model, method] = pd.DataFrame([
                {"model": shape.model, "batch": shape.batch, "seq": shape.seq, "method": method, "op": e.key,
                 "calls": e.count // cfg.active, "self_ms_per_step": getattr(e, key) / 1e3 / cfg.active,
                 "share": getattr(e, key) / total}
                for e in events
            ])  # fmt: skip
            report.files[shape.model, method] = path
            log(f"{shape.model} {method}: trace {path}")
        del base
        session.free()
    render(report, session, out).write(out)
    return report


def render(report: TraceReport, session: Session, out: Path) -> Report:
    kind = "device (kernel) self time" if session.device.type == "cuda" else "CPU self time"
    rep = session.report("# Profiler traces: a LoRA step and a full fine-tuning step")
    rep.text(
        f"- device {session.device.type}, {'bf16 autocast' if report.cfg.amp else 'fp32'}; per shape and method two "
        f"untraced steps, one profiler warm-up step, then {report.cfg.active} traced steps (forward + backward + "
        "AdamW + gradients freed), `torch.profiler` with "
        + ("CPU and CUDA activities" if session.device.type == "cuda" else "CPU activity"),
        f"- the traces (Chrome trace format, gzip): `{out.stem}_traces/<model>_<method>.json.gz`; open them in "
        "https://ui.perfetto.dev",
        f"- per step the top {report.cfg.top} operators by {kind}, per step; *share*: of all operators' self time",
    )
    for (model, method), frame in report.tables.items():
        rep.heading(f"{model} ({frame['batch'].iloc[0]} x {frame['seq'].iloc[0]}), {method}")
        shown = pd.DataFrame({
            "operator": frame["op"], "calls per step": frame["calls"],
            "self ms per step": [f"{v:,.2f}" for v in frame["self_ms_per_step"]],
            "share": [f"{100 * v:.1f}%" for v in frame["share"]],
        })  # fmt: skip
        rep.table(frame, f"{model}/{method}", shown=shown)
    return rep.machine()
