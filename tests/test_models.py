"""Tests of lora/models.py: offline builds (tiny models, the paper's architectures on the meta device), task heads,
and the in-process tiny tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from hydra import compose, initialize_config_dir

from lora.architectures import ARCHITECTURES
from lora.config import ModelConfig, validate
from lora.methods.lora import LoRAConfig, inject
from lora.models import (
    MODELS,
    ModelSpec,
    build_config,
    build_model,
    build_tokenizer,
    cache_dir,
    default_kind,
    head_parameter_names,
    is_classifier,
    pretrained_path,
    resolve,
    tiny_tokenizer,
)

CONF = Path(__file__).resolve().parent.parent / "conf"

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
    build_config("tiny-roberta").save_pretrained(tmp_path)  # a config, but no weights
    with pytest.raises(RuntimeError, match="cannot load 'roberta-base' from .*model.pretrained=false"):
        build_model("roberta-base", path=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="model.path=.*missing: no such directory"):
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


# --- any Hugging Face model: model.hub / model.path ------------------------------------------------------------------


def test_any_model_by_path_builds_injects_and_runs(qwen_dir: Path, tiny_batch) -> None:
    mc = ModelConfig(name=None, path=str(qwen_dir))
    assert mc.label == "my-qwen"  # what the run record calls it
    s = mc.resolve()
    assert (s.name, s.family, s.source, s.path, s.hub, s.kind) == (
        "my-qwen",
        "qwen2",
        "path",
        str(qwen_dir.resolve()),
        None,
        "causal_lm",
    )
    assert s.reference == str(qwen_dir.resolve())
    saved = transformers.AutoModelForCausalLM.from_pretrained(qwen_dir).eval()
    ours = build_model(None, "causal_lm", path=str(qwen_dir)).eval()
    assert type(ours).__name__ == "Qwen2ForCausalLM"
    with torch.no_grad():
        base = saved(**tiny_batch).logits
        assert torch.equal(ours(**tiny_batch).logits, base)
        report = inject(ours, LoRAConfig(r=4, targets=["q", "v"]))
        assert report.modules[0] == "model.layers.0.self_attn.q_proj"
        assert torch.equal(ours(**tiny_batch).logits, base)  # B = 0
    tok = build_tokenizer(s)
    assert tok("a cat")["input_ids"] == tiny_tokenizer(causal=True)("a cat")["input_ids"]
    cls = build_model(s, "classification", num_labels=3)
    assert type(cls).__name__ == "Qwen2ForSequenceClassification" and cls.config.num_labels == 3
    meta = build_model(s, "causal_lm", pretrained=False, device="meta")
    assert sum(p.numel() for p in meta.parameters()) == sum(p.numel() for p in saved.parameters())


def test_path_wins_over_a_tiny_name(tmp_path: Path, tiny_batch) -> None:
    """model=tiny-gpt2 model.path=<dir>: the directory's weights, not tiny-gpt2's seeded ones (it was ignored)."""
    other = build_model("tiny-gpt2", "causal_lm")
    with torch.no_grad():
        other.lm_head.weight.mul_(2.0)  # tied to the embedding: other weights, same family
    other.save_pretrained(tmp_path / "g")
    mc = ModelConfig(name="tiny-gpt2", path=str(tmp_path / "g"))
    assert mc.label == "tiny-gpt2"
    s = mc.resolve()
    assert (s.source, s.copy_of, s.family) == ("path", "tiny-gpt2", "gpt2")
    built = build_model(mc.name, "causal_lm", path=mc.path).eval()
    assert torch.equal(built.lm_head.weight, other.lm_head.weight)
    assert not torch.equal(built.lm_head.weight, build_model("tiny-gpt2", "causal_lm").lm_head.weight)
    # No tokenizer in the directory: the tiny model's own.
    assert (
        build_tokenizer(mc.name, mc.path)("a cat")["input_ids"]
        == build_tokenizer("tiny-gpt2")("a cat")["input_ids"]
    )


def test_path_without_a_tokenizer_or_hub_is_a_clear_error(tmp_path: Path) -> None:
    build_model("tiny-mistral", "causal_lm").save_pretrained(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="model.path=.* has no tokenizer .*tokenizer.save_pretrained"):
        build_tokenizer(None, path=str(tmp_path / "m"))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(name="minilm", path="QWEN"), ValueError,
         r"model.path=.*my-qwen holds a qwen2 model but model=minilm is a bert model; to run it under its own "
         r"name, leave model.name unset: model=hf model.path="),
        (dict(name="minilm", hub="Qwen/Qwen2.5-0.5B"), ValueError,
         r"model.hub=Qwen/Qwen2.5-0.5B is not minilm's hub id \(sentence-transformers/all-MiniLM-L6-v2\); .*"
         r"model=hf model.hub=Qwen/Qwen2.5-0.5B"),
        (dict(name="tiny-gpt2", hub="openai-community/gpt2"), ValueError, "none: it is built locally"),
        (dict(name="gpt5"), ValueError, "unknown model 'gpt5': choose from roberta-base"),
        (dict(name=None, path="MISSING"), FileNotFoundError, "model.path=.*nowhere: no such directory"),
        (dict(name=None, path="EMPTY"), FileNotFoundError, "has no config.json: give a directory written by"),
        (dict(name=None, path="T5"), ValueError,
         r"unsupported architecture 't5' \(model.path=.*\): supported model types are bert, roberta, "),
    ],
    ids=["other-family", "other-hub", "tiny-has-no-hub", "unknown-name", "missing", "empty", "t5"],
)  # fmt: skip
def test_model_settings_that_cannot_work_are_one_line_errors(kwargs, error, match, qwen_dir: Path) -> None:
    root = qwen_dir.parent
    (root / "empty").mkdir()
    (root / "t5").mkdir()
    (root / "t5" / "config.json").write_text(json.dumps({"model_type": "t5"}))
    paths = {"QWEN": qwen_dir, "MISSING": root / "nowhere", "EMPTY": root / "empty", "T5": root / "t5"}
    kwargs = {k: str(paths[v]) if v in paths else v for k, v in kwargs.items()}
    with pytest.raises(error, match=match) as e:
        ModelConfig(**kwargs)  # checked when the config is validated, before any model is built
    assert "\n" not in str(e.value)
    with pytest.raises(error, match=match):
        resolve(kwargs.get("name"), hub=kwargs.get("hub"), path=kwargs.get("path"))


def test_no_model_at_all_is_refused_before_anything_is_built(tmp_path: Path) -> None:
    """`model=hf` alone validates (every conf/model file composes) but names no model: resolving it, or naming it
    in a record, is a one-line error."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        mc = validate(compose("config", overrides=["model=hf", "task=rte"])).cfg.model
    for attempt in (mc.resolve, lambda: mc.label, lambda: build_model(None)):
        with pytest.raises(
            ValueError, match=r"^no model given: choose model=<name> .*model=hf model.hub=<hub id>"
        ):
            attempt()


