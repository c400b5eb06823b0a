"""Exports of a finished run, in the formats other tools load.

- `peft`: a peft LoRA adapter folder (`adapter_config.json` + `adapter_model.safetensors`) that
  `peft.PeftModel.from_pretrained(base, folder)` loads to the run's outputs; its `base_model_name_or_path` names
  the base model the run used (its hub id, else its local directory, else the registered name of a tiny model).
  LoRA runs only. Needs no base weights: the model is built on the `meta` device and only the run's LoRA factors
  (and task head) are read.
- `merged`: a plain transformers checkpoint folder (config.json of the base family, safetensors weights, the
  tokenizer) that `AutoModelForCausalLM` / `AutoModelForSequenceClassification.from_pretrained` loads with no trace
  of this package: LoRA merged into the weights (W0 + (alpha/r) B A) and its wrappers replaced by the original
  `nn.Linear` / `Conv1D` modules (`lora.methods.lora.unload`). For LoRA and for the methods that only train the
  base model's own parameters (full, ft_top2, bitfit). Adapters and prefixes stay in the forward pass: no merged
  form, a one-line error.

A run is named by its run directory (`outputs/runs/<run>`), its adapter directory (`outputs/runs/<run>/adapter`),
its bare name, or its record (`results/runs/<run>.json`). The record (found under `results_dir` by the run's name)
says which model, task and method the run used; the adapter holds the trained weights.

    python experiments/export.py run=outputs/runs/<run> format=peft      # -> outputs/runs/<run>/peft
    python experiments/export.py run=results/runs/<run>.json format=merged out=/tmp/merged
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from lora import records
from lora.checkpoint import CONFIG, export_peft, load_adapter, read_adapter_config
from lora.errors import ConfigError, InputNotFound
from lora.methods.lora import LoRAConfig, lora_modules, unload
from lora.models import Kind, ModelSpec, build_model, build_tokenizer, resolve, spec

FORMATS: tuple[str, ...] = ("peft", "merged")
# Methods that train only parameters the base model already has: the trained model is a plain transformers model.
PLAIN_METHODS: tuple[str, ...] = ("full", "ft_top2", "bitfit")
MERGED_METHODS: tuple[str, ...] = ("lora", *PLAIN_METHODS)


@dataclass(frozen=True)
class FinishedRun:
    """A complete run: its name (the record file's stem), its record and its adapter directory."""

    name: str
    record: records.RunRecord
    adapter: Path

    @property
    def directory(self) -> Path:
        """The run directory (`<output_dir>/<run>`), where exports go by default."""
        return self.adapter.parent

    @property
    def model(self) -> ModelSpec:
        m = self.record.config.get("model") or {}
        return resolve(m.get("name"), hub=m.get("hub"), path=m.get("path"))

    @property
    def kind(self) -> Kind:
        return (
            "causal_lm" if (self.record.config.get("task") or {}).get("kind") == "nlg" else "classification"
        )

    @property
    def num_labels(self) -> int:
        if self.kind != "classification":
            return 0
        from lora.data.glue import get_task

        return get_task(self.record.task).num_labels

    def build(self, pretrained: bool, device: str = "cpu") -> nn.Module:
        """The base model as the run built it (random weights with pretrained=False; `meta`: shapes only)."""
        m = self.record.config.get("model") or {}
        return build_model(
            self.model, self.kind, num_labels=self.num_labels, pretrained=pretrained, device=device,
            trust_remote_code=bool(m.get("trust_remote_code", False)),
        )  # fmt: skip


def _read_record(path: Path) -> records.RunRecord:
    try:
        return records.RunRecord.from_json(path.read_text(), source=path)
    except FileNotFoundError:
        raise InputNotFound(f"no run record {path}") from None
    except Exception as e:  # bad JSON or a record that fails validation
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{path} is not a run record ({msg})") from None


def find_run(run: str | os.PathLike, results_dir: str | os.PathLike = "results/runs") -> FinishedRun:
    """The finished run `run` names: a record JSON, a run directory, its adapter directory, or a bare run name
    (its record looked up under `results_dir`). Errors are one line: no such run, no record, not complete, no
    adapter."""
    p = Path(run).expanduser()
    if p.suffix == ".json":
        record = _read_record(p)
        name = records.record_filename(record).removesuffix(".json")
        adapter = Path(record.config.get("output_dir", "outputs/runs")) / name / "adapter"
    else:
        if p.is_dir():
            adapter, name = (
                (p, p.resolve().parent.name) if (p / CONFIG).is_file() else (p / "adapter", p.name)
            )
        elif os.sep in str(run) or not str(run):
            raise InputNotFound(f"run {run}: no such run directory (outputs/runs/<run>) or record (.json)")
        else:
            adapter, name = None, str(run)
        found = sorted(Path(results_dir).rglob(f"{name}.json")) if Path(results_dir).is_dir() else []
        if not found:
            raise InputNotFound(
                f"no record of run {name} under {results_dir}: pass the record's path (<results_dir>/<run>.json) "
                "or results_dir=<the run's results_dir>"
            )
        record = _read_record(found[0])
        if adapter is None:
            adapter = Path(record.config.get("output_dir", "outputs/runs")) / name / "adapter"
    if record.status != "complete":
        raise ConfigError(f"run {name} is {record.status}, not complete: only a finished run can be exported")
    if not (adapter / CONFIG).is_file():
        raise InputNotFound(
            f"run {name} has no adapter at {adapter} (trained with save_adapter=false, or method=none?)"
        )
    return FinishedRun(name, record, adapter)


def _check_format(fmt: str, method: str, name: str) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}: choose from {', '.join(FORMATS)}")
    if fmt == "peft" and method != "lora":
        hint = "use format=merged" if method in MERGED_METHODS else "it has no peft form"
        raise ConfigError(f"run {name} trained {method}: only LoRA runs export as a peft adapter ({hint})")
    if fmt == "merged" and method not in MERGED_METHODS:
        raise ConfigError(
            f"run {name} trained {method}, which has no merged form (its modules stay in the forward pass): "
            f"only {', '.join(MERGED_METHODS)} runs export as a merged checkpoint"
        )


