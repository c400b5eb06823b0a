"""Data-to-text generation (lora/generation.py and its use in lora/train.py): the paper's beam settings reach
`generate` (Appendix D.3), decoding keeps input order under left padding, each task gets its metric set, and an
E2E run through `execute` (the code path of `make e2e-gpt2`) writes its predictions and scores."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from torch import nn

import lora.config  # noqa: F401  (registers the config schema and the `by` resolver)
from lora import generation, records
from lora.config import validate
from lora.data.nlg import NLGExample, build_lm_features
from lora.metrics import nlg as nlg_metrics
from lora.models import build_model, build_tokenizer
from lora.train import Run, decode_and_score, execute, run_name

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
FIXTURES = ROOT / "tests" / "data" / "fixtures_nlg"  # a few real rows of each release format
E2E_METRICS = {"bleu", "nist", "meteor", "rouge_l", "cider"}


def compose_cfg(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.fixture
def stub_java_scorers(monkeypatch: pytest.MonkeyPatch) -> None:
    """METEOR / ROUGE-L / CIDEr without Java (~15 s a call): 0.5 each. BLEU, NIST and TER stay real."""
    monkeypatch.setattr(nlg_metrics, "coco_scores", lambda hyps, refs, metrics=(): {
        m: 0.5 for m in metrics if m in ("meteor", "rouge_l", "cider")
    })  # fmt: skip


# ---------------------------------------------------------------------------------------- beam settings


@pytest.mark.parametrize(("task", "length_penalty"), [("e2e", 0.9), ("webnlg", 0.8), ("dart", 0.8)])
def test_the_task_configs_beam_settings_reach_generate(
    task: str, length_penalty: float, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stub_java_scorers: None
) -> None:
    cfg = compose_cfg(
        "model=tiny-gpt2", f"task={task}", f"data_dir={FIXTURES}", "task.decode_split=validation",
        "task.max_decode_samples=2", f"results_dir={tmp_path}", "train.progress=false",
    )  # fmt: skip
    spec = validate(cfg)
    model, tokenizer = build_model("tiny-gpt2", "causal_lm"), build_tokenizer("tiny-gpt2")
    calls: list[dict[str, Any]] = []

    def fake_generate(input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        calls.append({"input_ids": input_ids, "attention_mask": attention_mask, **kwargs})
        words = torch.tensor(tokenizer.encode(" a fine place"))
        return torch.cat([input_ids, words.expand(len(input_ids), -1)], dim=1)

    monkeypatch.setattr(model, "generate", fake_generate)
    record = records.new_record(spec.raw, experiment="x", model="tiny-gpt2", task=task, method="lora", seed=0)
    scores = decode_and_score(spec, Run(spec, record, tmp_path, "", None), model, tokenizer, "last")

    (call,) = calls  # both inputs in one batch
    kwargs = {k: v for k, v in call.items() if k not in ("input_ids", "attention_mask", "logits_processor")}
    assert kwargs == {
        "num_beams": 10, "length_penalty": length_penalty, "max_new_tokens": 64,
        "early_stopping": "never", "do_sample": False, "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": generation.stop_token_ids(tokenizer),
    }  # fmt: skip
    (banned,) = call["logits_processor"]  # no repeated 4-grams among the generated tokens (not the prompt)
    assert isinstance(banned, generation.GeneratedNoRepeatNGram) and banned.ngram_size == 4
    assert banned.prompt_length == call["input_ids"].shape[1]
    # Left padding: every prompt ends at the last column with its <eos> separator.
    assert (call["input_ids"][:, -1] == tokenizer.eos_token_id).all()
    assert (call["attention_mask"][:, -1] == 1).all()
    assert (call["attention_mask"].diff(dim=1) >= 0).all()  # zeros (padding) only before the tokens
    predictions = tmp_path / f"{run_name(record)}.predictions.last.txt"
    assert predictions.read_text() == "a fine place\na fine place\n"
    assert set(scores) >= {"bleu", "meteor"}


# ---------------------------------------------------------------------------------------------- decoding

REFERENCES = [
    "The Eagle serves French food .",
    "Alimentum is not for kids .",
    "Bibimbap is a pub .",
    "Cheap pub .",
]
EXAMPLES = [  # short E2E-style inputs of different lengths, one reference each
    NLGExample(source, (reference,))
    for source, reference in zip(
        [
            "name : The Eagle | food : French",
            "name : Alimentum | area : city centre | family friendly : no",
            "name : Bibimbap",
            "name : The Vaults | Type : pub | price : cheap | near : Café Adriatic",
        ],
        REFERENCES,
        strict=True,
    )
]


@pytest.fixture(scope="module")
def trained_gpt2() -> tuple[nn.Module, Any]:
    """tiny-gpt2 fitted to EXAMPLES (300 full-batch AdamW steps: it then reproduces each reference)."""
    model, tokenizer = build_model("tiny-gpt2", "causal_lm"), build_tokenizer("tiny-gpt2")
    rows = [build_lm_features(e.source, e.references[0], tokenizer, 128) for e in EXAMPLES]
    width = max(len(r["input_ids"]) for r in rows)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([r["input_ids"] + [pad] * (width - len(r["input_ids"])) for r in rows])
    mask = torch.tensor([r["attention_mask"] + [0] * (width - len(r["input_ids"])) for r in rows])
    labels = torch.tensor([r["labels"] + [-100] * (width - len(r["labels"])) for r in rows])
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(300):
        opt.zero_grad()
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        opt.step()
    return model.eval(), tokenizer


def test_decode_returns_one_string_per_example_in_order(trained_gpt2: tuple[nn.Module, Any]) -> None:
    model, tokenizer = trained_gpt2
    cfg = generation.DecodeConfig(num_beams=1, no_repeat_ngram_size=0, max_new_tokens=24, batch_size=4)
    batched = generation.decode(model, tokenizer, EXAMPLES, cfg, progress=False)
    one_by_one = [generation.decode(model, tokenizer, [e], cfg, progress=False)[0] for e in EXAMPLES]
    # Prompts of different lengths in one left-padded batch decode as they do alone (unpadded), in input order.
    assert batched == one_by_one == REFERENCES
    assert not model.training


def test_decode_in_several_batches_keeps_order(trained_gpt2: tuple[nn.Module, Any]) -> None:
    model, tokenizer = trained_gpt2
    cfg = generation.DecodeConfig(num_beams=3, no_repeat_ngram_size=0, max_new_tokens=24, batch_size=3)
    reverse = EXAMPLES[::-1]  # batches of 3 and 1
    assert generation.decode(model, tokenizer, reverse, cfg, progress=False) == REFERENCES[::-1]


def test_no_repeat_ngram_counts_only_generated_tokens(trained_gpt2: tuple[nn.Module, Any]) -> None:
    # "Bibimbap" (source "name : Bibimbap") is 8 tiny-BPE tokens: copying it repeats 4-grams of the prompt only.
    model, tokenizer = trained_gpt2
    cfg = generation.DecodeConfig(num_beams=1, no_repeat_ngram_size=4, max_new_tokens=24)
    assert generation.decode(model, tokenizer, EXAMPLES, cfg, progress=False) == REFERENCES


def test_beam_search_keeps_the_best_hypothesis(trained_gpt2: tuple[nn.Module, Any]) -> None:
    model, tokenizer = trained_gpt2
    cfg = generation.DecodeConfig(num_beams=2, no_repeat_ngram_size=0, max_new_tokens=24)
    assert generation.decode(model, tokenizer, EXAMPLES, cfg, progress=False) == REFERENCES


# ----------------------------------------------------------------------------------------------- scoring


def test_score_reports_each_tasks_metrics(stub_java_scorers: None) -> None:
    refs = REFERENCES
    assert set(generation.score("e2e", refs, EXAMPLES)) == E2E_METRICS  # Table 3
    dart = generation.score("dart", refs, EXAMPLES)  # Table 13
    assert set(dart) == {"bleu", "meteor", "ter"}
    assert dart["bleu"] == pytest.approx(1.0) and dart["ter"] == 0.0  # exact copies of the references


def test_webnlg_is_also_scored_on_seen_and_unseen_categories(stub_java_scorers: None) -> None:
    seen = [NLGExample(e.source, e.references, "Airport", True) for e in EXAMPLES[:2]]
    unseen = [NLGExample(e.source, e.references, "Artist", False) for e in EXAMPLES[2:]]
    hyps = [REFERENCES[0], "nothing like it", *REFERENCES[2:]]
    scores = generation.score("webnlg", hyps, seen + unseen)  # Table 14: S, U, A
    assert set(scores) == {f"{m}{s}" for m in ("bleu", "meteor", "ter") for s in ("", "_seen", "_unseen")}
    assert scores["bleu_unseen"] == pytest.approx(1.0) and scores["ter_unseen"] == 0.0
    assert scores["bleu_seen"] < scores["bleu"] < 1.0
    assert set(generation.score("webnlg", hyps[:2], seen)) == {"bleu", "meteor", "ter", "bleu_seen", "meteor_seen",
                                                               "ter_seen"}  # fmt: skip


def test_score_refuses_an_unknown_task() -> None:
    with pytest.raises(ValueError, match="'wikisql'"):
        generation.score("wikisql", ["x"], EXAMPLES[:1])


# ------------------------------------------------------------------------------------------- end to end


def e2e_run(tmp_path: Path, *extra: str) -> DictConfig:
    """`make e2e-gpt2`'s LoRA row (experiment gpt2_medium_e2e_lora) on tiny-gpt2 and 8 real E2E inputs."""
    return compose_cfg(
        "experiment=gpt2_medium_e2e_lora", "model=tiny-gpt2", f"data_dir={SHARED}",
        "task.max_train_samples=8", "task.max_eval_samples=4", "train.max_steps=4", "train.lr=1e-2",
        "train.progress=false", "task.max_decode_samples=3", "task.num_beams=2", "task.max_new_tokens=8",
        f"results_dir={tmp_path / 'results'}", f"output_dir={tmp_path / 'outputs'}", *extra,
    )  # fmt: skip


