"""The small real replication's tables (`make glue-mini`, `make nlg-mini`, `make lr-search-mini`), from run records.

`make glue-mini` runs Table 2's comparison on the real pretrained MiniLM-L6 and the real GLUE files (experiments
mini_<method>), `make nlg-mini` Table 3's on SmolLM2-135M and E2E (mini_e2e_<method>); each writes its records to
results/mini/runs and then its table here: `glue_table` / `nlg_table` build it (`MiniTable`), `render` writes the
markdown (our rows, each with the paper's row of the same method beneath it, one line per claim of the paper, and
footnotes read from the records: command, seeds, budget, hardware), `tidy` the CSV. `lr_search_table` shows
`make lr-search-mini`, the search behind the learning rates of the mini_<method> files.

Records are read as every table of the suite reads them (`lora.tables.records_frame`, one row per record with the
metrics of its best and last checkpoint, `lora.tables.checkpoint_metrics`), one per config hash (`latest`), complete
ones only. A cell is the median (GLUE, as Table 2) or mean (NLG, as Table 3) over seeds of the best checkpoint's
metric, with the sample standard deviation and the number of seeds, on the paper's printed scale; nothing is filled
in (a missing cell is "–"). The paper's rows come from results/paper (Table 2: RoBERTa-base, Table 3: GPT-2 medium)
and are another model on the full data: they are beside ours for the shape of the comparison, never subtracted from
ours; the claims compare our methods with each other, and the paper's methods with each other.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lora.errors import ConfigError
from lora.records import RecordWarning, RunRecord, load_records
from lora.tables import MISSING, Spec, latest, load_paper, records_frame

GLUE_TASKS: tuple[str, ...] = ("cola", "sst2", "mrpc", "stsb", "rte")
NLG_METRICS: tuple[str, ...] = ("bleu", "nist", "meteor", "rouge_l", "cider")


@dataclass(frozen=True)
class Row:
    """One method of a mini table: our experiment, its label, and the paper's row (its experiment name in the paper
    CSV) shown beneath it, if the paper has one."""

    experiment: str
    method: str
    paper: str | None = None


@dataclass(frozen=True)
class Claim:
    """LoRA (`lora`) against `base`: ours, and the paper's `paper_lora` against `paper_base` (same paper model)."""

    base: str
    paper_lora: str | None = None
    paper_base: str | None = None


@dataclass(frozen=True)
class Column:
    """A result column: the task and metric of our records, the paper's header, scale and printed decimals."""

    task: str
    metric: str
    label: str
    scale: float
    decimals: int


@dataclass(frozen=True)
class MiniTable:
    """What one mini table shows. `spec`: the paper table it is shaped after (CSV, checkpoint, seed aggregate);
    `tasks` / `metrics`: its columns (GLUE: one primary metric per task, with an average; NLG: several metrics of one
    task); `lora`: the experiment the claims are about; `notes`: footnotes of its own."""

    name: str
    spec: Spec
    rows: tuple[Row, ...]
    claims: tuple[Claim, ...]
    lora: str
    ours_model: str
    paper_model: str
    command: str
    tasks: tuple[str, ...]
    metrics: tuple[str, ...] = ()
    average: bool = False
    notes: tuple[str, ...] = ()


