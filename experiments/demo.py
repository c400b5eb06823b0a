"""Print and write the demo's table (results/demo/table.md) from the records `make demo` wrote."""

import sys
from pathlib import Path

from lora.cli import friendly_errors
from lora.demo import demo_table, render


@friendly_errors
def main(runs_dir: str = "results/demo/runs", out: str = "results/demo/table.md") -> None:
    text = render(demo_table(runs_dir), runs_dir)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)
    print(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
