"""Tests of lora/methods/bitfit.py: only the bias terms are trained (Ben Zaken et al., 2021; LoRA paper 5.1).

The expected biases are read off the modules (every module's own `bias`), and the tiny counts are written out
from the architecture: per layer the q, k, v, o, intermediate and output projections and two LayerNorm shifts.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lora import methods
from lora.checkpoint import load_adapter, save_adapter
from lora.methods.bitfit import BitFitConfig
from lora.models import head_parameter_names, is_classifier
from lora.params import count_parameters

from .common import logits

WITH_BIASES = ["tiny-bert", "tiny-roberta", "tiny-deberta", "tiny-gpt2"]


@pytest.mark.parametrize("name", WITH_BIASES)
def test_bitfit_trains_exactly_the_biases(name, make_tiny, tiny_batch) -> None:
    base, model = make_tiny(name), make_tiny(name)
    head = head_parameter_names(model)
    report = methods.apply(model, "bitfit", BitFitConfig(), head=head)
    biases = {
        id(m.bias) for m in model.base_model.modules() if isinstance(getattr(m, "bias", None), nn.Parameter)
    }
    params = dict(model.named_parameters())
    assert {id(params[n]) for n in report.trainable} == biases and len(report.trainable) == len(biases)
    assert any(isinstance(model.get_submodule(n.rpartition(".")[0]), nn.LayerNorm) for n in report.trainable)
    assert {n for n, p in params.items() if p.requires_grad} == set(report.trainable) | set(head)
    assert torch.equal(logits(model, tiny_batch), logits(base, tiny_batch))  # nothing is changed
    model.train()
    labels = torch.tensor([0, 1]) if is_classifier(model) else tiny_batch["input_ids"]
    model(**tiny_batch, labels=labels).loss.backward()
    for n, p in params.items():
        if n not in report.trainable and n not in head:
            assert p.grad is None, n
    assert model.load_state_dict(base.state_dict(), strict=True)


def test_tiny_bert_count(make_tiny) -> None:
    """d = 32, d_ff = 64, 2 layers: per layer 4 d (q, k, v, o) + d_ff + d (output) + 2 d (LayerNorms) = 288;
    plus the embedding LayerNorm's d: 2 * 288 + 32 = 608. (BERT's pooler bias is the task head's: not counted.)"""
    model = make_tiny("tiny-bert")
    methods.apply(model, "bitfit", BitFitConfig(), head=head_parameter_names(model))
    assert count_parameters(model).trainable == 608


def test_save_load_round_trip(make_tiny, tiny_batch, tmp_path) -> None:
    model = make_tiny("tiny-roberta")
    report = methods.apply(model, "bitfit", BitFitConfig(), head=head_parameter_names(model))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n in report.trainable:
            params[n].add_(0.1)
    expected = logits(model, tiny_batch)
    save_adapter(model, tmp_path, "bitfit", BitFitConfig(), report)
    fresh = make_tiny("tiny-roberta")
    load_adapter(fresh, tmp_path)
    assert torch.equal(logits(fresh, tiny_batch), expected)


def test_a_model_without_biases_is_a_clear_error(make_tiny) -> None:
    with pytest.raises(ValueError, match="bitfit: this llama model has no bias terms to train"):
        methods.apply(make_tiny("tiny-llama"), "bitfit", BitFitConfig())


def test_bitfit_takes_no_options() -> None:
    with pytest.raises(ValueError, match="method 'bitfit' has no option"):
        methods.method_config("bitfit", bottleneck=4)
