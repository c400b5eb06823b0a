"""The training pipeline (lora/train.py): `execute(cfg)` on tiny models and a few real GLUE rows, checked through
the run record it writes: schema fields, parameter counts, best epoch, resume, MNLI's two dev sets, regression,
`init_from`, the csv logger and evaluation without training."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import lora.train
from lora import methods, records
from lora.checkpoint import WEIGHTS, read_tensors
from lora.config import validate
from lora.models import build_model, head_parameter_names
from lora.params import count_parameters
from lora.train import execute, resolve_init, run_name

ROOT = Path(__file__).resolve().parent.parent
GLUE = ROOT.parent / "shared" / "data" / "glue"
needs_glue = pytest.mark.skipif(
    not GLUE.is_dir(), reason=f"real GLUE data not found at {GLUE} (../shared/data)"
)


def tiny_run(tmp_path: Path, *overrides: str, task: str = "rte") -> DictConfig:
    """tiny-roberta + LoRA on 16 rows of `task` (8 dev rows): one epoch of 2 steps unless overridden."""
    base = [
        "model=tiny-roberta",
        f"task={task}",
        "method=lora",
        f"data_dir={GLUE}",
        "task.max_train_samples=16",
        "task.max_eval_samples=8",
        "train.batch_size=8",
        "train.epochs=1",
        "train.progress=false",
        f"results_dir={tmp_path / 'results'}",
        f"output_dir={tmp_path / 'outputs'}",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[*base, *overrides])


def record_path(tmp_path: Path, record: records.RunRecord) -> Path:
    return tmp_path / "results" / records.record_filename(record)


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trainer.train fails the test if it is called."""

    def boom(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("Trainer.train was called")

    monkeypatch.setattr(transformers.Trainer, "train", boom)


@pytest.fixture
def count_training(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Trainer.train still trains; the returned list gets one entry per call."""
    calls: list[int] = []
    real = transformers.Trainer.train

    def train(self: transformers.Trainer, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "train", train)
    return calls


# ------------------------------------------------------------------------------------------------ the record


@needs_glue
def test_glue_record_holds_every_schema_field(tmp_path: Path) -> None:
    cfg = tiny_run(tmp_path, "train.epochs=3", "train.lr=5e-3", "train.logging_steps=1", "seed=3")
    record = execute(cfg)
    d = json.loads(record_path(tmp_path, record).read_text())

    assert list(d) == [  # the schema of lora/records.py, in its order
        "schema", "status", "reason", "config", "config_hash", "experiment", "model", "task", "method", "seed",
        "params", "memory", "time", "epochs", "best", "targets", "env", "started", "finished",
    ]  # fmt: skip
    assert (d["schema"], d["status"], d["reason"]) == (1, "complete", None)
    assert (d["experiment"], d["model"], d["task"], d["method"], d["seed"]) == (
        "custom", "tiny-roberta", "rte", "lora", 3,
    )  # fmt: skip
    # The resolved config (minus `force`, which does not change a run), and its hash.
    expected = {k: v for k, v in validate(cfg).raw.items() if k != "force"}
    assert d["config"] == json.loads(json.dumps(expected))
    assert d["config"]["train"]["lr"] == 5e-3 and d["config"]["method"]["r"] == 8
    assert d["config_hash"] == records.config_hash(d["config"])
    assert re.fullmatch(r"[0-9a-f]{40}", d["env"]["git"]) and isinstance(d["env"]["dirty"], bool)
    assert d["env"]["device"] == (
        "cuda:" + torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    )

    # Parameters as lora.params counts them on the same model: the head is trained but not counted (Table 2).
    model = build_model("tiny-roberta", "classification", num_labels=2)
    head = head_parameter_names(model)
    report = methods.apply(model, "lora", methods.method_config("lora", r=8, alpha=8), head=head)
    assert d["params"] == count_parameters(model).as_dict()
    # 2 layers x (W_q, W_v) x r 8 x (A: 32 in + B: 32 out) = 2,048; head: dense 32x32+32, out_proj 32x2+2 = 1,122.
    assert (d["params"]["trainable"], d["params"]["head"]) == (2048, 1122)
    assert d["targets"] == list(report.modules) and len(d["targets"]) == 4

    assert d["memory"]["peak_bytes"] > 0
    assert d["memory"]["kind"] == ("cuda_allocated" if torch.cuda.is_available() else "cpu_rss")
    assert d["time"]["train_s"] > 0 and d["time"]["eval_s"] > 0 and d["time"]["samples_per_s"] > 0
    # Every epoch evaluated (16 rows / batch 8 = 2 steps each), each with its last logged training loss.
    assert [(e["epoch"], e["step"]) for e in d["epochs"]] == [(1, 2), (2, 4), (3, 6)]
    for e in d["epochs"]:
        assert set(e["metrics"]) == {"accuracy", "eval_loss"} and e["train_loss"] > 0
    # The best epoch is the first epoch with the highest accuracy (the paper's best-epoch convention).
    assert d["best"] == records.best_epoch(d["epochs"], "accuracy")
    assert d["finished"] >= d["started"]
    assert (tmp_path / "outputs" / run_name(record) / "adapter" / WEIGHTS).is_file()


@needs_glue
def test_a_complete_run_is_not_run_again_and_its_record_is_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    first = execute(tiny_run(tmp_path))
    path = record_path(tmp_path, first)
    before = path.read_bytes()

    monkeypatch.setattr(transformers.Trainer, "train", lambda *a, **k: pytest.fail("trained again"))
    # Same run; logging knobs are not part of the config hash, so they resume too.
    for extra in ((), ("train.logging_steps=7", "logger=csv")):
        again = execute(tiny_run(tmp_path, *extra))
        assert again.config_hash == first.config_hash and again.status == "complete"
        assert again.source == path
        assert path.read_bytes() == before
    assert "skip:" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == [path.name]


@needs_glue
def test_force_runs_a_complete_run_again(tmp_path: Path, count_training: list[int]) -> None:
    first = execute(tiny_run(tmp_path))
    again = execute(tiny_run(tmp_path, "force=true"))
    assert len(count_training) == 2
    assert again.config_hash == first.config_hash and again.status == "complete"
    assert again.source is None  # a new record, not the one on disk
    assert records.RunRecord.from_json(record_path(tmp_path, again).read_text()).started == again.started


def fake_mnli(root: Path) -> Path:
    """A GLUE-layout MNLI folder: MNLI/{train,dev_matched,dev_mismatched}.tsv with GLUE's header names (the
    columns lora.data.glue reads: sentence1, sentence2, gold_label); 12 / 6 / 6 rows over the three labels."""
    labels = ("entailment", "neutral", "contradiction")
    folder = root / "MNLI"
    folder.mkdir(parents=True)
    for name, n in (("train", 12), ("dev_matched", 6), ("dev_mismatched", 6)):
        rows = ["index\tgenre\tsentence1\tsentence2\tgold_label"]
        rows += [
            f"{i}\tfiction\tthe cat sat on mat {i} .\ta cat is {name} {i} .\t{labels[i % 3]}"
            for i in range(n)
        ]
        (folder / f"{name}.tsv").write_text("\n".join(rows) + "\n")
    return root


def test_mnli_records_matched_and_mismatched_accuracy(tmp_path: Path) -> None:
    data = fake_mnli(tmp_path / "glue")
    record = execute(tiny_run(tmp_path, f"data_dir={data}", "train.epochs=2", task="mnli"))
    assert record.status == "complete"
    for e in record.epochs:  # one entry per epoch, holding both dev sets
        assert set(e["metrics"]) == {"accuracy", "eval_loss", "accuracy_mm"}
    assert [e["epoch"] for e in record.epochs] == [1, 2]
    assert {"accuracy", "accuracy_mm"} <= set(record.best["metrics"])
    assert record.params["head"] == 32 * 32 + 32 + 32 * 3 + 3  # a 3-way classifier


@needs_glue
def test_stsb_regression_reports_pearson_and_spearman(tmp_path: Path) -> None:
    record = execute(tiny_run(tmp_path, task="stsb"))
    assert record.status == "complete"
    assert {"pearson", "spearmanr", "eval_loss"} == set(record.best["metrics"])
    assert record.params["head"] == 32 * 32 + 32 + 32 * 1 + 1  # one regression output


# ------------------------------------------------------------------------------------------------- init_from


def fake_record(results: Path, experiment: str, task: str, model: str, seed: int, accuracy: float,
                status: str = "complete") -> records.RunRecord:  # fmt: skip
    """A finished record as `execute` writes it, with a chosen best accuracy."""
    rec = records.new_record(
        {"seed": seed, "model": model, "output_dir": "/adapters"}, experiment=experiment, model=model, task=task,
        method="lora", seed=seed,
    )  # fmt: skip
    rec.params = {"trainable": 1, "total": 2, "head": 0, "adapter_bytes": 3}
    rec.memory = {"peak_bytes": 1, "kind": "cpu_rss"}
    rec.time = {"train_s": 1.0, "eval_s": 1.0, "samples_per_s": 1.0}
    rec.add_epoch(1, 10, {"accuracy": accuracy}, 0.5)
    rec.best = {"epoch": 1, "metrics": {"accuracy": accuracy}}
    rec.finish(status, None if status == "complete" else "boom")
    records.write_record(rec, results)
    return rec


def test_init_from_best_picks_the_best_complete_record_of_that_experiment_task_and_model(
    tmp_path: Path,
) -> None:
    results = tmp_path / "results"
    fake_record(results, "src", "mnli", "tiny-roberta", 0, accuracy=0.6)
    best = fake_record(results, "src", "mnli", "tiny-roberta", 1, accuracy=0.8)
    fake_record(results, "src", "mnli", "tiny-roberta", 2, accuracy=0.9, status="failed")
    fake_record(results, "src", "mnli", "tiny-bert", 3, accuracy=0.95)  # another model
    fake_record(results, "src", "rte", "tiny-roberta", 4, accuracy=0.99)  # another task
    fake_record(results, "other", "mnli", "tiny-roberta", 5, accuracy=0.99)  # another experiment
    spec = validate(tiny_run(tmp_path, "init_from=best:src/mnli"))
    assert resolve_init(spec) == Path("/adapters") / run_name(best) / "adapter"


@pytest.mark.parametrize(
    ("init_from", "names"),
    [
        ("best:src/mnli", "best:src/mnli"),
        ("best:nothing/mnli", "init_from=null"),
        ("{tmp}/no/such/dir", "/no/such/dir"),
    ],
)
def test_init_from_without_an_adapter_is_a_clear_error_before_training(
    init_from: str, names: str, tmp_path: Path, no_training: None
) -> None:
    fake_record(
        tmp_path / "results", "src", "mnli", "tiny-bert", 0, accuracy=0.8
    )  # wrong model: not eligible
    cfg = tiny_run(tmp_path, f"init_from={init_from.format(tmp=tmp_path)}")
    with pytest.raises(FileNotFoundError, match=re.escape(names)) as err:
        execute(cfg)
    assert "\n" not in str(err.value)
    assert len(list((tmp_path / "results").glob("*.json"))) == 1  # no record for the run that never started


@needs_glue
def test_init_from_best_loads_that_adapter_without_its_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The paper starts RTE from the best MNLI adapter (Appendix D.1); MNLI's head is 3-way, RTE's 2-way. The
    # source runs use an experiment file (targets_q: LoRA on W_q) for their name; the target run is "custom".
    mnli = fake_mnli(tmp_path / "glue")
    src = [
        execute(
            tiny_run(
                tmp_path,
                "experiment=targets_q",
                f"data_dir={mnli}",
                "train.lr=1e-2",
                f"seed={s}",
                task="mnli",
            )
        )
        for s in (0, 1)
    ]
    best = max(
        src, key=lambda r: (r.best["metrics"]["accuracy"], -r.seed)
    )  # the first of equals, as max() does
    adapter = tmp_path / "outputs" / run_name(best) / "adapter"
    saved = read_tensors(adapter / WEIGHTS)

    loaded: dict[str, Any] = {}
    real_load = lora.train.load_adapter

    def spy(model: torch.nn.Module, directory: Path, head: bool = True) -> Any:
        out = real_load(model, directory, head=head)
        loaded.update(
            directory=Path(directory), head=head, state={k: v.clone() for k, v in model.state_dict().items()}
        )
        return out

    monkeypatch.setattr(lora.train, "load_adapter", spy)
    record = execute(tiny_run(tmp_path, "init_from=best:targets_q/mnli"))

    assert record.status == "complete"
    assert (loaded["directory"], loaded["head"]) == (adapter, False)
    lora_names = [n for n in saved if "lora_" in n]
    head_names = [n for n in saved if n.startswith("classifier.")]
    assert lora_names and head_names
    for n in lora_names:  # the MNLI adapter's weights, exactly
        torch.testing.assert_close(loaded["state"][n], saved[n])
    for n in head_names:  # the RTE head is its own (its 2-way out_proj could not take the 3-way one anyway)
        mine = loaded["state"][n]
        assert mine.shape != saved[n].shape or not torch.equal(mine, saved[n])


# ------------------------------------------------------------------------------------ loggers, eval-only runs


@needs_glue
def test_csv_logger_writes_metrics_csv(tmp_path: Path) -> None:
    record = execute(tiny_run(tmp_path, "logger=csv", "train.logging_steps=1"))
    lines = (tmp_path / "outputs" / run_name(record) / "metrics.csv").read_text().splitlines()
    assert lines[0] == "step,key,value"
    keys = {line.split(",")[1] for line in lines[1:]}
    assert {"loss", "learning_rate", "eval_validation_accuracy", "train_runtime"} <= keys
    assert all(len(line.split(",")) == 3 for line in lines)


@needs_glue
def test_method_none_with_zero_steps_evaluates_without_training(tmp_path: Path, no_training: None) -> None:
    record = execute(tiny_run(tmp_path, "method=none", "train.max_steps=0"))
    assert record.status == "complete"
    assert [(e["epoch"], e["step"]) for e in record.epochs] == [(0, 0)]
    assert record.best["epoch"] == 0 and "accuracy" in record.best["metrics"]
    assert record.params["trainable"] == 0 and record.targets == []
    assert record.time["samples_per_s"] == 0.0


# ------------------------------------------------------------------------------------------ known limitations


def test_causal_lm_label_smoothing_is_computed_on_the_labels_the_model_sees() -> None:
    # prefix_embed extends the sequence (and the labels) inside the model, so the smoothed loss is the model's own
    # (lora.generation.smoothed_lm_loss); with epsilon = 0 it equals transformers' unsmoothed causal-LM loss.
    from lora.generation import smoothed_lm_loss

    model = build_model("tiny-gpt2", "causal_lm").eval()  # no dropout: two forwards must agree
    methods.apply(model, "prefix_embed", methods.method_config("prefix_embed", prefix_length=3))
    ids = torch.randint(5, 500, (2, 7), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :3] = -100
    plain = model(input_ids=ids, labels=labels).loss
    model.loss_function = smoothed_lm_loss(0.0)
    assert torch.allclose(model(input_ids=ids, labels=labels).loss, plain, atol=1e-6)
    model.loss_function = smoothed_lm_loss(0.1)
    assert model(input_ids=ids, labels=labels).loss > plain  # smoothing adds the uniform term
