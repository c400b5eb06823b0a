"""Regenerate every table of results/tables/ and results/README.md from the run records (never by hand).

python experiments/tables.py                      # results/runs -> results/tables
python experiments/tables.py runs_dir=/tmp/runs out_dir=/tmp/out
"""

import sys

from lora.cli import friendly_errors
from lora.tables import main as build_tables


@friendly_errors
def main(argv: list[str]) -> None:
    opts = {"runs_dir": "results/runs", "paper_dir": "results/paper", "out_dir": "results"}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in opts:
            raise ValueError(f"unknown argument {arg!r}: use {' '.join(k + '=...' for k in opts)}")
        opts[key] = value
    for path in build_tables(**opts):
        print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
