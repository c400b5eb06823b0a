"""Prefix baselines of the LoRA paper (Section 5.1), after Li & Liang (2021), "Prefix-Tuning".

PreEmbed (`prefix_embed`): l_p prefix and l_i infix virtual tokens with trainable embeddings, inserted among the
input tokens; |Theta| = d_model (l_p + l_i). PreLayer (`prefix_layer`): the activations of l_p prefix positions
at the input of every layer (the embedding output and the outputs of layers 1..L-1; the last layer's output is
never attended to) are trainable ("the activations computed from previous layers are simply replaced by trainable
ones"); |Theta| = L d_model l_p. Infixes are not implemented for PreLayer (l_i = 0, as in the GPT-2 rows).

Which description these follow. Both methods follow the LoRA paper's own description (Section 5.1, and Appendix E:
the prefix tokens' hidden states are "replaced after every Transformer block with an input agnostic vector"), not
Li & Liang's implementation: there the prefix is the per-layer attention keys and values (2 L d_model numbers per
prefix position) and is trained through a reparametrisation P = MLP(P') of a smaller matrix P', of which only P is
kept after training. Here PreEmbed trains the special tokens' input embeddings and PreLayer one hidden vector per
layer and prefix position, turned into keys and values by that layer's own frozen projections, directly, with no
MLP. Reasons: the paper's parameter formulas (d_model (l_p + l_i), L d_model (l_p + l_i)) count exactly these
vectors, the only runs the paper made itself with prefixes (GPT-3, Tables 4, 15-17) are described this way, and the
GPT-2 PreLayer rows (Tables 3, 13, 14) are numbers cited from Li & Liang (marked *), so there is no run of the paper
whose setup would call for the MLP. A reparametrisation switch is not provided: it would replace the `activations`
parameter by a computed tensor (initialisation, counting and checkpoints all change), which is more than this
module's design takes cheaply.

Prefix lengths per table (the paper's):
- Tables 3 / 13 / 14 (GPT-2 medium / large, PreLayer*, cited): lengths not stated; the printed sizes 0.35M / 0.77M
  are Li & Liang's "0.1%" of 354.92M / 774.03M. Under |Theta| = L d_model l_p the nearest lengths are l_p = 14
  (24 x 1024 x 14 = 344,064) and l_p = 17 (36 x 1280 x 17 = 783,360): conf/method/prefix_layer_0.35m.yaml,
  prefix_layer_0.77m.yaml. PreEmbed has no GPT-2 row.
- Table 4 and Appendix D.4 (GPT-3 175B): PreEmbed l_p = 256, l_i = 8 (3.2M); PreLayer l_p = 8, l_i = 8 (20.2M).
- Table 15 (GPT-3, sweep): PreEmbed l_i = 8 with l_p in {32, 64, 128, 256, 512}; PreLayer (l_p, l_i) in {(2, 2),
  (8, 0), (8, 8), (32, 4), (64, 0)}. Table 17 (MNLI-n): PreEmbed l_p = 16 / 32 / 64 / 256 for n = 100 / 1k / 10k /
  392k, l_i = 8; PreLayer l_p = l_i = 8. (The GPT-3 PreLayer sizes are not exactly L d_model (l_p + l_i): with
  L = 96, d_model = 12288, l_p = l_i = 8 that is 18.9M, printed 20.2M.) PreLayer infixes are not implemented here.

Design. Both methods act on a model call through a forward pre-hook on the model passed to `inject` (the top
model: `...ForCausalLM`, `...ForSequenceClassification`). Callers (training loops, `generate`) keep working in the
coordinates of their own tokens; the hook adds what the prefix needs:

- PreEmbed wraps the input embedding in `PromptEmbedding` (same `weight` parameter, so state-dict keys and tied LM
  heads are unchanged; token ids >= vocab size address its `prompt` rows). On the first pass of a sequence the hook
  inserts the virtual ids into `input_ids` and extends `attention_mask` (ones), `labels` (-100), `token_type_ids`
  and `position_ids` to match. Placement: causal LMs get the prefix at position 0 and the infix right after the
  source, i.e. before the first target token (the first `labels != -100`), or after the last attended token when
  there are no labels (a generation prompt: "infixing appends to the prompt"). Encoders get the prefix right after
  the first token (the [CLS]/<s> their classifier reads) and the infix before the last attended token (the final
  separator). The model's outputs cover the extended sequence (l_p + l_i more positions); the loss from `labels`
  is unaffected, since the inserted positions are labelled -100.
- PreLayer feeds the prefix as key/value states through the model's cache (`transformers` `DynamicCache`): for
  layer i, the trainable activations A_i (l_p, d) go through that layer's own frozen input norm and key/value
  projections (and rotary embedding at positions 0..l_p-1 for Llama), exactly the keys and values that prefix
  tokens with those hidden states would have. Real tokens sit at positions l_p, l_p + 1, ...; the hook prepends
  l_p ones to `attention_mask` and adds l_p to `position_ids` when the caller passes them. Supported: GPT-2, Llama.

With `generate`, the cache remembers the insertion (an attribute on the cache object), so later decoding steps get
the same mask and position offsets. `generate(use_cache=False)` re-inserts on every step and is not supported for
infixes. Gradient checkpointing is not supported with PreLayer (GPT-2 drops the cache under it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from lora.architectures import architecture, layer_list
from lora.errors import ConfigError
from lora.methods.base import Injection, parameter_names

_PROMPT_MARK = "_lora_prompt_infix_at"  # on a cache: (B,) infix positions of the inserted virtual tokens
_PREFIX_MARK = "_lora_layer_prefix_length"  # on a cache: number of prefix positions it starts with


@dataclass
class PrefixEmbedConfig:
    """prefix_length: l_p virtual tokens before the input; infix_length: l_i virtual tokens after the source."""

    prefix_length: int = 10
    infix_length: int = 0

    def __post_init__(self) -> None:
        for name in ("prefix_length", "infix_length"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"prefix_embed {name} must be an integer >= 0, got {v!r}")
        if self.prefix_length + self.infix_length <= 0:
            raise ConfigError("prefix_embed needs prefix_length + infix_length > 0, got 0 virtual tokens")


@dataclass
class PrefixLayerConfig:
    """prefix_length: l_p prefix positions whose activations are trained in every layer."""

    prefix_length: int = 10

    def __post_init__(self) -> None:
        v = self.prefix_length
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ConfigError(f"prefix_layer prefix_length must be a positive integer, got {v!r}")


def _call_kwargs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """A model call as keyword arguments: `input_ids` may come positionally; `past_key_values` is `cache`."""
    if len(args) > 1 or (args and "input_ids" in kwargs):
        raise TypeError(
            "with a prefix method, pass model inputs by keyword (input_ids=..., attention_mask=...)"
        )
    kwargs = dict(kwargs)
    if args:
        kwargs["input_ids"] = args[0]
    if "past_key_values" in kwargs:
        kwargs["cache"] = kwargs.pop("past_key_values")
    mask = kwargs.get("attention_mask")
    if mask is not None and mask.dim() != 2:
        raise ConfigError(
            f"prefix methods need a 2D attention_mask (batch, length), got shape {tuple(mask.shape)}"
        )
    return kwargs


def _insert(x: torch.Tensor, at: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """x (B, T), at (B,), new (B, k) -> (B, T + k): row b is x[b, :at[b]], new[b], x[b, at[b]:]."""
    (b, t), k = x.shape, new.shape[1]
    if k == 0:
        return x
    j = torch.arange(t + k, device=x.device).expand(b, -1)
    at = at.unsqueeze(1)
    old = x.gather(1, torch.where(j < at, j, j - k).clamp(0, max(t - 1, 0)))
    return torch.where((j >= at) & (j < at + k), new.gather(1, (j - at).clamp(0, k - 1)), old)


def _positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) 0/1 -> (B, T) positions counting attended tokens only (padding gets 0), as `generate` builds them."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)


def _last_attended(mask: torch.Tensor | None, b: int, t: int, device: torch.device) -> torch.Tensor:
    """(B,) index of the last attended token of each row (t - 1 without a mask)."""
    if mask is None:
        return torch.full((b,), t - 1, device=device, dtype=torch.long)
    return (t - 1) - mask.flip(1).long().argmax(1)


class PromptEmbedding(nn.Module):
    """An input embedding (vocabulary V, width d) with l_p + l_i trainable virtual-token rows (PreEmbed).

    weight: (V, d), the base table's own parameter (frozen); prompt: (l_p + l_i, d), prefix rows first. Ids in
    [0, V) are looked up in `weight`, id V + j in `prompt[j]`. The prompt rows start as copies of randomly drawn
    vocabulary embeddings. `insert` is the forward pre-hook that places the virtual ids in the model's inputs.
    """

    def __init__(self, base: nn.Embedding, n_prefix: int, n_infix: int, causal: bool):
        super().__init__()
        if type(base) is not nn.Embedding:
            raise TypeError(f"prefix_embed can wrap a plain nn.Embedding, not {type(base).__name__}")
        self.weight = base.weight
        self.padding_idx, self.max_norm, self.norm_type = base.padding_idx, base.max_norm, base.norm_type
        self.scale_grad_by_freq, self.sparse = base.scale_grad_by_freq, base.sparse
        self.vocab_size, dim = base.weight.shape
        self.n_prefix, self.n_infix, self.causal = n_prefix, n_infix, causal
        self.prompt = nn.Parameter(base.weight.new_empty(n_prefix + n_infix, dim))
        with torch.no_grad():
            rows = torch.randint(0, self.vocab_size, (n_prefix + n_infix,))
            self.prompt.copy_(self.weight[rows.to(self.weight.device)])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (...) -> embeddings (..., d)."""
        virtual = ids >= self.vocab_size
        emb = F.embedding(
            ids.masked_fill(virtual, 0), self.weight, self.padding_idx, self.max_norm, self.norm_type,
            self.scale_grad_by_freq, self.sparse,
        )  # fmt: skip
        return torch.where(virtual.unsqueeze(-1), self.prompt[(ids - self.vocab_size).clamp(min=0)], emb)

    def _sites(
        self, ids: torch.Tensor, mask: torch.Tensor | None, labels: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) insertion indices of the prefix and of the infix, in the caller's coordinates."""
        (b, t), dev = ids.shape, ids.device
        end = _last_attended(mask, b, t, dev)
        if not self.causal:
            first = torch.zeros(b, dtype=torch.long, device=dev) if mask is None else mask.long().argmax(1)
            return first + 1, torch.maximum(end, first + 1)
        infix = end + 1
        if isinstance(labels, torch.Tensor) and labels.shape == ids.shape:
            target = labels != -100
            infix = torch.where(target.any(1), target.long().argmax(1), infix)
        return torch.zeros(b, dtype=torch.long, device=dev), infix

    def insert(self, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple, dict]:
        """Forward pre-hook of the top model: see the module docstring."""
        kw = _call_kwargs(args, kwargs)
        if kw.get("input_ids") is None:
            raise ConfigError("prefix_embed needs input_ids (inputs_embeds is not supported)")
        cache = kw.get("cache")
        if cache is not None and cache.get_seq_length() > 0:  # a later decoding step
            return (), self._continue(kw, cache)
        if self.causal and cache is None and kw.get("use_cache", model.config.use_cache):
            cache = kw["cache"] = DynamicCache(config=model.config)
        ids = kw["input_ids"]
        prefix_at, infix_at = self._sites(ids, kw.get("attention_mask"), kw.get("labels"))
        token_labels = isinstance(kw.get("labels"), torch.Tensor) and kw["labels"].shape == ids.shape
        v, n = self.vocab_size, self.n_prefix + self.n_infix
        virtual = torch.arange(v, v + n, device=ids.device).expand(ids.shape[0], -1)
        self._place(
            kw, infix_at, virtual[:, self.n_prefix :], token_labels
        )  # first: it sits after the prefix
        self._place(kw, prefix_at, virtual[:, : self.n_prefix], token_labels)
        if kw.get("position_ids") is not None:
            mask = kw.get("attention_mask")
            kw["position_ids"] = _positions_from_mask(
                mask if mask is not None else torch.ones_like(kw["input_ids"])
            )
        if cache is not None:
            setattr(cache, _PROMPT_MARK, infix_at)
        return (), kw

    @staticmethod
    def _place(kw: dict[str, Any], at: torch.Tensor, virtual: torch.Tensor, token_labels: bool) -> None:
        """Insert the ids `virtual` (B, k) at `at` (B,) into input_ids, and ones / -100 / the preceding token's
        type into attention_mask / labels / token_type_ids."""
        b, k = virtual.shape
        kw["input_ids"] = _insert(kw["input_ids"], at, virtual)
        if (m := kw.get("attention_mask")) is not None:
            kw["attention_mask"] = _insert(m, at, m.new_ones(b, k))
        if token_labels:
            kw["labels"] = _insert(kw["labels"], at, kw["labels"].new_full((b, k), -100))
        if (tt := kw.get("token_type_ids")) is not None:
            kw["token_type_ids"] = _insert(tt, at, tt.gather(1, (at - 1).clamp(min=0)[:, None]).expand(-1, k))

    def _continue(self, kw: dict[str, Any], cache: DynamicCache) -> dict[str, Any]:
        """A decoding step after the first: widen the caller's mask and shift its positions by l_p + l_i."""
        infix_at = getattr(cache, _PROMPT_MARK, None)
        if infix_at is None:
            raise ConfigError("prefix_embed got a cache that was not filled through this model's prompt hook")
        if (mask := kw.get("attention_mask")) is not None:
            b = mask.shape[0]
            mask = _insert(mask, infix_at, mask.new_ones(b, self.n_infix))
            kw["attention_mask"] = _insert(mask, torch.zeros_like(infix_at), mask.new_ones(b, self.n_prefix))
        if kw.get("position_ids") is not None:
            kw["position_ids"] = kw["position_ids"] + self.n_prefix + self.n_infix
        return kw

    def extra_repr(self) -> str:
        return f"vocab={self.vocab_size}, prefix={self.n_prefix}, infix={self.n_infix}"


