"""Helpers shared by the method tests (plain functions; fixtures live in tests/conftest.py)."""

from __future__ import annotations

import torch
from torch import nn

from lora.models import is_classifier


def logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """A scalar loss on a 2-example batch: class labels for a classifier, the next tokens for a causal LM."""
    labels = torch.tensor([0, 1]) if is_classifier(model) else batch["input_ids"]
    return model(**batch, labels=labels).loss


def perturb(model: nn.Module, names: list[str], std: float) -> None:
    """Add seeded N(0, std^2) noise to the parameters `names` (e.g. zero-initialised up-projections), as if
    trained."""
    g = torch.Generator().manual_seed(0)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n in names:
            params[n].add_(torch.randn(params[n].shape, generator=g) * std)
