"""Oracle tests: our LoRA equals `loralib` 0.1.2, the LoRA paper's own package (github microsoft/LoRA).

Every reference value here comes from running loralib's modules, not from a formula of ours: we build a
`loralib.Linear` / `loralib.MergedLinear` holding exactly the same base weight, bias and LoRA factors as our
`LoRALinear` / `FusedLoRA`, feed both the same input and the same upstream gradient, and compare

* the forward output,
* the gradients w.r.t. the input, A, B (and the bias, which both leave trainable when built standalone),
* the merged weight W0 + (alpha/r) B A -- loralib's oracle is its own merge, done by `.eval()` when built with
  `merge_weights=True`; ours merges through `lora.methods.lora.merge`.

Tensor mapping established from loralib/layers.py (and checked below):

* `Linear`: identical layout. lora_A (r, d_in) and lora_B (d_out, r) are ours as they are; with
  `fan_in_fan_out=True` loralib stores the base weight as (d_in, d_out), exactly GPT-2's Conv1D weight (ours wraps
  the Conv1D's own tensor), so the base weight copies over untransposed in both cases.
* `MergedLinear(d, 3d, enable_lora=[True, False, True], fan_in_fan_out=True)` (GPT-2's fused c_attn, q and v):
  lora_A (2r, d) = cat([A_q, A_v], dim=0); lora_B (2d, r) = cat([B_q, B_v], dim=0). loralib applies B with a
  grouped conv1d (groups = 2) over the stacked A: output channels [g*d, (g+1)*d) see only input channels
  [g*r, (g+1)*r), i.e. the block-diagonal product diag(B_q A_q, B_v A_v), which `zero_pad` scatters into the q and
  v rows of a zero (3d, d) matrix (k rows stay 0) and `T` transposes to Conv1D's (d, 3d) layout.
* Scaling is alpha / r in both, with r the per-slice rank (not 2r) in MergedLinear.
* Dropout is applied once to the LoRA-branch input in both (never to the base path); with the same seed both draw
  the same single mask, shared by the q and v slices.

float64 comparisons use 1e-10; float32 ones 1e-6 (the grouped conv1d and the matmuls reorder sums), 1e-5 where a
merged layer is compared with an unmerged one.
"""

from __future__ import annotations

import copy
import math

import loralib
import pytest
import torch
from scipy import stats
from torch import nn
from transformers.pytorch_utils import Conv1D

from lora import methods
from lora.architectures import SLICE_NAMES
from lora.methods.base import set_module
from lora.methods.lora import FusedLoRA, LoRAConfig, LoRALinear, inject, lora_modules, merge

TOL = {torch.float64: dict(atol=1e-10, rtol=1e-10), torch.float32: dict(atol=1e-6, rtol=1e-6)}
MERGE_TOL = {torch.float64: dict(atol=1e-10, rtol=1e-10), torch.float32: dict(atol=1e-5, rtol=1e-5)}


# --- Building loralib twins of our modules -------------------------------------------------------------------------


def _fill(module: nn.Module, names: tuple[str, ...], seed: int, std: float = 0.5) -> None:
    """Seeded N(0, std^2) values in `names` (used to give B, and the bias, non-zero values as if trained)."""
    g = torch.Generator().manual_seed(seed)
    params = dict(module.named_parameters())
    with torch.no_grad():
        for n in names:
            params[n].copy_(torch.randn(params[n].shape, generator=g, dtype=params[n].dtype) * std)


def twin_linear(
    ours: LoRALinear, alpha: float, *, merge_weights: bool = False, dropout: float = 0.0
) -> loralib.Linear:
    """A loralib.Linear holding copies of `ours`' weight, bias, A and B (same layout: see the module docstring)."""
    theirs = loralib.Linear(
        ours.in_features,
        ours.out_features,
        r=ours.r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        fan_in_fan_out=ours.fan_in_fan_out,
        merge_weights=merge_weights,
        bias=ours.bias is not None,
    ).to(ours.weight.dtype)
    assert (
        theirs.weight.shape == ours.weight.shape
    )  # (d_in, d_out) for Conv1D / fan_in_fan_out, else (d_out, d_in)
    with torch.no_grad():
        theirs.weight.copy_(ours.weight)
        if ours.bias is not None:
            theirs.bias.copy_(ours.bias)
        theirs.lora_A.copy_(ours.lora_A)
        theirs.lora_B.copy_(ours.lora_B)
    return theirs


