"""Run records: one JSON file per training run, the only input of the result tables (`lora.tables`).

A record holds the resolved config, what was trained (`params`, `targets`), what it cost (`memory`,
`time`), the metrics of every evaluated epoch and of the best epoch (the paper reports the best epoch of each
run, median over seeds; Appendix D.1), and where it ran (`env`). Schema version 1:

    {"schema": 1, "status": "running|complete|diverged|oom|failed", "reason": str|null,
     "config": {...}, "config_hash": sha256 hex, "experiment": str, "model": str, "task": str,
     "method": str, "seed": int,
     "params": {"trainable", "total", "head", "adapter_bytes"}  (ints, as `lora.params.ParamCount`:
         trainable excludes the task head, as the paper counts),
     "memory": {"peak_bytes": int, "kind": "cuda_allocated|cpu_rss"},
     "time": {"train_s", "eval_s", "samples_per_s"}  (floats),
     "epochs": [{"epoch", "step", "metrics": {...}, "train_loss"}], "best": {"epoch", "metrics": {...}},
     "last": {"epoch", "metrics": {...}} (the final epoch; NLG: with the scores of decoding it),
     "effective": {"batch": {...}, "dropout": {...}, "optimizer": {...}, "decode": {...}} (what the run used),
     "targets": [wrapped module paths],
     "env": {"git", "dirty", "python", "torch", "transformers", "peft", "device", "hostname"},
     "started": iso8601, "finished": iso8601|null}

`best` is the best epoch (GLUE: highest primary metric; NLG: lowest plain validation loss, with the scores of
decoding that checkpoint). `params`, `memory`, `time`, `best`, `last` and `effective` may be null while a run is `running` or when it ended badly; a
`complete` record has them all, and a `diverged|oom|failed` record has a `reason`. Metric values are
fractions on the official scales (BLEU 0.704, not 70.4), or null for a non-finite value. Files are written
atomically, so a crash never leaves a half-written record; a sweep calls `find_complete(dir,
config_hash(cfg))` to skip finished runs.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, TypedDict

from lora.errors import ConfigError, InputNotFound

SCHEMA_VERSION = 1
STATUSES: tuple[str, ...] = ("running", "complete", "diverged", "oom", "failed")
FAILED: tuple[str, ...] = ("diverged", "oom", "failed")
MEMORY_KINDS: tuple[str, ...] = ("cuda_allocated", "cpu_rss")

# Metric keys (fractions on the official scales). WebNLG reports every NLG metric on the seen and unseen
# categories too, as `<metric>_seen` / `<metric>_unseen`; the bare key is "all categories".
GLUE_METRICS: tuple[str, ...] = (
    "accuracy", "f1", "matthews_correlation", "pearson", "spearmanr", "accuracy_mm",
)  # fmt: skip
NLG_METRICS: tuple[str, ...] = ("bleu", "nist", "meteor", "rouge_l", "cider", "ter")
SUBSETS: tuple[str, ...] = ("", "_seen", "_unseen")
METRIC_KEYS: frozenset[str] = frozenset(
    (*GLUE_METRICS, "eval_loss", "eval_loss_smoothed", *(m + s for m in NLG_METRICS for s in SUBSETS))
)

# The metric that picks the best epoch and fills the tables (paper Tables 2, 3, 13, 14).
PRIMARY_METRIC: dict[str, str] = {
    "mnli": "accuracy", "sst2": "accuracy", "mrpc": "accuracy", "cola": "matthews_correlation",
    "qnli": "accuracy", "qqp": "accuracy", "rte": "accuracy", "stsb": "pearson",
    "e2e": "bleu", "dart": "bleu", "webnlg": "bleu", "wikisql": "accuracy",
}  # fmt: skip

# Config keys that do not change a run's result: left out of `config_hash`, at any depth of the config.
IGNORED_KEYS: frozenset[str] = frozenset({
    "output_dir", "results_dir", "runs_dir", "data_dir", "cache_dir", "logger", "wandb", "hydra",
    "logging_steps", "progress", "save_adapter", "force",
})  # fmt: skip

_ORDER: tuple[str, ...] = (
    "schema", "status", "reason", "config", "config_hash", "experiment", "model", "task", "method", "seed",
    "params", "memory", "time", "epochs", "best", "last", "effective", "targets", "env", "started", "finished",
)  # fmt: skip
_ENV_KEYS: tuple[str, ...] = ("git", "dirty", "python", "torch", "transformers", "peft", "device", "hostname")


class Params(TypedDict):
    trainable: int
    total: int
    head: int
    adapter_bytes: int


class Memory(TypedDict):
    peak_bytes: int
    kind: str


class Timing(TypedDict):
    train_s: float
    eval_s: float
    samples_per_s: float


class Epoch(TypedDict):
    epoch: int
    step: int
    metrics: dict[str, float | None]
    train_loss: float | None


class Best(TypedDict):
    epoch: int
    metrics: dict[str, float | None]


@dataclass
class RunRecord:
    """One run; fields mirror the JSON schema (module docstring). `source` is the file it was loaded from (not
    serialised)."""

    config: dict[str, Any]
    config_hash: str
    experiment: str
    model: str
    task: str
    method: str
    seed: int
    env: dict[str, Any]
    started: str
    status: str = "running"
    reason: str | None = None
    params: Params | None = None
    memory: Memory | None = None
    time: Timing | None = None
    epochs: list[Epoch] = field(default_factory=list)
    best: Best | None = None
    last: Best | None = None
    effective: dict[str, Any] | None = None
    targets: list[str] = field(default_factory=list)
    finished: str | None = None
    schema: int = SCHEMA_VERSION
    source: Path | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object (schema key first, non-finite floats as null)."""
        return _finite({k: getattr(self, k) for k in _ORDER})

    def to_json(self) -> str:
        """Standard JSON (no NaN/Infinity), 2-space indent, one trailing newline."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False, default=str) + "\n"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: Path | None = None) -> RunRecord:
        """Validate `d` (`validate_record`) and build the record."""
        validate_record(d)
        return cls(**dict(d), source=source)

    @classmethod
    def from_json(cls, text: str, source: Path | None = None) -> RunRecord:
        return cls.from_dict(json.loads(text), source=source)

    def add_epoch(
        self, epoch: int, step: int, metrics: Mapping[str, float], train_loss: float | None
    ) -> None:
        """Append one evaluated epoch (metric values as fractions)."""
        self.epochs.append(
            {"epoch": epoch, "step": step, "metrics": dict(metrics), "train_loss": _num_or_none(train_loss)}
        )

    def finish(self, status: str, reason: str | None = None) -> None:
        """Close the record: set `status`, `reason` and the `finished` time."""
        if status not in STATUSES or status == "running":
            raise ConfigError(f"finish() needs a final status, one of {STATUSES[1:]}; got {status!r}")
        self.status, self.reason, self.finished = status, reason, now()


def new_record(
    config: Mapping[str, Any],
    *,
    experiment: str,
    model: str,
    task: str,
    method: str,
    seed: int,
    device: Any = None,
) -> RunRecord:
    """A `running` record for a run about to start: hashes `config` (pass a plain dict, e.g.
    `OmegaConf.to_container(cfg, resolve=True)`), stamps the start time and `env_info(device)`."""
    cfg = json.loads(json.dumps(_finite(config), default=str))  # a plain, JSON-able copy (DictConfig too)
    return RunRecord(
        config=cfg, config_hash=config_hash(cfg), experiment=experiment, model=model, task=task,
        method=method, seed=seed, env=env_info(device), started=now(),
    )  # fmt: skip


def best_epoch(epochs: list[Epoch], metric: str, mode: str = "max") -> Best:
    """The epoch with the highest (`mode="max"`) or lowest (`"min"`, e.g. eval_loss) finite `metric`."""
    scored = [e for e in epochs if _is_real(e["metrics"].get(metric)) and math.isfinite(e["metrics"][metric])]
    if not scored:
        raise ConfigError(f"no epoch has a finite {metric!r}; epochs carry {sorted({*_keys(epochs)})}")
    if mode not in ("max", "min"):
        raise ConfigError(f"mode must be 'max' or 'min', got {mode!r}")
    pick = (max if mode == "max" else min)(scored, key=lambda e: e["metrics"][metric])
    return {"epoch": pick["epoch"], "metrics": dict(pick["metrics"])}


# ---------------------------------------------------------------------------------------------- hashing / env


def config_hash(cfg: Mapping[str, Any], ignore: Iterable[str] = IGNORED_KEYS) -> str:
    """sha256 hex of the canonical JSON of `cfg` (sorted keys, no spaces) without the keys in `ignore` (at any
    depth): two configs that train the same run hash the same, whatever their key order or output paths."""
    canon = json.dumps(_drop(cfg, frozenset(ignore)), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canon.encode()).hexdigest()


# Libraries whose version can move a score, recorded in `env` beside torch / transformers / peft: the data
# pipeline (datasets, tokenizers), the metric code (sacrebleu, pycocoevalcap; scipy / scikit-learn for GLUE) and
# the training loop (accelerate, numpy). None where a package is not installed (e.g. without the `nlg` extra).
SCORE_PACKAGES: tuple[str, ...] = (
    "datasets", "tokenizers", "accelerate", "numpy", "scipy", "scikit-learn", "sacrebleu", "pycocoevalcap",
)  # fmt: skip


def env_info(device: Any = None) -> dict[str, Any]:
    """Where the run happens: git commit and dirty flag of the checkout holding this package (None outside a
    git checkout; untracked files do not count as dirty), Python and package versions (`SCORE_PACKAGES` too),
    the Java that METEOR 1.5 and the PTB tokenizer run on (`java_version`), device and hostname.

    device: a `torch.device` or string; default: "cuda" when available, else "cpu". CUDA devices are named
    "cuda:<GPU name>", e.g. "cuda:NVIDIA H200"."""
    repo = Path(__file__).resolve().parent
    sha = _git(repo, "rev-parse", "HEAD")
    status = _git(repo, "status", "--porcelain", "--untracked-files=no")
    return {
        "git": sha,
        "dirty": None if status is None else bool(status),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        **{name: _version(name) for name in SCORE_PACKAGES},
        "java": java_version(),
        "device": _device_name(device),
        "hostname": socket.gethostname(),
    }


@functools.cache
def java_version() -> str | None:
    """The first line `java -version` prints (to stderr), e.g. 'openjdk version "17.0.15" 2025-04-15', for the
    `java` on PATH; None when there is none or it fails. Asked once per process (cached)."""
    java = shutil.which("java")
    if java is None:
        return None
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = (out.stderr or out.stdout).strip().splitlines()
    return lines[0].strip() if lines else None


def peak_memory(device: Any = None) -> Memory:
    """Peak memory so far: `torch.cuda.max_memory_allocated` on a CUDA device, else the process's peak RSS."""
    import torch

    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda":
        return {"peak_bytes": int(torch.cuda.max_memory_allocated(dev)), "kind": "cuda_allocated"}
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return {"peak_bytes": int(rss if sys.platform == "darwin" else rss * 1024), "kind": "cpu_rss"}