GLUE = MiniTable(
    name="glue",
    spec=Spec(
        "mini_glue", "table2_glue.csv", "Table 2, small: MiniLM-L6 on GLUE (dev), real weights, real data"
    ),
    rows=(
        Row("mini_ft", "FT", "roberta_base_ft"),
        Row("mini_bitfit", "BitFit", "roberta_base_bitfit"),
        Row("mini_adapter_h", "AdapterH", "roberta_large_adpth_0.8m"),
        Row("mini_adapter_p", "AdapterP", "roberta_base_adptd_0.9m"),
        Row("mini_prefix_embed", "PreEmbed"),
        Row("mini_lora", "LoRA", "roberta_base_lora"),
    ),
    claims=(
        Claim("mini_ft", "roberta_base_lora", "roberta_base_ft"),
        Claim("mini_bitfit", "roberta_base_lora", "roberta_base_bitfit"),
        Claim("mini_adapter_h", "roberta_large_lora", "roberta_large_adpth_0.8m"),
        Claim("mini_adapter_p", "roberta_base_lora", "roberta_base_adptd_0.9m"),
        Claim("mini_prefix_embed"),
    ),
    lora="mini_lora",
    ours_model="MiniLM-L6",
    paper_model="RoBERTa-base",
    command="make glue-mini",
    tasks=GLUE_TASKS,
    average=True,
    notes=(
        "Paper rows: Table 2 (results/paper/table2_glue.csv), RoBERTa-base (125M) on the full training sets, median "
        "of 5 seeds; their Avg here is recomputed over these 5 tasks. AdapterH has no RoBERTa-base row: "
        "RoBERTa-large's AdptH 0.8M is shown (and compared with RoBERTa-large LoRA). AdapterP is beside RoBERTa-base "
        "AdptD 0.9M, Pfeiffer adapters in every layer (AdapterDrop with no layer dropped). The paper has no GLUE "
        "PreEmbed row.",
    ),
)

NLG = MiniTable(
    name="nlg",
    spec=Spec(
        "mini_nlg",
        "table3_e2e.csv",
        "Table 3, small: SmolLM2-135M on E2E (test subset), real weights, real data",
        "best",
        "mean",
    ),  # fmt: skip
    rows=(
        Row("mini_e2e_none", "not adapted"),
        Row("mini_e2e_ft", "FT", "gpt2_medium_e2e_ft"),
        Row("mini_e2e_adapter_l", "AdapterL", "gpt2_medium_e2e_adapter_l_0.37m"),
        Row("mini_e2e_prefix_layer", "PreLayer", "gpt2_medium_e2e_prefix_layer"),
        Row("mini_e2e_lora", "LoRA", "gpt2_medium_e2e_lora"),
    ),
    claims=(
        Claim("mini_e2e_ft", "gpt2_medium_e2e_lora", "gpt2_medium_e2e_ft"),
        Claim("mini_e2e_adapter_l", "gpt2_medium_e2e_lora", "gpt2_medium_e2e_adapter_l_0.37m"),
        Claim("mini_e2e_prefix_layer", "gpt2_medium_e2e_lora", "gpt2_medium_e2e_prefix_layer"),
        Claim("mini_e2e_none"),
    ),
    lora="mini_e2e_lora",
    ours_model="SmolLM2-135M",
    paper_model="GPT-2 M",
    command="make nlg-mini",
    tasks=("e2e",),
    metrics=NLG_METRICS,
    notes=(
        "Paper rows: Table 3 (results/paper/table3_e2e.csv), GPT-2 medium (355M) on the full E2E training set, "
        "the whole test set, mean of 3 seeds; AdapterL is its 0.37M row, the size of ours relative to LoRA.",
        "Scorer: the E2E challenge's measure_scores.py metrics, in-process (lora.metrics.nlg), against the paper's "
        "own reference files (e2e/lora_format) unless a record says task.references=official.",
    ),
)

TABLES: dict[str, MiniTable] = {"glue": GLUE, "nlg": NLG}


# ----------------------------------------------------------------------------------------------------- reading


def read_records(runs_dir: str | os.PathLike[str]) -> list[RunRecord]:
    """Every readable record under `runs_dir` (none if it does not exist; unreadable files warn and are skipped)."""
    try:
        return load_records(runs_dir)
    except FileNotFoundError:
        return []


def _frame(records: Sequence[RunRecord]) -> tuple[pd.DataFrame, list[RunRecord]]:
    """`records_frame` with one row per config hash (`latest`), and the records in the same order."""
    if not records:
        return records_frame([]), []
    frame = latest(records_frame(records))
    kept = [records[i] for i in frame.index]
    return frame.reset_index(drop=True), kept