def _fresh(out: Path, overwrite: bool) -> Path:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ConfigError(f"{out} exists: remove it, give another out=, or overwrite=true")
    out.mkdir(parents=True, exist_ok=True)
    return out


def export_merged(model: nn.Module, directory: str | os.PathLike, tokenizer: Any = None) -> Path:
    """Save `model` as a plain transformers checkpoint: LoRA merged and unwrapped (`unload`), then
    `save_pretrained` (and the tokenizer's). A model that still holds modules of this package afterwards
    (adapters, prefixes) has no plain form: a one-line error, before anything is written."""
    if lora_modules(model):
        unload(model, merge=True)
    foreign = [
        (n, m)
        for n, m in model.named_modules()
        if type(m).__module__.split(".")[0] not in ("torch", "transformers")
    ]
    if foreign:
        n, m = foreign[0]
        raise ConfigError(
            f"{n or 'the model'} is a {type(m).__name__} of {type(m).__module__}: this model has no merged form"
        )
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def export_run(
    run: str | os.PathLike,
    fmt: str,
    out: str | os.PathLike | None = None,
    results_dir: str | os.PathLike = "results/runs",
    device: str = "cpu",
    overwrite: bool = False,
) -> Path:
    """Export the finished run `run` (see `find_run`) as `fmt` (`peft` or `merged`) into `out` (default: the run
    directory's `peft/` or `merged/`). Returns the folder written."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}: choose from {', '.join(FORMATS)}")
    finished = find_run(run, results_dir)
    meta = read_adapter_config(finished.adapter)
    _check_format(fmt, meta["method"], finished.name)
    target = Path(out) if out is not None else finished.directory / fmt
    mspec = finished.model
    if fmt == "peft":
        model = finished.build(
            pretrained=False, device="meta"
        )  # shapes only: the factors are read as they are
        load_adapter(model, finished.adapter, head=True, assign=True)
        return export_peft(model, _fresh(target, overwrite), LoRAConfig(**meta["config"]), mspec.reference)
    pretrained = bool((finished.record.config.get("model") or {}).get("pretrained", True))
    model = finished.build(pretrained=pretrained, device=device).eval()
    load_adapter(model, finished.adapter, head=True)
    tokenizer = build_tokenizer(mspec)
    if model.config.pad_token_id is None:  # as the run set it (batched classification needs it)
        model.config.pad_token_id = tokenizer.pad_token_id
    return export_merged(model, _fresh(target, overwrite), tokenizer)


def base_model_reference(
    name: str | None, hub: str | None = None, path: str | os.PathLike | None = None
) -> str:
    """The hub id or local path a run's model came from (no hub access): `model.hub`, else the absolute
    `model.path`, else the registered model's hub id, else its name (tiny models)."""
    if hub:
        return hub
    if path:
        return str(Path(path).expanduser().resolve())
    s = spec(name)  # type: ignore[arg-type]
    return s.hub or s.name


def peft_beside(
    model: nn.Module, run_dir: str | os.PathLike, method: str, method_cfg: Any, model_cfg: Any
) -> Path | None:
    """During training: write the peft form of a LoRA run's adapter to `<run_dir>/peft` (nothing for other
    methods). `model_cfg`: the run's `ModelConfig` (names the base model)."""
    if method != "lora":
        return None
    base = base_model_reference(model_cfg.name, model_cfg.hub, model_cfg.path)
    return export_peft(model, Path(run_dir) / "peft", method_cfg, base)
