"""The demo's table and verdict (lora/demo.py, experiments/demo.py) built from fixture run records."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lora import records
from lora.demo import LABELS, NLG_REFERENCE, NLG_TABLE, REFERENCE, RUNS_DIR, TABLE, demo_table, render

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = ["method", "trainable", "% of total", "peak memory (MiB)", "train time (s)", "accuracy (%)", "best epoch"]  # fmt: skip
BACKBONE = 22_713_216  # all-MiniLM-L6-v2's backbone; the head (768 x 2 + 2) comes on top


def write_demo_record(runs: Path, method: str, trainable: int, accuracy: float, *, experiment: str = "demo",
                      status: str = "complete", seed: int = 0, finished: str | None = None) -> records.RunRecord:  # fmt: skip
    """A record as `make demo` writes it: 100 MiB peak memory, 60 s of training, best epoch 3."""
    rec = records.new_record(
        {"method": method, "seed": seed}, experiment=experiment, model="minilm", task="polarity", method=method,
        seed=seed,
    )  # fmt: skip
    head = 768 * 2 + 2
    rec.params = {
        "trainable": trainable,
        "total": BACKBONE + head,
        "head": head,
        "adapter_bytes": 4 * trainable,
    }
    rec.memory = {"peak_bytes": 100 * 2**20, "kind": "cpu_rss"}
    rec.time = {"train_s": 60.04, "eval_s": 2.0, "samples_per_s": 210.0}
    for epoch in (1, 2, 3):
        rec.add_epoch(epoch, 100 * epoch, {"accuracy": accuracy - 0.01 * (3 - epoch), "eval_loss": 0.4}, 0.5)
    rec.best = records.best_epoch(rec.epochs, "accuracy")
    rec.finish(status, None if status == "complete" else "boom")
    if finished:
        rec.finished = finished
    records.write_record(rec, runs)
    return rec


def test_table_has_one_row_per_method_in_the_papers_order(tmp_path: Path) -> None:
    write_demo_record(tmp_path, "lora", 147_456, 0.80)
    write_demo_record(tmp_path, "full", BACKBONE, 0.81)
    write_demo_record(tmp_path, "bitfit", 102_144, 0.78)
    df = demo_table(tmp_path)
    assert list(df.columns) == COLUMNS
    assert list(df["method"]) == [LABELS["full"], LABELS["bitfit"], LABELS["lora"]]
    lora = df.iloc[2].to_dict()
    # 147,456 / 22,713,216 = 0.649% of the backbone (the head is not counted, as in the paper).
    assert lora == {"method": "LoRA (r=8, q,v)", "trainable": 147_456, "% of total": 0.649,
                    "peak memory (MiB)": 100, "train time (s)": 60.0, "accuracy (%)": 80.0, "best epoch": 3}  # fmt: skip
    assert df.iloc[0]["% of total"] == 100.0


def test_table_takes_the_newest_complete_demo_record_of_each_method(tmp_path: Path) -> None:
    write_demo_record(tmp_path, "lora", 100, 0.70, seed=1, finished="2026-01-01T00:00:00+00:00")
    write_demo_record(tmp_path, "lora", 100, 0.75, seed=2, finished="2026-02-01T00:00:00+00:00")  # newest
    write_demo_record(tmp_path, "lora", 100, 0.99, seed=3, status="failed")
    write_demo_record(tmp_path, "lora", 100, 0.98, seed=4, experiment="roberta_base_lora")
    df = demo_table(tmp_path)
    assert df["accuracy (%)"].tolist() == [75.0]


@pytest.mark.parametrize(
    ("lora_acc", "lora_trainable", "verdict", "gap"),
    [
        (0.795, 147_456, "holds", "-1.50"),  # 1.5 points behind at 0.649%
        (0.83, 147_456, "holds", "+2.00"),  # ahead
        (0.785, 147_456, "does NOT hold", "-2.50"),  # more than 2 points behind
        (0.81, 454_264, "does NOT hold", "+0.00"),  # 2.000% of the parameters: not "well under 1%"
    ],
)
def test_render_checks_the_papers_claim_from_the_numbers(
    tmp_path: Path, lora_acc: float, lora_trainable: int, verdict: str, gap: str
) -> None:
    write_demo_record(tmp_path, "full", BACKBONE, 0.81)
    write_demo_record(tmp_path, "lora", lora_trainable, lora_acc)
    text = render(demo_table(tmp_path), tmp_path)
    pct = 100 * lora_trainable / BACKBONE
    line = next(line for line in text.splitlines() if line.startswith("LoRA − full fine-tuning"))
    assert line == (
        f"LoRA − full fine-tuning: {gap} points at {pct:.3f}% of the parameters trained: the paper's claim "
        f"(within 2 points at well under 1%) {verdict} here."
    )
    assert re.search(r"^\| LoRA \(r=8, q,v\) +\| +\d+ \|", text, re.M) and f"`{tmp_path}`" in text


def test_render_without_both_full_and_lora_has_no_verdict(tmp_path: Path) -> None:
    write_demo_record(tmp_path, "bitfit", 102_144, 0.78)
    write_demo_record(tmp_path, "lora", 147_456, 0.80)
    text = render(demo_table(tmp_path), tmp_path)
    assert "Adapter" not in text and "BitFit" in text
    assert "hold" not in text


def test_no_demo_records_names_the_make_target(tmp_path: Path) -> None:
    write_demo_record(tmp_path, "lora", 100, 0.7, experiment="roberta_base_lora")  # not a demo record
    with pytest.raises(FileNotFoundError, match="make demo"):
        demo_table(tmp_path)


def test_a_missing_runs_directory_names_the_make_target(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="make demo"):
        demo_table(tmp_path / "results" / "demo" / "runs")


def test_demo_script_writes_the_table(tmp_path: Path) -> None:
    runs, out = tmp_path / "runs", tmp_path / "table.md"
    write_demo_record(runs, "full", BACKBONE, 0.81)
    write_demo_record(runs, "lora", 147_456, 0.80)
    done = subprocess.run(
        [sys.executable, "experiments/demo.py", str(runs), str(out)], cwd=ROOT, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert out.read_text() == render(demo_table(runs), str(runs))
    assert f"wrote {out}" in done.stdout


def test_demo_script_without_records_is_one_error_line(tmp_path: Path) -> None:
    tmp_path.joinpath("runs").mkdir()
    done = subprocess.run(
        [sys.executable, "experiments/demo.py", str(tmp_path / "runs"), str(tmp_path / "t.md")], cwd=ROOT,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "make demo" in done.stderr and "Traceback" not in done.stderr


# ------------------------------------------------------------------- a fresh clone's `make demo` always trains


def git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def composed_results_dir(experiment: str) -> str:
    from hydra import compose, initialize_config_dir

    import lora.config  # noqa: F401  (the config schema and the `by` resolver)

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return str(compose("config", overrides=[f"experiment={experiment}"]).results_dir)


def make_n(target: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "EXTRA")}
    done = subprocess.run(["make", "-n", "--no-print-directory", target], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60, check=True)  # fmt: skip
    return done.stdout


needs_git_and_make = pytest.mark.skipif(
    shutil.which("git") is None or shutil.which("make") is None or not (ROOT / ".git").exists(),
    reason="needs git, make and a git checkout",
)


@needs_git_and_make
@pytest.mark.parametrize(
    ("target", "experiment", "table"), [("demo", "demo", TABLE), ("demo-nlg", "demo_nlg", NLG_TABLE)]
)
def test_a_fresh_clone_has_no_demo_record_to_skip_on(target: str, experiment: str, table: str) -> None:
    # A run skips when a complete record with its config hash is in its results_dir: if that folder held committed
    # records, a fresh clone's `make demo` would print the committed table without training. The records must go to
    # a folder git ignores, with nothing tracked under it, and the table script must read that same folder.
    runs = composed_results_dir(experiment)
    assert runs == RUNS_DIR
    assert not Path(runs).is_absolute() and ".." not in Path(runs).parts
    assert git("check-ignore", "-q", f"{runs}/x.json").returncode == 0, f"{runs} is not ignored by git"
    assert git("check-ignore", "-q", table).returncode == 0, f"{table} is not ignored by git"
    tracked = git("ls-files", "--", runs, str(Path(table).parent))
    assert tracked.returncode == 0 and tracked.stdout == "", f"tracked files under {runs}: {tracked.stdout}"
    script = make_n(target)
    trains = [line for line in script.splitlines() if f"experiments/train.py experiment={experiment}" in line]
    assert trains and all("results_dir=" not in line for line in trains)  # the experiment's own results_dir
    (table_line,) = [line for line in script.splitlines() if "experiments/demo.py" in line]
    args = shlex.split(table_line)[2:]  # no RUNS_DIR / OUT: the defaults, RUNS_DIR and the table above
    assert args == (["nlg"] if experiment == "demo_nlg" else [])


def test_the_committed_demo_tables_are_labelled_references() -> None:
    for name in (REFERENCE, NLG_REFERENCE):
        text = (ROOT / name).read_text()
        first = text.splitlines()[0]
        assert "earlier run, not yours" in first
        assert "Machine:" in text and "Command: `make demo" in text and "outputs/demo/table" in text
    assert not (ROOT / "results" / "demo" / "runs").exists()
    for old in ("table.md", "table_nlg.md"):
        assert not (ROOT / "results" / "demo" / old).exists()


def test_the_demo_script_defaults_to_the_ignored_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # experiments/demo.py with no arguments reads RUNS_DIR and writes TABLE, relative to where it runs.
    monkeypatch.chdir(tmp_path)
    write_demo_record(tmp_path / RUNS_DIR, "full", BACKBONE, 0.81)
    write_demo_record(tmp_path / RUNS_DIR, "lora", 147_456, 0.80)
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "demo.py")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = tmp_path / TABLE
    assert out.read_text() == render(demo_table(RUNS_DIR), RUNS_DIR)
    assert f"wrote {TABLE}" in done.stdout and REFERENCE in out.read_text()
