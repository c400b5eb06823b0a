"""Chained runs: a run that starts from another run's adapter (`init_from`), as the paper's GLUE protocol does.

The paper starts RoBERTa and DeBERTa on MRPC, RTE and STS-B from the best MNLI checkpoint (Appendix D.1; the
released scripts' `--lora_path`). `init_from` names the start:

- `best:<experiment>/<task>`: the adapter of the MATCHING complete run of that experiment and task: same model
  config, same method and method config, same seed (the paper's per-seed chain), the best one if several match.
  A run of another seed or method config is never taken; no match is a one-line error that says what exists.
- a directory: a saved adapter, which must have been trained with this run's method and method config.

The start's identity (the source record's config hash, and the sha256 of the weights file) is part of the
dependent run's config hash, so a dependent run on a newer MNLI adapter is a new run; the record keeps the path.
Sweeps run the two stages one after the other (see the Makefile's GLUE targets), so that every launcher works:
no MNLI run has to finish inside the same sweep as the runs that start from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lora import methods, records
from lora.checkpoint import CONFIG, WEIGHTS, read_adapter_config
from lora.data.fingerprint import file_fingerprint
from lora.errors import ConfigError, InputNotFound


@dataclass(frozen=True)
class InitSource:
    """Where a run starts: the adapter directory, the record that produced it (None for a plain directory) and
    the fingerprint of its weights file."""

    path: Path
    record_hash: str | None
    weights: str

    def identity(self) -> dict[str, Any]:
        """What goes into the dependent run's config hash (not the path: moving the folder changes nothing)."""
        return {"record": self.record_hash, "weights": self.weights}

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "record": self.record_hash, "weights": self.weights}


def canonical_method(name: str, options: dict[str, Any]) -> dict[str, Any] | None:
    """A method config with every default filled in (None if it does not validate), so that two configs compare
    equal whether or not they spelled out the defaults."""
    try:
        return {
            "name": name,
            **asdict(methods.method_config(name, **{k: v for k, v in options.items() if k != "name"})),
        }
    except (TypeError, ValueError):
        return None


def _check_adapter(path: Path, method: dict[str, Any], what: str) -> None:
    if not (path / WEIGHTS).is_file() or not (path / CONFIG).is_file():
        raise InputNotFound(f"{what}: no saved adapter at {path} ({WEIGHTS} and {CONFIG} expected)")
    meta = read_adapter_config(path)
    theirs = canonical_method(meta["method"], meta["config"])
    if theirs != method:
        raise ConfigError(
            f"{what}: the adapter at {path} was trained with {_short(theirs or meta)}, but this run uses "
            f"{_short(method)}; start from an adapter of the same method config"
        )


def _short(cfg: dict[str, Any]) -> str:
    return (
        f"{cfg.get('name', cfg.get('method'))} ("
        + ", ".join(f"{k}={v}" for k, v in sorted(cfg.items()) if k not in ("name", "method"))
        + ")"
    )


def resolve_init(
    init_from: str | None,
    *,
    results_dir: str,
    model: dict[str, Any],
    method: dict[str, Any],
    seed: int,
) -> InitSource | None:
    """The adapter `init_from` names, checked against this run (`model`: the run's model config; `method`: its
    method config as `canonical_method` gives it)."""
    if not init_from:
        return None
    if not init_from.startswith("best:"):
        path = Path(init_from)
        if not path.is_dir():
            raise InputNotFound(
                f"init_from={init_from}: no such adapter directory; give a saved adapter's folder"
            )
        _check_adapter(path, method, f"init_from={init_from}")
        return InitSource(path, None, file_fingerprint(path / WEIGHTS))
    experiment, _, task = init_from.removeprefix("best:").partition("/")
    if not experiment or not task:
        raise ConfigError(
            f"init_from={init_from}: expected best:<experiment>/<task>, e.g. best:roberta_base_lora/mnli"
        )
    root = Path(results_dir)
    same_row = [
        r for r in (records.load_records(root) if root.is_dir() else [])
        if r.status == "complete" and r.experiment == experiment and r.task == task
    ]  # fmt: skip
    wanted = {"model": model, "method": method, "seed": seed}
    found = [r for r in same_row if _key(r) == wanted]
    metric = records.PRIMARY_METRIC.get(task, "accuracy")
    found = [r for r in found if r.best and r.best["metrics"].get(metric) is not None]
    if not found:
        raise InputNotFound(f"init_from={init_from}: {_why_none(same_row, wanted, experiment, task, root)}")
    best = max(found, key=lambda r: r.best["metrics"][metric])
    path = Path(best.config["output_dir"]) / records.record_filename(best).removesuffix(".json") / "adapter"
    if not (path / WEIGHTS).is_file():
        raise InputNotFound(
            f"init_from={init_from}: record {best.source} is complete but its adapter {path} is gone; rerun it "
            "with force=true"
        )
    return InitSource(path, best.config_hash, file_fingerprint(path / WEIGHTS))


def _key(r: records.RunRecord) -> dict[str, Any]:
    method = r.config.get("method") or {}
    return {
        "model": r.config.get("model"),
        "method": canonical_method(method.get("name", r.method), method),
        "seed": r.seed,
    }


def _why_none(
    same_row: list[records.RunRecord], wanted: dict[str, Any], experiment: str, task: str, root: Path
) -> str:
    """One line: no complete run of that row, or what the complete ones differ in."""
    if not same_row:
        return (
            f"no complete {experiment} run on {task} in {root}; run that stage first (make's GLUE targets run it "
            "before the tasks that start from it), or set init_from=null"
        )
    differ = sorted({k for r in same_row for k, v in wanted.items() if _key(r)[k] != v})
    seeds = sorted({r.seed for r in same_row})
    return (
        f"the {len(same_row)} complete {experiment} run(s) on {task} in {root} differ from this run in "
        f"{', '.join(differ)} (their seeds: {seeds}); a run starts only from the {task} run of its own model, "
        "method config and seed"
    )
