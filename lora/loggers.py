"""Experiment loggers beside the run record: a metrics.csv, one Weights & Biases run, or a TensorBoard log.

`logger=csv|wandb|tensorboard` (conf/logger/). Whatever the logger, the run record (results/runs/*.json) stays the
source of the tables; a logger is for watching runs and for the tools researchers already use.

- csv: every logged value appended to `<run dir>/metrics.csv` (step, key, value).
- wandb: ONE wandb run per training run, created here (not by the Trainer, which would reuse the first run of a
  sequential sweep for all of them): the run's name, `group` = experiment, tags (model, task, method), the
  resolved config with its hash, and an id derived from the config hash with `resume="allow"`, so a resumed run
  continues its own wandb run. The Trainer's WandbCallback logs the training curves into it; at the end the
  record (status, best epoch and its metrics including the NLG scores, the last epoch's, parameters, peak memory,
  time) goes into the summary and the run is finished. `logger.project` and `logger.mode` (offline by default)
  are passed to wandb explicitly, so WANDB_PROJECT / WANDB_MODE in the environment do not override them.
- tensorboard: transformers' TensorBoardCallback writing to `<run dir>/tensorboard`, and the record's summary as
  scalars under `final/` at the end.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from lora import records
from lora.resume import is_main_process


def report_to(name: str) -> str:
    """The Trainer's `report_to` for logger `name` (only wandb uses the Trainer's own integration)."""
    return "wandb" if name == "wandb" else "none"


def summary(record: records.RunRecord) -> dict[str, Any]:
    """The record as flat summary values: status, best/last epoch and metrics, parameters, memory, time."""
    out: dict[str, Any] = {"status": record.status, "config_hash": record.config_hash}
    for which in ("best", "last"):
        part = getattr(record, which)
        if part:
            out[f"{which}/epoch"] = part["epoch"]
            out |= {f"{which}/{k}": v for k, v in part["metrics"].items() if v is not None}
    for group in ("params", "memory", "time"):
        out |= {
            f"{group}/{k}": v for k, v in (getattr(record, group) or {}).items() if not isinstance(v, str)
        }
    return out


def wandb_id(record: records.RunRecord) -> str:
    """A wandb run id from the config hash: the same config continues the same wandb run (resume="allow")."""
    return record.config_hash[:32]


@contextlib.contextmanager
def open_run_logger(cfg: Any, record: records.RunRecord, name: str, out_dir: Path) -> Iterator[list[Any]]:
    """Yield the Trainer callbacks of `cfg.logger` for this run; on exit, write the record's summary and close.
    Only the main process logs."""
    kind = cfg.logger.name
    if not is_main_process() or kind == "none":
        yield []
        return
    if kind == "csv":
        yield [CsvLogger(out_dir / "metrics.csv")]
        return
    if kind == "wandb":
        import wandb

        run = wandb.init(
            project=cfg.logger.project, mode=cfg.logger.mode, dir=str(out_dir), name=name, group=record.experiment,
            tags=[record.model, record.task, record.method], id=wandb_id(record), resume="allow",
            config={**record.config, "config_hash": record.config_hash, "experiment": record.experiment},
            reinit="finish_previous",
        )  # fmt: skip
        try:
            yield []
        finally:
            run.summary.update(summary(record))
            run.finish(exit_code=0 if record.status == "complete" else 1)
        return
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"))
    try:
        yield [TensorBoardCallback(tb_writer=writer)]
    finally:
        for k, v in summary(record).items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                writer.add_scalar(f"final/{k}", v)
        writer.add_text("final/status", record.status)
        writer.close()


class CsvLogger(TrainerCallback):
    """logger=csv: every logged value appended to `metrics.csv` in the run directory (step, key, value)."""

    def __init__(self, path: Path):
        self.path = path

    def truncate(self, step: int) -> None:
        """Drop the rows after `step` (a resumed run logs them again)."""
        if not is_main_process() or not self.path.exists():
            return
        lines = self.path.read_text().splitlines(keepends=True)
        kept = lines[:1] + [line for line in lines[1:] if int(line.split(",", 1)[0]) <= step]
        self.path.write_text("".join(kept))

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any
    ) -> None:
        if not is_main_process() or not logs:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        with self.path.open("a") as f:
            if new:
                f.write("step,key,value\n")
            for k, v in logs.items():
                f.write(f"{state.global_step},{k},{v}\n")
