"""GLUE metrics, as the LoRA paper reports them (Hu et al., 2021, Table 2 and Appendix D.1).

Table 2 reports MNLI matched accuracy, CoLA Matthews correlation, STS-B Pearson correlation and accuracy for the
other tasks; the GLUE benchmark (Wang et al., 2019) also defines MRPC/QQP F1, STS-B Spearman and MNLI mismatched
accuracy, which are returned too. Every value is a fraction in [0, 1] (correlations in [-1, 1]); tables
multiply by 100.

    >>> compute("mrpc", predictions=[1, 0, 1, 1], references=[1, 0, 0, 1])
    {'accuracy': 0.75, 'f1': 0.8}
    >>> PRIMARY["cola"]
    'matthews_correlation'

`polarity` (the offline demo's binary sentiment task, see `lora.data.polarity`) is scored like SST-2.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats
from sklearn.metrics import f1_score, matthews_corrcoef

from lora.errors import ConfigError

ArrayLike = Sequence[float] | Sequence[int] | np.ndarray

# Every metric key `compute` returns, per task.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "cola": ("matthews_correlation",),
    "sst2": ("accuracy",),
    "mrpc": ("accuracy", "f1"),
    "stsb": ("pearson", "spearmanr"),
    "qqp": ("accuracy", "f1"),
    "mnli": ("accuracy", "accuracy_mm"),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
    "polarity": ("accuracy",),
}

# The metric of the paper's Table 2 column for each task.
PRIMARY: dict[str, str] = {
    "mnli": "accuracy",
    "sst2": "accuracy",
    "mrpc": "accuracy",
    "cola": "matthews_correlation",
    "qnli": "accuracy",
    "qqp": "accuracy",
    "rte": "accuracy",
    "stsb": "pearson",
    "polarity": "accuracy",
}


def check_task(task: str) -> str:
    """Return `task` if it is a known task name, else raise a ValueError listing the valid ones."""
    if task not in TASK_METRICS:
        raise ConfigError(f"unknown GLUE task {task!r}; valid tasks: {', '.join(TASK_METRICS)}")
    return task


def _as_1d(values: ArrayLike, task: str, name: str) -> np.ndarray:
    """Predictions or references as a 1-D array of shape (n,).

    Accepts label ids (n,), classification logits (n, num_labels), which are arg-maxed, or regression outputs
    (n, 1), which are squeezed; so a `transformers` EvalPrediction can be passed as it is.
    """
    array = np.asarray(values)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    elif array.ndim == 2 and task != "stsb":
        array = array.argmax(axis=1)
    if array.ndim != 1 or array.size == 0:
        raise ConfigError(
            f"{task}: {name} must be a non-empty 1-D array (or 2-D logits), got shape {array.shape}"
        )
    return array


def _pair(
    task: str, predictions: ArrayLike, references: ArrayLike, suffix: str = ""
) -> tuple[np.ndarray, ...]:
    preds = _as_1d(predictions, task, "predictions" + suffix)
    refs = _as_1d(references, task, "references" + suffix)
    if preds.shape != refs.shape:
        raise ConfigError(
            f"{task}: predictions{suffix} has {preds.size} items but references{suffix} has {refs.size}"
        )
    return preds, refs


def _accuracy(preds: np.ndarray, refs: np.ndarray) -> float:
    return float((preds == refs).mean())


def compute(
    task: str,
    predictions: ArrayLike,
    references: ArrayLike,
    *,
    predictions_mm: ArrayLike | None = None,
    references_mm: ArrayLike | None = None,
) -> dict[str, float]:
    """Score one task's predictions against its references.

    Args:
        task: lowercase task name (cola sst2 mrpc stsb qqp mnli qnli rte polarity).
        predictions: shape (n,) label ids (stsb: scores), or (n, num_labels) logits.
        references: shape (n,) gold label ids (stsb: gold scores in [0, 5]).
        predictions_mm, references_mm: MNLI only, the mismatched validation set's predictions and references;
            when given, `accuracy_mm` is added (`accuracy` is then the matched one).

    Returns:
        A dict of the task's metrics (see TASK_METRICS) as fractions. F1 is binary with label 1 (paraphrase,
        duplicate) as the positive class, as in GLUE. Pearson/Spearman are NaN if the predictions are constant.
    """
    check_task(task)
    if (predictions_mm is None) != (references_mm is None):
        raise ConfigError("pass both predictions_mm and references_mm (MNLI mismatched), or neither")
    if predictions_mm is not None and task != "mnli":
        raise ConfigError(f"predictions_mm/references_mm are for mnli only, not {task!r}")
    preds, refs = _pair(task, predictions, references)
    if task == "stsb":
        preds, refs = preds.astype(np.float64), refs.astype(np.float64)
        return {
            "pearson": float(stats.pearsonr(preds, refs).statistic),
            "spearmanr": float(stats.spearmanr(preds, refs).statistic),
        }
    if task == "cola":
        return {"matthews_correlation": float(matthews_corrcoef(refs, preds))}
    out = {"accuracy": _accuracy(preds, refs)}
    if task in ("mrpc", "qqp"):
        out["f1"] = float(f1_score(refs, preds, pos_label=1, average="binary", zero_division=0.0))
    if predictions_mm is not None:
        out["accuracy_mm"] = _accuracy(*_pair(task, predictions_mm, references_mm, suffix="_mm"))
    return out
