"""LoRA: low-rank adaptation of chosen weight matrices (Hu et al., 2021, Section 4).

For a frozen pretrained W0 (d_out, d_in) the adapted layer computes

    h = W0 x + (alpha / r) * B A x,    A: (r, d_in), B: (d_out, r),

with B = 0 at initialisation (so training starts from the pretrained function) and A random (Section 4.1: "a random
Gaussian initialization for A"; the paper's code uses Kaiming-uniform, our default). Only A and B are trained.
After training, W = W0 + (alpha / r) B A can be merged into the weight: no extra inference latency (Section 4.1).

GPT-2 keeps W_q, W_k, W_v in one fused `c_attn` (Conv1D, weight (d, 3d)). LoRA on "q and v" there adapts only those
two output slices, each with its own rank-r A and B, as the paper's GPT-2 code does; the k slice is untouched.
Phi-3's `qkv_proj` is the same with slices of different widths under grouped-query attention (q: heads x head_dim,
k and v: kv_heads x head_dim each), and its `gate_up_proj` two equal halves (gate, up): `FusedLoRA` takes the slice
widths, and each adapted slice's B is as tall as its own slice.

`unload(model)` gives the plain transformers model back: LoRA merged into the weights (or dropped with
merge=False) and every wrapper replaced by a module of the original type (`nn.Linear` / `Conv1D`) holding the same
weight and bias tensors, so `save_pretrained` writes a checkpoint with no trace of this package.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from lora.architectures import ROLES, SLICE_NAMES, fused_layout, resolve_sites
from lora.errors import ConfigError
from lora.methods.base import Injection, Projection, get_module, parameter_names, set_module


@dataclass
class LoRAConfig:
    """r: rank; alpha: scaling numerator (the update is scaled by alpha / r); dropout: on the LoRA branch input;
    targets: roles to adapt (`q`, `k`, `v`, `o`, `ffn_in`, `ffn_out`); layers: layer indices (None = all);
    init: `kaiming` (uniform, as the paper's code) or `gaussian` (as the paper's text) for A."""

    r: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["q", "v"])
    layers: list[int] | None = None
    init: Literal["kaiming", "gaussian"] = "kaiming"

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ConfigError(f"LoRA rank r must be a positive integer, got {self.r!r}")
        if not self.alpha > 0:
            raise ConfigError(f"LoRA alpha must be > 0, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        # A bare string (`method.targets=qv` on the command line) is one role name, not a list of characters.
        self.targets = [self.targets] if isinstance(self.targets, str) else list(self.targets)
        if not self.targets:
            raise ConfigError("LoRA targets must name at least one role, e.g. targets=[q,v]")
        bad = [t for t in self.targets if t not in ROLES]
        if bad:
            raise ConfigError(f"unknown LoRA target(s) {bad}: choose from {', '.join(ROLES)}")
        if self.init not in ("kaiming", "gaussian"):
            raise ConfigError(f"LoRA init must be 'kaiming' or 'gaussian', got {self.init!r}")
        if self.layers is not None and not list(self.layers):
            raise ConfigError(
                "LoRA layers=[] adapts no layer: list layer indices, or layers=null for every layer"
            )

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


def _dropped(dropout: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The LoRA branch's input: `x` itself when LoRA's dropout is 0 (its module is `nn.Identity`: no call at all),
    else `dropout(x)` (one mask, shared by every slice of a fused projection, as loralib's)."""
    return x if isinstance(dropout, nn.Identity) else dropout(x)


