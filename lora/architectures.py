"""Where each weight matrix lives, per model family.

The paper names the adapted matrices by role: W_q, W_k, W_v, W_o in self-attention and the two MLP matrices
(Section 4.2). Every method here addresses modules by those roles, so that `targets=[q, v]` means the same thing on
RoBERTa, DeBERTa, GPT-2 and Llama. This file is the only place that knows the module paths.

GPT-2 stores W_q, W_k and W_v as three column blocks of one fused `Conv1D` (`attn.c_attn`, weight (d, 3d)); a role
there is a *slice* of that module, which is how the paper's own GPT-2 code applies LoRA to q and v only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

ROLES: tuple[str, ...] = ("q", "k", "v", "o", "ffn_in", "ffn_out")


@dataclass(frozen=True)
class Site:
    """One adapted matrix: a module path inside a transformer layer, and which output slice of it (fused qkv)."""

    path: str
    slice: int | None = None


@dataclass(frozen=True)
class Architecture:
    """Module layout of one model family.

    layers: path of the `nn.ModuleList` of transformer layers, relative to the backbone (`model.base_model`).
    roles: role -> the sites (one per matrix; Llama's `ffn_in` is two matrices, gate and up).
    slices: fused module path -> number of equal output slices (GPT-2 `attn.c_attn`: 3).
    attn_out, ffn_out: where a bottleneck adapter goes (after the attention output and the feed-forward output
        projections, Houlsby et al. 2019).
    norms: the layer norms of one layer (trained alongside Houlsby adapters).
    """

    family: str
    layers: str
    roles: dict[str, tuple[Site, ...]]
    attn_out: str
    ffn_out: str
    norms: tuple[str, ...]
    slices: dict[str, int] = field(default_factory=dict)
    causal: bool = False


_BERT_LIKE = dict(
    layers="encoder.layer",
    roles={
        "q": (Site("attention.self.query"),),
        "k": (Site("attention.self.key"),),
        "v": (Site("attention.self.value"),),
        "o": (Site("attention.output.dense"),),
        "ffn_in": (Site("intermediate.dense"),),
        "ffn_out": (Site("output.dense"),),
    },
    attn_out="attention.output.dense",
    ffn_out="output.dense",
    norms=("attention.output.LayerNorm", "output.LayerNorm"),
)

ARCHITECTURES: dict[str, Architecture] = {
    "bert": Architecture(family="bert", **_BERT_LIKE),
    "roberta": Architecture(family="roberta", **_BERT_LIKE),
    "xlm-roberta": Architecture(family="xlm-roberta", **_BERT_LIKE),
    "deberta-v2": Architecture(
        family="deberta-v2",
        layers="encoder.layer",
        roles={
            "q": (Site("attention.self.query_proj"),),
            "k": (Site("attention.self.key_proj"),),
            "v": (Site("attention.self.value_proj"),),
            "o": (Site("attention.output.dense"),),
            "ffn_in": (Site("intermediate.dense"),),
            "ffn_out": (Site("output.dense"),),
        },
        attn_out="attention.output.dense",
        ffn_out="output.dense",
        norms=("attention.output.LayerNorm", "output.LayerNorm"),
    ),
    "gpt2": Architecture(
        family="gpt2",
        layers="h",
        roles={
            "q": (Site("attn.c_attn", 0),),
            "k": (Site("attn.c_attn", 1),),
            "v": (Site("attn.c_attn", 2),),
            "o": (Site("attn.c_proj"),),
            "ffn_in": (Site("mlp.c_fc"),),
            "ffn_out": (Site("mlp.c_proj"),),
        },
        attn_out="attn.c_proj",
        ffn_out="mlp.c_proj",
        norms=("ln_1", "ln_2"),
        slices={"attn.c_attn": 3},
        causal=True,
    ),
    "llama": Architecture(
        family="llama",
        layers="layers",
        roles={
            "q": (Site("self_attn.q_proj"),),
            "k": (Site("self_attn.k_proj"),),
            "v": (Site("self_attn.v_proj"),),
            "o": (Site("self_attn.o_proj"),),
            "ffn_in": (Site("mlp.gate_proj"), Site("mlp.up_proj")),
            "ffn_out": (Site("mlp.down_proj"),),
        },
        attn_out="self_attn.o_proj",
        ffn_out="mlp.down_proj",
        norms=("input_layernorm", "post_attention_layernorm"),
        causal=True,
    ),
}

SLICE_NAMES: tuple[str, ...] = ("q", "k", "v")


def architecture(model: nn.Module) -> Architecture:
    """The layout of `model`, from `model.config.model_type`; a clear error for an unsupported family."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"unsupported architecture {model_type!r}: supported model types are {', '.join(ARCHITECTURES)}"
        )
    return ARCHITECTURES[model_type]


def layer_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The full path and the `nn.ModuleList` of transformer layers of `model` (any task head around it)."""
    arch = architecture(model)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and (name == arch.layers or name.endswith("." + arch.layers)):
            return name, module
    raise ValueError(f"no layer list {arch.layers!r} found in this {arch.family} model")


def select_layers(n_layers: int, layers: list[int] | None) -> list[int]:
    """Layer indices to adapt: all when `layers` is None; negative indices count from the top."""
    if layers is None:
        return list(range(n_layers))
    out = []
    for i in layers:
        j = i + n_layers if i < 0 else i
        if not 0 <= j < n_layers:
            raise ValueError(f"layer index {i} is out of range: the model has {n_layers} layers")
        out.append(j)
    return sorted(set(out))


def resolve_sites(
    model: nn.Module, roles: list[str] | tuple[str, ...], layers: list[int] | None = None
) -> dict[str, list[tuple[str, int | None]]]:
    """Map role names to concrete modules.

    Returns `{full module path: [(role, slice index or None), ...]}`, in model order. Several roles may land on one
    fused module (GPT-2 `c_attn` for q and v). A role the model does not have is a clear error listing the roles it has.
    """
    arch = architecture(model)
    unknown = [r for r in roles if r not in arch.roles]
    if unknown:
        raise ValueError(
            f"unknown target role(s) {', '.join(map(repr, unknown))} for {arch.family}: "
            f"this model has roles {', '.join(arch.roles)}"
        )
    prefix, blocks = layer_list(model)
    sites: dict[str, list[tuple[str, int | None]]] = {}
    for i in select_layers(len(blocks), layers):
        for role in roles:
            for site in arch.roles[role]:
                sites.setdefault(f"{prefix}.{i}.{site.path}", []).append((role, site.slice))
    return sites


def fused_slices(model: nn.Module, module_path: str) -> int | None:
    """Number of output slices of a fused projection at `module_path`, or None for an ordinary one."""
    arch = architecture(model)
    for rel, n in arch.slices.items():
        if module_path.endswith("." + rel):
            return n
    return None
