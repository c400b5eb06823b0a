"""Train and evaluate one run (or a sweep with -m); writes one JSON record per run under results/runs/.

    python experiments/train.py experiment=roberta_base_lora task=rte seed=0
    python experiments/train.py -m experiment=roberta_base_lora task=rte,mrpc seed=0,1,2,3,4
    torchrun --nproc_per_node 4 experiments/train.py experiment=roberta_base_lora task=rte   # one run, 4 GPUs

Bad input ends with one `error: ...` line and exit code 2 (HYDRA_FULL_ERROR=1 for the traceback).
"""

from omegaconf import DictConfig

import lora.config  # noqa: F401  (registers the config schema and the `by` resolver)
from lora import records
from lora.cli import hydra_main
from lora.train import execute


@hydra_main(config_name="config")
def main(cfg: DictConfig) -> records.RunRecord:
    record = execute(cfg)
    best = record.best["metrics"] if record.best else {}
    why = f" ({record.reason})" if record.reason else ""
    print(f"{record.status}: {record.experiment} {record.task} seed={record.seed} best={best}{why}")
    return record  # a sweep's progress callback (lora.progress) counts complete / skipped / failed runs


if __name__ == "__main__":
    main()
