"""WebNLG 2017 and DART scores exactly as the LoRA paper's released pipeline computes them, in-process.

The paper (Hu et al. 2021, Tables 13/14) scored both tasks with microsoft/LoRA `examples/NLG`:

1. `src/gpt2_decode.py --ref_type webnlg|dart --ref_num 6 --tokenize --lower [--filter all|seen|unseen]`
   groups the references by input (its dict is keyed by the linearised source, so DART's repeated inputs
   are merged: 5,097 test entries -> 4,159 inputs, in order of first occurrence; WebNLG's 1,862 test inputs
   are all distinct), writes one hypothesis line per input and six reference files `reference0..5`: the
   first six references of each input, padded with copies of the first one. Every text is lower-cased and
   then split on non-word characters: ``" ".join(re.split(r"(\\W)", text.lower()).split())``.
   `--filter seen|unseen` keeps the WebNLG inputs whose category is (not) one of the 10 training
   categories (`lora.data.nlg.WEBNLG_SEEN`; seen 971, unseen 891 inputs).
2. ``eval.py -R reference -H hypothesis -nr 6 -m bleu,meteor,ter``: LoRA's `eval/eval.py`, which
   `download_evalscript.sh` copies over the one of the 2nd WebNLG challenge's GenerationEval (it is
   GenerationEval@80678494's eval.py less a `sys.argv = sys.argv[:1]` line), run inside GenerationEval:

   * BLEU: Moses `multi-bleu-detok.perl reference0 .. reference5 < hypothesis` on the decoder's files
     (mteval-v13a's internal tokenisation, case-sensitive, closest reference length with ties to the
     shorter), read back from its `BLEU = %.2f` line. Re-implemented here in Python (`multi_bleu_detok`),
     not sacrebleu; `score` reports it rounded to 2 decimals as the script prints it.
   * METEOR 1.5: ``java -Xmx2G -jar meteor-1.5.jar hyp ref -l en -norm -r 6`` on the texts re-tokenised
     by `nltk.word_tokenize` (NLTK 3.5) and joined with spaces. Run here through Java with the
     `Meteor-1.5.jar` of the installed `pycocoevalcap` wheel (`spice/lib/`): its scorer classes are
     byte-identical to those of `pycocoevalcap/meteor/meteor-1.5.jar`, whose `Meteor.class` alone differs
     (the COCO build prints per-segment scores in `-stdio` mode, unused here). The paraphrase table is the
     wheel's `meteor/data/paraphrase-en.gz`, passed with `-a`.
   * TER: for each input, the minimum over its six references of `pyter.ter(hyp.split(), ref.split())`
     (pyter3 0.3: greedy shifts, ties broken towards the lexicographically largest shifted sentence; 1 for
     an empty reference), averaged over inputs. Not a corpus TER. Re-implemented here (`pyter_ter`).

   `nltk.word_tokenize` is re-implemented as `nltk_tokenize` (NLTK 3.5's NLTKWordTokenizer rules). On
   decoder-tokenised text its Punkt sentence splitting cannot change the tokens, so it is not done: every
   non-word character is already its own token, and the only rules that change tokens turn every double
   quote into two backticks (a quote at a sentence start or after a space: the same token either way) and
   split `cannot` -> `can not`, `gonna`, `gotta`, `gimme`, `lemme`, `wanna` in two. Checked equal to
   NLTK 3.5 (`preserve_line=True`) on all WebNLG/DART test and dev references and the BART DART outputs.

Known upstream issue, NOT reproduced: run exactly as written, eval.py prints METEOR -1. The decoder ends
every file with a newline, so eval.py's `read().split("\\n")` gives N+1 segments, the last one empty.
Re-joined for METEOR, the hypothesis file has N lines but the reference file 6N+5 (the extra segment's
six empty references), so Meteor stops with "Error: test and reference not same length" and eval.py
returns -1; TER is averaged over N+1 segments, the extra one counting 1 (TER_written = (N*TER + 1) / (N+1)).
BLEU is unaffected (the Perl script reads N lines). Here the N real segments are scored, as eval.py does
when the files have no final newline.

Scores were checked against the official scripts run by hand (GenerationEval@80678494 with LoRA's
eval.py, multi-bleu-detok.perl, Meteor 1.5, pyter3 0.3, nltk 3.5): tests/metrics/test_webnlg_eval.py.

CLI (through `lora.metrics.nlg`; the last line printed is one JSON object `{"bleu", "meteor", "ter"}`,
BLEU on multi-bleu's 0-100 scale, METEOR and TER as fractions)::

    python -m lora.metrics.nlg --task webnlg --subset unseen testdata_with_lex.xml hypotheses.txt
    python -m lora.metrics.nlg --task dart dart-v1.1.1-full-test.xml hypotheses.txt
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lora.errors import ConfigError, InputNotFound
from lora.metrics.java import require_java
from lora.textfiles import read_lines

if TYPE_CHECKING:  # lora.data.nlg imports torch and transformers: loaded only when a reader needs it
    from lora.data.nlg import NLGExample

TASKS = ("webnlg", "dart")
SUBSETS = ("all", "seen", "unseen")
METRICS = ("bleu", "meteor", "ter")
NUM_REFS = 6  # gpt2_decode.py --ref_num 6, eval.py -nr 6

# ---------------------------------------------------------------------------------------------------------
# gpt2_decode.py: cleaning, --lower --tokenize, references padded to 6
# ---------------------------------------------------------------------------------------------------------

_NON_WORD = re.compile(r"(\W)")


def decoder_tokenize(text: str) -> str:
    """`post_process(text, is_tokenize=True, is_lower=True)` of gpt2_decode.py: lower-case, then every
    non-word character (`\\W`, Unicode) becomes its own token; whitespace runs collapse to one space."""
    return " ".join(" ".join(_NON_WORD.split(text.lower())).split())


def clean_text(text: str) -> str:
    """What gpt2_decode.py keeps of a sample or a reference: up to the first <|endoftext|> and the first
    blank line, stripped."""
    return text.split("<|endoftext|>")[0].split("\n\n")[0].strip()


def pad_references(refs: Sequence[str], num_refs: int = NUM_REFS) -> list[str]:
    """The first `num_refs` references; fewer are padded with copies of the first (gpt2_decode.py)."""
    if not refs:
        raise ConfigError("an input has no reference: every input needs at least one")
    return [refs[k] if k < len(refs) else refs[0] for k in range(num_refs)]


def prepare(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]]
) -> tuple[list[str], list[list[str]]]:
    """Hypotheses and padded references as the decoder writes them to its files (one line each)."""
    if len(hypotheses) != len(references):
        raise ConfigError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    if not hypotheses:
        raise ConfigError("no hypotheses to score")
    hyps = [decoder_tokenize(clean_text(h)) for h in hypotheses]
    refs = [[decoder_tokenize(clean_text(r)) for r in pad_references(rs)] for rs in references]
    return hyps, refs


# ---------------------------------------------------------------------------------------------------------
# nltk.word_tokenize (NLTK 3.5 NLTKWordTokenizer), used by eval.py before METEOR and TER
# ---------------------------------------------------------------------------------------------------------

_CLOSERS = "\\]\\)}>\"'\u00bb\u201d\u2019 "
_BEFORE: list[tuple[re.Pattern[str], str]] = [
    # opening quotes
    (re.compile("([\u00ab\u201c\u2018\u201e]|`+)"), r" \1 "),
    (re.compile(r'^"'), "``"),
    (re.compile("(``)"), r" \1 "),
    (re.compile(r"""([ (\[{<])("|'')"""), r"\1 `` "),
    (re.compile(r"(?i)(')(?!re|ve|ll|m|t|s|d)(\w)\b"), r"\1 \2"),
    # punctuation
    (re.compile(rf"([^.])(\.)([{_CLOSERS}]*)\s*$"), r"\1 \2 \3 "),
    (re.compile(r"([:,])([^\d])"), r" \1 \2"),
    (re.compile(r"([:,])$"), r" \1 "),
    (re.compile(r"\.{2,}"), r" \g<0> "),
    (re.compile(r"[;@#$%&]"), r" \g<0> "),
    (re.compile(r"""([^.])(\.)([\])}>"']*)\s*$"""), r"\1 \2\3 "),
    (re.compile(r"[?!]"), r" \g<0> "),
    (re.compile(r"([^'])' "), r"\1 ' "),
    (re.compile(r"[*]"), r" \g<0> "),
    # brackets, double dash
    (re.compile(r"[\][(){}<>]"), r" \g<0> "),
    (re.compile("--"), " -- "),
]
_AFTER: list[tuple[re.Pattern[str], str]] = [  # on " " + text + " "
    # closing quotes, clitics
    (re.compile("([\u00bb\u201d\u2019])"), r" \1 "),
    (re.compile('"'), " '' "),
    (re.compile(r"(\S)('')"), r"\1 \2 "),
    (re.compile(r"([^' ])('[sS]|'[mM]|'[dD]|') "), r"\1 \2 "),
    (re.compile(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) "), r"\1 \2 "),
    # words split in two (Robert MacIntyre's list)
    *[
        (re.compile(rf"(?i)\b({a})({b}){end}"), r" \1 \2 ")
        for a, b, end in [
            ("can", "not", r"\b"),
            ("d", "'ye", r"\b"),
            ("gim", "me", r"\b"),
            ("gon", "na", r"\b"),
            ("got", "ta", r"\b"),
            ("lem", "me", r"\b"),
            ("mor", "'n", r"\b"),
            ("wan", "na", r"\s"),
        ]
    ],
    (re.compile(r"(?i) ('t)(is)\b"), r" \1 \2 "),
    (re.compile(r"(?i) ('t)(was)\b"), r" \1 \2 "),
]


def nltk_tokenize(text: str) -> list[str]:
    """Tokens of `nltk.word_tokenize(text, preserve_line=True)` (NLTK 3.5; parentheses not converted)."""
    for pattern, repl in _BEFORE:
        text = pattern.sub(repl, text)
    text = f" {text} "
    for pattern, repl in _AFTER:
        text = pattern.sub(repl, text)
    return text.split()


def eval_tokenize(text: str) -> str:
    """eval.py's `' '.join(nltk.word_tokenize(text))`: what METEOR and TER see."""
    return " ".join(nltk_tokenize(text))


# ---------------------------------------------------------------------------------------------------------
# BLEU: multi-bleu-detok.perl
# ---------------------------------------------------------------------------------------------------------

_SGML = [("<skipped>", ""), ("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">")]
_MTEVAL = [  # mteval-v13a's internal tokenisation; Perl works on bytes, so \s is ASCII whitespace only
    (re.compile(r"([{-~\[-` -&(-+:-@/])"), r" \1 "),
    (re.compile(r"([^0-9])([.,])"), r"\1 \2 "),
    (re.compile(r"([.,])([^0-9])"), r" \1 \2"),
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),
]
_ASCII_SPACE = re.compile(r"[ \t\n\r\f\v]+")


def mteval_tokenize(text: str) -> list[str]:
    """Tokens of multi-bleu-detok.perl's `tokenization` (no lower-casing: the script runs without -lc)."""
    text = text.replace("-\n", "").replace("\n", " ")
    for sgml, char in _SGML:
        text = text.replace(sgml, char)
    text = f" {text} "
    for pattern, repl in _MTEVAL:
        text = pattern.sub(repl, text)
    text = _ASCII_SPACE.sub(" ", text).strip(" ")
    return text.split(" ") if text else []


@dataclass(frozen=True)
class BleuResult:
    """multi-bleu-detok.perl's numbers; `score` unrounded on the 0-100 scale (the script prints %.2f)."""

    score: float
    precisions: tuple[float, float, float, float]  # fractions, as computed before printing (x100 printed)
    bp: float
    hyp_len: int
    ref_len: int

    @property
    def printed(self) -> float:
        """The score as the script prints it (`BLEU = %.2f`) and eval.py reads it back."""
        return float(f"{self.score:.2f}")


def _ngram_counts(words: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def multi_bleu_detok(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> BleuResult:
    """Corpus BLEU-4 exactly as Moses `multi-bleu-detok.perl ref0 .. refK < hyp` computes it.

    Degenerate corpora where the script stops without a score (no reference words; no hypothesis words)
    give 0.
    """
    correct, total = [0] * 5, [0] * 5
    seen_order = [False] * 5  # the script's `defined $TOTAL[n]`
    hyp_len = ref_len = 0
    for hyp, refs in zip(hypotheses, references, strict=True):
        words = mteval_tokenize(hyp)
        closest_diff, closest_len = 9999, 9999
        ref_max: dict[int, Counter[tuple[str, ...]]] = {n: Counter() for n in range(1, 5)}
        for ref in refs:
            ref_words = mteval_tokenize(ref)
            diff = abs(len(words) - len(ref_words))
            if diff < closest_diff:
                closest_diff, closest_len = diff, len(ref_words)
            elif diff == closest_diff:
                closest_len = min(closest_len, len(ref_words))
            for n in range(1, 5):
                ref_max[n] |= _ngram_counts(ref_words, n)  # element-wise max over references
        hyp_len += len(words)
        ref_len += closest_len
        for n in range(1, 5):
            for gram, count in _ngram_counts(words, n).items():
                seen_order[n] = True
                total[n] += count
                correct[n] += min(count, ref_max[n].get(gram, 0))
    precisions = tuple(correct[n] / total[n] if seen_order[n] and total[n] else 0.0 for n in range(1, 5))
    if ref_len == 0 or hyp_len == 0:
        return BleuResult(0.0, precisions, 0.0, hyp_len, ref_len)  # type: ignore[arg-type]
    bp = math.exp(1 - ref_len / hyp_len) if hyp_len < ref_len else 1.0
    logs = 0.0
    for p in precisions:
        logs += math.log(p) if p else -9999999999.0
    score = 100 * bp * math.exp(logs / 4)
    return BleuResult(score, precisions, bp, hyp_len, ref_len)  # type: ignore[arg-type]


def bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """BLEU (0-100) as eval.py reports it: multi-bleu-detok.perl's printed value, 2 decimals."""
    return multi_bleu_detok(hypotheses, references).printed


# ---------------------------------------------------------------------------------------------------------
# TER: pyter3 0.3, minimum over the references of each input, mean over inputs
# ---------------------------------------------------------------------------------------------------------


def levenshtein(a: Sequence[str], b: Sequence[str]) -> int:
    """Word-level edit distance (insertions, deletions, substitutions all cost 1)."""
    if not b:
        return len(a)
    ed = _EditDistance(b)
    return ed.extend(a, [ed.start])[-1][2]


class _EditDistance:
    """Edit distance to a fixed reference, bit-parallel (Myers 1999, global form as in Hyyrö 2001).

    A state (VP, VN, d) holds the vertical +1/-1 deltas of the DP column after a prefix of the hypothesis
    and d, the distance of that prefix to the whole reference; states of a shared prefix are reused.
    """

    def __init__(self, ref: Sequence[str]) -> None:
        self.mask = (1 << len(ref)) - 1
        self.high = 1 << (len(ref) - 1)
        self.peq: dict[str, int] = {}
        for j, word in enumerate(ref):
            self.peq[word] = self.peq.get(word, 0) | (1 << j)
        self.start = (self.mask, 0, len(ref))  # the empty prefix: distance len(ref)

    def extend(self, words: Sequence[str], states: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
        """`states` (for words[:len(states) - 1]) extended to all of `words`; states[k] is after words[:k]."""
        mask, high, peq = self.mask, self.high, self.peq
        vp, vn, dist = states[-1]
        for word in words[len(states) - 1 :]:
            eq = peq.get(word, 0)
            xv = eq | vn
            xh = (((eq & vp) + vp) ^ vp) | eq
            hp = vn | (~(xh | vp) & mask)
            hn = vp & xh
            if hp & high:
                dist += 1
            elif hn & high:
                dist -= 1
            hp = ((hp << 1) | 1) & mask
            hn = (hn << 1) & mask
            vp = hn | (~(xv | hp) & mask)
            vn = hp & xv
            states.append((vp, vn, dist))
        return states


def _shift_candidates(hyp: list[str], ref: Sequence[str]) -> Iterable[tuple[int, int, int]]:
    """pyter's `_findpairs`: (hyp start, ref start, length) for each i != j with hyp[i] == ref[j], length
    the longest common run from there."""
    for i, word in enumerate(hyp):
        for j, ref_word in enumerate(ref):
            if i == j or word != ref_word:
                continue
            length = 1
            while i + length < len(hyp) and j + length < len(ref) and hyp[i + length] == ref[j + length]:
                length += 1
            yield i, j, length


def pyter_ter(hyp: Sequence[str], ref: Sequence[str]) -> float:
    """`pyter.ter(hyp, ref)` of pyter3 0.3: (shifts + edit distance after them) / len(ref).

    Greedy: while some shift lowers the edit distance, take the one that lowers it most (ties: the
    lexicographically largest shifted word list, as pyter's sort does). A shift moves hyp[i:i+length] (a run
    that also starts at ref[j], j != i) to index j of the hypothesis with the run taken out.
    """
    if not ref:
        raise ConfigError("TER of an empty reference is undefined")
    words = list(hyp)
    shifts = 0
    ed = _EditDistance(ref)
    while True:
        states = ed.extend(words, [ed.start])
        base = states[-1][2]
        best: tuple[int, list[str]] | None = None
        for i, j, length in _shift_candidates(words, ref):
            shifted = words[:i] + words[i + length :]
            shifted[j:j] = words[i : i + length]
            keep = min(i, j)  # the states of the unchanged prefix are reused
            candidate = (base - ed.extend(shifted, states[: keep + 1])[-1][2], shifted)
            if best is None or candidate > best:
                best = candidate
        if best is None or best[0] <= 0:
            return (shifts + base) / len(ref)
        shifts += 1
        words = best[1]


def sentence_ter(hyp: str, refs: Sequence[str]) -> float:
    """eval.py's per-input TER: the minimum over the references (1 for an empty one) of pyter's TER."""
    hyp_words = hyp.split()
    scores: dict[str, float] = {}
    best = math.inf
    for ref in refs:
        if ref in scores:
            continue
        ref_words = ref.split()
        if not ref:
            scores[ref] = 1.0
        elif abs(len(hyp_words) - len(ref_words)) / len(ref_words) >= best:
            continue  # shifts keep the length, so this TER is at least the length gap: cannot be the min
        else:
            scores[ref] = pyter_ter(hyp_words, ref_words)
        best = min(best, scores[ref])
    return best


def ter(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean over inputs of `sentence_ter`, on eval-tokenised texts (eval.py's `ter_score`)."""
    scores = [
        sentence_ter(eval_tokenize(h), [eval_tokenize(r) for r in rs])
        for h, rs in zip(hypotheses, references, strict=True)
    ]
    return sum(scores) / len(scores)


# ---------------------------------------------------------------------------------------------------------
# METEOR 1.5 (Java)
# ---------------------------------------------------------------------------------------------------------


def meteor_files() -> tuple[Path, Path]:
    """(Meteor-1.5.jar, paraphrase-en.gz) from the installed pycocoevalcap wheel."""
    spec = importlib.util.find_spec("pycocoevalcap")
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in map(Path, roots):
        jar, para = root / "spice" / "lib" / "Meteor-1.5.jar", root / "meteor" / "data" / "paraphrase-en.gz"
        if jar.is_file() and para.is_file():
            return jar, para
    raise InputNotFound(
        "METEOR 1.5 needs pycocoevalcap/spice/lib/Meteor-1.5.jar and pycocoevalcap/meteor/data/"
        "paraphrase-en.gz: install the pycocoevalcap wheel (`pip install pycocoevalcap`)"
    )


_FINAL = re.compile(rb"^Final score:\s+(\S+)\s*$", re.M)


def meteor(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """METEOR 1.5 (`-l en -norm -r K`, K references per input) of eval-tokenised texts, as eval.py runs it."""
    java = require_java()
    jar, para = meteor_files()
    num_refs = len(references[0])
    if any(len(rs) != num_refs for rs in references):
        raise ConfigError("METEOR needs the same number of references for every input (pad them first)")
    with tempfile.TemporaryDirectory(prefix="lora-meteor-") as tmp:
        hyp_file, ref_file = Path(tmp) / "hypothesis", Path(tmp) / "reference"
        # one line per segment, each ending in a newline (so that a last empty segment is still a line)
        hyp_file.write_text("".join(eval_tokenize(h) + "\n" for h in hypotheses), encoding="utf-8")
        ref_file.write_text(
            "".join(eval_tokenize(r) + "\n" for rs in references for r in rs), encoding="utf-8"
        )
        cmd = [java, "-Xmx2G", "-jar", str(jar), str(hyp_file), str(ref_file)]
        cmd += ["-l", "en", "-norm", "-r", str(num_refs), "-a", str(para)]
        proc = subprocess.run(cmd, capture_output=True, check=False)
    found = _FINAL.search(proc.stdout)
    if proc.returncode != 0 or found is None:
        err = (proc.stderr or proc.stdout).decode("utf-8", "replace").strip().splitlines()
        raise RuntimeError(f"METEOR failed (exit {proc.returncode}): {err[-1] if err else 'no output'}")
    return float(found.group(1))


# ---------------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------------


def score(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]], metrics: Iterable[str] = METRICS
) -> dict[str, float]:
    """eval.py's BLEU / METEOR / TER of one hypothesis per input against that input's references.

    Texts go through the decoder's cleaning and `--lower --tokenize` (idempotent, so decoder-written
    files can be passed as they are) and references are padded/capped to 6. BLEU is on the 0-100 scale,
    rounded to 2 decimals as multi-bleu prints it; METEOR and TER are fractions.
    """
    metrics = list(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ConfigError(f"unknown metrics {unknown}; choose from {METRICS}")
    hyps, refs = prepare(hypotheses, references)
    out: dict[str, float] = {}
    for name in metrics:
        if name == "bleu":
            out[name] = bleu(hyps, refs)
        elif name == "meteor":
            out[name] = meteor(hyps, refs)
        else:
            out[name] = ter(hyps, refs)
    return out


# ---------------------------------------------------------------------------------------------------------
# References: the decoder's inputs, merged by source
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalInputs:
    """The unique inputs of a test set, in the decoder's order, with their (unpadded) references."""

    sources: tuple[str, ...]
    references: tuple[tuple[str, ...], ...]

    def __len__(self) -> int:
        return len(self.sources)


def merge_by_source(examples: Iterable[NLGExample]) -> EvalInputs:
    """gpt2_decode.py's `refer_dict`: one input per distinct source, first-occurrence order, references
    concatenated over the entries that share it (`lora.data.nlg.merge_by_source`)."""
    from lora.data.nlg import merge_by_source as merge

    merged = merge(examples)
    return EvalInputs(tuple(e.source for e in merged), tuple(e.references for e in merged))


def select(examples: Sequence[NLGExample], subset: str) -> list[NLGExample]:
    """The entries that `gpt2_decode.py --filter subset` keeps (WebNLG: seen = among the 10 training
    categories, `lora.data.nlg.WEBNLG_SEEN`); merge them with `merge_by_source` afterwards."""
    if subset not in SUBSETS:
        raise ConfigError(f"unknown subset {subset!r}; expected one of {SUBSETS}")
    if subset == "all":
        return list(examples)
    if any(ex.seen is None for ex in examples):
        raise ConfigError(f"subset {subset!r} needs WebNLG categories, which these inputs lack: use 'all'")
    return [ex for ex in examples if ex.seen == (subset == "seen")]


def read_dart(path: str | Path) -> list[NLGExample]:
    """DART v1.1.1 test XML or JSON, one example per entry, keeping EVERY annotation, empty ones included
    (`format_converting_dart.py` writes one line per annotation whatever its text, so test entry Id116's empty
    annotation is an empty reference in the released pipeline)."""
    from lora.data.nlg import read_dart_json, read_dart_xml

    path = Path(path)
    return read_dart_json(path) if path.suffix.lower() == ".json" else read_dart_xml(path)


def read_decoder_references(folder: str | Path) -> EvalInputs:
    """The decoder's own `reference0..K` files (already merged, padded and filtered)."""
    folder = Path(folder)
    files = []
    while (folder / f"reference{len(files)}").is_file():
        files.append(folder / f"reference{len(files)}")
    if not files:
        raise InputNotFound(f"{folder} is a folder without the decoder's reference files reference0, ...")
    columns = [read_lines(f) for f in files]
    if len({len(c) for c in columns}) != 1:
        counts = ", ".join(f"{f.name}: {len(c)}" for f, c in zip(files, columns, strict=True))
        raise ConfigError(f"{folder}: the reference files have different line counts ({counts})")
    refs = tuple(tuple(col[i] for col in columns) for i in range(len(columns[0])))
    return EvalInputs(tuple(f"#{i}" for i in range(len(refs))), refs)


def load_examples(path: str | Path, task: str) -> list[NLGExample]:
    """Test entries of WebNLG `testdata_with_lex.xml` (or the LoRA repository's JSON) or DART
    `dart-v1.1.1-full-test.xml` (or .json), in file order."""
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; expected one of {TASKS}")
    path = Path(path)
    if not path.is_file():
        raise InputNotFound(f"no such file: {path}")
    if path.stat().st_size == 0:
        raise ConfigError(f"{path} is empty")
    from lora.data.nlg import read_webnlg_json, read_webnlg_xml

    try:
        if task == "dart":
            examples = read_dart(path)
        elif path.suffix.lower() == ".json":
            examples = read_webnlg_json(path)
        else:
            examples = read_webnlg_xml([path])
    except ET.ParseError as err:
        raise ConfigError(f"{path}: not well-formed XML ({err})") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 ({err.reason} at byte {err.start})") from None
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError) as err:
        raise ConfigError(f"{path}: not a {task} test file ({type(err).__name__}: {err})") from None
    if not examples:
        raise ConfigError(f"{path}: no {task} entries with references found")
    return examples


def load_references(path: str | Path, task: str, subset: str = "all") -> EvalInputs:
    """The unique inputs of a WebNLG / DART test set (or subset) as the released decoder orders and merges
    them. `path` may also be a folder with the decoder's `reference0..5` files (then `subset` must be
    "all": the decoder has filtered them already)."""
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; expected one of {TASKS}")
    if Path(path).is_dir():
        if subset != "all":
            raise ConfigError(f"{path}: decoder reference files are filtered already; use subset 'all'")
        return read_decoder_references(path)
    return merge_by_source(select(load_examples(path, task), subset))


def read_hypotheses(path: str | Path, inputs: EvalInputs, everything: EvalInputs | None = None) -> list[str]:
    """Hypotheses of `inputs`, from a file with one line per input of `inputs` (as the decoder writes
    it) or, given `everything` (the whole test set's inputs), one line per input of the whole set."""
    lines = read_lines(path)
    if len(lines) == len(inputs):
        return lines
    if everything is not None and len(lines) == len(everything):
        where = {source: i for i, source in enumerate(everything.sources)}
        return [lines[where[source]] for source in inputs.sources]
    want = str(len(inputs))
    if everything is not None and len(everything) != len(inputs):
        want += f" (the subset's inputs) or {len(everything)} (all inputs)"
    raise ConfigError(f"{path} has {len(lines)} lines but the references have {want} inputs")


def evaluate(
    task: str,
    references: str | Path,
    hypotheses: str | Path,
    subset: str = "all",
    metrics: Iterable[str] = METRICS,
) -> dict[str, float]:
    """Scores of a hypothesis file (one line per unique input of the subset, or of the whole test set)
    against a WebNLG / DART test set."""
    if task == "dart" and subset != "all":
        raise ConfigError(f"DART has no seen/unseen split: use subset 'all', not {subset!r}")
    if Path(references).is_dir():
        inputs, everything = load_references(references, task, subset), None
    else:
        examples = load_examples(references, task)
        inputs = merge_by_source(select(examples, subset))
        everything = merge_by_source(examples)
    hyps = read_hypotheses(hypotheses, inputs, everything)
    return score(hyps, inputs.references, metrics)


def run_cli(task: str, references: str, hypotheses: str, subset: str = "all") -> dict[str, float]:
    """`python -m lora.metrics.nlg --task webnlg|dart ...`: prints the scores as one JSON line (the entry point
    turns bad input into one `error:` line and exit status 2)."""
    scores = evaluate(task, references, hypotheses, subset)
    print(json.dumps(scores))
    return scores