def check_e2e_run(record: records.RunRecord, tmp_path: Path) -> None:
    assert record.status == "complete", record.reason
    assert record.experiment == "gpt2_medium_e2e_lora" and record.task == "e2e"
    # One epoch: the final model is the best one (lowest plain validation loss); its scores are in `best` and
    # `last`, next to both validation losses (plain, as the released evaluate(), and label-smoothed).
    assert record.best["epoch"] == record.last["epoch"] == record.epochs[-1]["epoch"]
    assert set(record.best["metrics"]) == E2E_METRICS | {"eval_loss", "eval_loss_smoothed"}
    assert record.best == record.last
    assert record.epochs[-1]["step"] == 4
    for which in ("best", "last"):
        lines = (tmp_path / "results" / f"{run_name(record)}.predictions.{which}.txt").read_text().split("\n")
        assert len(lines) == 3 + 1 and lines[-1] == ""  # one line per decoded input, newline-terminated
    assert (tmp_path / "outputs" / run_name(record) / "adapter").is_dir()
    on_disk = tmp_path / "results" / records.record_filename(record)
    assert records.RunRecord.from_json(on_disk.read_text()).best == record.best


@pytest.mark.skipif(not (SHARED / "e2e").is_dir(), reason=f"real E2E data not found at {SHARED / 'e2e'}")
def test_e2e_run_decodes_writes_predictions_and_scores(tmp_path: Path, stub_java_scorers: None) -> None:
    check_e2e_run(execute(e2e_run(tmp_path)), tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "e2e").is_dir(), reason=f"real E2E data not found at {SHARED / 'e2e'}")
@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR / ROUGE-L / CIDEr need java")
def test_e2e_run_with_the_official_java_scorers(tmp_path: Path) -> None:
    record = execute(e2e_run(tmp_path))
    check_e2e_run(record, tmp_path)
    assert all(record.best["metrics"][m] >= 0.0 for m in E2E_METRICS)
