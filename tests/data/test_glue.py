"""lora.data.glue: GLUE tsv parsing (real files from ../shared/data/glue and tiny fixtures), errors, tokenising."""

from collections import Counter
from pathlib import Path

import datasets
import pytest

from lora.data import glue
from lora.data.glue import TASKS, load_glue, subsample, tokenize_glue, tokenizer_fingerprint

GLUE_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "glue"


def real_glue(folder: str) -> Path:
    if not (GLUE_DIR / folder).is_dir():
        pytest.skip(f"real GLUE data absent: {GLUE_DIR / folder} (see shared/data/MANIFEST.md)")
    return GLUE_DIR


def write_tsv(path: Path, rows: list[list[str]], bom: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join("\t".join(row) + "\n" for row in rows)
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")


# ------------------------------------------------------------------------------------------- task table


def test_tasks_table() -> None:
    assert set(TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "polarity"}
    assert {t: s.num_labels for t, s in TASKS.items()} == {
        "cola": 2, "sst2": 2, "mrpc": 2, "stsb": 1, "qqp": 2, "mnli": 3, "qnli": 2, "rte": 2, "polarity": 2,
    }  # fmt: skip
    assert TASKS["mnli"].eval_splits == ("validation", "validation_mismatched")
    assert TASKS["mnli"].hub_splits["validation"] == "validation_matched"
    assert TASKS["rte"].eval_splits == ("validation",)
    assert TASKS["qqp"].text_fields == ("question1", "question2")
    assert TASKS["stsb"].is_regression and not TASKS["cola"].is_regression
    assert glue.HUB_PATH == "nyu-mll/glue" and TASKS["sst2"].hub_config == "sst2"
    assert TASKS["cola"].metric == "matthews_correlation" and TASKS["polarity"].metric == "accuracy"


def test_unknown_task() -> None:
    with pytest.raises(ValueError, match="unknown GLUE task 'sst-2'; valid tasks: cola, sst2"):
        load_glue("sst-2", "/nonexistent")


# ------------------------------------------------------------------------------------- real GLUE files
# Row and label counts: shared/data/MANIFEST.md ("GLUE checks") and `cut -f2 dev.tsv | sort | uniq -c`.


def test_real_rte() -> None:
    ds = load_glue("rte", str(real_glue("RTE")))
    assert {k: len(v) for k, v in ds.items()} == {"train": 2490, "validation": 277}
    assert ds["train"].column_names == ["sentence1", "sentence2", "label", "idx"]
    assert Counter(ds["train"]["label"]) == {0: 1249, 1: 1241}  # entailment 0, not_entailment 1 (hub ids)
    assert Counter(ds["validation"]["label"]) == {0: 146, 1: 131}
    assert ds["train"][0] == {
        "sentence1": "No Weapons of Mass Destruction Found in Iraq Yet.",
        "sentence2": "Weapons of Mass Destruction Found in Iraq.",
        "label": 1,
        "idx": 0,
    }


def test_real_sst2() -> None:
    ds = load_glue("sst2", str(real_glue("SST-2")))
    assert len(ds["validation"]) == 872 and len(ds["train"]) == 67349
    assert Counter(ds["validation"]["label"]) == {0: 428, 1: 444}
    assert (
        ds["validation"][0]["sentence"] == "it 's a charming and often affecting journey . "
    )  # trailing space kept


def test_real_cola_headerless() -> None:
    ds = load_glue("cola", str(real_glue("CoLA")))
    assert len(ds["validation"]) == 1043 and len(ds["train"]) == 8551
    assert Counter(ds["validation"]["label"]) == {1: 721, 0: 322}
    assert ds["validation"][0]["sentence"] == "The sailors rode the breeze clear of the rocks."
    assert (
        ds["validation"][-1]["sentence"] == "John talked to Bill about himself."
    )  # last line has no newline


def test_real_mrpc_bom_and_quotes() -> None:
    ds = load_glue("mrpc", str(real_glue("MRPC")))
    assert len(ds["train"]) == 3668 and len(ds["validation"]) == 408
    assert Counter(ds["train"]["label"]) == {1: 2474, 0: 1194}
    row = ds["train"][0]
    assert row["sentence1"].startswith('Amrozi accused his brother , whom he called " the witness " ,')
    assert row["label"] == 1


def test_real_stsb_float_scores() -> None:
    ds = load_glue("stsb", str(real_glue("STS-B")))
    assert len(ds["validation"]) == 1500 and len(ds["train"]) == 5749
    assert ds["validation"].features["label"] == datasets.Value("float32")
    scores = ds["validation"]["label"]
    assert min(scores) == 0.0 and max(scores) == 5.0
    assert sum(scores) / len(scores) == pytest.approx(2.36391, abs=1e-5)  # awk mean of column 10
    assert ds["train"][1]["label"] == pytest.approx(3.8)


# --------------------------------------------------------------------------- fixture dirs: MNLI, QQP, QNLI

MNLI_TRAIN_HEADER = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                     "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"]  # fmt: skip
MNLI_DEV_HEADER = MNLI_TRAIN_HEADER[:-1] + ["label2", "label3", "label4", "label5", "gold_label"]


