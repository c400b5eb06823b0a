"""Tests of lora/methods/adapters.py: AdapterH, AdapterL, AdapterP and AdapterDrop on every tiny family.

Placement tests compare a layer's real output with the adapter formula written out here, by hand, from the
modules' own weights (adapter weights and biases randomised): the released NLU code's Houlsby and Pfeiffer orders on
the post-LN families (BERT, RoBERTa, DeBERTa), Lin et al.'s block-output AdapterL everywhere, and the pre-LN
equivalents on GPT-2 and Llama (see the module docstring of lora/methods/adapters.py). With `zero_up` every adapter
starts as the identity (torch.equal logits); the default is the released code's N(0, 0.02^2) init of both
projections. Parameter counts follow the LoRA paper, Section 5.1: |Theta| = L_Adpt (2 d m + m + d) + 2 L_LN d.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from lora import methods
from lora.architectures import layer_list
from lora.checkpoint import load_adapter, save_adapter
from lora.methods.adapters import (
    AdaptedOutput,
    AdapterConfig,
    AdapterDConfig,
    AdapterHConfig,
    BottleneckAdapter,
    RobustDrop,
)
from lora.models import head_parameter_names
from lora.params import count_parameters

from .common import logits, loss, perturb

TINY = ["tiny-bert", "tiny-roberta", "tiny-deberta", "tiny-gpt2", "tiny-llama"]
POST_LN = ["tiny-bert", "tiny-roberta", "tiny-deberta"]
PRE_LN = ["tiny-gpt2", "tiny-llama"]
ADAPTERS = ["adapter_h", "adapter_l", "adapter_p", "adapter_d"]
CONFIGS = {"adapter_h": AdapterHConfig, "adapter_l": AdapterConfig, "adapter_p": AdapterConfig}


@pytest.fixture(autouse=True)
def _leave_the_global_rng_as_found():
    """Adapter init draws from torch's global generator; restore it after each test so that later test modules see
    the same random state whether or not these tests ran."""
    with torch.random.fork_rng(devices=[]):
        yield


def config(method: str, m: int = 8, **kw: Any) -> AdapterConfig:
    if method == "adapter_d":
        return AdapterDConfig(bottleneck=m, drop_layers=kw.pop("drop_layers", 1), **kw)
    return CONFIGS[method](bottleneck=m, **kw)


# --- the formulas, written out independently of lora/methods/adapters.py -------------------------------------------


def layer_norm(v: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """(v - mean) / sqrt(var + eps) * weight + bias over the last dimension."""
    mu = v.mean(-1, keepdim=True)
    var = ((v - mu) ** 2).mean(-1, keepdim=True)
    return (v - mu) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def bottleneck(
    x: torch.Tensor, ad: BottleneckAdapter, act: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """W_up act(W_down x + b_down) + b_up with the adapter's own weights."""
    return act(x @ ad.down.weight.T + ad.down.bias) @ ad.up.weight.T + ad.up.bias


