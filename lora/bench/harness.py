"""The harness every benchmark runs on, so that each benchmark module holds only what it measures.

    session = Session(device="cpu", dtype="float32", threads=1, command="python experiments/bench.py ...")
    base = session.build("roberta-base", "classification")             # from config, random weights
    lora = with_method(base, "lora", cfg)                                # weight-sharing copy + its grad flags
    step = lora.step(session.inputs(base, batch=8, seq=128))             # forward + backward + AdamW, grads freed
    memory = session.memory(lora, step)                                  # exact bytes + measured peak
    stats = session.time({"lora": step, ...}, reps=5)                    # interleaved: side by side, same rounds
    report = session.report("# Title")                                   # Markdown + CSV, via pandas
    report.text("..."); report.table(frame, "section"); report.write(Path("results/bench/x.md"))

- `Session`: one benchmark process: the device, dtype and torch threads, the load average and clock at its start,
  the log; builds models (`build`) and inputs (`inputs`), measures memory (`memory`) and times variants side by side
  (`time`: `lora.bench.timing.interleaved`, every variant once per round in a rotated order).
- `with_method` / `Variant`: a copy of a base model sharing its weights (no copies), a method applied, the
  `requires_grad` flags it needs (they live on the shared tensors, so a variant sets its own before each step),
  its AdamW, and its training step.
- `Report`: a report's Markdown (title, the exact command, text, tables, figures, the machine) and a CSV beside it
  holding every table's raw values (column `table` names the table), both written from pandas DataFrames.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from lora import methods
from lora.bench.timing import (
    Stats,
    interleaved,
    load_average,
    machine_lines,
    optimizer_state_bytes,
    parameter_bytes,
    peak_bytes,
    resolve_device,
    set_threads,
    sync,
    threads_line,
)
from lora.errors import ConfigError
from lora.models import build_model, head_parameter_names, is_classifier

Inputs = dict[str, torch.Tensor]


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

    @property
    def exact(self) -> int:
        """Parameters + gradients + optimizer state, in bytes, computed from the tensors."""
        return self.params + self.grads + self.optimizer


def dtype_of(name: str) -> torch.dtype:
    if not hasattr(torch, name) or not isinstance(getattr(torch, name), torch.dtype):
        raise ConfigError(f"unknown dtype {name!r}: use float32, bfloat16 or float16")
    return getattr(torch, name)


def sharing_copy(model: nn.Module) -> nn.Module:
    """A copy of `model`'s module tree whose parameters are the same tensors as `model`'s (no weight copies)."""
    return copy.deepcopy(model, memo={id(p): p for p in model.parameters()})


def make_inputs(model: nn.Module, batch: int, seq: int, device: torch.device, seed: int = 0) -> Inputs:
    """input_ids (batch, seq) of non-special random ids, an all-ones mask and labels: the ids themselves for a
    causal LM (next-token loss), random classes (batch,) for a classifier, none for a bare model."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, model.config.vocab_size, (batch, seq), generator=g)
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if is_classifier(model):
        out["labels"] = torch.randint(0, model.config.num_labels, (batch,), generator=g)
    elif hasattr(model, "lm_head") or type(model).__name__.endswith("ForCausalLM"):
        out["labels"] = ids.clone()
    return {k: v.to(device) for k, v in out.items()}


def training_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    inputs: Inputs,
    flags: list[tuple[nn.Parameter, bool]] | None = None,
    autocast: torch.dtype | None = None,
) -> Callable[[], None]:
    """One step: the variant's `requires_grad` flags (when given), forward and backward (under autocast to
    `autocast`, as the Trainer's mixed precision, when given), optimizer step, gradients freed
    (`zero_grad(set_to_none=True)`), so no variant's gradients outlive its step."""
    device_type = next(iter(inputs.values())).device.type

    def step() -> None:
        for p, trainable in flags or ():
            p.requires_grad_(trainable)
        with torch.autocast(device_type, dtype=autocast) if autocast is not None else nullcontext():
            loss = model(**inputs).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def forward_pass(model: nn.Module, inputs: Inputs | torch.Tensor) -> Callable[[], None]:
    """One forward under `torch.inference_mode()`, without labels (and `use_cache=False` for bare input ids)."""
    kwargs = (
        {"input_ids": inputs, "use_cache": False}
        if isinstance(inputs, torch.Tensor)
        else {k: v for k, v in inputs.items() if k != "labels"}
    )

    def forward() -> None:
        with torch.inference_mode():
            model(**kwargs)

    return forward


