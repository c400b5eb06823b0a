"""Tests for lora/data/nlg.py: hand-written fixtures per released format, the real files, and LM features."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from lora.data import nlg
from lora.data.nlg import IGNORE_INDEX, NLGExample, load_nlg, training_pairs

FIX = Path(__file__).resolve().parent / "fixtures_nlg"
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real benchmark data not found at {DATA}")

VAULTS = (
    "name : The Vaults | Type : pub | price : £ 20 - 25 | customer rating : 5 out of 5 | near : Café Adriatic"
)


# ---------------------------------------------------------------------------------------------------------
# Fixtures: one per released format
# ---------------------------------------------------------------------------------------------------------


def test_e2e_csv_is_grouped_per_mr_and_tokenised_like_the_paper() -> None:
    examples = load_nlg("e2e", "validation", FIX)
    # expected strings written by hand from fixtures_nlg/e2e/devset.csv and the rules of e2e_word_tokenize
    assert examples == [
        NLGExample(
            VAULTS,
            (
                "The Vaults is a pub near Café Adriatic ; it isn 't cheap ( £ 20 - 25 ) but it 's rated 5 out of 5 .",
                "Near Café Adriatic , the family - friendly ' Vaults ' pub ...",
            ),
        ),
        NLGExample(
            "name : Alimentum | area : city centre | family friendly : no",
            ("There is a place in the city centre , Alimentum , that is not family - friendly .",),
        ),
    ]
    raw = load_nlg("e2e", "validation", FIX, tokenize_e2e=False)
    assert raw[0].source == VAULTS.replace("£ 20 - 25", "£20-25")
    assert raw[1].references == (
        "There is a place in the city centre, Alimentum, that is not family-friendly.",
    )


def test_e2e_groups_non_adjacent_rows_and_flattens_per_reference() -> None:
    examples = load_nlg("e2e", "train", FIX / "e2e")  # a task folder works as data_dir too
    assert [len(ex.references) for ex in examples] == [2, 1]
    assert training_pairs(examples) == [
        ("name : Alimentum | area : city centre | family friendly : no", "Alimentum is in the city centre ."),
        (
            "name : Alimentum | area : city centre | family friendly : no",
            "Alimentum is not family - friendly .",
        ),
        (
            "name : Blue Spice | Type : coffee shop | price : less than £ 20",
            "Blue Spice is a cheap coffee shop .",
        ),
    ]


def test_webnlg_xml_keeps_good_lexicalisations_and_modified_triples() -> None:
    examples = load_nlg("webnlg", "validation", FIX)
    # the entry whose only lexicalisation is "toFix" is dropped, as format_converting_webnlg.py drops it
    assert examples == [
        NLGExample(
            "Aarhus : leaderName : Jacob_Bundsgaard",
            ("The leader of Aarhus is Jacob Bundsgaard.",),
            "Airport",
            True,
        ),
        NLGExample(
            "Elliot_See : almaMater : University_of_Texas_at_Austin | Elliot_See : birthPlace : Dallas",
            (
                "Elliot See, born in Dallas, studied at the University of Texas at Austin.",
                "Dallas-born Elliot See went to UT Austin.",
            ),
            "Astronaut",
            True,
        ),
    ]
    assert nlg.read_webnlg_json(FIX / "webnlg_challenge_2017" / "lora_json" / "dev.json") == examples
    # a folder holding only the LoRA JSON form is read as well
    assert load_nlg("webnlg", "validation", FIX / "webnlg_challenge_2017" / "lora_json") == examples


def test_webnlg_test_split_marks_unseen_categories() -> None:
    examples = load_nlg("webnlg", "test", FIX)
    assert [(ex.category, ex.seen) for ex in examples] == [
        ("Airport", True),
        ("Artist", False),
        ("Politician", False),
    ]
    assert (
        examples[0].source == "Abilene_Regional_Airport : cityServed : Abilene,_Texas"
    )  # modified, not original
    assert not nlg.WEBNLG_SEEN & nlg.WEBNLG_UNSEEN and len(nlg.WEBNLG_SEEN | nlg.WEBNLG_UNSEEN) == 15


def test_dart_json_and_xml_agree() -> None:
    examples = load_nlg("dart", "validation", FIX)  # the JSON release is preferred, as in the paper
    assert examples == [
        NLGExample(
            "Mars Hill College : joined : 1973 | Mars Hill College : location : Mars Hill, North Carolina",
            ("A school from Mars Hill, North Carolina, joined in 1973.",),
        ),
        # relation lower-cased, subject spaces kept verbatim, the empty annotation kept (format_converting_dart.py
        # writes every annotation; the released scorer keeps it as a reference)
        NLGExample(" sanctuary  : written_by : shonda rhimes", ("Shonda Rhimes wrote Sanctuary.", "")),
    ]
    assert nlg.read_dart_xml(FIX / "dart" / "dart-v1.1.1-full-dev.xml") == examples
    assert load_nlg("dart", "test", FIX) == examples  # test is only present as XML


# ---------------------------------------------------------------------------------------------------------
# Errors and the data source order: data_dir, then $LORA_NLG_DIR, then the hub
# ---------------------------------------------------------------------------------------------------------


def test_bad_task_split_and_paths_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown task 'e2e_nlg'"):
        load_nlg("e2e_nlg", "train", FIX)
    with pytest.raises(ValueError, match="unknown split 'dev'.*'validation'"):
        load_nlg("e2e", "dev", FIX)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_nlg("e2e", "train", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"testset_w_refs\.csv.*found: devset\.csv, trainset\.csv"):
        load_nlg("e2e", "test", FIX)
    with pytest.raises(ValueError, match="expected 'mr' and 'ref'"):
        load_nlg("e2e", "validation", FIX / "e2e_bad_columns")
    with pytest.raises(ValueError, match="not an E2E meaning representation"):
        nlg.linearize_e2e_mr("name: The Vaults")


def test_env_var_is_used_when_no_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(nlg.ENV_VAR, str(FIX))
    assert load_nlg("dart", "validation") == load_nlg("dart", "validation", FIX)


def test_unreachable_hub_gives_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("no network")

    monkeypatch.delenv(nlg.ENV_VAR, raising=False)
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(FileNotFoundError, match=r"LORA_NLG_DIR.*webnlg_challenge_2017/xml") as err:
        load_nlg("webnlg", "test")
    assert "\n" not in str(err.value) and "ConnectionError" in str(err.value)


def test_hub_rows_are_converted_like_local_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hub schemas (features as in the dataset cards of tuetschek/e2e_nlg, web_nlg, Yale-LILY/dart)."""
    import datasets

    e2e = {
        "meaning_representation": ["name[Alimentum], area[city centre], familyFriendly[no]"] * 2,
        "human_reference": ["Alimentum is in the city centre.", "Alimentum is not family-friendly."],
    }
    webnlg = [
        {
            "category": "Artist",
            "test_category": test_category,
            "modified_triple_sets": {"mtriple_set": [["Aaron_Turner | genre | Black_metal"]]},
            "lex": {"comment": ["good", "toFix"], "text": ["Aaron Turner plays black metal.", "Bad."]},
        }
        for test_category in ("testdata_with_lex", "testdata_no_lex")
    ]
    dart = [
        {"tripleset": [["A", "B_C", "d"]], "annotations": {"source": ["x", "y"], "text": ["A is d.", ""]}}
    ]
    rows = {"tuetschek/e2e_nlg": e2e, "webnlg-challenge/web_nlg": webnlg, "Yale-LILY/dart": dart}
    monkeypatch.delenv(nlg.ENV_VAR, raising=False)
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config, split: rows[name])
    assert load_nlg("e2e", "train") == load_nlg("e2e", "train", FIX)[:1]
    assert load_nlg("webnlg", "test") == [
        NLGExample(
            "Aaron_Turner : genre : Black_metal", ("Aaron Turner plays black metal.",), "Artist", False
        )
    ]
    assert load_nlg("dart", "validation") == [NLGExample("A : b_c : d", ("A is d.", ""))]


