"""E2E NLG Challenge metrics computed in-process: BLEU, NIST, METEOR, ROUGE-L, CIDEr (+ TER).

Reproduces the official scorer `measure_scores.py` of tuetschek/e2e-metrics (used by the E2E challenge
and by LoRA, Hu et al. 2021, Sec. 5.4 / Table 3), without Perl or temporary SGML files:

* BLEU: mteval-v13a on lowercased 13a tokens, via sacrebleu (the same algorithm), as a fraction.
* NIST: mteval-v13a (`nist`, below), on the same tokens.
* METEOR 1.5, ROUGE-L (beta 1.2), CIDEr-D: the MS-COCO caption scorers (pycocoevalcap) after the PTB
  tokenizer, which lowercases and drops punctuation, exactly as `COCOEvalCap.evaluate` feeds them.
* TER (optional, `--ter`): sacrebleu's Tercom port, a corpus TER, as a fraction. WebNLG and DART are NOT scored
  with these functions: they are scored as the paper's released pipeline does, by `lora.metrics.webnlg_eval`.

Checked against the scores the E2E challenge published (tests/metrics/test_nlg.py). CLI (bad input: one `error:`
line, exit status 2)::

    python -m lora.metrics.nlg testset_w_refs.csv outputs.txt [--ter]   # last line: one JSON object
    python -m lora.metrics.nlg --task webnlg [--subset all|seen|unseen] testdata_with_lex.xml hyps.txt
    python -m lora.metrics.nlg --task dart dart-v1.1.1-full-test.xml hyps.txt
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sacrebleu.metrics import BLEU, TER
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

from lora.errors import ConfigError
from lora.metrics.java import require_java
from lora.textfiles import read_lines

METRICS = ("bleu", "nist", "meteor", "rouge_l", "cider")
ALL_METRICS = (*METRICS, "ter")
_COCO = ("meteor", "rouge_l", "cider")

# ---------------------------------------------------------------------------------------------------------
# BLEU, NIST (mteval-v13a) and TER (sacrebleu)
# ---------------------------------------------------------------------------------------------------------

_tokenize_13a = Tokenizer13a()


def tokenize_13a(text: str) -> list[str]:
    """mteval-v13a tokens, lowercased (mteval's default; `-c` would keep case)."""
    return _tokenize_13a(text.lower()).split()


def _ref_streams(refs: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """[n_segments][n_refs_i] -> sacrebleu's [max_refs][n_segments], missing references padded with None."""
    width = max(len(r) for r in refs)
    return [[r[k] if k < len(r) else None for r in refs] for k in range(width)]


def bleu(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-4 (mteval-v13a: closest reference length, lowercased 13a tokens) as a fraction."""
    metric = BLEU(lowercase=True, tokenize="13a", force=True)
    return metric.corpus_score(list(hyps), _ref_streams(refs)).score / 100


def ter(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """Corpus TER (edits / average reference length, case-insensitive, Tercom tokenization) as a fraction."""
    return TER().corpus_score(list(hyps), _ref_streams(refs)).score / 100


def _ngrams(words: list[str], max_n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(words[i : i + n]) for n in range(1, max_n + 1) for i in range(len(words) - n + 1))


def nist(hyps: Sequence[str], refs: Sequence[Sequence[str]], max_n: int = 5) -> float:
    """NIST-5 as in mteval-v13a (Doddington, 2002), with a variable number of references per segment.

    info(w_1..w_n) = log2(count(w_1..w_{n-1}) / count(w_1..w_n)), counts over all references of all
    segments (the empty prefix counts every reference word). NIST = BP * sum_n (info of the output n-grams,
    clipped to their max count in one reference of the segment) / (number of output n-grams). BP =
    exp(-beta log^2 ratio) for ratio = output words / reference words per reference set < 1, with beta
    chosen so that BP = 0.5 at ratio 2/3. Reference words per reference set = total reference words / average
    number of references per segment. (Dividing by the maximum number, as the padded reference columns of
    the public mteval-v13a-sig.pl would, misses the published slug2slug and tr_NonPrimary_3 NIST scores.)
    """
    hyp_words = [tokenize_13a(h) for h in hyps]
    ref_words = [[tokenize_13a(r) for r in rs] for rs in refs]
    counts: Counter[tuple[str, ...]] = Counter()
    for rs in ref_words:
        for r in rs:
            counts[()] += len(r)
            counts.update(_ngrams(r, max_n))

    matched_info, n_out = [0.0] * max_n, [0] * max_n
    for h, rs in zip(hyp_words, ref_words, strict=True):
        ref_max: Counter[tuple[str, ...]] = Counter()
        for r in rs:
            ref_max |= _ngrams(r, max_n)  # Counter union = element-wise max
        for g, c in _ngrams(h, max_n).items():
            if g in ref_max:
                matched_info[len(g) - 1] += math.log2(counts[g[:-1]] / counts[g]) * min(c, ref_max[g])
        for n in range(max_n):
            n_out[n] += max(len(h) - n, 0)

    score = sum(info / max(n, 1) for info, n in zip(matched_info, n_out, strict=True))
    refs_per_segment = sum(len(rs) for rs in ref_words) / len(ref_words)
    ratio = n_out[0] / (counts[()] / refs_per_segment)
    beta = -math.log(0.5) / math.log(1.5) ** 2
    bp = 1.0 if ratio >= 1 else (0.0 if ratio <= 0 else math.exp(-beta * math.log(ratio) ** 2))
    return score * bp


# ---------------------------------------------------------------------------------------------------------
# METEOR, ROUGE-L, CIDEr-D (MS-COCO caption scorers)
# ---------------------------------------------------------------------------------------------------------


def coco_scores(
    hyps: Sequence[str], refs: Sequence[Sequence[str]], metrics: Iterable[str] = _COCO
) -> dict[str, float]:
    """METEOR / ROUGE-L / CIDEr-D as `pycocoevalcap.eval.COCOEvalCap` computes them (needs Java)."""
    metrics = [m for m in metrics if m in _COCO]
    if not metrics:
        return {}
    require_java()
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # One tokenizer run for both sides. Whitespace is normalised so that no caption spans two lines
    # (the tokenizer's output is matched back to captions line by line).
    captions = {("ref", i): [{"caption": " ".join(r.split())} for r in rs] for i, rs in enumerate(refs)}
    captions |= {("hyp", i): [{"caption": " ".join(h.split())}] for i, h in enumerate(hyps)}
    tokens = PTBTokenizer().tokenize(captions)
    gts = {i: tokens[("ref", i)] for i in range(len(refs))}
    res = {i: tokens[("hyp", i)] for i in range(len(hyps))}

    out = {}
    for name in metrics:
        out[name] = float(_coco_scorer(name).compute_score(gts, res)[0])
    return out


def _coco_scorer(name: str) -> Any:
    if name == "meteor":
        from pycocoevalcap.meteor.meteor import Meteor

        return Meteor()
    if name == "rouge_l":
        from pycocoevalcap.rouge.rouge import Rouge

        return Rouge()
    from pycocoevalcap.cider.cider import Cider

    return Cider()


# ---------------------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------------------


def score(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]], metrics: Iterable[str] = METRICS
) -> dict[str, float]:
    """Corpus scores of `hypotheses[i]` against its references `references[i]` (one list per input).

    Returns {metric: value} on the official script's scale: BLEU, METEOR, ROUGE-L, TER as fractions,
    NIST and CIDEr as they come. `metrics` is any subset of `ALL_METRICS`.
    """
    metrics = list(metrics)
    unknown = [m for m in metrics if m not in ALL_METRICS]
    if unknown:
        raise ConfigError(f"unknown metrics {unknown}; choose from {ALL_METRICS}")
    if len(hypotheses) != len(references):
        raise ConfigError(
            f"{len(hypotheses)} hypotheses but {len(references)} reference lists: give one list per hypothesis"
        )
    if not hypotheses:
        raise ConfigError("no hypotheses to score")
    empty = [i for i, rs in enumerate(references) if not rs]
    if empty:
        raise ConfigError(f"hypotheses {empty[:5]} have no reference: every input needs at least one")

    coco = coco_scores(hypotheses, references, metrics)
    plain = {"bleu": bleu, "nist": nist, "ter": ter}
    return {m: coco[m] if m in coco else plain[m](hypotheses, references) for m in metrics}


def score_subsets(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    groups: dict[str, Sequence[int]],
    metrics: Iterable[str] = METRICS,
) -> dict[str, float]:
    """`score` on each subset of inputs (e.g. WebNLG seen / unseen / all): keys `{metric}_{group}`."""
    out = {}
    for group, idx in groups.items():
        scores = score([hypotheses[i] for i in idx], [references[i] for i in idx], metrics)
        out |= {f"{m}_{group}": v for m, v in scores.items()}
    return out


# ---------------------------------------------------------------------------------------------------------
# Files (as measure_scores.py reads them)
# ---------------------------------------------------------------------------------------------------------


def _read_lines(path: str | Path) -> list[str]:
    return [line.strip() for line in read_lines(path)]


def _read_table(path: str | Path) -> list[tuple[str, str]]:
    """(MR, text) rows of a csv/tsv file (tab if the first line has one), header row dropped if present."""
    lines = [line for line in _read_lines(path) if line]
    if not lines:
        raise ConfigError(f"{path} is empty")
    rows = list(csv.reader(lines, delimiter="\t" if "\t" in lines[0] else ","))
    if re.match(r"\s*mr\b", rows[0][0], re.I):
        rows = rows[1:]
    bad = [n for n, row in enumerate(rows, start=1) if len(row) != 2]
    if bad:
        raise ConfigError(f"{path}: rows {bad[:5]} do not have exactly 2 columns (MR, text)")
    return [(mr.strip(), text.strip()) for mr, text in rows]


def _is_table(path: str | Path) -> bool:
    return Path(path).suffix.lower() in (".csv", ".tsv")


def read_references(path: str | Path) -> tuple[list[str] | None, list[list[str]]]:
    """References as (MRs, refs): refs[i] are all references of MRs[i].

    A csv/tsv file (the E2E `mr,ref` csv) is grouped by MR in order of first appearance. Any other file
    is the e2e-metrics text format: one reference per line, MRs separated by an empty line (MRs is None).
    """
    if _is_table(path):
        grouped: dict[str, list[str]] = {}
        for mr, ref in _read_table(path):
            grouped.setdefault(mr, []).append(ref)
        return list(grouped), list(grouped.values())
    refs: list[list[str]] = [[]]
    for line in _read_lines(path):
        if line:
            refs[-1].append(line)
        elif refs[-1]:
            refs.append([])
    return None, [r for r in refs if r]


def read_outputs(path: str | Path, mrs: Sequence[str] | None = None) -> list[str]:
    """System outputs, one per MR: a text file (one line per MR, in MR order) or a csv/tsv with an MR column.

    With `mrs`, the count is checked, and csv/tsv outputs are put in the order of `mrs` by their MR.
    """
    if not _is_table(path):
        outputs = _read_lines(path)
        if mrs is not None and len(outputs) != len(mrs):
            raise ConfigError(f"{path} has {len(outputs)} lines but the references have {len(mrs)} MRs")
        return outputs
    rows = _read_table(path)
    if mrs is None:
        return [text for _, text in rows]
    if len(rows) != len(mrs):
        raise ConfigError(f"{path} has {len(rows)} outputs but the references have {len(mrs)} MRs")
    by_mr = dict(rows)
    if len(by_mr) != len(rows):
        raise ConfigError(f"{path} has repeated MRs: cannot align its outputs to the references")
    missing = [mr for mr in mrs if mr not in by_mr]
    if missing:
        raise ConfigError(f"{path} has no output for {len(missing)} reference MRs, e.g. {missing[0]!r}")
    return [by_mr[mr] for mr in mrs]


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "references", help="E2E csv (mr,ref) or text file (refs per MR, blank-line separated)"
    )
    parser.add_argument("outputs", help="text file, one output per MR in order, or csv/tsv with an MR column")
    parser.add_argument("--ter", action="store_true", help="also report TER (E2E; always on for webnlg/dart)")
    parser.add_argument(
        "--task",
        choices=("e2e", "webnlg", "dart"),
        default="e2e",
        help="e2e (default): measure_scores.py; webnlg/dart: the LoRA pipeline's GenerationEval scores "
        "(lora.metrics.webnlg_eval; references = the test XML/JSON, outputs = one line per unique input)",
    )
    parser.add_argument(
        "--subset", choices=("all", "seen", "unseen"), default="all", help="WebNLG categories to score"
    )
    args = parser.parse_args(argv)
    if args.task != "e2e":
        from lora.metrics.webnlg_eval import run_cli

        return run_cli(args.task, args.references, args.outputs, args.subset)
    if args.subset != "all":
        parser.error("--subset is for --task webnlg")
    mrs, refs = read_references(args.references)
    hyps = read_outputs(args.outputs, mrs)
    if len(hyps) != len(refs):
        raise ConfigError(f"{args.outputs} has {len(hyps)} outputs but {args.references} has {len(refs)} MRs")
    scores = score(hyps, refs, ALL_METRICS if args.ter else METRICS)
    print(json.dumps(scores))
    return scores


def cli(argv: Sequence[str] | None = None) -> dict[str, float]:
    """`python -m lora.metrics.nlg`: `main` with bad input (missing, empty, short or non-UTF-8 files) shown as one
    `error:` line and exit status 2, as every entry point of the suite."""
    from lora.cli import friendly_errors

    return friendly_errors(main)(argv)


if __name__ == "__main__":
    cli()
