"""Sweeps on other launchers: conf/hydra/launcher/{slurm,parallel}.yaml compose, the Makefile's LAUNCHER picks the
launcher of every sweep target, and a 2-run sweep through submitit's local launcher (the SLURM launcher's
code path, minus sbatch) writes two complete records (slow: each job is a fresh Python process)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_class

import lora.config  # noqa: F401  (registers the config schema and the `by` resolver)
from lora import records

ROOT = Path(__file__).resolve().parent.parent
GLUE = ROOT.parent / "shared" / "data" / "glue"
SWEEP_TARGETS = (
    "glue-roberta", "glue-roberta-large", "glue-deberta", "e2e-gpt2", "webnlg-gpt2", "dart-gpt2",
    "ablation-targets", "ablation-rank",
)  # fmt: skip


def launcher(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    return dict(cfg.hydra.launcher)


def test_slurm_launcher_composes_with_cluster_fields() -> None:
    slurm = launcher("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4")
    assert get_class(slurm["_target_"]).__name__ == "SlurmLauncher"
    expected = {"partition": "gpu", "gpus_per_node": 4, "tasks_per_node": 1, "cpus_per_task": 8, "mem_gb": 64,
                "timeout_min": 1440, "nodes": 1, "array_parallelism": 64}  # fmt: skip
    assert {k: slurm[k] for k in expected} == expected
    assert slurm["submitit_folder"].endswith("/.submitit/%j")


def test_local_launchers_compose() -> None:
    assert get_class(launcher("hydra/launcher=submitit_local")["_target_"]).__name__ == "LocalLauncher"
    parallel = launcher("hydra/launcher=parallel")
    assert get_class(parallel["_target_"]).__name__ == "JoblibLauncher" and parallel["n_jobs"] == 2
    assert launcher()["_target_"].endswith("BasicLauncher")  # the default: sequential, in-process


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("target", SWEEP_TARGETS)
def test_makefile_launcher_variable_reaches_every_sweep(target: str) -> None:
    out = subprocess.run(
        ["make", "-n", target, "LAUNCHER=slurm"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    sweeps = [line for line in out.splitlines() if re.search(r"experiments/train\.py -m\b", line)]
    assert sweeps, out
    assert all("hydra/launcher=slurm" in line for line in sweeps), sweeps


@pytest.mark.slow
@pytest.mark.skipif(not GLUE.is_dir(), reason=f"GLUE data not found at {GLUE} (../shared/data)")
def test_submitit_local_sweep_runs_two_jobs(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env |= {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.setdefault("HF_HOME", str(ROOT / ".cache" / "hf"))
    proc = subprocess.run(
        [sys.executable, "experiments/train.py", "-m", "hydra/launcher=submitit_local", "seed=0,1",
         "model=tiny-bert", "task=rte", "method=lora", f"data_dir={GLUE}", "task.max_train_samples=16",
         "task.max_eval_samples=8", "train.max_steps=2", "train.batch_size=8", "train.progress=false", "device=cpu",
         f"results_dir={tmp_path / 'runs'}", f"output_dir={tmp_path / 'out'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = records.load_records(tmp_path / "runs")
    assert sorted(r.seed for r in done) == [0, 1] and all(r.status == "complete" for r in done)
    assert len(list((tmp_path / "sweep" / ".submitit").glob("*/*_result.pkl"))) == 2  # ran as 2 submitit jobs


@pytest.mark.slow
@pytest.mark.skipif(not GLUE.is_dir(), reason=f"GLUE data not found at {GLUE} (../shared/data)")
def test_submitit_tasks_of_one_job_train_one_ddp_run(tmp_path: Path) -> None:
    """tasks_per_node=2 (as on SLURM with 2 GPUs per run): the 2 tasks join one DDP run (lora.train sets RANK,
    WORLD_SIZE, ... from submitit's environment), so each step takes the global batch of 8 as 2 x 4 examples and
    only rank 0 writes."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env |= {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.setdefault("HF_HOME", str(ROOT / ".cache" / "hf"))
    proc = subprocess.run(
        [sys.executable, "experiments/train.py", "-m", "hydra/launcher=submitit_local",
         "hydra.launcher.tasks_per_node=2", "model=tiny-bert", "task=rte", "method=lora", f"data_dir={GLUE}",
         "task.max_train_samples=32", "task.max_eval_samples=8", "train.max_steps=4", "train.batch_size=8",
         "train.logging_steps=1", "logger=csv", "train.progress=false", "device=cpu",
         f"results_dir={tmp_path / 'runs'}", f"output_dir={tmp_path / 'out'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = records.load_records(tmp_path / "runs")
    assert record.status == "complete"
    (metrics,) = (tmp_path / "out").glob("*/metrics.csv")
    epochs = [line for line in metrics.read_text().splitlines() if ",epoch," in line]
    assert epochs[:4] == [
        "1,epoch,0.25",
        "2,epoch,0.5",
        "3,epoch,0.75",
        "4,epoch,1.0",
    ]  # 32 rows = 4 steps of 8


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.skipif(not GLUE.is_dir(), reason=f"GLUE data not found at {GLUE} (../shared/data)")
@pytest.mark.parametrize(
    "launcher_name", ["parallel", pytest.param("submitit_local", marks=pytest.mark.slow)]
)
def test_mnli_first_rows_run_in_two_stages_under_any_launcher(launcher_name: str, tmp_path: Path) -> None:
    """`make glue-roberta TASKS=mnli,rte`: the MNLI stage completes before the RTE stage starts (one sweep each), so
    a launcher that runs a sweep's jobs at once still gives RTE its MNLI start, of the same seed and method config."""
    from tests.test_train import fake_mnli

    data = fake_mnli(tmp_path / "glue")
    (data / "RTE").symlink_to(GLUE / "RTE")
    extra = (
        f"model=tiny-roberta data_dir={data} task.max_train_samples=16 task.max_eval_samples=8 train.epochs=1 "
        f"train.batch_size=8 train.progress=false device=cpu results_dir={tmp_path / 'runs'} "
        f"output_dir={tmp_path / 'out'} hydra.sweep.dir={tmp_path / 'sweep'}"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "MAKEFLAGS", "MAKELEVEL")}
    env |= {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        ["make", "glue-roberta", "TASKS=mnli,rte", "SEEDS=0,1", "METHODS=lora", f"LAUNCHER={launcher_name}",
         f"VENV={Path(sys.executable).parent.parent}", f"EXTRA={extra}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    assert proc.stdout.index("stage 1: mnli") < proc.stdout.index("stage 2 (from MNLI): rte")
    done = {(r.task, r.seed): r for r in records.load_records(tmp_path / "runs")}
    assert sorted(done) == [("mnli", 0), ("mnli", 1), ("rte", 0), ("rte", 1)]
    assert all(r.status == "complete" for r in done.values())
    for seed in (0, 1):  # each RTE run started from the MNLI run of its own seed
        rte, mnli = done["rte", seed], done["mnli", seed]
        assert rte.config["init"]["record"] == mnli.config_hash
        assert rte.effective["init"]["path"].endswith(
            f"{records.record_filename(mnli).removesuffix('.json')}/adapter"
        )
