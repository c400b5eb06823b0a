"""Figures from run records. Each function returns a `matplotlib.figure.Figure` (no pyplot state, Agg canvas); a
notebook shows it, `fig.savefig` writes it.

* notebooks/results.ipynb: `score_vs_params`, `target_ablation`, `rank_ablation`, drawn from a
  `lora.ablation.summarise` table (one panel per model and task); scores are the median over seeds of the
  best-epoch primary metric x 100, with the sample std as error bar (none for a single seed).
* `make tables` (`write_figures`): each rebuilt table beside the paper's values with the seed spread
  (`table_figure`), and the training curves of the records (`curves_figure`), under results/figures/.
"""

from __future__ import annotations

import math
import os
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from lora.ablation import RANK_EXPERIMENTS, TABLE5_RANKS, TARGET_SETS
from lora.records import PRIMARY_METRIC, RunRecord
from lora.tables import Built, latest, records_frame


def _panels(
    frame: pd.DataFrame, what: str
) -> tuple[Figure, list[tuple[tuple[str, str], pd.DataFrame, Axes]]]:
    """A figure with one axes per (model, task) of `frame`, or a one-line notice when `frame` is empty."""
    groups = list(frame.groupby(["model", "task"], sort=True)) if not frame.empty else []
    fig = Figure(figsize=(4.2 * max(len(groups), 1), 3.4), layout="constrained" if groups else None)
    axes = fig.subplots(1, max(len(groups), 1), squeeze=False)[0]
    if not groups:
        axes[0].set_axis_off()
        axes[0].text(0.5, 0.5, f"no complete records for {what}", ha="center", va="center")
    for ((model, task), g), ax in zip(groups, axes, strict=False):
        ax.set_title(f"{model} / {task}")
        ax.set_ylabel(f"{g['metric'].iloc[0]} (x100)")
    return fig, [(key, g, ax) for (key, g), ax in zip(groups, axes, strict=False)]


def score_vs_params(summary: pd.DataFrame) -> Figure:
    """Score against trainable parameters (log x), one point per experiment, coloured by method (Tables 2-3).
    The targets_* ablations are left out (see `target_ablation`, `rank_ablation`)."""
    summary = summary[~summary["experiment"].isin(TARGET_SETS)]
    fig, panels = _panels(summary, "the method comparison (experiments other than targets_*)")
    colours = {m: f"C{i}" for i, m in enumerate(sorted(summary["method"].unique()))} if len(summary) else {}
    for _, g, ax in panels:
        for method, gm in g.groupby("method"):
            ax.errorbar(gm["trainable"], gm["score"], yerr=gm["score_std"], fmt="o", capsize=3,
                        color=colours[method], label=method)  # fmt: skip
        for row in g.itertuples():
            label = row.experiment + (f" r={row.r}" if pd.notna(row.r) else "")
            ax.annotate(
                label, (row.trainable, row.score), fontsize=6, xytext=(3, 3), textcoords="offset points"
            )
        ax.set(xscale="log", xlabel="trainable parameters (task head excluded)")
        ax.legend(fontsize=7)
    return fig


def target_ablation(summary: pd.DataFrame) -> Figure:
    """Table 5: one bar per target set at its budget rank (`TABLE5_RANKS`)."""
    rows = [
        summary[(summary["experiment"] == exp) & (summary["r"] == r)] for exp, r in TABLE5_RANKS.items()
    ]  # fmt: skip
    fig, panels = _panels(pd.concat(rows), "the targets_* experiments at Table 5's ranks")
    names = list(TARGET_SETS)
    for _, g, ax in panels:
        g = g.set_index("experiment").reindex(names)
        x = np.arange(len(names))
        ax.bar(x, g["score"], yerr=g["score_std"], capsize=3, color="C0")
        ax.set_xticks(x, [f"{','.join(TARGET_SETS[n])}\nr={TABLE5_RANKS[n]}" for n in names], fontsize=7)
        lo = np.nanmin(g["score"]) if g["score"].notna().any() else 0.0
        ax.set_ylim(bottom=max(0.0, lo - 5.0))
    return fig


