"""The paper's result tables, rebuilt from run records (`lora.records`) and the paper's numbers
(results/paper/*.csv).

A cell aggregates over seeds (`Spec.aggregate`: median or mean) one checkpoint's metric (`Spec.select`: the
best or the last epoch of each run) of the COMPLETE records of one (experiment, model, r) and task, with the
sample standard deviation (ddof=1; none for a single seed) and the number of seeds, beside the paper's value and
the difference (ours - paper), all on the paper's printed scale (percent for GLUE and BLEU). Each table follows
the paper's text: GLUE (Table 2, Appendix D.1): best epoch, median over 5 seeds; NLG (Tables 3, 13, 14, Table 11's
caption): best epoch, mean over 3 seeds; Table 18: "after 26,000 steps", the last epoch. Footnotes say which.
Nothing is filled in: a cell without a complete record is "–", and diverged/oom/failed/running records are
listed under their table with their reason.

Usage: `python -m lora.tables --runs results/runs --paper results/paper --out results`, which writes
`results/tables/<table>.{md,tex,csv}`, the figures under `results/figures/` (`lora.plots.write_figures`) and
`results/README.md`. Every table, summary, figure and status report reads records through `records_frame`.
"""

from __future__ import annotations

import argparse
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lora.errors import ConfigError, InputNotFound
from lora.records import (
    FAILED,
    IGNORED_KEYS,
    PRIMARY_METRIC,
    RecordWarning,
    RunRecord,
    config_hash,
    load_records,
)

MISSING = "–"
SYMBOLS = ("*", "†")  # the paper's marks: numbers from prior work, Houlsby-style setup


SELECT = ("best", "last")
AGGREGATE = ("median", "mean")

_E2E_SCORER = (
    "Scorer: the E2E challenge's measure_scores.py metrics, in-process (lora.metrics.nlg), against the paper's "
    "own reference files (e2e/lora_format) unless a record says task.references=official."
)
_GENEVAL_SCORER = (
    "Scorer: the released pipeline (gpt2_decode.py --tokenize --lower --ref_num 6, then the WebNLG challenge's "
    "GenerationEval: multi-bleu-detok BLEU, METEOR 1.5 -norm, TER = mean over sentences of the min over "
    "references), in-process (lora.metrics.webnlg_eval), without the empty last segment that makes the released "
    "pipeline print METEOR -1."
)


# What our run of a paper row is, where the paper does not say (conf/method/ and conf/experiment/ comments).
ROW_NOTES: dict[str, str] = {
    "roberta_base_adptd_0.9m": (
        "AdptD* is cited from Rücklé et al. (2020); we count the 0.9M row as AdapterDrop's Pfeiffer adapters with "
        "reduction factor 16 (m = 48) in all 12 layers (894,528 parameters); whether the cited row used robust "
        "AdapterDrop training is not stated."
    ),
    "roberta_base_adptd_0.3m": (
        "the configuration behind the AdptD* 0.3M row is not stated by either paper's available text; our run "
        "uses m = 48 adapters in the top 4 layers only (298,176 parameters), one of several settings of that size."
    ),
}


@dataclass(frozen=True)
class Spec:
    """One paper table rebuilt from records: output name, reference CSV under the paper dir, title; which
    checkpoint of a run fills it (`select`: best | last epoch) and how seeds are combined (`aggregate`: median |
    mean), as the paper's text says for that table; `scorer`: a footnote naming the scorer."""

    name: str
    csv: str
    title: str
    select: str = "best"
    aggregate: str = "median"
    scorer: str = ""

    def __post_init__(self) -> None:
        if self.select not in SELECT or self.aggregate not in AGGREGATE:
            raise ConfigError(f"select must be one of {SELECT} and aggregate one of {AGGREGATE}")


