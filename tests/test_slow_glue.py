"""Slow: the real pretrained MiniLM-L6 fine-tuned with LoRA on real GLUE data beats the majority class."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from lora.train import execute

ROOT = Path(__file__).resolve().parent.parent
GLUE = ROOT.parent / "shared" / "data" / "glue"


@pytest.mark.slow
@pytest.mark.skipif(not (GLUE / "SST-2" / "dev.tsv").is_file(), reason=f"no GLUE data at {GLUE}")
def test_minilm_lora_beats_the_majority_class_on_sst2(tmp_path: Path) -> None:
    overrides = [
        "model=minilm", "task=sst2", "method=lora", "method.r=8", "method.alpha=16", f"data_dir={GLUE}",
        "task.max_train_samples=600", "task.max_eval_samples=300", "train.epochs=1", "train.batch_size=16",
        "train.lr=1e-3", "train.max_length=64", "train.progress=false",
        f"results_dir={tmp_path / 'runs'}", f"output_dir={tmp_path / 'out'}",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        record = execute(compose("config", overrides=overrides))
    assert record.status == "complete"
    # SST-2 dev is 428 negative / 444 positive: the majority class scores 50.9% on the full set; on the first 300
    # rows of our fixed subsample (seed 0) it is 154/300 = 51.3%, measured with lora.data.glue.subsample.
    accuracy = record.best["metrics"]["accuracy"]
    assert accuracy > 0.65, f"LoRA on MiniLM reached only {accuracy:.3f}"
    assert record.params["trainable"] == 2 * 6 * 2 * 384 * 8  # 2 matrices x L x 2 d r = 73,728
