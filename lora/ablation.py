"""The paper's ablations (Sec. 7.1, Tables 5-6) and the inputs of its low-rank analysis (Sec. 7.2-7.3).

* Table 5 fixes the budget: 18M trainable parameters on GPT-3 175B, i.e. r x (number of adapted matrix types) = 8
  (r = 8 on one of W_q, W_k, W_v, W_o; 4 on two; 2 on all four). Where every attention matrix is d x d (RoBERTa,
  BERT, GPT-2) LoRA on matrix types T at rank r trains r |T| 2d L parameters, so r = 8 / |T| keeps the budget.
  `rank_for_budget` derives r from counted parameters (meta device) and refuses budgets that are not a whole rank
  (e.g. grouped-query k/v, narrower than q).
* Table 6 sweeps r in {1, 2, 4, 8, 64} for W_q, (W_q, W_v) and all four. Both tables read records by experiment name
  (`targets_q`, ..., `targets_qkvo`, conf/experiment/) and `config["method"]["r"]` (`lora.tables.record_rank`).
* `summarise(records)`: median and spread over seeds per (experiment, model, task, method, r), for any task.
* `find_study_adapters` / `subspace_study`: Figures 3-4 and Table 7 from the adapters of the rank ablation
  (targets_qv at r = 8 and 64, seeds 0 and 1), W from the base model the record names.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import Tensor, nn

from lora import analysis
from lora.errors import ConfigError, InputNotFound
from lora.records import RunRecord, load_records, record_filename
from lora.tables import latest, records_frame

TARGET_SETS: dict[str, tuple[str, ...]] = {
    "targets_q": ("q",), "targets_k": ("k",), "targets_v": ("v",), "targets_o": ("o",),
    "targets_qk": ("q", "k"), "targets_qv": ("q", "v"), "targets_qkvo": ("q", "k", "v", "o"),
}  # fmt: skip
TABLE5_RANKS: dict[str, int] = {
    "targets_q": 8, "targets_k": 8, "targets_v": 8, "targets_o": 8, "targets_qk": 4, "targets_qv": 4,
    "targets_qkvo": 2,
}  # fmt: skip
RANK_EXPERIMENTS: tuple[str, ...] = ("targets_q", "targets_qv", "targets_qkvo")
RANK_SWEEP: tuple[int, ...] = (1, 2, 4, 8, 64)

# ---------------------------------------------------------------------------------------------------- budget


def lora_trainable(model: str, targets: Sequence[str], r: int) -> int:
    """Trainable parameters (paper convention: no task head) of LoRA at rank `r` on the roles `targets` of `model`,
    counted on the meta device (no weights, no download)."""
    # Imported here and below: transformers takes ~4 s to load, which summaries and plots do not need.
    from lora import methods
    from lora.models import build_model, head_parameter_names, spec
    from lora.params import count_parameters

    kind = "causal_lm" if spec(model).family in ("gpt2", "llama") else "classification"
    m = build_model(model, kind, pretrained=False, device="meta")
    cfg = methods.method_config("lora", r=r, targets=list(targets))
    methods.apply(m, "lora", cfg, head=head_parameter_names(m))
    return count_parameters(m).trainable


def rank_for_budget(model: str, targets: Sequence[str], budget: int) -> int:
    """The rank r at which LoRA on `targets` of `model` trains exactly `budget` parameters (linear in r)."""
    per_rank = lora_trainable(model, targets, 1)
    if budget <= 0 or budget % per_rank:
        raise ConfigError(
            f"a budget of {budget:,} parameters is not a whole rank for LoRA on {list(targets)} of {model}: "
            f"one rank costs {per_rank:,}; pick a positive multiple of it"
        )
    return budget // per_rank


def budget_ranks(model: str = "roberta-base", r_single: int = 8) -> dict[str, int]:
    """Table 5's r per experiment: the budget of LoRA on W_q alone at rank `r_single` (the paper: 8), spread
    over each target set of `TARGET_SETS`."""
    budget = lora_trainable(model, ("q",), r_single)
    return {name: rank_for_budget(model, roles, budget) for name, roles in TARGET_SETS.items()}


# ------------------------------------------------------------------------------------------------- summaries

SUMMARY_COLUMNS = (
    "experiment", "model", "task", "method", "targets", "r", "trainable", "metric", "n", "seeds", "score",
    "score_std",
)  # fmt: skip


def summarise(records: Iterable[RunRecord]) -> pd.DataFrame:
    """One row per (experiment, model, task, method, r) over the complete records: `score` = median over seeds of
    the best-epoch primary metric (lora.records.PRIMARY_METRIC, accuracy by default) x 100, `score_std` its sample
    std (NaN for one seed), `n` and `seeds`, `trainable` (parameters, paper convention), `targets` ("q,v"; LoRA).
    Reads the records through `lora.tables.records_frame` (one record per config hash: `lora.tables.latest`)."""
    frame = latest(records_frame(list(records)))
    frame = frame[(frame["status"] == "complete") & frame["trainable"].notna()]
    value = [
        frame.at[i, f"best_{m}"] if f"best_{m}" in frame else math.nan for i, m in frame["metric"].items()
    ]
    lora = frame["method"] == "lora"
    rows = frame.assign(
        value=100.0 * pd.Series(value, index=frame.index, dtype=float),
        r=[int(r) if ok and r is not None else -1 for r, ok in zip(frame["r"], lora, strict=True)],
        targets=frame["targets"].where(lora, ""),
        trainable=frame["trainable"].astype(int),
    ).dropna(subset=["value"])
    keys = ["experiment", "model", "task", "method", "targets", "r", "trainable", "metric"]
    if rows.empty:
        return pd.DataFrame(columns=list(SUMMARY_COLUMNS))
    out = (
        rows.groupby(keys, sort=True)
        .agg(
            n=("value", "size"),
            seeds=("seed", lambda s: sorted(int(x) for x in s)),
            score=("value", "median"),
            score_std=("value", lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else math.nan),
        )
        .reset_index()
    )
    out["r"] = pd.Series([None if r == -1 else int(r) for r in out["r"]], index=out.index, dtype=object)
    return out[list(SUMMARY_COLUMNS)]


def ablation_markdown(summary: pd.DataFrame) -> str:
    """Tables 5 and 6 in the paper's layout for every (model, task) with `targets_*` records: Table 5 at its
    budget ranks (`TABLE5_RANKS`), Table 6 with a column per r; cells "median ±std [seeds]" (score x 100)."""
    abl = summary[summary["experiment"].isin(TARGET_SETS)]
    if abl.empty:
        return (
            "No complete records of the targets_* experiments (make ablation-targets / make ablation-rank).\n"
        )
    parts = []
    for (model, task), g in abl.groupby(["model", "task"], sort=True):
        metric = g["metric"].iloc[0]
        t5 = [(exp, TABLE5_RANKS[exp]) for exp in TARGET_SETS]
        head5 = "| weights | r | trainable | " + f"{task} {metric} |"
        lines = [f"## {model} on {task}", "", "Table 5 (fixed budget):", "", head5, "|---|---|---|---|"]
        for exp, r in t5:
            row = g[(g["experiment"] == exp) & (g["r"] == r)]
            params = f"{int(row['trainable'].iloc[0]):,}" if len(row) else "–"
            lines.append(f"| {_weights(exp)} | {r} | {params} | {_cell(row)} |")
        ranks = sorted({int(r) for r in g["r"].dropna()} | set(RANK_SWEEP))
        lines += ["", "Table 6 (rank r):", "", "| weights | " + " | ".join(f"r={r}" for r in ranks) + " |"]
        lines.append("|---|" + "---|" * len(ranks))
        for exp in RANK_EXPERIMENTS:
            cells = [_cell(g[(g["experiment"] == exp) & (g["r"] == r)]) for r in ranks]
            lines.append(f"| {_weights(exp)} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def write_report(summary: pd.DataFrame, path: str | os.PathLike[str], header: str = "") -> list[Path]:
    """Write `header` + `ablation_markdown(summary)` to `path` (e.g. results/analysis/ablations.md) and the summary
    itself beside it as CSV (same name, .csv; seeds space-separated); returns both paths."""
    md = Path(path)
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(header + ablation_markdown(summary), encoding="utf-8")
    csv = md.with_suffix(".csv")
    table = summary.assign(seeds=[" ".join(map(str, s)) for s in summary["seeds"]])
    table.to_csv(csv, index=False)
    return [md, csv]


def _weights(experiment: str) -> str:
    return ", ".join(f"W_{t}" for t in TARGET_SETS[experiment])


def _cell(rows: pd.DataFrame) -> str:
    if rows.empty:
        return "–"
    row = rows.iloc[0]
    std = "" if pd.isna(row["score_std"]) else f" ±{row['score_std']:.1f}"
    return f"{row['score']:.1f}{std} [{row['n']}]"


# -------------------------------------------------------------------------------------------------- adapters


@dataclass(frozen=True)
class StudyAdapters:
    """The three adapters of the analysis and the base model they were trained on.

    small, large: adapter directories at ranks r_small and r_large (same seed; Figure 3 and Table 7);
    other: rank r_large from a second seed (Figure 4). model/pretrained/path: as in the records' config."""

    small: Path
    large: Path
    other: Path
    model: str
    pretrained: bool = True
    path: str | None = None
    source: str = ""