def rank_ablation(summary: pd.DataFrame) -> Figure:
    """Table 6: score against the rank r (log2 x), one line per target set of `RANK_EXPERIMENTS`."""
    frame = summary[summary["experiment"].isin(RANK_EXPERIMENTS) & summary["r"].notna()]
    fig, panels = _panels(frame, "the rank ablation (targets_q, targets_qv, targets_qkvo)")
    for _, g, ax in panels:
        for exp in RANK_EXPERIMENTS:
            ge = g[g["experiment"] == exp].sort_values("r")
            if len(ge):
                ax.errorbar(ge["r"].astype(int), ge["score"], yerr=ge["score_std"], marker="o",
                            capsize=3, label=",".join(TARGET_SETS[exp]))  # fmt: skip
        ranks = sorted({int(r) for r in g["r"]})
        ax.set_xscale("log", base=2)
        ax.set_xticks(ranks, [str(r) for r in ranks])
        ax.set_xlabel("rank r")
        ax.legend(fontsize=7, title="W", title_fontsize=7)
    return fig


# ------------------------------------------------------------------------------------- figures of `make tables`

# The tables `make tables` draws beside the paper (results/figures/<table>.png).
FIGURE_TABLES: tuple[str, ...] = ("table2", "table3", "table5", "table6", "table18")
CURVES_DIR = "curves"


