"""Data-to-text data for E2E, WebNLG 2017 and DART (LoRA, Hu et al. 2021, Sec. 5.4; Tables 3, 13, 14).

Inputs are linearised exactly as the paper's code does (microsoft/LoRA `examples/NLG`, which reuses the data
of Li & Liang 2021, prefix-tuning):

* E2E (`data/e2e/{train,valid,test}.txt`): ``name : The Vaults | Type : pub | price : more than £ 30``.
  Keys renamed (eatType -> Type, priceRange -> price, familyFriendly -> family friendly), values and
  references word-tokenised (`e2e_word_tokenize`). Equal to `valid.txt`/`test.txt` line for line.
* WebNLG 2017 (`src/format_converting_webnlg.py`): the *modified* triples, verbatim (underscores kept),
  ``Aarhus : leaderName : Jacob_Bundsgaard | ...``; only lexicalisations with comment="good".
* DART (`src/format_converting_dart.py`): ``Mars Hill College : joined : 1973 | ...``, relation lower-cased.

One causal-LM example (`src/gpt2_encode.py --add_bos --add_eos`, `src/data_utils.py`) is
``tokens(source) <|endoftext|> tokens(" " + target) <|endoftext|>``: GPT-2's <|endoftext|> (id 50256)
separates source and target (the "||" of the .txt files is only a field delimiter, stripped by
`format_converting_e2e.py`), and the loss covers the target tokens and the final <|endoftext|> only.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from lora.errors import ConfigError, InputNotFound
from lora.textfiles import read_utf8

TASKS = ("e2e", "webnlg", "dart")
SPLITS = ("train", "validation", "test")
ENV_VAR = "LORA_NLG_DIR"
IGNORE_INDEX = -100

# WebNLG 2017 test: the 10 training categories ("seen", the list in format_converting_webnlg.py) and the 5
# categories found only in the test set (the challenge's testdata_unseen_with_lex.xml: 891 of 1862 entries).
WEBNLG_SEEN = frozenset(
    {"Airport", "Astronaut", "Building", "City", "ComicsCharacter"}
    | {"Food", "Monument", "SportsTeam", "University", "WrittenWork"}
)
WEBNLG_UNSEEN = frozenset({"Artist", "Athlete", "CelestialBody", "MeanOfTransportation", "Politician"})

# E2E attribute names as written in the paper's data files (counted over data/e2e/valid.txt).
E2E_KEYS = {"eatType": "Type", "priceRange": "price", "familyFriendly": "family friendly"}

_SUBDIR = {"e2e": "e2e", "webnlg": "webnlg_challenge_2017", "dart": "dart"}
_RELEASE_SPLIT = {"train": "train", "validation": "dev", "test": "test"}  # split names in WebNLG/DART files
_WEBNLG_TEST = ["xml/test/testdata_with_lex.xml", "test/testdata_with_lex.xml", "testdata_with_lex.xml"]
_FILES = {  # per task and split: glob patterns tried in order, relative to the task folder
    "e2e": {"train": ["trainset.csv"], "validation": ["devset.csv"], "test": ["testset_w_refs.csv"]},
    "webnlg": {  # official XML first, then the LoRA repository's JSON
        s: (_WEBNLG_TEST if s == "test" else [f"xml/{n}/*triples/*.xml", f"{n}/*triples/*.xml"])
        + [f"lora_json/{n}.json", f"{n}.json"]
        for s, n in _RELEASE_SPLIT.items()
    },
    "dart": {
        s: [f"dart-v1.1.1-full-{n}.json", f"dart-v1.1.1-full-{n}.xml"] for s, n in _RELEASE_SPLIT.items()
    },
}
_LAYOUT = {
    "e2e": "e2e/{trainset.csv,devset.csv,testset_w_refs.csv} (columns mr,ref)",
    "webnlg": "webnlg_challenge_2017/xml/{train,dev}/<n>triples/*.xml + xml/test/testdata_with_lex.xml",
    "dart": "dart/dart-v1.1.1-full-{train,dev,test}.{json,xml}",
}
# Hub fallback (legacy ids: e2e_nlg, web_nlg, dart). The original E2E, not GEM/e2e_nlg (the cleaned set).
HUB = {
    "e2e": ("tuetschek/e2e_nlg", None),
    "webnlg": ("webnlg-challenge/web_nlg", "webnlg_challenge_2017"),
    "dart": ("Yale-LILY/dart", None),
}


@dataclass(frozen=True)
class NLGExample:
    """One input with all its references (the unit of multi-reference scoring)."""

    source: str  # linearised input
    references: tuple[str, ...]
    category: str | None = None  # WebNLG DBpedia category
    seen: bool | None = None  # WebNLG: category among the 10 training categories


# ---------------------------------------------------------------------------------------------------------
# Linearisation
# ---------------------------------------------------------------------------------------------------------

_E2E_RULES = [  # the word tokenisation of the paper's data/e2e/valid.txt, rule by rule
    (re.compile(r"""([,!?;:()"£$%&/])"""), r" \1 "),  # punctuation and currency: own tokens
    (re.compile(r"(\.+)(?=\s|$)"), r" \1 "),  # final periods ("rating.." -> "rating ..")
    (re.compile(r"\.{2,}"), r" \g<0> "),  # ellipses inside words ("ratings...but")
    (re.compile(r"(?<=\w)-(?=\w)"), " - "),  # "family-friendly", "20-25"
    (re.compile(r"(?<!\w)'|'(?!\w)"), " ' "),  # quotes: "'Aromi'" -> "' Aromi '"
    (re.compile(r"(?<=\w)'(?=\w)"), " '"),  # clitics: "there's" -> "there 's", "isn't" -> "isn 't"
]


