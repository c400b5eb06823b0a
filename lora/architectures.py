"""Where each weight matrix lives, per model family.

The paper names the adapted matrices by role: W_q, W_k, W_v, W_o in self-attention and the two MLP matrices
(Section 4.2). Every method here addresses modules by those roles, so that `targets=[q, v]` means the same thing on
RoBERTa, DeBERTa, GPT-2, Llama, Mistral, Qwen, Gemma and Phi-3. This file is the only place that knows the module
paths.

Fused projections. GPT-2 stores W_q, W_k and W_v as three equal column blocks of one `Conv1D` (`attn.c_attn`,
weight (d, 3d)); Phi-3 stores them as row blocks of one `nn.Linear` (`self_attn.qkv_proj`), and under grouped-query
attention those blocks are NOT equal: q is num_attention_heads x head_dim wide, k and v num_key_value_heads x
head_dim each. Its MLP fuses gate and up (`mlp.gate_up_proj`, two equal halves, gate first). A role there is a
*slice* of that module (`Site.slice`), which is how the paper's own GPT-2 code applies LoRA to q and v only; the
slice widths come from `Fused.widths` (read from the model config) or, when it is None, from equal division.

Supported model types (`config.model_type`): bert, roberta, xlm-roberta, deberta-v2 (encoders); gpt2, llama,
mistral, qwen2, qwen3, gemma, gemma2, gemma3_text (Gemma 3 text-only, `Gemma3ForCausalLM`) and phi3 (decoders).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from lora.errors import ConfigError

ROLES: tuple[str, ...] = ("q", "k", "v", "o", "ffn_in", "ffn_out")
# Slice names of a fused q/k/v projection, by slice index (GPT-2 `c_attn`, Phi-3 `qkv_proj`).
SLICE_NAMES: tuple[str, ...] = ("q", "k", "v")


@dataclass(frozen=True)
class Site:
    """One adapted matrix: a module path inside a transformer layer, and which output slice of it (fused)."""

    path: str
    slice: int | None = None


def _attention_widths(config: Any) -> tuple[int, ...]:
    """Output widths of a fused q/k/v projection: q = heads x head_dim, k = v = kv_heads x head_dim (GQA)."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return heads * head_dim, kv_heads * head_dim, kv_heads * head_dim


@dataclass(frozen=True)
class Fused:
    """A fused projection whose output is several matrices laid side by side.

    names: the slices, in output order (their LoRA factors are `lora_A.<name>`, `lora_B.<name>`);
    widths: config -> the width of each slice; None = equal slices of the module's output.
    """

    names: tuple[str, ...]
    widths: Callable[[Any], tuple[int, ...]] | None = None


@dataclass(frozen=True)
class Architecture:
    """Module layout of one model family.

    layers: path of the `nn.ModuleList` of transformer layers, relative to the backbone (`model.base_model`).
    roles: role -> the sites (one per matrix; Llama's `ffn_in` is two matrices, gate and up).
    slices: fused module path -> its `Fused` layout (GPT-2 `attn.c_attn`: q, k, v in equal thirds).
    attn_out, ffn_out: the attention output and feed-forward output projections; lora.methods.adapters places its
        adapters on their parent sub-layers (e.g. BERT's `attention.output`, `output`), as the released NLU code.
    norms: the layer norms of one layer (trained alongside Houlsby adapters).
    causal: a decoder (causal LM); the encoders get a classification head.
    """

    family: str
    layers: str
    roles: dict[str, tuple[Site, ...]]
    attn_out: str
    ffn_out: str
    norms: tuple[str, ...]
    slices: dict[str, Fused] = field(default_factory=dict)
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

