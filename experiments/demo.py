"""Print and write a demo's table from the records `make demo` / `make demo-nlg` wrote.

python experiments/demo.py [RUNS_DIR] [OUT]            # outputs/demo/runs -> outputs/demo/table.md
python experiments/demo.py nlg [RUNS_DIR] [OUT]        # outputs/demo/runs -> outputs/demo/table_nlg.md

Both defaults are git-ignored (lora.demo.RUNS_DIR): the committed tables of an earlier run are
results/demo/reference.md and reference_nlg.md.
"""

import sys
from pathlib import Path

from lora.cli import friendly_errors
from lora.demo import NLG_TABLE, RUNS_DIR, TABLE, demo_table, nlg_demo_table, render, render_nlg


@friendly_errors
def main(*args: str) -> None:
    nlg = bool(args) and args[0] == "nlg"
    runs_dir, out = (list(args[1:] if nlg else args) + [None, None])[:2]
    runs_dir = runs_dir or RUNS_DIR
    if nlg:
        text = render_nlg(nlg_demo_table(runs_dir), runs_dir)
        out = out or NLG_TABLE
    else:
        text = render(demo_table(runs_dir), runs_dir)
        out = out or TABLE
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)
    print(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
