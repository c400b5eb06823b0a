"""Tests of lora/methods/full.py: full fine-tuning (FT) and FT^Top2 (the last layers only; LoRA paper 5.1)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lora import methods
from lora.architectures import layer_list
from lora.checkpoint import load_adapter, save_adapter
from lora.methods.full import FullConfig, TopLayersConfig
from lora.models import head_parameter_names, is_classifier
from lora.params import count_parameters

from .common import logits

TINY = ["tiny-bert", "tiny-roberta", "tiny-deberta", "tiny-gpt2", "tiny-llama"]


def backward(model: nn.Module, batch: dict[str, torch.Tensor]) -> None:
    model.train()
    labels = torch.tensor([0, 1]) if is_classifier(model) else batch["input_ids"]
    model(**batch, labels=labels).loss.backward()


@pytest.mark.parametrize("name", TINY)
def test_full_trains_everything(name, make_tiny, tiny_batch) -> None:
    base, model = make_tiny(name), make_tiny(name)
    head = head_parameter_names(model)
    report = methods.apply(model, "full", FullConfig(), head=head)
    assert all(p.requires_grad for p in model.parameters())
    assert report.trainable == [n for n, _ in model.named_parameters()]
    assert torch.equal(logits(model, tiny_batch), logits(base, tiny_batch))
    c = count_parameters(model)
    assert c.trainable == c.total - c.head
    backward(model, tiny_batch)
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("name", TINY)
def test_ft_top_trains_only_the_last_layers(name, make_tiny, tiny_batch) -> None:
    base, model = make_tiny(name), make_tiny(name)
    head = head_parameter_names(model)
    report = methods.apply(model, "ft_top2", TopLayersConfig(n_layers=1), head=head)
    prefix, blocks = layer_list(model)
    top = [f"{prefix}.1.{n}" for n, _ in blocks[1].named_parameters()]
    assert report.trainable == top
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(top) | set(head)
    assert count_parameters(model).trainable == sum(p.numel() for p in blocks[1].parameters())
    assert torch.equal(logits(model, tiny_batch), logits(base, tiny_batch))
    backward(model, tiny_batch)
    for n, p in model.named_parameters():
        if n not in top and n not in head:
            assert p.grad is None, n
    assert model.load_state_dict(base.state_dict(), strict=True)


def test_ft_top2_save_load_round_trip(make_tiny, tiny_batch, tmp_path) -> None:
    model = make_tiny("tiny-gpt2")
    cfg = TopLayersConfig(n_layers=1)
    report = methods.apply(model, "ft_top2", cfg)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n in report.trainable:
            params[n].add_(0.05)
    expected = logits(model, tiny_batch)
    save_adapter(model, tmp_path, "ft_top2", cfg, report)
    fresh = make_tiny("tiny-gpt2")
    load_adapter(fresh, tmp_path)
    assert torch.equal(logits(fresh, tiny_batch), expected)


def test_ft_top_bad_layer_counts(make_tiny) -> None:
    for bad in (0, -1, True):
        with pytest.raises(ValueError, match=f"n_layers must be a positive integer, got {bad!r}"):
            TopLayersConfig(n_layers=bad)
    with pytest.raises(ValueError, match="ft_top2 n_layers=3 exceeds the model's 2 layers"):
        methods.apply(make_tiny("tiny-bert"), "ft_top2", TopLayersConfig(n_layers=3))
