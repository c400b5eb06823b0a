"""The fast-path switches of a training run (`train.*`, lora.config.TrainConfig) that act on the model or the
optimizer, in one place, so that the trainer (`lora.train`) and the fast-path benchmark (`lora.bench.fast_path`)
apply them the same way.

| switch | default | what it does | results |
|---|---|---|---|
| `train.attn_implementation` | `sdpa` | `torch.nn.functional.scaled_dot_product_attention` where transformers supports it for the family (else the family's eager attention: DeBERTa-v2, Gemma 2); `eager` forces the eager one | logits equal eager's to 1e-5 (fp32, tests/test_fast_path.py) |
| `train.bf16_frozen` | false | with `train.bf16`: frozen parameters held in bf16, trainable ones in fp32, the forward under bf16 autocast | loss of a few steps within 2e-2 of fp32 |
| `train.optim` | `auto` | `adamw_torch_fused` (one fused kernel per step) on CUDA, `adamw_torch` elsewhere; or either by name | parameters after a few steps equal to 1e-6 |
| `train.compile` | false | `torch.compile` the model (transformers' `torch_compile`) | loss equal to 1e-4 |
| `train.group_by_length` | false | batches of similar length (transformers' LengthGroupedSampler): less padding, same examples per epoch | the same examples, another order |

LoRA's own dropout at 0 is no module call at all, and GPT-2's fused q, v run as one matmul pair
(`lora.methods.lora`): not switches, always on.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import torch
from torch import nn

from lora.errors import ConfigError

ATTENTION = ("sdpa", "eager")
OPTIMIZERS = ("auto", "adamw_torch", "adamw_torch_fused")


def resolve_optim(optim: str, device: torch.device | str) -> str:
    """`auto` -> `adamw_torch_fused` on CUDA, `adamw_torch` elsewhere; a named optimizer as it is."""
    if optim not in OPTIMIZERS:
        raise ConfigError(f"train.optim must be one of {OPTIMIZERS}, got {optim!r}")
    if optim != "auto":
        return optim
    return "adamw_torch_fused" if torch.device(device).type == "cuda" else "adamw_torch"


def frozen_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """The floating-point parameters that do not require a gradient (each tensor once, tied ones too)."""
    seen: set[int] = set()
    for p in model.parameters():
        if not p.requires_grad and p.is_floating_point() and id(p) not in seen:
            seen.add(id(p))
            yield p


def hold_frozen_in_bf16(model: nn.Module, device_type: str) -> nn.Module:
    """Frozen parameters in bf16, trainable ones in fp32, and every forward of `model` under bf16 autocast.

    Under `train.bf16` autocast already runs the matmuls in bf16 and casts each fp32 weight to bf16 at every
    use; holding the frozen weights in bf16 does that cast once and halves their memory. The trainable
    parameters (LoRA's A and B, the task head, ...) stay fp32 for the optimizer. Mixed dtypes need autocast in
    every call, not only inside the Trainer's training step (evaluation, beam search after training), so the
    model's own forward enters it. Call after the method is applied (it decides what is frozen); in place."""
    for p in model.parameters():
        if p.requires_grad and p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()
    for p in frozen_parameters(model):
        p.data = p.data.to(torch.bfloat16)
    if not getattr(model.forward, "_bf16_autocast", False):
        forward = model.forward

        @functools.wraps(forward)
        def autocast_forward(*args: object, **kwargs: object) -> object:
            with torch.autocast(device_type, dtype=torch.bfloat16):
                return forward(*args, **kwargs)

        autocast_forward._bf16_autocast = True  # type: ignore[attr-defined]
        model.forward = autocast_forward  # type: ignore[method-assign]
    return model