@dataclass
class Variant:
    """A model to train: `model` (sharing its frozen weights with the base it was made from), the `requires_grad`
    flags of its parameters, and the trainable ones."""

    model: nn.Module
    flags: list[tuple[nn.Parameter, bool]]
    opt: torch.optim.Optimizer | None = None

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for p, trainable in self.flags if trainable]

    @property
    def trainable(self) -> int:
        return sum(p.numel() for p in self.params)

    def optimizer(self, lr: float = 1e-4, **kw: Any) -> torch.optim.Optimizer:
        """Its AdamW over the trainable parameters (made once)."""
        if self.opt is None:
            self.opt = torch.optim.AdamW(self.params, lr=lr, **kw)
        return self.opt

    def step(
        self, inputs: Inputs, lr: float = 1e-4, autocast: torch.dtype | None = None, **opt_kw: Any
    ) -> Callable[[], None]:
        """Its training step (`training_step`) with its flags and AdamW (`opt_kw`, e.g. fused=True)."""
        return training_step(self.model.train(), self.optimizer(lr, **opt_kw), inputs, self.flags, autocast)


def with_method(
    base: nn.Module, method: str, cfg: Any = None, head: bool = True, share: bool = True
) -> Variant:
    """`method` (its config `cfg`, else its defaults) applied to a copy of `base` that shares its weights
    (`share=False`: a deep copy), the task head trained too (`head`)."""
    model = sharing_copy(base) if share else copy.deepcopy(base)
    cfg = cfg if cfg is not None else methods.method_config(method)
    methods.apply(model, method, cfg, head=head_parameter_names(model) if head else ())
    return Variant(model, [(p, p.requires_grad) for p in model.parameters()])


class Session:
    """One benchmark process. device: cpu, cuda, cuda:N or auto; dtype: float32, bfloat16, ...; threads: torch's
    CPU threads (None: leave torch's default); command: what the reports say made them; log: progress lines."""

    def __init__(
        self,
        device: str = "cpu",
        dtype: str = "float32",
        threads: int | None = None,
        command: str = "",
        log: Callable[[str], None] = print,
    ):
        self.device = resolve_device(device)
        self.dtype = dtype_of(dtype)
        set_threads(threads)
        self.command, self.log = command, log
        self.t0, self.load_at_start = time.perf_counter(), load_average()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0

    def build(
        self,
        name: str,
        kind: str | None = None,
        layers: int | None = None,
        overrides: Mapping[str, Any] | None = None,
        dtype: torch.dtype | None = None,
        **kw: Any,
    ) -> nn.Module:
        """`name` built from its config (random weights: time and memory depend on shapes only) for `kind`
        (default: the family's, `causal_lm` or `classification`), on this device, in this dtype; `layers`
        replaces its depth; `kw` goes to `lora.models.build_model` (e.g. attn_implementation)."""
        from lora.models import default_kind

        over = dict(overrides or {})
        if layers is not None:
            over["num_hidden_layers"] = layers
        model = build_model(
            name, kind or default_kind(name), pretrained=False, device=self.device, overrides=over, **kw
        )
        return model.to(dtype or self.dtype)

    def inputs(self, model: nn.Module, batch: int, seq: int, seed: int = 0) -> Inputs:
        return make_inputs(model, batch, seq, self.device, seed)

    def memory(self, variant: Variant, step: Callable[[], None], warm: bool = True) -> Memory:
        """Run `step` once (`warm`: it creates the AdamW state, so the measured step is a steady-state one), then
        once more measuring its peak allocations (`lora.bench.timing.peak_bytes`)."""
        if warm:
            step()
        extra = peak_bytes(step, self.device)
        opt = variant.opt
        return Memory(
            parameter_bytes(variant.model),
            sum(p.numel() * p.element_size() for p in variant.params),
            optimizer_state_bytes(opt) if opt is not None else 0,
            extra,
        )

    def time(
        self, fns: Mapping[str, Callable[[], object]], reps: int, warmup: int = 1, progress: bool = True
    ) -> dict[str, Stats]:
        """Every function `reps` times, side by side (interleaved rounds), after `warmup` untimed rounds."""
        return interleaved(fns, reps, self.device, warmup=warmup, progress=self.log if progress else None)

    def sync(self) -> None:
        sync(self.device)

    def free(self) -> None:
        """Release cached device memory between parts of a benchmark."""
        import gc

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def report(self, title: str) -> Report:
        return Report(title, self)