# ---------------------------------------------------------------------------------------------------------
# Causal-LM features, with a byte-level BPE tokenizer trained here on a few E2E rows
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    texts = [f"{s} {t}" for ex in load_nlg("e2e", "validation", FIX) for s, t in training_pairs([ex])]
    bpe.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def test_loss_is_on_target_and_eos_only(tokenizer: PreTrainedTokenizerFast) -> None:
    source, target = VAULTS, "The Vaults is a pub ."
    f = nlg.build_lm_features(source, target, tokenizer, max_length=512)
    eos = tokenizer.eos_token_id
    n_src = len(tokenizer.encode(source, add_special_tokens=False))
    target_ids = tokenizer.encode(" " + target, add_special_tokens=False)
    assert f["input_ids"][n_src] == eos and f["input_ids"][-1] == eos  # separator and end
    assert f["attention_mask"] == [1] * len(f["input_ids"]) and len(f["labels"]) == len(f["input_ids"])
    supervised = [i for i, label in enumerate(f["labels"]) if label != IGNORE_INDEX]
    assert supervised == list(range(n_src + 1, n_src + 1 + len(target_ids) + 1))
    assert (
        [f["labels"][i] for i in supervised] == [f["input_ids"][i] for i in supervised] == target_ids + [eos]
    )
    assert tokenizer.decode(f["input_ids"][n_src + 1 :]) == " " + target + "<|endoftext|>"
    assert nlg.build_prompt(source, tokenizer)["input_ids"] == f["input_ids"][: n_src + 1]