def e2e_word_tokenize(text: str) -> str:
    """Word-tokenise E2E text as in the paper's data/e2e files (Li & Liang's copy of E2E).

    Reproduces `valid.txt` for all 547 dev MRs and 4671/4672 dev references (the exception keeps "5." in
    "out of 5. in the city"). `test.txt` was made by another tokeniser ("is n't" instead of "isn 't"):
    all 630 test MRs match, 4567/4693 test references.
    """
    for pattern, replacement in _E2E_RULES:
        text = pattern.sub(replacement, text)
    return " ".join(text.split())


_MR = re.compile(r"\s*[^\[\],]+\[[^\]]*\]\s*(,\s*[^\[\],]+\[[^\]]*\]\s*)*")
_MR_SLOT = re.compile(r"([^\[\],]+)\[([^\]]*)\]")


def linearize_e2e_mr(mr: str, tokenize: bool = True) -> str:
    """`name[The Vaults], priceRange[£20-25]` -> `name : The Vaults | price : £ 20 - 25` (paper's format)."""
    if not _MR.fullmatch(mr):
        raise ConfigError(f"not an E2E meaning representation (expected 'key[value], ...'): {mr!r}")
    slots = [(E2E_KEYS.get(k.strip(), k.strip()), v) for k, v in _MR_SLOT.findall(mr)]
    return " | ".join(f"{k} : {e2e_word_tokenize(v) if tokenize else v}" for k, v in slots)


def linearize_triples(triples: Iterable[Sequence[str]], lowercase_relation: bool = False) -> str:
    """[(subj, rel, obj), ...] -> `subj : rel : obj | subj : rel : obj` (WebNLG; DART lower-cases rel)."""
    return " | ".join(f"{s} : {r.lower() if lowercase_relation else r} : {o}" for s, r, o in triples)


def _split_triple(text: str, where: str) -> tuple[str, str, str]:
    parts = text.split(" | ")  # not stripped: DART subjects keep their spaces, as in its JSON release
    if len(parts) != 3:
        raise ConfigError(f"{where}: triple {text!r} does not split into 'subject | property | object'")
    return parts[0], parts[1], parts[2]


def _keep(comment: str | None, text: str | None) -> bool:
    """WebNLG keeps comment="good" lexicalisations (format_converting_webnlg.py); empty texts are dropped."""
    return comment in (None, "", "good") and bool(text and text.strip())


def _webnlg_example(triples: list[tuple[str, str, str]], refs: list[str], category: str) -> NLGExample:
    return NLGExample(linearize_triples(triples), tuple(refs), category, category in WEBNLG_SEEN)


# ---------------------------------------------------------------------------------------------------------
# Readers, one per released format
# ---------------------------------------------------------------------------------------------------------


def _e2e_examples(rows: Iterable[tuple[str, str]], tokenize: bool) -> list[NLGExample]:
    groups: dict[str, list[str]] = {}  # MR -> references, in order of first appearance
    for mr, ref in rows:
        groups.setdefault(mr, []).append(e2e_word_tokenize(ref) if tokenize else ref)
    return [NLGExample(linearize_e2e_mr(mr, tokenize), tuple(refs)) for mr, refs in groups.items()]


