"""Where the sweeps stand: per paper table, how many of its runs are complete, failed, diverged, oom or still
running, and how many of its cells have no complete record yet (`make status`).

A run counts for a table when its record names one of the table's experiments and tasks (and its rank r, where the
table's row fixes one), as `lora.tables.build` places records; copies of one run count once (`lora.tables.latest`:
the complete copy, else the last finished). `complete` counts the complete records that fill cells; `running` is
a record without an end (in progress, or its process was killed). A cell is one (table row, task) of the paper's
table (tasks that our records added to Tables 5-6 too); `missing` counts those without a complete record of ours at
any seed.
"""

from __future__ import annotations

import os
import textwrap
import warnings
from collections import Counter
from pathlib import Path

import pandas as pd

from lora.records import STATUSES, RecordWarning
from lora.tables import TABLES, _dedupe, _read_runs, build, load_paper, records_frame

COUNTS: tuple[str, ...] = ("complete", "failed", "diverged", "oom", "running")
STATUS_COLUMNS: tuple[str, ...] = ("table", *COUNTS, "missing", "cells")
NO_TABLE = "(no table)"


def status_frame(
    runs_dir: str | os.PathLike[str] = "results/runs", paper_dir: str | os.PathLike[str] = "results/paper"
) -> tuple[pd.DataFrame, list[str]]:
    """One row per table of `lora.tables.TABLES` (columns `STATUS_COLUMNS`), then a row `NO_TABLE` for records
    that fill no table (its missing and cells are NA); and the messages about files under `runs_dir` that could not
    be read as records (a missing `runs_dir` counts nothing and gives one message)."""
    records, skipped = _records(runs_dir)
    frame = records_frame(records)
    rows, placed = [], set()
    for spec in TABLES:
        b = build(spec, load_paper(paper_dir, spec.csv), records, frame)
        counted = b.used + b.left_out
        placed |= {id(rec) for rec in counted}
        by_status = Counter(rec.status for rec in counted)
        cells = b.cells[b.cells["task"] != "avg"].groupby(["row", "task"])["n"].max()
        rows.append({
            "table": spec.name, **{s: by_status.get(s, 0) for s in COUNTS},
            "missing": int((cells == 0).sum()), "cells": len(cells),
        })  # fmt: skip
    by_status = Counter(rec.status for rec in records if id(rec) not in placed)
    rows.append(
        {"table": NO_TABLE, **{s: by_status.get(s, 0) for s in COUNTS}, "missing": pd.NA, "cells": pd.NA}
    )
    out = pd.DataFrame(rows, columns=list(STATUS_COLUMNS))
    for col in ("missing", "cells"):
        out[col] = out[col].astype("Int64")
    return out, skipped


def status_text(
    runs_dir: str | os.PathLike[str] = "results/runs", paper_dir: str | os.PathLike[str] = "results/paper"
) -> str:
    """`status_frame` as the plain-text report `make status` prints: a line of totals, the table, a legend and
    the unreadable files."""
    if not Path(runs_dir).is_dir():
        head = f"No run records: {runs_dir} does not exist (run a sweep first)."
    else:
        total = counts(runs_dir)
        head = f"{sum(total.values())} runs under {runs_dir} (copies of one run count once): " + ", ".join(
            f"{total[s]} {s}" for s in COUNTS
        )
    table, skipped = status_frame(runs_dir, paper_dir)
    notes = [
        "Per table (a run can fill more than one): complete = complete records that fill its cells; failed / "
        "diverged / oom = ended badly (reasons under each table of `make tables`); running = no end recorded (in "
        "progress, or killed); missing = cells (row x task) of the paper's table without a complete record of ours, "
        "out of cells."
    ]
    if skipped and Path(runs_dir).is_dir():
        notes += [f"Unreadable files skipped: {len(skipped)}"] + [f"- {s}" for s in skipped]
    shown = table.astype({"missing": object, "cells": object}).fillna("")
    notes = [textwrap.fill(n, 110) for n in notes]
    return "\n".join([head, "", shown.to_string(index=False), "", *notes]) + "\n"


def counts(runs_dir: str | os.PathLike[str]) -> dict[str, int]:
    """Records under `runs_dir` by status (copies of one run count once), every status of `STATUSES` present."""
    found = Counter(rec.status for rec in _records(runs_dir)[0])
    return {s: found.get(s, 0) for s in STATUSES}


def _records(runs_dir: str | os.PathLike[str]) -> tuple[list, list[str]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecordWarning)
        records, skipped = _read_runs(runs_dir)
    return _dedupe(records), skipped
