"""What every method shares: the injection report, module surgery, and a projection that keeps base keys."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from lora.errors import ConfigError


@dataclass
class Injection:
    """What `inject(model, cfg)` changed.

    method: the method's name (`lora`, `adapter_h`, ...).
    modules: paths of the modules that were wrapped or added.
    trainable: the exact parameter names the method trains (chosen explicitly, never by substring matching).
    """

    method: str
    modules: list[str] = field(default_factory=list)
    trainable: list[str] = field(default_factory=list)


def get_module(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path)


def set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def parameter_names(model: nn.Module, module: nn.Module, names: list[str]) -> list[str]:
    """Full names (as in `model.named_parameters()`) of `module`'s own parameters `names`."""
    for path, m in model.named_modules():
        if m is module:
            return [f"{path}.{n}" if path else n for n in names]
    raise ConfigError("module is not part of the model")


class Projection(nn.Module):
    """An affine map that holds a base `nn.Linear` or GPT-2 `Conv1D`'s own `weight` and `bias`.

    Keeping the same parameter objects under the same names means a wrapped model's state dict has every base key
    unchanged, so pretrained checkpoints load as they are. `Conv1D` stores its weight transposed, (d_in, d_out);
    `fan_in_fan_out` records that. `base_forward` computes exactly what the wrapped module computed.
    """

    def __init__(self, base: nn.Linear | Conv1D):
        super().__init__()
        if not isinstance(base, nn.Linear | Conv1D):
            raise TypeError(f"can only wrap nn.Linear or transformers Conv1D, not {type(base).__name__}")
        self.fan_in_fan_out = isinstance(base, Conv1D)
        self.weight = base.weight
        self.bias = base.bias
        d0, d1 = base.weight.shape
        self.in_features, self.out_features = (d0, d1) if self.fan_in_fan_out else (d1, d0)

    def base_forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d_in) -> (..., d_out), bit-identical to the wrapped module's forward."""
        if self.fan_in_fan_out:
            out = torch.addmm(self.bias, x.reshape(-1, x.size(-1)), self.weight)
            return out.view(*x.shape[:-1], self.out_features)
        return F.linear(x, self.weight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_forward(x)

    def as_matrix(self, delta: torch.Tensor) -> torch.Tensor:
        """Lay out a (d_out, d_in) update the way this module stores its weight."""
        return delta.T if self.fan_in_fan_out else delta

    def unwrap(self) -> nn.Linear | Conv1D:
        """A plain module sharing this projection's weight and bias (for exporting a merged model)."""
        if self.fan_in_fan_out:
            plain = Conv1D(self.out_features, self.in_features)
        else:
            plain = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        plain.to(device=self.weight.device, dtype=self.weight.dtype)
        plain.weight = self.weight
        plain.bias = self.bias
        return plain

    def extra_repr(self) -> str:
        kind = "Conv1D" if self.fan_in_fan_out else "Linear"
        return f"{kind}(in={self.in_features}, out={self.out_features}, bias={self.bias is not None})"
