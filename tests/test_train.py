"""The training pipeline (lora/train.py): `execute(cfg)` on tiny models and a few real GLUE rows, checked through
the run record it writes: schema fields, parameter counts, best epoch, resume, MNLI's two dev sets, regression,
`init_from`, the csv logger and evaluation without training."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import lora.train
from lora import methods, records
from lora.chain import canonical_method, resolve_init
from lora.checkpoint import WEIGHTS, read_tensors
from lora.config import validate
from lora.models import build_model, head_parameter_names
from lora.params import count_parameters
from lora.train import execute, run_name

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
        "params", "memory", "time", "epochs", "best", "last", "effective", "targets", "env", "started",
        "finished",
    ]  # fmt: skip
    assert (d["schema"], d["status"], d["reason"]) == (1, "complete", None)
    assert d["last"] == {"epoch": 3, "metrics": d["epochs"][-1]["metrics"]}
    # What the run used: the global batch over one process, the backbone's dropouts as built, the optimizer.
    eff = d["effective"]
    assert eff["batch"] == {"global": 8, "per_device": 8, "world_size": 1, "grad_accum": 1}
    assert eff["dropout"] == {"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}
    assert eff["optimizer"]["eps"] == 1e-8 and eff["optimizer"]["max_grad_norm"] == 1.0
    assert (d["experiment"], d["model"], d["task"], d["method"], d["seed"]) == (
        "custom", "tiny-roberta", "rte", "lora", 3,
    )  # fmt: skip
    # The resolved config (minus `force`, which does not change a run) with the fingerprint of the data read
    # (size and sha256 of each file, by its path in the task folder), and its hash.
    expected = {k: v for k, v in validate(cfg).raw.items() if k != "force"}
    data = d["config"].pop("data")
    assert d["config"] == json.loads(json.dumps(expected))
    assert set(data) == {"train.tsv", "dev.tsv"} and all(
        re.fullmatch(r"\d+:sha256:[0-9a-f]{64}", v) for v in data.values()
    )
    d["config"]["data"] = data
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
                status: str = "complete", targets: tuple[str, ...] = ("q", "v")) -> records.RunRecord:  # fmt: skip
    """A finished record as `execute` writes it, with a chosen best accuracy, and its adapter's weights file."""
    method = {"name": "lora", "r": 8, "alpha": 8.0, "dropout": 0.0, "targets": list(targets), "layers": None,
              "init": "kaiming"}  # fmt: skip
    outputs = results.parent / "outputs"
    rec = records.new_record(
        {"seed": seed, "model": model_config(model), "method": method, "output_dir": str(outputs),
         "train": {"lr": accuracy}},  # (distinct configs: one record file each)
        experiment=experiment, model=model, task=task, method="lora", seed=seed,
    )  # fmt: skip
    rec.params = {"trainable": 1, "total": 2, "head": 0, "adapter_bytes": 3}
    rec.memory = {"peak_bytes": 1, "kind": "cpu_rss"}
    rec.time = {"train_s": 1.0, "eval_s": 1.0, "samples_per_s": 1.0}
    rec.add_epoch(1, 10, {"accuracy": accuracy}, 0.5)
    rec.best = {"epoch": 1, "metrics": {"accuracy": accuracy}}
    rec.finish(status, None if status == "complete" else "boom")
    records.write_record(rec, results)
    adapter = outputs / run_name(rec) / "adapter"
    adapter.mkdir(parents=True)
    (adapter / WEIGHTS).write_bytes(f"weights of seed {seed}".encode())
    return rec


