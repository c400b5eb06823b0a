"""`evaluate` wrapper around `lora.metrics.glue`, loadable offline from this folder.

    >>> import evaluate
    >>> metric = evaluate.load("lora/metrics/glue_metric", config_name="mrpc")
    >>> metric.compute(predictions=[1, 0, 1, 1], references=[1, 0, 0, 1])
    {'accuracy': 0.75, 'f1': 0.8}

MNLI takes the mismatched set as extra arguments: `compute(predictions=..., references=...,
predictions_mm=..., references_mm=...)`. The scores are computed by `lora.metrics.glue.compute`.
"""

import datasets
import evaluate

from lora.metrics.glue import TASK_METRICS, check_task, compute

_CITATION = """\
@inproceedings{wang2019glue,
  title={{GLUE}: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding},
  author={Wang, Alex and Singh, Amanpreet and Michael, Julian and Hill, Felix and Levy, Omer and Bowman, Samuel R.},
  booktitle={International Conference on Learning Representations},
  year={2019}
}
"""

_INPUTS = f"""
Args:
    predictions: label ids (stsb: float scores), one per example.
    references: gold label ids (stsb: gold float scores), one per example.
    predictions_mm, references_mm: mnli only, the mismatched validation set.
Returns: a dict of fractions; keys per task: {TASK_METRICS}.
"""


@evaluate.utils.file_utils.add_start_docstrings(__doc__, _INPUTS)
class GlueMetric(evaluate.Metric):
    """GLUE metric for one task, chosen by `config_name` (cola sst2 mrpc stsb qqp mnli qnli rte polarity)."""

    def _info(self) -> evaluate.MetricInfo:
        check_task(self.config_name)
        dtype = "float32" if self.config_name == "stsb" else "int64"
        return evaluate.MetricInfo(
            description=__doc__,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Value(dtype), "references": datasets.Value(dtype)}
            ),
        )

    def _compute(self, predictions, references, predictions_mm=None, references_mm=None) -> dict[str, float]:
        return compute(
            self.config_name,
            predictions,
            references,
            predictions_mm=predictions_mm,
            references_mm=references_mm,
        )
