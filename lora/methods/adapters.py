"""Bottleneck adapters: the adapter baselines of the LoRA paper (Hu et al., 2021, Section 5.1).

An adapter is a bottleneck with its own residual connection,

    adapter(x, r) = r + W_up act(W_down norm(x) + b_down) + b_up,    W_down: (m, d), W_up: (d, m), m = bottleneck,

with r = x unless a placement says otherwise, and `norm` the identity except in AdapterL. Each adapter has
2 d m + m + d parameters (AdapterL's LayerNorm adds 2 d); the paper counts |Theta| = L_Adpt (2 d m + m + d) +
2 L_LN d (Section 5.1).

Where each adapter sits, by the paper's names. "Released NLU code" is the transformers fork in microsoft/LoRA,
`examples/NLU/src/transformers/models/roberta/modeling_roberta.py`, which the paper's AdptP/AdptH rows ran
(`examples/NLU/adapter_{houlsby,pfeiffer}_roberta_large_mnli.sh`: `--adapter_type houlsby|pfeiffer`). Its
`RobertaSelfOutput.forward` / `RobertaOutput.forward` compute h = dropout(dense(x)) and then, with `input` the
sub-layer's residual input and LN that sub-layer's own (frozen) LayerNorm:

- `adapter_h` (Houlsby et al., 2019), in both `RobertaSelfOutput` and `RobertaOutput`, after the dropout and before
  the residual add: out = LN(h + W_up swish(W_down h) + input), i.e. LN(adapter(h) + input).
- `adapter_p` (Pfeiffer et al., 2021), in `RobertaOutput` only: the layer's LayerNorm is applied first, the adapter
  reads its output but keeps h as its residual, and the same LayerNorm is applied again:
  out = LN(h + W_up relu(W_down LN(h + input)) + input), i.e. LN(adapter(LN(h + input), r=h) + input).
  (AdapterHub's Pfeiffer configuration, `original_ln_before`/`residual_before_ln`/`original_ln_after`, computes the
  same; the fork loads AdapterHub checkpoints into these modules, `run_glue.py --adapter_path`.)
  The fork trains only parameters named *adapter* (and the task head): its layer norms stay frozen.
- `adapter_l` (Lin et al., 2020, code zlinao/VGLM, `pytorch_transformers/modeling_vlm.py`, `Block.forward` and
  `Adapter.forward`): one adapter with its own LayerNorm on the transformer block's output, after the MLP's
  residual add: block_out = y + W_up relu(W_down LN_a(y)) + b, y = the block's own output. Here it wraps every
  layer module (GPT-2 `h.i`, Llama `layers.i`, BERT-like `encoder.layer.i`), so on post-LN models y is the output
  of the layer's last LayerNorm.
- `adapter_d` (AdapterDrop, Rücklé et al., 2020): `adapter_p` without the adapters of the lowest `drop_layers`
  layers ("specialized AdapterDrop"), optionally trained with "robust AdapterDrop" (`robust`): at every training
  forward pass the adapters of the lowest n layers are skipped, n drawn uniformly from {0, ..., robust_max}
  (default L - 2, i.e. AdapterHub's `05_Adapter_Drop_Training.ipynb`, `np.random.randint(0, 11)` on 12 layers);
  the draw comes from a generator seeded with `seed`, and evaluation uses every adapter.

Pre-LN families (GPT-2, Llama) have no LayerNorm after the residual add, so for them "the layer's LayerNorm" above
is the identity: `adapter_h` wraps the outputs of the attention and MLP sub-blocks (GPT-2: after `resid_dropout` /
`mlp.dropout`, as in the fork, dropout before the adapter) before their residual adds, h -> adapter(h); `adapter_p`
and `adapter_d` become out = u + W_up relu(W_down u) + b with u = x + MLP(LN_2(x)) the block's output (AdapterHub
computes exactly this for GPT-2, whose block calls `output_adapters(mlp_out, residual, None)` without a layer norm,
adapter-hub/adapters `models/gpt2/modeling_gpt2.py`). That is AdapterL without its own LayerNorm.

Initialisation (`init_std`, `zero_up`). The fork's `Adapter` (`examples/NLU/src/transformers/models/adapter.py`:
`adapter_A` = Linear(d, m), `adapter_B` = Linear(m, d), both with biases) is created inside the model, so
`RobertaPreTrainedModel._init_weights` (via `init_weights()` in `__init__`, before the pretrained weights load)
draws both weight matrices from N(0, initializer_range^2 = 0.02^2) and zeroes both biases; Lin et al.'s adapters get
the same from `GPT2PreTrainedModel._init_weights` (LayerNorm: weight 1, bias 0), and AdapterHub's default
`init_weights="bert"` is the same again. That is the default here: the adapters are near-identity, not exactly the
identity, at the start. `zero_up=True` starts W_up at zero instead (the identity exactly, like LoRA's B = 0).
Nonlinearities: swish (`silu`) for Houlsby, ReLU for Pfeiffer (the fork's `'swish' if houlsby else 'relu'`) and for
AdapterL (Lin et al.'s `nn.ReLU`).

Base parameters keep their state-dict keys: post-LN output sub-layers are replaced by `AdaptedOutput`, which holds
the original `dense`, `dropout` and `LayerNorm` modules under their own names; elsewhere the adapter is a child
`adapter` of the module whose output it transforms, applied by a forward hook.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lora.architectures import architecture, layer_list
from lora.errors import ConfigError
from lora.methods.base import Injection, get_module, parameter_names, set_module

NONLINEARITIES: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class AdapterConfig:
    """bottleneck: m, the adapter's inner width; nonlinearity: between the two projections (`relu`, `gelu`,
    `silu` (= swish), `tanh`); init_std: std of the normal init of W_down and W_up (the released code's
    initializer_range, 0.02); zero_up: start W_up at zero (exact identity at the start) instead."""

    bottleneck: int = 64
    nonlinearity: str = "relu"
    init_std: float = 0.02
    zero_up: bool = False

    def __post_init__(self) -> None:
        if not _is_int(self.bottleneck) or self.bottleneck <= 0:
            raise ConfigError(f"adapter bottleneck must be a positive integer, got {self.bottleneck!r}")
        if self.nonlinearity not in NONLINEARITIES:
            raise ConfigError(
                f"unknown adapter nonlinearity {self.nonlinearity!r}: choose from {', '.join(NONLINEARITIES)}"
            )
        if not self.init_std >= 0:
            raise ConfigError(f"adapter init_std must be >= 0, got {self.init_std!r}")
        if not isinstance(self.zero_up, bool):
            raise ConfigError(f"adapter zero_up must be true or false, got {self.zero_up!r}")


@dataclass
class AdapterHConfig(AdapterConfig):
    """Houlsby adapters. train_norms: also train every layer's layer norms (Houlsby et al., Section 2.1; the
    released NLU code trains adapters only). Nonlinearity swish (`silu`), as the released code's Houlsby adapter."""

    nonlinearity: str = "silu"
    train_norms: bool = True


