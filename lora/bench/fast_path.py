"""Fast-path benchmark: every switch of `lora.fastpath` (and LoRA's own fast paths) off vs on, timed side by
side in one process, with the ratio on / off and the model FLOPs utilisation of each.

One pair per switch, each a training step (forward + backward + AdamW + gradients freed) of the same model, shape
and method, differing only in the switch; the two run interleaved (`lora.bench.timing.interleaved`), so a drift of
a shared machine's load hits both alike:

| pair | off | on |
|---|---|---|
| attention | eager attention | SDPA (`train.attn_implementation=sdpa`, the default) |
| bf16 frozen | bf16 autocast, fp32 weights | bf16 autocast, frozen weights held in bf16 (`train.bf16_frozen`) |
| fused AdamW | `torch.optim.AdamW` (foreach) | `fused=True` (`train.optim=adamw_torch_fused`), on full FT |
| compile | eager | `torch.compile` (`train.compile`) |
| LoRA dropout 0 | an `nn.Dropout(0.0)` call on LoRA's branch | no call (`lora.methods.lora`) |
| LoRA branch | `y + (x A^T B^T) * s` (two (tokens, d_out) temporaries) | one product, scaled and added in place |
| fused q, v | GPT-2 `c_attn`: a matmul pair per slice, zeros, concatenation | one matmul pair (A stacked, block B) |

and, not a step pair, `group_by_length`: the padded tokens of an epoch of each local GLUE training set in batches
of the experiment's global batch, length-grouped vs random (`train.group_by_length`), which the step time follows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from lora.bench.flops import measured_matmul_flops, peak_flops, step_flops
from lora.bench.harness import Report, Session, Variant, sharing_copy, training_step, with_method
from lora.bench.timing import Ratio, Stats, paired_ratio
from lora.bench.training import configure
from lora.errors import ConfigError
from lora.fastpath import hold_frozen_in_bf16
from lora.methods.lora import FusedLoRA, LoRALinear, _dropped, lora_modules

PAIRS = ("attention", "bf16_frozen", "fused_adamw", "compile", "lora_dropout", "lora_branch", "fused_qv")
# What each switch keeps, and where that is tested (tests/test_fast_path.py, tests/methods/).
TOLERANCE = {
    "attention": "logits = eager's to 1e-5 (fp32), every tiny family: test_sdpa_logits_match_eager",
    "bf16_frozen": "loss of 3 steps within 2e-2 of fp32: test_bf16_frozen_keeps_trainable_fp32_and_the_loss_near_fp32",
    "fused_adamw": "parameters after 3 steps = foreach AdamW's to 1e-6: test_fused_adamw_matches_adamw_on_cpu",
    "compile": "train and eval loss = eager's to 1e-4: test_compile_runs_a_step",
    "lora_dropout": "identical output (no call vs Dropout(0)): test_lora_dropout_zero_calls_no_module",
    "lora_branch": "= loralib.Linear to 1e-6 (fp32), forward and gradients: tests/methods/test_loralib_oracle.py",
    "fused_qv": "= the per-slice loop to 1e-12 (fp64), every gradient: test_fused_one_matmul_pair_equals_the_per_slice_loop",
}
SWITCH = {
    "attention": "train.attn_implementation=eager -> sdpa (default sdpa)",
    "bf16_frozen": "train.bf16_frozen=false -> true, with train.bf16=true (default false)",
    "fused_adamw": "train.optim=adamw_torch -> adamw_torch_fused (default auto: fused on CUDA)",
    "compile": "train.compile=false -> true (default false)",
    "lora_dropout": "always on (LoRA dropout 0: nn.Identity, no call)",
    "lora_branch": "always on (lora.methods.lora._add_low_rank)",
    "fused_qv": "always on (FusedLoRA.forward)",
}


@dataclass(frozen=True)
class FastPathConfig:
    """encoder: the model of every pair but fused q, v (which needs GPT-2's fused c_attn: `decoder`); layers: their
    depth (None: the model's own); batch x seq: the encoder's input, dec_batch x dec_seq the decoder's; amp: run
    every pair under bf16 autocast (what `train.bf16` does; the bf16-frozen pair always does); reps / warmup:
    timed and untimed interleaved rounds per pair; peak_tflops: the device's peak for the MFU (default: the
    data-sheet value of a known GPU, on CPU the measured rate of a 2048^2 fp32 matmul)."""

    encoder: str = "roberta-base"
    decoder: str = "gpt2-medium"
    layers: int | None = 2
    batch: int = 4
    seq: int = 128
    dec_batch: int = 2
    dec_seq: int = 128
    pairs: tuple[str, ...] = PAIRS
    amp: bool = False
    reps: int = 5
    warmup: int = 1
    lr: float = 1e-4
    device: str = "cpu"
    threads: int | None = 1
    peak_tflops: float | None = None
    glue_dir: str | None = None

    def __post_init__(self) -> None:
        bad = [p for p in self.pairs if p not in PAIRS]
        if bad:
            raise ConfigError(f"unknown fast-path pair(s) {bad}: choose from {', '.join(PAIRS)}")
        for name in ("batch", "seq", "dec_batch", "dec_seq", "reps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")


QUICK = FastPathConfig(
    layers=1,
    batch=2,
    seq=32,
    dec_batch=1,
    dec_seq=32,
    reps=2,
    pairs=tuple(p for p in PAIRS if p != "compile"),
)
# The paper's shapes on a GPU: RoBERTa-base at the GLUE scripts' per-device batch 16 x 512, GPT-2 medium at the NLG
# trainer's 8 x 512, every layer, bf16 autocast (the experiments' train.bf16 on a GPU).
FULL = FastPathConfig(
    layers=None, batch=16, seq=512, dec_batch=8, dec_seq=512, amp=True, reps=10, warmup=2, threads=None
)


@dataclass
class PairResult:
    pair: str
    model: str
    shape: str
    method: str
    off: str
    on: str
    stats: dict[str, Stats] = field(default_factory=dict)
    ratio: Ratio | None = None
    cpu_ratio: Ratio | None = None
    flops: float = 0.0  # model FLOPs of one step (the formula of lora.bench.flops)
    note: str = ""


@dataclass
class GroupResult:
    task: str
    examples: int
    batch: int
    random_tokens: int
    grouped_tokens: int

    @property
    def ratio(self) -> float:
        return self.grouped_tokens / self.random_tokens


@dataclass
class FastPathReport:
    cfg: FastPathConfig
    pairs: list[PairResult] = field(default_factory=list)
    groups: list[GroupResult] = field(default_factory=list)
    peaks: dict[str, tuple[float, str]] = field(
        default_factory=dict
    )  # precision -> (FLOP/s, where it comes from)

    def peak(self, precision: str) -> float:
        return self.peaks.get(precision, (float("nan"), ""))[0]


# --- the "off" side of LoRA's own fast paths: the forwards as they were ----------------------------------------------


def former_linear_forward(m: LoRALinear, x: torch.Tensor) -> torch.Tensor:
    """LoRALinear's forward before this change: `y + (x A^T B^T) * scaling` (two (tokens, d_out) temporaries)."""
    y = m.base_forward(x)
    return y if m.merged else y + (_dropped(m.lora_dropout, x) @ m.lora_A.T @ m.lora_B.T) * m.scaling


def former_fused_forward(m: FusedLoRA, x: torch.Tensor) -> torch.Tensor:
    """FusedLoRA's forward before this change: per adapted slice x A_s^T B_s^T, zeros for the others, concatenated,
    scaled, added."""
    y = m.base_forward(x)
    if m.merged:
        return y
    h = _dropped(m.lora_dropout, x)
    parts = []
    for s, (n, w) in enumerate(zip(m.names, m.widths, strict=True)):
        parts.append(h @ m.lora_A[n].T @ m.lora_B[n].T if s in m.slices else h.new_zeros(*h.shape[:-1], w))
    return y + torch.cat(parts, dim=-1) * m.scaling


def _patched(model: nn.Module, kind: type, forward: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> int:
    """Give every `kind` LoRA module of `model` the instance forward `forward`; the number patched."""
    n = 0
    for _, m in lora_modules(model):
        if isinstance(m, kind):
            m.forward = (lambda mod: lambda x: forward(mod, x))(m)  # type: ignore[method-assign]
            n += 1
    return n


# --- the pairs ---------------------------------------------------------------------------------------------------------


def _lora(model_name: str, base: nn.Module) -> Variant:
    return with_method(base, "lora", configure(model_name, "lora"))


def _pair(session: Session, cfg: FastPathConfig, pair: str, cache: dict) -> tuple[PairResult, dict, Variant]:
    """The two steps of `pair` ({"off": step, "on": step}), its description, and the "on" variant (for FLOPs)."""
    amp = torch.bfloat16 if cfg.amp else None
    enc, dec = cfg.encoder, cfg.decoder

    def base(name: str, attn: str = "sdpa") -> nn.Module:
        key = (name, attn)
        if key not in cache:
            cache[key] = session.build(name, layers=cfg.layers, attn_implementation=attn)
        return cache[key]

    def inputs(name: str) -> dict:
        b, s = (cfg.dec_batch, cfg.dec_seq) if name == dec else (cfg.batch, cfg.seq)
        return session.inputs(base(name), b, s)

    def res(model: str, method: str, off: str, on: str, note: str = "") -> PairResult:
        b, q = (cfg.dec_batch, cfg.dec_seq) if model == dec else (cfg.batch, cfg.seq)
        depth = f", {cfg.layers} layers" if cfg.layers else ""
        return PairResult(pair, model + depth, f"{b} x {q}", method, off, on, note=note)

    x = inputs(enc)
    if pair == "attention":
        off, on = _lora(enc, base(enc, "eager")), _lora(enc, base(enc, "sdpa"))
        return (
            res(enc, "lora", "eager", "sdpa"),
            {"off": off.step(x, cfg.lr, amp), "on": on.step(x, cfg.lr, amp)},
            on,
        )
    if pair == "bf16_frozen":
        off = _lora(enc, base(enc))
        on = with_method(base(enc), "lora", configure(enc, "lora"), share=False)
        hold_frozen_in_bf16(on.model, session.device.type)
        note = "both under bf16 autocast"
        steps = {"off": off.step(x, cfg.lr, torch.bfloat16), "on": on.step(x, cfg.lr, torch.bfloat16)}
        return res(enc, "lora", "fp32 frozen weights", "bf16 frozen weights", note), steps, on
    if pair == "fused_adamw":
        full = with_method(base(enc), "full")
        fused = Variant(full.model, full.flags)
        steps = {"off": full.step(x, cfg.lr, amp), "on": fused.step(x, cfg.lr, amp, fused=True)}
        return res(enc, "full", "AdamW (foreach)", "AdamW (fused)", "full FT: every parameter"), steps, full
    if pair == "compile":
        eager = _lora(enc, base(enc))
        compiled = torch.compile(eager.model)
        opt = eager.optimizer(cfg.lr)
        t0 = time.perf_counter()
        on_step = training_step(compiled, opt, x, eager.flags, amp)
        on_step()  # compiles forward and backward
        note = f"first step (compilation) {time.perf_counter() - t0:.0f} s, not timed"
        return (
            res(enc, "lora", "eager", "torch.compile", note),
            {"off": eager.step(x, cfg.lr, amp), "on": on_step},
            eager,
        )
    if pair == "lora_dropout":
        on = _lora(enc, base(enc))
        off = Variant(sharing_copy(on.model), [])
        off.flags = [(p, p.requires_grad) for p in off.model.parameters()]
        for _, m in lora_modules(off.model):
            m.lora_dropout = nn.Dropout(0.0)
        steps = {"off": off.step(x, cfg.lr, amp), "on": on.step(x, cfg.lr, amp)}
        return res(enc, "lora", "nn.Dropout(0.0) called", "no call"), steps, on
    if pair == "lora_branch":
        on = _lora(enc, base(enc))
        off = Variant(sharing_copy(on.model), [])
        off.flags = [(p, p.requires_grad) for p in off.model.parameters()]
        n = _patched(off.model, LoRALinear, former_linear_forward)
        steps = {"off": off.step(x, cfg.lr, amp), "on": on.step(x, cfg.lr, amp)}
        return res(enc, "lora", "y + (x A^T B^T) s", "in place", f"{n} LoRALinear modules"), steps, on
    if pair == "fused_qv":
        xd = inputs(dec)
        on = _lora(dec, base(dec))
        off = Variant(sharing_copy(on.model), [])
        off.flags = [(p, p.requires_grad) for p in off.model.parameters()]
        n = _patched(off.model, FusedLoRA, former_fused_forward)
        steps = {"off": off.step(xd, cfg.lr, amp), "on": on.step(xd, cfg.lr, amp)}
        return res(dec, "lora", "per-slice loop", "one matmul pair", f"{n} fused c_attn modules"), steps, on
    raise ConfigError(f"unknown pair {pair!r}")


def padded(order: list[int], lengths: list[int], batch: int) -> int:
    """Tokens of an epoch in `order`, each batch padded to its longest example (transformers' collators)."""
    return sum(
        len(order[i : i + batch]) * max(lengths[j] for j in order[i : i + batch])
        for i in range(0, len(order), batch)
    )


def group_by_length(cfg: FastPathConfig, log: Callable[[str], None]) -> list[GroupResult]:
    """Padded tokens of one epoch, length-grouped vs random batches, for every GLUE task found under `glue_dir`
    (first 8,192 training examples, tokenised by the tiny BPE: lengths in its tokens, the ratio is what counts)."""
    from datasets import DatasetDict
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from lora.data import glue
    from lora.models import tiny_tokenizer

    if not cfg.glue_dir or not Path(cfg.glue_dir).is_dir():
        log(f"group_by_length: no GLUE data at {cfg.glue_dir}; skipped")
        return []
    tok, out = tiny_tokenizer(), []
    batches = {
        "sst2": 128,
        "mrpc": 128,
        "cola": 64,
        "rte": 256,
        "stsb": 128,
        "qnli": 256,
        "mnli": 128,
        "qqp": 128,
    }
    for task, batch in batches.items():
        try:
            raw = glue.load_glue(task, cfg.glue_dir)["train"]
        except Exception as e:  # noqa: BLE001  (a task missing locally)
            log(f"group_by_length: {task} skipped ({type(e).__name__})")
            continue
        raw = glue.subsample(raw, min(8192, len(raw)), seed=0)
        data = glue.tokenize_glue(DatasetDict({"train": raw}), tok, task, 512)["train"]
        lengths = [len(ids) for ids in data["input_ids"]]
        g = torch.Generator().manual_seed(0)
        grouped = list(LengthGroupedSampler(batch, lengths=lengths, generator=g))
        rand = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()
        out.append(
            GroupResult(
                task, len(lengths), batch, padded(rand, lengths, batch), padded(grouped, lengths, batch)
            )
        )
        log(f"group_by_length: {task} padded tokens grouped / random {out[-1].ratio:.3f}")
    return out


def run(
    cfg: FastPathConfig, out: Path | None = None, command: str = "", log: Callable[[str], None] = print
) -> FastPathReport:
    """Every pair of `cfg.pairs`, its two steps interleaved; the group-by-length counts; the report to `out`."""
    session = Session(cfg.device, "float32", cfg.threads, command, log)
    report = FastPathReport(cfg)
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        given = peak_flops(session.device, dtype, cfg.peak_tflops)
        if given is not None:
            where = "given" if cfg.peak_tflops else f"{torch.cuda.get_device_name(session.device)} data sheet"
            report.peaks[precision] = (given, where)
        else:
            report.peaks[precision] = (
                measured_matmul_flops(session.device, dtype),
                f"measured: a 2048 x 2048 {precision} matmul on this device, same threads",
            )
        log(
            f"{precision} peak for MFU: {report.peak(precision) / 1e12:.3f} TFLOP/s ({report.peaks[precision][1]})"
        )
    cache: dict = {}
    for pair in cfg.pairs:
        log(f"{pair}: building")
        res, steps, on = _pair(session, cfg, pair, cache)
        b, s = (cfg.dec_batch, cfg.dec_seq) if pair == "fused_qv" else (cfg.batch, cfg.seq)
        for p, trainable in on.flags:
            p.requires_grad_(trainable)
        res.flops = step_flops(on.model, b, s).train
        log(f"{pair}: {res.off} vs {res.on}, {cfg.warmup} warm-up + {cfg.reps} interleaved rounds")
        res.stats = session.time(steps, cfg.reps, warmup=cfg.warmup)
        res.ratio = paired_ratio(res.stats["on"], res.stats["off"])
        res.cpu_ratio = paired_ratio(res.stats["on"], res.stats["off"], clock="cpu")
        log(f"{pair}: on / off {res.ratio}")
        report.pairs.append(res)
        del steps, on
        session.free()
    report.groups = group_by_length(cfg, log)
    if out is not None:
        render(report, session).write(out)
    return report


def _precision(cfg: FastPathConfig, pair: str) -> str:
    """The matmul precision of a pair's steps: bf16 under autocast (every pair with `amp`, the bf16-frozen pair
    always), else fp32."""
    return "bf16" if cfg.amp or pair == "bf16_frozen" else "fp32"


def render(report: FastPathReport, session: Session) -> Report:
    cfg = report.cfg
    rows, shown = [], []
    for r in report.pairs:
        off, on = r.stats["off"], r.stats["on"]
        peak = report.peak(_precision(cfg, r.pair))
        mfu = lambda st, r=r, peak=peak: r.flops / st.median / peak  # noqa: E731
        rows.append({
            "pair": r.pair, "model": r.model, "shape": r.shape, "method": r.method, "off": r.off, "on": r.on,
            "off_ms_median": 1e3 * off.median, "on_ms_median": 1e3 * on.median, "on_vs_off_median": r.ratio.median,
            "on_vs_off_low": r.ratio.low, "on_vs_off_high": r.ratio.high, "on_vs_off_minima": r.ratio.of_minima,
            "on_vs_off_cpu_median": r.cpu_ratio.median, "step_tflop": r.flops / 1e12,
            "precision": _precision(cfg, r.pair), "peak_tflops": peak / 1e12, "mfu_off": mfu(off),
            "mfu_on": mfu(on), "switch": SWITCH[r.pair], "tolerance": TOLERANCE[r.pair], "note": r.note,
        })  # fmt: skip
        shown.append([
            r.pair, SWITCH[r.pair], f"{r.model}, {r.shape}, {r.method}", f"{r.off} -> {r.on}", f"{1e3 * off.median:,.1f}",
            f"{1e3 * on.median:,.1f}", f"{r.ratio.median:.3f} ({r.ratio.low:.3f}-{r.ratio.high:.3f})",
            f"{r.cpu_ratio.median:.3f}", f"{100 * mfu(off):.1f}% -> {100 * mfu(on):.1f}%", TOLERANCE[r.pair], r.note,
        ])  # fmt: skip
    columns = ["pair", "switch (default)", "model, batch x seq, method", "off -> on", "off ms (median)",
               "on ms (median)", "on / off, wall (median, range)", "on / off, CPU time", "MFU off -> on",
               "kept within (test)", "note"]  # fmt: skip
    amp = "bf16 autocast (as `train.bf16`)" if cfg.amp else "fp32 (no autocast)"
    rep = session.report("# Fast-path switches: each off vs on, side by side")
    rep.text(
        f"- device {session.device.type}; every step {amp}, except the bf16-frozen pair (both sides bf16 autocast); "
        f"models from their configs with random weights, {cfg.layers or 'all'} layers; LoRA as the paper ran it on "
        "each model (`lora.bench.training.PAPER_OPTIONS`)",
        "- a step: forward + backward + AdamW + gradients freed; per pair the two steps run interleaved, "
        f"{cfg.warmup} warm-up + {cfg.reps} timed rounds, in the same process; *on / off* is the median over "
        "rounds of the per-round ratio (below 1: the switch is faster), its range in brackets, and the median "
        "ratio of process CPU times",
        "- MFU = model FLOPs of the step (`lora.bench.flops`: 6 N T + 3 A for full FT, 4 (N + N_a) T + 2 N_t T + "
        "3 A for LoRA) / median step time / the peak of the pair's precision: "
        + "; ".join(f"{k} {v / 1e12:,.3f} TFLOP/s ({where})" for k, (v, where) in report.peaks.items()),
        "- the CSV beside this report holds the raw values",
    )
    rep.table(pd.DataFrame(rows), "pairs", shown=pd.DataFrame(shown, columns=columns))
    if report.groups:
        rep.heading("Length-grouped batches (`train.group_by_length`, default false)")
        rep.text(
            "Padded tokens of one epoch (the first 8,192 training examples of each GLUE task found locally, "
            "tokenised by the tiny test BPE, max length 512, batches of the roberta_base_lora experiment's global "
            "batch): transformers' LengthGroupedSampler (`train.group_by_length=true`) vs a random order. Every "
            "example is seen once either way (tests/test_fast_path.py); the step time follows the padded tokens."
        )
        g = pd.DataFrame([{"task": x.task, "examples": x.examples, "batch": x.batch, "random_tokens": x.random_tokens,
                           "grouped_tokens": x.grouped_tokens, "grouped_vs_random": x.ratio} for x in report.groups])  # fmt: skip
        rep.table(g, "group_by_length", formats={"examples": ",d", "random_tokens": ",d", "grouped_tokens": ",d", "grouped_vs_random": ".3f"},
                  columns={"random_tokens": "padded tokens, random", "grouped_tokens": "padded tokens, grouped", "grouped_vs_random": "grouped / random"})  # fmt: skip
    return rep.machine()


def with_overrides(cfg: FastPathConfig, **kw: object) -> FastPathConfig:
    return replace(cfg, **{k: v for k, v in kw.items() if v is not None})
