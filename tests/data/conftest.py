"""Fixtures for the data tests: tiny in-process tokenizers (no hub) and a throwaway $LORA_CACHE."""

from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

CORPUS = [
    "the movie was a charming and often affecting journey .",
    "unflinchingly bleak and desperate",
    "a man is playing a flute .",
    "no weapons of mass destruction found in iraq yet .",
]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]


def make_tokenizer(corpus: list[str]) -> PreTrainedTokenizerFast:
    """A BERT-like word-level tokenizer trained on `corpus`: [CLS] a [SEP] (b [SEP]), with token_type_ids."""
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=SPECIALS))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


@pytest.fixture
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over CORPUS (26 words + 4 specials)."""
    return make_tokenizer(CORPUS)


@pytest.fixture
def make_tiny_tokenizer():
    """The factory itself, to build tokenizers over other corpora: make_tiny_tokenizer(["a b", "c"])."""
    return make_tokenizer


@pytest.fixture
def lora_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point $LORA_CACHE at an empty folder for the test."""
    cache = tmp_path / "lora_cache"
    monkeypatch.setenv("LORA_CACHE", str(cache))
    return cache