@dataclass
class AdapterDConfig(AdapterConfig):
    """AdapterDrop. drop_layers: the number of lowest layers that carry no adapter (0 = `adapter_p`); robust: train
    with robust AdapterDrop (skip the adapters of the lowest n layers, n ~ U{0..robust_max}, fresh at every training
    forward pass); robust_max: None = number of layers - 2; seed: seeds the draws of n."""

    drop_layers: int = 5
    robust: bool = False
    robust_max: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not _is_int(self.drop_layers) or self.drop_layers < 0:
            raise ConfigError(f"adapter_d drop_layers must be an integer >= 0, got {self.drop_layers!r}")
        if not isinstance(self.robust, bool):
            raise ConfigError(f"adapter_d robust must be true or false, got {self.robust!r}")
        if self.robust_max is not None and (not _is_int(self.robust_max) or self.robust_max < 0):
            raise ConfigError(
                f"adapter_d robust_max must be null or an integer >= 0, got {self.robust_max!r}"
            )
        if not _is_int(self.seed):
            raise ConfigError(f"adapter_d seed must be an integer, got {self.seed!r}")


class RobustDrop:
    """Robust AdapterDrop's schedule: `n`, the number of lowest layers whose adapters the current forward pass
    skips. `draw`, a forward pre-hook of the whole model, sets n ~ U{0..max_drop} from its own seeded generator when
    the model is training, and n = 0 otherwise."""

    def __init__(self, max_drop: int, seed: int):
        self.max_drop, self.rng, self.n = max_drop, random.Random(seed), 0

    def draw(self, model: nn.Module, args: tuple[Any, ...]) -> None:
        self.n = self.rng.randint(0, self.max_drop) if model.training else 0