def twin_fused(
    ours: FusedLoRA, alpha: float, *, merge_weights: bool = False, dropout: float = 0.0
) -> loralib.MergedLinear:
    """A loralib.MergedLinear (fan_in_fan_out, as the paper's GPT-2 code) with ours' per-slice A, B stacked."""
    enable = [s in ours.slices for s in range(ours.n_slices)]
    theirs = loralib.MergedLinear(
        ours.in_features,
        ours.out_features,
        r=ours.r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        enable_lora=enable,
        fan_in_fan_out=True,
        merge_weights=merge_weights,
    ).to(ours.weight.dtype)
    names = [SLICE_NAMES[s] for s in ours.slices]
    assert theirs.weight.shape == ours.weight.shape == (ours.in_features, ours.out_features)
    assert theirs.lora_A.shape == (ours.r * len(names), ours.in_features)
    assert theirs.lora_B.shape == (ours.width * len(names), ours.r)
    with torch.no_grad():
        theirs.weight.copy_(ours.weight)
        theirs.bias.copy_(ours.bias)
        theirs.lora_A.copy_(torch.cat([ours.lora_A[n] for n in names], dim=0))
        theirs.lora_B.copy_(torch.cat([ours.lora_B[n] for n in names], dim=0))
    return theirs


def fused_grads(theirs: loralib.MergedLinear, ours: FusedLoRA) -> dict[str, torch.Tensor]:
    """loralib's stacked gradients cut back into ours' per-slice names (`lora_A.q`, `lora_B.v`, ...)."""
    names = [SLICE_NAMES[s] for s in ours.slices]
    a, b = theirs.lora_A.grad.split(ours.r, dim=0), theirs.lora_B.grad.split(ours.width, dim=0)
    return {f"lora_A.{n}": a[i] for i, n in enumerate(names)} | {
        f"lora_B.{n}": b[i] for i, n in enumerate(names)
    }


def loralib_mode(module: nn.Module, train: bool) -> nn.Module:
    """loralib's train() override (which does the merge / unmerge) returns None, so its `.eval()` cannot be chained
    as nn.Module's can; call it and hand the module back."""
    module.train(train)
    return module


def run_both(ours: nn.Module, theirs: nn.Module, x: torch.Tensor, seed: int = 0):
    """Forward both on copies of x and backprop the same random upstream gradient (so no gradient is a mere sum).
    The same torch seed before each forward gives both the same dropout mask, if any."""
    xo, xt = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    torch.manual_seed(seed)
    yo = ours(xo)
    torch.manual_seed(seed)
    yt = theirs(xt)
    upstream = torch.randn(yo.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=yo.dtype)
    (yo * upstream).sum().backward()
    (yt * upstream).sum().backward()
    return yo, yt, xo.grad, xt.grad


