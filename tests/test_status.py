"""`make status` (lora/status.py, experiments/status.py): per table, runs by status and cells still missing."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from lora.records import RunRecord, config_hash, write_record
from lora.status import NO_TABLE, STATUS_COLUMNS, counts, status_frame, status_text

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "results" / "paper"
FIXTURES = ROOT / "tests" / "fixtures" / "records"
RTE1 = "roberta_base_lora__rte__lora__s1__c5802e408b.json"


def row(table: pd.DataFrame, name: str) -> dict:
    return table.set_index("table").loc[name].to_dict()


def test_status_of_the_fixture_records() -> None:
    table, skipped = status_frame(FIXTURES, PAPER)
    assert list(table.columns) == list(STATUS_COLUMNS) and skipped == []
    assert list(table["table"]) == [
        "table2", "table3", "table13", "table14", "table5", "table6", "table18", NO_TABLE,
    ]  # fmt: skip
    # Table 2: 3 complete RTE seeds, 1 diverged; 14 rows x 8 tasks, RTE of roberta_base_lora filled
    assert row(table, "table2") == {
        "complete": 3, "failed": 0, "diverged": 1, "oom": 0, "running": 0, "missing": 111, "cells": 112,
    }  # fmt: skip
    assert (row(table, "table3")["complete"], row(table, "table3")["missing"], row(table, "table3")["cells"]) == (
        3, 11, 12,
    )  # fmt: skip
    assert row(table, "table18")["complete"] == 3 and row(table, "table18")["missing"] == 10
    assert row(table, "table13")["complete"] == 0 and row(table, "table13")["missing"] == 11
    assert pd.isna(row(table, NO_TABLE)["missing"])


def _write(runs: Path, src: str, **fields: object) -> None:
    rec = RunRecord.from_json((FIXTURES / src).read_text())
    cfg = copy.deepcopy(rec.config)
    cfg["lr"] = fields.pop("lr", cfg.get("lr"))
    for k, v in fields.items():
        setattr(rec, k, v)
    rec.config, rec.config_hash = cfg, config_hash(cfg)
    write_record(rec, runs)


def test_running_failed_oom_and_unplaced_runs_are_counted(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(FIXTURES, runs)
    _write(runs, RTE1, seed=7, lr=1.0, status="running", finished=None, best=None, params=None, memory=None,
           time=None)  # fmt: skip
    _write(runs, RTE1, seed=8, lr=2.0, status="oom", reason="out of memory", best=None)
    _write(runs, RTE1, seed=9, lr=3.0, status="failed", reason="ValueError: x", best=None)
    _write(runs, RTE1, experiment="my_idea", lr=4.0)
    (runs / "broken.json").write_text("{")
    table, skipped = status_frame(runs, PAPER)
    assert row(table, "table2") == {
        "complete": 3, "failed": 1, "diverged": 1, "oom": 1, "running": 1, "missing": 111, "cells": 112,
    }  # fmt: skip
    assert row(table, NO_TABLE)["complete"] == 1  # my_idea fills no table
    assert len(skipped) == 1 and "broken.json" in skipped[0]
    assert counts(runs) == {"running": 1, "complete": 7, "diverged": 1, "oom": 1, "failed": 1}
    text = status_text(runs, PAPER)
    assert text.startswith(f"11 runs under {runs} (copies of one run count once): 7 complete, 1 failed, ")
    assert "Unreadable files skipped: 1" in text


def test_copies_of_one_run_count_once(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(FIXTURES, runs / "a")
    shutil.copytree(FIXTURES, runs / "b")
    assert row(status_frame(runs, PAPER)[0], "table2")["complete"] == 3


def test_status_script_prints_the_table_and_refuses_unknown_arguments(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "experiments/status.py", f"runs_dir={FIXTURES}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == (
        f"7 runs under {FIXTURES} (copies of one run count once): 6 complete, 0 failed, 1 diverged, 0 oom, 0 running"
    )
    assert lines[2].split() == [
        "table",
        "complete",
        "failed",
        "diverged",
        "oom",
        "running",
        "missing",
        "cells",
    ]
    assert lines[3].split() == ["table2", "3", "0", "1", "0", "0", "111", "112"]
    missing = subprocess.run(
        [sys.executable, "experiments/status.py", f"runs_dir={tmp_path / 'none'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert missing.returncode == 0 and missing.stdout.startswith("No run records:")
    bad = subprocess.run(
        [sys.executable, "experiments/status.py", "runs=x"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown argument 'runs=x'")