TABLES: tuple[Spec, ...] = (
    Spec("table2", "table2_glue.csv", "Table 2: GLUE dev (RoBERTa base/large, DeBERTa XXL)"),
    Spec(
        "table3",
        "table3_e2e.csv",
        "Table 3: E2E NLG Challenge test (GPT-2 medium/large)",
        "best",
        "mean",
        _E2E_SCORER,
    ),  # fmt: skip
    Spec(
        "table13",
        "table13_dart.csv",
        "Table 13: DART test (GPT-2 medium/large)",
        "best",
        "mean",
        _GENEVAL_SCORER,
    ),  # fmt: skip
    Spec(
        "table14",
        "table14_webnlg.csv",
        "Table 14: WebNLG test, U/S/A = unseen/seen/all categories",
        "best",
        "mean",
        _GENEVAL_SCORER,
    ),  # fmt: skip
    Spec("table5", "table5_targets.csv", "Table 5: which weight matrices to adapt (paper: GPT-3, 18M)"),
    Spec("table6", "table6_rank.csv", "Table 6: LoRA rank r (paper: GPT-3)"),
    Spec(
        "table18",
        "table18_e2e_rank.csv",
        "Table 18: LoRA rank r on E2E (GPT-2 medium)",
        "last",
        "mean",
        _E2E_SCORER + " val loss: plain cross-entropy (no label smoothing), as the released evaluate().",
    ),  # fmt: skip
)


def checkpoint_metrics(rec: RunRecord, select: str) -> dict[str, Any]:
    """The metrics of a run's `select`ed checkpoint: `best` (its best epoch) or `last` (its final epoch; records
    written before `last` existed fall back to their last evaluated epoch)."""
    if select == "best":
        return dict(rec.best["metrics"]) if rec.best else {}
    if rec.last is not None:
        return dict(rec.last["metrics"])
    return dict(rec.epochs[-1]["metrics"]) if rec.epochs else {}


# The columns of `records_frame` before the flattened metrics ("best_<metric>", "last_<metric>").
FRAME_COLUMNS: tuple[str, ...] = (
    "record_id", "experiment", "model", "task", "method", "seed", "r", "targets", "status", "reason",
    "config_hash", "setup_hash", "protocol", "metric", "trainable", "total_params", "head_params",
    "adapter_bytes", "peak_memory_bytes", "memory_kind", "train_s", "eval_s", "samples_per_s", "n_epochs",
    "best_epoch", "last_epoch", "started", "finished", "source",
)  # fmt: skip


