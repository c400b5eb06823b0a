"""Fine-tuning baselines of the LoRA paper (Section 5.1): full fine-tuning (FT) and FT^Top2, which trains only the
last two transformer layers (the baseline of Li & Liang, 2021, on GPT-2).

Neither changes the model; `inject` only reports which parameters to train.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lora.architectures import layer_list
from lora.errors import ConfigError
from lora.methods.base import Injection


@dataclass
class FullConfig:
    """Full fine-tuning has no options: every parameter is trained."""


@dataclass
class TopLayersConfig:
    """n_layers: how many of the last transformer layers to train (FT^Top2: 2)."""

    n_layers: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.n_layers, bool) or not isinstance(self.n_layers, int) or self.n_layers <= 0:
            raise ConfigError(f"ft_top2 n_layers must be a positive integer, got {self.n_layers!r}")


def inject_full(model: nn.Module, cfg: FullConfig) -> Injection:
    """Every parameter (tied weights once)."""
    return Injection(method="full", trainable=[n for n, _ in model.named_parameters()])


def inject_top(model: nn.Module, cfg: TopLayersConfig) -> Injection:
    """Every parameter of the last `n_layers` transformer layers (not the embeddings, not the final norm)."""
    prefix, blocks = layer_list(model)
    if cfg.n_layers > len(blocks):
        raise ConfigError(f"ft_top2 n_layers={cfg.n_layers} exceeds the model's {len(blocks)} layers")
    first = len(blocks) - cfg.n_layers
    names = [f"{prefix}.{i}.{n}" for i in range(first, len(blocks)) for n, _ in blocks[i].named_parameters()]
    return Injection(method="ft_top2", trainable=names)
