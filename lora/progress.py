"""A sweep's progress on the console: `[sweep] run i of N: <swept overrides>` as each run of `experiments/train.py -m`
starts, and at the end `[sweep] N runs: c complete, s skipped, f failed` (diverged / oom runs too, when any).

`SweepProgress` is a Hydra callback, registered under `hydra.callbacks` in conf/config.yaml; it prints nothing
for a single run (no -m). N is the number of jobs Hydra's basic sweeper makes of the sweep's overrides (the
cartesian product of the comma lists); with another sweeper N is unknown and the lines read `run i`.

What a run was comes from what the task function returned (`JobReturn`): a run that raised is `failed`; a
returned run record (`lora.records.RunRecord`) is `complete`, `diverged`, `oom` or `failed` by its status, and
`skipped` when it was not trained by this job: a complete record read from disk (it has a `source` file: the
sweep found the run complete) or a record still `running` (another process holds the run's lock). A status
string may be returned instead of a record. A task function that returns nothing gives `done` (outcome unknown).

Each job's outcome is also written to `<hydra.sweep.dir>/.progress/<job number>.json`, so that the summary counts
the jobs of launchers that run them in other processes (joblib, submitit) as well; whichever process sees the last
job end prints it once (the summary is printed even when a failed run makes Hydra stop before its own end).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

OUTCOMES: tuple[str, ...] = ("complete", "skipped", "failed", "diverged", "oom", "done")
PREFIX = "[sweep]"
PROGRESS_DIR = ".progress"


def outcome(job_return: Any) -> str:
    """One of `OUTCOMES` for a Hydra `JobReturn` (see the module docstring)."""
    from hydra.core.utils import JobStatus

    if job_return.status != JobStatus.COMPLETED:
        return "failed"
    value = job_return._return_value  # `return_value` re-raises the exception of a failed job
    if isinstance(value, str) and value in OUTCOMES:
        return value
    status = getattr(value, "status", None)
    if status is None:
        return "done"
    if status == "complete":
        return "skipped" if getattr(value, "source", None) is not None else "complete"
    if status == "running":
        return "skipped"
    return status if status in OUTCOMES else "failed"


def sweep_plan(config: DictConfig) -> tuple[int, list[str]] | None:
    """(number of jobs, the keys that take more than one value) that Hydra's basic sweeper makes of this multirun
    config (its `hydra.overrides.task` and `hydra.sweeper.params`: the product of the comma lists), or None for
    another sweeper or overrides it cannot enumerate (e.g. range sweeps)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweeper = OmegaConf.select(config, "hydra.sweeper", default=None) or {}
    if not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return None
    params = sweeper.get("params") or {}
    args = [f"{k}={v}" for k, v in params.items()] + list(
        OmegaConf.select(config, "hydra.overrides.task") or []
    )
    try:
        overrides = OverridesParser.create().parse_overrides(args)
        jobs = [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]
    except Exception:  # a sweep the basic sweeper would refuse, or one that needs the config loader
        return None
    swept = [o.get_key_element() for o in overrides if o.is_sweep_override()]
    return len(jobs), swept


def count_jobs(config: DictConfig) -> int | None:
    """The number of jobs of a multirun config (`sweep_plan`), None where unknown."""
    plan = sweep_plan(config)
    return None if plan is None else plan[0]


def _say(line: str) -> None:
    """One line to stdout in one write, so that the lines of parallel jobs never interleave."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def summary(counts: Counter[str], total: int | None = None) -> str:
    """`[sweep] N runs: c complete, s skipped, f failed[, d diverged, o oom, x done]` (the last three when any)."""
    n = sum(counts.values()) if total is None else total
    parts = [f"{counts.get(k, 0)} {k}" for k in ("complete", "skipped", "failed")]
    parts += [f"{counts[k]} {k}" for k in ("diverged", "oom") if counts.get(k)]
    if counts.get("done"):
        parts.append(f"{counts['done']} ended without a record")
    ended = sum(counts.values())
    tail = "" if ended == n else f" ({n - ended} did not end)"
    return f"{PREFIX} {n} runs: {', '.join(parts)}{tail}"


class SweepProgress(Callback):
    """Hydra callback (`hydra.callbacks` in conf/config.yaml): numbers the runs of a sweep and sums them up. The
    state set in `on_multirun_start` travels with the callback to the job processes of other launchers."""

    def __init__(self) -> None:
        self.total: int | None = None
        self.swept: list[str] | None = None
        self.sweep_dir: str | None = None

    # ------------------------------------------------------------------------------------------------ hooks

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.total, self.swept = sweep_plan(config) or (None, None)
        self.sweep_dir = str(OmegaConf.select(config, "hydra.sweep.dir"))
        shutil.rmtree(self._dir(), ignore_errors=True)  # a rerun into the same sweep dir starts afresh
        self._dir().mkdir(parents=True, exist_ok=True)
        what = f"{self.total} runs" if self.total is not None else "runs"
        _say(f"{PREFIX} {what} into {self.sweep_dir}")

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not self._multirun(config):
            return
        i = int(OmegaConf.select(config, "hydra.job.num", default=0)) + 1
        of = f" of {self.total}" if self.total is not None else ""
        overrides = list(OmegaConf.select(config, "hydra.overrides.task") or [])
        if self.swept:  # only what changes from run to run; Hydra's own log line has them all
            overrides = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in self.swept]
        _say(f"{PREFIX} run {i}{of}: {' '.join(overrides)}")

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if not self._multirun(config) or self.sweep_dir is None:
            return
        num = int(OmegaConf.select(config, "hydra.job.num", default=0))
        entry = {"num": num, "outcome": outcome(job_return), "overrides": list(job_return.overrides or [])}
        path = self._dir() / f"{num}.json"
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entry) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        if self.total is not None and len(self._entries()) >= self.total:
            self._print_summary()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.sweep_dir is not None:
            self._print_summary()

    # ---------------------------------------------------------------------------------------------- helpers

    def counts(self) -> Counter[str]:
        """Outcomes of the jobs that ended so far, from the sweep dir's progress files."""
        return Counter(e["outcome"] for e in self._entries())

    def _print_summary(self) -> None:
        """Print the summary once per sweep, whichever process gets here first."""
        try:
            fd = os.open(self._dir() / "summary", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        line = summary(self.counts(), self.total)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(line + "\n")
        _say(line)

    def _entries(self) -> list[dict[str, Any]]:
        entries = []
        for p in sorted(self._dir().glob("*.json")):
            with contextlib.suppress(OSError, ValueError):
                entries.append(json.loads(p.read_text(encoding="utf-8")))
        return entries

    def _dir(self) -> Path:
        return Path(str(self.sweep_dir)) / PROGRESS_DIR

    @staticmethod
    def _multirun(config: DictConfig) -> bool:
        from hydra.types import RunMode

        return OmegaConf.select(config, "hydra.mode", default=None) == RunMode.MULTIRUN
