"""The families people fine-tune today (Mistral, Qwen2, Qwen3, Gemma 1-3, Phi-3), on their tiny configs: module
layout, LoRA (B = 0 is the base function bit for bit, merge, unmerge, peft export), Phi-3's fused projections with
unequal slices under GQA, and the other methods (adapters, prefix_embed, bitfit) on the same layouts.

These families are not in tests/conftest.py's TINY_KINDS: suites keyed by that dict (tests/test_params.py's pinned
counts, ...) would need entries for them. They are tested here, in NEW_TINY.

The Phi-3 oracle: a Phi-3 model computes exactly what a Llama model with the same weights computes once its fused
`qkv_proj` is cut into q_proj / k_proj / v_proj (widths 32 | 16 | 16 under GQA) and `gate_up_proj` into gate_proj /
up_proj (checked to 0.0 here first). So per-slice LoRA on Phi-3 must equal ordinary LoRA on that Llama model with
the same factors: an independent check of the slice offsets and widths.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from torch import nn

from lora import methods
from lora.architectures import ROLES, fused_layout, fused_slices, slice_widths
from lora.checkpoint import export_peft, load_adapter, save_adapter
from lora.methods.lora import FusedLoRA, LoRAConfig, LoRALinear, inject, lora_modules, merge, unmerge
from lora.models import MODELS, build_config, build_model, head_parameter_names

# Tiny model -> its family (config.model_type).
NEW_TINY: dict[str, str] = {
    "tiny-mistral": "mistral",
    "tiny-qwen2": "qwen2",
    "tiny-qwen3": "qwen3",
    "tiny-gemma": "gemma",
    "tiny-gemma2": "gemma2",
    "tiny-gemma3": "gemma3_text",
    "tiny-phi3": "phi3",
}
KINDS = ("causal_lm", "classification")
TARGET_SETS = [["q", "v"], ["q", "k", "v", "o"], ["ffn_in", "ffn_out"], list(ROLES)]

_LLAMA_LIKE = {
    "q": ["self_attn.q_proj"],
    "k": ["self_attn.k_proj"],
    "v": ["self_attn.v_proj"],
    "o": ["self_attn.o_proj"],
    "ffn_in": ["mlp.gate_proj", "mlp.up_proj"],
    "ffn_out": ["mlp.down_proj"],
}
_PHI3 = {
    "q": ["self_attn.qkv_proj"],
    "k": ["self_attn.qkv_proj"],
    "v": ["self_attn.qkv_proj"],
    "o": ["self_attn.o_proj"],
    "ffn_in": ["mlp.gate_up_proj"],
    "ffn_out": ["mlp.down_proj"],
}


def layout(name: str) -> dict[str, list[str]]:
    return _PHI3 if name == "tiny-phi3" else _LLAMA_LIKE


def make(name: str, kind: str = "causal_lm") -> nn.Module:
    return build_model(name, kind).eval()  # type: ignore[arg-type]


def out(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


@pytest.fixture(params=list(NEW_TINY))
def new_name(request: pytest.FixtureRequest) -> str:
    return request.param


# --- the tiny models ----------------------------------------------------------------------------------------------


def test_registered_with_config_files() -> None:
    from pathlib import Path

    conf = Path(__file__).resolve().parent.parent / "conf" / "model"
    for name, family in NEW_TINY.items():
        assert MODELS[name].family == family and MODELS[name].source == "tiny" and MODELS[name].causal
        assert f"name: {name}" in (conf / f"{name}.yaml").read_text()


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_models_are_small_deterministic_and_run(new_name: str, kind: str, tiny_batch) -> None:
    a, b = make(new_name, kind), make(new_name, kind)
    cfg = a.config
    assert cfg.model_type == NEW_TINY[new_name]
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == (2, 32, 512)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    y = out(a, tiny_batch)
    assert y.shape == ((2, 2) if kind == "classification" else (2, 7, 512)) and torch.isfinite(y).all()
    assert head_parameter_names(a) == (["score.weight"] if kind == "classification" else [])


@pytest.mark.parametrize(
    ("name", "kv"),
    [("tiny-mistral", 2), ("tiny-qwen2", 2), ("tiny-qwen3", 2), ("tiny-gemma", 1), ("tiny-gemma2", 2),
     ("tiny-gemma3", 2)],
)  # fmt: skip
def test_grouped_query_attention_makes_k_and_v_narrower(name: str, kv: int) -> None:
    attn = make(name).model.layers[0].self_attn
    assert (
        attn.q_proj.out_features == 4 * 8 and attn.k_proj.out_features == attn.v_proj.out_features == kv * 8
    )


# --- module layout ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_each_role_lands_on_the_right_modules(new_name: str, role: str) -> None:
    model = make(new_name)
    expected = [f"model.layers.{i}.{p}" for i in range(2) for p in layout(new_name)[role]]
    report = inject(model, LoRAConfig(r=2, targets=[role]))
    assert report.modules == expected == [n for n, _ in lora_modules(model)]
    fused = new_name == "tiny-phi3" and role in ("q", "k", "v", "ffn_in")
    assert all(isinstance(model.get_submodule(p), FusedLoRA if fused else LoRALinear) for p in expected)


def test_phi3_fused_layouts_have_the_config_widths() -> None:
    model = make("tiny-phi3")
    qkv, gate_up = "model.layers.0.self_attn.qkv_proj", "model.layers.0.mlp.gate_up_proj"
    assert fused_layout(model, qkv) == (("q", "k", "v"), (32, 16, 16))  # 4 heads x 8, 2 kv heads x 8 each
    assert fused_layout(model, gate_up) == (("gate", "up"), (64, 64))
    assert fused_slices(model, qkv) == 3 and slice_widths(model, gate_up) == (64, 64)
    assert fused_layout(model, "model.layers.0.self_attn.o_proj") is None
    # The widths follow the config: multi-head (kv heads = heads) gives equal thirds.
    cfg = build_config("tiny-phi3")
    cfg.num_key_value_heads = 4
    mha = transformers.Phi3ForCausalLM(cfg)
    assert slice_widths(mha, qkv) == (32, 32, 32)


# --- LoRA: B = 0, merge, unmerge ------------------------------------------------------------------------------


@pytest.mark.parametrize("targets", TARGET_SETS, ids="-".join)
@pytest.mark.parametrize("kind", KINDS)
def test_zero_b_model_equals_base_model_bit_for_bit(new_name: str, kind: str, targets, tiny_batch) -> None:
    base, ours = make(new_name, kind), make(new_name, kind)
    report = inject(ours, LoRAConfig(r=4, alpha=8, targets=targets))
    assert report.modules
    assert torch.equal(out(ours, tiny_batch), out(base, tiny_batch))


@pytest.mark.parametrize("targets", [["q", "v"], list(ROLES)], ids="-".join)
def test_merge_matches_unmerged_and_unmerge_restores(
    new_name: str, targets, tiny_batch, randomize_lora
) -> None:
    model = make(new_name)
    torch.manual_seed(0)
    inject(model, LoRAConfig(r=4, alpha=16, targets=targets))
    randomize_lora(model)
    w0 = {n: m.weight.detach().clone() for n, m in lora_modules(model)}
    y = out(model, tiny_batch)
    assert (y - out(make(new_name), tiny_batch)).abs().max() > 1e-3  # LoRA changes the function
    merge(model)
    assert not any(torch.equal(m.weight, w0[n]) for n, m in lora_modules(model))
    torch.testing.assert_close(out(model, tiny_batch), y, atol=1e-5, rtol=0)
    unmerge(model)
    for n, m in lora_modules(model):
        torch.testing.assert_close(m.weight, w0[n], atol=1e-6, rtol=0)
    torch.testing.assert_close(out(model, tiny_batch), y, atol=1e-5, rtol=0)


@pytest.mark.parametrize("targets", [["q", "v"], list(ROLES)], ids="-".join)
@pytest.mark.parametrize("kind", KINDS)
def test_peft_export_reloads_through_peft_to_the_same_outputs(
    new_name: str, kind: str, targets, tiny_batch, tmp_path, randomize_lora
) -> None:
    peft = pytest.importorskip("peft")
    model = make(new_name, kind)
    cfg = LoRAConfig(r=4, alpha=8, targets=targets)
    methods.apply(model, "lora", cfg, head=head_parameter_names(model))
    randomize_lora(model)
    if kind == "classification":
        with torch.no_grad():
            model.score.weight.add_(0.1)
    export_peft(model, tmp_path, cfg, base_model=f"local/{new_name}")
    exported = json.loads((tmp_path / "adapter_config.json").read_text())
    assert exported["base_model_name_or_path"] == f"local/{new_name}"
    if new_name == "tiny-phi3":  # q, v: one rank-2r LoRA over the fused qkv_proj (k rows zero), same alpha/r
        qkv = [f"model.layers.{i}.self_attn.qkv_proj" for i in range(2)]
        assert set(qkv) <= set(exported["target_modules"])
        assert all(
            exported["rank_pattern"][p] == 2 * cfg.r if targets == ["q", "v"] else 3 * cfg.r for p in qkv
        )
        assert all(
            exported["alpha_pattern"][p] == exported["rank_pattern"][p] * cfg.alpha / cfg.r for p in qkv
        )
    reloaded = peft.PeftModel.from_pretrained(make(new_name, kind), tmp_path).eval()
    y = out(model, tiny_batch)
    assert (out(reloaded, tiny_batch) - y).abs().max() <= 1e-5
    assert (out(make(new_name, kind), tiny_batch) - y).abs().max() > 1e-3


def test_save_load_round_trip(new_name: str, tiny_batch, tmp_path, randomize_lora) -> None:
    model = make(new_name, "classification")
    cfg = LoRAConfig(r=4, alpha=8, targets=list(ROLES))
    report = methods.apply(model, "lora", cfg, head=head_parameter_names(model))
    randomize_lora(model)
    save_adapter(model, tmp_path, "lora", cfg, report)
    fresh = make(new_name, "classification")
    assert load_adapter(fresh, tmp_path).trainable == report.trainable
    assert torch.equal(out(fresh, tiny_batch), out(model, tiny_batch))


# --- Phi-3: unequal slices ----------------------------------------------------------------------------------------


def test_phi3_qv_adapts_only_the_q_and_v_rows_each_at_its_own_width(randomize_lora) -> None:
    model = make("tiny-phi3")
    original = model.model.layers[0].self_attn.qkv_proj
    w0 = original.weight.detach().clone()
    cfg = LoRAConfig(r=4, alpha=16, targets=["q", "v"])
    inject(model, cfg)
    wrapper = model.model.layers[0].self_attn.qkv_proj
    assert (
        isinstance(wrapper, FusedLoRA) and wrapper.widths == (32, 16, 16) and wrapper.offsets == (0, 32, 48)
    )
    assert wrapper.width is None and wrapper.slices == [0, 2]
    assert {n: tuple(p.shape) for n, p in wrapper.lora_B.items()} == {"q": (32, 4), "v": (16, 4)}
    assert {n: tuple(p.shape) for n, p in wrapper.lora_A.items()} == {"q": (4, 32), "v": (4, 32)}
    randomize_lora(model)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, 32, generator=g)
    with torch.no_grad():
        y, base = wrapper(x), x @ w0.T
        for n, rows in (("q", slice(0, 32)), ("v", slice(48, 64))):
            expected = base[..., rows] + cfg.scaling * (x @ wrapper.lora_A[n].T @ wrapper.lora_B[n].T)
            torch.testing.assert_close(y[..., rows], expected, atol=1e-5, rtol=1e-5)
        assert torch.equal(y[..., 32:48], base[..., 32:48])  # k untouched
        delta = wrapper.delta()
        assert delta.shape == (64, 32) and torch.equal(delta[32:48], torch.zeros(16, 32))
        a, b = wrapper.stacked()
        torch.testing.assert_close(cfg.scaling * b @ a, delta, atol=1e-6, rtol=0)


def test_phi3_lora_has_llamas_parameter_count() -> None:
    """Per-slice LoRA on the fused projections trains exactly what LoRA on the separate Llama-layout matrices of the
    same sizes trains (Mistral's tiny config has Phi-3's dimensions)."""
    for targets in (["q", "v"], ["k"], ["ffn_in"], list(ROLES)):
        counts = []
        for name in ("tiny-phi3", "tiny-mistral"):
            model = make(name)
            report = methods.apply(model, "lora", LoRAConfig(r=4, targets=targets))
            params = dict(model.named_parameters())
            counts.append(sum(params[n].numel() for n in report.trainable))
        assert counts[0] == counts[1], targets


def test_rank_is_checked_against_the_adapted_slices_only() -> None:
    with pytest.raises(
        ValueError, match=r"r=17 exceeds the size of model.layers.0.self_attn.qkv_proj \(16 x 32"
    ):
        inject(make("tiny-phi3"), LoRAConfig(r=17, targets=["k"]))
    inject(make("tiny-phi3"), LoRAConfig(r=17, targets=["q"]))  # q is 32 wide: rank 17 fits


def _as_llama(phi3: nn.Module) -> nn.Module:
    """A LlamaForCausalLM with the Phi-3 model's weights, its fused projections cut into separate ones."""
    c = phi3.config
    llama = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=c.vocab_size,
            hidden_size=c.hidden_size,
            intermediate_size=c.intermediate_size,
            num_hidden_layers=c.num_hidden_layers,
            num_attention_heads=c.num_attention_heads,
            num_key_value_heads=c.num_key_value_heads,
            max_position_embeddings=c.max_position_embeddings,
            rms_norm_eps=c.rms_norm_eps,
            hidden_act=c.hidden_act,
            tie_word_embeddings=c.tie_word_embeddings,
            rope_parameters=c.rope_parameters,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )  # fmt: skip
    ).eval()
    sd = {}
    for k, v in phi3.state_dict().items():
        if "qkv_proj" in k:
            for part, w in zip(("q", "k", "v"), v.split([32, 16, 16]), strict=True):
                sd[k.replace("qkv_proj", f"{part}_proj")] = w
        elif "gate_up_proj" in k:
            for part, w in zip(("gate", "up"), v.chunk(2), strict=True):
                sd[k.replace("gate_up_proj", f"{part}_proj")] = w
        else:
            sd[k] = v
    llama.load_state_dict(sd, strict=True)
    return llama


