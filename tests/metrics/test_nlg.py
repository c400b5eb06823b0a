"""Tests for lora/metrics/nlg.py: hand-checked cases, file reading, and the E2E challenge's published scores."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from lora.metrics import java, nlg

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
E2E_REF = DATA / "e2e_metrics_reference"
needs_data = pytest.mark.skipif(
    not E2E_REF.is_dir(), reason=f"E2E metric reference data not found at {E2E_REF}"
)
needs_java = pytest.mark.skipif(
    shutil.which("java") is None, reason="java not on PATH (METEOR, PTB tokenizer)"
)

# Scores published by the E2E challenge for these outputs (e2e_metrics_reference/README.md: the challenge
# website, index.html, "Automatic Metrics" table, and l.264-273 for the dev baseline).
# (references, outputs, (BLEU, NIST, METEOR, ROUGE-L, CIDEr))
PUBLISHED = {
    "tgen_baseline": ("e2e/testset_w_refs.csv", (0.6593, 8.6094, 0.4483, 0.6850, 2.2338)),
    "slug2slug": ("e2e/testset_w_refs.csv", (0.6619, 8.6130, 0.4454, 0.6772, 2.2615)),
    "tr_NonPrimary_3": ("e2e/testset_w_refs.csv", (0.6805, 8.7777, 0.4462, 0.6928, 2.3195)),
    "zhaw_primary_1": ("e2e/testset_w_refs.csv", (0.5864, 8.0212, 0.4322, 0.5998, 1.8173)),
    "forge_E2E_UPF_1": ("e2e/testset_w_refs.csv", (0.4207, 6.5139, 0.3685, 0.5437, 1.3106)),
    "dev_baseline": ("e2e/devset.csv", (0.6925, 8.4781, 0.4703, 0.7257, 2.3987)),
}


def _load(system: str) -> tuple[list[str], list[list[str]]]:
    refs_path, _ = PUBLISHED[system]
    if system == "dev_baseline":
        outputs = E2E_REF / "dev_baseline" / "baseline-output.txt"
    else:
        outputs = E2E_REF / "test_system_outputs" / f"{system}.tsv"
    mrs, refs = nlg.read_references(DATA / refs_path)
    return nlg.read_outputs(outputs, mrs), refs


# --- hand-checked values -----------------------------------------------------------------------------------


def test_identical_outputs_give_bleu_one_and_ter_zero() -> None:
    hyps = ["The cat sat on the mat.", "Blue Spice is a coffee shop in the city centre."]
    refs = [[h, "something else entirely"] for h in hyps]
    assert nlg.bleu(hyps, refs) == pytest.approx(1.0)
    assert nlg.ter(hyps, refs) == 0.0


def test_bleu_and_ter_ignore_case() -> None:
    assert nlg.bleu(["THE CAT SAT ON THE MAT"], [["the cat sat on the mat"]]) == pytest.approx(1.0)
    assert nlg.ter(["THE CAT SAT"], [["the cat sat"]]) == 0.0


def test_ter_one_substitution_in_four_words() -> None:
    assert nlg.ter(["a b c x"], [["a b c d"]]) == pytest.approx(0.25)


def test_nist_single_reference_hand_computed() -> None:
    # Reference words: the, cat, sat (3). info(the) = info(cat) = log2(3/1); info(the cat) = log2(1/1) = 0.
    # Output "the cat": unigram term 2*log2(3)/2, bigram term 0/1; ratio 2/3 -> BP = 0.5 (mteval's beta).
    assert nlg.nist(["the cat"], [["the cat sat"]]) == pytest.approx(0.5 * math.log2(3))


def test_nist_clips_counts_and_has_no_bonus_for_long_outputs() -> None:
    # info(a) = log2(2/1) = 1, matched once (clipped), over 3 output unigrams; ratio 3/2 >= 1 -> BP = 1.
    assert nlg.nist(["a a a"], [["a b"]]) == pytest.approx(1 / 3)


def test_nist_variable_reference_count() -> None:
    # Reference words a:2, b:2, c:1 (5 in all) -> info(a) = info(b) = log2(5/2); 1.5 references per segment,
    # so 5/1.5 reference words per reference set, output 2 words: ratio 0.6.
    beta = -math.log(0.5) / math.log(1.5) ** 2
    expected = math.log2(2.5) * math.exp(-beta * math.log(0.6) ** 2)
    assert nlg.nist(["a", "b"], [["a b", "a c"], ["b"]]) == pytest.approx(expected)


def test_score_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="2 hypotheses but 1 reference"):
        nlg.score(["a", "b"], [["a"]], metrics=["bleu"])
    with pytest.raises(ValueError, match="unknown metrics"):
        nlg.score(["a"], [["a"]], metrics=["bleurt"])
    with pytest.raises(ValueError, match="no reference"):
        nlg.score(["a"], [[]], metrics=["bleu"])


def test_score_subsets_keys() -> None:
    hyps, refs = ["a b c d", "e f g h", "x y z w"], [["a b c d"], ["e f g h"], ["a b c d"]]
    out = nlg.score_subsets(hyps, refs, {"seen": [0, 1], "all": [0, 1, 2]}, metrics=["bleu", "ter"])
    assert set(out) == {"bleu_seen", "ter_seen", "bleu_all", "ter_all"}
    assert out["bleu_seen"] == pytest.approx(1.0)
    assert out["ter_all"] > 0


def test_missing_java_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(java.shutil, "which", lambda _: None)
    with pytest.raises(FileNotFoundError, match="default-jre-headless"):
        nlg.score(["a"], [["a"]], metrics=["meteor"])


# --- files ---------------------------------------------------------------------------------------------------


def test_read_references_csv_with_bom_crlf_header_grouped_by_first_appearance(tmp_path: Path) -> None:
    path = tmp_path / "refs.csv"
    rows = ["mr,ref", '"name[A], area[x]","A is in x."', '"name[B]","B."', '"name[A], area[x]","In x is A."']
    path.write_bytes(("\ufeff" + "\r\n".join(rows) + "\r\n").encode())
    mrs, refs = nlg.read_references(path)
    assert mrs == ["name[A], area[x]", "name[B]"]
    assert refs == [["A is in x.", "In x is A."], ["B."]]


def test_read_references_text_format(tmp_path: Path) -> None:
    path = tmp_path / "refs.txt"
    path.write_text("a 1\na 2\n\nb 1\n\n")
    assert nlg.read_references(path) == (None, [["a 1", "a 2"], ["b 1"]])


def test_read_outputs_tsv_aligned_by_mr(tmp_path: Path) -> None:
    path = tmp_path / "out.tsv"
    path.write_text('"name[B]"\t"B out."\nname[A]\tA out.\n')  # no header, other order, quoted or not
    assert nlg.read_outputs(path, mrs=["name[A]", "name[B]"]) == ["A out.", "B out."]
    with pytest.raises(ValueError, match="no output for 1 reference MRs"):
        nlg.read_outputs(path, mrs=["name[A]", "name[C]"])


def test_read_outputs_text_count_mismatch_names_both_counts(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    path.write_text("one\ntwo\n")
    assert nlg.read_outputs(path) == ["one", "two"]
    with pytest.raises(ValueError, match="has 2 lines but the references have 3 MRs"):
        nlg.read_outputs(path, mrs=["a", "b", "c"])
    with pytest.raises(FileNotFoundError, match="no such file"):
        nlg.read_outputs(tmp_path / "missing.txt")


# --- the official scorer's numbers -------------------------------------------------------------------------


@needs_data
@pytest.mark.parametrize("system", ["tr_NonPrimary_3", "dev_baseline"])
def test_bleu_nist_match_published(system: str) -> None:
    """BLEU and NIST (about 1 s per file) against the published numbers, to 4 decimals."""
    hyps, refs = _load(system)
    expected = PUBLISHED[system][1]
    assert round(nlg.bleu(hyps, refs), 4) == expected[0]
    assert round(nlg.nist(hyps, refs), 4) == expected[1]


@needs_data
@needs_java
def test_cli_on_e2e_metrics_example(capsys: pytest.CaptureFixture[str]) -> None:
    """All six metrics on the 10-MR example inputs of tuetschek/e2e-metrics (a few seconds).

    No score is published for these inputs: the values are this implementation's, pinned once its full-file
    scores matched all published ones (test_all_metrics_match_published).
    """
    example = E2E_REF / "e2e-metrics_example-inputs"
    nlg.main([str(example / "devel-conc.txt"), str(example / "baseline-output.txt"), "--ter"])
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    pinned = {
        "bleu": 0.7203,
        "nist": 7.8212,
        "meteor": 0.4801,
        "rouge_l": 0.7910,
        "cider": 2.3039,
        "ter": 0.3399,
    }
    assert {m: round(v, 4) for m, v in scores.items()} == pinned


@pytest.mark.slow
@needs_data
@needs_java
@pytest.mark.parametrize("system", list(PUBLISHED))
def test_all_metrics_match_published(system: str) -> None:
    """All five metrics against the E2E challenge's published scores, to 4 decimals (about 12 s per file)."""
    hyps, refs = _load(system)
    scores = nlg.score(hyps, refs)
    assert tuple(round(scores[m], 4) for m in nlg.METRICS) == PUBLISHED[system][1]


def test_cli_bad_hypothesis_files_are_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    refs = tmp_path / "refs.txt"
    refs.write_text("a cheap pub .\n\nan expensive cafe .\n", encoding="utf-8")
    hyps = tmp_path / "hyps.txt"
    cases = {
        b"": f"error: {hyps} is empty",
        b"one line\n": f"error: {hyps} has 1 outputs but {refs} has 2 MRs",
        b"ok\n\xff bad\n": f"error: {hyps}: line 2 is not valid UTF-8 (invalid start byte at byte 3)",
    }
    for content, expected in cases.items():
        hyps.write_bytes(content)
        with pytest.raises(SystemExit) as exc:
            nlg.cli([str(refs), str(hyps)])
        assert exc.value.code == 2
        assert capsys.readouterr().err.strip() == expected
