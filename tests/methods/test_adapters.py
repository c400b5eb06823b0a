"""Tests of lora/methods/adapters.py: AdapterH, AdapterL, AdapterP and AdapterDrop on every tiny family.

Each adapter starts as the identity (zero up-projection), so the injected model's logits equal the base model's
exactly (torch.equal). Parameter counts are checked against the formula of the LoRA paper, Section 5.1:
|Theta| = L_Adpt (2 d m + m + d) + 2 L_LN d.
"""

from __future__ import annotations

import pytest
import torch

from lora import methods
from lora.architectures import architecture, layer_list
from lora.checkpoint import load_adapter, save_adapter
from lora.methods.adapters import (
    AdaptedProjection,
    AdapterConfig,
    AdapterDConfig,
    AdapterHConfig,
    BottleneckAdapter,
)
from lora.models import head_parameter_names
from lora.params import count_parameters

from .common import logits, loss, perturb

TINY = ["tiny-bert", "tiny-roberta", "tiny-deberta", "tiny-gpt2", "tiny-llama"]
ADAPTERS = ["adapter_h", "adapter_l", "adapter_p", "adapter_d"]
CONFIGS = {"adapter_h": AdapterHConfig, "adapter_l": AdapterConfig, "adapter_p": AdapterConfig}


def config(method: str, m: int = 8) -> AdapterConfig:
    if method == "adapter_d":
        return AdapterDConfig(bottleneck=m, drop_layers=1)
    return CONFIGS[method](bottleneck=m)


@pytest.mark.parametrize("method", ADAPTERS)
@pytest.mark.parametrize("name", TINY)
def test_starts_as_the_identity_and_trains_only_its_parameters(name, method, make_tiny, tiny_batch) -> None:
    base, model = make_tiny(name), make_tiny(name)
    head = head_parameter_names(model)
    report = methods.apply(model, method, config(method), head=head)
    assert torch.equal(logits(model, tiny_batch), logits(base, tiny_batch))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(report.trainable) | set(head)
    model.train()
    loss(model, tiny_batch).backward()
    for n, p in model.named_parameters():
        if n not in trainable:
            assert p.grad is None, n
    ups = [n for n in report.trainable if ".adapter.up." in n]
    assert ups and all(dict(model.named_parameters())[n].grad.abs().sum() > 0 for n in ups)


@pytest.mark.parametrize("method", ADAPTERS)
@pytest.mark.parametrize("name", TINY)
def test_base_state_dict_keys_are_kept(name, method, make_tiny) -> None:
    base, model = make_tiny(name), make_tiny(name)
    report = methods.apply(model, method, config(method))
    result = model.load_state_dict(base.state_dict(), strict=False)
    new = set(model.state_dict()) - set(base.state_dict())
    assert result.unexpected_keys == []
    assert set(result.missing_keys) == new and new <= set(report.trainable)


@pytest.mark.parametrize("method", ADAPTERS)
@pytest.mark.parametrize("name", ["tiny-roberta", "tiny-gpt2", "tiny-llama"])
def test_save_load_round_trip(name, method, make_tiny, tiny_batch, tmp_path) -> None:
    model = make_tiny(name)
    cfg = config(method)
    report = methods.apply(model, method, cfg, head=head_parameter_names(model))
    perturb(model, report.trainable, std=0.1)  # adapters and, for adapter_h, the trained layer norms
    expected = logits(model, tiny_batch)
    assert not torch.equal(expected, logits(make_tiny(name), tiny_batch))
    save_adapter(model, tmp_path, method, cfg, report)
    fresh = make_tiny(name)
    loaded = load_adapter(fresh, tmp_path)
    assert loaded.trainable == report.trainable
    assert torch.equal(logits(fresh, tiny_batch), expected)


@pytest.mark.parametrize("name", TINY)
def test_placement_follows_the_architecture(name, make_tiny) -> None:
    arch = architecture(make_tiny(name))
    for method, roles, first in [
        ("adapter_h", ("attn_out", "ffn_out"), 0),
        ("adapter_l", ("ffn_out",), 0),
        ("adapter_p", ("ffn_out",), 0),
        ("adapter_d", ("ffn_out",), 1),
    ]:
        model = make_tiny(name)
        report = methods.apply(model, method, config(method))
        prefix, blocks = layer_list(model)
        expected = [f"{prefix}.{i}.{getattr(arch, r)}" for i in range(first, len(blocks)) for r in roles]
        assert report.modules == expected
        assert all(isinstance(model.get_submodule(p), AdaptedProjection) for p in expected)


