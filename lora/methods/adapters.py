"""Bottleneck adapters: the adapter baselines of the LoRA paper (Hu et al., 2021, Section 5.1).

An adapter maps a hidden vector y (..., d) to

    y + W_up act(W_down norm(y) + b_down) + b_up,    W_down: (m, d), W_up: (d, m), m = bottleneck,

with `norm` the identity except in AdapterL. W_down ~ N(0, init_std^2); W_up and b_up start at zero, so every
adapter is exactly the identity at first and training starts from the pretrained function (Houlsby et al., 2019,
initialise adapters "to a near-identity function", drawing weights with std 1e-2; a zero W_up makes it exact, like
LoRA's B = 0). Each adapter has 2 d m + m + d parameters; the paper counts
|Theta| = L_Adpt (2 d m + m + d) + 2 L_LN d (Section 5.1).

Placements, by the paper's names (an adapter wraps a projection: h = adapter(W x + b), before the residual add):
- `adapter_h` (Houlsby et al., 2019): after the attention output projection and after the feed-forward output
  projection of every layer; the layer norms of every layer are trained too (`train_norms`).
- `adapter_l` (Lin et al., 2020): one adapter after the feed-forward output projection, with its own trainable
  LayerNorm inside (LN -> down -> act -> up, residual): 2 d m + m + d + 2 d per layer (the paper's GPT-2 rows).
- `adapter_p` (Pfeiffer et al., 2021): one adapter after the feed-forward output projection.
- `adapter_d` (AdapterDrop, Rücklé et al., 2020): `adapter_p` with the adapters of the lowest `drop_layers` layers
  removed ("specialized AdapterDrop": the same layers are dropped in training and inference).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from lora.architectures import architecture, layer_list
from lora.methods.base import Injection, Projection, get_module, parameter_names, set_module

NONLINEARITIES: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}


@dataclass
class AdapterConfig:
    """bottleneck: m, the adapter's inner width; nonlinearity: between the two projections (`relu`, `gelu`,
    `silu` (= swish), `tanh`); init_std: std of the normal init of W_down (Houlsby et al.: 1e-2)."""

    bottleneck: int = 64
    nonlinearity: str = "relu"
    init_std: float = 1e-2

    def __post_init__(self) -> None:
        if isinstance(self.bottleneck, bool) or not isinstance(self.bottleneck, int) or self.bottleneck <= 0:
            raise ValueError(f"adapter bottleneck must be a positive integer, got {self.bottleneck!r}")
        if self.nonlinearity not in NONLINEARITIES:
            raise ValueError(
                f"unknown adapter nonlinearity {self.nonlinearity!r}: choose from {', '.join(NONLINEARITIES)}"
            )
        if not self.init_std >= 0:
            raise ValueError(f"adapter init_std must be >= 0, got {self.init_std!r}")


@dataclass
class AdapterHConfig(AdapterConfig):
    """Houlsby adapters. train_norms: also train every layer's layer norms (Houlsby et al., Section 2.1). The
    default nonlinearity is swish (`silu`), as in AdapterHub's Houlsby configuration."""

    nonlinearity: str = "silu"
    train_norms: bool = True


@dataclass
class AdapterDConfig(AdapterConfig):
    """AdapterDrop: drop_layers is the number of lowest layers that carry no adapter (0 = `adapter_p`)."""

    drop_layers: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        if (
            isinstance(self.drop_layers, bool)
            or not isinstance(self.drop_layers, int)
            or self.drop_layers < 0
        ):
            raise ValueError(f"adapter_d drop_layers must be an integer >= 0, got {self.drop_layers!r}")


