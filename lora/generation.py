"""Data-to-text generation (E2E, WebNLG, DART; Section 5.4, Tables 3, 13, 14): causal-LM data with the loss on
target tokens only, beam-search decoding through transformers' `generate`, and scoring with the official metric set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import LogitsProcessorList, NoRepeatNGramLogitsProcessor

from lora.data import nlg
from lora.metrics import nlg as nlg_metrics

# Metrics per task, as the paper reports them (Table 3: E2E; Table 13: DART; Table 14: WebNLG).
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "e2e": ("bleu", "nist", "meteor", "rouge_l", "cider"),
    "webnlg": ("bleu", "meteor", "ter"),
    "dart": ("bleu", "meteor", "ter"),
}


@dataclass(frozen=True)
class DecodeConfig:
    """Beam search as in the paper's Appendix D.3: beam 10, length penalty 0.9 (E2E) / 0.8 (WebNLG, DART),
    no repeated 4-grams."""

    num_beams: int = 10
    length_penalty: float = 0.9
    no_repeat_ngram_size: int = 4
    max_new_tokens: int = 64
    batch_size: int = 16

    def generate_kwargs(self, pad_token_id: int, eos_token_id: int, prompt_length: int) -> dict[str, Any]:
        """The keyword arguments passed to `model.generate` (and only these) for prompts `prompt_length` long.

        As the paper's beam search: it runs all steps and keeps the best length-normalised hypothesis
        (`early_stopping="never"`), and bans repeated n-grams among the *generated* tokens only (the prompt may
        legitimately contain the n-grams an output must copy)."""
        n = self.no_repeat_ngram_size
        banned = [GeneratedNoRepeatNGram(n, prompt_length)] if n > 0 else []
        return {
            "num_beams": self.num_beams,
            "length_penalty": self.length_penalty,
            "max_new_tokens": self.max_new_tokens,
            "early_stopping": "never",
            "do_sample": False,
            "pad_token_id": pad_token_id,
            "eos_token_id": eos_token_id,
            "logits_processor": LogitsProcessorList(banned),
        }


class GeneratedNoRepeatNGram(NoRepeatNGramLogitsProcessor):
    """transformers' no-repeat-n-gram rule applied to the tokens after a (left-padded, equal-length) prompt."""

    def __init__(self, ngram_size: int, prompt_length: int):
        super().__init__(ngram_size)
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return super().__call__(input_ids[:, self.prompt_length :], scores)


def smoothed_lm_loss(epsilon: float) -> Any:
    """A causal-LM loss with label smoothing `epsilon` (Table 11: 0.1 on E2E and WebNLG), with the signature of
    transformers' `ForCausalLMLoss`: logits (B, T, V), labels (B, T) unshifted, -100 where not scored."""

    def loss(
        logits: torch.Tensor,
        labels: torch.Tensor,
        vocab_size: int,
        num_items_in_batch: torch.Tensor | int | None = None,
        ignore_index: int = -100,
        shift_labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if shift_labels is None:
            shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
        target = shift_labels.reshape(-1).to(logits.device)
        total = F.cross_entropy(
            logits.float().reshape(-1, vocab_size), target, ignore_index=ignore_index, label_smoothing=epsilon,
            reduction="sum",
        )  # fmt: skip
        count = num_items_in_batch if num_items_in_batch is not None else (target != ignore_index).sum()
        return total / count

    return loss


def lm_dataset(examples: Sequence[nlg.NLGExample], tokenizer: Any, max_length: int) -> Dataset:
    """One training row per (input, reference) pair: `source <eos> target <eos>`, labels only on the target."""
    rows = [nlg.build_lm_features(s, t, tokenizer, max_length) for s, t in nlg.training_pairs(examples)]
    return Dataset.from_list(rows)


@torch.no_grad()
def decode(
    model: Any, tokenizer: Any, examples: Sequence[nlg.NLGExample], cfg: DecodeConfig, progress: bool = True
) -> list[str]:
    """Generate one output per example (batched, left-padded prompts); returns stripped strings in input order."""
    collate = nlg.GenerationCollator.from_tokenizer(tokenizer)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    outputs: list[str] = []
    batches = range(0, len(examples), cfg.batch_size)
    for i in tqdm(batches, desc="decode", disable=not progress):
        batch = collate([nlg.build_prompt(e.source, tokenizer) for e in examples[i : i + cfg.batch_size]])
        batch = {k: v.to(device) for k, v in batch.items()}
        width = batch["input_ids"].shape[1]
        out = model.generate(
            **batch, **cfg.generate_kwargs(nlg.pad_id(tokenizer), tokenizer.eos_token_id, width)
        )
        new = out[:, batch["input_ids"].shape[1] :]
        outputs += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    model.train(was_training)
    return outputs


def score(task: str, hypotheses: Sequence[str], examples: Sequence[nlg.NLGExample]) -> dict[str, float]:
    """The paper's metrics for `task` against all references of each input; WebNLG also on its seen and unseen
    categories (keys `bleu_seen`, `bleu_unseen`, ...)."""
    if task not in TASK_METRICS:
        raise ValueError(f"unknown generation task {task!r}: choose from {', '.join(TASK_METRICS)}")
    refs = [list(e.references) for e in examples]
    metrics = TASK_METRICS[task]
    out = nlg_metrics.score(list(hypotheses), refs, metrics=metrics)
    if task == "webnlg":
        groups = {
            "seen": [i for i, e in enumerate(examples) if e.seen is True],
            "unseen": [i for i, e in enumerate(examples) if e.seen is False],
        }
        groups = {k: v for k, v in groups.items() if v}
        if groups:
            out |= nlg_metrics.score_subsets(list(hypotheses), refs, groups, metrics=metrics)
    return out