def records_frame(records: Sequence[RunRecord]) -> pd.DataFrame:
    """One row per record, the one view of run records that every table, summary, figure and status report
    reads: who (experiment, model, task, method, seed, r = `record_rank`, targets "q,v" of LoRA), how it ended
    (status, reason), the config hashes (`config_hash`; `setup_hash` leaves the seed out, so records that differ
    only by seed share it), what it cost (params, memory, time), the task's primary metric name (`metric`), and
    every metric of the best and the last checkpoint (`checkpoint_metrics`), flattened to "best_<metric>" and
    "last_<metric>" (fractions on the official scales, NaN where absent). `record_id` names the run (copies of one
    run, e.g. the same file in two directories, share it; `latest` keeps one); the index is the position in
    `records`."""
    rows = []
    for rec in records:
        method_cfg = rec.config.get("method") if isinstance(rec.config.get("method"), dict) else {}
        targets = method_cfg.get("targets") if rec.method == "lora" else None
        row: dict[str, Any] = {
            "record_id": _id(rec), "experiment": rec.experiment, "model": rec.model, "task": rec.task,
            "method": rec.method, "seed": rec.seed, "r": record_rank(rec),
            "targets": ",".join(map(str, targets)) if isinstance(targets, list) else "",
            "status": rec.status, "reason": rec.reason or "", "config_hash": rec.config_hash,
            "setup_hash": config_hash(rec.config, IGNORED_KEYS | {"seed"}),
            "protocol": str(rec.config.get("protocol", "code")), "metric": PRIMARY_METRIC.get(rec.task, "accuracy"),
            "trainable": (rec.params or {}).get("trainable"), "total_params": (rec.params or {}).get("total"),
            "head_params": (rec.params or {}).get("head"), "adapter_bytes": (rec.params or {}).get("adapter_bytes"),
            "peak_memory_bytes": (rec.memory or {}).get("peak_bytes"), "memory_kind": (rec.memory or {}).get("kind"),
            "train_s": (rec.time or {}).get("train_s"), "eval_s": (rec.time or {}).get("eval_s"),
            "samples_per_s": (rec.time or {}).get("samples_per_s"), "n_epochs": len(rec.epochs),
            "best_epoch": rec.best["epoch"] if rec.best else None,
            "last_epoch": rec.last["epoch"] if rec.last else (rec.epochs[-1]["epoch"] if rec.epochs else None),
            "started": rec.started, "finished": rec.finished, "source": str(rec.source) if rec.source else "",
        }  # fmt: skip
        for select in SELECT:
            for k, v in checkpoint_metrics(rec, select).items():
                row[f"{select}_{k}"] = float(v) if _is_num(v) else math.nan
        rows.append(row)
    frame = pd.DataFrame(rows, columns=None if rows else list(FRAME_COLUMNS))
    metrics = sorted(c for c in frame.columns if c not in FRAME_COLUMNS)
    frame = frame.reindex(columns=[*FRAME_COLUMNS, *metrics])
    # r and the counts stay Python ints / None (object), as `record_rank` returns them, not floats with NaN.
    for col in ("r", "trainable", "total_params", "head_params", "adapter_bytes", "peak_memory_bytes",
                "best_epoch", "last_epoch"):  # fmt: skip
        frame[col] = pd.Series([_int_or_none(v) for v in frame[col]], index=frame.index, dtype=object)
    return frame