def adapter_dir(record: RunRecord, root: str | os.PathLike[str] | None = None) -> Path:
    """Where training saved the record's best-epoch adapter: <output_dir>/<record file stem>/adapter (lora.train).
    A relative output_dir is taken relative to `root` (default: the current directory, where `make` trains)."""
    out = Path(str(record.config.get("output_dir") or "outputs/runs"))
    if not out.is_absolute() and root is not None:
        out = Path(root) / out
    return out / record_filename(record).removesuffix(".json") / "adapter"


def find_study_adapters(
    runs_dir: str | os.PathLike[str],
    experiment: str = "targets_qv",
    r_small: int = 8,
    r_large: int = 64,
    seeds: tuple[int, int] = (0, 1),
    model: str | None = None,
    task: str | None = None,
    root: str | os.PathLike[str] | None = None,
) -> StudyAdapters:
    """The adapters of the rank ablation's records: (r_small, seeds[0]), (r_large, seeds[0]), (r_large, seeds[1])
    of `experiment`, on the one (model, task) that has all three (pick with model=/task= if several do).
    FileNotFoundError (one line, naming the make target that produces them) when any is missing."""
    if not 0 < r_small < r_large or seeds[0] == seeds[1]:
        raise ConfigError(
            f"need 0 < r_small < r_large and two different seeds, got {r_small}, {r_large}, {seeds}"
        )
    make = (
        f"make ablation-rank RANK_EXPS={experiment} RANKS={r_small},{r_large} SEEDS={seeds[0]},{seeds[1]}"
        + (f" MODEL={model}" if model else "") + (f" TASK={task}" if task else "")
    )  # fmt: skip
    hint = f"run `{make}` first, or pass adapter directories (small= large= other= model=)"
    try:
        records = load_records(runs_dir)
    except FileNotFoundError:
        raise InputNotFound(f"no run records: {str(runs_dir)!r} does not exist; {hint}") from None
    need = {(r_small, seeds[0]): "small", (r_large, seeds[0]): "large", (r_large, seeds[1]): "other"}
    found: dict[tuple[str, str], dict[str, RunRecord]] = {}
    for rec in sorted(records, key=lambda x: x.finished or ""):  # the last finished wins
        method = rec.config.get("method") if isinstance(rec.config.get("method"), dict) else {}
        role = need.get((method.get("r"), rec.seed))
        if (
            role and rec.status == "complete" and rec.method == "lora" and rec.experiment == experiment
            and model in (None, rec.model) and task in (None, rec.task)
        ):  # fmt: skip
            found.setdefault((rec.model, rec.task), {})[role] = rec
    complete = {k: v for k, v in found.items() if len(v) == len(need)}
    where = f"{experiment}" + (f" / {model}" if model else "") + (f" / {task}" if task else "")
    if not complete:
        missing = [
            f"r={r} seed {s}" for (r, s), role in need.items() if not any(role in v for v in found.values())
        ]
        what = ", ".join(missing) or "one set of all three on a single model and task"
        raise InputNotFound(f"no complete {where} records with {what} under {runs_dir}; {hint}")
    if len(complete) > 1:
        options = ", ".join(f"model={m} task={t}" for m, t in sorted(complete))
        raise ConfigError(
            f"records of several runs match {where} ({options}); pick one with model= and task="
        )
    (mdl, tsk), recs = next(iter(complete.items()))
    dirs = {role: adapter_dir(rec, root) for role, rec in recs.items()}
    for role, d in dirs.items():
        if not (d / "adapter.safetensors").is_file():
            raise InputNotFound(
                f"the adapter of {recs[role].source or recs[role].experiment} is missing ({d}); rerun that run "
                f"with save_adapter=true force=true added to its overrides (EXTRA= of `{make}`)"
            )
    cfg = recs["large"].config.get("model") or {}
    return StudyAdapters(
        small=dirs["small"], large=dirs["large"], other=dirs["other"], model=mdl,
        pretrained=bool(cfg.get("pretrained", True)), path=cfg.get("path"), source=f"{experiment} / {mdl} / {tsk}",
    )  # fmt: skip