def columns_of(table: MiniTable, paper: pd.DataFrame) -> list[Column]:
    """The table's result columns, with the paper's header, scale and decimals for each (task, metric)."""
    cols = []
    pairs = (
        [(t, None) for t in table.tasks]
        if not table.metrics
        else [(t, m) for t in table.tasks for m in table.metrics]
    )
    for task, metric in pairs:
        hits = paper[(paper["task"] == task) & ((paper["metric"] == metric) if metric else True)]
        if hits.empty:
            raise ConfigError(f"the paper table {table.spec.csv} has no column for {task} {metric or ''}")
        p = hits.iloc[0]
        cols.append(Column(task, str(p["metric"]), str(p["column"]), float(p["scale"]), int(p["decimals"])))
    return cols


# ---------------------------------------------------------------------------------------------------- building


@dataclass
class Built:
    """One mini table built from records: a cell per (row, column), a cost line per row, the records it used, the
    records left out (not complete), and the cells that pool configurations differing beyond the seed."""

    table: MiniTable
    columns: list[Column]
    cells: pd.DataFrame
    costs: pd.DataFrame
    paper: pd.DataFrame
    used: list[RunRecord] = field(default_factory=list)
    left_out: list[RunRecord] = field(default_factory=list)
    mixed: list[str] = field(default_factory=list)
    runs_dir: str = ""


def _stats(values: list[float], aggregate: str) -> tuple[float, float]:
    n = len(values)
    center = (np.median if aggregate == "median" else np.mean)(values) if n else math.nan
    return float(center), float(np.std(values, ddof=1)) if n > 1 else math.nan


def paper_value(paper: pd.DataFrame, experiment: str | None, col: Column) -> float:
    """The paper's printed value of `experiment`'s row in column `col` (NaN if none)."""
    if experiment is None:
        return math.nan
    hit = paper[
        (paper["experiment"] == experiment) & (paper["task"] == col.task) & (paper["metric"] == col.metric)
    ]
    return float(hit.iloc[0]["value"]) if len(hit) and pd.notna(hit.iloc[0]["value"]) else math.nan


def paper_row(paper: pd.DataFrame, experiment: str | None) -> dict[str, str]:
    """The printed model, method (with its * / † mark) and parameter label of a paper row."""
    if experiment is None:
        return {}
    hit = paper[paper["experiment"] == experiment]
    if hit.empty:
        return {}
    p = hit.iloc[0]
    note = p["note"] if isinstance(p["note"], str) and p["note"] in ("*", "†") else ""
    return {"model": str(p["model"]), "method": f"{p['method']}{note}", "params": str(p["params_label"])}


def build(
    table: MiniTable, records: Sequence[RunRecord], paper_dir: str | os.PathLike[str] = "results/paper",
    runs_dir: str = "",
) -> Built:  # fmt: skip
    """Cells, costs and claims' inputs of `table` from `records` (any records: others are ignored)."""
    paper = load_paper(paper_dir, table.spec.csv).drop_duplicates(["experiment", "task", "metric"])
    cols = columns_of(table, paper)
    frame, recs = _frame(list(records))
    ours = {r.experiment for r in table.rows}
    mine = frame[frame["experiment"].isin(ours) & frame["task"].isin(table.tasks)] if len(frame) else frame
    left = [recs[i] for i in mine.index[mine["status"] != "complete"]]
    done = mine[mine["status"] == "complete"]
    used: dict[int, RunRecord] = {}
    mixed: list[str] = []
    cells, costs = [], []
    for row in table.rows:
        group = done[done["experiment"] == row.experiment]
        for col in cols:
            key = f"{table.spec.select}_{col.metric}"
            hits = group[group["task"] == col.task]
            hits = hits[hits[key].notna()] if key in hits else hits.iloc[:0]
            hits = hits.sort_values("seed", kind="stable")
            values = [float(v) * col.scale for v in hits[key]] if key in hits else []
            used.update({int(i): recs[i] for i in hits.index})
            if hits["setup_hash"].nunique() > 1:
                mixed.append(f"{row.experiment} / {col.task}")
            center, std = _stats(values, table.spec.aggregate)
            cells.append({
                "experiment": row.experiment, "method": row.method, "task": col.task, "metric": col.metric,
                "column": col.label, "n": len(values), "seeds": [int(s) for s in hits["seed"]], "values": values,
                "ours": center, "ours_std": std, "paper_experiment": row.paper,
                "paper": paper_value(paper, row.paper, col),
            })  # fmt: skip
        costs.append(_costs(row, group))
    return Built(
        table, cols, pd.DataFrame(cells), pd.DataFrame(costs), paper, list(used.values()), left,
        sorted(set(mixed)), runs_dir,
    )  # fmt: skip


