"""The notebooks run end to end on small fixture records, and are stored without outputs.

tests/fixtures/notebook_records/ holds 21 real run records of tiny-roberta on 64 RTE examples (4 methods, the
targets_* ablations) and the three targets_qv adapters the subspace notebook needs (r = 4 and 16 of seed 0, r = 16
of seed 1); its README gives the commands that made them. Each notebook runs in a fresh python3 kernel (nbclient).
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
FIXTURE = ROOT / "tests" / "fixtures" / "notebook_records"
# Figures each notebook must show: results: score vs params, Table 5, Table 6; subspace: Figures 3 and 4.
PNGS = {"results.ipynb": 3, "subspace.ipynb": 2}


@pytest.mark.parametrize("name", sorted(PNGS))
def test_notebook_is_stored_without_outputs(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code), "strip the outputs"


@pytest.mark.parametrize("name", sorted(PNGS))
def test_notebook_runs_on_fixture_records(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORA_RUNS_DIR", str(FIXTURE / "runs"))
    monkeypatch.setenv("LORA_R_SMALL", "4")
    monkeypatch.setenv("LORA_R_LARGE", "16")
    monkeypatch.setenv("MPLCONFIGDIR", os.environ.get("MPLCONFIGDIR", str(ROOT / ".cache" / "mpl")))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(
        nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(NOTEBOOKS)}}
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == PNGS[name]
    if name == "subspace.ipynb":  # Table 7 rendered: one row per (matrix, r) = q and v at r = 4 and 16
        table = next(o.data["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {}))
        assert table.count("| ΔW_q, layer 1 |") == 2 and table.count("| ΔW_v, layer 1 |") == 2