def base_matrix(model: nn.Module, role: str, layer: int) -> tuple[str, Tensor]:
    """W (d_out, d_in) of `role` in transformer layer `layer` of a model without adapters, and the path of its
    module ('<path>' or, for a slice of GPT-2's fused c_attn, '<path>.<q|k|v>', as `analysis.lora_factors` names
    factors). GPT-2's Conv1D stores (d_in, d_out), so it is transposed; a fused slice is a row block of that."""
    from transformers.pytorch_utils import Conv1D

    from lora.architectures import SLICE_NAMES, fused_slices, resolve_sites
    from lora.methods.base import get_module

    sites = resolve_sites(model, [role], [layer])
    if len(sites) != 1:
        raise ConfigError(f"role {role!r} is {len(sites)} matrices in this model; pick one of q, k, v, o")
    (path, uses), = sites.items()  # fmt: skip
    module = get_module(model, path)
    W = module.weight.detach()
    W = W.T if isinstance(module, Conv1D) else W
    part = uses[0][1]
    if part is None:
        return path, W
    width = W.shape[0] // (fused_slices(model, path) or 1)
    return f"{path}.{SLICE_NAMES[part]}", W[part * width : (part + 1) * width]


# ----------------------------------------------------------------------------------------------------- study


@dataclass
class SubspaceStudy:
    """Sec. 7 on one layer. fig3: panel -> phi grid (i <= r_small, j <= r_large) between A_{r_small} and A_{r_large}
    (same seed); fig4: panel -> phi grid (i, j <= r_large) between two seeds at r_large; both end with a random
    Gaussian control of the same shapes. table7: `analysis.amplification` rows with 'label' and 'r'."""

    model: str
    layer: int
    n_layers: int
    r_small: int
    r_large: int
    fig3: dict[str, np.ndarray] = field(default_factory=dict)
    fig4: dict[str, np.ndarray] = field(default_factory=dict)
    table7: list[dict[str, Any]] = field(default_factory=list)


