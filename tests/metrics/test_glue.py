"""lora.metrics.glue against hand-computed values, and its `evaluate` module."""

import math
from pathlib import Path

import numpy as np
import pytest

from lora.metrics.glue import PRIMARY, TASK_METRICS, compute


def test_accuracy_and_f1() -> None:
    # tp=2 (rows 0, 3), fp=1 (row 2), fn=0, tn=1: accuracy 3/4; precision 2/3, recall 1, F1 = 2PR/(P+R) = 0.8.
    for task in ("mrpc", "qqp"):
        assert compute(task, [1, 0, 1, 1], [1, 0, 0, 1]) == {"accuracy": 0.75, "f1": pytest.approx(0.8)}
    # No positive prediction: F1 is 0 (not a warning); accuracy 1/2.
    assert compute("mrpc", [0, 0], [1, 0]) == {"accuracy": 0.5, "f1": 0.0}


def test_accuracy_only_tasks() -> None:
    for task in ("sst2", "qnli", "rte", "polarity"):
        assert compute(task, [0, 1, 1, 0], [0, 1, 0, 0]) == {"accuracy": 0.75}


def test_matthews_correlation() -> None:
    # tp=2, fp=1, tn=2, fn=0: MCC = (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = 4 / sqrt(36) = 2/3.
    assert compute("cola", [1, 1, 0, 0, 1], [1, 0, 0, 0, 1]) == {"matthews_correlation": pytest.approx(2 / 3)}
    assert compute("cola", [1, 1, 1], [1, 0, 1]) == {"matthews_correlation": 0.0}  # constant prediction


def test_pearson_spearman() -> None:
    # x = [1, 2, 3, 10], y = [1, 2, 3, 4]: deviations (-3, -2, -1, 6) and (-1.5, -.5, .5, 1.5), so
    # r = 14 / sqrt(50 * 5) = 0.88544; the ranks agree exactly, so Spearman = 1.
    out = compute("stsb", [1.0, 2.0, 3.0, 10.0], [1.0, 2.0, 3.0, 4.0])
    assert out == {"pearson": pytest.approx(14 / math.sqrt(250)), "spearmanr": pytest.approx(1.0)}
    # (n, 1) regression outputs are squeezed; here x = [1, 2, 3, 4], y = [1, 3, 2, 4]: r = 4 / 5, rho = 0.8.
    out = compute("stsb", np.array([[1.0], [2.0], [3.0], [4.0]]), [1, 3, 2, 4])
    assert out == {"pearson": pytest.approx(0.8), "spearmanr": pytest.approx(0.8)}


def test_mnli_matched_and_mismatched() -> None:
    assert compute("mnli", [0, 1, 2], [0, 1, 1]) == {"accuracy": pytest.approx(2 / 3)}
    out = compute("mnli", [0, 1, 2], [0, 1, 1], predictions_mm=[2, 2], references_mm=[2, 0])
    assert out == {"accuracy": pytest.approx(2 / 3), "accuracy_mm": 0.5}


def test_logits_are_argmaxed() -> None:
    logits = np.array([[2.0, -1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.1, 0.2]])  # argmax 0, 1, 2
    assert compute("mnli", logits, [0, 1, 1]) == {"accuracy": pytest.approx(2 / 3)}


def test_primary_is_table2() -> None:
    assert PRIMARY == {
        "mnli": "accuracy", "sst2": "accuracy", "mrpc": "accuracy", "cola": "matthews_correlation",
        "qnli": "accuracy", "qqp": "accuracy", "rte": "accuracy", "stsb": "pearson", "polarity": "accuracy",
    }  # fmt: skip
    assert all(PRIMARY[task] in keys for task, keys in TASK_METRICS.items())


def test_errors() -> None:
    with pytest.raises(
        ValueError, match="unknown GLUE task 'sst-2'; valid tasks: cola, sst2, mrpc, stsb, qqp"
    ):
        compute("sst-2", [1], [1])
    with pytest.raises(ValueError, match="rte: predictions has 2 items but references has 3"):
        compute("rte", [1, 0], [1, 0, 1])
    with pytest.raises(
        ValueError, match=r"rte: predictions must be a non-empty 1-D array .*got shape \(0,\)"
    ):
        compute("rte", [], [])
    with pytest.raises(ValueError, match="predictions_mm/references_mm are for mnli only, not 'rte'"):
        compute("rte", [1], [1], predictions_mm=[1], references_mm=[1])
    with pytest.raises(ValueError, match="pass both predictions_mm and references_mm"):
        compute("mnli", [1], [1], predictions_mm=[1])


def test_evaluate_module_offline() -> None:
    evaluate = pytest.importorskip("evaluate")
    folder = Path(__file__).resolve().parents[2] / "lora" / "metrics" / "glue_metric"
    metric = evaluate.load(str(folder), config_name="mrpc")
    assert metric.compute(predictions=[1, 0, 1, 1], references=[1, 0, 0, 1]) == {
        "accuracy": 0.75,
        "f1": pytest.approx(0.8),
    }
    stsb = evaluate.load(str(folder), config_name="stsb")
    assert stsb.compute(predictions=[1.0, 2.0, 3.0, 4.0], references=[1.0, 3.0, 2.0, 4.0])[
        "pearson"
    ] == pytest.approx(0.8)
    mnli = evaluate.load(str(folder), config_name="mnli")
    out = mnli.compute(predictions=[0, 1], references=[0, 0], predictions_mm=[2], references_mm=[2])
    assert out == {"accuracy": 0.5, "accuracy_mm": 1.0}
    with pytest.raises(ValueError, match="unknown GLUE task 'default'"):
        evaluate.load(str(folder))