def read_e2e_csv(path: str | Path, tokenize: bool = True) -> list[NLGExample]:
    """Official E2E csv (`mr`,`ref`; one row per reference) -> one example per distinct MR."""
    with io.StringIO(read_utf8(path), newline="") as f:
        reader = csv.DictReader(f)
        if not {"mr", "ref"} <= set(reader.fieldnames or []):
            raise ConfigError(
                f"{path}: columns {reader.fieldnames}, expected 'mr' and 'ref' (E2E release csv)"
            )
        return _e2e_examples(((row["mr"], row["ref"]) for row in reader), tokenize)


def read_e2e_lora_txt(path: str | Path) -> list[NLGExample]:
    """The paper's own E2E files (microsoft/LoRA examples/NLG/data/e2e/{train,valid,test}.txt): one
    `source||reference` line per reference, grouped by source in order of first appearance, as
    format_converting_e2e.py and gpt2_decode.py read them (the source as written, the reference stripped)."""
    groups: dict[str, list[str]] = {}
    text = read_utf8(path)
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        source, sep, ref = line.strip().partition("||")
        if not sep:
            raise ConfigError(f"{path}:{n}: no '||' between source and reference")
        groups.setdefault(source, []).append(ref.strip())
    return [NLGExample(src, tuple(refs)) for src, refs in groups.items()]


def read_webnlg_xml(paths: Iterable[str | Path]) -> list[NLGExample]:
    """WebNLG 2017 XML benchmark files -> one example per <entry> that has a "good" lexicalisation."""
    examples = []
    for path in paths:
        for entry in ET.parse(path).getroot().iter("entry"):
            mtriples = entry.find("modifiedtripleset")
            triples = [_split_triple(m.text or "", str(path)) for m in mtriples.iter("mtriple")]
            refs = [x.text for x in entry.findall("lex") if _keep(x.get("comment"), x.text)]
            if refs:
                examples.append(_webnlg_example(triples, refs, entry.get("category")))
    return examples


def read_webnlg_json(path: str | Path) -> list[NLGExample]:
    """The LoRA repository's JSON form of WebNLG 2017 (`{"entries": [{"1": {...}}, ...]}`)."""
    examples = []
    for item in json.loads(read_utf8(path))["entries"]:
        (entry,) = item.values()
        triples = [(t["subject"], t["property"], t["object"]) for t in entry["modifiedtripleset"]]
        refs = [x["lex"] for x in entry["lexicalisations"] if _keep(x.get("comment"), x["lex"])]
        if refs:
            examples.append(_webnlg_example(triples, refs, entry["category"]))
    return examples


def _dart_example(triples: Iterable[Sequence[str]], texts: Iterable[str | None]) -> NLGExample:
    """Every annotation is a reference, an empty one too (the released format_converting_dart.py writes one line
    per annotation whatever its text; test entry Id116 has an empty one, which the released scorer keeps)."""
    return NLGExample(linearize_triples(triples, lowercase_relation=True), tuple(t or "" for t in texts))


def read_dart_json(path: str | Path) -> list[NLGExample]:
    """DART v1.1.1 JSON (`[{"tripleset": [[s, r, o], ...], "annotations": [{"text": ...}]}]`)."""
    data = json.loads(read_utf8(path))
    return [_dart_example(e["tripleset"], (a.get("text") for a in e["annotations"])) for e in data]


def read_dart_xml(path: str | Path) -> list[NLGExample]:
    """DART v1.1.1 XML (WebNLG-style <entry> with <mtriple> and <lex>); category "MISC" is not kept."""
    return [
        _dart_example(
            [_split_triple(m.text or "", str(path)) for m in entry.iter("mtriple")],
            (x.text or "" for x in entry.findall("lex")),
        )
        for entry in ET.parse(path).getroot().iter("entry")
    ]


# ---------------------------------------------------------------------------------------------------------
# Loading: local files (data_dir, else $LORA_NLG_DIR), else the Hugging Face hub
# ---------------------------------------------------------------------------------------------------------


def _find_files(task: str, split: str, folder: Path) -> list[Path]:
    patterns = _FILES[task][split]
    for pattern in patterns:
        if files := sorted(folder.glob(pattern)):
            return files
    present = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    shown = ", ".join(present[:15]) + (f", ... ({len(present)} files)" if len(present) > 15 else "")
    raise InputNotFound(
        f"no {task} {split} data in {folder}: expected one of {patterns}; found: {shown or 'nothing'}"
    )


# The paper's own E2E files, per split (microsoft/LoRA examples/NLG/data/e2e/; ../shared/data has valid and test)
E2E_PAPER_FILES = {"train": "lora_format/train.txt", "validation": "lora_format/valid.txt",
                   "test": "lora_format/test.txt"}  # fmt: skip


