"""Train and evaluate one run (or a sweep with -m); writes one JSON record per run under results/runs/.

    python experiments/train.py experiment=roberta_base_lora task=rte seed=0
    python experiments/train.py -m experiment=roberta_base_lora task=rte,mrpc seed=0,1,2,3,4
"""

import hydra
from omegaconf import DictConfig

import lora.config  # noqa: F401  (registers the config schema and the `by` resolver)
from lora.cli import friendly_errors
from lora.train import execute


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
@friendly_errors
def main(cfg: DictConfig) -> None:
    record = execute(cfg)
    best = record.best["metrics"] if record.best else {}
    print(f"{record.status}: {record.experiment} {record.task} seed={record.seed} best={best}")


if __name__ == "__main__":
    main()
