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
from lora.errors import ConfigError
from lora.metrics import nlg as nlg_metrics
from lora.metrics import webnlg_eval

# Metrics per task, as the paper reports them (Table 3: E2E; Table 13: DART; Table 14: WebNLG).
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "e2e": ("bleu", "nist", "meteor", "rouge_l", "cider"),
    "webnlg": ("bleu", "meteor", "ter"),
    "dart": ("bleu", "meteor", "ter"),
}


BLANK_LINE = "\n\n"


@dataclass(frozen=True)
class DecodeConfig:
    """Beam search as in the paper's Appendix D.3: beam 10, length penalty 0.9 (E2E) / 0.8 (WebNLG, DART),
    no repeated 4-grams. stop_at_blank_line: a beam also ends at a blank line and the text is cut at the first
    one, as the released decoder (gpt2_beam.py `--eos_token_id 628`, gpt2_decode.py `.split('\\n\\n')[0]`)."""

    num_beams: int = 10
    length_penalty: float = 0.9
    no_repeat_ngram_size: int = 4
    max_new_tokens: int = 64
    batch_size: int = 16
    stop_at_blank_line: bool = True

    def generate_kwargs(
        self, pad_token_id: int, eos_token_id: int | list[int], prompt_length: int
    ) -> dict[str, Any]:
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


def stop_token_ids(tokenizer: Any, stop_at_blank_line: bool = True) -> list[int]:
    """Token ids that end a beam: the end token and, with `stop_at_blank_line`, the token of a blank line ("\\n\\n",
    GPT-2's 628) where the vocabulary has one (the released decoder's `--eos_token_id 628`)."""
    ids = [nlg.eos_id(tokenizer)]
    if stop_at_blank_line:
        blank = tokenizer.encode(BLANK_LINE, add_special_tokens=False)
        if len(blank) == 1 and blank[0] not in ids:
            ids.append(blank[0])
    return ids


def cut_output(token_ids: Sequence[int], tokenizer: Any, stop_ids: Sequence[int], blank_line: bool) -> str:
    """Generated ids -> text as gpt2_decode.py makes it: up to the first stop id, cut at the first blank line,
    stripped."""
    stops = set(stop_ids)
    end = next((i for i, t in enumerate(token_ids) if t in stops), len(token_ids))
    text = tokenizer.decode(list(token_ids[:end]), skip_special_tokens=True)
    return (text.split(BLANK_LINE)[0] if blank_line else text).strip()


class LMLoss:
    """The causal-LM loss of the NLG experiments, with transformers' `ForCausalLMLoss` signature (logits (B, T, V),
    labels (B, T) unshifted, -100 where not scored), installed as `model.loss_function`.

    Training (`model.training`): cross-entropy with label smoothing `epsilon` (Table 11: 0.1 on E2E and WebNLG), as
    the released `GPT2LMModel.forward` (examples/NLG/src/model.py: (1 - eps) nll + eps mean(-log p) over the
    vocabulary, which is what F.cross_entropy's label_smoothing computes). Evaluation: plain cross-entropy, as the
    released `evaluate` (gpt2_ft.py calls the model without `label_smooth`); the smoothed value is summed on the
    side so that a run records both (`eval_loss`, `eval_loss_smoothed`, Table 18 shows the plain one).
    """

    def __init__(self, model: torch.nn.Module, epsilon: float):
        self.model, self.epsilon = model, epsilon
        self.reset()

    def reset(self) -> None:
        self.smoothed_sum, self.count = 0.0, 0

    def smoothed_eval_loss(self) -> float | None:
        """Mean smoothed loss per scored token over the evaluation since the last `reset`."""
        return self.smoothed_sum / self.count if self.count else None

    def __call__(
        self,
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
        flat = logits.float().reshape(-1, vocab_size)
        scored = (target != ignore_index).sum()
        count = num_items_in_batch if num_items_in_batch is not None else scored

        def ce(eps: float) -> torch.Tensor:
            return F.cross_entropy(
                flat, target, ignore_index=ignore_index, label_smoothing=eps, reduction="sum"
            )

        if self.model.training:
            return ce(self.epsilon) / count
        with torch.no_grad():
            self.smoothed_sum += float(ce(self.epsilon))
            self.count += int(scored)
        return ce(0.0) / count


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
    stops = stop_token_ids(tokenizer, cfg.stop_at_blank_line)
    outputs: list[str] = []
    batches = range(0, len(examples), cfg.batch_size)
    for i in tqdm(batches, desc="decode", disable=not progress):
        batch = collate([nlg.build_prompt(e.source, tokenizer) for e in examples[i : i + cfg.batch_size]])
        batch = {k: v.to(device) for k, v in batch.items()}
        width = batch["input_ids"].shape[1]
        out = model.generate(**batch, **cfg.generate_kwargs(nlg.pad_id(tokenizer), stops, width))
        new = out[:, width:].tolist()
        outputs += [cut_output(ids, tokenizer, stops, cfg.stop_at_blank_line) for ids in new]
    model.train(was_training)
    return outputs


def score(task: str, hypotheses: Sequence[str], examples: Sequence[nlg.NLGExample]) -> dict[str, float]:
    """The paper's metrics for `task`, fractions on the official scales (BLEU 0.704, not 70.4).

    E2E: the E2E challenge's metric set (lora.metrics.nlg) against all references of each MR. WebNLG and DART: the
    released pipeline (gpt2_decode.py + GenerationEval, lora.metrics.webnlg_eval) on one hypothesis per unique
    input (`examples` merged by source, as `decode_split_examples` gives them); WebNLG also on its seen and
    unseen categories (keys `bleu_seen`, `bleu_unseen`, ...)."""
    if task not in TASK_METRICS:
        raise ConfigError(f"unknown generation task {task!r}: choose from {', '.join(TASK_METRICS)}")
    if len(hypotheses) != len(examples):
        raise ConfigError(f"{len(hypotheses)} hypotheses for {len(examples)} inputs")
    if task == "e2e":
        return nlg_metrics.score(list(hypotheses), [list(e.references) for e in examples], TASK_METRICS[task])
    subsets = {"": list(range(len(examples)))}
    if task == "webnlg":
        subsets["_seen"] = [i for i, e in enumerate(examples) if e.seen is True]
        subsets["_unseen"] = [i for i, e in enumerate(examples) if e.seen is False]
    out: dict[str, float] = {}
    for suffix, idx in subsets.items():
        if not idx:
            continue
        got = webnlg_eval.score([hypotheses[i] for i in idx], [examples[i].references for i in idx])
        out |= {
            f"bleu{suffix}": got["bleu"] / 100,
            f"meteor{suffix}": got["meteor"],
            f"ter{suffix}": got["ter"],
        }
    return out


def decode_split_examples(task: str, examples: Sequence[nlg.NLGExample]) -> list[nlg.NLGExample]:
    """The inputs the released decoder writes one output for: E2E's MRs as they are; WebNLG's and DART's merged
    by source (gpt2_decode.py keys references by source: DART's 5,097 test entries are 4,159 inputs)."""
    return list(examples) if task == "e2e" else nlg.merge_by_source(examples)