def _adapter(directory: Path) -> tuple[dict[str, tuple[Tensor, Tensor]], int, float]:
    """LoRA factors of a saved adapter, its rank r and scaling alpha / r (adapter_config.json)."""
    cfg_path = directory / "adapter_config.json"
    if not cfg_path.is_file():
        raise InputNotFound(f"no adapter at {directory}: adapter_config.json is missing")
    cfg = json.loads(cfg_path.read_text())["config"]
    return (
        analysis.load_adapter_factors(directory / "adapter.safetensors"),
        int(cfg["r"]),
        cfg["alpha"] / cfg["r"],
    )


def _factor(factors: dict[str, tuple[Tensor, Tensor]], path: str, directory: Path) -> tuple[Tensor, Tensor]:
    """The factors whose name ends with the backbone-relative `path` (the adapter was saved with a task head)."""
    hits = [k for k in factors if k == path or k.endswith("." + path)]
    if len(hits) != 1:
        raise ConfigError(
            f"adapter {directory} has {len(hits)} LoRA modules matching {path!r}; was it trained on q, v?"
        )
    return factors[hits[0]]


def subspace_study(
    adapters: StudyAdapters, layer: int | None = None, roles: Sequence[str] = ("q", "v"), seed: int = 0
) -> SubspaceStudy:
    """Figures 3-4 and Table 7 (Sec. 7.2-7.3) for `roles` of one transformer layer (default: the middle one, as the
    paper's layer 48 of 96). W is the pretrained weight of the base model the adapters were trained on."""
    from lora.architectures import layer_list
    from lora.models import build_model

    base = build_model(adapters.model, "base", pretrained=adapters.pretrained, path=adapters.path).eval()
    n_layers = len(layer_list(base)[1])
    layer = n_layers // 2 if layer is None else layer
    if not 0 <= layer < n_layers:
        raise ConfigError(f"layer={layer} is out of range: {adapters.model} has layers 0..{n_layers - 1}")
    (small, r_s, sc_s), (large, r_l, sc_l) = _adapter(adapters.small), _adapter(adapters.large)
    other, r_o, _ = _adapter(adapters.other)
    if not r_s < r_l == r_o:
        raise ConfigError(f"need r_small < r_large on both seeds; the adapters have r = {r_s}, {r_l}, {r_o}")
    study = SubspaceStudy(adapters.model, layer, n_layers, r_s, r_l)
    zoom = {}
    for role in roles:
        path, W = base_matrix(base, role, layer)
        (A_s, B_s), (A_l, B_l) = _factor(small, path, adapters.small), _factor(large, path, adapters.large)
        A_o, _ = _factor(other, path, adapters.other)
        grid = analysis.similarity_grid(A_s, A_l)
        study.fig3[f"ΔW_{role}: r={r_s} vs r={r_l}"] = grid
        zoom[f"ΔW_{role}, j ≤ {r_s}"] = grid[:, :r_s]
        study.fig4[f"ΔW_{role}: seed A vs seed B, r={r_l}"] = analysis.similarity_grid(A_l, A_o)
        for A, B, r, scaling in ((A_s, B_s, r_s, sc_s), (A_l, B_l, r_l, sc_l)):
            dW = analysis.delta_weight(A, B, scaling)
            row = analysis.amplification(W, dW, r=min(r, *W.shape), seed=seed)
            study.table7.append({"label": f"ΔW_{role}, layer {layer}", "r": r, **row})
    study.fig3 |= zoom
    A_s, A_l = next(iter(small.values()))[0], next(iter(large.values()))[0]
    g_s, g_l = analysis.random_gaussian_like(A_s, seed), analysis.random_gaussian_like(A_l, seed + 1)
    study.fig3["random Gaussian (control)"] = analysis.similarity_grid(g_s, g_l)
    study.fig4["random Gaussian (control)"] = analysis.similarity_grid(
        g_l, analysis.random_gaussian_like(A_l, seed + 2)
    )
    study.table7.sort(key=lambda row: (row["label"], row["r"]))
    return study
