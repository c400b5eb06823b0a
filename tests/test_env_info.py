"""`env` of a run record: the versions of every library that can move a score, and the Java METEOR runs on."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from lora import records
from lora.records import SCORE_PACKAGES, env_info, java_version, new_record, validate_record


@pytest.fixture(autouse=True)
def fresh_java_cache() -> Iterator[None]:
    java_version.cache_clear()
    yield
    java_version.cache_clear()


def fake_java(tmp_path: Path, first_line: str) -> Path:
    """A `java` on PATH that prints `first_line` to stderr (as `java -version` does) and counts its calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "java"
    script.write_text(
        f"#!/bin/sh\necho x >> '{tmp_path / 'calls'}'\necho '{first_line}' >&2\necho 'Runtime line' >&2\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def test_env_has_the_score_moving_versions_and_java(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(records, "java_version", lambda: 'openjdk version "17.0.15" 2025-04-15')
    env = env_info("cpu")
    assert {"git", "dirty", "python", "torch", "transformers", "peft", "device", "hostname"} <= set(env)
    assert {"sacrebleu", "pycocoevalcap", "datasets", "tokenizers", "java"} <= set(env)
    assert set(SCORE_PACKAGES) <= set(env)
    for name in ("datasets", "tokenizers", "sacrebleu", "pycocoevalcap"):  # installed by `make install`
        assert env[name] == records.metadata.version(name)
    assert env["java"] == 'openjdk version "17.0.15" 2025-04-15'


def test_a_record_with_the_new_env_keys_validates() -> None:
    rec = new_record({"seed": 0}, experiment="e", model="m", task="rte", method="lora", seed=0, device="cpu")
    validate_record(json.loads(rec.to_json()))
    assert "java" in rec.env and "sacrebleu" in rec.env


def test_missing_package_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    real = records._version
    monkeypatch.setattr(records, "_version", lambda name: None if name == "sacrebleu" else real(name))
    assert env_info("cpu")["sacrebleu"] is None


def test_java_absent_is_none(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no java
    assert java_version() is None


def test_java_version_is_the_first_stderr_line_asked_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(fake_java(tmp_path, 'openjdk version "21.0.2" 2024-01-16')))
    assert java_version() == 'openjdk version "21.0.2" 2024-01-16'
    assert env_info("cpu")["java"] == 'openjdk version "21.0.2" 2024-01-16'
    assert (tmp_path / "calls").read_text().count("x") == 1  # cached for the process


def test_failing_java_is_none(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "java").write_text("#!/bin/sh\nexit 3\n")
    (bin_dir / "java").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert java_version() is None