def _read_local(
    task: str, split: str, data_dir: Path, tokenize_e2e: bool, references: str = "paper"
) -> list[NLGExample]:
    if not data_dir.is_dir():
        raise InputNotFound(f"data_dir {data_dir} does not exist; expected a folder with {_LAYOUT[task]}")
    folder = data_dir / _SUBDIR[task] if (data_dir / _SUBDIR[task]).is_dir() else data_dir
    if task == "e2e" and references == "paper" and (folder / E2E_PAPER_FILES[split]).is_file():
        return read_e2e_lora_txt(folder / E2E_PAPER_FILES[split])
    files = _find_files(task, split, folder)
    if task == "e2e":
        return read_e2e_csv(files[0], tokenize_e2e)
    if task == "webnlg":
        return read_webnlg_json(files[0]) if files[0].suffix == ".json" else read_webnlg_xml(files)
    return read_dart_json(files[0]) if files[0].suffix == ".json" else read_dart_xml(files[0])


def data_source(
    task: str, data_dir: str | Path | None = None, references: str = "paper"
) -> tuple[Path, list[Path]] | str:
    """What `load_nlg` reads for every split of `task`: (task folder, files) for a local copy, else `hub:<name>`. For the
    run's data fingerprint (lora.data.fingerprint). A split with no file is left out (loading it fails clearly)."""
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; expected one of {TASKS}")
    data_dir = data_dir or os.environ.get(ENV_VAR)
    if not data_dir:
        return f"hub:{HUB[task][0]}"
    root = Path(data_dir)
    folder = root / _SUBDIR[task] if (root / _SUBDIR[task]).is_dir() else root
    files: list[Path] = []
    for split in SPLITS:
        if task == "e2e" and references == "paper" and (folder / E2E_PAPER_FILES[split]).is_file():
            files.append(folder / E2E_PAPER_FILES[split])
            continue
        for pattern in _FILES[task][split]:
            if found := sorted(folder.glob(pattern)):
                files += found
                break
    return folder, files


def _read_hub(task: str, split: str, tokenize_e2e: bool) -> list[NLGExample]:
    name, config = HUB[task]
    hub_split = _RELEASE_SPLIT[split] if task == "webnlg" else split
    try:
        from datasets import load_dataset

        rows: Any = load_dataset(name, config, split=hub_split)
    except Exception as err:  # offline, unknown id, script-based repo, ...: all end the same way
        raise InputNotFound(
            f"{task}: no data_dir given, ${ENV_VAR} is unset, and hub dataset {name!r} did not load "
            f"({type(err).__name__}); pass data_dir= or set {ENV_VAR} to a folder holding {_LAYOUT[task]}"
        ) from err
    if task == "e2e":
        return _e2e_examples(
            zip(rows["meaning_representation"], rows["human_reference"], strict=True), tokenize_e2e
        )
    if task == "dart":
        return [_dart_example(r["tripleset"], r["annotations"]["text"]) for r in rows]
    examples = []
    for r in rows:  # the hub's test split also holds testdata_no_lex etc.; keep the with-lex set
        if split == "test" and r["test_category"] != "testdata_with_lex":
            continue
        triples = [_split_triple(t, name) for t in r["modified_triple_sets"]["mtriple_set"][0]]
        refs = [t for c, t in zip(r["lex"]["comment"], r["lex"]["text"], strict=True) if _keep(c, t)]
        if refs:
            examples.append(_webnlg_example(triples, refs, r["category"]))
    return examples


def load_nlg(
    task: str,
    split: str,
    data_dir: str | Path | None = None,
    *,
    tokenize_e2e: bool = True,
    references: str = "paper",
) -> list[NLGExample]:
    """Examples of `task` ("e2e" | "webnlg" | "dart") and `split` ("train" | "validation" | "test").

    One example per E2E meaning representation (dev 547, test 630), per WebNLG entry with a "good"
    lexicalisation (dev 871 of 872, test 1862) and per DART tripleset (dev 2768). `data_dir` may be the
    folder holding `e2e/`, `webnlg_challenge_2017/`, `dart/` (as ../shared/data) or one task's folder.
    `tokenize_e2e=False` keeps the E2E release text instead of the paper's word tokenisation.
    E2E with `references="paper"` reads the paper's own files (`e2e/lora_format/{train,valid,test}.txt`) where they
    exist: the paper scored against those references, and 126 of the 4,693 test references differ from any
    re-tokenisation of the official csv; `references="official"` always reads the csv.
    """
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; expected one of {TASKS}")
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; expected one of {SPLITS}")
    data_dir = data_dir or os.environ.get(ENV_VAR)
    if data_dir:
        return _read_local(task, split, Path(data_dir), tokenize_e2e, references)
    return _read_hub(task, split, tokenize_e2e)