@pytest.mark.parametrize("targets", [["q", "v"], ["k"], ["q", "k", "v", "ffn_in"], list(ROLES)], ids="-".join)
def test_phi3_per_slice_lora_equals_lora_on_the_equivalent_llama(targets, tiny_batch, randomize_lora) -> None:
    phi3 = make("tiny-phi3")
    llama = _as_llama(phi3)
    assert torch.equal(out(phi3, tiny_batch), out(llama, tiny_batch))  # the two layouts compute the same
    cfg = LoRAConfig(r=4, alpha=8, targets=targets)
    inject(phi3, cfg)
    inject(llama, cfg)
    randomize_lora(phi3)
    theirs = dict(lora_modules(llama))
    split = {"qkv_proj": ("q", "k", "v"), "gate_up_proj": ("gate", "up")}
    with torch.no_grad():
        for path, m in lora_modules(phi3):
            if isinstance(m, FusedLoRA):
                for n in m.lora_A:
                    twin = theirs[path.replace(path.rsplit(".", 1)[1], f"{n}_proj")]
                    twin.lora_A.copy_(m.lora_A[n])
                    twin.lora_B.copy_(m.lora_B[n])
            else:
                theirs[path].lora_A.copy_(m.lora_A)
                theirs[path].lora_B.copy_(m.lora_B)
    assert all(
        k in split for k in {p.rsplit(".", 1)[1] for p, m in lora_modules(phi3) if isinstance(m, FusedLoRA)}
    )
    y = out(phi3, tiny_batch)
    torch.testing.assert_close(y, out(llama, tiny_batch), atol=1e-5, rtol=1e-5)
    merge(phi3)
    torch.testing.assert_close(out(phi3, tiny_batch), y, atol=1e-5, rtol=0)


