"""The methods compared in the paper, by name: `apply(model, name, cfg)` freezes the model and injects one.

Each method is one module with a config dataclass and `inject(model, cfg) -> Injection`; this file only maps names
to them and sets `requires_grad` on exactly the parameters a method reports (plus the task head, which every method
trains and the paper does not count).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

from torch import nn

from lora.errors import ConfigError
from lora.methods import adapters, bitfit, frozen, full, lora, prefix
from lora.methods.base import Injection

MethodSpec = tuple[type, Callable[[nn.Module, Any], Injection]]

METHODS: dict[str, MethodSpec] = {
    "lora": (lora.LoRAConfig, lora.inject),
    "adapter_h": (adapters.AdapterHConfig, adapters.inject_h),
    "adapter_l": (adapters.AdapterConfig, adapters.inject_l),
    "adapter_p": (adapters.AdapterConfig, adapters.inject_p),
    "adapter_d": (adapters.AdapterDConfig, adapters.inject_d),
    "prefix_embed": (prefix.PrefixEmbedConfig, prefix.inject_embed),
    "prefix_layer": (prefix.PrefixLayerConfig, prefix.inject_layer),
    "bitfit": (bitfit.BitFitConfig, bitfit.inject),
    "full": (full.FullConfig, full.inject_full),
    "ft_top2": (full.TopLayersConfig, full.inject_top),
    "none": (frozen.FrozenConfig, frozen.inject),
}


def method_config(name: str, **kwargs: Any) -> Any:
    """Build (and so validate) the config dataclass of method `name` from keyword arguments."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}: choose from {', '.join(METHODS)}")
    cls = METHODS[name][0]
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ConfigError(f"method {name!r} has no option(s) {unknown}; its options are {sorted(known)}")
    return cls(**kwargs)


def apply(model: nn.Module, name: str, cfg: Any, head: list[str] | tuple[str, ...] = ()) -> Injection:
    """Freeze `model`, inject method `name` with config `cfg`, and make trainable exactly the parameters the method
    reports plus `head` (the task head's parameter names). Returns the injection report."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}: choose from {', '.join(METHODS)}")
    for p in model.parameters():
        p.requires_grad_(False)
    report = METHODS[name][1](model, cfg)
    params = dict(model.named_parameters(remove_duplicate=False))
    missing = [n for n in list(report.trainable) + list(head) if n not in params]
    if missing:
        raise RuntimeError(f"method {name!r} reported parameters the model does not have: {missing[:3]}")
    for n in list(report.trainable) + list(head):
        params[n].requires_grad_(True)
    return report