def _x(*shape: int, dtype: torch.dtype, seed: int = 3) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --- 1. LoRALinear vs loralib.Linear ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_linear_matches_loralib_forward_gradients_and_merge(dtype: torch.dtype, bias: bool) -> None:
    d_in, d_out, r, alpha = 24, 20, 4, 16.0
    torch.manual_seed(0)
    ours = LoRALinear(nn.Linear(d_in, d_out, bias=bias).to(dtype), LoRAConfig(r=r, alpha=alpha))
    _fill(ours, ("lora_B",) + (("bias",) if bias else ()), seed=1)  # B != 0 so A gets a gradient
    theirs = twin_linear(ours, alpha)
    tol = TOL[dtype]

    yo, yt, gxo, gxt = run_both(ours, theirs, _x(2, 5, d_in, dtype=dtype))
    assert not torch.allclose(yo, ours.base_forward(_x(2, 5, d_in, dtype=dtype)), atol=1e-3)  # LoRA is active
    torch.testing.assert_close(yo, yt, **tol)
    torch.testing.assert_close(gxo, gxt, **tol)
    for name in ("lora_A", "lora_B") + (("bias",) if bias else ()):
        g_ours, g_theirs = getattr(ours, name).grad, getattr(theirs, name).grad
        assert g_ours is not None and g_ours.abs().sum() > 0, name
        torch.testing.assert_close(g_ours, g_theirs, **tol, msg=name)
    assert theirs.weight.grad is None  # loralib freezes W0; ours leaves that to methods.apply

    # Merged weight: loralib's own merge (eval() with merge_weights=True) is the oracle for ours.
    oracle = loralib_mode(twin_linear(ours, alpha, merge_weights=True), train=False)
    assert oracle.merged
    merge(ours)
    torch.testing.assert_close(ours.weight, oracle.weight, **tol)
    with torch.no_grad():
        x = _x(3, d_in, dtype=dtype, seed=5)
        torch.testing.assert_close(ours(x), oracle(x), **tol)  # both now skip the LoRA branch
        # merged == unmerged loralib: W x + b vs W0 x + b + s B A x sums in another order (fp32: 1e-5, as test_lora)
        torch.testing.assert_close(ours(x), theirs(x), **MERGE_TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_linear_around_conv1d_matches_loralib_fan_in_fan_out(dtype: torch.dtype) -> None:
    """GPT-2's other projections (c_proj, c_fc) are Conv1D, weight (d_in, d_out): loralib.Linear(fan_in_fan_out)."""
    d_in, d_out, r, alpha = 16, 40, 2, 3.0
    torch.manual_seed(0)
    ours = LoRALinear(Conv1D(d_out, d_in).to(dtype), LoRAConfig(r=r, alpha=alpha))
    _fill(ours, ("lora_B", "bias"), seed=2)
    theirs = twin_linear(ours, alpha)
    assert theirs.fan_in_fan_out and theirs.weight.shape == (d_in, d_out)
    tol = TOL[dtype]
    yo, yt, gxo, gxt = run_both(ours, theirs, _x(2, 3, d_in, dtype=dtype))
    torch.testing.assert_close(yo, yt, **tol)
    torch.testing.assert_close(gxo, gxt, **tol)
    for name in ("lora_A", "lora_B", "bias"):
        torch.testing.assert_close(getattr(ours, name).grad, getattr(theirs, name).grad, **tol, msg=name)
    oracle = loralib_mode(twin_linear(ours, alpha, merge_weights=True), train=False)
    merge(ours)
    torch.testing.assert_close(ours.weight, oracle.weight, **tol)


def test_linear_dropout_same_mask_on_the_lora_branch_input() -> None:
    """Both apply one nn.Dropout to the LoRA branch's input (not to the base path, not after B): under one seed they
    draw the same mask and agree in train mode; in eval mode the dropout is off in both."""
    d, r, alpha, p = 16, 4, 8.0, 0.4
    torch.manual_seed(0)
    ours = LoRALinear(nn.Linear(d, d).double(), LoRAConfig(r=r, alpha=alpha, dropout=p)).train()
    _fill(ours, ("lora_B",), seed=1)
    theirs = loralib_mode(twin_linear(ours, alpha, dropout=p), train=True)
    x = _x(4, 6, d, dtype=torch.float64)
    yo, yt, gxo, gxt = run_both(ours, theirs, x, seed=7)
    torch.testing.assert_close(yo, yt, **TOL[torch.float64])
    torch.testing.assert_close(gxo, gxt, **TOL[torch.float64])
    for name in ("lora_A", "lora_B"):
        torch.testing.assert_close(getattr(ours, name).grad, getattr(theirs, name).grad, **TOL[torch.float64])
    with torch.no_grad():
        torch.manual_seed(8)
        assert not torch.allclose(ours(x), yo)  # another seed: another mask (dropout really acts)
        ours.eval()
        theirs.eval()
        torch.testing.assert_close(ours(x), theirs(x), **TOL[torch.float64])


# --- 2. GPT-2's fused c_attn (per-slice q, v LoRA) vs loralib.MergedLinear -------------------------------------


@pytest.fixture
def gpt2_qv(make_tiny):
    """Tiny GPT-2 in float64 with LoRA injected on q, v through the real inject path; B filled (non-zero)."""

    def make(r: int = 4, alpha: float = 16.0, targets: tuple[str, ...] = ("q", "v")) -> nn.Module:
        model = make_tiny("tiny-gpt2").double()
        methods.apply(model, "lora", LoRAConfig(r=r, alpha=alpha, targets=list(targets)))
        for i, (_, m) in enumerate(lora_modules(model)):
            _fill(m, tuple(n for n in m.lora_names() if n.startswith("lora_B")), seed=10 + i)
        return model

    return make


def test_fused_c_attn_layout_and_forward_gradients_merge_match_merged_linear(gpt2_qv) -> None:
    r, alpha = 4, 16.0
    model = gpt2_qv(r, alpha)
    ours = model.transformer.h[0].attn.c_attn
    assert isinstance(ours, FusedLoRA) and ours.slices == [0, 2] and ours.fan_in_fan_out
    d = ours.in_features
    theirs = twin_fused(ours, alpha)
    assert theirs.lora_A.shape == (2 * r, d) and theirs.lora_B.shape == (2 * d, r)
    tol = TOL[torch.float64]

    # Layout: loralib's grouped-conv1d merge_AB is ours' delta (both (d, 3d), Conv1D layout) up to the scaling;
    # the k columns are exactly zero in both.
    torch.testing.assert_close(theirs.merge_AB() * theirs.scaling, ours.delta(), **tol)
    assert torch.equal(theirs.merge_AB()[:, d : 2 * d], torch.zeros(d, d))

    yo, yt, gxo, gxt = run_both(ours, theirs, _x(2, 7, d, dtype=torch.float64))
    torch.testing.assert_close(yo, yt, **tol)
    torch.testing.assert_close(gxo, gxt, **tol)
    mapped = fused_grads(theirs, ours)
    own = {n: p.grad for n, p in ours.named_parameters() if n.startswith("lora_")}
    assert own.keys() == mapped.keys() == {"lora_A.q", "lora_A.v", "lora_B.q", "lora_B.v"}
    for n in own:
        assert own[n].abs().sum() > 0, n
        torch.testing.assert_close(own[n], mapped[n], **tol, msg=n)

    oracle = loralib_mode(twin_fused(ours, alpha, merge_weights=True), train=False)
    assert oracle.merged
    w0 = ours.weight.detach().clone()
    merge(model)
    torch.testing.assert_close(ours.weight, oracle.weight, **tol)
    assert torch.equal(ours.weight[:, d : 2 * d], w0[:, d : 2 * d])  # k columns untouched by the merge
    with torch.no_grad():
        x = _x(3, d, dtype=torch.float64, seed=9)
        torch.testing.assert_close(ours(x), oracle(x), **tol)


def test_fused_dropout_one_shared_mask_matches_merged_linear(gpt2_qv) -> None:
    p, alpha = 0.3, 8.0
    model = gpt2_qv(2, alpha)
    ours = model.transformer.h[1].attn.c_attn
    ours.lora_dropout = nn.Dropout(p)  # same as LoRAConfig(dropout=p) would build; the A, B stay as filled
    ours.train()
    theirs = loralib_mode(twin_fused(ours, alpha, dropout=p), train=True)
    yo, yt, gxo, gxt = run_both(ours, theirs, _x(2, 5, ours.in_features, dtype=torch.float64), seed=4)
    torch.testing.assert_close(yo, yt, **TOL[torch.float64])
    torch.testing.assert_close(gxo, gxt, **TOL[torch.float64])
    mapped = fused_grads(theirs, ours)
    for n, prm in ours.named_parameters():
        if n.startswith("lora_"):
            torch.testing.assert_close(prm.grad, mapped[n], **TOL[torch.float64], msg=n)


def test_whole_tiny_gpt2_equals_the_same_model_built_from_loralib_layers(
    gpt2_qv, make_tiny, tiny_batch
) -> None:
    """Every LoRA module of our injected tiny GPT-2 (fused q, v on c_attn; Conv1D c_proj and c_fc) swapped for its
    loralib twin, frozen with loralib's own mark_only_lora_as_trainable: same logits, same LoRA gradients."""
    r, alpha = 4, 12.0
    ours = gpt2_qv(r, alpha, targets=("q", "v", "o", "ffn_in"))
    theirs = copy.deepcopy(ours)
    twins = {}
    for path, m in lora_modules(ours):
        twins[path] = twin_fused(m, alpha) if isinstance(m, FusedLoRA) else twin_linear(m, alpha)
        set_module(theirs, path, twins[path])
    assert not lora_modules(theirs)
    loralib.mark_only_lora_as_trainable(theirs)
    n_ours = sum(p.numel() for p in ours.parameters() if p.requires_grad)
    n_theirs = sum(p.numel() for p in theirs.parameters() if p.requires_grad)
    assert (
        n_ours == n_theirs == 2 * (2 * 2 * r * 32 + r * (32 + 32) + r * (32 + 128))
    )  # 2 layers: q,v + o + ffn_in

    out = {}
    for key, model in (("ours", ours), ("theirs", theirs)):
        y = model(**tiny_batch).logits
        upstream = torch.randn(y.shape, generator=torch.Generator().manual_seed(0), dtype=y.dtype)
        (y * upstream).sum().backward()
        out[key] = y
    torch.testing.assert_close(out["ours"], out["theirs"], **TOL[torch.float64])
    with torch.no_grad():
        plain = make_tiny("tiny-gpt2").double()(**tiny_batch).logits
    assert not torch.allclose(out["ours"], plain, atol=1e-3)  # the LoRA branches change the function

    for path, m in lora_modules(ours):
        t = twins[path]
        if isinstance(m, FusedLoRA):
            mapped = fused_grads(t, m)
            for n, prm in m.named_parameters():
                if n.startswith("lora_"):
                    torch.testing.assert_close(prm.grad, mapped[n], **TOL[torch.float64], msg=f"{path}.{n}")
        else:
            for n in ("lora_A", "lora_B"):
                torch.testing.assert_close(
                    getattr(m, n).grad, getattr(t, n).grad, **TOL[torch.float64], msg=f"{path}.{n}"
                )


# --- 3. Scaling alpha / r and initialisation -------------------------------------------------------------------


@pytest.mark.parametrize(("r", "alpha"), [(1, 1.0), (4, 16.0), (8, 2.0), (2, 32.0)])
def test_scaling_alpha_over_r_agrees(r: int, alpha: float, gpt2_qv) -> None:
    torch.manual_seed(0)
    lin = LoRALinear(nn.Linear(12, 10).double(), LoRAConfig(r=r, alpha=alpha))
    _fill(lin, ("lora_B",), seed=1)
    t_lin = twin_linear(lin, alpha)
    fused = gpt2_qv(r, alpha).transformer.h[0].attn.c_attn
    t_fused = twin_fused(fused, alpha)
    assert lin.scaling == fused.scaling == t_lin.scaling == t_fused.scaling == alpha / r
    with torch.no_grad():
        x = _x(3, 12, dtype=torch.float64)
        torch.testing.assert_close(lin(x), t_lin(x), **TOL[torch.float64])
        x = _x(3, 32, dtype=torch.float64)
        torch.testing.assert_close(fused(x), t_fused(x), **TOL[torch.float64])


def test_linear_init_is_loralibs_draw_for_draw() -> None:
    """Both initialise A with kaiming_uniform_(a=sqrt(5)) and B with zeros. loralib's reset_parameters() draws W0
    (kaiming), the bias, then A; `nn.Linear(...)` followed by our LoRALinear makes the same draws in the same
    order, so under one seed W0, bias and A are bit-identical, and B is zero in both."""
    d_in, d_out, r = 64, 48, 8
    theirs = loralib.Linear(d_in, d_out, r=r, lora_alpha=8, merge_weights=False)
    torch.manual_seed(123)
    theirs.reset_parameters()
    torch.manual_seed(123)
    ours = LoRALinear(nn.Linear(d_in, d_out), LoRAConfig(r=r, alpha=8))
    for name in ("weight", "bias", "lora_A", "lora_B"):
        assert torch.equal(getattr(ours, name), getattr(theirs, name)), name
    assert torch.equal(ours.lora_B, torch.zeros(d_out, r))
    assert ours.lora_A.abs().max() <= 1 / math.sqrt(d_in)


def test_fused_init_has_loralibs_distribution_and_zero_b(make_tiny) -> None:
    """MergedLinear draws its stacked (2r, d) A with the same kaiming_uniform_(a=sqrt(5)): U(-1/sqrt(d), 1/sqrt(d)),
    the fan-in d being the same as for our per-slice (r, d) A's. Compared as distributions (two-sample KS on A/bound,
    seeded, so deterministic): draw order differs between one (2r, d) call and two (r, d) calls."""
    d, r = 256, 8
    torch.manual_seed(0)
    ours = FusedLoRA(Conv1D(3 * d, d), LoRAConfig(r=r, targets=["q", "v"]), 3, [0, 2])
    theirs = loralib.MergedLinear(
        d, 3 * d, r=r, lora_alpha=8, enable_lora=[True, False, True], fan_in_fan_out=True
    )
    bound = 1 / math.sqrt(d)
    a_ours = torch.cat([ours.lora_A["q"], ours.lora_A["v"]]).detach()
    a_theirs = theirs.lora_A.detach()
    assert a_ours.shape == a_theirs.shape == (2 * r, d)
    for a in (a_ours, a_theirs):
        assert a.abs().max() <= bound and a.abs().max() > 0.99 * bound
    assert torch.equal(theirs.lora_B, torch.zeros(2 * d, r))
    assert all(torch.equal(ours.lora_B[n], torch.zeros(d, r)) for n in ("q", "v"))
    ks = stats.ks_2samp((a_ours / bound).flatten().numpy(), (a_theirs / bound).flatten().numpy())
    assert ks.pvalue > 1e-3, ks


def test_zero_b_outputs_equal_the_base_exactly_in_both(make_tiny) -> None:
    """With B = 0 (the initialisation) each module's output is its base layer's output, bit for bit, in both
    implementations (the LoRA branch adds exact zeros), for Linear and for the fused c_attn."""
    torch.manual_seed(0)
    base = nn.Linear(20, 12)
    ours = LoRALinear(copy.deepcopy(base), LoRAConfig(r=4, alpha=32))
    theirs = twin_linear(ours, 32)
    model = make_tiny("tiny-gpt2")
    c_attn = copy.deepcopy(model.transformer.h[0].attn.c_attn)
    inject(model, LoRAConfig(r=4, alpha=32, targets=["q", "v"]))
    fused = model.transformer.h[0].attn.c_attn
    t_fused = twin_fused(fused, 32)
    # loralib's own base path: F.linear on the (transposed back) weight, which is what its forward starts from.
    t_base = nn.functional.linear
    with torch.no_grad():
        x = _x(2, 3, 20, dtype=torch.float32)
        assert torch.equal(ours(x), base(x)) and torch.equal(theirs(x), base(x))
        x = _x(2, 3, 32, dtype=torch.float32)
        assert torch.equal(fused(x), c_attn(x))
        assert torch.equal(t_fused(x), t_base(x, t_fused.weight.T, t_fused.bias))
        torch.testing.assert_close(fused(x), t_fused(x), **TOL[torch.float32])