def model_config(name: str) -> dict[str, Any]:
    """The model config a run of `name` records (as tiny_run composes it)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={name}", "task=rte", "method=lora"])
    return validate(cfg).raw["model"]


def test_init_from_best_picks_the_best_complete_record_of_the_same_model_method_config_and_seed(
    tmp_path: Path,
) -> None:
    results = tmp_path / "results"
    fake_record(results, "src", "mnli", "tiny-roberta", 0, accuracy=0.6)  # the match
    fake_record(results, "src", "mnli", "tiny-roberta", 1, accuracy=0.8)  # another seed
    fake_record(results, "src", "mnli", "tiny-roberta", 0, accuracy=0.9, status="failed")
    fake_record(results, "src", "mnli", "tiny-bert", 0, accuracy=0.95)  # another model
    fake_record(results, "src", "rte", "tiny-roberta", 0, accuracy=0.99)  # another task
    fake_record(results, "other", "mnli", "tiny-roberta", 0, accuracy=0.99)  # another experiment
    fake_record(
        results, "src", "mnli", "tiny-roberta", 0, accuracy=0.99, targets=("q",)
    )  # another method config
    matches = [r for r in records.load_records(results) if r.seed == 0 and r.experiment == "src" and
               r.task == "mnli" and r.model == "tiny-roberta" and r.status == "complete"
               and r.config["method"]["targets"] == ["q", "v"]]  # fmt: skip
    (match,) = matches
    for seed, order in ((0, ()), (0, ("method.r=8", "method.alpha=8"))):  # override order does not matter
        spec = validate(tiny_run(tmp_path, *order, "init_from=best:src/mnli", f"seed={seed}"))
        init = resolve_init(
            spec.cfg.init_from, results_dir=spec.cfg.results_dir, model=spec.raw["model"],
            method=canonical_method("lora", asdict(spec.method_cfg)), seed=seed,
        )  # fmt: skip
        assert init.path == tmp_path / "outputs" / run_name(match) / "adapter"
        assert init.record_hash == match.config_hash
        assert init.weights.startswith(f"{len(b'weights of seed 0')}:sha256:")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("seed=3",), "differ from this run in seed (their seeds: [0])"),
        (("method.targets=[q]",), "differ from this run in method"),
        (("method.r=4",), "differ from this run in method"),
    ],
)
def test_init_from_best_refuses_another_seed_or_method_config(
    extra: tuple[str, ...], message: str, tmp_path: Path, no_training: None
) -> None:
    fake_record(tmp_path / "results", "src", "mnli", "tiny-roberta", 0, accuracy=0.8)
    with pytest.raises(FileNotFoundError, match=re.escape(message)) as err:
        execute(tiny_run(tmp_path, "init_from=best:src/mnli", *extra))
    assert "\n" not in str(err.value)


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
    best = src[0]  # the run of the dependent run's own seed (0), whichever seed scored higher
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
    dependent = tiny_run(tmp_path, "method.targets=[q]", "method.r=8", "init_from=best:targets_q/mnli")
    record = execute(dependent)

    assert record.status == "complete"
    assert (loaded["directory"], loaded["head"]) == (adapter, False)
    # The record says where it started; the start's identity is part of its config hash.
    assert record.effective["init"]["path"] == str(adapter)
    assert record.effective["init"]["record"] == best.config_hash
    assert record.config["init"] == {
        "record": best.config_hash,
        "weights": record.effective["init"]["weights"],
    }
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
    # (lora.generation.LMLoss); with epsilon = 0 it equals transformers' unsmoothed causal-LM loss.
    from lora.generation import LMLoss

    model = build_model("tiny-gpt2", "causal_lm").eval()  # no dropout: two forwards must agree
    methods.apply(model, "prefix_embed", methods.method_config("prefix_embed", prefix_length=3))
    ids = torch.randint(5, 500, (2, 7), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :3] = -100
    plain = model(input_ids=ids, labels=labels).loss
    model.train()  # the loss follows model.training; dropout 0 keeps the forwards equal
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    model.loss_function = LMLoss(model, 0.0)
    assert torch.allclose(model(input_ids=ids, labels=labels).loss, plain, atol=1e-6)
    model.loss_function = loss = LMLoss(model, 0.1)
    smoothed = model(input_ids=ids, labels=labels).loss
    assert smoothed > plain  # smoothing adds the uniform term
    # Evaluation: the plain cross-entropy (as the released evaluate()), the smoothed one kept on the side.
    model.eval()
    assert loss.smoothed_eval_loss() is None
    assert torch.allclose(model(input_ids=ids, labels=labels).loss, plain, atol=1e-6)
    assert loss.smoothed_eval_loss() == pytest.approx(float(smoothed.detach()), rel=1e-5)


# ------------------------------------------------------------------- a complete record is a record you can trust


def copy_rte(dest: Path, rows: int | None = None) -> Path:
    """A GLUE folder holding RTE: the real files, or the first `rows` training rows of them."""
    (dest / "RTE").mkdir(parents=True)
    (dest / "RTE" / "dev.tsv").write_bytes((GLUE / "RTE" / "dev.tsv").read_bytes())
    lines = (GLUE / "RTE" / "train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    (dest / "RTE" / "train.tsv").write_text(
        "".join(lines if rows is None else lines[: rows + 1]), encoding="utf-8"
    )
    return dest


@needs_glue
def test_other_data_is_another_run_and_moved_data_is_the_same_run(
    tmp_path: Path, count_training: list[int]
) -> None:
    small, real, moved = (
        copy_rte(tmp_path / "small", 64),
        copy_rte(tmp_path / "real"),
        copy_rte(tmp_path / "moved"),
    )
    first = execute(tiny_run(tmp_path, f"data_dir={small}"))
    second = execute(tiny_run(tmp_path, f"data_dir={real}"))  # 64 rows, then the real file: not "complete"
    assert len(count_training) == 2 and first.config_hash != second.config_hash
    assert first.config["data"]["train.tsv"] != second.config["data"]["train.tsv"]
    assert first.config["data"]["dev.tsv"] == second.config["data"]["dev.tsv"]
    third = execute(tiny_run(tmp_path, f"data_dir={moved}"))  # the same bytes elsewhere: the same run
    assert len(count_training) == 2 and third.config_hash == second.config_hash


@needs_glue
def test_a_run_held_by_another_process_is_skipped(
    tmp_path: Path, no_training: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from lora.resume import run_lock

    cfg = tiny_run(tmp_path)
    spec = validate(cfg)
    probe = records.new_record(
        {**{k: v for k, v in spec.raw.items() if k != "force"}, "data": lora.train.data_fingerprint(spec.cfg)},
        experiment="custom", model="tiny-roberta", task="rte", method="lora", seed=0,
    )  # fmt: skip
    with run_lock(tmp_path / "outputs", run_name(probe)) as held:
        assert held is not None
        record = execute(cfg)
    assert record.status == "running" and record.config_hash == probe.config_hash
    assert "is being trained by another process" in capsys.readouterr().out
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").glob("*.json"))


@needs_glue
def test_two_identical_runs_started_together_train_once(tmp_path: Path) -> None:
    # Two processes on one results folder, started at the same moment: one trains, the other skips (lock) or finds
    # the complete record; never two attempts on one checkpoint, never a "resumed"/"restarted" record.
    import subprocess
    import sys

    args = [sys.executable, "experiments/train.py", "model=tiny-roberta", "task=rte", "method=lora",
            f"data_dir={GLUE}", "task.max_train_samples=16", "task.max_eval_samples=8", "train.batch_size=8",
            "train.epochs=3", "train.progress=false", f"results_dir={tmp_path / 'results'}",
            f"output_dir={tmp_path / 'outputs'}", f"hydra.run.dir={tmp_path / 'hydra'}"]  # fmt: skip
    env = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    env |= {k: v for k, v in __import__("os").environ.items() if k in ("HF_HOME", "LORA_CACHE", "HOME")}
    procs = [subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    (path,) = (tmp_path / "results").glob("*.json")
    record = records.RunRecord.from_json(path.read_text())
    assert record.status == "complete" and record.reason is None
    assert [e["epoch"] for e in record.epochs] == [1, 2, 3]
    assert sum("skip:" in o[0] for o in outs) == 1


@needs_glue
def test_a_run_whose_adapter_is_lost_is_not_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    real = transformers.Trainer.train

    def train_then_lose_the_outputs(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = real(self, *args, **kwargs)
        shutil.rmtree(tmp_path / "outputs")  # the output folder deleted during the run
        return out

    monkeypatch.setattr(transformers.Trainer, "train", train_then_lose_the_outputs)
    with pytest.raises(FileNotFoundError, match="is gone"):
        execute(tiny_run(tmp_path))
    (path,) = (tmp_path / "results").glob("*.json")
    record = records.RunRecord.from_json(path.read_text())
    assert record.status == "failed" and "is gone" in record.reason


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("experiment=roberta_base_lora", "train.max_steps=0"), "trains nothing"),
        (("task=e2e",), "needs a decoder model"),
        (("method.layers=[]",), "adapts no layer"),
        (("method.r=64",), "exceeds the size"),
    ],
)
def test_impossible_runs_are_refused_before_training(
    overrides: tuple[str, ...], message: str, tmp_path: Path, no_training: None
) -> None:
    with pytest.raises(ValueError, match=message) as err:
        execute(tiny_run(tmp_path, *overrides))
    assert "\n" not in str(err.value)
    assert not list((tmp_path / "results").glob("*.json"))


def test_fractional_epochs_label_the_last_partial_epoch_as_the_next_one() -> None:
    from lora.train import epoch_label

    assert [epoch_label(e) for e in (1.0, 2.0, 2.5)] == [1, 2, 3]
    assert [epoch_label(e) for e in (0.5, 0.9999999, 1.0000001)] == [1, 1, 1]


@needs_glue
def test_a_lora_run_writes_its_peft_export_beside_its_adapter(tmp_path: Path) -> None:
    record = execute(tiny_run(tmp_path))
    peft_dir = tmp_path / "outputs" / run_name(record) / "peft"
    config = json.loads((peft_dir / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == "tiny-roberta"
    assert config["r"] == 8 and sorted(config["target_modules"])
    assert (peft_dir / "adapter_model.safetensors").is_file()


@needs_glue
def test_fractional_epochs_record_one_entry_per_evaluation(tmp_path: Path) -> None:
    # 16 rows of 8: 2 steps an epoch; 1.5 epochs = 3 steps, evaluated after epoch 1 and at the end (epoch 1.5).
    record = execute(tiny_run(tmp_path, "train.epochs=1.5"))
    assert [(e["epoch"], e["step"]) for e in record.epochs] == [(1, 2), (2, 3)]
