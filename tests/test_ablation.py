"""Tables 5-6 ablations (budget, experiment configs, summaries) and the Sec. 7 analysis inputs (lora/ablation.py,
experiments/analysis.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

import lora.config  # noqa: F401  (registers the config schema and the `by` resolver)
from lora import ablation, methods
from lora.analysis import lora_factors
from lora.config import validate
from lora.models import build_model
from lora.records import load_records

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "notebook_records"


# ------------------------------------------------------------------------------------------------------ budget


def test_table5_ranks_spend_one_budget_on_roberta_base() -> None:
    # 147,456 = r 8 x (A 768 + B 768) x 12 layers: LoRA on W_q alone, the budget every Table 5 column shares.
    counts = {exp: ablation.lora_trainable("roberta-base", roles, ablation.TABLE5_RANKS[exp])
              for exp, roles in ablation.TARGET_SETS.items()}  # fmt: skip
    assert set(counts.values()) == {147_456}
    assert ablation.budget_ranks("roberta-base") == ablation.TABLE5_RANKS == {
        "targets_q": 8, "targets_k": 8, "targets_v": 8, "targets_o": 8, "targets_qk": 4, "targets_qv": 4,
        "targets_qkvo": 2,
    }  # fmt: skip


def test_a_budget_that_is_not_a_whole_rank_is_refused() -> None:
    # tiny-llama has grouped-query attention: k is 16 wide, so one rank of k costs 2 x (32 + 16) = 96 parameters,
    # and W_q's r = 8 budget (2 layers x 8 x (32 + 32) = 1,024) is no whole rank of k.
    assert ablation.lora_trainable("tiny-llama", ("q",), 8) == 1024
    with pytest.raises(ValueError, match="one rank costs 96"):
        ablation.rank_for_budget("tiny-llama", ("k",), 1024)


def test_paper_tables_5_and_6_name_our_experiments_and_ranks() -> None:
    t5 = pd.read_csv(ROOT / "results" / "paper" / "table5_targets.csv")
    t6 = pd.read_csv(ROOT / "results" / "paper" / "table6_rank.csv")
    assert dict(zip(t5["experiment"], t5["r"], strict=True)) == ablation.TABLE5_RANKS
    assert tuple(t6["experiment"].unique()) == ablation.RANK_EXPERIMENTS
    assert tuple(sorted(t6["r"].unique())) == ablation.RANK_SWEEP


# ----------------------------------------------------------------------------------------------------- configs


def _compose(*overrides: str):  # noqa: ANN202  (a DictConfig)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("experiment", list(ablation.TARGET_SETS))
def test_experiment_configs_compose_with_their_targets_and_rank(experiment: str) -> None:
    cfg = _compose(f"experiment={experiment}", "task=sst2", "model=tiny-roberta")
    spec = validate(cfg)
    assert (spec.cfg.experiment, spec.cfg.model.name, spec.cfg.task.name) == (
        experiment,
        "tiny-roberta",
        "sst2",
    )
    assert spec.method == "lora" and spec.cfg.init_from is None
    assert spec.method_cfg.targets == list(ablation.TARGET_SETS[experiment])
    assert spec.method_cfg.r == ablation.TABLE5_RANKS[experiment] and spec.method_cfg.alpha == 8


def test_experiment_defaults_to_roberta_base_on_mnli_and_takes_a_rank_override() -> None:
    spec = validate(_compose("experiment=targets_qkvo", "method.r=64"))
    assert (spec.cfg.model.name, spec.cfg.task.name, spec.method_cfg.r) == ("roberta-base", "mnli", 64)
    assert (spec.cfg.train.lr, spec.cfg.train.epochs) == (5e-4, 30)  # Table 9, RoBERTa-base MNLI


# --------------------------------------------------------------------------------------------------- summaries


def test_summary_and_markdown_of_the_fixture_records() -> None:
    summary = ablation.summarise(load_records(FIXTURE / "runs"))
    assert len(summary) == 19  # 21 records; targets_qv r=4 and r=16 have two seeds each
    qv4 = summary[(summary["experiment"] == "targets_qv") & (summary["r"] == 4)].iloc[0]
    assert (qv4["n"], qv4["seeds"], qv4["trainable"], qv4["score"]) == (2, [0, 1], 1024, 50.0)
    assert summary.loc[summary["method"] == "full", "r"].iloc[0] is None
    text = ablation.ablation_markdown(summary)
    assert "| W_q, W_v | 4 | 1,024 | 50.0 ±0.0 [2] |" in text
    assert "| W_q, W_k, W_v, W_o | 50.0 [1] | 50.0 [1] | 50.0 [1] | – | 50.0 [1] | – |" in text


# ---------------------------------------------------------------------------------------------------- analysis


def test_base_matrix_of_gpt2_is_the_transposed_slice_that_lora_factors_name(randomize_lora: Callable) -> None:
    model = build_model("tiny-gpt2", "causal_lm")
    methods.apply(model, "lora", methods.method_config("lora", r=2, alpha=4, targets=["q", "v"]))
    randomize_lora(model)
    factors = lora_factors(dict(model.named_parameters()))
    key, W = ablation.base_matrix(build_model("tiny-gpt2", "base"), "v", 1)
    assert key == "h.1.attn.c_attn.v" and W.shape == (32, 32)
    fused = model.transformer.h[
        1
    ].attn.c_attn  # Conv1D weight (d_in, 3d) = (32, 96); v = output columns 64..96
    torch.testing.assert_close(W, fused.weight.detach().T[64:96])
    A, B = ablation._factor(factors, key, Path("x"))
    torch.testing.assert_close(fused.delta().detach().T[64:96], B.detach() @ A.detach() * 2.0)


def test_subspace_study_of_the_fixture_adapters() -> None:
    src = ablation.find_study_adapters(FIXTURE / "runs", r_small=4, r_large=16, root=ROOT)
    assert (src.model, src.source) == ("tiny-roberta", "targets_qv / tiny-roberta / rte")
    study = ablation.subspace_study(src)
    assert (study.layer, study.n_layers, study.r_small, study.r_large) == (1, 2, 4, 16)
    assert [g.shape for g in study.fig3.values()] == [(4, 16), (4, 16), (4, 4), (4, 4), (4, 16)]
    assert [g.shape for g in study.fig4.values()] == [(16, 16)] * 3
    assert all(((g >= -1e-12) & (g <= 1 + 1e-12)).all() for g in [*study.fig3.values(), *study.fig4.values()])
    assert [(row["label"], row["r"]) for row in study.table7] == [
        ("ΔW_q, layer 1", 4), ("ΔW_q, layer 1", 16), ("ΔW_v, layer 1", 4), ("ΔW_v, layer 1", 16),
    ]  # fmt: skip
    assert all(np.isfinite(row["amplification"]) and row["norm_dW"] > 0 for row in study.table7)


def test_missing_adapters_name_the_make_target(tmp_path: Path) -> None:
    shutil.copytree(FIXTURE / "runs", tmp_path / "runs")
    with pytest.raises(FileNotFoundError, match=r"r=64 seed 0, r=64 seed 1 .*make ablation-rank"):
        ablation.find_study_adapters(tmp_path / "runs", r_small=4, r_large=64)
    with pytest.raises(
        FileNotFoundError, match=r"adapter of .* is missing .*save_adapter=true force=true added"
    ):
        ablation.find_study_adapters(
            tmp_path / "runs", r_small=4, r_large=16, root=tmp_path
        )  # no adapters there


def test_analysis_cli_without_records_is_one_line_naming_the_make_target(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run(
        [sys.executable, "experiments/analysis.py", f"runs_dir={tmp_path / 'none'}", f"out_dir={tmp_path}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: no run records")
    assert "make ablation-rank RANK_EXPS=targets_qv RANKS=8,64 SEEDS=0,1" in proc.stderr


def test_ablation_report_has_a_csv_beside_its_markdown(tmp_path: Path) -> None:
    summary = ablation.summarise(load_records(FIXTURE / "runs"))
    md, csv = ablation.write_report(
        summary, tmp_path / "analysis" / "ablations.md", header="# Tables 5-6\n\n"
    )
    assert (md.name, csv.name) == ("ablations.md", "ablations.csv")
    assert md.read_text().startswith("# Tables 5-6\n\n## tiny-roberta on rte")
    table = pd.read_csv(csv)
    assert list(table.columns) == list(ablation.SUMMARY_COLUMNS) and len(table) == len(summary) == 19
    qv4 = table[(table["experiment"] == "targets_qv") & (table["r"] == 4)].iloc[0]
    assert (qv4["seeds"], qv4["n"], qv4["score"]) == ("0 1", 2, 50.0)
