"""Same config, same seed, same CPU: the same numbers (lora.train.execute run twice on a tiny model, real RTE rows).

Dropout is on in tiny-bert (p=0.1), so this also checks that every random draw (data order, dropout masks, LoRA
init) comes from the seed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import lora.config  # noqa: F401  (registers the config schema and the `by` resolver)
from lora.train import execute

ROOT = Path(__file__).resolve().parent.parent
GLUE = ROOT.parent / "shared" / "data" / "glue"

pytestmark = pytest.mark.skipif(not GLUE.is_dir(), reason=f"GLUE data not found at {GLUE} (../shared/data)")


def tiny_rte(tmp: Path, *extra: str) -> DictConfig:
    """tiny-bert + LoRA on 32 RTE training rows, 2 epochs of 4 steps; records in tmp/runs."""
    overrides = [
        "model=tiny-bert", "task=rte", "method=lora", f"data_dir={GLUE}", "task.max_train_samples=32",
        "task.max_eval_samples=16", "train.batch_size=8", "train.epochs=2", "train.lr=5e-3", "train.logging_steps=2",
        "train.progress=false", "device=cpu", f"results_dir={tmp / 'runs'}", f"output_dir={tmp / 'out'}", *extra,
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides)


def test_same_config_and_seed_give_identical_metrics(tmp_path: Path) -> None:
    first = execute(tiny_rte(tmp_path))
    again = execute(tiny_rte(tmp_path, "force=true"))  # same results dir: force the rerun
    other = execute(tiny_rte(tmp_path, "seed=1"))

    assert first.status == again.status == "complete"
    assert again.config_hash == first.config_hash and again.started >= first.started
    assert [e["train_loss"] for e in first.epochs] == [e["train_loss"] for e in again.epochs]  # bit-identical
    assert first.epochs == again.epochs and first.best == again.best
    assert [e["train_loss"] for e in other.epochs] != [
        e["train_loss"] for e in first.epochs
    ]  # the seed matters