def _costs(row: Row, group: pd.DataFrame) -> dict[str, Any]:
    """Trainable parameters (and % of the backbone: total without the task head), peak memory (the most of any run)
    and training time of one seed over all the table's tasks (the sum over tasks of the median over seeds)."""
    trainable = sorted({int(v) for v in group["trainable"] if v is not None})
    backbone = [
        t / (tot - (h or 0)) * 100
        for t, tot, h in zip(group["trainable"], group["total_params"], group["head_params"], strict=True)
        if t is not None and tot
    ]  # fmt: skip
    peaks = [int(v) for v in group["peak_memory_bytes"] if v is not None]
    per_task = group.groupby("task")["train_s"].median() if len(group) else pd.Series(dtype=float)
    return {
        "experiment": row.experiment, "method": row.method, "trainable": trainable,
        "pct_backbone": float(np.median(backbone)) if backbone else math.nan,
        "peak_mib": max(peaks) / 2**20 if peaks else math.nan,
        "train_s_per_seed": float(per_task.sum()) if len(per_task) else math.nan,
        "tasks_timed": int(per_task.notna().sum()),
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------------ claims


def _row_cells(b: Built, experiment: str) -> pd.DataFrame:
    return b.cells[b.cells["experiment"] == experiment].reset_index(drop=True)


def _label(b: Built, experiment: str) -> str:
    return next(r.method for r in b.table.rows if r.experiment == experiment)


def _params(b: Built, experiment: str) -> str:
    c = b.costs[b.costs["experiment"] == experiment].iloc[0]
    return count_text(c["trainable"])


def claim_lines(b: Built) -> list[str]:
    """One line per claim of the paper: LoRA against FT, and against each baseline at its parameter count, from our
    cells (GLUE: the average gap over the tasks and each task's; NLG: each metric's), beside the paper's own gap
    between the same two methods on its model."""
    lines = []
    lora = _row_cells(b, b.table.lora)
    for claim in b.table.claims:
        base = _row_cells(b, claim.base)
        name, lora_name = _label(b, claim.base), _label(b, b.table.lora)
        what = (
            f"LoRA vs {name} ({_params(b, b.table.lora)} vs {_params(b, claim.base)} trainable)"
            if claim.base != "mini_e2e_none"
            else "LoRA vs the model before adaptation"
        )
        missing = []
        for who, cells in ((lora_name, lora), (name, base)):
            gone = list(cells.loc[cells["n"] == 0, "column"])
            if gone:
                missing.append(f"{who}: {'all' if len(gone) == len(cells) else ', '.join(gone)}")
        gaps = [(c["column"], lc["ours"] - c["ours"], b.columns[i].decimals)
                for i, ((_, lc), (_, c)) in enumerate(zip(lora.iterrows(), base.iterrows(), strict=True))]  # fmt: skip
        if missing:
            lines.append(
                f"- {what}: not measured yet (cells without a complete record: {'; '.join(missing)})."
            )
            continue
        ahead = sum(g > 0 for _, g, _ in gaps)
        detail = ", ".join(f"{col} {g:+.{d}f}" for col, g, d in gaps)
        if b.table.average:
            mean_gap = float(np.mean([g for _, g, _ in gaps]))
            text = (f"LoRA − {name} = {mean_gap:+.1f} points on average over the {len(gaps)} tasks ({detail}); LoRA "
                    f"ahead on {ahead} of {len(gaps)}")  # fmt: skip
        else:
            text = f"LoRA − {name}: {detail}; LoRA ahead on {ahead} of {len(gaps)} metrics"
        lines.append(f"- {what}: {text}.{_paper_gap(b, claim)}")
    spread = b.cells.loc[b.cells["n"] > 1, "ours_std"].dropna()
    if len(spread):
        lines.append(
            f"- For scale: the median seed-to-seed standard deviation of a cell above is {float(spread.median()):.2f} "
            "(on the cells' scale); a gap of that size is within the noise of this budget."
        )
    return lines


def _paper_gap(b: Built, claim: Claim) -> str:
    if claim.paper_lora is None or claim.paper_base is None:
        return " The paper has no such row on this benchmark."
    gaps = [(c.label, paper_value(b.paper, claim.paper_lora, c) - paper_value(b.paper, claim.paper_base, c), c.decimals)
            for c in b.columns]  # fmt: skip
    if any(math.isnan(g) for _, g, _ in gaps):
        return ""
    model = paper_row(b.paper, claim.paper_lora).get("model", "")
    base = paper_row(b.paper, claim.paper_base)
    if b.table.average:
        return (f" Paper ({model}, {base.get('method', '')} {base.get('params', '')}, same tasks): "
                f"{float(np.mean([g for _, g, _ in gaps])):+.1f}.")  # fmt: skip
    return (
        f" Paper ({model}, {base.get('method', '')} {base.get('params', '')}): "
        + ", ".join(f"{col} {g:+.{d}f}" for col, g, d in gaps)
        + "."
    )


# ---------------------------------------------------------------------------------------------------- rendering


def count_text(trainable: list[int]) -> str:
    """Trainable parameters as the paper prints them: 73.7K, 22.57M; a range if runs differ; – if none."""
    if not trainable:
        return MISSING

    def one(n: int) -> str:
        return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K" if n >= 1e3 else str(n)

    return one(trainable[0]) if len(trainable) == 1 else f"{one(trainable[0])}–{one(trainable[-1])}"


def pct_text(pct: float) -> str:
    """A percentage of the backbone: 0.326, 2.57, 99.3."""
    if pd.isna(pct):
        return MISSING
    return f"{pct:.3f}" if pct < 1 else f"{pct:.2f}" if pct < 10 else f"{pct:.1f}"


def cell_text(c: pd.Series | dict[str, Any], decimals: int) -> str:
    if c["n"] == 0 or pd.isna(c["ours"]):
        return MISSING
    std = "" if pd.isna(c["ours_std"]) else f" ±{c['ours_std']:.{decimals}f}"
    return f"{c['ours']:.{decimals}f}{std} [{c['n']}]"


def wide(b: Built) -> pd.DataFrame:
    """The display table: per method our row, then the paper's row of the same method (if any)."""
    lines = []
    for row in b.table.rows:
        cells = _row_cells(b, row.experiment)
        cost = b.costs[b.costs["experiment"] == row.experiment].iloc[0]
        line = {"Model": f"{b.table.ours_model} (ours)", "Method": row.method, "Trainable": count_text(cost["trainable"]),
                "% of backbone": pct_text(cost["pct_backbone"])}  # fmt: skip
        for (_, c), col in zip(cells.iterrows(), b.columns, strict=True):
            line[col.label] = cell_text(c, col.decimals)
        if b.table.average:
            ok = bool((cells["n"] > 0).all())
            line["Avg"] = f"{cells['ours'].mean():.1f}" if ok else MISSING
        line["Peak memory (MiB)"] = MISSING if pd.isna(cost["peak_mib"]) else f"{cost['peak_mib']:.0f}"
        timed, tasks = int(cost["tasks_timed"]), len(b.table.tasks)
        line["Train time / seed (s)"] = (
            MISSING if pd.isna(cost["train_s_per_seed"]) else f"{cost['train_s_per_seed']:.0f}"
        ) + (f" ({timed} of {tasks} tasks)" if 0 < timed < tasks else "")
        lines.append(line)
        pr = paper_row(b.paper, row.paper)
        if pr:
            paper = {"Model": f"{pr['model']} (paper)", "Method": pr["method"], "Trainable": pr["params"],
                     "% of backbone": ""}  # fmt: skip
            values = [paper_value(b.paper, row.paper, col) for col in b.columns]
            for v, col in zip(values, b.columns, strict=True):
                paper[col.label] = MISSING if math.isnan(v) else f"{v:.{col.decimals}f}"
            if b.table.average:
                paper["Avg"] = MISSING if any(map(math.isnan, values)) else f"{np.mean(values):.1f}"
            paper["Peak memory (MiB)"] = paper["Train time / seed (s)"] = ""
            lines.append(paper)
    return pd.DataFrame(lines)


def footnotes(b: Built) -> list[str]:
    """Legend, the paper's rows, command and seeds, budget, hardware and dates, all read from the records used."""
    spec, used = b.table.spec, b.used
    n_missing = int((b.cells["n"] == 0).sum())
    lines = [
        f"Cell: ours, {spec.aggregate} over seeds ±sample std [seeds] of the {spec.select} checkpoint's metric (best: "
        f"the epoch with the best {'dev metric' if b.table.average else 'validation loss'}), on the paper's printed "
        f"scale; {MISSING} = no complete record (never filled in). Trainable parameters exclude the task head, as the "
        "paper counts; % of the backbone. Peak memory: the most of any run of the row (CPU: peak RSS of the process). "
        "Train time / seed: training with its per-epoch evaluation, median over seeds, summed over the tasks.",
        *b.table.notes,
        f"Built by `{b.table.command}` (experiments/mini.py {b.table.name}) from {len(used)} complete records under "
        f"{b.runs_dir or 'the runs directory'}; {n_missing} of {len(b.cells)} cells missing.",
    ]
    if used:
        seeds = sorted({r.seed for r in used})
        lines.append(f"Seeds: {', '.join(map(str, seeds))}.")
        lines += budget_lines(b)
        lines += hardware_lines(used)
    if b.left_out:
        lines.append(f"Left out, not complete ({len(b.left_out)}):")
        lines += [f"- {r.experiment} / {r.task} / seed {r.seed}: {r.status}{': ' + r.reason if r.reason else ''}"
                  for r in sorted(b.left_out, key=lambda r: (r.experiment, r.task, r.seed))]  # fmt: skip
    if b.mixed:
        lines.append("Warning: these cells pool records whose configs differ beyond the seed:")
        lines += [f"- {m}" for m in b.mixed]
    return lines


def _get(cfg: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = cfg.get(part) if isinstance(cfg, dict) else None
    return cfg


def _distinct(records: Sequence[RunRecord], key: str) -> str:
    """The values of config `key` among `records`, "/"-joined (2.0 shown as 2)."""

    def text(v: Any) -> str:
        return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)

    return "/".join(sorted({text(_get(r.config, key)) for r in records}))


def budget_lines(b: Built) -> list[str]:
    """The budget the records ran with: per task the training examples, epochs (or steps), batch and length; per
    method the learning rate; for generation the decoding."""
    per_task = []
    for task in b.table.tasks:
        recs = [r for r in b.used if r.task == task]
        if not recs:
            continue
        n = _distinct(recs, "task.max_train_samples").replace("None", "all")
        steps = _distinct(recs, "train.max_steps")
        length = f"{_distinct(recs, 'train.epochs')} epochs" if steps == "-1" else f"{steps} steps"
        unit = " MRs" if b.table.metrics else ""
        per_task.append(f"{task}: {n}{unit} training examples x {length}, batch {_distinct(recs, 'train.batch_size')}, "
                        f"max length {_distinct(recs, 'train.max_length')}")  # fmt: skip
    lrs = []
    for row in b.table.rows:
        recs = [r for r in b.used if r.experiment == row.experiment]
        if recs and row.experiment != "mini_e2e_none":
            lrs.append(f"{row.method} {_distinct(recs, 'train.lr')}")
    lines = [f"Budget (from the records): {'; '.join(per_task)}. Learning rates: {', '.join(lrs)}."]
    if b.table.metrics:
        lines.append(
            f"Decoding: split {_distinct(b.used, 'task.decode_split')}, the first "
            f"{_distinct(b.used, 'task.max_decode_samples').replace('None', 'all')} inputs, beam "
            f"{_distinct(b.used, 'task.num_beams')}, length penalty {_distinct(b.used, 'task.length_penalty')}, no "
            f"repeated {_distinct(b.used, 'task.no_repeat_ngram_size')}-grams, at most "
            f"{_distinct(b.used, 'task.max_new_tokens')} new tokens; protocol {_distinct(b.used, 'protocol')}."
        )
    return lines


def hardware_lines(records: Sequence[RunRecord]) -> list[str]:
    """Where and when the records ran (their `env`): device, host, versions, commit, first start and last end,
    total training time."""
    envs = sorted({
        (str(r.env.get("device")), str(r.env.get("hostname")), str(r.env.get("torch")), str(r.env.get("transformers")))
        for r in records
    })  # fmt: skip
    where = "; ".join(f"device {d} on host {h}, torch {t}, transformers {tf}" for d, h, t, tf in envs)
    commits = sorted(
        {f"{str(r.env.get('git'))[:7]}{' (dirty)' if r.env.get('dirty') else ''}" for r in records}
    )
    started = min(r.started for r in records)
    finished = max(r.finished or r.started for r in records)
    total = sum((r.time or {}).get("train_s", 0.0) for r in records)
    return [
        f"Hardware (from the records): {where}; commit {', '.join(commits)}; runs from {started} to {finished}; "
        f"{total / 3600:.2f} h of training in all."
    ]


def render(b: Built) -> str:
    """The markdown of one mini table: title, table, the paper's claims checked, footnotes."""
    body = wide(b).to_markdown(index=False, disable_numparse=True)
    notes = "".join(line + "\n" if line.startswith("- ") else "\n" + line + "\n" for line in footnotes(b))
    claims = "\n".join(claim_lines(b))
    return f"# {b.table.spec.title}\n\n{body}\n\n## The paper's claims, here\n\n{claims}\n{notes}"


def tidy(b: Built) -> pd.DataFrame:
    """The CSV: one line per (our row, column), with the paper's value of the same method and the row's costs."""
    costs = b.costs.set_index("experiment")
    out = b.cells.drop(columns=["values"]).copy()
    out["seeds"] = out["seeds"].map(lambda s: " ".join(map(str, s)))
    out["values"] = b.cells["values"].map(lambda v: " ".join(f"{x:.4f}" for x in v))
    out["model"] = b.table.ours_model
    out["paper_model"] = out["paper_experiment"].map(lambda e: paper_row(b.paper, e).get("model", ""))
    out["trainable"] = out["experiment"].map(lambda e: " ".join(map(str, costs.at[e, "trainable"])))
    for key in ("pct_backbone", "peak_mib", "train_s_per_seed"):
        out[key] = out["experiment"].map(costs[key])
    order = ["experiment", "method", "model", "task", "metric", "column", "n", "seeds", "values", "ours", "ours_std",
             "paper_experiment", "paper_model", "paper", "trainable", "pct_backbone", "peak_mib", "train_s_per_seed"]  # fmt: skip
    return out[order]


def write(
    name: str, runs_dir: str | os.PathLike[str], out: str | os.PathLike[str],
    paper_dir: str | os.PathLike[str] = "results/paper",
) -> list[Path]:  # fmt: skip
    """Build the `name` table ("glue" | "nlg") from the records under `runs_dir`; write `out` (.md) and the CSV
    beside it; return both paths."""
    b = build(TABLES[name], read_records(runs_dir), paper_dir, str(runs_dir))
    md = Path(out)
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(render(b), encoding="utf-8")
    csv = md.with_suffix(".csv")
    csv.write_text(tidy(b).to_csv(index=False), encoding="utf-8")
    return [md, csv]


# -------------------------------------------------------------------------------------------------- lr search


def lr_search_frame(records: Sequence[RunRecord], select: str = "best") -> pd.DataFrame:
    """One line per complete mini_<method> record of a search: experiment, task, seed, lr, its metric (x100, the
    task's primary metric at the `select`ed checkpoint) and training time."""
    frame, recs = _frame(list(records))
    rows = []
    for i, r in enumerate(recs):
        f = frame.iloc[i]
        if f["status"] != "complete":
            continue
        key = f"{select}_{f['metric']}"
        value = f[key] if key in f.index else math.nan
        rows.append({"experiment": r.experiment, "task": r.task, "seed": r.seed, "lr": float(_get(r.config, "train.lr")),
                     "metric": f["metric"], "value": float(value) * 100 if pd.notna(value) else math.nan,
                     "train_s": f["train_s"]})  # fmt: skip
    return pd.DataFrame(rows, columns=["experiment", "task", "seed", "lr", "metric", "value", "train_s"])


def file_lr(experiment: str, conf_dir: str | os.PathLike[str] = "conf/experiment") -> float | None:
    """The lr an experiment file sets now (train.lr), None if it sets none or there is no such file."""
    from omegaconf import OmegaConf

    path = Path(conf_dir) / f"{experiment}.yaml"
    if not path.is_file():
        return None
    lr = OmegaConf.select(OmegaConf.load(path), "train.lr")
    return float(lr) if isinstance(lr, (int, float, str)) and _is_float(lr) else None


def _is_float(v: Any) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


def render_lr_search(
    records: Sequence[RunRecord], runs_dir: str, conf_dir: str | os.PathLike[str] = "conf/experiment"
) -> str:
    """results/mini/lr_search.md: per method and task, the dev metric at each learning rate tried (median over
    seeds), the best one in bold, and the lr its experiment file sets now."""
    df = lr_search_frame(records)
    lines = ["# glue-mini learning-rate search (`make lr-search-mini`)", ""]
    if df.empty:
        lines += [f"No complete search records under {runs_dir}: run `make lr-search-mini`.", ""]
        return "\n".join(lines)
    table = []
    for (exp, task), g in df.groupby(["experiment", "task"], sort=True):
        by_lr = g.groupby("lr")["value"].median().sort_index()
        best = by_lr.idxmax() if by_lr.notna().any() else None
        tried = ", ".join(
            f"**{lr:g}: {v:.1f}**" if lr == best else f"{lr:g}: {v:.1f}" for lr, v in by_lr.items()
        )  # fmt: skip
        now = file_lr(exp, conf_dir)
        table.append({
            "experiment": exp, "task": task, "metric": g["metric"].iloc[0], "lr: dev metric x100 (best in bold)": tried,
            "best lr": "–" if best is None else f"{best:g}", "lr in the file now": "–" if now is None else f"{now:g}",
            "follows the search": "–" if best is None or now is None else ("yes" if math.isclose(now, best) else "NO"),
            "seeds": " ".join(map(str, sorted(set(g["seed"])))), "train s / run (median)": f"{g['train_s'].median():.0f}",
        })  # fmt: skip
    lines += [pd.DataFrame(table).to_markdown(index=False, disable_numparse=True), ""]
    recs = [r for r in records if r.status == "complete"]
    lines += [
        "Each value: the best epoch's dev metric of one run (median if several seeds). The search reads the dev set "
        "that glue-mini reports, as the paper's own searches did; its budget is smaller than glue-mini's "
        "(Makefile LR_BUDGET).",
        "",
    ]
    if recs:
        budget = "; ".join(
            f"{t}: {_distinct([r for r in recs if r.task == t], 'task.max_train_samples').replace('None', 'all')} "
            f"examples x {_distinct([r for r in recs if r.task == t], 'train.epochs')} epochs, batch "
            f"{_distinct([r for r in recs if r.task == t], 'train.batch_size')}"
            for t in sorted({r.task for r in recs})
        )  # fmt: skip
        lines += [f"Budget (from the records): {budget}.", ""]
        lines += [*hardware_lines(recs), ""]
    lines += [
        f"Built by `make lr-search-mini` (experiments/mini.py lr-search) from the records under {runs_dir}.",
        "",
    ]
    return "\n".join(lines)


def write_lr_search(runs_dir: str | os.PathLike[str], out: str | os.PathLike[str]) -> list[Path]:
    with warnings.catch_warnings():
        warnings.simplefilter("default", RecordWarning)
        text = render_lr_search(read_records(runs_dir), str(runs_dir))
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return [path]
