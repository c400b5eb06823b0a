"""Shared fixtures: the tiny models of each family (2 layers, 32 wide, random weights, no download), a seeded
input batch, a helper that gives every LoRA module a non-zero B (so the LoRA branch actually changes outputs), and a
saved tiny Qwen2 folder (any Hugging Face model by path)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import transformers
from torch import nn

from lora.methods.lora import FusedLoRA, lora_modules
from lora.models import build_model, tiny_tokenizer

# Tiny model name -> the kind tests build it as (encoders get a classification head, decoders an LM head).
TINY_KINDS: dict[str, str] = {
    "tiny-bert": "classification",
    "tiny-roberta": "classification",
    "tiny-deberta": "classification",
    "tiny-gpt2": "causal_lm",
    "tiny-llama": "causal_lm",
}


@pytest.fixture(params=list(TINY_KINDS))
def tiny_name(request: pytest.FixtureRequest) -> str:
    """Each tiny family in turn (a test using this fixture runs once per family)."""
    return request.param


@pytest.fixture
def make_tiny() -> Callable[..., nn.Module]:
    """Factory: make_tiny(name, kind=None) -> a tiny model in eval mode. Two calls give identical weights
    (build_model seeds torch with 0 before building)."""

    def make(name: str, kind: str | None = None) -> nn.Module:
        return build_model(name, kind or TINY_KINDS[name]).eval()  # type: ignore[arg-type]

    return make


@pytest.fixture
def tiny_batch() -> dict[str, torch.Tensor]:
    """input_ids (2, 7) drawn with a fixed seed from non-special ids [5, 512), and an all-ones attention mask."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 512, (2, 7), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def fill_lora_b(model: nn.Module, std: float = 0.1, seed: int = 0) -> None:
    """Draw every LoRA B (zero at init) from N(0, std^2) with a fixed seed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in lora_modules(model):
            bs = list(m.lora_B.values()) if isinstance(m, FusedLoRA) else [m.lora_B]
            for b in bs:
                b.copy_(torch.randn(b.shape, generator=g) * std)


@pytest.fixture
def randomize_lora() -> Callable[..., None]:
    """The function `fill_lora_b(model, std=0.1, seed=0)`."""
    return fill_lora_b


# Tiny models run fastest on one thread (and do not fight each other when tests run beside other work).
torch.set_num_threads(1)


@pytest.fixture
def qwen_dir(tmp_path: Path) -> Path:
    """A tiny Qwen2 (GQA; not a registered model) and its tokenizer, saved with save_pretrained into `my-qwen/`:
    any Hugging Face model, by path."""
    d = tmp_path / "my-qwen"
    torch.manual_seed(1)
    transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        vocab_size=512, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )).save_pretrained(d)  # fmt: skip
    tiny_tokenizer(causal=True).save_pretrained(d)
    return d
