"""Where the sweeps stand, per paper table: runs complete, failed, diverged, oom, running, and the table's cells
without a complete record (lora.status). Reads the records only; trains nothing.

python experiments/status.py                          # results/runs
python experiments/status.py runs_dir=/tmp/runs paper_dir=results/paper
"""

import sys

from lora.cli import friendly_errors, parse_options
from lora.status import status_text


@friendly_errors
def main(argv: list[str]) -> None:
    opts = parse_options(argv, {"runs_dir": "results/runs", "paper_dir": "results/paper"})
    print(status_text(**opts), end="")


if __name__ == "__main__":
    main(sys.argv[1:])
