"""Tests of lora/models.py: offline builds (tiny models, the paper's architectures on the meta device), task heads,
and the in-process tiny tokenizer."""

from __future__ import annotations

import pytest
import torch

from lora.models import (
    MODELS,
    build_config,
    build_model,
    build_tokenizer,
    cache_dir,
    head_parameter_names,
    is_classifier,
    pretrained_path,
    tiny_tokenizer,
)

HEADS = {
    "tiny-bert": ["classifier.weight", "classifier.bias", "bert.pooler.dense.weight", "bert.pooler.dense.bias"],
    "tiny-roberta": [
        "classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight", "classifier.out_proj.bias",
    ],
    "tiny-deberta": ["pooler.dense.weight", "pooler.dense.bias", "classifier.weight", "classifier.bias"],
    "tiny-gpt2": [],
    "tiny-llama": [],
}  # fmt: skip


def test_tiny_models_are_small_deterministic_and_run(tiny_name: str, make_tiny, tiny_batch) -> None:
    a, b = make_tiny(tiny_name), make_tiny(tiny_name)
    cfg = a.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == (2, 32, 512)
    assert cfg.model_type == MODELS[tiny_name].family
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    with torch.no_grad():
        out = a(**tiny_batch).logits
    assert out.shape == ((2, 2) if is_classifier(a) else (2, 7, 512))
    assert torch.isfinite(out).all()


def test_head_parameter_names(tiny_name: str, make_tiny) -> None:
    model = make_tiny(tiny_name)
    assert sorted(head_parameter_names(model)) == sorted(HEADS[tiny_name])
    assert is_classifier(model) == bool(HEADS[tiny_name])


@pytest.mark.parametrize(("num_labels", "problem_type"), [(1, "regression"), (3, None)])
def test_num_labels(num_labels: int, problem_type: str | None, tiny_batch) -> None:
    model = build_model("tiny-roberta", num_labels=num_labels).eval()
    assert model.config.problem_type == problem_type
    with torch.no_grad():
        assert model(**tiny_batch).logits.shape == (2, num_labels)


def test_base_kind_is_the_backbone(tiny_batch) -> None:
    model = build_model("tiny-roberta", "base")
    assert type(model).__name__ == "RobertaModel" and head_parameter_names(model) == []


# Parameter totals, pinned to the models' well-known published sizes: RobertaModel(roberta-base) has 124,645,632
# parameters, 590,592 of them in the pooler, which sequence classification drops (and replaces by its 592,130-param
# head); GPT-2 medium has 354,823,168 and GPT-2 large 774,030,080 (LM head tied to the embedding).
@pytest.mark.parametrize(
    ("name", "kind", "total"),
    [
        ("roberta-base", "base", 124_645_632),
        ("roberta-base", "classification", 124_645_632 - 590_592 + 592_130),
        ("gpt2-medium", "causal_lm", 354_823_168),
        ("gpt2-large", "causal_lm", 774_030_080),
    ],
)
def test_paper_architectures_build_offline_on_meta(name: str, kind: str, total: int) -> None:
    model = build_model(name, kind, pretrained=False, device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == total


def test_build_config_is_offline() -> None:
    cfg = build_config("deberta-v2-xxlarge", num_labels=3)
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.num_labels) == (
        "deberta-v2",
        48,
        1536,
        3,
    )


def test_unknown_model_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'foo': choose from roberta-base, "):
        build_model("foo")


def test_unreachable_pretrained_weights_are_a_clear_error(tmp_path) -> None:
    with pytest.raises(RuntimeError, match="cannot load 'roberta-base' from .*model.pretrained=false"):
        build_model("roberta-base", path=str(tmp_path / "missing"))


def test_pretrained_path_only_for_packaged_models() -> None:
    with pytest.raises(ValueError, match="'roberta-base' does not ship in a package"):
        pretrained_path("roberta-base")


def test_cache_dir_follows_lora_cache(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("LORA_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()


# --- tiny tokenizer -------------------------------------------------------------------------------------------------


def test_tiny_tokenizer_specials_and_templates() -> None:
    enc, dec = tiny_tokenizer(), tiny_tokenizer(causal=True)
    for tok in (enc, dec):
        ids = [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id, tok.mask_token_id]
        assert ids == [0, 1, 2, 3, 4] and len(tok) <= 512  # fits the tiny models' 512 embeddings (477 here)
    a, b = dec("a cat")["input_ids"], dec("a dog")["input_ids"]
    assert enc("a cat", "a dog")["input_ids"] == [1, *a, 2, 2, *b, 2]  # <s> a </s> </s> b </s>
    text = "The Eagle serves Café food ü 🙂"  # byte-level: any text round-trips
    assert dec.decode(dec(text)["input_ids"]) == text


@pytest.mark.parametrize("name", ["tiny-roberta", "tiny-gpt2"])
def test_build_tokenizer_tiny_has_a_pad_token(name: str) -> None:
    tok = build_tokenizer(name)
    assert tok.pad_token == "<pad>" and tok.model_max_length == 128
