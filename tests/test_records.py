"""Run records: schema round trip, validation errors, config hashing, atomic writes, loading."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import pytest

from lora import records
from lora.records import (
    RecordWarning,
    RunRecord,
    best_epoch,
    config_hash,
    env_info,
    find_complete,
    load_records,
    new_record,
    record_filename,
    validate_record,
    write_record,
)

CONFIG = {
    "seed": 1,
    "lr": 5e-4,
    "method": {"name": "lora", "r": 8},
    "output_dir": "outputs/a",
    "data_dir": "/d",
}


def make_record(seed: int = 1, status: str = "complete", **config: object) -> RunRecord:
    cfg = {**copy.deepcopy(CONFIG), "seed": seed, **config}
    rec = new_record(
        cfg, experiment="roberta_base_lora", model="roberta-base", task="rte", method="lora", seed=seed
    )
    rec.add_epoch(1, 10, {"accuracy": 0.80, "eval_loss": 0.5}, train_loss=0.7)
    rec.add_epoch(2, 20, {"accuracy": 0.85, "eval_loss": 0.4}, train_loss=float("nan"))
    rec.params = {"trainable": 294_912, "total": 125_000_000, "head": 592_130, "adapter_bytes": 1_180_000}
    rec.memory = {"peak_bytes": 2**30, "kind": "cpu_rss"}
    rec.time = {"train_s": 10.0, "eval_s": 1.0, "samples_per_s": 50.0}
    rec.best = best_epoch(rec.epochs, "accuracy")
    rec.targets = ["roberta.encoder.layer.0.attention.self.query"]
    rec.finish(status, reason=None if status == "complete" else "loss is NaN")
    return rec


def test_round_trip_and_schema_order() -> None:
    rec = make_record()
    d = json.loads(rec.to_json())
    assert list(d)[:3] == ["schema", "status", "reason"] and d["schema"] == 1
    assert d["epochs"][1]["train_loss"] is None  # NaN is written as null: the file is standard JSON
    back = RunRecord.from_json(rec.to_json())
    assert back.to_dict() == rec.to_dict()
    assert back.best == {"epoch": 2, "metrics": {"accuracy": 0.85, "eval_loss": 0.4}}


def test_running_record_may_lack_results() -> None:
    rec = new_record(CONFIG, experiment="e", model="m", task="rte", method="lora", seed=0)
    validate_record(rec.to_dict())  # no params/memory/time/best yet
    assert rec.status == "running" and rec.finished is None


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(schema=2), "schema 2 is not supported"),
        (lambda d: d.update(status="done"), "status must be one of"),
        (lambda d: d.pop("best"), "best is required in a complete record"),
        (lambda d: d.update(seed="1"), "seed must be an integer"),
        (lambda d: d.update(config_hash="abc"), "config_hash must be 64"),
        (lambda d: d["best"]["metrics"].update(acc=0.9), "best.metrics.acc is not a known metric key"),
        (lambda d: d["params"].pop("head"), "params is missing ['head']"),
        (lambda d: d["memory"].update(kind="rss"), "memory.kind must be one of"),
        (lambda d: d.update(status="diverged", reason=None), "reason is required when status is 'diverged'"),
        (lambda d: d.update(extra=1), "record has unknown keys ['extra']"),
        (lambda d: d.update(started="yesterday"), "started must be an ISO 8601 time"),
        (lambda d: d["epochs"][0].update(step=1.5), "epoch and step must be integers"),
    ],
)
def test_validation_names_the_bad_field(mutate, message: str) -> None:
    d = make_record().to_dict()
    mutate(d)
    with pytest.raises(ValueError, match=r"^run record.*" + re.escape(message)):
        validate_record(d)


def test_webnlg_subset_metrics_are_known() -> None:
    d = make_record().to_dict()
    d["best"]["metrics"] = {"bleu": 0.55, "bleu_seen": 0.62, "ter_unseen": 0.46, "meteor": 0.41}
    validate_record(d)


def test_config_hash_ignores_order_and_paths_but_not_lr_or_seed() -> None:
    h = config_hash(CONFIG)
    reordered = dict(reversed(list(copy.deepcopy(CONFIG).items())))
    assert config_hash(reordered) == h
    moved = {**CONFIG, "output_dir": "elsewhere", "data_dir": "/other", "logger": {"name": "wandb"}}
    moved["train"] = {"progress": False, "logging_steps": 10}
    assert config_hash({**CONFIG, "train": {}}) == config_hash(moved)
    nested = {**CONFIG, "method": {"r": 8, "name": "lora", "output_dir": "x"}}
    assert config_hash(nested) == h
    assert config_hash({**CONFIG, "lr": 4e-4}) != h
    assert config_hash({**CONFIG, "seed": 2}) != h
    assert len(h) == 64 and int(h, 16) >= 0


def test_write_then_load_and_find(tmp_path: Path) -> None:
    rec = make_record()
    path = write_record(rec, tmp_path / "runs")
    assert path.name == f"roberta_base_lora__rte__lora__s1__{rec.config_hash[:10]}.json"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode
    (loaded,) = load_records(tmp_path)
    assert loaded == rec and loaded.source == path
    assert find_complete(tmp_path, rec.config_hash) == rec
    assert find_complete(tmp_path, config_hash({**CONFIG, "lr": 1.0})) is None
    assert find_complete(tmp_path / "absent", rec.config_hash) is None


def test_find_complete_ignores_unfinished_runs(tmp_path: Path) -> None:
    rec = make_record(status="diverged")
    write_record(rec, tmp_path)
    assert find_complete(tmp_path, rec.config_hash) is None


def test_filename_is_sanitised() -> None:
    rec = make_record()
    rec.experiment, rec.task = "a b/../c", "rte:1"
    name = record_filename(rec)
    assert name == f"a-b-..-c__rte-1__lora__s1__{rec.config_hash[:10]}.json" and "/" not in name


@pytest.mark.parametrize("fail_at", ["fsync", "replace"])
def test_failed_write_keeps_old_file_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: str
) -> None:
    rec = make_record()
    path = write_record(rec, tmp_path)
    before = path.read_bytes()
    rec.add_epoch(3, 30, {"accuracy": 0.9}, train_loss=0.1)  # a new version of the same run

    def boom(*args: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, fail_at, boom)
    with pytest.raises(OSError, match="disk on fire"):
        write_record(rec, tmp_path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_invalid_record_is_not_written(tmp_path: Path) -> None:
    rec = make_record()
    rec.status = "finished"
    with pytest.raises(ValueError, match="status must be one of"):
        write_record(rec, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_not_writable_directory_is_a_one_line_error(tmp_path: Path) -> None:
    # chmod does not stop root, so use a path below a regular file: no user can create that directory.
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match=r"results directory .*file/runs.* is not writable.*results_dir="):
        write_record(make_record(), blocker / "runs")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory_is_a_one_line_error(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(ValueError, match="is not writable"):
            write_record(make_record(), locked)
    finally:
        locked.chmod(0o700)


def test_load_skips_corrupt_files_with_a_warning(tmp_path: Path) -> None:
    write_record(make_record(seed=1), tmp_path)
    write_record(make_record(seed=2), tmp_path / "nested")
    (tmp_path / "broken.json").write_text('{"schema": 1, "status": ')  # a cut-off file
    (tmp_path / "bad.json").write_text(json.dumps({"schema": 1, "status": "complete"}))
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 768}))  # not a record: silently skipped
    with pytest.warns(RecordWarning) as caught:
        recs = load_records(tmp_path)
    assert sorted(r.seed for r in recs) == [1, 2]
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2
    assert "bad.json: run record: record is missing" in messages[0] and "broken.json" in messages[1]


def test_load_missing_directory_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="runs directory .*absent.* does not exist"):
        load_records(tmp_path / "absent")


def test_best_epoch_min_mode_and_errors() -> None:
    epochs = make_record().epochs
    assert best_epoch(epochs, "eval_loss", mode="min")["epoch"] == 2
    with pytest.raises(ValueError, match="no epoch has a finite 'bleu'"):
        best_epoch(epochs, "bleu")


def test_finish_needs_a_final_status() -> None:
    with pytest.raises(ValueError, match="finish\\(\\) needs a final status"):
        make_record().finish("running")


def test_env_info_fields() -> None:
    env = env_info("cpu")
    assert set(env) >= {"git", "dirty", "python", "torch", "transformers", "peft", "device", "hostname"}
    assert env["device"] == "cpu" and env["torch"] is not None
    assert env["git"] is None or len(env["git"]) == 40


def test_env_info_outside_git(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(records, "_git", lambda repo, *args: None)
    env = env_info("cpu")
    assert env["git"] is None and env["dirty"] is None


def test_config_hash_canonical_form_is_pinned() -> None:
    # Changing the canonical form would orphan every existing record (sweeps would rerun finished runs).
    # Pinned with: printf '{"a":1,"b":[1,2.5]}' | sha256sum
    pinned = "07ac8340cb8a1f1a4c2cc05b1f6e885b0d7239278fdf513db654864fcb9ec9e3"
    assert config_hash({"b": [1, 2.5], "a": 1, "output_dir": "x"}) == pinned


def test_fixture_records_are_valid_and_hashed() -> None:
    fixtures = sorted((Path(__file__).parent / "fixtures" / "records").glob("*.json"))
    assert len(fixtures) == 7
    for path in fixtures:
        rec = RunRecord.from_json(path.read_text(), source=path)
        assert rec.config_hash == config_hash(rec.config) and path.name == record_filename(rec)