def latest(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per config hash (copies of one run): the complete one, then the last finished, then the last
    started."""
    order = frame.assign(_complete=frame["status"] == "complete", _finished=frame["finished"].fillna(""))
    order = order.sort_values(["_complete", "_finished", "started"], kind="stable")
    return (
        order.drop_duplicates("config_hash", keep="last")
        .drop(columns=["_complete", "_finished"])
        .sort_index()
    )


# Tables and figures of the paper that are not rebuilt from run records, and where their numbers live.
REFERENCE_ONLY: tuple[tuple[str, str], ...] = (
    ("Table 1: inference latency (GPT-2 medium)", "paper values in results/paper/table1_latency.csv"),
    ("Figure 5: latency over batch x sequence length", "measured by the latency benchmark, not from records"),
    ("Table 4: GPT-3 175B (not replicated)", "paper values in results/paper/table4_gpt3.csv"),
    (
        "Table 7, Figures 3-4: subspace analysis (Sec. 7)",
        "paper values in results/paper/table7_amplification.csv",
    ),
    (
        "Tables 9-11: hyperparameters",
        "results/paper/table9_roberta.csv, table10_deberta.csv, table11_gpt2.csv",
    ),
)

PAPER_COLUMNS = (
    "table", "row", "model", "method", "params_label", "experiment", "r", "task", "metric", "column", "value",
    "spread", "scale", "decimals", "note",
)  # fmt: skip


@dataclass
class Built:
    """One rebuilt table: tidy cells, the records that fed it, and those left out (not complete)."""

    spec: Spec
    cells: pd.DataFrame
    used: list[RunRecord]
    left_out: list[RunRecord]
    mixed: list[str]


# ----------------------------------------------------------------------------------------------------- inputs


def load_paper(paper_dir: str | os.PathLike[str], csv: str) -> pd.DataFrame:
    """A paper table (tidy CSV, values on the printed scale); ValueError if a column is missing."""
    path = Path(paper_dir) / csv
    if not path.is_file():
        raise InputNotFound(f"paper table {str(path)!r} not found; pass paper_dir= pointing at results/paper")
    df = pd.read_csv(path, keep_default_na=False, na_values=[""])
    missing = [c for c in PAPER_COLUMNS if c not in df.columns]
    if missing:
        raise ConfigError(f"paper table {path} lacks columns {missing}; expected {list(PAPER_COLUMNS)}")
    return df


def record_rank(record: RunRecord) -> int | None:
    """The LoRA rank r of a record: config["method"]["r"], else config["r"], else the first integer "r" key
    found anywhere in the config; None if there is none."""
    cfg = record.config
    for v in (cfg.get("method", {}).get("r") if isinstance(cfg.get("method"), dict) else None, cfg.get("r")):
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return _find_int(cfg, "r")


def _find_int(x: Any, key: str) -> int | None:
    if isinstance(x, dict):
        if isinstance(x.get(key), int) and not isinstance(x[key], bool):
            return x[key]
        for v in x.values():
            if (found := _find_int(v, key)) is not None:
                return found
    return None


def _dedupe(records: list[RunRecord]) -> list[RunRecord]:
    """One record per config hash (copies of the same run): the complete one, then the last finished (`latest`)."""
    return [records[i] for i in latest(records_frame(records)).index] if records else []


# --------------------------------------------------------------------------------------------------- building


# Ablation tables run on any task by override (`make ablation-rank TASK=sst2`): tasks of their records that the
# paper did not use get a column of their own, with no paper value.
OPEN_TASKS: frozenset[str] = frozenset({"table5", "table6"})


def with_record_tasks(paper: pd.DataFrame, records: list[RunRecord]) -> pd.DataFrame:
    """`paper` plus, per row, one cell (paper value NaN) for each task its experiment's records ran on."""
    extra = []
    for _, prow in paper.groupby("row", sort=True):
        first = prow.iloc[0]
        seen = set(prow["task"])
        for task in sorted({r.task for r in records if r.experiment == first["experiment"]} - seen):
            if task in PRIMARY_METRIC:
                extra.append({**first.to_dict(), "task": task, "metric": PRIMARY_METRIC[task],
                              "column": f"{task} (ours only)", "value": float("nan"), "spread": float("nan"),
                              "scale": 100, "decimals": 1, "note": ""})  # fmt: skip
    return pd.concat([paper, pd.DataFrame(extra)], ignore_index=True) if extra else paper


def build(
    spec: Spec, paper: pd.DataFrame, records: list[RunRecord], frame: pd.DataFrame | None = None
) -> Built:
    """Tidy cells of one table: one row per (paper row, our (model, r) variant, paper column). `frame`:
    `records_frame(records)` if already made. Each cell also carries `values`, its per-seed values on the paper's
    scale in the order of `seeds` (for figures; not in the CSV)."""
    if spec.name in OPEN_TASKS:
        paper = with_record_tasks(paper, records)
    frame = records_frame(records) if frame is None else frame
    out: list[dict[str, Any]] = []
    used: dict[str, RunRecord] = {}
    left: dict[str, RunRecord] = {}
    mixed: list[str] = []
    for _, prow in paper.groupby("row", sort=True):
        first = prow.iloc[0]
        exp, r_paper = first["experiment"], _int_or_none(first["r"])
        mine = frame[
            (frame["experiment"] == exp) & frame["task"].isin(set(prow["task"]))
            & (frame["r"] == r_paper if r_paper is not None else True)
        ]  # fmt: skip
        left.update({frame.at[i, "record_id"]: records[i] for i in mine.index[mine["status"] != "complete"]})
        done = mine[mine["status"] == "complete"]
        variants = sorted(set(zip(done["model"], done["r"], strict=True)), key=str) or [(None, r_paper)]
        for model, r in variants:
            group = done[(done["model"] == model) & done["r"].map(lambda v, r=r: v == r)]
            trainable = sorted({int(v) for v in group["trainable"] if v is not None})
            row_cells = []
            for _, p in prow.iterrows():
                cell = {
                    "table": spec.name, "row": int(p["row"]), "paper_model": p["model"],
                    "method": p["method"], "note": _text(p["note"]), "params_label": _text(p["params_label"]),
                    "experiment": exp, "model": model, "r": r, "params": _params(trainable),
                    "task": p["task"], "metric": p["metric"], "column": p["column"],
                    "scale": float(p["scale"]), "decimals": int(p["decimals"]),
                    "paper": _float(p["value"]), "paper_spread": _float(p["spread"]),
                }  # fmt: skip
                if p["task"] == "avg":
                    row_cells.append(cell)
                    continue
                col = f"{spec.select}_{p['metric']}"
                hits = group[group["task"] == p["task"]]
                hits = hits[hits[col].notna()] if col in hits else hits.iloc[:0]
                hits = hits.sort_values("seed", kind="stable")
                values = [float(v) * cell["scale"] for v in (hits[col] if len(hits) else [])]
                used.update({hits.at[i, "record_id"]: records[i] for i in hits.index})
                if hits["setup_hash"].nunique() > 1:
                    mixed.append(f"{exp} / {model} / r={r} / {p['task']}")
                row_cells.append(
                    {**cell, **_stats(values, spec.aggregate), "seeds": [int(s) for s in hits["seed"]],
                     "values": values}
                )  # fmt: skip
            _fill_average(row_cells)
            out.extend(row_cells)
    cells = pd.DataFrame(out)
    cells["diff"] = cells["ours"] - cells["paper"]
    return Built(spec, cells, list(used.values()), list(left.values()), sorted(set(mixed)))


def _stats(values: list[float], aggregate: str = "median") -> dict[str, Any]:
    """Median or mean, and sample std (ddof=1), over seeds; NaN where undefined."""
    n = len(values)
    center = np.median if aggregate == "median" else np.mean
    return {
        "n": n,
        "ours": float(center(values)) if n else math.nan,
        "ours_std": float(np.std(values, ddof=1)) if n > 1 else math.nan,
    }


def _fill_average(row_cells: list[dict[str, Any]]) -> None:
    """The "avg" column (Table 2): mean of our per-task values over the row's other columns, if none is missing."""
    others = [c for c in row_cells if c["task"] != "avg"]
    for c in row_cells:
        if c["task"] == "avg":
            ok = others and all(o["n"] > 0 for o in others)
            mean = float(np.mean([o["ours"] for o in others])) if ok else math.nan
            c.update(
                n=min(o["n"] for o in others) if ok else 0, ours=mean, ours_std=math.nan, seeds=[], values=[]
            )


# -------------------------------------------------------------------------------------------------- rendering


def wide(cells: pd.DataFrame) -> pd.DataFrame:
    """Display table: one line per (paper row, our variant), one column per paper column, cells as text
    "ours ±std [seeds] / paper (ours - paper)"."""
    show_r = cells["r"].notna().any()
    lines = []
    for _, g in cells.groupby(["row", "model", "r"], sort=False, dropna=False):
        c0 = g.iloc[0]
        line = {
            "Model": c0["paper_model"],
            "Method": c0["method"] + (c0["note"] if c0["note"] in SYMBOLS else ""),
            "Experiment": c0["experiment"],
            "Params": c0["params_label"],
            "Ours: model": MISSING if pd.isna(c0["model"]) else c0["model"],
            "Ours: params": c0["params"],
        }
        if show_r:
            line["r"] = MISSING if pd.isna(c0["r"]) else str(int(c0["r"]))
        line.update({c["column"]: _cell_text(c) for _, c in g.iterrows()})
        lines.append(line)
    return pd.DataFrame(lines)


def _cell_text(c: pd.Series) -> str:
    d = int(c["decimals"])
    paper = MISSING if pd.isna(c["paper"]) else f"{c['paper']:.{d}f}"
    if c["n"] == 0 or pd.isna(c["ours"]):
        return f"{MISSING} / {paper}"
    ours = f"{c['ours']:.{d}f}" + ("" if pd.isna(c["ours_std"]) else f" ±{c['ours_std']:.{d}f}")
    seeds = f" [{c['n']}]" if c["task"] != "avg" else ""
    diff = "" if pd.isna(c["diff"]) else f" ({c['diff']:+.{d}f})"
    return f"{ours}{seeds} / {paper}{diff}"


def footer(b: Built, runs_dir: str) -> list[str]:
    """Notes printed under a table: legend, record counts, left-out records, pooled configurations."""
    cells = b.cells
    n_missing = int((cells["n"] == 0).sum())
    spec = b.spec
    checkpoint = "best epoch" if spec.select == "best" else "last epoch"
    lines = [
        f"Cell: ours {spec.aggregate} over seeds ±sample std [seeds] / paper (ours − paper), on the paper's "
        f"scale; select={spec.select} ({checkpoint} of each run), aggregate={spec.aggregate}. {MISSING} = no "
        "complete record (never filled in). * = prior work's numbers, † = Houlsby setup.",
        f"Built from {len(b.used)} complete records under {runs_dir}; "
        f"{n_missing} of {len(cells)} cells missing.",
    ]
    if spec.scorer:
        lines.append(spec.scorer)
    protocols = sorted({str(rec.config.get("protocol", "code")) for rec in b.used})
    if protocols:
        lines.append(
            f"Protocol of these records: {', '.join(protocols)} (code = the released scripts' settings where the "
            "paper's text differs; see each experiment file)."
        )
    if not b.used:
        lines.append("No complete records for this table yet: every 'ours' cell is missing.")
    remarks = cells.loc[~cells["note"].isin(("", *SYMBOLS)), ["experiment", "note"]].drop_duplicates()
    lines += [f"Paper note, {exp}: {note}." for exp, note in remarks.itertuples(index=False)]
    lines += [
        f"Our row, {exp}: {ROW_NOTES[exp]}" for exp in sorted(set(cells["experiment"])) if exp in ROW_NOTES
    ]
    if b.left_out:
        lines.append(f"Left out, not complete ({len(b.left_out)}):")
        lines += [f"- {_describe(rec)}" for rec in sorted(b.left_out, key=_id)]
    if b.mixed:
        lines.append("Warning: these cells pool records whose configs differ beyond the seed:")
        lines += [f"- {m}" for m in b.mixed]
    return lines


def to_markdown(b: Built, runs_dir: str) -> str:
    body = wide(b.cells).to_markdown(index=False)
    notes = "".join(
        line + "\n" if line.startswith("- ") else "\n" + line + "\n" for line in footer(b, runs_dir)
    )
    return f"# {b.spec.title}\n\n{body}\n{notes}"


def to_latex(b: Built, runs_dir: str) -> str:
    """A booktabs `table` (needs \\usepackage{booktabs}); the footer goes in a footnotesize paragraph."""
    df = wide(b.cells)
    head = " & ".join(_tex(str(c)) for c in df.columns) + r" \\"
    rows = [" & ".join(_tex(str(v)) for v in row) + r" \\" for row in df.itertuples(index=False)]
    notes = r" \\ ".join(_tex(line) for line in footer(b, runs_dir))
    return "\n".join([
        r"\begin{table}[t]", r"\centering", rf"\caption{{{_tex(b.spec.title)}}}",
        rf"\label{{tab:{b.spec.name}}}", r"\resizebox{\linewidth}{!}{%",
        rf"\begin{{tabular}}{{{'l' * len(df.columns)}}}", r"\toprule", head, r"\midrule", *rows,
        r"\bottomrule", r"\end{tabular}}", rf"\par\footnotesize {notes}", r"\end{table}", "",
    ])  # fmt: skip


_TEX = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\~{}", "^": r"\^{}", "±": r"$\pm$", "−": "$-$", MISSING: "--", "†": r"$^\dagger$",
}  # fmt: skip


