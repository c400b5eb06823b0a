"""The protocol of the paper's released code (microsoft/LoRA examples/NLG and examples/NLU), pinned per point.

Each test reads the composed config of the paper's experiment files and, where it matters, the model or the
trainer built from it, so that a drift back to transformers' defaults fails here. The released facts are quoted
with their file in lora/ and conf/ comments; the values below were read from those files (README.md's training
command, src/optimizer.py, src/model.py, src/gpt2_beam.py, src/gpt2_decode.py, roberta_*.sh, deberta_*.sh).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from torch import nn

import lora.config  # noqa: F401  (registers the config schema and the resolvers)
import lora.train
from lora import generation, records, tables
from lora.config import validate
from lora.models import build_model, dropout_overrides, effective_dropouts, tiny_tokenizer
from lora.resume import ResumableTrainer
from lora.train import batch_sizes, decode_checkpoints, training_args

CONF = Path(__file__).resolve().parents[1] / "conf"
NLG_EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("gpt2_*.yaml"))


def compose_cfg(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_every_nlg_experiment_is_covered() -> None:
    # 3 tasks x (7 GPT-2 medium rows + 1 PreEmbed row, 5 GPT-2 large rows)
    assert len(NLG_EXPERIMENTS) == 39


# ----------------------------------------------------------------------------------------------------- NLG


@pytest.mark.parametrize("experiment", NLG_EXPERIMENTS)
def test_nlg_experiment_runs_the_released_trainer(experiment: str, tmp_path: Path) -> None:
    c = validate(compose_cfg(f"experiment={experiment}")).cfg
    # 1. No backbone dropout (src/model.py has none), for every method.
    assert c.model.dropout == 0.0
    # 2. The released optimizer: no clipping, eps 1e-6, betas (0.9, 0.999), decay on every parameter.
    assert (c.train.max_grad_norm, c.train.adam_epsilon) == (0.0, 1e-6)
    assert (c.train.adam_beta1, c.train.adam_beta2, c.train.decay_bias_and_norm) == (0.9, 0.999, True)
    args = training_args(c, tmp_path, torch.device("cpu"))
    assert (args.max_grad_norm, args.adam_epsilon, args.adam_beta1, args.adam_beta2) == (
        0.0,
        1e-6,
        0.9,
        0.999,
    )
    # 3, 5, 6. Decoding stops at a blank line too; both checkpoints are decoded; E2E scored on the paper's files.
    assert c.task.stop_at_blank_line and c.task.select == "both" and c.task.references == "paper"
    assert c.task.num_beams == 10 and c.task.no_repeat_ngram_size == 4


@pytest.mark.parametrize("model", ["gpt2-medium", "gpt2-large"])
def test_nlg_backbone_is_built_without_dropout(model: str) -> None:
    overrides = dropout_overrides(model, 0.0)
    assert overrides == {"attn_pdrop": 0.0, "resid_pdrop": 0.0, "embd_pdrop": 0.0}
    built = build_model(model, "causal_lm", pretrained=False, device="meta", overrides=overrides)
    assert effective_dropouts(built) == overrides
    assert all(m.p == 0.0 for m in built.modules() if isinstance(m, nn.Dropout))


def test_an_nlg_run_records_its_effective_dropout_and_optimizer(tmp_path: Path) -> None:
    cfg = compose_cfg("experiment=gpt2_medium_e2e_lora", "model=tiny-gpt2")
    c = validate(cfg).cfg
    model = build_model("tiny-gpt2", "causal_lm", overrides=dropout_overrides("tiny-gpt2", c.model.dropout))
    eff = lora.train.effective_settings(c, model)
    assert eff["dropout"] == {"attn_pdrop": 0.0, "resid_pdrop": 0.0, "embd_pdrop": 0.0}
    assert eff["optimizer"] == {"name": "adamw_torch", "betas": [0.9, 0.999], "eps": 1e-6, "weight_decay": 0.01,
                                "decay_bias_and_norm": True, "max_grad_norm": 0.0}  # fmt: skip
    assert eff["decode"]["stop_at_blank_line"] and eff["decode"]["length_penalty"] == 0.8


def test_decay_bias_and_norm_decays_every_parameter(tmp_path: Path) -> None:
    c = validate(compose_cfg("model=tiny-gpt2", "task=e2e", "method=full")).cfg
    model = build_model("tiny-gpt2", "causal_lm")
    names = [n for n, _ in model.named_parameters()]

    def trainer(decay_all: bool) -> ResumableTrainer:
        return ResumableTrainer(
            model=model, args=training_args(c, tmp_path, torch.device("cpu")), eval_dataset=[{}], resume_root=tmp_path,
            run_state=dict, config_hash="0" * 64, decay_all=decay_all,
        )  # fmt: skip

    default = trainer(False).get_decay_parameter_names(model)
    assert "transformer.h.0.ln_1.weight" not in default and "transformer.h.0.attn.c_attn.bias" not in default
    assert trainer(True).get_decay_parameter_names(model) == names


def test_e2e_length_penalty_follows_the_released_readme_unless_protocol_paper() -> None:
    code = validate(compose_cfg("experiment=gpt2_medium_e2e_lora")).cfg
    paper = validate(compose_cfg("experiment=gpt2_medium_e2e_lora", "protocol=paper")).cfg
    assert (code.task.length_penalty, paper.task.length_penalty) == (0.8, 0.9)
    assert validate(compose_cfg("experiment=gpt2_medium_webnlg_lora")).cfg.task.length_penalty == 0.8


def _gpt2_like_tokenizer() -> Any:
    """GPT-2's two facts the decoder relies on: <|endoftext|> is 50256 and "\\n\\n" is the single token 628."""
    vocab = {50256: "<|endoftext|>", 628: "\n\n", 1: "The", 2: " pub", 3: " is", 4: " cheap", 5: " ."}

    def encode(text: str, add_special_tokens: bool = False) -> list[int]:
        return [628] if text == "\n\n" else [1]

    def decode(ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(vocab[i] for i in ids if not (skip_special_tokens and i == 50256))

    return SimpleNamespace(eos_token_id=50256, encode=encode, decode=decode)


def test_decoding_stops_at_either_end_id_and_cuts_at_the_first_blank_line() -> None:
    tok = _gpt2_like_tokenizer()
    stops = generation.stop_token_ids(tok)
    assert stops == [50256, 628]  # gpt2_beam.py --eos_token_id 628 on top of its default [50256]
    assert generation.stop_token_ids(tok, stop_at_blank_line=False) == [50256]
    assert generation.cut_output([1, 2, 3, 4, 5, 628, 1, 2], tok, stops, True) == "The pub is cheap ."
    assert generation.cut_output([1, 2, 50256, 50256], tok, stops, True) == "The pub"
    # A blank line inside one token's text is cut too (gpt2_decode.py splits the decoded text at "\n\n").
    vocab_text = _gpt2_like_tokenizer()
    vocab_text.decode = lambda ids, skip_special_tokens=True: "The pub.\n\nMore"
    assert generation.cut_output([1], vocab_text, stops, True) == "The pub."
    assert generation.cut_output([1], vocab_text, stops, False) == "The pub.\n\nMore"


def test_a_tokenizer_without_a_blank_line_token_stops_at_eos_only() -> None:
    tok = tiny_tokenizer(causal=True)
    blank = tok.encode("\n\n", add_special_tokens=False)
    assert generation.stop_token_ids(tok) == [tok.eos_token_id] + (blank if len(blank) == 1 else [])


def _fake_run(epochs: list[tuple[int, float]], select: str, tmp_path: Path) -> Any:
    cfg = compose_cfg("experiment=gpt2_medium_e2e_lora", "model=tiny-gpt2", f"task.select={select}",
                      f"results_dir={tmp_path}", f"output_dir={tmp_path}")  # fmt: skip
    spec = validate(cfg)
    record = records.new_record(
        spec.raw, experiment="x", model="tiny-gpt2", task="e2e", method="lora", seed=0
    )
    run = lora.train.Run(spec, record, tmp_path / "run", "eval_loss", None)
    run.higher_is_better = False
    for epoch, loss in epochs:
        run.epoch_done(epoch, epoch * 10, {"eval_loss": loss}, 1.0, None)
    return spec, run


@pytest.mark.parametrize("select", ["both", "best", "last"])
def test_best_and_last_checkpoints_are_decoded_as_selected(
    select: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Epoch 2 has the lowest validation loss, epoch 3 is the last: `best` decodes the adapter saved at epoch 2.
    spec, run = _fake_run([(1, 2.0), (2, 1.5), (3, 1.7)], select, tmp_path)
    assert run.record.best["epoch"] == 2
    calls: list[str] = []
    state = {"model": "last"}

    def fake_decode(spec: Any, run: Any, model: Any, tokenizer: Any, which: str) -> dict[str, float]:
        calls.append(f"{which}:{state['model']}")
        return {"bleu": 0.5 if state["model"] == "best" else 0.4}

    monkeypatch.setattr(lora.train, "decode_and_score", fake_decode)
    monkeypatch.setattr(lora.train, "load_adapter", lambda *a, **k: state.update(model="best"))
    decode_checkpoints(spec, run, SimpleNamespace(model=None, tokenizer=None))
    expected = {"both": ["last:last", "best:best"], "best": ["best:best"], "last": ["last:last"]}[select]
    assert calls == expected
    if select != "last":
        assert run.record.best == {"epoch": 2, "metrics": {"eval_loss": 1.5, "bleu": 0.5}}
    if select != "best":
        assert run.record.last == {"epoch": 3, "metrics": {"eval_loss": 1.7, "bleu": 0.4}}


def test_select_best_needs_the_saved_adapter(tmp_path: Path) -> None:
    cfg = compose_cfg("experiment=gpt2_medium_e2e_lora", "model=tiny-gpt2", "save_adapter=false",
                      "data_dir=/nonexistent", f"results_dir={tmp_path}")  # fmt: skip
    with pytest.raises(ValueError, match="save_adapter=false"):
        lora.train.execute(cfg)


def test_tables_state_their_checkpoint_and_seed_rule() -> None:
    rules = {s.name: (s.select, s.aggregate) for s in tables.TABLES}
    assert rules["table2"] == ("best", "median")  # Appendix D.1: best epoch, median over 5 seeds
    assert rules["table3"] == rules["table13"] == rules["table14"] == ("best", "mean")  # Table 11: mean of 3
    assert rules["table18"] == ("last", "mean")  # "after 26,000 steps"


# ---------------------------------------------------------------------------------------------------- GLUE


def _train(*overrides: str) -> Any:
    return validate(compose_cfg(*overrides)).cfg


@pytest.mark.parametrize(
    ("task", "code", "paper"),
    [("mnli", 128, 16), ("mrpc", 128, 16), ("cola", 64, 32), ("rte", 256, 32)],  # CoLA's script: 2 GPUs
)
def test_roberta_base_batch_is_global_over_the_scripts_processes(task: str, code: int, paper: int) -> None:
    assert _train("experiment=roberta_base_lora", f"task={task}").train.batch_size == code
    assert _train("experiment=roberta_base_lora", f"task={task}", "protocol=paper").train.batch_size == paper


def test_roberta_base_lora_follows_the_scripts_unless_protocol_paper() -> None:
    code = validate(compose_cfg("experiment=roberta_base_lora", "task=sst2"))
    paper = validate(compose_cfg("experiment=roberta_base_lora", "task=sst2", "protocol=paper"))
    assert (code.method_cfg.alpha, code.cfg.train.weight_decay) == (16, 0.1)
    assert (paper.method_cfg.alpha, paper.cfg.train.weight_decay) == (8, 0.0)


def test_roberta_large_and_deberta_follow_their_scripts() -> None:
    large = _train("experiment=roberta_large_lora", "task=stsb")
    assert (large.train.weight_decay, large.train.batch_size, large.train.lr, large.train.epochs) == (
        0.1, 32, 3e-4, 10.0,
    )  # fmt: skip
    assert large.train.max_length == 128
    deberta = validate(compose_cfg("experiment=deberta_xxl_lora", "task=rte"))
    assert (deberta.method_cfg.r, deberta.method_cfg.alpha) == (16, 32)
    assert (deberta.cfg.train.lr, deberta.cfg.train.warmup_steps, deberta.cfg.train.batch_size) == (
        2.6e-4,
        50,
        32,
    )


@pytest.mark.parametrize("experiment", ["roberta_large_ft", "deberta_xxl_ft", "roberta_large_lora"])
def test_mrpc_rte_stsb_start_from_mnli(experiment: str) -> None:
    for task in ("mrpc", "rte", "stsb"):
        assert _train(f"experiment={experiment}", f"task={task}").init_from == f"best:{experiment}/mnli"
    for task in ("mnli", "sst2", "cola"):
        assert _train(f"experiment={experiment}", f"task={task}").init_from is None


def test_global_batch_is_split_over_processes_and_accumulation(monkeypatch: pytest.MonkeyPatch) -> None:
    c = _train("train.batch_size=32", "train.grad_accum=2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert batch_sizes(c) == {"global": 32, "per_device": 4, "world_size": 4, "grad_accum": 2}
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match="global batch and must divide evenly over 3 process"):
        batch_sizes(c)


def test_nlg_table_footnotes_state_selection_aggregation_and_scorer(tmp_path: Path) -> None:
    fixtures = Path(__file__).resolve().parent / "fixtures" / "records"
    tables.main(fixtures, CONF.parent / "results" / "paper", tmp_path, figures=False)
    notes = {
        name: (tmp_path / "tables" / f"{name}.md").read_text()
        for name in ("table3", "table13", "table14", "table18", "table2")
    }
    for name in ("table3", "table13", "table14"):
        assert "select=best (best epoch of each run), aggregate=mean" in notes[name]
    assert "select=last (last epoch of each run), aggregate=mean" in notes["table18"]
    assert "select=best (best epoch of each run), aggregate=median" in notes["table2"]
    assert (
        "Scorer: the E2E challenge's measure_scores.py" in notes["table3"]
        and "plain cross-entropy" in notes["table18"]
    )
    for name in ("table13", "table14"):
        assert "GenerationEval" in notes[name] and "METEOR -1" in notes[name]
    assert (
        "Our row, roberta_base_adptd_0.3m: the configuration behind the AdptD* 0.3M row is not stated"
        in notes["table2"]
    )
