"""Tables from fixture records (tests/fixtures/records) and the paper's CSVs (results/paper)."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pandas as pd
import pytest

from lora.ablation import summarise
from lora.records import METRIC_KEYS, RunRecord, config_hash, load_records, write_record
from lora.tables import (
    FRAME_COLUMNS,
    TABLES,
    _tex,
    build,
    latest,
    load_paper,
    main,
    record_rank,
    records_frame,
)

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "results" / "paper"
FIXTURES = Path(__file__).parent / "fixtures" / "records"

# The fixtures hold 3 seeds of roberta_base_lora on RTE (accuracy .85/.87/.86), one diverged 4th seed, and
# 3 seeds of gpt2_medium_e2e_lora on E2E (BLEU .70/.71/.69, NIST 8.8/8.9/8.7). Median and sample std (ddof=1)
# by hand: RTE 86.0 ± 1.0, BLEU 70.0 ± 1.0, NIST 8.8 ± 0.1.


def paper(csv: str) -> pd.DataFrame:
    return pd.read_csv(PAPER / csv)


def cell(df: pd.DataFrame, **where: object) -> pd.Series:
    hit = df
    for k, v in where.items():
        hit = hit[hit[k] == v]
    assert len(hit) == 1, f"{len(hit)} rows match {where}"
    return hit.iloc[0]


# ------------------------------------------------------------------------------------------------- paper CSVs


def test_paper_values_transcribed() -> None:
    t2 = paper("table2_glue.csv")
    assert cell(t2, experiment="roberta_base_lora", task="rte")["value"] == 86.6
    assert cell(t2, experiment="roberta_base_lora", task="rte")["spread"] == 0.7
    assert cell(t2, experiment="deberta_xxl_ft", task="cola")["value"] == 72.0
    assert cell(t2, experiment="roberta_large_adpth_6m", task="stsb")["note"] == "†"
    t3 = paper("table3_e2e.csv")
    lora = cell(t3, experiment="gpt2_medium_e2e_lora", metric="bleu")
    assert (lora["value"], lora["spread"], lora["scale"], lora["r"]) == (70.4, 0.1, 100, 4)
    assert cell(t3, experiment="gpt2_large_e2e_lora", metric="cider")["value"] == 2.47
    t14 = paper("table14_webnlg.csv")
    assert cell(t14, experiment="gpt2_medium_webnlg_lora", metric="bleu_unseen")["value"] == 46.7
    assert cell(t14, experiment="gpt2_large_webnlg_ft", metric="ter_unseen")["value"] == 0.53
    assert cell(paper("table13_dart.csv"), experiment="gpt2_large_dart_lora", metric="bleu")["value"] == 47.5
    assert cell(paper("table18_e2e_rank.csv"), r=4, metric="bleu")["value"] == 70.38
    assert cell(paper("table5_targets.csv"), experiment="targets_qkvo", task="mnli")["r"] == 2
    assert cell(paper("table6_rank.csv"), experiment="targets_qv", r=64, task="wikisql")["value"] == 73.5
    hp = paper("table9_roberta.csv")
    lr = cell(hp, experiment="roberta_large_lora", task="stsb", hyperparameter="learning_rate")
    assert (lr["value"], lr["code_value"]) == (2e-4, 3e-4)
    assert cell(paper("table10_deberta.csv"), task="qqp", hyperparameter="max_seq_length")["value"] == 320


def test_paper_experiment_names() -> None:
    assert list(dict.fromkeys(paper("table2_glue.csv")["experiment"])) == [
        "roberta_base_ft", "roberta_base_bitfit", "roberta_base_adptd_0.3m", "roberta_base_adptd_0.9m",
        "roberta_base_lora", "roberta_large_ft", "roberta_large_lora", "roberta_large_adptp_3m",
        "roberta_large_adptp_0.8m", "roberta_large_adpth_6m", "roberta_large_adpth_0.8m",
        "roberta_large_lora_houlsby", "deberta_xxl_ft", "deberta_xxl_lora",
    ]  # fmt: skip
    assert list(dict.fromkeys(paper("table3_e2e.csv")["experiment"])) == [
        "gpt2_medium_e2e_ft", "gpt2_medium_e2e_adapter_l_0.37m", "gpt2_medium_e2e_adapter_l_11m",
        "gpt2_medium_e2e_adapter_h_11m", "gpt2_medium_e2e_ft_top2", "gpt2_medium_e2e_prefix_layer",
        "gpt2_medium_e2e_lora", "gpt2_large_e2e_ft", "gpt2_large_e2e_adapter_l_0.88m",
        "gpt2_large_e2e_adapter_l_23m", "gpt2_large_e2e_prefix_layer", "gpt2_large_e2e_lora",
    ]  # fmt: skip
    for csv, task in (("table13_dart.csv", "dart"), ("table14_webnlg.csv", "webnlg")):
        exps = set(paper(csv)["experiment"])
        assert {f"gpt2_medium_{task}_adapter_l_11m", f"gpt2_large_{task}_adapter_l_23m"} <= exps
        assert all(e.startswith(("gpt2_medium_", "gpt2_large_")) and f"_{task}_" in e for e in exps)
    assert set(paper("table5_targets.csv")["experiment"]) == {
        f"targets_{t}" for t in ("q", "k", "v", "o", "qk", "qv", "qkvo")
    }


@pytest.mark.parametrize("spec", TABLES, ids=lambda s: s.name)
def test_paper_tables_parse(spec) -> None:
    df = load_paper(PAPER, spec.csv)
    assert df["value"].notna().all()
    assert not df.duplicated(["row", "task", "metric"]).any()
    assert set(df["metric"]) - {"avg"} <= METRIC_KEYS
    assert (df.groupby("row")["experiment"].nunique() == 1).all()


def test_paper_averages_and_overheads_are_consistent() -> None:
    # Transcription checks: Table 2's Avg is the mean of its 8 columns (to the printed rounding), and
    # Table 1's (+x%) is the adapter latency over the FT/LoRA latency.
    t2 = paper("table2_glue.csv")
    for _, g in t2.groupby("row"):
        avg = g.loc[g["task"] == "avg", "value"].item()
        assert abs(avg - g.loc[g["task"] != "avg", "value"].mean()) <= 0.051
    t1 = paper("table1_latency.csv")
    for _, g in t1.groupby("setting"):
        base = g.loc[g["method"] == "FT/LoRA", "value"].item()
        for _, row in g[g["method"] != "FT/LoRA"].iterrows():
            assert abs(100 * (row["value"] / base - 1) - row["overhead_pct"]) < 0.1


def test_missing_paper_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="paper table .*table2_glue.csv.* not found"):
        load_paper(tmp_path, "table2_glue.csv")


# ----------------------------------------------------------------------------------------------------- tables


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("built") / "results"
    main(FIXTURES, PAPER, out)
    return out


def test_fixture_cells(built: Path) -> None:
    t2 = pd.read_csv(built / "tables" / "table2.csv")
    rte = cell(t2, experiment="roberta_base_lora", task="rte")
    assert (rte["n"], rte["model"], rte["seeds"], rte["params"]) == (3, "roberta-base", "1 2 3", "0.29M")
    assert rte["ours"] == pytest.approx(86.0) and rte["ours_std"] == pytest.approx(1.0)
    assert (rte["paper"], rte["diff"]) == (86.6, pytest.approx(-0.6))
    mnli = cell(t2, experiment="roberta_base_lora", task="mnli")
    assert mnli["n"] == 0 and pd.isna(mnli["ours"]) and mnli["paper"] == 87.5
    assert pd.isna(cell(t2, experiment="roberta_base_lora", task="avg")["ours"])  # not all 8 tasks present
    t3 = pd.read_csv(built / "tables" / "table3.csv")
    bleu = cell(t3, experiment="gpt2_medium_e2e_lora", metric="bleu")
    assert (bleu["ours"], bleu["ours_std"], bleu["paper"]) == (pytest.approx(70.0), pytest.approx(1.0), 70.4)
    nist = cell(t3, experiment="gpt2_medium_e2e_lora", metric="nist")
    assert (nist["ours"], nist["ours_std"]) == (pytest.approx(8.8), pytest.approx(0.1))
    t18 = pd.read_csv(built / "tables" / "table18.csv")
    assert cell(t18, r=4, metric="bleu")["n"] == 3 and cell(t18, r=8, metric="bleu")["n"] == 0


def test_fixture_markdown(built: Path) -> None:
    md = (built / "tables" / "table2.md").read_text()
    assert "| 86.0 ±1.0 [3] / 86.6 (-0.6)" in md
    assert "| – / 87.5 " in md  # missing, beside the paper's value, never filled in
    assert "Built from 3 complete records" in md
    assert "roberta_base_lora / roberta-base / rte / seed 4: diverged: loss is NaN at step 7" in md
    assert "70.0 ±1.0 [3] / 70.4 (-0.4)" in (built / "tables" / "table3.md").read_text()
    empty = (built / "tables" / "table13.md").read_text()
    assert "No complete records for this table yet" in empty and "33 of 33 cells missing" in empty
    tex = (built / "tables" / "table2.tex").read_text()
    assert r"\toprule" in tex and r"86.0 $\pm$1.0 [3] / 86.6 (-0.6)" in tex and "roberta\\_base\\_lora" in tex


def test_readme_lists_tables_and_missing(built: Path) -> None:
    readme = (built / "README.md").read_text()
    title = "Table 2: GLUE dev (RoBERTa base/large, DeBERTa XXL)"
    assert f"| {title} | tables/table2.md .tex .csv | 3 | 1 | 125 / 126 |" in readme
    assert (
        "- roberta_base_lora / roberta-base / r=8: MNLI, SST-2, MRPC, CoLA, QNLI, QQP, STS-B, Avg" in readme
    )
    assert "- roberta_base_ft: all" in readme
    assert "Table 1: inference latency" in readme


def _variant(src: str, out: Path, **changes: object) -> RunRecord:
    """Copy a fixture record with changed config keys / fields, rehash it and write it to `out`."""
    rec = RunRecord.from_json((FIXTURES / src).read_text())
    cfg = copy.deepcopy(rec.config)
    for k, v in changes.items():
        if k in ("model", "seed", "experiment"):
            setattr(rec, k, v)
        if k == "r":
            cfg["method"]["r"] = v
        else:
            cfg[k] = v
    rec.config, rec.config_hash = cfg, config_hash(cfg)
    write_record(rec, out)
    return rec


RTE1 = "roberta_base_lora__rte__lora__s1__c5802e408b.json"
E2E1 = "gpt2_medium_e2e_lora__e2e__lora__s1__d2e9012f84.json"


def test_other_model_gets_its_own_row_and_mixed_configs_are_flagged(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(FIXTURES, runs)
    _variant(RTE1, runs, model="minilm")
    _variant(RTE1, runs, seed=5, lr=1e-3)  # same cell as the fixtures, but another learning rate
    _variant(E2E1, runs, r=8)  # Table 18 row r=8 only: Table 3's LoRA row is r=4
    _variant(RTE1, runs, experiment="my_idea")
    (runs / "broken.json").write_text("{")
    with pytest.warns(UserWarning, match="broken.json"):
        main(runs, PAPER, tmp_path / "out", figures=False)
    t2 = pd.read_csv(tmp_path / "out" / "tables" / "table2.csv")
    assert cell(t2, experiment="roberta_base_lora", task="rte", model="minilm")["n"] == 1
    assert cell(t2, experiment="roberta_base_lora", task="rte", model="roberta-base")["n"] == 4
    assert (
        "differ beyond the seed:\n- roberta_base_lora / roberta-base / r=8 / rte"
        in (tmp_path / "out" / "tables" / "table2.md").read_text()
    )
    t3 = pd.read_csv(tmp_path / "out" / "tables" / "table3.csv")
    assert cell(t3, experiment="gpt2_medium_e2e_lora", metric="bleu")["n"] == 3
    t18 = pd.read_csv(tmp_path / "out" / "tables" / "table18.csv")
    assert cell(t18, r=8, metric="bleu")["n"] == 1
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "## Records in no table\n\n- my_idea / roberta-base / rte / seed 1: complete" in readme
    assert "broken.json" in readme.split("## Unreadable files")[1]


def test_missing_runs_dir_gives_empty_tables(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="does not exist"):
        main(tmp_path / "no_runs", PAPER, tmp_path / "out", figures=False)
    t2 = pd.read_csv(tmp_path / "out" / "tables" / "table2.csv")
    assert (t2["n"] == 0).all() and len(t2) == 126


def test_record_rank_lookup() -> None:
    rec = RunRecord.from_json((FIXTURES / RTE1).read_text())
    assert record_rank(rec) == 8
    rec.config = {"model": {"adapter": {"r": 16}}}
    assert record_rank(rec) == 16
    rec.config = {"method": {"name": "ft"}}
    assert record_rank(rec) is None


def test_tex_escaping() -> None:
    assert _tex("a_b & 5% ±1 – x†") == r"a\_b \& 5\% $\pm$1 -- x$^\dagger$"
    assert _tex("50\\% {x}^2") == r"50\textbackslash{}\% \{x\}\^{}2"


# ------------------------------------------------------------------------------------------ the records frame


def test_records_frame_has_one_row_per_record_with_flattened_metrics() -> None:
    recs = load_records(FIXTURES)
    frame = records_frame(recs)
    assert len(frame) == 7 and list(frame.columns[: len(FRAME_COLUMNS)]) == list(FRAME_COLUMNS)
    rte = frame[frame["task"] == "rte"].set_index("seed")
    assert rte.loc[1, ["experiment", "model", "method", "r", "targets", "status", "metric"]].tolist() == [
        "roberta_base_lora", "roberta-base", "lora", 8, "", "complete", "accuracy",
    ]  # fmt: skip
    assert rte.loc[1, "best_accuracy"] == 0.85 and rte.loc[1, "trainable"] == 294_912
    assert (rte.loc[1, "peak_memory_bytes"], rte.loc[1, "train_s"], rte.loc[1, "best_epoch"]) == (
        1_000_000,
        1.5,
        1,
    )
    assert rte.loc[4, "status"] == "diverged" and rte.loc[4, "reason"] == "loss is NaN at step 7"
    assert pd.isna(rte.loc[4, "best_accuracy"]) and rte.loc[4, "peak_memory_bytes"] is None
    assert rte["setup_hash"].nunique() == 1 and rte["config_hash"].nunique() == 4  # seeds differ, setup not
    e2e = frame[frame["task"] == "e2e"]
    # no `last` in these records: the last checkpoint is their last evaluated epoch
    assert sorted(e2e["last_bleu"]) == sorted(e2e["best_bleu"]) == [0.69, 0.7, 0.71]
    assert (e2e["r"] == 4).all() and (e2e["metric"] == "bleu").all()


def test_records_frame_of_no_records_has_the_columns() -> None:
    frame = records_frame([])
    assert frame.empty and list(frame.columns) == list(FRAME_COLUMNS)


def test_latest_keeps_the_complete_copy_then_the_last_finished(tmp_path: Path) -> None:
    rec = RunRecord.from_json((FIXTURES / RTE1).read_text())
    failed = copy.deepcopy(rec)
    failed.status, failed.reason, failed.finished = "failed", "killed", "2099-01-01T00:00:00+00:00"
    later = copy.deepcopy(rec)
    later.finished = "2099-01-02T00:00:00+00:00"
    frame = records_frame([failed, rec, later])
    assert latest(frame).index.tolist() == [2]  # complete beats a later failure; the later complete copy wins
    assert latest(records_frame([rec, failed])).index.tolist() == [0]


def test_tables_and_ablation_summary_read_the_same_frame() -> None:
    recs = load_records(FIXTURES)
    summary = summarise(recs)
    rte = summary[(summary["experiment"] == "roberta_base_lora") & (summary["task"] == "rte")].iloc[0]
    assert (rte["n"], rte["seeds"], rte["score"], rte["r"]) == (3, [1, 2, 3], pytest.approx(86.0), 8)
    t2 = build(TABLES[0], load_paper(PAPER, "table2_glue.csv"), recs)
    cell2 = cell(t2.cells, experiment="roberta_base_lora", task="rte")
    assert (cell2["n"], cell2["ours"], cell2["seeds"]) == (3, pytest.approx(86.0), [1, 2, 3])
    assert cell2["values"] == pytest.approx([85.0, 87.0, 86.0])  # per seed, in the order of `seeds`


# ------------------------------------------------------------------------------------------------------ figures

PNG = b"\x89PNG\r\n\x1a\n"


def test_figures_of_the_fixture_records(built: Path) -> None:
    figures = built / "figures"
    assert sorted(p.name for p in figures.glob("*.png")) == ["table18.png", "table2.png", "table3.png"]
    assert sorted(p.name for p in (figures / "curves").glob("*.png")) == [
        "curves__gpt2_medium_e2e_lora__e2e__gpt2-medium__lora__r4.png",
        "curves__roberta_base_lora__rte__roberta-base__lora__r8.png",
    ]
    assert all(p.read_bytes().startswith(PNG) for p in figures.rglob("*.png"))
    readme = (built / "README.md").read_text()
    assert "- figures/table2.png" in readme and "- figures/curves/: 2 training-curve plots" in readme


def test_ablation_figures_and_no_figure_without_records(tmp_path: Path) -> None:
    runs = ROOT / "tests" / "fixtures" / "notebook_records" / "runs"
    written = main(runs, PAPER, tmp_path / "out")
    names = {p.name for p in written if p.parent.name == "figures"}
    assert names == {"table5.png", "table6.png"}  # Tables 2, 3, 18 have no records here: no figure, no error
    curves = {p.name for p in written if p.parent.name == "curves"}
    assert "curves__custom__rte__tiny-roberta__bitfit.png" in curves  # no rank: no r part
    assert "curves__targets_qv__rte__tiny-roberta__lora__r4.png" in curves


def test_figures_follow_the_records_and_can_be_skipped(tmp_path: Path) -> None:
    main(FIXTURES, PAPER, tmp_path / "out")
    assert (tmp_path / "out" / "figures" / "table2.png").is_file()
    with pytest.warns(UserWarning, match="does not exist"):
        main(tmp_path / "no_runs", PAPER, tmp_path / "out")  # the records are gone: so are their figures
    assert not list((tmp_path / "out" / "figures").rglob("*.png"))
    main(FIXTURES, PAPER, tmp_path / "plain", figures=False)
    assert not (tmp_path / "plain" / "figures").exists()