def test_a_hub_id_is_recorded_by_name_and_checked_only_when_built(monkeypatch: pytest.MonkeyPatch) -> None:
    mc = ModelConfig(name=None, hub="Qwen/Qwen2.5-0.5B")  # no hub access while validating
    assert mc.label == "Qwen/Qwen2.5-0.5B"
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(
        RuntimeError, match=r"cannot read the config of model.hub=Qwen/Qwen2.5-0.5B \(OSError\)"
    ):
        mc.resolve()
    # A registered name with its own hub id is that model.
    assert ModelConfig(name="roberta-base", hub="FacebookAI/roberta-base").resolve() is MODELS["roberta-base"]
    assert resolve("roberta-base").reference == "FacebookAI/roberta-base"
    assert resolve("tiny-llama").reference == "tiny-llama"


def test_hydra_model_hf_with_a_path_validates_to_the_directory_name(qwen_dir: Path) -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["model=hf", f"model.path={qwen_dir}", "task=e2e", "method=lora"])
    run = validate(cfg)
    assert run.cfg.model.name is None and run.cfg.model.label == "my-qwen"
    assert run.raw["model"]["path"] == str(qwen_dir) and run.raw["model"]["hub"] is None
    assert run.cfg.model.resolve().family == "qwen2"


def test_every_registered_model_is_of_a_supported_family() -> None:
    for name, s in MODELS.items():
        assert s.family in ARCHITECTURES, name
        assert default_kind(name) == ("causal_lm" if ARCHITECTURES[s.family].causal else "classification")
        assert isinstance(s, ModelSpec) and resolve(name) is s