def relu(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(x, min=0)


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


class Capture:
    """Record the positional inputs and the output of a module during one forward pass."""

    def __init__(self, module: nn.Module):
        self.args: tuple = ()
        self.output: Any = None
        self.handles = [
            module.register_forward_pre_hook(lambda m, a: setattr(self, "args", a)),
            module.register_forward_hook(lambda m, a, o: setattr(self, "output", o)),
        ]

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()


def adapted(make_tiny, name: str, method: str, **kw: Any) -> tuple[nn.Module, nn.Module, str]:
    """(base model, model with `method` and randomised adapter weights and biases, layer-list path)."""
    base, model = make_tiny(name), make_tiny(name)
    report = methods.apply(model, method, config(method, **kw))
    perturb(model, [n for n in report.trainable if ".adapter." in n], std=0.2)
    return base, model, layer_list(model)[0]


# --- identity start, released init, training, keys, save/load ------------------------------------------------------


@pytest.mark.parametrize("method", ADAPTERS)
@pytest.mark.parametrize("name", TINY)
def test_zero_up_starts_as_the_identity_and_trains_only_its_parameters(
    name, method, make_tiny, tiny_batch
) -> None:
    base, model = make_tiny(name), make_tiny(name)
    head = head_parameter_names(model)
    report = methods.apply(model, method, config(method, zero_up=True), head=head)
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
def test_default_init_is_the_released_codes(method, make_tiny, tiny_batch) -> None:
    """Released NLU code: both projections N(0, 0.02^2) (RobertaPreTrainedModel._init_weights), biases zero; so
    the adapted model is near, not exactly, the base model at the start."""
    base, model = make_tiny("tiny-roberta"), make_tiny("tiny-roberta")
    methods.apply(model, method, config(method))
    ads = [m for m in model.modules() if isinstance(m, BottleneckAdapter)]
    assert ads
    for ad in ads:
        assert ad.down.weight.abs().sum() > 0 and ad.up.weight.abs().sum() > 0
        assert not ad.down.bias.any() and not ad.up.bias.any()
    assert not torch.equal(logits(model, tiny_batch), logits(base, tiny_batch))
    torch.manual_seed(0)
    big = BottleneckAdapter(1024, AdapterConfig(bottleneck=256), False, torch.device("cpu"), torch.float32)
    for w in (big.down.weight, big.up.weight):
        assert abs(w.std().item() - 0.02) < 0.001 and abs(w.mean().item()) < 0.001


@pytest.mark.parametrize("method", ADAPTERS)
@pytest.mark.parametrize("name", TINY)
def test_base_state_dict_keys_are_kept(name, method, make_tiny) -> None:
    base, model = make_tiny(name), make_tiny(name)
    report = methods.apply(model, method, config(method))
    result = model.load_state_dict(base.state_dict(), strict=False)
    new = set(model.state_dict()) - set(base.state_dict())
    assert result.unexpected_keys == []
    assert set(result.missing_keys) == new and new <= set(report.trainable)
    assert new and all(".adapter." in k for k in new)


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


# --- placement --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_placement_follows_the_architecture(name, make_tiny) -> None:
    """Post-LN: AdapterH inside `attention.output` and `output`, AdapterP/D inside `output` (AdaptedOutput);
    pre-LN: AdapterH on the attention and MLP sub-blocks, AdapterP/D on the block; AdapterL on every block."""
    post = name in POST_LN
    attn, ffn = {"tiny-gpt2": ("attn", "mlp"), "tiny-llama": ("self_attn", "mlp")}.get(
        name, ("attention.output", "output")
    )
    for method, rels, first_layer in [
        ("adapter_h", (attn, ffn), 0),
        ("adapter_l", ("",), 0),
        ("adapter_p", (ffn if post else "",), 0),
        ("adapter_d", (ffn if post else "",), 1),
    ]:
        model = make_tiny(name)
        report = methods.apply(model, method, config(method))
        prefix, blocks = layer_list(model)
        expected = [
            f"{prefix}.{i}" + (f".{r}" if r else "") for i in range(first_layer, len(blocks)) for r in rels
        ]
        assert report.modules == expected, method
        for p in expected:
            module = model.get_submodule(p)
            assert isinstance(module.adapter, BottleneckAdapter)
            assert isinstance(module, AdaptedOutput) == (post and method != "adapter_l")
            assert (module.adapter.norm is not None) == (method == "adapter_l")


@pytest.mark.parametrize("name", POST_LN)
def test_adapter_p_post_ln_follows_the_released_code(name, make_tiny, tiny_batch) -> None:
    """RobertaOutput.forward (Pfeiffer): h = dropout(dense(x)); out = LN(h + up(relu(down(LN(h + r)))) + r), the
    same LayerNorm twice, dropout (inactive in eval) before the adapter."""
    _, model, prefix = adapted(make_tiny, name, "adapter_p")
    out = model.get_submodule(f"{prefix}.1.output")
    with Capture(out) as cap:
        logits(model, tiny_batch)
    x, r = cap.args
    h = x @ out.dense.weight.T + out.dense.bias
    expected = layer_norm(
        h + bottleneck(layer_norm(h + r, out.LayerNorm), out.adapter, relu) + r, out.LayerNorm
    )
    torch.testing.assert_close(cap.output, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(cap.output, layer_norm(h + r, out.LayerNorm), atol=1e-3)


@pytest.mark.parametrize("name", POST_LN)
def test_adapter_h_post_ln_follows_the_released_code(name, make_tiny, tiny_batch) -> None:
    """RobertaSelfOutput.forward and RobertaOutput.forward (Houlsby): h = dropout(dense(x));
    out = LN(h + up(swish(down(h))) + r)."""
    _, model, prefix = adapted(make_tiny, name, "adapter_h", train_norms=False)
    for rel in ("attention.output", "output"):
        sub = model.get_submodule(f"{prefix}.1.{rel}")
        with Capture(sub) as cap:
            logits(model, tiny_batch)
        x, r = cap.args
        h = x @ sub.dense.weight.T + sub.dense.bias
        expected = layer_norm(h + bottleneck(h, sub.adapter, swish) + r, sub.LayerNorm)
        torch.testing.assert_close(cap.output, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", TINY)
def test_adapter_l_sits_on_the_block_output(name, make_tiny, tiny_batch) -> None:
    """Lin et al. (VGLM Block.forward): block_out = y + up(relu(down(LN_a(y)))), y = the block's own output
    (after the MLP's residual add). Layer 0 sees the same embeddings in both models, so y is the base model's."""
    base, model, prefix = adapted(make_tiny, name, "adapter_l")
    with Capture(base.get_submodule(f"{prefix}.0")) as b, Capture(model.get_submodule(f"{prefix}.0")) as a:
        logits(base, tiny_batch)
        logits(model, tiny_batch)
    y, ad = first(b.output), model.get_submodule(f"{prefix}.0").adapter
    expected = y + bottleneck(layer_norm(y, ad.norm), ad, relu)
    torch.testing.assert_close(first(a.output), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["adapter_p", "adapter_d"])
@pytest.mark.parametrize("name", PRE_LN)
def test_adapter_p_pre_ln_is_the_block_output_without_norm(name, method, make_tiny, tiny_batch) -> None:
    """Pre-LN equivalent of the released Pfeiffer order (no LayerNorm after the residual add): u = x + MLP(LN(x)),
    out = u + up(relu(down(u)))."""
    base, model, prefix = adapted(
        make_tiny, name, method, **({"drop_layers": 0} if method == "adapter_d" else {})
    )
    with Capture(base.get_submodule(f"{prefix}.0")) as b, Capture(model.get_submodule(f"{prefix}.0")) as a:
        logits(base, tiny_batch)
        logits(model, tiny_batch)
    u = first(b.output)
    expected = u + bottleneck(u, model.get_submodule(f"{prefix}.0").adapter, relu)
    torch.testing.assert_close(first(a.output), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", PRE_LN)
def test_adapter_h_pre_ln_wraps_the_sub_block_outputs(name, make_tiny, tiny_batch) -> None:
    """Houlsby on a pre-LN block: the attention and MLP outputs (GPT-2: after their dropout) go through
    h + up(swish(down(h))) before the residual adds."""
    base, model, prefix = adapted(make_tiny, name, "adapter_h", train_norms=False)
    attn = "attn" if name == "tiny-gpt2" else "self_attn"
    ours, theirs = model.get_submodule(f"{prefix}.0.{attn}"), base.get_submodule(f"{prefix}.0.{attn}")
    with Capture(theirs) as b, Capture(ours) as a:
        logits(base, tiny_batch)
        logits(model, tiny_batch)
    h = first(b.output)
    torch.testing.assert_close(first(a.output), h + bottleneck(h, ours.adapter, swish), rtol=1e-5, atol=1e-5)
    mlp, base_mlp = model.get_submodule(f"{prefix}.1.mlp"), base.get_submodule(f"{prefix}.1.mlp")
    with Capture(mlp) as a:
        logits(model, tiny_batch)
    with torch.no_grad():
        m = base_mlp(a.args[0])
    torch.testing.assert_close(a.output, m + bottleneck(m, mlp.adapter, swish), rtol=1e-5, atol=1e-5)


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
    """r + up(act(down(LN(y)))) with the modules' own weights, r = y unless given."""
    torch.manual_seed(0)
    ad = BottleneckAdapter(
        6, AdapterConfig(bottleneck=3, nonlinearity="tanh"), True, torch.device("cpu"), torch.float32
    )
    with torch.no_grad():
        ad.up.bias.normal_()
        ad.down.bias.normal_()
    y, r = torch.randn(2, 4, 6), torch.randn(2, 4, 6)
    branch = bottleneck(layer_norm(y, ad.norm), ad, torch.tanh)
    torch.testing.assert_close(ad(y), y + branch, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ad(y, residual=r), r + branch, rtol=1e-5, atol=1e-5)


# --- robust AdapterDrop --------------------------------------------------------------------------------------------


def no_dropout(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model


def drop_state(model: nn.Module) -> RobustDrop:
    (drop,) = {id(m.drop): m.drop for m in model.modules() if isinstance(m, BottleneckAdapter)}.values()
    return drop


@pytest.mark.parametrize("name", ["tiny-roberta", "tiny-gpt2"])
def test_robust_adapter_drop_skips_a_seeded_random_number_of_lowest_layers(
    name, make_tiny, tiny_batch
) -> None:
    """Robust AdapterDrop: each training pass skips the adapters of the lowest n layers, n ~ U{0..robust_max} from
    a generator seeded with `seed`; evaluation uses every adapter. Dropout is switched off so that a training pass
    is comparable with the eval-mode references (all adapters; layer 0's adapter removed)."""
    cfg = AdapterDConfig(bottleneck=8, drop_layers=0, robust=True, robust_max=1, seed=3)
    model = no_dropout(make_tiny(name))
    report = methods.apply(model, "adapter_d", cfg)
    perturb(model, report.trainable, std=0.2)
    full = logits(model, tiny_batch)
    low = next(m for m in model.modules() if isinstance(m, BottleneckAdapter) and m.layer == 0)
    saved = low.up.weight.detach().clone(), low.up.bias.detach().clone()
    with torch.no_grad():
        low.up.weight.zero_(), low.up.bias.zero_()
    skip0 = logits(model, tiny_batch)
    with torch.no_grad():
        low.up.weight.copy_(saved[0]), low.up.bias.copy_(saved[1])
    assert not torch.allclose(full, skip0, atol=1e-4)

    rng, drop = random.Random(3), drop_state(model)
    model.train()
    for _ in range(12):
        out = logits(model, tiny_batch)
        n = rng.randint(0, 1)
        assert drop.n == n
        torch.testing.assert_close(out, skip0 if n else full, rtol=1e-5, atol=1e-5)
    model.eval()
    assert torch.equal(logits(model, tiny_batch), full) and drop.n == 0


def test_robust_draws_are_deterministic_under_the_seed(make_tiny, tiny_batch) -> None:
    def draws(seed: int) -> list[int]:
        model = no_dropout(make_tiny("tiny-bert"))
        methods.apply(model, "adapter_d", AdapterDConfig(bottleneck=4, drop_layers=0, robust=True, seed=seed))
        drop, out = drop_state(model), []
        assert drop.max_drop == 0  # default robust_max: layers - 2 (AdapterHub: randint(0, 11) on 12 layers)
        drop.max_drop = 1
        model.train()
        for _ in range(16):
            logits(model, tiny_batch)
            out.append(drop.n)
        return out

    rng = random.Random(5)
    assert draws(5) == draws(5) == [rng.randint(0, 1) for _ in range(16)]
    assert draws(5) != draws(6)


def test_robust_max_bounds(make_tiny) -> None:
    with pytest.raises(ValueError, match="robust_max must be null or an integer >= 0, got -1"):
        AdapterDConfig(robust=True, robust_max=-1)
    with pytest.raises(ValueError, match="robust_max=2 could skip every adapter: the model has 2 layers"):
        cfg = AdapterDConfig(bottleneck=4, drop_layers=0, robust=True, robust_max=2)
        methods.apply(make_tiny("tiny-bert"), "adapter_d", cfg)


# --- configuration and misuse --------------------------------------------------------------------------------------


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
        (dict(zero_up="yes"), "zero_up must be true or false, got 'yes'"),
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
    with pytest.raises(ValueError, match="robust must be true or false, got 1"):
        AdapterDConfig(robust=1)
    for drop in (2, 7):
        with pytest.raises(ValueError, match=f"drop_layers={drop} leaves no adapter: the model has 2 layers"):
            methods.apply(make_tiny("tiny-bert"), "adapter_d", AdapterDConfig(bottleneck=4, drop_layers=drop))


@pytest.mark.parametrize("name", ["tiny-roberta", "tiny-gpt2"])
def test_inject_twice_is_an_error(name, make_tiny) -> None:
    model = make_tiny(name)
    methods.apply(model, "adapter_p", AdapterConfig(bottleneck=4))
    for method in ("adapter_h", "adapter_l", "adapter_p"):
        with pytest.raises(ValueError, match="already carries an adapter"):
            methods.apply(model, method, config(method, 4))
