"""Adapter-only checkpoints (any method) and export of LoRA weights to the peft format.

A checkpoint is a directory with `adapter.safetensors` (the method's trained parameters and, optionally, the task
head, under the model's own parameter names) and `adapter_config.json` (method, its config, and the model it was
trained on). Only safetensors is read: nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from lora import methods
from lora.errors import ConfigError, InputNotFound
from lora.methods.base import Injection
from lora.methods.lora import FusedLoRA, LoRAConfig, LoRALinear, lora_modules
from lora.models import head_parameter_names

WEIGHTS, CONFIG = "adapter.safetensors", "adapter_config.json"
FORMAT = "lora-suite-adapter/1"


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _model_signature(model: nn.Module) -> dict[str, Any]:
    cfg = model.config
    return {
        "model_type": cfg.model_type,
        "hidden_size": getattr(cfg, "hidden_size", None),
        "num_layers": getattr(cfg, "num_hidden_layers", None),
    }


def save_adapter(
    model: nn.Module,
    directory: str | os.PathLike,
    method: str,
    cfg: Any,
    report: Injection,
    head: bool = True,
) -> Path:
    """Write the parameters in `report.trainable` (and the task head) to `directory`. Returns the directory."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    params = dict(model.named_parameters())
    head_names = head_parameter_names(model) if head else []
    tensors = {n: params[n].detach().cpu().contiguous() for n in list(report.trainable) + head_names}
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{WEIGHTS}.")
    os.close(fd)
    try:  # temp file + fsync + rename: a crash leaves the previous adapter or the new one, never part of one
        save_file(tensors, tmp, metadata={"format": FORMAT})
        fd = os.open(tmp, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        os.replace(tmp, out / WEIGHTS)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    meta = {
        "format": FORMAT,
        "method": method,
        "config": asdict(cfg),
        "model": _model_signature(model),
        "trainable": list(report.trainable),
        "head": head_names,
        "shapes": {n: list(t.shape) for n, t in tensors.items()},
    }
    _atomic_write_text(out / CONFIG, json.dumps(meta, indent=2))
    return out


def read_adapter_config(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise InputNotFound(f"no adapter at {directory}: {CONFIG} is missing")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{path} is not an adapter written by this suite (format {meta.get('format')!r})")
    return meta


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a truncated or corrupt file is a one-line error."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except FileNotFoundError:
        raise InputNotFound(f"adapter weights not found: {path}") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ConfigError(f"{path} is not a readable safetensors file (truncated or corrupt?): {e}") from None


def load_adapter(
    model: nn.Module, directory: str | os.PathLike, head: bool = True, assign: bool = False
) -> Injection:
    """Inject the saved method into `model` (unless it already carries it) and load the saved weights.

    head=False skips the task head (e.g. starting MRPC from an MNLI adapter, whose head has 3 labels).
    assign=True puts the saved tensors themselves in place of the parameters instead of copying into them: this
    loads into a model built on the `meta` device (`lora.export` reads a LoRA run's factors that way, without the
    base weights).
    A checkpoint from another architecture or size is a clear error, before anything is changed.
    """
    meta = read_adapter_config(directory)
    tensors = read_tensors(Path(directory) / WEIGHTS)
    ours, theirs = _model_signature(model), meta["model"]
    if ours != theirs:
        raise ConfigError(
            f"adapter at {directory} was trained on a {theirs.get('model_type')} model of width "
            f"{theirs.get('hidden_size')} with {theirs.get('num_layers')} layers; this is a {ours['model_type']} "
            f"model of width {ours['hidden_size']} with {ours['num_layers']} layers; pass an adapter trained on "
            "this model (or init_from=null)"
        )
    method = meta["method"]
    cfg = methods.method_config(method, **meta["config"])
    params = dict(model.named_parameters())
    names = [n for n in tensors if head or n not in set(meta["head"])]
    # Inject unless every saved name exists. Some methods also train parameters the base model has (adapter_h's
    # layer norms), so a fresh model may hold part of the names; a model that carries part of the method's own
    # modules is refused by the method's `inject` ("already carries ...").
    if any(n not in params for n in meta["trainable"]):
        report = methods.apply(model, method, cfg, head=head_parameter_names(model))
        params = dict(model.named_parameters())
    else:
        report = Injection(method=method, trainable=list(meta["trainable"]))
    for n in names:
        if n not in params:
            raise ConfigError(f"adapter at {directory} has parameter {n!r}, which this model does not have")
        if tuple(params[n].shape) != tuple(tensors[n].shape):
            raise ConfigError(
                f"adapter at {directory}: {n} has shape {tuple(tensors[n].shape)} but the model's is "
                f"{tuple(params[n].shape)} (trained on another model size?)"
            )
    if assign:
        model.load_state_dict({n: tensors[n] for n in names}, strict=False, assign=True)
        return report
    with torch.no_grad():
        for n in names:
            params[n].copy_(tensors[n])
    return report


def export_peft(
    model: nn.Module, directory: str | os.PathLike, cfg: LoRAConfig, base_model: str | None = None
) -> Path:
    """Write our LoRA weights as a peft adapter (`adapter_config.json` + `adapter_model.safetensors`) that
    `peft.PeftModel.from_pretrained` loads to the same outputs.

    peft has no per-slice LoRA on a fused projection, so k adapted slices of one (GPT-2 `c_attn`, Phi-3 `qkv_proj`
    and `gate_up_proj`) become the exactly equivalent rank-(k r) LoRA over the whole module (`FusedLoRA.stacked`):
    GPT-2's q/v LoRA is A stacked [A_q; A_v] (2r, d), B block-structured (3d, 2r) with B_q in the q rows and B_v in
    the v rows; on Phi-3 under GQA the q rows are wider than the v rows, each at its own offset. Each such module
    gets rank k r and alpha k alpha in `rank_pattern` / `alpha_pattern`, so that alpha/r, the scaling, is unchanged.
    `base_model`: the hub id or local path the model came from (`base_model_name_or_path`).
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    fan_in_fan_out = False
    for path, m in lora_modules(model):
        key = f"base_model.model.{path}"
        fan_in_fan_out |= m.fan_in_fan_out
        if isinstance(m, LoRALinear):
            a, b = m.lora_A.detach(), m.lora_B.detach()
        elif isinstance(m, FusedLoRA):
            with torch.no_grad():
                a, b = m.stacked()  # B: each slice's rows at its own offset and width (unequal under GQA)
            if len(m.slices) > 1:
                ranks[path] = a.shape[0]
                alphas[path] = cfg.alpha * len(m.slices)
        else:  # pragma: no cover
            raise TypeError(type(m))
        tensors[f"{key}.lora_A.weight"] = a.cpu().contiguous()
        tensors[f"{key}.lora_B.weight"] = b.cpu().contiguous()
    heads = head_parameter_names(model)
    params = dict(model.named_parameters())
    for n in heads:
        tensors[f"base_model.model.{n}"] = params[n].detach().cpu().contiguous()
    save_file(tensors, str(out / "adapter_model.safetensors"))
    head_modules = sorted({n.rsplit(".", 2)[0] if n.count(".") >= 2 else n.split(".")[0] for n in heads})
    peft_cfg = {
        "peft_type": "LORA",
        "task_type": "SEQ_CLS" if heads else "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": cfg.r,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": [p for p, _ in lora_modules(model)],
        "rank_pattern": ranks,
        "alpha_pattern": alphas,
        "fan_in_fan_out": fan_in_fan_out,
        "bias": "none",
        "modules_to_save": head_modules or None,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
    }
    _atomic_write_text(out / "adapter_config.json", json.dumps(peft_cfg, indent=2))
    return out
