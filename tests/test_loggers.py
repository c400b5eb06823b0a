"""Loggers read back from their files: one offline wandb run per training run, TensorBoard event files, csv.

The wandb files are read with a small reader of their record format (a LevelDB-style log of protobuf `Record`s,
wandb.proto.wandb_internal_pb2; wandb 0.31 ships no Python reader of its own)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from lora.train import execute, run_name

ROOT = Path(__file__).resolve().parent.parent
GLUE = ROOT.parent / "shared" / "data" / "glue"
needs_glue = pytest.mark.skipif(not GLUE.is_dir(), reason=f"GLUE data not found at {GLUE} (../shared/data)")


def tiny(tmp: Path, *extra: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[
            "model=tiny-roberta", "task=rte", "method=lora", f"data_dir={GLUE}", "task.max_train_samples=16",
            "task.max_eval_samples=8", "train.batch_size=8", "train.epochs=2", "train.logging_steps=1",
            "train.progress=false", f"results_dir={tmp / 'runs'}", f"output_dir={tmp / 'out'}", *extra,
        ])  # fmt: skip


def wandb_records(path: Path) -> list[Any]:
    """The protobuf records of a `.wandb` file: a 7-byte header (":W&B", magic, version), then 32 KiB blocks of
    chunks, each `crc32 (4) | length (2, little endian) | type (1: full, 2: first, 3: middle, 4: last)`."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, out, buf = 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:  # zero padding to the end of the block
            pos += left
            continue
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            out.append(record)
            buf = b""
    return out


def read_wandb_run(path: Path) -> dict[str, Any]:
    """run (id, name, group, tags, project, config), the last summary values and the history keys."""
    run: dict[str, Any] = {"summary": {}, "history_keys": set(), "config": {}}

    def key(item: Any) -> str:
        return item.key or "/".join(item.nested_key)

    for r in wandb_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run |= {"id": r.run.run_id, "name": r.run.display_name, "group": r.run.run_group,
                    "tags": list(r.run.tags), "project": r.run.project}  # fmt: skip
            run["config"] |= {key(i): json.loads(i.value_json) for i in r.run.config.update}
        elif kind == "config":
            run["config"] |= {key(i): json.loads(i.value_json) for i in r.config.update}
        elif kind == "summary":
            run["summary"] |= {key(i): json.loads(i.value_json) for i in r.summary.update}
        elif kind == "history":
            run["history_keys"] |= {key(i) for i in r.history.item}
    return run


@needs_glue
def test_wandb_one_run_per_training_run_with_config_and_record_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_PROJECT", "from-the-environment")  # logger.project wins
    monkeypatch.setenv("WANDB_MODE", "online")  # logger.mode (offline) wins: no network here
    monkeypatch.setenv("WANDB_SILENT", "true")
    recs = [execute(tiny(tmp_path, "logger=wandb", "logger.project=lora-test", f"seed={s}")) for s in (0, 1)]

    files = sorted((tmp_path / "out").glob("*/wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 2  # a sequential sweep: one wandb run per training run, not one for all
    for rec in recs:
        (path,) = (tmp_path / "out" / run_name(rec)).glob("wandb/offline-run-*/run-*.wandb")
        run = read_wandb_run(path)
        assert run["id"] == rec.config_hash[:32] and run["name"] == run_name(rec)
        assert run["project"] == "lora-test" and run["group"] == "custom"
        assert run["tags"] == ["tiny-roberta", "rte", "lora"]
        cfg = run["config"]
        assert cfg["config_hash"] == rec.config_hash and cfg["experiment"] == "custom"
        assert (
            cfg["task"]["name"] == "rte"
            and cfg["method"]["r"] == 8
            and cfg["method"]["targets"] == ["q", "v"]
        )
        assert cfg["seed"] == rec.seed
        s = run["summary"]
        assert s["status"] == "complete" and s["best/epoch"] == rec.best["epoch"]
        assert s["best/accuracy"] == pytest.approx(rec.best["metrics"]["accuracy"])
        assert (
            s["params/trainable"] == rec.params["trainable"]
            and s["memory/peak_bytes"] == rec.memory["peak_bytes"]
        )
        assert any("loss" in k for k in run["history_keys"])  # the Trainer's curves went into this run


@needs_glue
def test_tensorboard_writes_curves_and_the_record_summary(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rec = execute(tiny(tmp_path, "logger=tensorboard"))
    acc = EventAccumulator(str(tmp_path / "out" / run_name(rec) / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert "train/loss" in tags and "eval/validation_accuracy" in tags
    (best,) = acc.Scalars("final/best/accuracy")
    assert best.value == pytest.approx(rec.best["metrics"]["accuracy"])
    assert acc.Scalars("final/params/trainable")[0].value == rec.params["trainable"]
