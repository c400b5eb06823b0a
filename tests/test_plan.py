"""The sweep plan (lora/plan.py, experiments/plan.py, `make plan`): rows read from the Makefile's sweeps and composed
from the experiment files, steps per run from the training-set sizes and the global batch, step times measured (tiny
models here) or reused from a report, and the report with its CSV. No speed is asserted."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from lora import plan

ROOT = Path(__file__).resolve().parent.parent
needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
QUIET = lambda s: None  # noqa: E731


@pytest.fixture
def knobs(monkeypatch: pytest.MonkeyPatch):
    """Set the Makefile's sweep knobs through the environment, as `make plan SEEDS=0 ...` passes them on."""
    for k in ("TASKS", "SEEDS", "METHODS", "EXTRA", "MODEL", "TASK", "LAUNCHER", "MAKEFLAGS", "MFLAGS"):
        monkeypatch.delenv(k, raising=False)
    return lambda **kw: [monkeypatch.setenv(k, v) for k, v in kw.items()]


def test_every_task_has_a_training_size_with_its_source() -> None:
    tasks = {p.stem for p in (ROOT / "conf" / "task").glob("*.yaml")}
    assert tasks <= set(plan.TRAIN_SIZES)
    assert all(n > 0 and src for n, src in plan.TRAIN_SIZES.values())
    local = ROOT.parent / "shared" / "data" / "glue" / "RTE" / "train.tsv"
    if local.is_file():  # the local copy agrees (header line excluded)
        assert len(local.read_text().splitlines()) - 1 == plan.TRAIN_SIZES["rte"][0]


@needs_make
def test_glue_rows_follow_the_experiment_files(knobs) -> None:
    knobs(SEEDS="0,1", TASKS="rte,mnli")
    rows = {(r.experiment, r.task): r for r in plan.sweep_rows("glue-roberta", log=QUIET)}
    assert len(rows) == 10 and all(r.seeds == 2 for r in rows.values())  # 5 methods x 2 tasks, 2 seeds each
    rte, mnli = rows["roberta_base_lora", "rte"], rows["roberta_base_lora", "mnli"]
    # conf/experiment/roberta_base_lora.yaml: RTE global batch 32 x 8 processes = 256, 80 epochs; MNLI 16 x 8, 30.
    assert (rte.shape.batch, rte.shape.seq, rte.epochs) == (256, 512, 80.0)
    assert rte.steps == 80 * math.ceil(2_490 / 256) == 800
    assert mnli.steps == 30 * math.ceil(392_702 / 128) == 92_040
    assert json.loads(rte.shape.method_cfg)["r"] == 8 and rte.shape.method == "lora"


@needs_make
def test_nlg_and_rank_sweeps(knobs) -> None:
    knobs(SEEDS="0", E2E_RANKS="1,4")
    rows = plan.sweep_rows("ablation-rank-e2e", log=QUIET)
    assert [r.overrides for r in rows] == ["method.r=1", "method.r=4"]
    assert len({r.shape.method_cfg for r in rows}) == 2 and all(r.task == "e2e" for r in rows)
    assert rows[0].steps == 5 * math.ceil(42_061 / 8) == 26_290  # the released trainer ends at step 26,289


def test_steps_per_run_honours_max_steps() -> None:
    shape = plan.Shape("tiny-roberta", "classification", "lora", "{}", 16, 8, False)
    row = plan.Row("s", "e", "rte", "", 1, shape, epochs=2.5, max_steps=-1, train_size=100)
    assert row.steps_per_run() == math.ceil(2.5 * 13) == 33
    row.max_steps = 7
    assert row.steps_per_run() == 7


@pytest.mark.parametrize("method,cfg", [("lora", {"r": 4, "alpha": 8.0, "targets": ["q", "v"]}),
                                        ("adapter_d", {"bottleneck": 4, "drop_layers": 1})])  # fmt: skip
def test_measure_full_and_depth_fit(method: str, cfg: dict) -> None:
    from dataclasses import asdict

    from lora import methods

    method_cfg = json.dumps(asdict(methods.method_config(method, **cfg)), sort_keys=True)
    shape = plan.Shape("tiny-roberta", "classification", method, method_cfg, 16, 4, False)
    cpu = torch.device("cpu")
    full = plan.measure(shape, cpu, steps=1, fit=False, log=QUIET)
    fit = plan.measure(shape, cpu, steps=1, fit=True, micro=1, log=QUIET)
    assert full.seconds > 0 and full.how == "2 layers, 1 x micro-batch 4"
    depths = (2, 4) if method == "adapter_d" else (1, 3)  # past AdapterDrop's dropped layer
    assert fit.how == f"depth fit ({depths[0]}, {depths[1]} -> 2 layers), 4 x micro-batch 1"
    assert fit.seconds > 0 and set(fit.parts) == {f"{p}_L{d}" for p in ("fb", "opt") for d in depths}


@needs_make
def test_plan_cli_writes_report_and_reuses_it(tmp_path: Path, knobs, monkeypatch: pytest.MonkeyPatch) -> None:
    knobs(SEEDS="0,1", TASKS="rte", EXTRA="model=tiny-roberta train.max_length=16")
    out = tmp_path / "plan.md"
    env = dict(os.environ)
    cmd = [
        sys.executable,
        "experiments/plan.py",
        "--sweeps",
        "glue-roberta",
        "--device",
        "cpu",
        "--steps",
        "1",
    ]
    done = subprocess.run(
        [*cmd, "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "glue-roberta" in done.stdout.splitlines()[-1] and "10 runs" in done.stdout
    text = out.read_text()
    assert (
        "# Sweep plan: device-hours of every sweep target on cpu" in text
        and "Made by: `python experiments/plan.py" in text
    )
    csv = pd.read_csv(out.with_suffix(".csv"))
    assert set(csv["table"]) == {"sweeps", "runs", "shapes", "sizes"}
    runs = csv[csv["table"] == "runs"]
    assert len(runs) == 5 and (runs["seeds"] == 2).all()
    hours = runs["seeds"] * runs["steps_per_run"] * runs["step_s"] / 3600
    assert runs["device_hours"].to_numpy() == pytest.approx(hours.to_numpy())
    # --from-report: the same rows, no measuring
    monkeypatch.setattr(plan, "measure", lambda *a, **k: (_ for _ in ()).throw(AssertionError("measured")))
    again = plan.make_plan(["glue-roberta"], device="cpu", from_report=out.with_suffix(".csv"), log=QUIET)
    assert again.sweep_hours()["glue-roberta"][2] == pytest.approx(
        csv[csv["table"] == "sweeps"]["device_hours"].iloc[0]
    )
    assert again.reused == set(again.times)


def test_unknown_sweep_and_missing_report() -> None:
    with pytest.raises(ValueError, match="unknown sweep 'glue-gpt5'"):
        plan.make_plan(["glue-gpt5"], device="cpu", log=QUIET)
    with pytest.raises(FileNotFoundError, match="--from-report"):
        plan.read_times(Path("/nonexistent/plan.csv"))


@needs_make
def test_make_plan_target_runs_experiments_plan() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    done = subprocess.run(["make", "-n", "--no-print-directory", "plan", "PLAN_ARGS=--device cuda"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    assert any(line.endswith("experiments/plan.py --device cuda") for line in done.stdout.splitlines())
