"""Print and write a demo's table from the records `make demo` / `make demo-nlg` wrote.

python experiments/demo.py [RUNS_DIR] [OUT]            # results/demo/runs -> results/demo/table.md
python experiments/demo.py nlg [RUNS_DIR] [OUT]        # -> results/demo/table_nlg.md
"""

import sys
from pathlib import Path

from lora.cli import friendly_errors
from lora.demo import demo_table, nlg_demo_table, render, render_nlg


@friendly_errors
def main(*args: str) -> None:
    nlg = bool(args) and args[0] == "nlg"
    runs_dir, out = (list(args[1:] if nlg else args) + [None, None])[:2]
    runs_dir = runs_dir or "results/demo/runs"
    if nlg:
        text = render_nlg(nlg_demo_table(runs_dir), runs_dir)
        out = out or "results/demo/table_nlg.md"
    else:
        text = render(demo_table(runs_dir), runs_dir)
        out = out or "results/demo/table.md"
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)
    print(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
