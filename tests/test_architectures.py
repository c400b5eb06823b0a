"""Tests of lora/architectures.py: roles (q, k, v, o, ffn_in, ffn_out; Section 4.2) -> module paths per family.

The expected paths are written out from the transformers module names, independently of the ARCHITECTURES table.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import transformers
from torch import nn

from lora import architectures, methods
from lora.architectures import ROLES, fused_layout, fused_slices, resolve_sites, select_layers
from lora.methods.lora import FusedLoRA, LoRAConfig, LoRALinear, inject, lora_modules

_BERT_LIKE = {
    "q": ["attention.self.query"],
    "k": ["attention.self.key"],
    "v": ["attention.self.value"],
    "o": ["attention.output.dense"],
    "ffn_in": ["intermediate.dense"],
    "ffn_out": ["output.dense"],
}
# tiny model -> (prefix of layer i, role -> module paths inside a layer)
EXPECTED: dict[str, tuple[str, dict[str, list[str]]]] = {
    "tiny-bert": ("bert.encoder.layer.{i}.", _BERT_LIKE),
    "tiny-roberta": ("roberta.encoder.layer.{i}.", _BERT_LIKE),
    "tiny-deberta": (
        "deberta.encoder.layer.{i}.",
        _BERT_LIKE
        | {
            "q": ["attention.self.query_proj"],
            "k": ["attention.self.key_proj"],
            "v": ["attention.self.value_proj"],
        },
    ),
    "tiny-gpt2": (
        "transformer.h.{i}.",
        {
            "q": ["attn.c_attn"],
            "k": ["attn.c_attn"],
            "v": ["attn.c_attn"],
            "o": ["attn.c_proj"],
            "ffn_in": ["mlp.c_fc"],
            "ffn_out": ["mlp.c_proj"],
        },
    ),
    "tiny-llama": (
        "model.layers.{i}.",
        {
            "q": ["self_attn.q_proj"],
            "k": ["self_attn.k_proj"],
            "v": ["self_attn.v_proj"],
            "o": ["self_attn.o_proj"],
            "ffn_in": ["mlp.gate_proj", "mlp.up_proj"],
            "ffn_out": ["mlp.down_proj"],
        },
    ),
}


def lora_paths(model: nn.Module) -> list[str]:
    return [n for n, _ in lora_modules(model)]


@pytest.mark.parametrize("role", ROLES)
def test_each_role_lands_on_the_right_modules(tiny_name: str, role: str, make_tiny) -> None:
    model = make_tiny(tiny_name)
    prefix, roles = EXPECTED[tiny_name]
    expected = [prefix.format(i=i) + p for i in range(2) for p in roles[role]]
    report = inject(model, LoRAConfig(r=2, targets=[role]))
    assert report.modules == expected == lora_paths(model)
    kind = FusedLoRA if tiny_name == "tiny-gpt2" and role in ("q", "k", "v") else LoRALinear
    assert all(isinstance(model.get_submodule(p), kind) for p in expected)


def test_gpt2_q_and_v_share_the_fused_c_attn(make_tiny) -> None:
    model = make_tiny("tiny-gpt2")
    assert resolve_sites(model, ["q", "v", "o"], layers=[0]) == {
        "transformer.h.0.attn.c_attn": [("q", 0), ("v", 2)],
        "transformer.h.0.attn.c_proj": [("o", None)],
    }
    assert fused_slices(model, "transformer.h.0.attn.c_attn") == 3
    assert fused_slices(model, "transformer.h.0.attn.c_proj") is None
    assert fused_layout(model, "transformer.h.0.attn.c_attn") == (
        ("q", "k", "v"),
        (32, 32, 32),
    )  # equal thirds


def test_phi3_q_and_v_share_the_fused_qkv_proj_and_ffn_in_is_gate_and_up(make_tiny) -> None:
    model = make_tiny("tiny-phi3", "causal_lm")
    assert resolve_sites(model, ["q", "v", "ffn_in"], layers=[1]) == {
        "model.layers.1.self_attn.qkv_proj": [("q", 0), ("v", 2)],
        "model.layers.1.mlp.gate_up_proj": [("ffn_in", 0), ("ffn_in", 1)],
    }
    assert fused_layout(model, "model.layers.1.self_attn.qkv_proj") == (("q", "k", "v"), (32, 16, 16))


def test_fused_widths_that_do_not_add_up_are_a_clear_error(make_tiny, monkeypatch) -> None:
    phi3 = architectures.ARCHITECTURES["phi3"]
    bad = dict(phi3.slices) | {
        "self_attn.qkv_proj": architectures.Fused(("q", "k", "v"), lambda c: (32, 32, 32))
    }
    monkeypatch.setitem(architectures.ARCHITECTURES, "phi3", dataclasses.replace(phi3, slices=bad))
    model = make_tiny("tiny-phi3", "causal_lm")
    with pytest.raises(
        ValueError, match=r"qkv_proj is 64 wide, which does not split into its 3 slices q, k, v of "
    ):
        inject(model, LoRAConfig(targets=["q"]))
    assert not lora_modules(model)


def test_unknown_role_lists_the_roles_the_model_has(make_tiny) -> None:
    with pytest.raises(ValueError, match=r"'query'.*roberta.*q, k, v, o, ffn_in, ffn_out"):
        resolve_sites(make_tiny("tiny-roberta"), ["q", "query"])


def test_role_missing_from_an_architecture_is_a_clear_error(make_tiny, monkeypatch) -> None:
    gpt2 = architectures.ARCHITECTURES["gpt2"]
    attention_only = {k: v for k, v in gpt2.roles.items() if k in ("q", "k", "v", "o")}
    monkeypatch.setitem(architectures.ARCHITECTURES, "gpt2", dataclasses.replace(gpt2, roles=attention_only))
    model = make_tiny("tiny-gpt2")
    with pytest.raises(ValueError, match=r"'ffn_in' for gpt2: this model has roles q, k, v, o$"):
        inject(model, LoRAConfig(targets=["q", "ffn_in"]))
    assert not lora_modules(model)


def test_missing_layer_list_is_a_clear_error(make_tiny, monkeypatch) -> None:
    bert = architectures.ARCHITECTURES["bert"]
    monkeypatch.setitem(architectures.ARCHITECTURES, "bert", dataclasses.replace(bert, layers="blocks"))
    with pytest.raises(ValueError, match="no layer list 'blocks'"):
        inject(make_tiny("tiny-bert"), LoRAConfig())


def _fake_config_module() -> nn.Module:
    m = nn.Linear(4, 4)
    m.config = SimpleNamespace(model_type="mamba-fake")
    return m


@pytest.mark.parametrize(
    ("build", "named"),
    [
        (
            lambda: transformers.T5Model(
                transformers.T5Config(
                    vocab_size=64,
                    d_model=16,
                    d_kv=8,
                    d_ff=32,
                    num_layers=1,
                    num_decoder_layers=1,
                    num_heads=2,
                )
            ),
            "'t5'",
        ),
        (_fake_config_module, "'mamba-fake'"),
        (lambda: nn.Linear(4, 4), "None"),
    ],
    ids=["t5", "fake-config", "no-config"],
)
def test_unsupported_architecture_names_it_and_the_supported_ones(build, named: str) -> None:
    with pytest.raises(
        ValueError, match=rf"unsupported architecture {named}: supported model types are bert, "
    ) as e:
        inject(build(), LoRAConfig())
    assert str(e.value).endswith("llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3_text, phi3")


# --- layers=[...] ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layers", "kept"), [([1], [1]), ([-1], [1]), ([0, -1], [0, 1]), ([-2, 0], [0]), (None, [0, 1])]
)
def test_layers_restricts_the_adapted_layers(layers: list[int] | None, kept: list[int], make_tiny) -> None:
    for name in ("tiny-roberta", "tiny-gpt2"):
        model = make_tiny(name)
        report = inject(model, LoRAConfig(targets=["q", "v"], layers=layers))
        prefix, roles = EXPECTED[name]
        expected = list(
            dict.fromkeys(prefix.format(i=i) + p for i in kept for r in ("q", "v") for p in roles[r])
        )
        assert report.modules == expected == lora_paths(model)


@pytest.mark.parametrize("bad", [2, -3, 10])
def test_out_of_range_layer_is_a_clear_error(bad: int, make_tiny) -> None:
    model = make_tiny("tiny-llama")
    with pytest.raises(ValueError, match=rf"layer index {bad} is out of range: the model has 2 layers"):
        inject(model, LoRAConfig(layers=[0, bad]))
    assert not lora_modules(model)


def test_select_layers_sorts_and_deduplicates() -> None:
    assert select_layers(4, None) == [0, 1, 2, 3]
    assert select_layers(4, [3, -4, -1, 1]) == [0, 1, 3]


# --- one injection per model -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second"), [(["q", "v"], ["q", "v"]), (["v"], ["q", "v"]), (["q"], ["ffn_out"]), (["q"], ["v"])]
)
def test_injecting_twice_is_an_error_and_changes_nothing(
    tiny_name: str, first: list[str], second: list[str], make_tiny
) -> None:
    model = make_tiny(tiny_name)
    inject(model, LoRAConfig(targets=first))
    before = {n: id(m) for n, m in lora_modules(model)}
    with pytest.raises(ValueError, match="already carries LoRA; inject once per model"):
        inject(model, LoRAConfig(targets=second))
    assert {n: id(m) for n, m in lora_modules(model)} == before


def test_apply_freezes_the_base_before_injecting(make_tiny) -> None:
    model = make_tiny("tiny-llama")
    report = methods.apply(model, "lora", LoRAConfig(targets=["q"]))
    assert [n for n, p in model.named_parameters() if p.requires_grad] == report.trainable
    with pytest.raises(ValueError, match="already carries LoRA"):
        methods.apply(model, "lora", LoRAConfig(targets=["q"]))
