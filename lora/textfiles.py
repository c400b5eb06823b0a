"""Reading the text files users hand us (data, references, system outputs): one clear line when they are missing,
empty or not UTF-8, naming the file and the line."""

from __future__ import annotations

from pathlib import Path

from lora.errors import ConfigError, InputNotFound


def read_utf8(path: str | Path, allow_empty: bool = True) -> str:
    """The text of a UTF-8 file (a leading BOM dropped). FileNotFoundError if it is missing; ValueError naming the
    file and line if it is not UTF-8, or if it is empty and `allow_empty` is false."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFound(f"no such file: {path}")
    data = path.read_bytes()
    if not data and not allow_empty:
        raise ConfigError(f"{path} is empty")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}: line {line} is not valid UTF-8 ({err.reason} at byte {err.start})"
        ) from None


def read_lines(path: str | Path, allow_empty: bool = False) -> list[str]:
    """Lines of a UTF-8 text file, split on "\\n" only (not str.splitlines: only \\n ends a line, as the official
    scorers read); a final newline does not start another line."""
    lines = read_utf8(path, allow_empty).split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines
