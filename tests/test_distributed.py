"""Multi-process training: `torchrun` with 2 CPU processes (gloo) gives the single-process run on the same global
batch, and only rank 0 writes (record, metrics.csv, adapter, checkpoints, predictions).

The model for the comparison is tiny-roberta saved with dropout 0 (model=roberta-base model.path=<dir>): dropout
draws its masks from each process's own RNG stream, so with dropout on, 2 processes and 1 process differ by
design. Without it, both runs see the same 8 examples per step (accelerate shards each global batch of the
seeded sampler) and the same averaged gradient; what is left is float32 summation order (DDP averages two
4-example gradients, one process sums 8), ~1e-7 relative per step here, hence rtol=1e-5 over 4 steps. A wrong
batch split or a loss scaled by the number of processes (transformers 5 did that to sequence classifiers) shows
up at 1e-2 or more.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import lora.config  # noqa: F401  (registers the config schema and the `by` resolver)
from lora import records
from lora.models import build_config, tiny_tokenizer
from lora.train import execute, run_name

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
GLUE = DATA / "glue"

pytestmark = pytest.mark.skipif(not GLUE.is_dir(), reason=f"GLUE data not found at {GLUE} (../shared/data)")


def rte_overrides(model_dir: Path, tmp: Path) -> list[str]:
    """4 steps on 64 real RTE rows, logged every step to metrics.csv."""
    return [
        "model=roberta-base", f"model.path={model_dir}", "task=rte", "method=lora", f"data_dir={GLUE}",
        "task.max_train_samples=64", "task.max_eval_samples=32", "train.max_steps=4", "train.logging_steps=1",
        "train.lr=5e-3", "train.progress=false", "logger=csv", "device=cpu",
        f"results_dir={tmp / 'runs'}", f"output_dir={tmp / 'out'}",
    ]  # fmt: skip


def compose_cfg(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides)


def tiny_roberta_without_dropout(directory: Path) -> Path:
    cfg = build_config("tiny-roberta")
    cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.0
    torch.manual_seed(0)
    transformers.RobertaModel(cfg).save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


def logged(path: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.csv -> {key: [(step, value), ...]} in file order."""
    out: dict[str, list[tuple[int, float]]] = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            out.setdefault(row["key"], []).append((int(row["step"]), float(row["value"])))
    return out


def test_torchrun_two_processes_match_one_process(tmp_path: Path) -> None:
    model_dir = tiny_roberta_without_dropout(tmp_path / "model")
    one = execute(compose_cfg([*rte_overrides(model_dir, tmp_path / "one"), "train.batch_size=8"]))

    two_dir = tmp_path / "two"
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "RANK", "WORLD_SIZE")}
    env |= {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.setdefault("HF_HOME", str(ROOT / ".cache" / "hf"))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "experiments/train.py", *rte_overrides(model_dir, two_dir), "train.batch_size=8",
         f"hydra.run.dir={two_dir / 'hydra'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("complete: custom rte seed=0") == 2  # both processes finished the run

    (record_path,) = (two_dir / "runs").iterdir()  # exactly one record, no temp files
    two = records.RunRecord.from_json(record_path.read_text())
    # train.batch_size is the global batch: the same config (and hash) on 1 or 2 processes, 4 per process on 2.
    assert two.status == "complete" and two.config_hash == one.config_hash
    assert two.effective["batch"] == {"global": 8, "per_device": 4, "world_size": 2, "grad_accum": 1}
    assert one.effective["batch"] == {"global": 8, "per_device": 8, "world_size": 1, "grad_accum": 1}
    a, b = (
        logged(tmp_path / "one" / "out" / run_name(one) / "metrics.csv"),
        logged(two_dir / "out" / run_name(two) / "metrics.csv"),
    )
    for key in ("loss", "grad_norm", "eval_validation_loss"):
        assert [s for s, _ in b[key]] == [s for s, _ in a[key]], key  # each step logged once: rank 0 only
        assert [v for _, v in b[key]] == pytest.approx([v for _, v in a[key]], rel=1e-5), key
    assert [e["train_loss"] for e in two.epochs] == pytest.approx(
        [e["train_loss"] for e in one.epochs], rel=1e-5
    )
    assert two.best["metrics"]["accuracy"] == one.best["metrics"]["accuracy"]
    assert (two_dir / "out" / run_name(two) / "adapter" / "adapter.safetensors").is_file()
    assert not list((two_dir / "out").glob("*/resume"))


@pytest.mark.parametrize("task", ["rte", "e2e"])
def test_only_rank_zero_writes(task: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")  # as torchrun sets it in the second process
    extra = [f"task={task}", "model=tiny-gpt2" if task == "e2e" else "model=tiny-bert", "method=lora",
             "task.max_train_samples=8", "task.max_eval_samples=4", "train.max_steps=2", "train.batch_size=4",
             "train.logging_steps=1", "train.progress=false", "logger=csv", "device=cpu",
             f"results_dir={tmp_path / 'runs'}", f"output_dir={tmp_path / 'out'}"]  # fmt: skip
    if task == "e2e":
        extra += [
            f"data_dir={DATA}",
            "task.max_decode_samples=2",
            "task.num_beams=1",
            "task.max_new_tokens=4",
        ]
    else:
        extra += [f"data_dir={GLUE}"]
    record = execute(compose_cfg(extra))

    assert record.status == "complete"
    assert list((tmp_path / "runs").iterdir()) == []  # no record, no predictions
    assert not (tmp_path / "out").exists() or not any(p.is_file() for p in (tmp_path / "out").rglob("*"))