def test_truncation_keeps_the_head_and_needs_room_for_a_target(tokenizer: PreTrainedTokenizerFast) -> None:
    n_prompt = len(nlg.build_prompt(VAULTS, tokenizer)["input_ids"])
    f = nlg.build_lm_features(VAULTS, "The Vaults is a pub .", tokenizer, max_length=n_prompt + 2)
    assert len(f["input_ids"]) == len(f["labels"]) == n_prompt + 2
    assert sum(label != IGNORE_INDEX for label in f["labels"]) == 2
    with pytest.raises(ValueError, match="no room for a target"):
        nlg.build_lm_features(VAULTS, "x", tokenizer, max_length=n_prompt)
    short = nlg.build_prompt(VAULTS, tokenizer, max_length=3)["input_ids"]
    assert len(short) == 3 and short[-1] == tokenizer.eos_token_id


def test_lm_collator_right_pads_with_eos_when_no_pad_token(tokenizer: PreTrainedTokenizerFast) -> None:
    assert tokenizer.pad_token is None
    feats = [nlg.build_lm_features(s, t, tokenizer) for s, t in training_pairs(load_nlg("e2e", "train", FIX))]
    batch = nlg.LMCollator.from_tokenizer(tokenizer)(feats)
    lengths = [len(f["input_ids"]) for f in feats]
    assert {k: tuple(v.shape) for k, v in batch.items()} == {k: (3, max(lengths)) for k in batch}
    assert batch["input_ids"].dtype == torch.long
    for row, n in enumerate(lengths):
        assert batch["input_ids"][row, :n].tolist() == feats[row]["input_ids"]
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (max(lengths) - n)
        assert set(batch["input_ids"][row, n:].tolist()) <= {tokenizer.eos_token_id}
        assert set(batch["labels"][row, n:].tolist()) <= {IGNORE_INDEX}


def test_generation_collator_left_pads_so_prompts_end_at_the_separator(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    prompts = [nlg.build_prompt(ex.source, tokenizer) for ex in load_nlg("e2e", "validation", FIX)]
    batch = nlg.GenerationCollator(pad_token_id=0)(prompts)
    lengths = [len(p["input_ids"]) for p in prompts]
    assert lengths[0] != lengths[1]
    assert batch["input_ids"][:, -1].tolist() == [tokenizer.eos_token_id] * 2
    for row, n in enumerate(lengths):
        assert batch["input_ids"][row, -n:].tolist() == prompts[row]["input_ids"]
        assert batch["attention_mask"][row].tolist() == [0] * (max(lengths) - n) + [1] * n
        assert batch["input_ids"][row, : max(lengths) - n].tolist() == [0] * (max(lengths) - n)


def test_tokenizer_without_eos_is_rejected(tokenizer: PreTrainedTokenizerFast) -> None:
    no_eos = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer)
    with pytest.raises(ValueError, match="no eos token"):
        nlg.build_prompt("a", no_eos)


# ---------------------------------------------------------------------------------------------------------
# Real files (../shared/data): counts from MANIFEST.md and the paper's own data files
# ---------------------------------------------------------------------------------------------------------


def _paper_txt(name: str) -> list[tuple[str, str]]:
    """microsoft/LoRA data/e2e/*.txt as read by format_converting_e2e.py: `source||target`, line stripped."""
    lines = (DATA / "e2e" / "lora_format" / name).read_text(encoding="utf-8").splitlines()
    return [tuple(line.strip().split("||")) for line in lines]  # type: ignore[misc]