# --- the other methods on the new layouts ----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["adapter_h", "adapter_p", "adapter_l", "adapter_d", "prefix_embed"])
def test_other_methods_inject_train_and_change_the_output(new_name: str, method: str, tiny_batch) -> None:
    model = make(new_name)
    options = {
        "adapter_d": dict(bottleneck=4, drop_layers=1),
        "prefix_embed": dict(prefix_length=2, infix_length=0),
    }.get(method, dict(bottleneck=4))
    cfg = methods.method_config(method, **options)
    if method == "prefix_embed" and new_name.startswith("tiny-gemma"):
        # Gemma scales its embedding inside a subclass of nn.Embedding, which lora.methods.prefix does not wrap.
        with pytest.raises(TypeError, match="prefix_embed can wrap a plain nn.Embedding, not Gemma"):
            methods.apply(model, method, cfg)
        return
    report = methods.apply(model, method, cfg)
    assert report.trainable and report.modules
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n in report.trainable:
            params[n].add_(torch.randn(params[n].shape, generator=g) * 0.1)
    y = out(model, tiny_batch)
    assert torch.isfinite(y).all()
    if method != "prefix_embed":  # prefix_embed changes the sequence length the logits cover
        assert (y - out(make(new_name), tiny_batch)).abs().max() > 1e-4


def test_bitfit_trains_qwen2s_attention_biases_and_refuses_bias_free_families() -> None:
    report = methods.apply(make("tiny-qwen2"), "bitfit", methods.method_config("bitfit"))
    assert report.trainable == [f"model.layers.{i}.self_attn.{p}_proj.bias" for i in range(2) for p in "qkv"]
    with pytest.raises(ValueError, match="bitfit: this phi3 model has no bias terms to train"):
        methods.apply(make("tiny-phi3"), "bitfit", methods.method_config("bitfit"))