class BottleneckAdapter(nn.Module):
    """x (..., d) -> r + up(act(down(norm(x)))), r = x unless given; `down`: Linear(d, m), `up`: Linear(m, d),
    weights N(0, init_std^2) (W_up zero with `zero_up`), biases zero; `norm`: a LayerNorm(d) when `layer_norm`
    (AdapterL), otherwise absent. `layer` and `drop` (robust AdapterDrop) say when a training pass skips it."""

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
        if cfg.zero_up:
            nn.init.zeros_(self.up.weight)
        else:
            nn.init.normal_(self.up.weight, std=cfg.init_std)
        nn.init.zeros_(self.up.bias)
        self.layer = 0
        self.drop: RobustDrop | None = None

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm(x) if self.norm is not None else x
        return (x if residual is None else residual) + self.up(self.act(self.down(h)))

    def skipped(self) -> bool:
        """Whether this training pass drops the adapter (robust AdapterDrop); never in eval mode."""
        return self.training and self.drop is not None and self.layer < self.drop.n

    def hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        """Forward hook: pass the module's hidden-state output (a tensor, or the first element of a tuple)
        through the adapter."""
        if self.skipped():
            return None
        if isinstance(output, torch.Tensor):
            return self(output)
        if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
            return (self(output[0]), *output[1:])
        raise TypeError(f"an adapter hook needs a tensor or tuple output, got {type(output).__name__}")


class AdaptedOutput(nn.Module):
    """A post-LN output sub-layer (BERT/RoBERTa/DeBERTa `SelfOutput` / `Output`: dense -> dropout -> LayerNorm of
    the sum with the residual input) with an adapter, computed in the released NLU code's order (module docstring).
    `dense`, `dropout` and `LayerNorm` are the original modules under their original names (state-dict keys
    unchanged); kind: `houlsby` or `pfeiffer`."""

    def __init__(self, base: nn.Module, adapter: BottleneckAdapter, kind: str):
        super().__init__()
        if kind not in ("houlsby", "pfeiffer"):
            raise ConfigError(f"unknown output adapter kind {kind!r}")
        self.dense, self.dropout, self.LayerNorm = base.dense, base.dropout, base.LayerNorm
        self.adapter, self.kind = adapter, kind

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        h = self.dropout(self.dense(hidden_states))
        if self.adapter.skipped():
            return self.LayerNorm(h + input_tensor)
        if self.kind == "houlsby":
            return self.LayerNorm(self.adapter(h) + input_tensor)
        return self.LayerNorm(self.adapter(self.LayerNorm(h + input_tensor), residual=h) + input_tensor)


def _post_ln_output(module: nn.Module) -> bool:
    """A BERT-style output sub-layer: its own dense, dropout and LayerNorm, applied as LN(dropout(dense(x)) + r)."""
    return (
        isinstance(getattr(module, "dense", None), nn.Linear)
        and isinstance(getattr(module, "dropout", None), nn.Dropout)
        and isinstance(getattr(module, "LayerNorm", None), nn.Module)
    )


def _sublayers(model: nn.Module) -> tuple[str, str]:
    """Paths, inside a layer, of the attention and the feed-forward sub-blocks whose outputs adapters transform:
    the modules holding the attention output and feed-forward output projections."""
    arch = architecture(model)
    return arch.attn_out.rpartition(".")[0], arch.ffn_out.rpartition(".")[0]


def _check_fresh(model: nn.Module) -> None:
    for path, m in model.named_modules():
        if isinstance(m, BottleneckAdapter):
            raise ConfigError(f"{path.rpartition('.')[0]} already carries an adapter; inject once per model")


def _new_adapter(
    model: nn.Module, near: nn.Module, cfg: AdapterConfig, layer_norm: bool
) -> BottleneckAdapter:
    p = next(near.parameters())
    return BottleneckAdapter(model.config.hidden_size, cfg, layer_norm, p.device, p.dtype)


def _record(model: nn.Module, report: Injection, path: str, adapter: BottleneckAdapter) -> None:
    report.modules.append(path)
    report.trainable += parameter_names(model, adapter, [n for n, _ in adapter.named_parameters()])


def _adapt_output(
    model: nn.Module, report: Injection, path: str, cfg: AdapterConfig, kind: str, layer: int,
    drop: RobustDrop | None,
) -> None:  # fmt: skip
    """Replace the post-LN output sub-layer at `path` with an `AdaptedOutput` of this kind."""
    base = get_module(model, path)
    adapter = _new_adapter(model, base, cfg, layer_norm=False)
    adapter.layer, adapter.drop = layer, drop
    set_module(model, path, AdaptedOutput(base, adapter, kind))
    _record(model, report, path, adapter)


