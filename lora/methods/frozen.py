"""The pretrained model as it is: nothing injected, nothing trained (the "before adaptation" baseline)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lora.methods.base import Injection


@dataclass
class FrozenConfig:
    """No options: `method=none` evaluates the base model (with `train.max_steps=0`)."""


def inject(model: nn.Module, cfg: FrozenConfig) -> Injection:
    return Injection(method="none")
