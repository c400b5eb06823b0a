"""The identity of the data a run reads, so that a run on other data is another run (its config hash differs).

`data_fingerprint(cfg)` lists the files the task's loader reads (`lora.data.glue.data_source`,
`lora.data.nlg.data_source`) and gives each one's size and sha256, keyed by its path relative to the task's
folder: moving or renaming the folder keeps the fingerprint, changing a byte changes it. A hub dataset is
identified by its name (the hub's revision is not known before loading), the built-in polarity csv by its pinned
sha256.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any


@lru_cache(maxsize=256)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, cached per (path, size, mtime) within a process (a sweep reads the same files often)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_fingerprint(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:sha256:{_file_digest(str(path.resolve()), st.st_size, st.st_mtime_ns)}"


def fingerprint(source: tuple[Path, list[Path]] | str) -> dict[str, str]:
    """{relative path: "size:sha256:hex"} of local files, or {"source": name} for a hub / built-in dataset."""
    if isinstance(source, str):
        return {"source": source}
    root, files = source
    return {p.relative_to(root).as_posix(): file_fingerprint(p) for p in files if p.is_file()}


def data_fingerprint(cfg: Any) -> dict[str, str]:
    """The fingerprint of the data of run config `cfg` (a `lora.config.Config`)."""
    if cfg.task.kind == "nlg":
        from lora.data import nlg

        return fingerprint(nlg.data_source(cfg.task.name, cfg.data_dir, cfg.task.references))
    from lora.data import glue

    return fingerprint(glue.data_source(cfg.task.name, cfg.data_dir))