def now() -> str:
    """Current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------------------ files


def record_filename(record: RunRecord) -> str:
    """`<experiment>__<task>__<method>__s<seed>__<hash[:10]>.json`, each part reduced to [A-Za-z0-9._-]."""
    parts = (record.experiment, record.task, record.method, f"s{record.seed}", record.config_hash[:10])
    return "__".join(_safe(p) for p in parts) + ".json"


def ensure_writable(directory: str | os.PathLike[str]) -> Path:
    """Create `directory` if needed and check that files can be written there (call it before a long run).

    Raises ValueError (one line, with the path and the fix) when it cannot."""
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path, prefix=".probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:  # PermissionError, NotADirectoryError, FileExistsError, read-only file system, ...
        raise ConfigError(
            f"results directory {str(path)!r} is not writable ({e.strerror or e}); choose a directory you "
            "can write to (e.g. results_dir=/path/you/own) or fix its permissions"
        ) from None
    return path


def write_record(record: RunRecord, directory: str | os.PathLike[str]) -> Path:
    """Validate `record` and write it to `directory/record_filename(record)` atomically: a temp file in the
    same directory, fsync, then `os.replace`. Readers see the old file or the new one, never a partial one."""
    text = record.to_json()
    validate_record(json.loads(text))
    path = ensure_writable(directory)
    final = path / record_filename(record)
    fd, tmp = tempfile.mkstemp(dir=path, prefix=f".{final.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode of a new file
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path)
    return final


class RecordWarning(UserWarning):
    """A file under the runs directory could not be read as a run record."""


def load_records(directory: str | os.PathLike[str]) -> list[RunRecord]:
    """Every run record under `directory` (recursive, `*.json`, sorted by path).

    JSON files without a "schema" key are not records (e.g. a checkpoint's config.json) and are skipped
    silently; unreadable or invalid records are skipped with a `RecordWarning`. Raises FileNotFoundError if
    `directory` is missing."""
    root = Path(directory)
    if not root.is_dir():
        raise InputNotFound(
            f"runs directory {str(root)!r} does not exist; run an experiment or pass runs_dir="
        )
    records = []
    for p in sorted(root.rglob("*.json")):
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
            if isinstance(d, dict) and "schema" not in d:
                continue
            records.append(RunRecord.from_dict(d, source=p))
        except (OSError, UnicodeDecodeError, ValueError, TypeError) as e:
            warnings.warn(f"skipping {p}: {e}", RecordWarning, stacklevel=2)
    return records


def find_complete(directory: str | os.PathLike[str], config_hash: str) -> RunRecord | None:
    """The complete record of the run with this config hash under `directory`, or None (to resume a sweep)."""
    root = Path(directory)
    if not root.is_dir():
        return None
    for p in sorted(root.rglob(f"*__{config_hash[:10]}.json")):
        try:
            rec = RunRecord.from_json(p.read_text(encoding="utf-8"), source=p)
        except (OSError, UnicodeDecodeError, ValueError, TypeError) as e:
            warnings.warn(f"skipping {p}: {e}", RecordWarning, stacklevel=2)
            continue
        if rec.status == "complete" and rec.config_hash == config_hash:
            return rec
    return None


# ------------------------------------------------------------------------------------------------- validation


def validate_record(d: Any) -> None:
    """Raise ValueError naming the first malformed field of a run record (a dict as read from JSON)."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"run record must be a JSON object, got {type(d).__name__}")
    if d.get("schema") != SCHEMA_VERSION:
        raise ConfigError(
            f"run record schema {d.get('schema')!r} is not supported; this code reads {SCHEMA_VERSION}"
        )
    optional = {"reason", "params", "memory", "time", "best", "last", "effective", "finished"}
    _keys_ok(d, required=set(_ORDER) - optional, allowed=set(_ORDER), where="record")
    status = d["status"]
    _check(status in STATUSES, "status", f"must be one of {STATUSES}, got {status!r}")
    _check(d.get("reason") is None or isinstance(d["reason"], str), "reason", "must be a string or null")
    _check(status not in FAILED or bool(d.get("reason")), "reason", f"is required when status is {status!r}")
    _check(isinstance(d["config"], Mapping), "config", "must be an object")
    _check(isinstance(d["config_hash"], str) and re.fullmatch(r"[0-9a-f]{64}", d["config_hash"]) is not None,
           "config_hash", f"must be 64 lowercase hex digits (sha256), got {d['config_hash']!r}")  # fmt: skip
    for k in ("experiment", "model", "task", "method"):
        _check(isinstance(d[k], str) and bool(d[k]), k, f"must be a non-empty string, got {d[k]!r}")
    _check(_is_int(d["seed"]), "seed", f"must be an integer, got {d['seed']!r}")
    complete = status == "complete"
    for key, spec in (("params", Params), ("memory", Memory), ("time", Timing), ("best", Best)):
        value = d.get(key)
        if value is None:
            _check(not complete, key, "is required in a complete record")
            continue
        _keys_ok(value, required=set(spec.__annotations__), allowed=set(spec.__annotations__), where=key)
    if d.get("params") is not None:
        for k, v in d["params"].items():
            _check(_is_int(v) and v >= 0, f"params.{k}", f"must be a non-negative integer, got {v!r}")
    if d.get("memory") is not None:
        m = d["memory"]
        _check(
            _is_int(m["peak_bytes"]) and m["peak_bytes"] >= 0, "memory.peak_bytes", "must be an integer >= 0"
        )
        _check(m["kind"] in MEMORY_KINDS, "memory.kind", f"must be one of {MEMORY_KINDS}, got {m['kind']!r}")
    if d.get("time") is not None:
        for k, v in d["time"].items():
            _check(_is_real(v) and v >= 0, f"time.{k}", f"must be a number >= 0, got {v!r}")
    _check(isinstance(d["epochs"], list), "epochs", "must be a list")
    for i, e in enumerate(d["epochs"]):
        _keys_ok(
            e, required=set(Epoch.__annotations__), allowed=set(Epoch.__annotations__), where=f"epochs[{i}]"
        )
        _check(_is_int(e["epoch"]) and _is_int(e["step"]), f"epochs[{i}]", "epoch and step must be integers")
        _check(
            e["train_loss"] is None or _is_real(e["train_loss"]),
            f"epochs[{i}].train_loss",
            "must be a number",
        )
        _metrics_ok(e["metrics"], f"epochs[{i}].metrics")
    for key in ("best", "last"):
        if d.get(key) is not None:
            _keys_ok(d[key], required=set(Best.__annotations__), allowed=set(Best.__annotations__), where=key)
            _check(_is_int(d[key]["epoch"]), f"{key}.epoch", "must be an integer")
            _metrics_ok(d[key]["metrics"], f"{key}.metrics")
    _check(
        d.get("effective") is None or isinstance(d["effective"], Mapping), "effective", "must be an object"
    )
    _check(isinstance(d["targets"], list) and all(isinstance(t, str) for t in d["targets"]), "targets",
           "must be a list of module paths (strings)")  # fmt: skip
    _keys_ok(d["env"], required=set(_ENV_KEYS), allowed=None, where="env")
    _check(
        d["env"]["dirty"] is None or isinstance(d["env"]["dirty"], bool),
        "env.dirty",
        "must be true/false/null",
    )
    _check(_is_time(d["started"]), "started", f"must be an ISO 8601 time, got {d['started']!r}")
    _check(
        d.get("finished") is None or _is_time(d["finished"]), "finished", "must be an ISO 8601 time or null"
    )
    _check(not complete or d.get("finished") is not None, "finished", "is required in a complete record")


def _metrics_ok(metrics: Any, where: str) -> None:
    _check(isinstance(metrics, Mapping), where, "must be an object")
    for k, v in metrics.items():
        _check(k in METRIC_KEYS, f"{where}.{k}", f"is not a known metric key; known: {sorted(METRIC_KEYS)}")
        _check(v is None or _is_real(v), f"{where}.{k}", f"must be a number or null, got {v!r}")


def _keys_ok(d: Any, required: set[str], allowed: set[str] | None, where: str) -> None:
    _check(isinstance(d, Mapping), where, f"must be an object, got {type(d).__name__}")
    missing = sorted(required - set(d))
    _check(not missing, where, f"is missing {missing}")
    extra = sorted(set(d) - allowed) if allowed is not None else []
    _check(not extra, where, f"has unknown keys {extra}")


def _check(ok: bool, where: str, problem: str) -> None:
    if not ok:
        raise ConfigError(f"run record: {where} {problem}")


# ---------------------------------------------------------------------------------------------------- helpers


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _num_or_none(v: Any) -> float | None:
    return float(v) if v is not None and math.isfinite(float(v)) else None


def _is_time(v: Any) -> bool:
    try:
        datetime.fromisoformat(v)
    except (TypeError, ValueError):
        return False
    return True


def _keys(epochs: list[Epoch]) -> Iterable[str]:
    return (k for e in epochs for k in e["metrics"])


def _finite(x: Any) -> Any:
    """`x` in plain JSON types: non-finite float -> None, mapping -> dict, sequence -> list, path -> str."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, Mapping):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, Sequence) and not isinstance(x, (str, bytes)):
        return [_finite(v) for v in x]
    return str(x) if isinstance(x, os.PathLike) else x


def _drop(x: Any, ignore: frozenset[str]) -> Any:
    if isinstance(x, Mapping):
        return {k: _drop(v, ignore) for k, v in x.items() if k not in ignore}
    if isinstance(x, (list, tuple)):
        return [_drop(v, ignore) for v in x]
    return x


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-.") or "x"


def _git(repo: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10, check=True
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _device_name(device: Any) -> str:
    import torch

    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(dev)}"
    return dev.type


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
