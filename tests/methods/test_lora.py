"""Tests of lora/methods/lora.py: h = W0 x + (alpha/r) B A x (Hu et al., 2021, Section 4) on every tiny family.

Exact equalities (torch.equal) where the computation is the same sequence of float ops; tolerances where a merge
reorders it (fp32: 1e-5 on logits, 1e-6 on weights). The differential test against peft's own LoRA pins the
semantics to an independent implementation.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from lora import methods
from lora.architectures import ROLES
from lora.methods.lora import (
    FusedLoRA,
    LoRAConfig,
    LoRALinear,
    inject,
    lora_modules,
    merge,
    merged_state_dict,
    unmerge,
)
from lora.models import head_parameter_names

from .common import logits

TARGET_SETS = [["q", "v"], ["q", "k", "v", "o"], ["ffn_in", "ffn_out"], list(ROLES)]


# --- B = 0 at initialisation: the adapted model is the pretrained function (Section 4.1) -------------------------


@pytest.mark.parametrize("targets", TARGET_SETS, ids="-".join)
def test_zero_b_model_equals_base_model(tiny_name: str, targets: list[str], make_tiny, tiny_batch) -> None:
    base, ours = make_tiny(tiny_name), make_tiny(tiny_name)
    report = inject(ours, LoRAConfig(r=4, alpha=8, targets=targets))
    assert report.modules and lora_modules(ours)
    assert torch.equal(logits(ours, tiny_batch), logits(base, tiny_batch))


def test_wrapped_model_keeps_every_base_key_and_tensor(tiny_name: str, make_tiny) -> None:
    base, ours = make_tiny(tiny_name), make_tiny(tiny_name)
    inject(ours, LoRAConfig(targets=list(ROLES)))
    sd = ours.state_dict()
    for key, value in base.state_dict().items():
        assert torch.equal(sd[key], value), key
    assert all(re.search(r"\.lora_[AB](\.[qkv])?$", k) for k in set(sd) - set(base.state_dict()))


# --- Only A and B (and the task head) are trained ---------------------------------------------------------------


def test_only_lora_and_head_receive_gradients_and_are_optimised(
    tiny_name: str, make_tiny, tiny_batch, randomize_lora
) -> None:
    model = make_tiny(tiny_name)
    head = head_parameter_names(model)
    report = methods.apply(model, "lora", LoRAConfig(r=4, targets=["q", "v", "ffn_out"]), head=head)
    randomize_lora(model)  # B != 0, so that A gets a non-zero gradient too
    assert all(re.search(r"\.lora_[AB](\.[qkv])?$", n) for n in report.trainable)
    expected = set(report.trainable) | set(head)

    model(**tiny_batch).logits.float().pow(2).mean().backward()
    named = dict(model.named_parameters())
    assert {n for n, p in named.items() if p.grad is not None} == expected
    assert all(named[n].grad.abs().sum() > 0 for n in report.trainable)

    trainable = [p for p in model.parameters() if p.requires_grad]
    name_of = {id(p): n for n, p in named.items()}
    assert {name_of[id(p)] for p in trainable} == expected
    before = {n: p.detach().clone() for n, p in named.items()}
    torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.1).step()
    for n, p in named.items():
        assert torch.equal(p, before[n]) != (n in expected), n  # frozen: unchanged; trained: moved


# --- Merge W <- W0 + (alpha/r) B A: same function, no extra latency (Section 4.1) --------------------------------


def test_merge_unmerge_round_trip(tiny_name: str, make_tiny, tiny_batch, randomize_lora) -> None:
    model = make_tiny(tiny_name)
    torch.manual_seed(0)  # A's init draws from the global generator: fixed, whatever ran before
    inject(model, LoRAConfig(r=4, alpha=16, targets=list(ROLES)))
    randomize_lora(model)
    w0 = {n: m.weight.detach().clone() for n, m in lora_modules(model)}
    y = logits(model, tiny_batch)
    base = logits(make_tiny(tiny_name), tiny_batch)
    assert (y - base).abs().max() > 1e-4 * base.abs().max()  # LoRA does something (logits are ~1e-2 here)

    merge(model)
    assert all(m.merged for _, m in lora_modules(model))
    assert not any(torch.equal(m.weight, w0[n]) for n, m in lora_modules(model))
    torch.testing.assert_close(logits(model, tiny_batch), y, atol=1e-5, rtol=0)
    with pytest.raises(RuntimeError, match="already merged"):
        merge(model)

    unmerge(model)
    for n, m in lora_modules(model):
        torch.testing.assert_close(m.weight, w0[n], atol=1e-6, rtol=0)
    torch.testing.assert_close(logits(model, tiny_batch), y, atol=1e-5, rtol=0)
    with pytest.raises(RuntimeError, match="not merged"):
        unmerge(model)


@pytest.mark.parametrize("fn", [merge, unmerge, merged_state_dict])
def test_merge_without_lora_is_a_clear_error(fn: Callable[[nn.Module], object], make_tiny) -> None:
    with pytest.raises(ValueError, match="no LoRA modules"):
        fn(make_tiny("tiny-roberta"))


def test_merged_state_dict_is_pure_and_loads_into_a_plain_model(
    tiny_name: str, make_tiny, tiny_batch, randomize_lora
) -> None:
    model = make_tiny(tiny_name)
    inject(model, LoRAConfig(r=4, alpha=8, targets=["q", "k", "v", "ffn_in"]))
    randomize_lora(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    y = logits(model, tiny_batch)

    merged = merged_state_dict(model)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert not any(m.merged for _, m in lora_modules(model))
    assert not any("lora_" in k for k in merged)

    plain = make_tiny(tiny_name)
    plain.load_state_dict(merged, strict=True)
    torch.testing.assert_close(logits(plain, tiny_batch), y, atol=1e-5, rtol=0)

    merge(model)  # of an already merged model: the weights as they are
    for k, v in merged_state_dict(model).items():
        torch.testing.assert_close(v, merged[k], atol=1e-6, rtol=0)


# --- GPT-2's fused c_attn: q and v are output slices; k is untouched ----------------------------------------------


@pytest.mark.parametrize(
    ("targets", "adapted"),
    [(["q", "v"], {0, 2}), (["q"], {0}), (["k"], {1}), (["v"], {2}), (["q", "k", "v"], {0, 1, 2})],
    ids=["qv", "q", "k", "v", "qkv"],
)
def test_fused_c_attn_adapts_only_the_target_slices(targets: list[str], adapted: set[int], make_tiny) -> None:
    model = make_tiny("tiny-gpt2")
    original = copy.deepcopy(model.transformer.h[0].attn.c_attn)
    cfg = LoRAConfig(r=4, alpha=16, targets=targets)  # scaling alpha/r = 4
    inject(model, cfg)
    wrapper = model.transformer.h[0].attn.c_attn
    assert isinstance(wrapper, FusedLoRA) and isinstance(original, Conv1D)
    names = {"qkv"[s] for s in adapted}
    assert set(wrapper.lora_A.keys()) == set(wrapper.lora_B.keys()) == names
    assert {k for k in wrapper.state_dict() if k.startswith("lora_")} == {
        f"lora_{ab}.{n}" for ab in "AB" for n in names
    }
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n in names:
            wrapper.lora_B[n].copy_(torch.randn(wrapper.lora_B[n].shape, generator=g))
        x = torch.randn(2, 5, 32, generator=g)
        y, base = wrapper(x), original(x)
    d = 32
    assert y.shape == base.shape == (2, 5, 3 * d)
    for s, n in enumerate("qkv"):
        cols = slice(s * d, (s + 1) * d)
        if s in adapted:
            expected = base[..., cols] + cfg.scaling * (x @ wrapper.lora_A[n].T @ wrapper.lora_B[n].T)
            torch.testing.assert_close(y[..., cols], expected, atol=1e-5, rtol=1e-5)
            assert not torch.allclose(y[..., cols], base[..., cols], atol=1e-3)
        else:
            assert torch.equal(y[..., cols], base[..., cols])


def test_fused_lora_takes_slices_of_given_widths() -> None:
    """Phi-3's qkv_proj under GQA: q 64 wide, k and v 16 each. Each adapted slice's B is as tall as its slice and its
    update lands at its own offset; delta() and stacked() agree with the forward."""
    torch.manual_seed(0)
    base = nn.Linear(32, 96, bias=False)
    cfg = LoRAConfig(r=4, alpha=8, targets=["q", "v"])
    m = FusedLoRA(base, cfg, (64, 16, 16), [2, 0])
    assert (m.widths, m.offsets, m.slices, m.names, m.n_slices, m.width) == (
        (64, 16, 16),
        (0, 64, 80),
        [0, 2],
        ("q", "k", "v"),
        3,
        None,
    )
    assert (
        m.lora_B["q"].shape == (64, 4) and m.lora_B["v"].shape == (16, 4) and m.lora_A["v"].shape == (4, 32)
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n in ("q", "v"):
            m.lora_B[n].copy_(torch.randn(m.lora_B[n].shape, generator=g))
        x = torch.randn(3, 32, generator=g)
        y, y0 = m(x), base(x)
        torch.testing.assert_close(y[:, :64], y0[:, :64] + 2 * x @ m.lora_A["q"].T @ m.lora_B["q"].T)
        assert torch.equal(y[:, 64:80], y0[:, 64:80])
        torch.testing.assert_close(y[:, 80:], y0[:, 80:] + 2 * x @ m.lora_A["v"].T @ m.lora_B["v"].T)
        torch.testing.assert_close(y, y0 + x @ m.delta().T, atol=1e-5, rtol=1e-5)
        a, b = m.stacked()
        assert a.shape == (8, 32) and b.shape == (96, 8)
        assert torch.equal(b[64:80], torch.zeros(16, 8)) and torch.equal(b[:64, 4:], torch.zeros(64, 4))
        torch.testing.assert_close(2 * b @ a, m.delta(), atol=1e-6, rtol=0)
    merge(m)
    torch.testing.assert_close(m(x), y, atol=1e-5, rtol=0)


def test_fused_lora_with_named_slices_and_an_int_means_equal_slices() -> None:
    m = FusedLoRA(nn.Linear(8, 12), LoRAConfig(r=2, targets=["ffn_in"]), 2, [0, 1], names=("gate", "up"))
    assert m.widths == (6, 6) and m.width == 6 and set(m.lora_A) == {"gate", "up"}
    assert m.lora_names() == ["lora_A.gate", "lora_A.up", "lora_B.gate", "lora_B.up"]


@pytest.mark.parametrize(
    ("widths", "slices", "names", "match"),
    [
        (5, [0], None, "is not 5 equal slices"),
        ((6, 6, 6), [0], None, r"does not split into slices of widths \(6, 6, 6\)"),
        ((3, 3, 3, 3), [0], None, r"4 slices need 4 names"),
        ((8, 4), [2], ("a", "b"), r"slice indices \[2\] are not among the 2 slices"),
    ],
)
def test_fused_lora_refuses_inconsistent_slices(widths, slices, names, match) -> None:
    with pytest.raises(ValueError, match=match):
        FusedLoRA(nn.Linear(8, 12), LoRAConfig(r=2), widths, slices, names)


def test_conv1d_wrapper_has_linear_semantics_with_transposed_weight() -> None:
    """LoRA around a Conv1D (weight (d_in, d_out)) == LoRA around the equivalent nn.Linear (weight (d_out, d_in))."""
    torch.manual_seed(0)
    conv, lin = Conv1D(24, 16), nn.Linear(16, 24)  # Conv1D(nf=d_out, nx=d_in)
    with torch.no_grad():
        conv.bias.normal_()
        lin.weight.copy_(conv.weight.T)
        lin.bias.copy_(conv.bias)
    cfg = LoRAConfig(r=4, alpha=8)
    lc, ll = LoRALinear(conv, cfg), LoRALinear(lin, cfg)
    assert (lc.in_features, lc.out_features) == (ll.in_features, ll.out_features) == (16, 24)
    assert lc.lora_A.shape == ll.lora_A.shape == (4, 16) and lc.lora_B.shape == ll.lora_B.shape == (24, 4)
    with torch.no_grad():
        ll.lora_A.copy_(lc.lora_A)
        lc.lora_B.normal_()
        ll.lora_B.copy_(lc.lora_B)
    x = torch.randn(3, 5, 16)
    torch.testing.assert_close(lc(x), ll(x), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(lc.delta(), ll.delta().T, atol=0, rtol=0)
    merge(lc)
    merge(ll)
    torch.testing.assert_close(lc.weight, ll.weight.T, atol=1e-6, rtol=0)


def test_projection_refuses_other_modules() -> None:
    with pytest.raises(TypeError, match="Conv2d"):
        LoRALinear(nn.Conv2d(3, 3, 1), LoRAConfig())


# --- LoRAConfig validation --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        (dict(r=0), "0"),
        (dict(r=-2), "-2"),
        (dict(r=2.5), "2.5"),
        (dict(r="8"), "'8'"),
        (dict(r=True), "True"),
        (dict(alpha=0), "0"),
        (dict(alpha=-1.0), "-1.0"),
        (dict(dropout=1.0), "1.0"),
        (dict(dropout=-0.1), "-0.1"),
        (dict(targets=[]), "targets"),
        (dict(targets=["query"]), "query"),
        (dict(targets="qv"), "qv"),  # a bare string is one role name, not the roles q and v
        (dict(init="xavier"), "xavier"),
    ],
)
def test_config_rejects_bad_values_naming_them(kwargs: dict, named: str) -> None:
    with pytest.raises(ValueError, match=re.escape(named)) as e:
        LoRAConfig(**kwargs)
    assert "\n" not in str(e.value)


def test_config_normalises_targets_and_scales_by_alpha_over_r() -> None:
    assert LoRAConfig(targets="v").targets == ["v"]
    assert LoRAConfig(targets=("q", "v")).targets == ["q", "v"]
    assert LoRAConfig(r=4, alpha=32).scaling == 8.0


# --- Initialisation: A random, B = 0 -----------------------------------------------------------------------------


def test_gaussian_init_draws_a_with_std_one_over_r_and_zero_b() -> None:
    torch.manual_seed(0)
    m = LoRALinear(nn.Linear(512, 64), LoRAConfig(r=4, init="gaussian"))
    assert torch.equal(m.lora_B, torch.zeros(64, 4))
    assert abs(m.lora_A.std().item() - 1 / 4) < 0.05 * (1 / 4)  # 2048 draws: std of the estimate ~1.6%
    assert abs(m.lora_A.mean().item()) < 0.02


def test_kaiming_default_is_uniform_within_one_over_sqrt_fan_in() -> None:
    """kaiming_uniform_(a=sqrt(5)) (the paper's code, and nn.Linear's default): U(-1/sqrt(d_in), 1/sqrt(d_in))."""
    torch.manual_seed(0)
    m = LoRALinear(nn.Linear(512, 64), LoRAConfig(r=4))
    bound = 1 / math.sqrt(512)
    assert torch.equal(m.lora_B, torch.zeros(64, 4))
    assert m.lora_A.abs().max() <= bound
    assert m.lora_A.abs().max() > 0.99 * bound
    assert abs(m.lora_A.std().item() - bound / math.sqrt(3)) < 0.05 * bound / math.sqrt(3)


def test_fused_init_matches_ordinary_init() -> None:
    torch.manual_seed(0)
    m = FusedLoRA(Conv1D(3 * 64, 512), LoRAConfig(r=4, targets=["q", "v"]), 3, [0, 2])
    bound = 1 / math.sqrt(512)
    for n in ("q", "v"):
        assert torch.equal(m.lora_B[n], torch.zeros(64, 4))
        assert m.lora_A[n].shape == (4, 512) and m.lora_A[n].abs().max() <= bound
    assert not torch.equal(m.lora_A["q"], m.lora_A["v"])


# --- Dropout on the LoRA branch input -----------------------------------------------------------------------------


def test_lora_dropout_acts_on_the_lora_branch_only() -> None:
    torch.manual_seed(0)
    m = LoRALinear(nn.Linear(32, 32), LoRAConfig(r=4, alpha=8, dropout=0.5)).train()
    x = torch.randn(4, 32)
    with torch.no_grad():
        base = m.base_forward(x)
        assert torch.equal(m(x), base)  # B = 0: dropout has nothing to act on
        m.lora_B.normal_()
        torch.manual_seed(1)
        y1 = m(x)
        torch.manual_seed(2)
        y2 = m(x)
        torch.manual_seed(1)
        assert torch.equal(m(x), y1)  # the only randomness is the dropout mask
        assert not torch.allclose(y1, y2)
        m.eval()
        y_eval = m(x)
        assert torch.equal(m(x), y_eval)
        torch.testing.assert_close(y_eval, base + 2.0 * (x @ m.lora_A.T @ m.lora_B.T), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["tiny-roberta", "tiny-gpt2"])
def test_lora_dropout_in_a_model_changes_outputs_only_through_the_lora_branch(
    name: str, make_tiny, tiny_batch, randomize_lora
) -> None:
    model = make_tiny(name)  # eval: the model's own dropouts are off
    y_base = logits(model, tiny_batch)
    inject(model, LoRAConfig(r=4, dropout=0.5, targets=["q", "v"]))
    for _, m in lora_modules(model):
        m.lora_dropout.train()
    assert torch.equal(logits(model, tiny_batch), y_base)  # B = 0
    randomize_lora(model)
    assert not torch.allclose(logits(model, tiny_batch), logits(model, tiny_batch))
    model.eval()
    assert torch.equal(logits(model, tiny_batch), logits(model, tiny_batch))


# --- Differential test against peft's LoRA -----------------------------------------------------------------------


def test_matches_peft_lora_on_roberta(make_tiny, tiny_batch) -> None:
    """peft's get_peft_model(LoraConfig(target_modules=[query, value])) and ours, with peft's (random, B != 0)
    factors copied into ours: same outputs (eval, and train mode under the same seed) and same A, B gradients."""
    peft = pytest.importorskip("peft")
    r, alpha = 4, 16
    theirs = peft.get_peft_model(
        make_tiny("tiny-roberta", "base"),
        peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=["query", "value"]),
    )
    ours = make_tiny("tiny-roberta", "base")
    report = methods.apply(ours, "lora", LoRAConfig(r=r, alpha=alpha, targets=["q", "v"]))
    assert len(report.modules) == 4
    params = dict(theirs.named_parameters())
    with torch.no_grad():
        for path, m in lora_modules(ours):
            params[f"base_model.model.{path}.lora_B.default.weight"].normal_()
            m.lora_A.copy_(params[f"base_model.model.{path}.lora_A.default.weight"])
            m.lora_B.copy_(params[f"base_model.model.{path}.lora_B.default.weight"])

    def run(model: nn.Module, train: bool) -> torch.Tensor:
        model.train(train)
        torch.manual_seed(0)  # same dropout masks in both models (the LoRA branches draw none: dropout 0)
        return model(**tiny_batch).last_hidden_state

    for train in (False, True):
        torch.testing.assert_close(run(ours, train), run(theirs, train), atol=1e-6, rtol=0)

    run(ours, True).pow(2).mean().backward()
    run(theirs, True).pow(2).mean().backward()
    for path, m in lora_modules(ours):
        for ab in ("A", "B"):
            grad = params[f"base_model.model.{path}.lora_{ab}.default.weight"].grad
            torch.testing.assert_close(getattr(m, f"lora_{ab}").grad, grad, atol=1e-6, rtol=1e-5)