def merge_by_source(examples: Iterable[NLGExample]) -> list[NLGExample]:
    """One example per distinct source, in order of first occurrence, with the references of every entry that
    shares it (the released gpt2_decode.py keys its references by source: DART's 5,097 test entries are 4,159
    inputs; WebNLG's 1,862 are all distinct). Category fields are those of the first occurrence."""
    merged: dict[str, NLGExample] = {}
    for ex in examples:
        first = merged.get(ex.source)
        merged[ex.source] = (
            ex if first is None else replace(first, references=first.references + ex.references)
        )
    return list(merged.values())


def training_pairs(examples: Iterable[NLGExample]) -> list[tuple[str, str]]:
    """Flat (source, target) pairs, one per reference: the paper's training files."""
    return [(ex.source, ref) for ex in examples for ref in ex.references]


# ---------------------------------------------------------------------------------------------------------
# Causal-LM features (src/gpt2_encode.py + FT_Dataset in src/data_utils.py of microsoft/LoRA)
# ---------------------------------------------------------------------------------------------------------


def eos_id(tokenizer: PreTrainedTokenizerBase) -> int:
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"{type(tokenizer).__name__} has no eos token; set tokenizer.eos_token first")
    return tokenizer.eos_token_id


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The tokenizer's pad id, else its eos id (GPT-2 has no pad token)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id(tokenizer)


def build_prompt(
    source: str, tokenizer: PreTrainedTokenizerBase, max_length: int | None = None
) -> dict[str, list[int]]:
    """Generation prompt `tokens(source) <eos>`; over `max_length` the head is dropped, as in the paper
    (`gpt2_beam.py` keeps the last seq_len - eval_len prompt tokens).

    Returns {"input_ids": [L], "attention_mask": [L]} with L <= max_length.
    """
    ids = tokenizer.encode(source, add_special_tokens=False) + [eos_id(tokenizer)]
    if max_length is not None:
        ids = ids[-max_length:]
    return {"input_ids": ids, "attention_mask": [1] * len(ids)}


def build_lm_features(
    source: str, target: str, tokenizer: PreTrainedTokenizerBase, max_length: int = 512
) -> dict[str, list[int]]:
    """One training example `tokens(source) <eos> tokens(" " + target) <eos>`, cut to `max_length`.

    Returns {"input_ids", "attention_mask", "labels"}, each a list of L <= max_length ints; labels are
    IGNORE_INDEX (-100) on the source and the separator, the input ids on the target and final eos
    (unshifted: Hugging Face causal LMs shift them). Like the paper (`gpt2_ft.py --seq_len 512`), a
    too-long sequence loses its tail.
    """
    prompt = build_prompt(source, tokenizer)["input_ids"]
    completion = tokenizer.encode(" " + target, add_special_tokens=False) + [eos_id(tokenizer)]
    if len(prompt) >= max_length:
        raise ConfigError(
            f"source + separator is {len(prompt)} tokens: no room for a target in {max_length=}"
        )
    input_ids = (prompt + completion)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt) + completion)[:max_length]
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}


def _pad(rows: Sequence[Sequence[int]], value: int, left: bool) -> torch.Tensor:
    width = max(len(r) for r in rows)
    padded = [
        [value] * (width - len(r)) + list(r) if left else list(r) + [value] * (width - len(r)) for r in rows
    ]
    return torch.tensor(padded, dtype=torch.long)


@dataclass
class LMCollator:
    """Right-pads `build_lm_features` outputs to the batch's longest: three [B, T] long tensors."""

    pad_token_id: int

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase) -> LMCollator:
        return cls(pad_id(tokenizer))

    def __call__(self, features: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        return {
            "input_ids": _pad([f["input_ids"] for f in features], self.pad_token_id, left=False),
            "attention_mask": _pad([f["attention_mask"] for f in features], 0, left=False),
            "labels": _pad([f["labels"] for f in features], IGNORE_INDEX, left=False),
        }


@dataclass
class GenerationCollator:
    """Left-pads `build_prompt` outputs, so every row ends at its separator: two [B, T] long tensors."""

    pad_token_id: int

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase) -> GenerationCollator:
        return cls(pad_id(tokenizer))

    def __call__(self, features: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        return {
            "input_ids": _pad([f["input_ids"] for f in features], self.pad_token_id, left=True),
            "attention_mask": _pad([f["attention_mask"] for f in features], 0, left=True),
        }