@pytest.mark.parametrize("name", TINY)
def test_counts_follow_the_paper_formula(name, make_tiny) -> None:
    """|Theta| = L_Adpt (2 d m + m + d) + 2 L_LN d (Section 5.1); tiny models: d = 32, 2 layers, m = 8.
    Llama's RMSNorm has a scale but no shift: d parameters per trained norm, not 2 d."""
    d, m, n_layers = 32, 8, 2
    adapter = 2 * d * m + m + d
    norm = d if name == "tiny-llama" else 2 * d
    expected = {
        "adapter_h": 2 * n_layers * adapter + 2 * n_layers * norm,
        "adapter_l": n_layers * (adapter + 2 * d),
        "adapter_p": n_layers * adapter,
        "adapter_d": (n_layers - 1) * adapter,
    }
    for method, count in expected.items():
        model = make_tiny(name)
        methods.apply(model, method, config(method, m), head=head_parameter_names(model))
        assert count_parameters(model).trainable == count, method


def test_adapter_computes_the_bottleneck_map() -> None:
    """y + up(act(down(LN(y)))) with the modules' own weights, checked against the formula written out."""
    torch.manual_seed(0)
    ad = BottleneckAdapter(
        6, AdapterConfig(bottleneck=3, nonlinearity="tanh"), True, torch.device("cpu"), torch.float32
    )
    with torch.no_grad():
        ad.up.weight.normal_()
        ad.up.bias.normal_()
    y = torch.randn(2, 4, 6)
    h = (y - y.mean(-1, keepdim=True)) / torch.sqrt(y.var(-1, unbiased=False, keepdim=True) + 1e-5)
    expected = y + torch.tanh(h @ ad.down.weight.T + ad.down.bias) @ ad.up.weight.T + ad.up.bias
    torch.testing.assert_close(ad(y), expected, rtol=1e-5, atol=1e-5)


def test_train_norms_false_trains_adapters_only(make_tiny) -> None:
    model = make_tiny("tiny-gpt2")
    report = methods.apply(model, "adapter_h", AdapterHConfig(bottleneck=4, train_norms=False))
    assert all(".adapter." in n for n in report.trainable)
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".ln_" in n)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(bottleneck=0), "bottleneck must be a positive integer, got 0"),
        (dict(bottleneck=-4), "bottleneck must be a positive integer, got -4"),
        (dict(bottleneck=True), "bottleneck must be a positive integer, got True"),
        (dict(bottleneck=8.0), "bottleneck must be a positive integer, got 8.0"),
        (
            dict(nonlinearity="swish2"),
            "unknown adapter nonlinearity 'swish2': choose from relu, gelu, silu, tanh",
        ),
        (dict(init_std=-1.0), "init_std must be >= 0"),
    ],
)
@pytest.mark.parametrize("method", ADAPTERS)
def test_bad_config_is_a_one_line_error(method: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as e:
        methods.method_config(method, **kwargs)
    assert "\n" not in str(e.value)


def test_adapter_drop_bounds(make_tiny) -> None:
    with pytest.raises(ValueError, match="drop_layers must be an integer >= 0, got -1"):
        AdapterDConfig(drop_layers=-1)
    for drop in (2, 7):
        with pytest.raises(ValueError, match=f"drop_layers={drop} leaves no adapter: the model has 2 layers"):
            methods.apply(make_tiny("tiny-bert"), "adapter_d", AdapterDConfig(bottleneck=4, drop_layers=drop))


def test_inject_twice_is_an_error(make_tiny) -> None:
    model = make_tiny("tiny-roberta")
    methods.apply(model, "adapter_p", AdapterConfig(bottleneck=4))
    with pytest.raises(ValueError, match="already carries an adapter"):
        methods.apply(model, "adapter_h", AdapterHConfig(bottleneck=4))