def _tex(s: str) -> str:
    """Escape text for LaTeX, one character at a time (so replacements are never escaped again)."""
    return "".join(_TEX.get(ch, ch) for ch in s)


# ------------------------------------------------------------------------------------------------------- main


def main(
    runs_dir: str | os.PathLike[str] = "results/runs",
    paper_dir: str | os.PathLike[str] = "results/paper",
    out_dir: str | os.PathLike[str] = "results",
    select: str | None = None,
    aggregate: str | None = None,
    figures: bool = True,
) -> list[Path]:
    """Rebuild every table into `out_dir/tables/<name>.{md,tex,csv}`, draw `out_dir/figures/` (tables beside the
    paper, training curves: `lora.plots.write_figures`; `figures=False` skips them) and write `out_dir/README.md`;
    returns the written paths. A missing `runs_dir` gives tables with every 'ours' cell missing (and says so).
    `select` / `aggregate` override every table's own choice (the footnotes say which was used)."""
    out, tables_dir = Path(out_dir), Path(out_dir) / "tables"
    tables_dir.mkdir(parents=True, exist_ok=True)
    records, skipped = _read_runs(runs_dir)
    records = _dedupe(records)
    frame = records_frame(records)
    runs = str(runs_dir)
    written, built = [], []
    for spec in TABLES:
        spec = replace(spec, select=select or spec.select, aggregate=aggregate or spec.aggregate)
        b = build(spec, load_paper(paper_dir, spec.csv), records, frame)
        built.append(b)
        for ext, text in (("md", to_markdown(b, runs)), ("tex", to_latex(b, runs))):
            written.append(_write(tables_dir / f"{spec.name}.{ext}", text))
        written.append(_write(tables_dir / f"{spec.name}.csv", _tidy(b.cells).to_csv(index=False)))
    if figures:
        from lora.plots import write_figures  # matplotlib and torch (via lora.ablation): only when drawing

        written += write_figures(built, records, out)
    written.append(_write(out / "README.md", readme(built, records, skipped, runs, out)))
    return written