def _add_low_rank(y: torch.Tensor, u: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    """y + (u B^T) * scaling for y (..., d_out), u = x A^T (..., k), B (d_out, k), in place on the fresh product:
    one (..., d_out) tensor besides y (the former `y + (u @ B.T) * scaling` made two). The same operations in the
    same order as loralib's `result += (... @ B.T) * scaling`, forward and backward (the gradient reaching the
    product is scaling * dy), so it matches loralib to float rounding (tests/methods/test_loralib_oracle.py)."""
    return (u @ b.T).mul_(scaling).add_(y)


def _init_pair(a: nn.Parameter, b: nn.Parameter, init: str, r: int) -> None:
    if init == "gaussian":
        nn.init.normal_(a, std=1.0 / r)
    else:
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
    nn.init.zeros_(b)


class LoRALinear(Projection):
    """W0 x + (alpha/r) B A x around an `nn.Linear` or `Conv1D`. Parameters: `weight`, `bias` (base, frozen),
    `lora_A` (r, d_in), `lora_B` (d_out, r)."""

    def __init__(self, base: nn.Linear | nn.Module, cfg: LoRAConfig):
        super().__init__(base)
        kw = dict(device=self.weight.device, dtype=self.weight.dtype)
        self.r, self.scaling, self.merged = cfg.r, cfg.scaling, False
        self.lora_A = nn.Parameter(torch.empty(cfg.r, self.in_features, **kw))
        self.lora_B = nn.Parameter(torch.empty(self.out_features, cfg.r, **kw))
        self.lora_dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        _init_pair(self.lora_A, self.lora_B, cfg.init, cfg.r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_forward(x)
        if self.merged:
            return y
        return _add_low_rank(y, _dropped(self.lora_dropout, x) @ self.lora_A.T, self.lora_B, self.scaling)

    def delta(self) -> torch.Tensor:
        """(alpha/r) B A, shaped like the stored weight."""
        return self.as_matrix(self.lora_B @ self.lora_A) * self.scaling

    def lora_names(self) -> list[str]:
        return ["lora_A", "lora_B"]


class FusedLoRA(Projection):
    """Per-slice LoRA on a fused projection: output = [slice 0 | slice 1 | ...] (GPT-2 `c_attn`: [q | k | v], each d
    wide; Phi-3 `qkv_proj`: [q | k | v] with k, v narrower under GQA; Phi-3 `gate_up_proj`: [gate | up]).

    widths: an int n = n equal slices (GPT-2: 3), or the width of each slice, adding up to the output width.
    slices: indices of the adapted slices; names: the slice names (default q, k, v).
    Each adapted slice s has its own `lora_A[name]` (r, d_in) and `lora_B[name]` (widths[s], r); the other slices
    are not changed. `offsets[s]` is where slice s starts in the output.
    """

    def __init__(
        self,
        base: nn.Module,
        cfg: LoRAConfig,
        widths: int | Sequence[int],
        slices: Sequence[int],
        names: Sequence[str] | None = None,
    ):
        super().__init__(base)
        if isinstance(widths, int):
            if widths <= 0 or self.out_features % widths:
                raise ConfigError(
                    f"fused projection of width {self.out_features} is not {widths} equal slices"
                )
            widths = (self.out_features // widths,) * widths
        self.widths = tuple(int(w) for w in widths)
        if sum(self.widths) != self.out_features or min(self.widths) <= 0:
            raise ConfigError(
                f"fused projection of width {self.out_features} does not split into slices of widths {self.widths}"
            )
        names = tuple(names) if names is not None else SLICE_NAMES[: len(self.widths)]
        if len(names) != len(self.widths):
            raise ConfigError(f"{len(self.widths)} slices need {len(self.widths)} names, got {list(names)}")
        self.names, self.n_slices = names, len(self.widths)
        self.offsets = tuple(sum(self.widths[:s]) for s in range(self.n_slices))
        # One width when the slices are equal (GPT-2), else None: use `widths`.
        self.width = self.widths[0] if len(set(self.widths)) == 1 else None
        self.slices = sorted(set(slices))
        if not self.slices or not all(0 <= s < self.n_slices for s in self.slices):
            raise ConfigError(
                f"slice indices {list(slices)} are not among the {self.n_slices} slices {list(names)}"
            )
        kw = dict(device=self.weight.device, dtype=self.weight.dtype)
        self.r, self.scaling, self.merged = cfg.r, cfg.scaling, False
        adapted = {self.names[s]: self.widths[s] for s in self.slices}
        self.lora_A = nn.ParameterDict(
            {n: nn.Parameter(torch.empty(cfg.r, self.in_features, **kw)) for n in adapted}
        )
        self.lora_B = nn.ParameterDict(
            {n: nn.Parameter(torch.empty(w, cfg.r, **kw)) for n, w in adapted.items()}
        )
        for n in adapted:
            _init_pair(self.lora_A[n], self.lora_B[n], cfg.init, cfg.r)
        self.lora_dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One matmul pair for all adapted slices, as loralib's MergedLinear: x A^T with A the k slices' A's
        stacked (k r, d_in), then one product with the block B of `stacked()` (d_out, k r: each slice's B in its
        own rows and r columns, zeros elsewhere), scaled and added to the base output in place. The zero blocks
        cost (k r) x d_out multiply-adds per token (loralib: a grouped conv1d, then a zero-padded copy); the
        per-slice loop this replaces ran 2 k matmuls, allocated zeros for the other slices and concatenated."""
        y = self.base_forward(x)
        if self.merged:
            return y
        a, b = self.stacked()
        return _add_low_rank(y, _dropped(self.lora_dropout, x) @ a.T, b, self.scaling)

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-slice factors as ONE LoRA over the whole module, with the same product: A (k r, d_in) stacks the
        adapted slices' A's, B (d_out, k r) holds each slice's B in that slice's rows and its own r columns, zero
        elsewhere (k = number of adapted slices). B A = the block rows B_s A_s, so (alpha/r) B A = `delta()`."""
        a = torch.cat([self.lora_A[self.names[s]] for s in self.slices], dim=0)
        b = a.new_zeros(self.out_features, a.shape[0])
        for i, s in enumerate(self.slices):
            rows = slice(self.offsets[s], self.offsets[s] + self.widths[s])
            b[rows, i * self.r : (i + 1) * self.r] = self.lora_B[self.names[s]]
        return a, b

    def delta(self) -> torch.Tensor:
        rows = []
        for s, (n, w) in enumerate(zip(self.names, self.widths, strict=True)):
            if s in self.slices:
                rows.append(self.lora_B[n] @ self.lora_A[n])
            else:
                rows.append(self.weight.new_zeros(w, self.in_features))
        return self.as_matrix(torch.cat(rows, dim=0)) * self.scaling

    def lora_names(self) -> list[str]:
        n = [self.names[s] for s in self.slices]
        return [f"lora_A.{k}" for k in n] + [f"lora_B.{k}" for k in n]

    def extra_repr(self) -> str:
        adapted = ", ".join(f"{self.names[s]}={self.widths[s]}" for s in self.slices)
        return f"{super().extra_repr()}, r={self.r}, slices={list(self.names)}, adapted=[{adapted}]"


LORA_MODULES = (LoRALinear, FusedLoRA)


def inject(model: nn.Module, cfg: LoRAConfig) -> Injection:
    """Wrap every target matrix of `model` in place; return the wrapped paths and the LoRA parameter names."""
    report = Injection(method="lora")
    sites = resolve_sites(model, cfg.targets, cfg.layers)
    # Checked before any change, so that a refused injection leaves the model as it was.
    carrying = lora_modules(model)
    if carrying:
        raise ConfigError(f"{carrying[0][0]} already carries LoRA; inject once per model")
    layouts = {path: fused_layout(model, path) for path in sites}
    for path, uses in sites.items():
        module, layout = get_module(model, path), layouts[path]
        d_in, d_out = (
            (module.in_features, module.out_features)
            if isinstance(module, nn.Linear)
            else module.weight.shape
        )
        outs = [layout[1][s] for _, s in uses] if layout else [d_out]  # the adapted slices' widths
        if cfg.r > min(d_in, *outs):
            raise ConfigError(
                f"LoRA rank r={cfg.r} exceeds the size of {path} ({min(outs)} x {d_in}"
                f"{' per slice' if layout else ''}): a rank-r update of it needs r <= {min(d_in, *outs)}"
            )
    for path, uses in sites.items():
        base = get_module(model, path)
        layout = layouts[path]
        if layout is None:
            wrapper: nn.Module = LoRALinear(base, cfg)
        else:
            names, widths = layout
            wrapper = FusedLoRA(base, cfg, widths, [s for _, s in uses], names)
        set_module(model, path, wrapper)
        report.modules.append(path)
        report.trainable += parameter_names(model, wrapper, wrapper.lora_names())
    return report


def lora_modules(model: nn.Module) -> list[tuple[str, LoRALinear | FusedLoRA]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LORA_MODULES)]


def _require_lora(model: nn.Module) -> list[tuple[str, LoRALinear | FusedLoRA]]:
    mods = lora_modules(model)
    if not mods:
        raise ConfigError("this model has no LoRA modules: call lora.methods.lora.inject first")
    return mods


@torch.no_grad()
def merge(model: nn.Module) -> None:
    """W <- W0 + (alpha/r) B A in every LoRA module; the forward then skips the LoRA branch. Merging twice is an
    error (it would add the update twice)."""
    mods = _require_lora(model)
    merged = [n for n, m in mods if m.merged]
    if merged:
        raise RuntimeError(f"LoRA is already merged (e.g. {merged[0]}); call unmerge() first")
    for _, m in mods:
        m.weight.add_(m.delta().to(m.weight.dtype))
        m.merged = True


@torch.no_grad()
def unmerge(model: nn.Module) -> None:
    """W <- W - (alpha/r) B A: undo `merge`. Unmerging a model that is not merged is an error."""
    mods = _require_lora(model)
    unmerged = [n for n, m in mods if not m.merged]
    if unmerged:
        raise RuntimeError(f"LoRA is not merged (e.g. {unmerged[0]}); nothing to unmerge")
    for _, m in mods:
        m.weight.sub_(m.delta().to(m.weight.dtype))
        m.merged = False


@torch.no_grad()
def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the plain base model with every LoRA update merged in; `model` is not changed.

    Keys are the base model's keys (no `lora_*`), so the result loads into an unmodified transformers model.
    """
    mods = dict(_require_lora(model))
    lora_keys = {f"{p}.{n}" for p, m in mods.items() for n in m.lora_names()}
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key in lora_keys:
            continue
        path, _, leaf = key.rpartition(".")
        owner = mods.get(path)
        if owner is not None and leaf == "weight" and not owner.merged:
            value = value + owner.delta().to(value.dtype)
        out[key] = value.clone()
    return out


def _plain(m: LoRALinear | FusedLoRA) -> nn.Linear | Conv1D:
    """A module of the wrapped type holding `m`'s own weight and bias tensors (built on `meta`: nothing is
    allocated or initialised, whatever the size)."""
    with torch.device("meta"):
        if m.fan_in_fan_out:
            plain: nn.Module = Conv1D(m.out_features, m.in_features)
        else:
            plain = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
    plain.weight = m.weight
    plain.bias = m.bias
    return plain


@torch.no_grad()
def unload(model: nn.Module, merge: bool = True) -> nn.Module:
    """Turn `model` back into the plain transformers model, in place, and return it.

    merge=True: W <- W0 + (alpha/r) B A first (if not merged already), so the plain model computes what the adapted
    one did, with no extra latency. merge=False: drop LoRA and keep W0 (undoing a merge first). Either way every
    LoRA wrapper is replaced by an `nn.Linear` / `Conv1D` (the type it wrapped) holding the same weight and bias
    tensors, and the LoRA factors are gone: the state dict has exactly the base model's keys."""
    mods = _require_lora(model)
    for path, m in mods:
        if merge and not m.merged:
            m.weight.add_(m.delta().to(m.weight.dtype))
        elif not merge and m.merged:
            m.weight.sub_(m.delta().to(m.weight.dtype))
        set_module(model, path, _plain(m))
    return model
