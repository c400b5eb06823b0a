"""Export a finished run as a peft adapter or a merged transformers checkpoint (lora/export.py).

    python experiments/export.py run=outputs/runs/<run> format=peft        # -> outputs/runs/<run>/peft
    python experiments/export.py run=<run> format=merged out=/tmp/merged   # a bare run name: its record is found
    python experiments/export.py run=results/runs/<run>.json format=merged   # or the record itself

Options: run= (run directory, its adapter directory, run name or record .json), format= (peft | merged),
out= (default: the run directory's peft/ or merged/), results_dir= (where records are, results/runs),
device= (merged: where the model is built, cpu), overwrite= (false: refuse a non-empty out).
Bad input ends with one `error: ...` line and exit code 2 (HYDRA_FULL_ERROR=1 for the traceback).
"""

import sys

from lora.cli import friendly_errors, parse_options
from lora.errors import ConfigError

OPTIONS = {
    "run": "",
    "format": "",
    "out": "",
    "results_dir": "results/runs",
    "device": "cpu",
    "overwrite": "false",
}


def parse(argv: list[str]) -> dict[str, str]:
    opts = parse_options(argv, OPTIONS)
    for key in ("run", "format"):
        if not opts[key]:
            raise ConfigError(f"missing {key}=: e.g. run=outputs/runs/<run> format=peft (or format=merged)")
    if opts["overwrite"] not in ("true", "false"):
        raise ConfigError(f"overwrite={opts['overwrite']} is not true or false")
    return opts


@friendly_errors
def main(argv: list[str]) -> None:
    opts = parse(argv)
    from lora.export import export_run  # after the arguments are checked: imports torch and transformers

    out = export_run(
        opts["run"], opts["format"], out=opts["out"] or None, results_dir=opts["results_dir"],
        device=opts["device"], overwrite=opts["overwrite"] == "true",
    )  # fmt: skip
    print(f"wrote {opts['format']} export to {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
