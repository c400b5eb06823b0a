"""LoRA: low-rank adaptation of chosen weight matrices (Hu et al., 2021, Section 4).

For a frozen pretrained W0 (d_out, d_in) the adapted layer computes

    h = W0 x + (alpha / r) * B A x,    A: (r, d_in), B: (d_out, r),

with B = 0 at initialisation (so training starts from the pretrained function) and A random (Section 4.1: "a random
Gaussian initialization for A"; the paper's code uses Kaiming-uniform, our default). Only A and B are trained.
After training, W = W0 + (alpha / r) B A can be merged into the weight: no extra inference latency (Section 4.1).

GPT-2 keeps W_q, W_k, W_v in one fused `c_attn` (Conv1D, weight (d, 3d)). LoRA on "q and v" there adapts only those
two output slices, each with its own rank-r A and B, as the paper's GPT-2 code does; the k slice is untouched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from lora.architectures import ROLES, SLICE_NAMES, fused_slices, resolve_sites
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
            raise ValueError(f"LoRA rank r must be a positive integer, got {self.r!r}")
        if not self.alpha > 0:
            raise ValueError(f"LoRA alpha must be > 0, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        # A bare string (`method.targets=qv` on the command line) is one role name, not a list of characters.
        self.targets = [self.targets] if isinstance(self.targets, str) else list(self.targets)
        if not self.targets:
            raise ValueError("LoRA targets must name at least one role, e.g. targets=[q,v]")
        bad = [t for t in self.targets if t not in ROLES]
        if bad:
            raise ValueError(f"unknown LoRA target(s) {bad}: choose from {', '.join(ROLES)}")
        if self.init not in ("kaiming", "gaussian"):
            raise ValueError(f"LoRA init must be 'kaiming' or 'gaussian', got {self.init!r}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


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
        return y + (self.lora_dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scaling

    def delta(self) -> torch.Tensor:
        """(alpha/r) B A, shaped like the stored weight."""
        return self.as_matrix(self.lora_B @ self.lora_A) * self.scaling

    def lora_names(self) -> list[str]:
        return ["lora_A", "lora_B"]


class FusedLoRA(Projection):
    """Per-slice LoRA on a fused projection (GPT-2 `c_attn`: output = [q | k | v], each d wide).

    Each adapted slice s has its own `lora_A[s]` (r, d_in) and `lora_B[s]` (d, r); other slices are not changed.
    """

    def __init__(self, base: nn.Module, cfg: LoRAConfig, n_slices: int, slices: list[int]):
        super().__init__(base)
        if self.out_features % n_slices:
            raise ValueError(f"fused projection of width {self.out_features} is not {n_slices} equal slices")
        kw = dict(device=self.weight.device, dtype=self.weight.dtype)
        self.r, self.scaling, self.merged = cfg.r, cfg.scaling, False
        self.n_slices, self.width = n_slices, self.out_features // n_slices
        self.slices = sorted(set(slices))
        names = [SLICE_NAMES[s] for s in self.slices]
        self.lora_A = nn.ParameterDict(
            {n: nn.Parameter(torch.empty(cfg.r, self.in_features, **kw)) for n in names}
        )
        self.lora_B = nn.ParameterDict({n: nn.Parameter(torch.empty(self.width, cfg.r, **kw)) for n in names})
        for n in names:
            _init_pair(self.lora_A[n], self.lora_B[n], cfg.init, cfg.r)
        self.lora_dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def _slice_updates(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d_in) -> (..., 3d): the per-slice updates laid side by side, zeros on unadapted slices."""
        x = self.lora_dropout(x)
        parts = []
        for s in range(self.n_slices):
            if s in self.slices:
                n = SLICE_NAMES[s]
                parts.append(x @ self.lora_A[n].T @ self.lora_B[n].T)
            else:
                parts.append(x.new_zeros(*x.shape[:-1], self.width))
        return torch.cat(parts, dim=-1) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_forward(x)
        return y if self.merged else y + self._slice_updates(x)

    def delta(self) -> torch.Tensor:
        rows = []
        for s in range(self.n_slices):
            if s in self.slices:
                n = SLICE_NAMES[s]
                rows.append(self.lora_B[n] @ self.lora_A[n])
            else:
                rows.append(self.weight.new_zeros(self.width, self.in_features))
        return self.as_matrix(torch.cat(rows, dim=0)) * self.scaling

    def lora_names(self) -> list[str]:
        n = [SLICE_NAMES[s] for s in self.slices]
        return [f"lora_A.{k}" for k in n] + [f"lora_B.{k}" for k in n]


LORA_MODULES = (LoRALinear, FusedLoRA)


def inject(model: nn.Module, cfg: LoRAConfig) -> Injection:
    """Wrap every target matrix of `model` in place; return the wrapped paths and the LoRA parameter names."""
    report = Injection(method="lora")
    sites = resolve_sites(model, cfg.targets, cfg.layers)
    # Checked before any change, so that a refused injection leaves the model as it was.
    carrying = lora_modules(model)
    if carrying:
        raise ValueError(f"{carrying[0][0]} already carries LoRA; inject once per model")
    for path, uses in sites.items():
        base = get_module(model, path)
        n_slices = fused_slices(model, path)
        if n_slices is None:
            wrapper: nn.Module = LoRALinear(base, cfg)
        else:
            wrapper = FusedLoRA(base, cfg, n_slices, [s for _, s in uses])
        set_module(model, path, wrapper)
        report.modules.append(path)
        report.trainable += parameter_names(model, wrapper, wrapper.lora_names())
    return report


def lora_modules(model: nn.Module) -> list[tuple[str, LoRALinear | FusedLoRA]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LORA_MODULES)]


def _require_lora(model: nn.Module) -> list[tuple[str, LoRALinear | FusedLoRA]]:
    mods = lora_modules(model)
    if not mods:
        raise ValueError("this model has no LoRA modules: call lora.methods.lora.inject first")
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
