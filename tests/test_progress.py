"""The sweep progress callback (lora/progress.py): `[sweep] run i of N` per run of a `-m` sweep and a summary of
complete / skipped / failed runs at the end, with Hydra's basic launcher and with joblib's worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

import lora.config  # noqa: F401  (registers the config schema and the `by` resolver)
from lora import progress
from lora.progress import SweepProgress, count_jobs, outcome, summary, sweep_plan

ROOT = Path(__file__).resolve().parent.parent
GLUE = ROOT.parent / "shared" / "data" / "glue"


def job(status: JobStatus, value: object) -> JobReturn:
    ret = JobReturn(overrides=["seed=0"])
    ret.status, ret.return_value = status, value
    return ret


def test_outcome_of_each_kind_of_job() -> None:
    ok = JobStatus.COMPLETED
    assert outcome(job(ok, SimpleNamespace(status="complete", source=None))) == "complete"  # trained now
    assert outcome(job(ok, SimpleNamespace(status="complete", source=Path("r.json")))) == "skipped"  # found
    assert outcome(job(ok, SimpleNamespace(status="running", source=None))) == "skipped"  # locked elsewhere
    assert outcome(job(ok, SimpleNamespace(status="diverged", source=None))) == "diverged"
    assert outcome(job(ok, SimpleNamespace(status="oom", source=None))) == "oom"
    assert outcome(job(ok, "skipped")) == "skipped"
    assert outcome(job(ok, None)) == "done"
    assert outcome(job(JobStatus.FAILED, RuntimeError("bad value"))) == "failed"


def test_summary_line() -> None:
    assert (
        summary(Counter(complete=3, skipped=2, failed=1)) == "[sweep] 6 runs: 3 complete, 2 skipped, 1 failed"
    )
    assert summary(Counter(complete=1, diverged=1, oom=1, done=1), total=5) == (
        "[sweep] 5 runs: 1 complete, 0 skipped, 0 failed, 1 diverged, 1 oom, 1 ended without a record "
        "(1 did not end)"
    )


def test_count_jobs_is_the_product_of_the_sweep_lists() -> None:
    basic = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
    cfg = OmegaConf.create({
        "hydra": {"sweeper": {"_target_": basic, "params": None},
                  "overrides": {"task": ["seed=0,1,2", "task=rte,mrpc", "model=tiny-bert"]}},
    })  # fmt: skip
    assert count_jobs(cfg) == 6 and sweep_plan(cfg) == (6, ["seed", "task"])
    cfg.hydra.sweeper.params = {"method.r": "1,2"}
    assert sweep_plan(cfg) == (12, ["method.r", "seed", "task"])
    cfg.hydra.sweeper._target_ = "some.other.Sweeper"
    assert count_jobs(cfg) is None


def test_the_callback_is_registered_for_train_py() -> None:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", return_hydra_config=True)
    assert cfg.hydra.callbacks.sweep_progress._target_ == "lora.progress.SweepProgress"
    assert isinstance(progress.SweepProgress(), SweepProgress)


# ------------------------------------------------------------------------------------ real sweeps, tiny task

APP = """
import sys
from types import SimpleNamespace

import hydra


@hydra.main(config_path="conf", config_name="app", version_base="1.3")
def main(cfg):
    print(f"task {cfg.outcome}", flush=True)
    if cfg.outcome == "boom":
        raise RuntimeError("boom")
    if cfg.outcome == "none":
        return None
    if cfg.outcome == "found":  # as lora.train.execute returns a complete record read from disk
        return SimpleNamespace(status="complete", source="found.json")
    return SimpleNamespace(status=cfg.outcome, source=None)


if __name__ == "__main__":
    main()
"""
APP_CONF = """
outcome: complete
hydra:
  callbacks:
    sweep_progress:
      _target_: lora.progress.SweepProgress
"""


def run_app(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conf").mkdir(exist_ok=True)
    (tmp_path / "conf" / "app.yaml").write_text(APP_CONF)
    (tmp_path / "app.py").write_text(textwrap.dedent(APP))
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, str(tmp_path / "app.py"), "-m", *args, f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip


def sweep_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("[sweep]")]


def test_basic_launcher_numbers_the_runs_and_sums_them_up(tmp_path: Path) -> None:
    done = run_app(tmp_path, "outcome=complete,found,complete,diverged")
    assert done.returncode == 0, done.stderr
    assert sweep_lines(done.stdout) == [
        f"[sweep] 4 runs into {tmp_path / 'sweep'}",
        "[sweep] run 1 of 4: outcome=complete",
        "[sweep] run 2 of 4: outcome=found",
        "[sweep] run 3 of 4: outcome=complete",
        "[sweep] run 4 of 4: outcome=diverged",
        "[sweep] 4 runs: 2 complete, 1 skipped, 0 failed, 1 diverged",
    ]
    lines = done.stdout.splitlines()
    assert lines.index("[sweep] run 2 of 4: outcome=found") + 1 == lines.index("task found")


def test_a_failed_run_is_counted_and_the_summary_still_printed(tmp_path: Path) -> None:
    # Hydra re-raises a failed job's exception after the batch, so it never reaches on_multirun_end: the summary
    # comes from the last job's end.
    done = run_app(tmp_path, "outcome=boom,complete,none")
    assert done.returncode != 0 and "boom" in done.stderr
    assert sweep_lines(done.stdout)[-1] == (
        "[sweep] 3 runs: 1 complete, 0 skipped, 1 failed, 1 ended without a record"
    )


def test_joblib_workers_report_into_one_summary(tmp_path: Path) -> None:
    done = run_app(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "outcome=complete,found,oom")
    assert done.returncode == 0, done.stderr
    lines = sweep_lines(done.stdout)
    assert sorted(line for line in lines if " run " in line and " of " in line) == [
        "[sweep] run 1 of 3: outcome=complete",
        "[sweep] run 2 of 3: outcome=found",
        "[sweep] run 3 of 3: outcome=oom",
    ]
    assert lines.count("[sweep] 3 runs: 1 complete, 1 skipped, 0 failed, 1 oom") == 1


# -------------------------------------------------------------------------------- lora.train.execute, twice

TRAIN = """
import lora.config  # noqa: F401
from lora.cli import hydra_main
from lora.train import execute


@hydra_main(config_name="config", config_path="{conf}")
def main(cfg):
    return execute(cfg)  # experiments/train.py's main, returning the record


if __name__ == "__main__":
    main()
"""


@pytest.mark.skipif(not GLUE.is_dir(), reason=f"GLUE data not found at {GLUE} (../shared/data)")
def test_a_rerun_sweep_counts_its_finished_runs_as_skipped(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(TRAIN.format(conf=ROOT / "conf"))
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env |= {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.setdefault("HF_HOME", str(ROOT / ".cache" / "hf"))
    cmd = [
        sys.executable, str(tmp_path / "train.py"), "-m", "seed=0,1", "model=tiny-bert", "task=rte", "method=lora",
        f"data_dir={GLUE}", "task.max_train_samples=16", "task.max_eval_samples=8", "train.max_steps=1",
        "train.batch_size=8", "train.progress=false", "device=cpu", f"results_dir={tmp_path / 'runs'}",
        f"output_dir={tmp_path / 'out'}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]  # fmt: skip
    first = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert sweep_lines(first.stdout)[-1] == "[sweep] 2 runs: 2 complete, 0 skipped, 0 failed"
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[sweep] run 2 of 2: seed=1\n" in again.stdout
    assert sweep_lines(again.stdout)[-1] == "[sweep] 2 runs: 0 complete, 2 skipped, 0 failed"
