"""`evaluate` wrapper around `lora.metrics.nlg.score`: `evaluate.load("lora/metrics/e2e_nlg")`.

metric = evaluate.load("lora/metrics/e2e_nlg")  # a local path: nothing is downloaded
metric.compute(predictions=["..."], references=[["...", "..."]], metrics=["bleu", "ter"])
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import datasets
import evaluate

from lora.metrics.nlg import METRICS, score

_DESCRIPTION = "E2E NLG metrics (BLEU, NIST, METEOR, ROUGE-L, CIDEr as measure_scores.py) and TER."
_KWARGS_DESCRIPTION = """
Args:
    predictions: one output string per input.
    references: a list of reference strings per input (any number, at least one).
    metrics: subset of ("bleu", "nist", "meteor", "rouge_l", "cider", "ter"); default: the first five.
Returns:
    {metric: value}; BLEU, METEOR, ROUGE-L, TER as fractions, NIST and CIDEr unscaled.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class E2eNlg(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
        )

    def _compute(
        self,
        predictions: Sequence[str],
        references: Sequence[Sequence[str]],
        metrics: Iterable[str] = METRICS,
    ) -> dict[str, float]:
        return score(predictions, references, metrics)