def inject_embed(model: nn.Module, cfg: PrefixEmbedConfig) -> Injection:
    """Wrap the input embedding of `model` and hook its forward (PreEmbed, LoRA paper Section 5.1)."""
    arch = architecture(model)
    base = model.get_input_embeddings()
    if isinstance(base, PromptEmbedding):
        raise ConfigError("this model already carries prefix_embed; inject once per model")
    wrapper = PromptEmbedding(base, cfg.prefix_length, cfg.infix_length, causal=arch.causal)
    model.set_input_embeddings(wrapper)
    path = next(p for p, m in model.named_modules() if m is wrapper)
    model.register_forward_pre_hook(wrapper.insert, with_kwargs=True)
    return Injection(
        method="prefix_embed", modules=[path], trainable=parameter_names(model, wrapper, ["prompt"])
    )


def _gpt2_kv(model: nn.Module, block: nn.Module, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """h (1, n, d) -> keys, values (1, heads, n, head_dim) of a GPT-2 block: c_attn(ln_1(h)), k and v slices."""
    attn = block.attn
    _, k, v = attn.c_attn(block.ln_1(h)).split(attn.split_size, dim=-1)
    shape = (1, h.shape[1], -1, attn.head_dim)
    return k.view(shape).transpose(1, 2), v.view(shape).transpose(1, 2)


def _llama_kv(model: nn.Module, layer: nn.Module, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """h (1, n, d) -> keys, values (1, kv_heads, n, head_dim) of a Llama layer; keys rotated at positions 0..n-1."""
    attn, x = layer.self_attn, layer.input_layernorm(h)
    shape = (1, h.shape[1], -1, attn.head_dim)
    k = attn.k_proj(x).view(shape).transpose(1, 2)
    v = attn.v_proj(x).view(shape).transpose(1, 2)
    cos, sin = model.base_model.rotary_emb(x, torch.arange(h.shape[1], device=h.device)[None])
    return apply_rotary_pos_emb(k, k, cos, sin)[1], v


LAYER_PREFIX_FAMILIES = {"gpt2": _gpt2_kv, "llama": _llama_kv}


class LayerPrefix(nn.Module):
    """PreLayer's trainable activations. activations: (L, l_p, d): the hidden state of the l_p prefix positions
    at the input of each of the L layers. `insert` is the forward pre-hook that puts their keys and values into
    the cache."""

    def __init__(self, family: str, layers: str, n_layers: int, length: int, weight: torch.Tensor):
        super().__init__()
        self.family, self.layers, self.length = family, layers, length
        self.activations = nn.Parameter(weight.new_zeros(n_layers, length, weight.shape[-1]))

    @torch.no_grad()
    def init_from_tokens(self, model: nn.Module) -> None:
        """Start from the activations of l_p random vocabulary tokens (Li & Liang, 2021, Section 7.2: initialising
        with real words' activations helps). Skipped on the `meta` device."""
        if self.activations.is_meta:
            return
        vocab = model.get_input_embeddings().weight.shape[0]
        ids = torch.randint(0, vocab, (1, self.length)).to(self.activations.device)
        was_training = model.training
        model.eval()
        hidden = model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
        model.train(was_training)
        self.activations.copy_(torch.cat(hidden[: self.activations.shape[0]], dim=0))

    def fill(self, model: nn.Module, cache: DynamicCache, batch: int) -> None:
        """Append the prefix keys and values of every layer (batch, heads, l_p, head_dim) to an empty cache."""
        kv = LAYER_PREFIX_FAMILIES[self.family]
        for i, block in enumerate(model.get_submodule(self.layers)):
            k, v = kv(model, block, self.activations[i : i + 1])
            cache.update(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1), i)
        setattr(cache, _PREFIX_MARK, self.length)

    def insert(self, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple, dict]:
        """Forward pre-hook of the top model: see the module docstring."""
        kw = _call_kwargs(args, kwargs)
        if model.training and getattr(model, "is_activation_checkpointing", False):
            raise RuntimeError(
                "prefix_layer does not work with gradient checkpointing (the cache is dropped)"
            )
        cache = kw.get("cache")
        if cache is None or cache.get_seq_length() == 0:
            inputs = kw.get("input_ids") if kw.get("input_ids") is not None else kw.get("inputs_embeds")
            cache = kw["cache"] = cache if cache is not None else DynamicCache(config=model.config)
            self.fill(model, cache, inputs.shape[0])
        elif getattr(cache, _PREFIX_MARK, None) != self.length:
            raise ConfigError("prefix_layer got a cache that was not filled through this model's prefix hook")
        mask = kw.get("attention_mask")
        if mask is not None:
            kw["attention_mask"] = torch.cat([mask.new_ones(mask.shape[0], self.length), mask], dim=1)
        if kw.get("position_ids") is not None:
            kw["position_ids"] = kw["position_ids"] + self.length
        return (), kw

    def extra_repr(self) -> str:
        return f"family={self.family}, activations={tuple(self.activations.shape)}"


def inject_layer(model: nn.Module, cfg: PrefixLayerConfig) -> Injection:
    """Add trainable per-layer prefix activations to `model` and hook its forward (PreLayer, Section 5.1)."""
    family = architecture(model).family
    if family not in LAYER_PREFIX_FAMILIES:
        raise ConfigError(
            f"prefix_layer supports {', '.join(LAYER_PREFIX_FAMILIES)} (prefixes go through the key/value cache), "
            f"not {family}"
        )
    backbone = model.base_model
    if hasattr(backbone, "layer_prefix"):
        raise ConfigError("this model already carries prefix_layer; inject once per model")
    layers, blocks = layer_list(model)
    prefix = LayerPrefix(family, layers, len(blocks), cfg.prefix_length, model.get_input_embeddings().weight)
    prefix.init_from_tokens(model)
    backbone.layer_prefix = prefix
    model.register_forward_pre_hook(prefix.insert, with_kwargs=True)
    path = next(p for p, m in model.named_modules() if m is prefix)
    return Injection(
        method="prefix_layer", modules=[path], trainable=parameter_names(model, prefix, ["activations"])
    )