# Llama and the families that kept its layout (separate q/k/v/o projections, SwiGLU/GeGLU MLP with gate, up and
# down): Mistral, Qwen2 (q/k/v with biases), Qwen3 (plus per-head q_norm/k_norm inside attention), Gemma.
_LLAMA_LIKE = dict(
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
)
# Gemma 2 and 3 add a norm after attention and around the MLP (sandwich norms); the projections are Llama's.
_GEMMA2_NORMS = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                 "post_feedforward_layernorm")  # fmt: skip

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
        slices={"attn.c_attn": Fused(SLICE_NAMES)},
        causal=True,
    ),
    "llama": Architecture(family="llama", **_LLAMA_LIKE),
    "mistral": Architecture(family="mistral", **_LLAMA_LIKE),
    "qwen2": Architecture(family="qwen2", **_LLAMA_LIKE),
    "qwen3": Architecture(family="qwen3", **_LLAMA_LIKE),
    "gemma": Architecture(family="gemma", **_LLAMA_LIKE),
    "gemma2": Architecture(family="gemma2", **(_LLAMA_LIKE | {"norms": _GEMMA2_NORMS})),
    "gemma3_text": Architecture(family="gemma3_text", **(_LLAMA_LIKE | {"norms": _GEMMA2_NORMS})),
    # Phi-3 (and Phi-3.5, Phi-4-mini): Llama's computation with q/k/v fused into `qkv_proj` (unequal slices under
    # GQA) and gate/up fused into `gate_up_proj`. `ffn_in` adapts gate and up separately, as on Llama.
    "phi3": Architecture(
        family="phi3",
        layers="layers",
        roles={
            "q": (Site("self_attn.qkv_proj", 0),),
            "k": (Site("self_attn.qkv_proj", 1),),
            "v": (Site("self_attn.qkv_proj", 2),),
            "o": (Site("self_attn.o_proj"),),
            "ffn_in": (Site("mlp.gate_up_proj", 0), Site("mlp.gate_up_proj", 1)),
            "ffn_out": (Site("mlp.down_proj"),),
        },
        attn_out="self_attn.o_proj",
        ffn_out="mlp.down_proj",
        norms=("input_layernorm", "post_attention_layernorm"),
        slices={
            "self_attn.qkv_proj": Fused(SLICE_NAMES, _attention_widths),
            "mlp.gate_up_proj": Fused(("gate", "up")),
        },
        causal=True,
    ),
}

CAUSAL_FAMILIES: tuple[str, ...] = tuple(f for f, a in ARCHITECTURES.items() if a.causal)


def unsupported(model_type: Any, where: str | None = None) -> ValueError:
    """The one-line error for a model type without a layout here (`where`: which model, e.g. model.path=...)."""
    return ValueError(
        f"unsupported architecture {model_type!r}{f' ({where})' if where else ''}: supported model types are "
        f"{', '.join(ARCHITECTURES)}"
    )


def architecture(model: nn.Module) -> Architecture:
    """The layout of `model`, from `model.config.model_type`; a clear error for an unsupported family."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        raise unsupported(model_type)
    return ARCHITECTURES[model_type]


def layer_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The full path and the `nn.ModuleList` of transformer layers of `model` (any task head around it)."""
    arch = architecture(model)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and (name == arch.layers or name.endswith("." + arch.layers)):
            return name, module
    raise ConfigError(f"no layer list {arch.layers!r} found in this {arch.family} model")


def select_layers(n_layers: int, layers: list[int] | None) -> list[int]:
    """Layer indices to adapt: all when `layers` is None; negative indices count from the top."""
    if layers is None:
        return list(range(n_layers))
    out = []
    for i in layers:
        j = i + n_layers if i < 0 else i
        if not 0 <= j < n_layers:
            raise ConfigError(f"layer index {i} is out of range: the model has {n_layers} layers")
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
        raise ConfigError(
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


def fused_layout(model: nn.Module, module_path: str) -> tuple[tuple[str, ...], tuple[int, ...]] | None:
    """(slice names, slice widths) of the fused projection at `module_path`, in output order, or None for an
    ordinary one. Widths come from the model config (Phi-3's q/k/v under GQA) or equal division of the output
    (GPT-2's c_attn: three times d); they always add up to the module's output width, or this is an error."""
    arch = architecture(model)
    for rel, fused in arch.slices.items():
        if module_path == rel or module_path.endswith("." + rel):
            module = model.get_submodule(module_path)
            d_out = getattr(module, "out_features", None) or module.nf  # nn.Linear / LoRA wrapper, or Conv1D
            n = len(fused.names)
            if fused.widths is not None:
                widths = tuple(int(w) for w in fused.widths(model.config))
            elif d_out % n == 0:
                widths = (d_out // n,) * n
            else:
                widths = ()
            if len(widths) != n or sum(widths) != d_out:
                raise ConfigError(
                    f"{module_path} is {d_out} wide, which does not split into its {n} slices "
                    f"{', '.join(fused.names)}{f' of widths {widths}' if widths else ''}"
                )
            return fused.names, widths
    return None


def fused_slices(model: nn.Module, module_path: str) -> int | None:
    """Number of output slices of a fused projection at `module_path`, or None for an ordinary one."""
    layout = fused_layout(model, module_path)
    return None if layout is None else len(layout[0])


def slice_widths(model: nn.Module, module_path: str) -> tuple[int, ...] | None:
    """Output width of each slice of the fused projection at `module_path` (None for an ordinary one)."""
    layout = fused_layout(model, module_path)
    return None if layout is None else layout[1]