def readme(built: list[Built], records: list[RunRecord], skipped: list[str], runs_dir: str, out: Path) -> str:
    """results/README.md: every table and figure, the records behind it, and its missing cells."""
    lines = [
        "# Results",
        "",
        f"Generated by `python -m lora.tables` from the run records under `{runs_dir}` and the paper's "
        "numbers in `results/paper/` (see its README). Do not edit by hand: rerun it.",
        "",
        "| table | files | complete records used | left out | missing cells |",
        "|---|---|---|---|---|",
    ]
    for b in built:
        n_missing = int((b.cells["n"] == 0).sum())
        lines.append(
            f"| {b.spec.title} | tables/{b.spec.name}.md .tex .csv | {len(b.used)} | {len(b.left_out)} "
            f"| {n_missing} / {len(b.cells)} |"
        )
    lines += ["", "Not rebuilt from run records:", ""] + [f"- {t}: {where}" for t, where in REFERENCE_ONLY]
    figures = (
        sorted(p for p in (out / "figures").glob("*") if p.is_file()) if (out / "figures").is_dir() else []
    )
    curves = sorted((out / "figures" / "curves").glob("*.png")) if (out / "figures").is_dir() else []
    if figures or curves:
        lines += ["", "Figures found in figures/ (ours beside the paper, seed spread; a table without records "
                  "of ours has none):", ""]  # fmt: skip
        lines += [f"- figures/{p.name}" for p in figures]
        if curves:
            lines.append(
                f"- figures/curves/: {len(curves)} training-curve plots (eval metric and train loss per epoch, "
                "one line per seed), one per experiment / task / model / r"
            )
    lines += ["", "## Missing cells", ""]
    for b in built:
        miss = b.cells[b.cells["n"] == 0]
        lines.append(f"{b.spec.title}: " + ("none" if miss.empty else f"{len(miss)} of {len(b.cells)}"))
        for (exp, model, r), g in miss.groupby(["experiment", "model", "r"], sort=False, dropna=False):
            total = (
                (b.cells["experiment"] == exp) & _same(b.cells["model"], model) & _same(b.cells["r"], r)
            ).sum()
            what = "all" if len(g) == total else ", ".join(g["column"])
            who = exp + ("" if pd.isna(model) else f" / {model}") + ("" if pd.isna(r) else f" / r={int(r)}")
            lines.append(f"- {who}: {what}")
        lines.append("")
    placed = {_id(rec) for b in built for rec in b.used + b.left_out}
    unplaced = [rec for rec in records if _id(rec) not in placed]
    lines += ["## Records in no table", ""]
    lines += [f"- {_describe(rec)}" for rec in sorted(unplaced, key=_id)] or ["none"]
    lines += ["", "## Unreadable files (skipped)", ""] + ([f"- {s}" for s in skipped] or ["none"])
    return "\n".join(lines) + "\n"


