"""Reading the benchmark reports back in tests: the Markdown tables' cells (whatever their padding) and the CSV
written beside each report."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

QUIET = lambda s: None  # noqa: E731


def md_rows(text: str) -> list[list[str]]:
    """Every row of every Markdown table in `text` as its stripped cells (header and separator rows included)."""
    return [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("|")
    ]


def has_row(text: str, *first: str) -> bool:
    """Whether a table row of `text` starts with the cells `first`."""
    return any(row[: len(first)] == list(first) for row in md_rows(text))


def report_csv(md: Path) -> pd.DataFrame:
    """The CSV beside the report `md` (every table's raw values, column `table`)."""
    return pd.read_csv(md.with_suffix(".csv"))
