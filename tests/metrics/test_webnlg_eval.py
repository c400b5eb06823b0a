"""Tests for lora/metrics/webnlg_eval.py: the LoRA pipeline's WebNLG / DART scores, checked against the
official scripts.

How the OFFICIAL numbers below were obtained (once, by hand, outside this repository):

* Code: microsoft/LoRA @ c4593f060e6a368d7bb5af5273b8e42810cdef90 (examples/NLG: src/format_converting_*.py,
  src/gpt2_decode.py, eval/eval.py) and WebNLG/GenerationEval @ 80678494f9ae49e8984d78d5efdec482bd37fc1d
  (metrics/multi-bleu-detok.perl), set up as LoRA's eval/download_evalscript.sh does (LoRA's eval.py copied
  over GenerationEval's). Meteor 1.5: metrics/meteor-1.5/meteor-1.5.jar = pycocoevalcap 1.2's
  spice/lib/Meteor-1.5.jar with its meteor/data/paraphrase-en.gz beside it in data/. Throwaway venv
  (Python 3.11): nltk==3.5, pyter3==0.3, razdel==0.5.0, tabulate==0.9.0 (0.8.7 does not import on 3.11;
  only prints the table); bert_score and metrics/bleurt stubbed (imported by eval.py, unused by
  -m bleu,meteor,ter). NLTK's punkt model could not be downloaded: tokenizers/punkt/PY3/english.pickle was
  an untrained PunktSentenceTokenizer (on decoder-tokenised text the sentence split cannot change
  word_tokenize's tokens; checked: word_tokenize == word_tokenize(preserve_line=True) on all 15,395 texts).
* Inputs: the LoRA-format JSON (test.json) was written from the official XML (WebNLG testdata_with_lex.xml:
  modifiedtripleset + every lex with its comment; DART dart-v1.1.1-full-test.xml: every lex, empty text
  as ""), then `python format_converting_webnlg.py test.json test_formatted.jsonl` (resp. _dart), a
  gpt2_beam-style sample file {"id": line, "predict": GPT-2 BPE ids of the hypothesis} (LoRA's
  src/encoder.py), and
  `python gpt2_decode.py --vocab vocab --sample_file samples.jsonl --input_file test_formatted.jsonl
  --ref_type webnlg|dart --ref_num 6 --output_ref_file references --output_pred_file hypothesis
  --tokenize --lower [--filter all|seen|unseen]`.
  Hypotheses: WebNLG = `_perturb(first reference of the input, input index)` below; DART = the line of
  dart/eval_example/bart-large_dart.txt of the LAST test entry with that input (the decoder keeps the last
  sample of a merged input). Small sets: WebNLG every 6th XML entry (311 inputs), DART the first 300
  entries (300 inputs).
* Scoring: `cd GenerationEval; python eval.py -R references/reference -H hypothesis -nr 6
  -m bleu,meteor,ter` (through `eval.run(...)` to print unrounded numbers). "written" = on the decoder's
  files as they are (each ends in a newline): METEOR -1 ("Error: test and reference not same length"), TER
  over N+1 segments. "stripped" = the same files with the final newline removed: the N real segments.
  Unrounded BLEU: the same multi-bleu-detok.perl with `%.10f` instead of `%.2f`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from lora.metrics import java, nlg
from lora.metrics import webnlg_eval as W

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
WEBNLG_XML = DATA / "webnlg_challenge_2017" / "xml" / "test" / "testdata_with_lex.xml"
DART_XML = DATA / "dart" / "dart-v1.1.1-full-test.xml"
BART = DATA / "dart" / "eval_example" / "bart-large_dart.txt"

needs_webnlg = pytest.mark.skipif(
    not WEBNLG_XML.is_file(), reason=f"WebNLG test XML not found at {WEBNLG_XML}"
)
needs_dart = pytest.mark.skipif(
    not (DART_XML.is_file() and BART.is_file()), reason=f"DART test XML / BART outputs not found in {DATA}"
)
needs_meteor = pytest.mark.skipif(shutil.which("java") is None, reason="java not on PATH (METEOR 1.5)")

# Official eval.py results on the "stripped" files: (inputs, BLEU as printed, BLEU unrounded, METEOR, TER).
OFFICIAL = {
    ("webnlg_every6", "all"): (311, 62.10, 62.0976269352, 0.45374591276757725, 0.21538816102326205),
    ("webnlg_every6", "seen"): (162, 61.91, 61.9127815593, 0.4544881194075096, 0.2166235918168261),
    ("webnlg_every6", "unseen"): (149, 62.31, 62.3104348756, 0.45289158145985886, 0.21404494096583002),
    ("dart_first300", "all"): (300, 37.49, 37.4870250398, 0.3611680344037987, 0.5851431425737313),
    ("webnlg", "all"): (1862, 62.52, 62.5220361226, 0.4567451890279782, 0.21213398563038044),
    ("webnlg", "seen"): (971, 62.12, 62.1228006437, 0.4558681242037664, 0.21347795620033477),
    ("webnlg", "unseen"): (891, 63.00, 62.9980456685, 0.4578194462306618, 0.21066934430218123),
    ("dart", "all"): (4159, 48.57, 48.5655419381, 0.39567110141034795, 0.45106121323359244),
}
# Official eval.py TER on the "written" files (N+1 segments; METEOR was -1 and BLEU unchanged for all).
OFFICIAL_TER_WRITTEN = {
    ("webnlg_every6", "all"): 0.21790294255844392,
    ("webnlg_every6", "seen"): 0.2214295820510787,
    ("webnlg_every6", "unseen"): 0.21928464135939113,
    ("dart_first300", "all"): 0.5865214045585362,
    ("webnlg", "all"): 0.21255688740943016,
    ("webnlg", "seen"): 0.21428713525774182,
    ("webnlg", "unseen"): 0.2115542441404075,
    ("dart", "all"): 0.45119316967271894,
}


def _perturb(text: str, i: int) -> str:
    """Deterministic WebNLG hypothesis: the first reference with some words dropped, the first two words
    swapped every 3rd input, every 50th output empty, and quotes / `cannot` / `wanna` (which
    nltk.word_tokenize rewrites) added to every 40th."""
    words = text.split()
    kept = [w for j, w in enumerate(words) if (i + j) % 6 != 5]
    if i % 3 == 0 and len(kept) > 2:
        kept[0], kept[1] = kept[1], kept[0]
    out = " ".join(kept)
    if i % 50 == 7:
        out = ""
    elif i % 40 == 11:
        out = 'He said "cannot" wanna ' + out
    return out


def _webnlg_hypotheses(inputs: W.EvalInputs) -> list[str]:
    return [_perturb(refs[0], i) for i, refs in enumerate(inputs.references)]


def _dart_hypotheses(examples: list, inputs: W.EvalInputs) -> list[str]:
    bart = BART.read_text(encoding="utf-8").split("\n")
    last = {ex.source: bart[k] for k, ex in enumerate(examples)}
    return [last[source] for source in inputs.sources]


def _write_entries(src: Path, dst: Path, keep) -> None:
    """A copy of a benchmark XML with only the <entry> elements whose index passes `keep`."""
    tree = ET.parse(src)
    entries = tree.getroot().find("entries")
    for k, entry in reversed(list(enumerate(list(entries)))):
        if not keep(k):
            entries.remove(entry)
    tree.write(dst, encoding="utf-8", xml_declaration=True)


def _check(got: dict[str, float], key: tuple[str, str], metrics=("bleu", "meteor", "ter")) -> None:
    _, bleu_printed, _, meteor, ter = OFFICIAL[key]
    want = {"bleu": bleu_printed, "meteor": meteor, "ter": ter}
    for m in metrics:
        assert got[m] == pytest.approx(want[m], abs=5e-5), (key, m)


# --- the decoder's text processing -------------------------------------------------------------------------


def test_decoder_tokenize_lowercases_and_splits_non_word_characters() -> None:
    text = "Abilene, Texas is served by Abilene_Regional (18L/36R).  It's  Suárez–Barajas!"
    assert W.decoder_tokenize(text) == (
        "abilene , texas is served by abilene_regional ( 18l / 36r ) . it ' s suárez – barajas !"
    )
    assert W.decoder_tokenize(W.decoder_tokenize(text)) == W.decoder_tokenize(text)  # idempotent
    assert W.decoder_tokenize("  \t ") == ""


def test_clean_text_cuts_at_end_of_text_and_blank_line() -> None:
    assert W.clean_text(" The cat.<|endoftext|>junk") == "The cat."
    assert W.clean_text("first\n\nsecond") == "first"


def test_references_padded_with_the_first_and_capped_to_six() -> None:
    assert W.pad_references(["a", "b"]) == ["a", "b", "a", "a", "a", "a"]
    assert W.pad_references([str(k) for k in range(8)]) == ["0", "1", "2", "3", "4", "5"]
    with pytest.raises(ValueError, match="no reference"):
        W.pad_references([])


def test_nltk_tokenize_rewrites_quotes_and_split_words() -> None:
    # on decoder-tokenised text every " becomes `` (a quote at the start or after a space opens)
    assert W.nltk_tokenize('he said " cannot " gonna wanna go') == [
        *["he", "said", "``", "can", "not", "``", "gon", "na", "wan", "na", "go"]
    ]
    # raw text as nltk.word_tokenize(..., preserve_line=True) tokenises it (checked against NLTK 3.5)
    assert W.nltk_tokenize('He said, "I can\'t go" (A) b--c; ok.') == [
        *[
            "He",
            "said",
            ",",
            "``",
            "I",
            "ca",
            "n't",
            "go",
            "''",
            "(",
            "A",
            ")",
            "b",
            "--",
            "c",
            ";",
            "ok",
            ".",
        ]
    ]


def test_mteval_tokenize_is_multi_bleu_detok() -> None:
    assert W.mteval_tokenize("Hello, world. It's 3.5 or 1,000 in 10-20 a-b &amp; x&quot;") == [
        *[
            "Hello",
            ",",
            "world",
            ".",
            "It's",
            "3.5",
            "or",
            "1,000",
            "in",
            "10",
            "-",
            "20",
            "a-b",
            "&",
            "x",
            '"',
        ]
    ]
    assert W.mteval_tokenize("   ") == []


# --- BLEU ---------------------------------------------------------------------------------------------------


def test_bleu_hand_examples() -> None:
    assert W.multi_bleu_detok(["the cat sat on the mat"], [["the cat sat on the mat"] * 6]).score == 100.0
    # closest reference length (ties -> the shorter) and the brevity penalty
    res = W.multi_bleu_detok(["the cat sat on"], [["the cat sat on the mat", "the cat sat on it now"]])
    assert (res.hyp_len, res.ref_len, res.precisions) == (4, 6, (1.0, 1.0, 1.0, 1.0))
    assert res.score == pytest.approx(100 * 2.718281828459045 ** (1 - 6 / 4))
    # a zero n-gram precision gives 0, as the script's my_log(0) = -9999999999 does
    assert W.multi_bleu_detok(["a b c"], [["a b c"]]).score == 0.0
    assert W.bleu(["a b c d e"], [["a b c d x"]]) == round(
        W.multi_bleu_detok(["a b c d e"], [["a b c d x"]]).score, 2
    )


# --- TER ----------------------------------------------------------------------------------------------------


def test_levenshtein_matches_the_dynamic_programme() -> None:
    import random

    def dp(a: list[str], b: list[str]) -> int:
        prev = list(range(len(b) + 1))
        for i, x in enumerate(a, 1):
            cur = [i]
            for j, y in enumerate(b, 1):
                cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
            prev = cur
        return prev[-1]

    rng = random.Random(0)
    for _ in range(2000):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 10))]
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 70))]  # > 64 words: several machine words
        assert W.levenshtein(a, b) == dp(a, b)


def test_pyter_ter_hand_examples() -> None:
    # pyter's own doctest: 1 shift ("THIS WEEK") + 3 edits over 13 reference words
    ref = "SAUDI ARABIA denied THIS WEEK information published in the AMERICAN new york times"
    hyp = "THIS WEEK THE SAUDIS denied information published in the new york times"
    assert W.pyter_ter(hyp.split(" "), ref.split(" ")) == 4 / 13
    assert W.pyter_ter(list("bca"), list("abc")) == 1 / 3  # one shift, no edit
    assert W.pyter_ter([], list("ab")) == 1.0
    assert W.pyter_ter(list("abcdef"), ["x"]) == 6.0  # TER is not capped at 1


def test_sentence_ter_is_the_minimum_over_references_and_one_for_an_empty_one() -> None:
    assert W.sentence_ter("a b", ["a b c d", "x y z", "a b c d"]) == 0.5
    assert W.sentence_ter("a b c", ["x", "a b c"]) == 0.0
    assert W.sentence_ter("a b c d e f", ["x", ""]) == 1.0  # the empty reference's 1 beats 6.0
    # corpus TER = mean over inputs, not total edits / total reference words
    assert W.ter(["a b", "a"], [["a b c d"], ["x"]]) == (0.5 + 1.0) / 2


# --- references: merging, subsets, files ---------------------------------------------------------------------

_DART_TOY = """<?xml version='1.0' encoding='utf-8'?>
<benchmark><entries>
  <entry category="MISC" eid="Id1" size="1"><modifiedtripleset>
    <mtriple>Mars Hill College | JOINED | 1973</mtriple></modifiedtripleset>
    <lex comment="x" lid="Id1">It joined in 1973.</lex><lex comment="x" lid="Id2" /></entry>
  <entry category="MISC" eid="Id2" size="1"><modifiedtripleset>
    <mtriple>Mars Hill College | LOCATION | Mars Hill</mtriple></modifiedtripleset>
    <lex comment="x" lid="Id1">It is in Mars Hill.</lex></entry>
  <entry category="MISC" eid="Id3" size="1"><modifiedtripleset>
    <mtriple>Mars Hill College | joined | 1973</mtriple></modifiedtripleset>
    <lex comment="x" lid="Id1">Mars Hill College joined in 1973.</lex></entry>
