"""Regenerate every table of results/tables/, the figures of results/figures/ and results/README.md from the run
records (never by hand).

python experiments/tables.py                      # results/runs -> results/tables, results/figures
python experiments/tables.py runs_dir=/tmp/runs out_dir=/tmp/out
python experiments/tables.py select=last aggregate=median   # override every table's checkpoint / seed rule
python experiments/tables.py figures=false        # tables only (no matplotlib)
"""

import sys

from lora.cli import friendly_errors, parse_options
from lora.errors import ConfigError
from lora.tables import AGGREGATE, SELECT
from lora.tables import main as build_tables

BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


@friendly_errors
def main(argv: list[str]) -> None:
    opts = parse_options(argv, {"runs_dir": "results/runs", "paper_dir": "results/paper", "out_dir": "results",
                                "select": None, "aggregate": None, "figures": "true"})  # fmt: skip
    for key, allowed in (("select", SELECT), ("aggregate", AGGREGATE), ("figures", tuple(BOOLS))):
        if opts[key] is not None and opts[key] not in allowed:
            raise ConfigError(f"{key}={opts[key]} is not one of {', '.join(allowed)}")
    figures = BOOLS[str(opts.pop("figures"))]
    for path in build_tables(**opts, figures=figures):
        print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