@dataclass
class Report:
    """A benchmark report: Markdown blocks in order, and the raw tables for the CSV written beside it."""

    title: str
    session: Session
    blocks: list[str] = field(default_factory=list)
    frames: list[pd.DataFrame] = field(default_factory=list)

    def text(self, *lines: str) -> Report:
        """Lines of Markdown (one block; an empty string is a blank line)."""
        self.blocks.append("\n".join(lines))
        return self

    def heading(self, text: str, level: int = 2) -> Report:
        return self.text("#" * level + " " + text)

    def table(
        self,
        frame: pd.DataFrame,
        name: str,
        formats: Mapping[str, Callable[[Any], str] | str] | None = None,
        columns: Mapping[str, str] | None = None,
        shown: pd.DataFrame | None = None,
    ) -> Report:
        """`frame` into the CSV with its raw values (column `table` = `name`) and as a Markdown table: each column
        through `formats` (a callable or a format spec such as `",.1f"`; missing values blank), renamed by
        `columns`; or `shown`, a frame of the Markdown's own (composite cells such as `mean ± std`)."""
        if shown is None:
            shown = frame.copy()
            for col, fmt in (formats or {}).items():
                f = fmt if callable(fmt) else (lambda v, spec=fmt: "" if _missing(v) else format(v, spec))
                shown[col] = [f(v) for v in frame[col]]
            shown = shown.rename(columns=dict(columns or {}))
        shown = shown.astype(str).replace({"nan": "", "None": "", "<NA>": ""})
        self.blocks.append(shown.to_markdown(index=False, disable_numparse=True))
        self.frames.append(frame.assign(table=name)[["table", *frame.columns]])
        return self

    def figure(self, path: Path | None, alt: str) -> Report:
        if path is not None:
            self.text(f"![{alt}]({path.name})")
        return self

    def machine(self, dtype: torch.dtype | None = None, threads: bool = True) -> Report:
        s = self.session
        lines = machine_lines(s.device, dtype or s.dtype, s.load_at_start)
        return self.text("## Machine", "", *lines, *([threads_line(s.device)] if threads else []))

    def markdown(self) -> str:
        head = f"{self.title}\n\nMade by: `{self.session.command}` (total {self.session.seconds:.0f} s)."
        return "\n\n".join([head, *self.blocks]) + "\n"

    def csv_frame(self) -> pd.DataFrame:
        return pd.concat(self.frames, ignore_index=True).convert_dtypes() if self.frames else pd.DataFrame()

    def write(self, path: Path, log: Callable[[str], None] | None = None) -> Path:
        """Write the Markdown to `path` and the CSV beside it (`path` with `.csv`); say so through `log`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.markdown())
        csv = path.with_suffix(".csv")
        self.csv_frame().to_csv(csv, index=False)
        (log or self.session.log)(f"wrote {path} and {csv.name}")
        return path


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v)
