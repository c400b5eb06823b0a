"""Model FLOPs utilisation of full fine-tuning and LoRA at the paper's shapes, with the FLOPs formula each uses.

Per shape (model, batch x seq) one process builds the model from its config, applies full FT and LoRA as the paper
ran it on that model (`lora.bench.training.PAPER_OPTIONS`), times their training steps interleaved, and divides
the model FLOPs of a step (`lora.bench.flops`: 6 N T + 3 A for full FT, 4 (N + N_a) T + 2 N_t T + 3 A for LoRA) by
the median step time and the device's peak. The same step's FLOPs are also counted by torch's FlopCounterMode on the
meta device, as a check of the formula.

The paper's shapes (`FULL`, for a GPU, bf16 autocast): RoBERTa-base 16 x 512 and RoBERTa-large 4 x 512 (the GLUE
scripts' per-device batch at max length 512, Table 9), GPT-2 medium and large 8 x 512 (the NLG trainer, Table 11).
On a CPU only small shapes run (`CPU`): the same formula, a measured matmul rate as the peak.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from lora.bench.flops import StepFlops, count_step_flops, measured_matmul_flops, peak_flops, step_flops
from lora.bench.harness import Report, Session, make_inputs, with_method
from lora.bench.timing import Ratio, Stats, paired_ratio
from lora.bench.training import configure
from lora.errors import ConfigError
from lora.models import build_model, default_kind, spec

METHODS = ("full", "lora")


@dataclass(frozen=True)
class MfuShape:
    model: str
    batch: int
    seq: int


@dataclass(frozen=True)
class MfuConfig:
    """shapes: what to run; amp: bf16 autocast (as `train.bf16`); reps / warmup: interleaved rounds per shape;
    peak_tflops: the peak to divide by (default: a known GPU's data sheet; on CPU a measured fp32 matmul rate)."""

    shapes: tuple[MfuShape, ...] = (MfuShape("roberta-base", 2, 128), MfuShape("gpt2-medium", 1, 128))
    amp: bool = False
    reps: int = 3
    warmup: int = 1
    lr: float = 1e-4
    device: str = "cpu"
    threads: int | None = 1
    peak_tflops: float | None = None

    def __post_init__(self) -> None:
        for s in self.shapes:
            spec(s.model)
            if s.batch < 1 or s.seq < 1:
                raise ConfigError(f"batch and seq must be >= 1, got {s}")
        if self.reps < 1:
            raise ConfigError(f"reps must be >= 1, got {self.reps}")


PAPER_SHAPES = (
    MfuShape("roberta-base", 16, 512),
    MfuShape("roberta-large", 4, 512),
    MfuShape("gpt2-medium", 8, 512),
    MfuShape("gpt2-large", 8, 512),
)
FULL = MfuConfig(shapes=PAPER_SHAPES, amp=True, reps=10, warmup=2, threads=None)
QUICK = MfuConfig(shapes=(MfuShape("tiny-roberta", 2, 16), MfuShape("tiny-gpt2", 2, 16)), reps=1)


@dataclass
class MfuRow:
    shape: MfuShape
    method: str
    flops: StepFlops
    counted: int | None
    stats: Stats
    vs_full: Ratio | None = None


@dataclass
class MfuReport:
    cfg: MfuConfig
    rows: list[MfuRow] = field(default_factory=list)
    peak: float = float("nan")
    peak_source: str = ""


def counted_flops(shape: MfuShape, method: str) -> int | None:
    """The step's FLOPs by FlopCounterMode on the meta device (None where a model needs real data, e.g. DeBERTa's
    relative positions)."""
    base = build_model(shape.model, default_kind(shape.model), pretrained=False, device="meta")
    v = with_method(base, method, configure(shape.model, method))
    for p, trainable in v.flags:
        p.requires_grad_(trainable)
    inputs = make_inputs(v.model, shape.batch, shape.seq, torch.device("meta"))
    inputs.pop("attention_mask")  # all ones; a meta mask cannot be inspected
    try:
        return count_step_flops(v.model, inputs)
    except (RuntimeError, NotImplementedError):
        return None


def run(
    cfg: MfuConfig, out: Path | None = None, command: str = "", log: Callable[[str], None] = print
) -> MfuReport:
    session = Session(cfg.device, "float32", cfg.threads, command, log)
    report = MfuReport(cfg)
    amp = torch.bfloat16 if cfg.amp else None
    given = peak_flops(session.device, amp or torch.float32, cfg.peak_tflops)
    if given is not None:
        report.peak = given
        report.peak_source = (
            "given (--peak-tflops)"
            if cfg.peak_tflops
            else f"{torch.cuda.get_device_name(session.device)} data sheet"
        )
    else:
        report.peak = measured_matmul_flops(session.device, amp or torch.float32)
        kind = "bf16" if amp else "fp32"
        report.peak_source = f"measured: a 2048 x 2048 {kind} matmul on this device, same threads"
    log(f"peak: {report.peak / 1e12:,.3f} TFLOP/s ({report.peak_source})")
    for shape in cfg.shapes:
        log(f"{shape.model} {shape.batch} x {shape.seq}: building")
        base = session.build(shape.model)
        inputs = session.inputs(base, shape.batch, shape.seq)
        variants = {m: with_method(base, m, configure(shape.model, m)) for m in METHODS}
        steps = {m: v.step(inputs, cfg.lr, amp) for m, v in variants.items()}
        flops = {}
        for m, v in variants.items():
            for p, trainable in v.flags:
                p.requires_grad_(trainable)
            flops[m] = step_flops(v.model, shape.batch, shape.seq)
        stats = session.time(steps, cfg.reps, warmup=cfg.warmup)
        for m in METHODS:
            row = MfuRow(
                shape, m, flops[m], counted_flops(shape, m), stats[m], paired_ratio(stats[m], stats["full"])
            )
            report.rows.append(row)
            log(f"  {m}: {row.flops.formula()}; MFU {row.flops.train / row.stats.median / report.peak:.1%}")
        del variants, steps, base
        session.free()
    if out is not None:
        render(report, session).write(out)
    return report


def render(report: MfuReport, session: Session) -> Report:
    cfg, peak = report.cfg, report.peak
    raw, shown = [], []
    for r in report.rows:
        f, s = r.flops, r.stats
        achieved = f.train / s.median
        raw.append({
            "model": r.shape.model, "batch": r.shape.batch, "seq": r.shape.seq, "method": r.method, "n": f.n,
            "n_a": f.n_a, "n_t": f.n_t, "layers": f.layers, "d_attn": f.d_attn, "tokens": f.tokens,
            "step_tflop_formula": f.train / 1e12, "step_tflop_counted": None if r.counted is None else r.counted / 1e12,
            "step_ms_median": 1e3 * s.median, "step_ms_min": 1e3 * s.min, "achieved_tflops": achieved / 1e12,
            "peak_tflops": peak / 1e12, "mfu": achieved / peak, "time_vs_full": r.vs_full.median if r.vs_full else None,
            "formula": f.formula(),
        })  # fmt: skip
        counted = "n/a" if r.counted is None else f"{r.counted / 1e12:,.3f} ({r.counted / f.train:.3f}x)"
        shown.append([
            f"{r.shape.model}, {r.shape.batch} x {r.shape.seq}", r.method, f"{f.n / 1e6:,.1f}M / {f.n_a / 1e6:,.3f}M / "
            f"{f.n_t / 1e6:,.3f}M", f"{f.train / 1e12:,.3f}", counted, f"{1e3 * s.median:,.1f}",
            f"{achieved / 1e12:,.2f}", f"{100 * achieved / peak:.1f}%", f"{r.vs_full.median:.3f}" if r.vs_full else "",
        ])  # fmt: skip
    columns = ["model, batch x seq", "method", "N / N_a / N_t", "TFLOP per step (formula)",
               "TFLOP per step (FlopCounterMode)", "step ms (median)", "achieved TFLOP/s", "MFU",
               "step time / full FT"]  # fmt: skip
    amp = "bf16 autocast (as `train.bf16`)" if cfg.amp else "fp32"
    rep = session.report("# Model FLOPs utilisation: full fine-tuning vs LoRA")
    rep.text(
        f"- device {session.device.type}, {amp}; models from their configs (random weights), every layer; LoRA as "
        "the paper ran it on each model (`lora.bench.training.PAPER_OPTIONS`); a step = forward + backward + AdamW "
        f"+ gradients freed; {cfg.warmup} warm-up + {cfg.reps} interleaved timed rounds per shape (full FT and "
        "LoRA side by side)",
        f"- peak: {peak / 1e12:,.3f} TFLOP/s ({report.peak_source}); MFU = model FLOPs per step / median step "
        "time / peak",
        "- the CSV beside this report holds the raw values and each row's formula with its numbers",
    )
    rep.heading(
        "The formula (per step of T = batch x seq tokens; PaLM's convention, Chowdhery et al. 2022, App. B)"
    )
    rep.text(
        "```",
        "forward               2 (N + N_a) T + A",
        "backward, activations 2 (N + N_a) T + 2 A     (every method: the gradient flows down every layer)",
        "backward, weights     2 N_t T                 (only the trainable matrices)",
        "full FT   (N_a = 0, N_t = N):  6 N T + 3 A",
        "LoRA      (N_t = N_a):         4 N T + 6 N_a T + 3 A",
        "A = 4 L s d_attn T            (QK^T and softmax(.)V: 2 s d_attn FLOPs each per token and layer)",
        "```",
        "N: the weights of the matrices every token goes through (attention and feed-forward projections, a causal "
        "LM's LM head); N_a: LoRA's A and B (adapters: their projections); N_t: the trainable ones. Embeddings, "
        "norms, biases and a classifier's head (one token per sequence) are left out; causal masking is not "
        "discounted. FlopCounterMode counts every aten matmul and SDPA call of the same step on the meta device: "
        "it skips the input gradient of the first layer when the embeddings are frozen (LoRA), so it is a little "
        "below the formula there.",
    )
    rep.table(pd.DataFrame(raw), "mfu", shown=pd.DataFrame(shown, columns=columns))
    rep.heading("Each row's formula with its numbers")
    rep.text(*(f"- {x['model']} {x['batch']} x {x['seq']}, {x['method']}: {x['formula']}" for x in raw))
    if session.device.type == "cpu":
        rep.text(
            "On a CPU only small shapes run; the paper's shapes (RoBERTa-base 16 x 512, RoBERTa-large 4 x 512, "
            "GPT-2 medium and large 8 x 512) are `python experiments/bench.py mfu --full --device cuda`."
        )
    return rep.machine()