def mnli_row(i: int, premise: str, hypothesis: str, label: str, dev: bool) -> list[str]:
    return [str(i), "1", f"{i}e", "fiction", "( x )", "( y )", "(ROOT x)", "(ROOT y)", premise, hypothesis,
            label, *([label] * 4 if dev else []), label]  # fmt: skip


def make_mnli(root: Path) -> None:
    write_tsv(root / "MNLI" / "train.tsv", [MNLI_TRAIN_HEADER,
              mnli_row(0, 'He said "hi.', "He spoke.", "entailment", False),
              mnli_row(1, "A cat.", "A dog.", "contradiction", False),
              mnli_row(2, "It rains.", "It is wet.", "neutral", False)])  # fmt: skip
    write_tsv(root / "MNLI" / "dev_matched.tsv", [MNLI_DEV_HEADER, mnli_row(0, "P.", "H.", "neutral", True)])
    write_tsv(root / "MNLI" / "dev_mismatched.tsv", [MNLI_DEV_HEADER,
              mnli_row(0, "P1.", "H1.", "contradiction", True), mnli_row(1, "P2.", "H2.", "entailment", True)])  # fmt: skip


def test_mnli_fixture(tmp_path: Path) -> None:
    make_mnli(tmp_path)
    ds = load_glue("mnli", str(tmp_path))
    assert {k: len(v) for k, v in ds.items()} == {"train": 3, "validation": 1, "validation_mismatched": 2}
    assert ds["train"].column_names == ["premise", "hypothesis", "label", "idx"]
    assert ds["train"]["label"] == [0, 2, 1]  # entailment, contradiction, neutral -> hub ids
    assert ds["train"][0]["premise"] == 'He said "hi.'  # unbalanced quote read verbatim (QUOTE_NONE)
    assert ds["validation_mismatched"]["label"] == [2, 0]


def test_qqp_fixture(tmp_path: Path) -> None:
    header = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
    for name in ("train.tsv", "dev.tsv"):
        write_tsv(
            tmp_path / "QQP" / name,
            [header, ["7", "1", "2", 'Why "so?', "Why?", "1"], ["8", "3", "4", "A?", "", "0"]],
        )
    ds = load_glue("qqp", str(tmp_path))
    assert ds["validation"].column_names == ["question1", "question2", "label", "idx"]
    assert ds["validation"][:] == {
        "question1": ['Why "so?', "A?"], "question2": ["Why?", ""], "label": [1, 0], "idx": [0, 1],
    }  # fmt: skip


def test_qnli_fixture_and_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    header = ["index", "question", "sentence", "label"]
    for name in ("train.tsv", "dev.tsv"):
        write_tsv(
            tmp_path / "QNLI" / name,
            [header, ["0", "Q?", "S.", "not_entailment"], ["1", "Q2?", "S2.", "entailment"]],
        )
    monkeypatch.setenv(glue.ENV_DIR, str(tmp_path))
    ds = load_glue("qnli")  # no data_dir: $LORA_GLUE_DIR
    assert ds["train"]["label"] == [1, 0]
    assert ds["train"].features["label"].names == ["entailment", "not_entailment"]


# ------------------------------------------------------------------------------------------------ errors


def test_error_missing_data_dir(tmp_path: Path) -> None:
    with pytest.raises(
        FileNotFoundError, match=r"does not exist; set data_dir=/path/to/glue or export LORA_GLUE_DIR"
    ):
        load_glue("rte", str(tmp_path / "nope"))