def _hook_output(
    model: nn.Module, report: Injection, path: str, cfg: AdapterConfig, layer_norm: bool, layer: int,
    drop: RobustDrop | None,
) -> None:  # fmt: skip
    """Pass the output of the module at `path` through a new adapter, its child `adapter`."""
    module = get_module(model, path)
    if hasattr(module, "adapter"):
        raise ConfigError(f"{path} already has an attribute 'adapter'")
    adapter = _new_adapter(model, module, cfg, layer_norm)
    adapter.layer, adapter.drop = layer, drop
    module.adapter = adapter
    module.register_forward_hook(adapter.hook)
    _record(model, report, path, adapter)


def _inject_p(
    model: nn.Module, cfg: AdapterConfig, method: str, first_layer: int = 0, drop: RobustDrop | None = None
) -> Injection:
    """Pfeiffer adapters in layers first_layer..: inside the post-LN feed-forward output sub-layer, or on the
    output of a pre-LN block."""
    _check_fresh(model)
    prefix, blocks = layer_list(model)
    ffn = _sublayers(model)[1]
    report = Injection(method=method)
    for i in range(first_layer, len(blocks)):
        path = f"{prefix}.{i}.{ffn}"
        if _post_ln_output(get_module(model, path)):
            _adapt_output(model, report, path, cfg, "pfeiffer", i, drop)
        else:
            _hook_output(model, report, f"{prefix}.{i}", cfg, False, i, drop)
    return report


def inject_h(model: nn.Module, cfg: AdapterHConfig) -> Injection:
    """AdapterH (Houlsby et al., 2019): adapters on the attention and feed-forward sub-block outputs, before the
    residual add (post-LN: inside `attention.output` and `output`, in the released code's order)."""
    _check_fresh(model)
    arch = architecture(model)
    prefix, blocks = layer_list(model)
    report = Injection(method="adapter_h")
    for i in range(len(blocks)):
        for rel in _sublayers(model):
            path = f"{prefix}.{i}.{rel}"
            if _post_ln_output(get_module(model, path)):
                _adapt_output(model, report, path, cfg, "houlsby", i, None)
            else:
                _hook_output(model, report, path, cfg, False, i, None)
        if cfg.train_norms:
            for rel in arch.norms:
                norm = get_module(model, f"{prefix}.{i}.{rel}")
                own = [n for n in ("weight", "bias") if getattr(norm, n, None) is not None]
                report.trainable += parameter_names(model, norm, own)
    return report


def inject_l(model: nn.Module, cfg: AdapterConfig) -> Injection:
    """AdapterL (Lin et al., 2020): one adapter with its own LayerNorm on every layer's output."""
    _check_fresh(model)
    prefix, blocks = layer_list(model)
    report = Injection(method="adapter_l")
    for i in range(len(blocks)):
        _hook_output(model, report, f"{prefix}.{i}", cfg, True, i, None)
    return report


def inject_p(model: nn.Module, cfg: AdapterConfig) -> Injection:
    """AdapterP (Pfeiffer et al., 2021): one adapter per layer after the feed-forward sub-block."""
    return _inject_p(model, cfg, "adapter_p")


def inject_d(model: nn.Module, cfg: AdapterDConfig) -> Injection:
    """AdapterDrop (Rücklé et al., 2020): AdapterP in every layer except the lowest `drop_layers`; with `robust`,
    training passes also skip the adapters of a random number of the lowest layers."""
    n_layers = len(layer_list(model)[1])
    if cfg.drop_layers >= n_layers:
        raise ConfigError(
            f"adapter_d drop_layers={cfg.drop_layers} leaves no adapter: the model has {n_layers} layers, "
            f"so drop_layers must be at most {n_layers - 1}"
        )
    drop = None
    if cfg.robust:
        top = max(n_layers - 2, 0) if cfg.robust_max is None else cfg.robust_max
        if top >= n_layers:
            raise ConfigError(
                f"adapter_d robust_max={top} could skip every adapter: the model has {n_layers} layers, so "
                f"robust_max must be at most {n_layers - 1}"
            )
        drop = RobustDrop(top, cfg.seed)
    report = _inject_p(model, cfg, "adapter_d", first_layer=cfg.drop_layers, drop=drop)
    if drop is not None:
        model.register_forward_pre_hook(drop.draw)
    return report
