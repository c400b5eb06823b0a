"""The fast-path switches (lora/fastpath.py, `train.*`) keep results within their stated tolerances, on tiny
models on CPU: SDPA vs eager attention, bf16 frozen weights, the fused AdamW, torch.compile, length-grouped batches,
and LoRA's own fast paths (no dropout call at p = 0, one matmul pair for a fused projection). No speed is asserted
here: `python experiments/bench.py fast-path` measures each switch off vs on."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
import transformers
from hydra import compose, initialize_config_dir
from torch import nn
from transformers.pytorch_utils import Conv1D

from lora import fastpath as switches
from lora import methods
from lora.config import TrainConfig, validate
from lora.errors import ConfigError
from lora.methods.lora import FusedLoRA, LoRAConfig, LoRALinear, inject, lora_modules
from lora.models import MODELS, build_model, build_tokenizer, head_parameter_names
from lora.train import device_of, execute, glue_data, training_args

ROOT = Path(__file__).resolve().parent.parent
GLUE = ROOT.parent / "shared" / "data" / "glue"
needs_glue = pytest.mark.skipif(not GLUE.is_dir(), reason=f"real GLUE data not found at {GLUE}")
TINY = sorted(n for n in MODELS if n.startswith("tiny-"))
NO_SDPA = {"tiny-deberta", "tiny-gemma2"}  # transformers has no SDPA attention for DeBERTa-v2 and Gemma 2
ATTN_TOL = dict(atol=1e-5, rtol=1e-5)  # fp32: the fused kernel sums in another order
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (experiments/gpu_check.sh)")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


def tiny_run(tmp_path: Path, *overrides: str):
    """tiny-roberta + LoRA on 16 RTE rows, one epoch of 2 steps (as tests/test_train.py)."""
    base = [
        "model=tiny-roberta", "task=rte", "method=lora", f"data_dir={GLUE}", "task.max_train_samples=16",
        "task.max_eval_samples=8", "train.batch_size=8", "train.epochs=1", "train.progress=false",
        f"results_dir={tmp_path / 'results'}", f"output_dir={tmp_path / 'outputs'}",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[*base, *overrides])


# --- attention implementation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", TINY)
def test_sdpa_logits_match_eager(name: str, device: str) -> None:
    kind = MODELS[name].kind
    sdpa = build_model(name, kind, attn_implementation="sdpa", device=device).eval()
    eager = build_model(name, kind, attn_implementation="eager", device=device).eval()
    expected = "eager" if name in NO_SDPA else "sdpa"
    assert sdpa.config._attn_implementation == expected and eager.config._attn_implementation == "eager"
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 512, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # padding on the right of two rows
    mask[2, 5:] = 0
    ids, mask = ids.to(device), mask.to(device)
    with torch.no_grad():
        a = sdpa(input_ids=ids, attention_mask=mask).logits
        b = eager(input_ids=ids, attention_mask=mask).logits
    if kind == "causal_lm":  # every real position; padded positions attend to nothing real
        keep = mask.bool()
        a, b = a[keep], b[keep]
    torch.testing.assert_close(a, b, **(ATTN_TOL if device == "cpu" else dict(atol=1e-4, rtol=1e-4)))


@CUDA
@pytest.mark.parametrize("name", ["tiny-roberta", "tiny-gpt2", "tiny-llama"])
def test_sdpa_matches_eager_under_bf16_autocast_cuda(name: str) -> None:
    """bf16 on the GPU (the experiments' train.bf16): both paths round to bf16, the logits agree to bf16's 8 bits."""
    kind = MODELS[name].kind
    models = [build_model(name, kind, attn_implementation=a, device="cuda").eval() for a in ("sdpa", "eager")]
    ids = torch.randint(5, 512, (4, 64), generator=torch.Generator().manual_seed(0)).cuda()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        a, b = (m(input_ids=ids).logits.float() for m in models)
    torch.testing.assert_close(a, b, atol=3e-2, rtol=3e-2)


def test_default_attention_is_sdpa_and_others_are_refused() -> None:
    assert TrainConfig().attn_implementation == "sdpa"
    with pytest.raises(ConfigError, match="attn_implementation must be one of"):
        TrainConfig(attn_implementation="flash")
    with pytest.raises(ConfigError, match="train.optim must be one of"):
        TrainConfig(optim="sgd")


# --- optimizer, compile, sampling: the Trainer's arguments ----------------------------------------------------------


def test_training_args_carry_the_switches(tmp_path: Path) -> None:
    spec = validate(tiny_run(tmp_path))
    args = training_args(spec.cfg, tmp_path, torch.device("cpu"))
    assert (args.optim, args.torch_compile, args.train_sampling_strategy) == ("adamw_torch", False, "random")
    assert switches.resolve_optim("auto", "cuda") == "adamw_torch_fused"
    assert switches.resolve_optim("auto", "cpu") == "adamw_torch"
    spec = validate(
        tiny_run(
            tmp_path, "train.optim=adamw_torch_fused", "train.compile=true", "train.group_by_length=true"
        )
    )
    args = training_args(spec.cfg, tmp_path, torch.device("cpu"))
    assert (args.optim, args.torch_compile, args.train_sampling_strategy) == (
        "adamw_torch_fused",
        True,
        "group_by_length",
    )


def _steps(
    model: nn.Module, opt: torch.optim.Optimizer, batches: list[dict[str, torch.Tensor]]
) -> list[float]:
    losses = []
    for batch in batches:
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def _lora_model(name: str = "tiny-roberta") -> nn.Module:
    model = build_model(name, MODELS[name].kind)
    torch.manual_seed(0)
    methods.apply(model, "lora", LoRAConfig(r=4, alpha=8), head=head_parameter_names(model))
    return model.train()


def _batches(n: int = 3, causal: bool = False, device: str = "cpu") -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        ids = torch.randint(5, 512, (4, 16), generator=g)
        labels = ids.clone() if causal else torch.randint(0, 2, (4,), generator=g)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
        out.append({k: v.to(device) for k, v in batch.items()})
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_fused_adamw_matches_adamw(device: str) -> None:
    """torch 2.13 has the fused AdamW on CPU too: three steps give the same parameters as the foreach one."""
    torch.manual_seed(0)
    plain = _lora_model().eval().to(device)  # no dropout: both runs see the same function
    fused = copy.deepcopy(plain)
    params = lambda m: [p for p in m.parameters() if p.requires_grad]  # noqa: E731
    kw = dict(lr=1e-2, weight_decay=0.1)
    a = _steps(plain, torch.optim.AdamW(params(plain), **kw), _batches(device=device))
    b = _steps(fused, torch.optim.AdamW(params(fused), fused=True, **kw), _batches(device=device))
    assert a == pytest.approx(b, abs=1e-6)
    for p, q in zip(params(plain), params(fused), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-6)


@needs_glue
def test_fused_adamw_run_completes(tmp_path: Path) -> None:
    record = execute(tiny_run(tmp_path, "train.optim=adamw_torch_fused"))
    assert record.status == "complete"


# --- bf16 frozen weights --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["tiny-roberta", "tiny-gpt2"])
def test_bf16_frozen_keeps_trainable_fp32_and_the_loss_near_fp32(name: str, device: str) -> None:
    causal = MODELS[name].kind == "causal_lm"
    torch.manual_seed(0)
    reference = _lora_model(name).eval().to(device)
    fast = switches.hold_frozen_in_bf16(copy.deepcopy(reference), device)
    for n, p in fast.named_parameters():
        assert p.dtype == (torch.float32 if p.requires_grad else torch.bfloat16), n
    assert any(p.requires_grad for p in fast.parameters())
    assert sum(1 for _ in switches.frozen_parameters(fast)) > 0
    params = lambda m: [p for p in m.parameters() if p.requires_grad]  # noqa: E731
    a = _steps(
        reference, torch.optim.AdamW(params(reference), lr=1e-2), _batches(causal=causal, device=device)
    )
    b = _steps(fast, torch.optim.AdamW(params(fast), lr=1e-2), _batches(causal=causal, device=device))
    assert b == pytest.approx(
        a, abs=2e-2
    )  # bf16 keeps 8 bits of mantissa: loss ~0.7 (6.2 for the LM) +- 0.02
    for p in params(fast):
        assert p.dtype == torch.float32 and p.grad is None
    with torch.no_grad():  # no autocast outside: the model's own forward enters it (evaluation, beam search)
        assert fast(input_ids=_batches(1, device=device)[0]["input_ids"]).logits.isfinite().all()


@needs_glue
def test_bf16_frozen_run_completes(tmp_path: Path) -> None:
    record = execute(tiny_run(tmp_path, "train.bf16=true", "train.bf16_frozen=true"))
    assert record.status == "complete"


# --- torch.compile --------------------------------------------------------------------------------------------------


def _inductor_works() -> str | None:
    try:
        torch.compile(lambda x: x * 2 + 1)(torch.ones(2))
    except Exception as e:  # no C++ compiler, unsupported platform, ...
        return f"torch.compile does not work on this CPU build: {type(e).__name__}: {str(e).splitlines()[0]}"
    return None


@needs_glue
def test_compile_runs_a_step(tmp_path: Path) -> None:
    """train.compile=true: one step through transformers' torch_compile (inductor on CPU; ~40 s the first time)."""
    reason = _inductor_works()
    if reason is not None:
        pytest.skip(reason)
    compiled = execute(tiny_run(tmp_path / "c", "train.compile=true", "train.max_steps=1"))
    plain = execute(tiny_run(tmp_path / "p", "train.max_steps=1"))
    assert compiled.status == plain.status == "complete"
    one, two = compiled.epochs[-1], plain.epochs[-1]
    assert one["train_loss"] == pytest.approx(two["train_loss"], abs=1e-4)
    assert one["metrics"]["eval_loss"] == pytest.approx(two["metrics"]["eval_loss"], abs=1e-4)


# --- length-grouped batches -----------------------------------------------------------------------------------------


@needs_glue
def test_group_by_length_batches_similar_lengths_and_keeps_every_example(tmp_path: Path) -> None:
    def padded_tokens(group: bool) -> tuple[int, list[int], type]:
        overrides = ["task=sst2", "task.max_train_samples=64", f"train.group_by_length={str(group).lower()}"]
        spec = validate(tiny_run(tmp_path, *overrides))
        data = glue_data(spec.cfg, build_tokenizer("tiny-roberta"))
        model = build_model("tiny-roberta", "classification")
        args = training_args(spec.cfg, tmp_path / "out", device_of(spec.cfg))
        trainer = transformers.Trainer(
            model=model,
            args=args,
            train_dataset=data.train,
            eval_dataset=data.evals,
            data_collator=data.collator,
        )
        sampler = trainer._get_train_sampler()
        order = list(iter(sampler))
        padded = sum(b["input_ids"].numel() for b in trainer.get_train_dataloader())
        return padded, order, type(sampler)

    grouped, order, kind = padded_tokens(True)
    plain, plain_order, _ = padded_tokens(False)
    assert kind is transformers.trainer_pt_utils.LengthGroupedSampler
    assert sorted(order) == sorted(plain_order) == list(range(64))  # every example once per epoch
    assert grouped < plain  # less padding


# --- LoRA's own fast paths ------------------------------------------------------------------------------------------


def _calls(module: nn.Module) -> list[int]:
    count: list[int] = []
    module.register_forward_hook(lambda *a: count.append(1))
    return count


@pytest.mark.parametrize("fused", [False, True])
def test_lora_dropout_zero_calls_no_module(fused: bool) -> None:
    cfg = LoRAConfig(r=2, alpha=4, targets=["q", "v"])
    base = Conv1D(3 * 8, 8) if fused else nn.Linear(8, 8)
    m = FusedLoRA(base, cfg, 3, [0, 2]) if fused else LoRALinear(base, cfg)
    assert isinstance(m.lora_dropout, nn.Identity)
    calls = _calls(m.lora_dropout)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    x = torch.randn(2, 3, 8)
    y = m.train()(x)
    assert calls == []  # p = 0: the branch takes x itself
    m.lora_dropout = nn.Dropout(0.0)  # a module call that does nothing (the switch's "off" in the benchmark)
    assert torch.equal(m(x), y)


def test_lora_dropout_above_zero_is_one_call_per_forward() -> None:
    m = FusedLoRA(Conv1D(3 * 8, 8), LoRAConfig(r=2, dropout=0.5), 3, [0, 2]).train()
    calls = _calls(m.lora_dropout)
    m(torch.randn(2, 8))
    assert calls == [1]  # one mask shared by the q and v slices, as loralib's MergedLinear


def reference_fused(m: FusedLoRA, x: torch.Tensor) -> torch.Tensor:
    """The former per-slice loop: x A_s^T B_s^T per adapted slice, zeros elsewhere, concatenated."""
    parts = []
    for s, (n, w) in enumerate(zip(m.names, m.widths, strict=True)):
        if s in m.slices:
            parts.append(x @ m.lora_A[n].T @ m.lora_B[n].T)
        else:
            parts.append(x.new_zeros(*x.shape[:-1], w))
    return m.base_forward(x) + torch.cat(parts, dim=-1) * m.scaling


@pytest.mark.parametrize(
    ("widths", "slices"),
    [(3, [0, 2]), (3, [0, 1, 2]), (3, [1]), ((64, 16, 16), [0, 2]), ((64, 16, 16), [1, 2])],
)
def test_fused_one_matmul_pair_equals_the_per_slice_loop(widths, slices) -> None:
    """Output and every gradient equal the per-slice loop (float64, 1e-12), equal or unequal (Phi-3 GQA) widths,
    and the LoRA branch is exactly two matmuls, whatever the number of adapted slices."""
    from torch.profiler import ProfilerActivity, profile

    d = 32
    out = 3 * d if isinstance(widths, int) else sum(widths)
    m = FusedLoRA(nn.Linear(d, out).double(), LoRAConfig(r=4, alpha=8), widths, slices)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    x = torch.randn(2, 5, d, generator=g, dtype=torch.float64)
    up = torch.randn(2, 5, out, generator=g, dtype=torch.float64)
    results = []
    for fn in (m, lambda t: reference_fused(m, t)):
        xi = x.clone().requires_grad_(True)
        m.zero_grad(set_to_none=True)
        y = fn(xi)
        (y * up).sum().backward()
        grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
        results.append((y.detach(), xi.grad, grads))
    (y1, gx1, g1), (y2, gx2, g2) = results
    torch.testing.assert_close(y1, y2, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(gx1, gx2, atol=1e-12, rtol=1e-12)
    assert g1.keys() == g2.keys() and len(g1) == 2 * len(slices) + 2  # A, B per slice, weight, bias
    for n in g1:
        torch.testing.assert_close(g1[n], g2[n], atol=1e-12, rtol=1e-12, msg=n)
    with profile(activities=[ProfilerActivity.CPU]) as prof, torch.no_grad():
        m(x)
    ops = {e.key: e.count for e in prof.key_averages()}
    assert ops.get("aten::mm", 0) == 2  # x A^T and u B^T; the base product is one aten::addmm (linear)


@pytest.mark.parametrize("device", DEVICES)
def test_whole_model_forward_unchanged_by_the_fused_path(device: str) -> None:
    """Tiny GPT-2 with q, v LoRA (non-zero B): logits equal the per-slice loop's to fp32 rounding."""
    model = build_model("tiny-gpt2", "causal_lm", device=device).eval()
    inject(model, LoRAConfig(r=4, alpha=8, targets=["q", "v"]))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, m in lora_modules(model):
            for n in m.lora_names():
                p = m.get_parameter(n)
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    ids = torch.randint(5, 512, (2, 10), generator=g).to(device)
    with torch.no_grad():
        fast = model(input_ids=ids).logits
        for _, m in lora_modules(model):
            m.forward = (lambda mod: lambda t: reference_fused(mod, t))(m)
        slow = model(input_ids=ids).logits
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