def test_error_missing_task_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no MNLI/ folder in GLUE data dir .*dev_mismatched\.tsv"):
        load_glue("mnli", str(tmp_path))


def test_error_missing_file(tmp_path: Path) -> None:
    make_mnli(tmp_path)
    (tmp_path / "MNLI" / "dev_mismatched.tsv").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"MNLI/dev_mismatched\.tsv not found; GLUE task 'mnli' needs"
    ):
        load_glue("mnli", str(tmp_path))


def test_error_wrong_columns(tmp_path: Path) -> None:
    write_tsv(
        tmp_path / "RTE" / "train.tsv",
        [["index", "premise", "hypothesis", "label"], ["0", "a", "b", "entailment"]],
    )
    with pytest.raises(
        ValueError, match=r"RTE/train\.tsv: header .* lacks columns \['sentence1', 'sentence2'\]"
    ):
        load_glue("rte", str(tmp_path))


@pytest.mark.parametrize("content", ["", "index\tsentence1\tsentence2\tlabel\n"])
def test_error_empty_file(tmp_path: Path, content: str) -> None:
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "train.tsv").write_text(content)
    with pytest.raises(ValueError, match=r"RTE/train\.tsv has no data rows; it is empty or cut off"):
        load_glue("rte", str(tmp_path))


STSB_HEADER = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
               "score"]  # fmt: skip


@pytest.mark.parametrize(
    ("task", "folder", "header", "row", "bad"),
    [
        ("rte", "RTE", ["index", "sentence1", "sentence2", "label"], ["0", "a", "b", "maybe"], "'maybe'"),
        ("sst2", "SST-2", ["sentence", "label"], ["good", "2"], "'2'"),
        ("stsb", "STS-B", STSB_HEADER,
         ["0", "g", "f", "y", "0", "n", "n", "a", "b", "7.5"], r"'7\.5', expected a score in \[0, 5\]"),
    ],
)  # fmt: skip
def test_error_bad_label(
    tmp_path: Path, task: str, folder: str, header: list[str], row: list[str], bad: str
) -> None:
    write_tsv(tmp_path / folder / "train.tsv", [header, row])
    with pytest.raises(ValueError, match=rf"train\.tsv line 2: bad {task} label {bad}"):
        load_glue(task, str(tmp_path))


def test_error_short_row(tmp_path: Path) -> None:
    write_tsv(tmp_path / "CoLA" / "train.tsv", [["gj04", "1", "", "Fine."], ["gj04", "1", "Cut off."]])
    with pytest.raises(ValueError, match=r"CoLA/train\.tsv line 2: 3 tab-separated fields, expected 4"):
        load_glue("cola", str(tmp_path))


