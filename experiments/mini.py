"""Write a table of the small real replication from its run records (lora/mini.py).

python experiments/mini.py glue        # results/mini/runs -> results/mini/glue.md, glue.csv   (make glue-mini)
python experiments/mini.py nlg         # results/mini/runs -> results/mini/nlg.md, nlg.csv     (make nlg-mini)
python experiments/mini.py lr-search   # results/mini/lr_search -> results/mini/lr_search.md   (make lr-search-mini)
python experiments/mini.py glue runs_dir=/tmp/runs out=/tmp/glue.md paper_dir=results/paper
"""

import sys

from lora.cli import friendly_errors, parse_options
from lora.errors import ConfigError
from lora.mini import TABLES, write, write_lr_search

WHAT = ("glue", "nlg", "lr-search")


@friendly_errors
def main(argv: list[str]) -> None:
    if not argv or argv[0] not in WHAT:
        raise ConfigError(
            f"say which table: python experiments/mini.py {'|'.join(WHAT)} [runs_dir=...] [out=...]"
        )
    what, rest = argv[0], argv[1:]
    if what == "lr-search":
        opts = parse_options(rest, {"runs_dir": "results/mini/lr_search", "out": "results/mini/lr_search.md"})
        written = write_lr_search(opts["runs_dir"], opts["out"])
    else:
        assert what in TABLES
        opts = parse_options(rest, {"runs_dir": "results/mini/runs", "out": f"results/mini/{what}.md",
                                    "paper_dir": "results/paper"})  # fmt: skip
        written = write(what, opts["runs_dir"], opts["out"], opts["paper_dir"])
    print(written[0].read_text(encoding="utf-8"))
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