@needs_data
def test_real_e2e_matches_the_paper_files() -> None:
    # By default (references="paper") the validation and test sets ARE the paper's files, reference for reference.
    for split, name in (("validation", "valid.txt"), ("test", "test.txt")):
        assert training_pairs(load_nlg("e2e", split, DATA)) == [(s, t.strip()) for s, t in _paper_txt(name)]
    # Re-tokenising the official csv (references="official") comes close:
    dev = load_nlg("e2e", "validation", DATA, references="official")
    test = load_nlg("e2e", "test", DATA, references="official")
    assert (len(dev), len(training_pairs(dev)), len(test), len(training_pairs(test))) == (
        547,
        4672,
        630,
        4693,
    )
    train = load_nlg("e2e", "train", DATA)
    assert (len(train), len(training_pairs(train))) == (4862, 42061)  # official E2E figures

    ours, paper = training_pairs(dev), _paper_txt("valid.txt")
    assert [s for s, _ in ours] == [s for s, _ in paper]  # sources: identical line for line
    # targets: identical except one line whose "5. in" the paper's tokeniser left joined (found by diffing)
    differ = [i for i, (a, b) in enumerate(zip(ours, paper, strict=True)) if a[1] != b[1]]
    assert len(differ) == 1 and paper[differ[0]][1].replace("5. in", "5 . in") == ours[differ[0]][1]

    ours, paper = training_pairs(test), _paper_txt("test.txt")
    assert [s for s, _ in ours] == [s for s, _ in paper]
    # test.txt was tokenised differently ("is n't" vs "isn 't", "20-£25"): 4567 of 4693 targets agree (counted)
    assert sum(a[1] == b[1] for a, b in zip(ours, paper, strict=True)) == 4567


@needs_data
def test_real_webnlg_counts_seen_unseen_and_lora_json() -> None:
    root = DATA / "webnlg_challenge_2017"
    dev_files = sorted((root / "xml" / "dev").glob("*triples/*.xml"))
    assert sum(len(ET.parse(f).getroot().findall("entries/entry")) for f in dev_files) == 872
    dev = load_nlg("webnlg", "validation", DATA)
    # 871: one dev entry (Building Id23, Japan ethnicGroup) has only "toFix" lexicalisations
    assert (len(dev), len(training_pairs(dev))) == (871, 2258)
    assert nlg.read_webnlg_json(root / "lora_json" / "dev.json") == dev
    # the paper's convention applied to its own JSON: '{} : {} : {}'.format(subject, property, object)
    entries = [
        next(iter(e.values())) for e in json.loads((root / "lora_json" / "dev.json").read_text())["entries"]
    ]
    paper = [
        " | ".join(f"{t['subject']} : {t['property']} : {t['object']}" for t in e["modifiedtripleset"])
        for e in entries
        if any(lex["comment"] == "good" for lex in e["lexicalisations"])
    ]
    assert [ex.source for ex in dev] == paper

    test = load_nlg("webnlg", "test", DATA)
    assert (len(test), len(training_pairs(test))) == (1862, 4928)
    unseen = [ex for ex in test if not ex.seen]
    assert (len(unseen), len(test) - len(unseen)) == (891, 971)  # MANIFEST.md, the challenge's split
    assert {ex.category for ex in unseen} == nlg.WEBNLG_UNSEEN
    official_unseen = nlg.read_webnlg_xml([root / "xml" / "test" / "testdata_unseen_with_lex.xml"])
    assert [ex.source for ex in unseen] == [ex.source for ex in official_unseen]

    train = load_nlg("webnlg", "train", DATA)
    # 6940 entries (18102 lexicalisations) in the release; 6935 / 18025 are "good" (counted here)
    assert (len(train), len(training_pairs(train))) == (6935, 18025)
    assert {ex.category for ex in train + dev} == nlg.WEBNLG_SEEN and all(ex.seen for ex in train + dev)


@needs_data
def test_real_dart_json_xml_and_counts() -> None:
    dev = load_nlg("dart", "validation", DATA)
    assert (len(dev), len(training_pairs(dev))) == (2768, 6980)
    assert nlg.read_dart_xml(DATA / "dart" / "dart-v1.1.1-full-dev.xml") == dev
    test = load_nlg(
        "dart", "test", DATA
    )  # XML only; 12552 lexicalisations, one of them empty (kept, as released)
    assert (len(test), len(training_pairs(test))) == (5097, 12552)
    assert test[0].source == (
        "Hawaii Five-O : notes : Episode: The Flight of the Jewels | [TABLECONTEXT] : [title] : Jeff Daniels"
        " | [TABLECONTEXT] : title : Hawaii Five-O"
    )