def test_error_hub_unreachable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No data_dir, no $LORA_GLUE_DIR, hub offline (empty caches): the error says how to point at local data."""
    monkeypatch.delenv(glue.ENV_DIR, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_CACHE", tmp_path / "hub", raising=False)
    with pytest.raises(FileNotFoundError) as err:
        load_glue("rte")
    message = str(err.value)
    assert "\n" not in message
    assert "data_dir=/path/to/glue (Hydra override)" in message
    assert "export LORA_GLUE_DIR=/path/to/glue" in message
    assert "/path/to/glue/RTE/train.tsv, /path/to/glue/RTE/dev.tsv" in message


def test_error_hub_connection_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.delenv(glue.ENV_DIR, raising=False)
    monkeypatch.setattr(glue, "load_dataset", unreachable)
    with pytest.raises(
        FileNotFoundError, match=r"nyu-mll/glue is unreachable \(Couldn't reach .*MNLI/dev_matched"
    ):
        load_glue("mnli", None)


# -------------------------------------------------------------------------------------------- subsample


def test_subsample() -> None:
    ds = datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"x": list(range(100))}),
        validation=datasets.Dataset.from_dict({"x": [1, 2]}),
    )
    small = subsample(ds, 10, seed=3)
    assert len(small["train"]) == 10 and len(small["validation"]) == 2
    assert small["train"]["x"] == sorted(small["train"]["x"])  # rows keep their order
    assert subsample(ds, 10, seed=3)["train"]["x"] == small["train"]["x"]
    assert subsample(ds, 10, seed=4)["train"]["x"] != small["train"]["x"]
    with pytest.raises(ValueError, match="subsample size must be positive, got 0"):
        subsample(ds, 0)


# ------------------------------------------------------------------------------------------- tokenising


def tiny_rte(tmp_path: Path) -> datasets.DatasetDict:
    header = ["index", "sentence1", "sentence2", "label"]
    rows = [["0", "a man is playing a flute .", "the movie was charming .", "entailment"],
            ["1", "no weapons of mass destruction found in iraq yet .", "unflinchingly bleak", "not_entailment"]]  # fmt: skip
    for name in ("train.tsv", "dev.tsv"):
        write_tsv(tmp_path / "glue" / "RTE" / name, [header, *rows])
    return load_glue("rte", str(tmp_path / "glue"))


def test_tokenize_columns_and_truncation(tmp_path: Path, lora_cache: Path, tiny_tokenizer) -> None:
    out = tokenize_glue(tiny_rte(tmp_path), tiny_tokenizer, "rte", max_length=8)
    train = out["train"]
    assert train.column_names == ["input_ids", "token_type_ids", "attention_mask", "labels"]
    assert train["labels"] == [0, 1] and train.features["labels"] == datasets.Value("int64")
    lengths = [len(ids) for ids in train["input_ids"]]
    assert lengths == [8, 8]  # both pairs are longer than 8 tokens: truncated, not padded
    first = tiny_tokenizer.convert_ids_to_tokens(train["input_ids"][0])
    assert first[0] == "[CLS]" and first.count("[SEP]") == 2 and train["token_type_ids"][0][-1] == 1
    short = tokenize_glue(tiny_rte(tmp_path), tiny_tokenizer, "rte", max_length=64)["train"]
    assert [len(ids) for ids in short["input_ids"]] == [15, 15]  # 7 + 5 words + 3 specials; 10 + 2 + 3


def test_tokenize_stsb_labels_float(lora_cache: Path, tiny_tokenizer) -> None:
    features = TASKS["stsb"].features()
    ds = datasets.DatasetDict(
        train=datasets.Dataset.from_dict(
            {"sentence1": ["a man"], "sentence2": ["a flute"], "label": [3.8], "idx": [0]}, features=features
        )
    )
    out = tokenize_glue(ds, tiny_tokenizer, "stsb", max_length=16)
    assert out["train"].features["labels"] == datasets.Value("float32")
    assert out["train"]["labels"] == [pytest.approx(3.8)]


def test_tokenize_cache_hit(
    tmp_path: Path, lora_cache: Path, tiny_tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = tiny_rte(tmp_path)
    calls = []
    tokenizer_call = type(tiny_tokenizer).__call__

    def counting_call(self, *args, **kwargs):
        calls.append(1)
        return tokenizer_call(self, *args, **kwargs)

    monkeypatch.setattr(type(tiny_tokenizer), "__call__", counting_call)
    first = tokenize_glue(ds, tiny_tokenizer, "rte", max_length=8)
    assert len(calls) == 2  # one batch per split
    cached = list((lora_cache / "tokenized").iterdir())
    assert len(cached) == 1 and cached[0].name.startswith("rte-len8-")
    second = tokenize_glue(tiny_rte(tmp_path), tiny_tokenizer, "rte", max_length=8)  # same data, reloaded
    assert len(calls) == 2  # loaded from disk, not re-tokenised
    assert second["train"]["input_ids"] == first["train"]["input_ids"]
    tokenize_glue(subsample(ds, 1), tiny_tokenizer, "rte", max_length=8)  # other data: a new cache entry
    tokenize_glue(ds, tiny_tokenizer, "rte", max_length=9)  # other length: a new cache entry
    assert len(list((lora_cache / "tokenized").iterdir())) == 3


def test_tokenizer_fingerprint(tiny_tokenizer, make_tiny_tokenizer) -> None:
    before = tokenizer_fingerprint(tiny_tokenizer)
    tiny_tokenizer(["a man"], truncation=True, max_length=3)  # changes the backend's truncation state
    assert tokenizer_fingerprint(tiny_tokenizer) == before
    other = make_tiny_tokenizer(["a completely different vocabulary", "of words"])
    assert type(other) is type(tiny_tokenizer) and tokenizer_fingerprint(other) != before
    assert tokenizer_fingerprint(make_tiny_tokenizer(["the same corpus"])) == tokenizer_fingerprint(
        make_tiny_tokenizer(["the same corpus"])
    )