def _read_runs(runs_dir: str | os.PathLike[str]) -> tuple[list[RunRecord], list[str]]:
    """Records under `runs_dir` and the warnings about skipped files (re-emitted)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RecordWarning)
        try:
            records = load_records(runs_dir)
        except FileNotFoundError as e:
            warnings.warn(str(e), RecordWarning, stacklevel=2)
            records = []
    skipped = [str(w.message) for w in caught if issubclass(w.category, RecordWarning)]
    for msg in skipped:
        warnings.warn(msg, RecordWarning, stacklevel=2)
    return records, skipped


def _tidy(cells: pd.DataFrame) -> pd.DataFrame:
    cols = [
        "table", "row", "experiment", "paper_model", "method", "note", "params_label", "model", "r",
        "params", "task", "metric", "column", "n", "seeds", "ours", "ours_std", "paper", "paper_spread",
        "diff", "scale",
    ]  # fmt: skip
    out = cells[cols].copy()
    out["seeds"] = out["seeds"].map(lambda s: " ".join(map(str, s)) if isinstance(s, list) else "")
    return out


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _describe(rec: RunRecord) -> str:
    why = f": {rec.reason}" if rec.reason else ""
    status = rec.status if rec.status in (*FAILED, "complete") else f"{rec.status} (not finished)"
    src = f" ({rec.source.name})" if rec.source else ""
    return f"{rec.experiment} / {rec.model} / {rec.task} / seed {rec.seed}: {status}{why}{src}"


def _id(rec: RunRecord) -> str:
    return f"{rec.experiment}|{rec.task}|{rec.model}|{rec.seed}|{rec.config_hash}"


def _params(trainable: list[int]) -> str:
    if not trainable:
        return MISSING
    lo, hi = trainable[0] / 1e6, trainable[-1] / 1e6
    return f"{lo:.2f}M" if lo == hi else f"{lo:.2f}–{hi:.2f}M"


def _same(series: pd.Series, value: Any) -> pd.Series:
    return series.isna() if pd.isna(value) else series == value


def _text(v: Any) -> str:
    return v if isinstance(v, str) else ""


def _int_or_none(v: Any) -> int | None:
    return None if pd.isna(v) else int(v)


def _float(v: Any) -> float:
    return math.nan if pd.isna(v) else float(v)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def cli(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Rebuild the paper's tables from run records and results/paper.")
    p.add_argument("--runs", default="results/runs", help="directory of run records (searched recursively)")
    p.add_argument("--paper", default="results/paper", help="directory of the paper's tidy CSVs")
    p.add_argument("--out", default="results", help="writes OUT/tables/*.{md,tex,csv} and OUT/README.md")
    p.add_argument(
        "--select", choices=SELECT, help="checkpoint of each run for every table (default: per table)"
    )
    p.add_argument(
        "--aggregate", choices=AGGREGATE, help="seed aggregation for every table (default: per table)"
    )
    args = p.parse_args(argv)
    for path in main(args.runs, args.paper, args.out, args.select, args.aggregate):
        print(path)


if __name__ == "__main__":
    cli()