class BottleneckAdapter(nn.Module):
    """y (..., d) -> y + up(act(down(norm(y)))); `down`: Linear(d, m), `up`: Linear(m, d) zero-initialised,
    `norm`: a fresh LayerNorm(d) when `layer_norm` (AdapterL), otherwise absent."""

    def __init__(
        self, d: int, cfg: AdapterConfig, layer_norm: bool, device: torch.device, dtype: torch.dtype
    ):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.norm = nn.LayerNorm(d, **kw) if layer_norm else None
        self.down = nn.Linear(d, cfg.bottleneck, **kw)
        self.act = NONLINEARITIES[cfg.nonlinearity]()
        self.up = nn.Linear(cfg.bottleneck, d, **kw)
        nn.init.normal_(self.down.weight, std=cfg.init_std)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        h = self.norm(y) if self.norm is not None else y
        return y + self.up(self.act(self.down(h)))


class AdaptedProjection(Projection):
    """A projection followed by an adapter: x (..., d_in) -> adapter(W x + b) (..., d_out). The base `weight` and
    `bias` keep their names (state-dict keys unchanged); the adapter's parameters live under `adapter.`."""

    def __init__(self, base: nn.Linear | Conv1D, cfg: AdapterConfig, layer_norm: bool = False):
        super().__init__(base)
        self.adapter = BottleneckAdapter(
            self.out_features, cfg, layer_norm, self.weight.device, self.weight.dtype
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.base_forward(x))


def _wrap(model: nn.Module, report: Injection, path: str, cfg: AdapterConfig, layer_norm: bool) -> None:
    base = get_module(model, path)
    if isinstance(base, AdaptedProjection):
        raise ValueError(f"{path} already carries an adapter; inject once per model")
    wrapper = AdaptedProjection(base, cfg, layer_norm)
    set_module(model, path, wrapper)
    report.modules.append(path)
    report.trainable += parameter_names(
        model, wrapper.adapter, [n for n, _ in wrapper.adapter.named_parameters()]
    )


def _inject(
    model: nn.Module, cfg: AdapterConfig, method: str, roles: tuple[str, ...], first_layer: int = 0,
    layer_norm: bool = False, train_norms: bool = False,
) -> Injection:  # fmt: skip
    """Wrap the `roles` projections (`attn_out`, `ffn_out`) of layers first_layer.. with adapters."""
    arch = architecture(model)
    prefix, blocks = layer_list(model)
    report = Injection(method=method)
    for i in range(first_layer, len(blocks)):
        for role in roles:
            _wrap(model, report, f"{prefix}.{i}.{getattr(arch, role)}", cfg, layer_norm)
        if train_norms:
            for rel in arch.norms:
                norm = get_module(model, f"{prefix}.{i}.{rel}")
                own = [n for n in ("weight", "bias") if getattr(norm, n, None) is not None]
                report.trainable += parameter_names(model, norm, own)
    return report


def inject_h(model: nn.Module, cfg: AdapterHConfig) -> Injection:
    """AdapterH (Houlsby et al., 2019): adapters after the attention and feed-forward output projections."""
    return _inject(model, cfg, "adapter_h", ("attn_out", "ffn_out"), train_norms=cfg.train_norms)


def inject_l(model: nn.Module, cfg: AdapterConfig) -> Injection:
    """AdapterL (Lin et al., 2020): one adapter with its own LayerNorm after the feed-forward output projection."""
    return _inject(model, cfg, "adapter_l", ("ffn_out",), layer_norm=True)


def inject_p(model: nn.Module, cfg: AdapterConfig) -> Injection:
    """AdapterP (Pfeiffer et al., 2021): one adapter after the feed-forward output projection."""
    return _inject(model, cfg, "adapter_p", ("ffn_out",))


def inject_d(model: nn.Module, cfg: AdapterDConfig) -> Injection:
    """AdapterDrop (Rücklé et al., 2020): AdapterP in every layer except the lowest `drop_layers`."""
    n_layers = len(layer_list(model)[1])
    if cfg.drop_layers >= n_layers:
        raise ValueError(
            f"adapter_d drop_layers={cfg.drop_layers} leaves no adapter: the model has {n_layers} layers, "
            f"so drop_layers must be at most {n_layers - 1}"
        )
    return _inject(model, cfg, "adapter_d", ("ffn_out",), first_layer=cfg.drop_layers)