def table_figure(built: Built) -> Figure | None:
    """Ours beside the paper's for one rebuilt table (`lora.tables.build`): one panel per paper column (a task or a
    metric) that has any of our values, one x position per table row (our variant: experiment, r, model). Per
    position: the paper's value (black diamond, its printed spread as error bar where given), ours (the table's
    aggregate over seeds, error bar = sample std over seeds) and each seed's value (grey dots). None when no cell
    of the table has a value of ours."""
    cells = built.cells
    cells = cells[(cells["task"] != "avg") & (cells["n"] > 0)]
    if cells.empty:
        return None
    columns = list(dict.fromkeys(cells["column"]))
    ncols = min(len(columns), 4)
    nrows = -(-len(columns) // ncols)
    width = max(len(g) for _, g in cells.groupby("column"))
    fig_w = max(6.0, max(3.2, 0.6 * width + 1.6) * ncols)
    fig = Figure(figsize=(fig_w, 4.0 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    agg = built.spec.aggregate
    for ax, column in zip(axes, columns, strict=False):
        g = cells[cells["column"] == column].reset_index(drop=True)
        x = np.arange(len(g))
        if g["paper"].notna().any():
            ax.errorbar(x - 0.2, g["paper"], yerr=g["paper_spread"], fmt="D", color="black", mfc="white",
                        capsize=3, label="paper")  # fmt: skip
        ax.errorbar(x, g["ours"], yerr=g["ours_std"], fmt="o", color="C0", capsize=3,
                    label=f"ours ({agg} ± std)")  # fmt: skip
        for i, values in enumerate(g["values"]):
            offsets = np.linspace(-0.05, 0.05, len(values)) if len(values) > 1 else np.zeros(len(values))
            ax.plot(i + 0.2 + offsets, values, ".", color="0.45", ms=4, label="seeds" if i == 0 else None)
        ax.set_xticks(x, [_variant_label(c) for _, c in g.iterrows()], rotation=30, ha="right", fontsize=7)
        ax.set_xlim(-0.6, len(g) - 0.4)
        ax.set_title(str(column), fontsize=9)
        ax.set_ylabel(f"{g['metric'].iloc[0]} (x{g['scale'].iloc[0]:g})", fontsize=8)
        ax.legend(fontsize=6)
    for ax in axes[len(columns) :]:
        ax.set_axis_off()
    title = f"{built.spec.title}: ours ({built.spec.select} checkpoint of each run) vs the paper"
    fig.suptitle(textwrap.fill(title, int(fig_w * 13)), fontsize=9)
    return fig


def _variant_label(cell: pd.Series) -> str:
    r = "" if pd.isna(cell["r"]) else f" r={int(cell['r'])}"
    return f"{cell['experiment']}{r}\n{cell['model']}"


def curves_figure(runs: Sequence[RunRecord], title: str) -> Figure:
    """Training curves of the runs of one (experiment, task, model, method, r): the eval metric (the task's
    primary metric, else eval_loss when the epochs carry no primary metric, as NLG epochs) and the train loss over
    epochs, one line per seed (dashed, status in the legend, for runs that did not complete)."""
    primary = PRIMARY_METRIC.get(runs[0].task, "accuracy")
    has_primary = any(_finite(e["metrics"].get(primary)) for rec in runs for e in rec.epochs)
    metric = primary if has_primary else "eval_loss"
    fig = Figure(figsize=(9.0, 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax_metric, ax_loss = fig.subplots(1, 2)
    for i, rec in enumerate(sorted(runs, key=lambda r: (r.seed, r.started))):
        label = f"seed {rec.seed}" + ("" if rec.status == "complete" else f" ({rec.status})")
        style = {
            "color": f"C{i % 10}",
            "marker": "o",
            "ms": 3,
            "ls": "-" if rec.status == "complete" else "--",
        }
        epochs = [e["epoch"] for e in rec.epochs]
        ax_metric.plot(epochs, [_nan(e["metrics"].get(metric)) for e in rec.epochs], label=label, **style)
        ax_loss.plot(epochs, [_nan(e["train_loss"]) for e in rec.epochs], label=label, **style)
    ax_metric.set(xlabel="epoch", ylabel=metric, title=f"eval {metric}")
    ax_loss.set(xlabel="epoch", ylabel="train loss", title="train loss")
    ticks = sorted({e["epoch"] for rec in runs for e in rec.epochs})
    for ax in (ax_metric, ax_loss):
        if 0 < len(ticks) <= 15:
            ax.set_xticks(ticks)
            ax.set_xlim(ticks[0] - 0.5, ticks[-1] + 0.5)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return fig


def _finite(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _nan(v: object) -> float:
    return float(v) if _finite(v) else math.nan  # type: ignore[arg-type]


def _slug(*parts: object) -> str:
    return "__".join(re.sub(r"[^A-Za-z0-9._-]+", "-", str(p)).strip("-.") or "x" for p in parts)


def write_figures(
    built: Sequence[Built], records: Sequence[RunRecord], out_dir: str | os.PathLike[str]
) -> list[Path]:
    """The figures of `make tables`, into `out_dir/figures/`: `<table>.png` for each table of `FIGURE_TABLES` with
    any value of ours (`table_figure`), and `curves/curves__<experiment>__<task>__<model>__<method>[__r<r>].png`
    for each (experiment, task, model, method, r) whose records carry epochs (`curves_figure`; one record per config hash, as the
    tables). Figures of these names that the records no longer give are removed, so the folder matches the
    records. Returns the written paths."""
    fig_dir = Path(out_dir) / "figures"
    curve_dir = fig_dir / CURVES_DIR
    curve_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for b in built:
        if b.spec.name in FIGURE_TABLES and (fig := table_figure(b)) is not None:
            written.append(_save(fig, fig_dir / f"{b.spec.name}.png"))
    frame = latest(records_frame(list(records)))
    frame = frame[frame["n_epochs"] > 0]
    keys = ["experiment", "task", "model", "method", "r"]
    for (exp, task, model, method, r), g in frame.groupby(keys, sort=True, dropna=False):
        r = None if pd.isna(r) else int(r)
        runs = [records[i] for i in g.index]
        title = f"{exp} / {task} / {model} / {method}" + ("" if r is None else f" r={r}")
        name = _slug("curves", exp, task, model, method, *([] if r is None else [f"r{r}"])) + ".png"
        written.append(_save(curves_figure(runs, title), curve_dir / name))
    keep = set(written)
    stale = [fig_dir / f"{t}.png" for t in FIGURE_TABLES] + sorted(curve_dir.glob("curves__*.png"))
    for path in stale:
        if path not in keep:
            path.unlink(missing_ok=True)
    return written


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    return path
