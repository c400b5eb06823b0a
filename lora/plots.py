"""Figures of notebooks/results.ipynb, drawn from a `lora.ablation.summarise` table (one panel per model and task).

Each function returns a `matplotlib.figure.Figure` (no pyplot state); a notebook shows it, `fig.savefig` writes it.
Scores are the median over seeds of the best-epoch primary metric x 100, with the sample std as error bar
(none for a single seed).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from lora.ablation import RANK_EXPERIMENTS, TABLE5_RANKS, TARGET_SETS


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