</entries></benchmark>
"""

_WEBNLG_TOY = """<?xml version='1.0' encoding='UTF-8'?>
<benchmark><entries>
  <entry category="Airport" eid="Id1" size="1"><modifiedtripleset>
    <mtriple>Aarhus_Airport | cityServed | Aarhus</mtriple></modifiedtripleset>
    <lex comment="good" lid="Id1">Aarhus airport serves the city of Aarhus.</lex></entry>
  <entry category="Artist" eid="Id2" size="1"><modifiedtripleset>
    <mtriple>Ace_Wilder | genre | Hip_hop_music</mtriple></modifiedtripleset>
    <lex comment="good" lid="Id1">Ace Wilder plays hip hop music.</lex>
    <lex comment="good" lid="Id2">The genre of Ace Wilder is hip hop.</lex></entry>
  <entry category="City" eid="Id3" size="1"><modifiedtripleset>
    <mtriple>Aarhus | leaderName | Jacob_Bundsgaard</mtriple></modifiedtripleset>
    <lex comment="good" lid="Id1">Jacob Bundsgaard leads Aarhus.</lex></entry>
</entries></benchmark>
"""


def test_dart_inputs_merged_by_source_keeping_empty_references(tmp_path: Path) -> None:
    path = tmp_path / "dart.xml"
    path.write_text(_DART_TOY, encoding="utf-8")
    inputs = W.load_references(path, "dart")
    # relations are lower-cased in the source, so entries 1 and 3 are one input (first-occurrence order)
    assert inputs.sources == ("Mars Hill College : joined : 1973", "Mars Hill College : location : Mars Hill")
    assert inputs.references == (
        ("It joined in 1973.", "", "Mars Hill College joined in 1973."),
        ("It is in Mars Hill.",),
    )
    with pytest.raises(ValueError, match="seen"):
        W.select(W.load_examples(path, "dart"), "seen")


def test_webnlg_subsets_follow_the_training_categories(tmp_path: Path) -> None:
    path = tmp_path / "webnlg.xml"
    path.write_text(_WEBNLG_TOY, encoding="utf-8")
    examples = W.load_examples(path, "webnlg")
    assert [len(W.merge_by_source(W.select(examples, s))) for s in W.SUBSETS] == [3, 2, 1]
    unseen = W.merge_by_source(W.select(examples, "unseen"))
    everything = W.merge_by_source(examples)
    hyps = tmp_path / "hyps.txt"
    hyps.write_text("h0\nh1\nh2\n", encoding="utf-8")  # one line per input of the whole set: picked out
    assert W.read_hypotheses(hyps, unseen, everything) == ["h1"]
    hyps.write_text("only\n", encoding="utf-8")  # one line per input of the subset, as --filter writes it
    assert W.read_hypotheses(hyps, unseen, everything) == ["only"]


def test_read_lines_drops_only_the_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "h.txt"
    path.write_bytes(b"a\n\n")  # two hypotheses, the second empty
    assert W.read_lines(path) == ["a", ""]
    path.write_bytes(b"\xef\xbb\xbfa\r\nb")  # BOM dropped; only \n ends a line
    assert W.read_lines(path) == ["a\r", "b"]


@needs_webnlg
def test_webnlg_test_set_counts() -> None:
    examples = W.load_examples(WEBNLG_XML, "webnlg")
    assert [len(W.merge_by_source(W.select(examples, s))) for s in W.SUBSETS] == [1862, 971, 891]
    assert max(len(r) for r in W.merge_by_source(examples).references) == 8  # capped to 6 when scored


@needs_dart
def test_dart_test_set_counts() -> None:
    examples = W.load_examples(DART_XML, "dart")
    inputs = W.merge_by_source(examples)
    assert (len(examples), len(inputs)) == (5097, 4159)
    assert sum(len(r) for r in inputs.references) == 12552  # every <lex>, the empty one of Id116 included
    assert sum(r == "" for refs in inputs.references for r in refs) == 1


# --- the CLI ------------------------------------------------------------------------------------------------


def _cli_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        nlg.cli(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_cli_bad_input_prints_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refs = tmp_path / "webnlg.xml"
    refs.write_text(_WEBNLG_TOY, encoding="utf-8")
    hyps = tmp_path / "hyps.txt"
    web = ["--task", "webnlg", str(refs), str(hyps)]

    assert str(hyps) in _cli_error(web, capsys)  # missing
    hyps.write_bytes(b"")
    assert f"{hyps} is empty" in _cli_error(web, capsys)
    hyps.write_text("a\nb\n", encoding="utf-8")
    err = _cli_error(web, capsys)
    assert str(hyps) in err and "2 lines" in err and "3 inputs" in err
    hyps.write_bytes(b"ok\nok\n\xff bad\n")
    assert f"{hyps}: line 3 is not valid UTF-8" in _cli_error(web, capsys)
    assert "no such file" in _cli_error(["--task", "webnlg", str(tmp_path / "nope.xml"), str(hyps)], capsys)
    refs.write_text("<benchmark><entries>", encoding="utf-8")
    assert "not well-formed XML" in _cli_error(web, capsys)
    dart = tmp_path / "dart.xml"
    dart.write_text(_DART_TOY, encoding="utf-8")
    hyps.write_text("a\nb\n", encoding="utf-8")
    assert "seen/unseen" in _cli_error(["--task", "dart", "--subset", "seen", str(dart), str(hyps)], capsys)


def test_cli_module_exit_status(tmp_path: Path) -> None:
    refs = tmp_path / "webnlg.xml"
    refs.write_text(_WEBNLG_TOY, encoding="utf-8")
    cmd = [sys.executable, "-m", "lora.metrics.nlg", "--task", "webnlg", str(refs), str(tmp_path / "none")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: no such file: {tmp_path / 'none'}"]


def test_require_java_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(java.shutil, "which", lambda name: None)
    with pytest.raises(java.JavaNotFoundError, match="apt-get install default-jre-headless"):
        W.require_java()
    with pytest.raises(FileNotFoundError):
        W.meteor(["a"], [["a"]])


def test_meteor_jar_is_the_wheel_build() -> None:
    jar, para = W.meteor_files()
    assert jar.name == "Meteor-1.5.jar" and jar.parent.name == "lib" and para.name == "paraphrase-en.gz"
    assert (jar.parents[2] / "meteor" / "meteor-1.5.jar").is_file()  # the other (COCO) build exists too


# --- official numbers ---------------------------------------------------------------------------------------


@needs_webnlg
@needs_meteor
def test_webnlg_cli_matches_official_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refs = tmp_path / "webnlg_every6.xml"
    _write_entries(WEBNLG_XML, refs, lambda k: k % 6 == 0)
    inputs = W.load_references(refs, "webnlg")
    hyps = tmp_path / "hypothesis"
    hyps.write_text("".join(h + "\n" for h in _webnlg_hypotheses(inputs)), encoding="utf-8")
    scores = nlg.main(["--task", "webnlg", str(refs), str(hyps)])
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith('{"bleu": 62.1, "meteor": 0.4537')
    _check(scores, ("webnlg_every6", "all"))


@needs_webnlg
def test_webnlg_subsets_bleu_and_ter_match_official_eval(tmp_path: Path) -> None:
    refs = tmp_path / "webnlg_every6.xml"
    _write_entries(WEBNLG_XML, refs, lambda k: k % 6 == 0)
    examples = W.load_examples(refs, "webnlg")
    everything = W.merge_by_source(examples)
    hyps = tmp_path / "hypothesis_all"
    hyps.write_text("".join(h + "\n" for h in _webnlg_hypotheses(everything)), encoding="utf-8")
    for subset in W.SUBSETS:
        key = ("webnlg_every6", subset)
        inputs = W.merge_by_source(W.select(examples, subset))
        assert len(inputs) == OFFICIAL[key][0]
        got = W.evaluate("webnlg", refs, hyps, subset, metrics=("bleu", "ter"))
        _check(got, key, ("bleu", "ter"))
        h, r = W.prepare(W.read_hypotheses(hyps, inputs, everything), inputs.references)
        assert W.multi_bleu_detok(h, r).score == pytest.approx(OFFICIAL[key][2], abs=1e-9)
        # the upstream issue: eval.py on the decoder's files as written averages TER over N+1 segments
        n = len(inputs)
        assert (n * got["ter"] + 1) / (n + 1) == pytest.approx(OFFICIAL_TER_WRITTEN[key], abs=1e-12)


@needs_dart
@needs_meteor
def test_dart_cli_matches_official_eval(tmp_path: Path) -> None:
    refs = tmp_path / "dart_first300.xml"
    _write_entries(DART_XML, refs, lambda k: k < 300)
    examples = W.load_examples(refs, "dart")
    inputs = W.merge_by_source(examples)
    hyps = tmp_path / "hypothesis"
    hyps.write_text("".join(h + "\n" for h in _dart_hypotheses(examples, inputs)), encoding="utf-8")
    key = ("dart_first300", "all")
    assert len(inputs) == OFFICIAL[key][0]
    _check(nlg.main(["--task", "dart", str(refs), str(hyps)]), key)
    assert (300 * W.ter(*W.prepare(_dart_hypotheses(examples, inputs), inputs.references)) + 1) / 301 == (
        pytest.approx(OFFICIAL_TER_WRITTEN[key], abs=1e-12)
    )


@pytest.mark.slow
@needs_webnlg
@needs_meteor
@pytest.mark.parametrize("subset", W.SUBSETS)
def test_full_webnlg_matches_official_eval(subset: str) -> None:
    examples = W.load_examples(WEBNLG_XML, "webnlg")
    everything = W.merge_by_source(examples)
    hyps_all = dict(zip(everything.sources, _webnlg_hypotheses(everything), strict=True))
    inputs = W.merge_by_source(W.select(examples, subset))
    key = ("webnlg", subset)
    assert len(inputs) == OFFICIAL[key][0]
    hyps = [hyps_all[s] for s in inputs.sources]
    _check(W.score(hyps, inputs.references), key)
    assert W.multi_bleu_detok(*W.prepare(hyps, inputs.references)).score == pytest.approx(
        OFFICIAL[key][2], abs=1e-9
    )


@pytest.mark.slow
@needs_dart
@needs_meteor
def test_full_dart_matches_official_eval() -> None:
    examples = W.load_examples(DART_XML, "dart")
    inputs = W.merge_by_source(examples)
    hyps = _dart_hypotheses(examples, inputs)
    key = ("dart", "all")
    assert len(inputs) == OFFICIAL[key][0]
    _check(W.score(hyps, inputs.references), key)
    assert W.multi_bleu_detok(*W.prepare(hyps, inputs.references)).score == pytest.approx(
        OFFICIAL[key][2], abs=1e-9
    )
