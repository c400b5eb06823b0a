"""BitFit: train only the bias terms (Ben Zaken et al., 2021; the LoRA paper's "Bias-only or BitFit" baseline,
Section 5.1).

Every module of the backbone contributes its own `bias` parameter when it has one: the attention and
feed-forward projections (shape (d_out,)) and the LayerNorm shifts (shape (d,)). The biases are listed module by
module, never by matching parameter names. The task head (trained by every method, not counted) is left to
`lora.methods.apply`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lora.errors import ConfigError
from lora.methods.base import Injection


@dataclass
class BitFitConfig:
    """BitFit has no options: it trains every bias of the backbone."""


def inject(model: nn.Module, cfg: BitFitConfig) -> Injection:
    """Report the `bias` of every backbone module (tied biases once); the model is not changed. A model without
    biases (Llama) is an error."""
    backbone = {id(m) for m in model.base_model.modules()}
    names, seen = [], set()
    for path, module in model.named_modules():
        bias = getattr(module, "bias", None)
        if id(module) in backbone and isinstance(bias, nn.Parameter) and id(bias) not in seen:
            seen.add(id(bias))
            names.append(f"{path}.bias" if path else "bias")
    if not names:
        raise ConfigError(f"bitfit: this {model.config.model_type} model has no bias terms to train")
    return Injection(method="bitfit", trainable=names)
