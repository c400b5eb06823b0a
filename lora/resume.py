"""Resumable runs: a small checkpoint after every epoch, in safetensors + JSON (nothing is ever unpickled).

A sweep killed mid-run and started again with the same command skips the complete runs (their records) and picks
the interrupted run up after its last finished epoch. The checkpoint holds exactly what that needs: the parameters
the method trains (and the task head), the optimizer's and the scheduler's state, the Trainer's progress (its own
`trainer_state.json`), the RNG state of every process, and the run's record so far. The main process writes it to
`<run dir>/resume/step-<global step>/` through a temporary directory and one rename, so a crash leaves the previous
checkpoint or the new one, never a part of one; the run deletes it when it completes.

`ResumableTrainer` is transformers' `Trainer` with its checkpoint format swapped for this one (the Trainer's own
pickles optimizer and RNG state with `torch.save`): `trainer.train(resume_from_checkpoint=latest(...))` then
skips the finished epochs as the Trainer always does. Runs resume exactly (same metrics as without the
interruption) when the logging interval divides the epoch; DeepSpeed and FSDP shard the optimizer state, so
no checkpoint is written under them.

`run_lock` keeps two processes off one run: the first holds an exclusive lock on `<output_dir>/.locks/<run>.lock`
while it trains; a second one with the same config gets `None` and skips (or, under DDP, waits), so two sweeps
started together never share or delete each other's checkpoints. The lock dies with its process (flock), so a
killed run leaves nothing to clean up.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import Trainer

from lora.checkpoint import read_tensors
from lora.errors import ConfigError

log = logging.getLogger(__name__)

FORMAT = "lora-suite-resume/1"
TENSORS, META, TRAINER_STATE = "state.safetensors", "state.json", "trainer_state.json"


@contextlib.contextmanager
def run_lock(output_dir: str | os.PathLike[str], name: str, wait: bool = False) -> Iterator[Path | None]:
    """Hold the exclusive lock of run `name` while the block runs; yields the lock file's path, or None when
    another process holds it and `wait` is false (the caller then skips the run)."""
    path = Path(output_dir) / ".locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield None
            return
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield path
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def is_main_process() -> bool:
    """True in a single-process run and in rank 0 of a `torchrun` / `accelerate launch` job: the one that writes."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def latest(root: Path, config_hash: str) -> Path | None:
    """The newest complete checkpoint of the run with `config_hash` under `root`, or None."""
    if not root.is_dir():
        return None
    for d in sorted(root.glob("step-*"), key=lambda p: int(p.name.split("-")[1]), reverse=True):
        try:
            meta = json.loads((d / META).read_text())
        except (OSError, ValueError):
            continue  # not a finished checkpoint
        if meta.get("format") == FORMAT and meta.get("config_hash") == config_hash:
            return d
        log.warning("ignoring %s: written by another run or version", d)
    return None


def read_meta(directory: Path) -> dict[str, Any]:
    return json.loads((Path(directory) / META).read_text())


# ---------------------------------------------------------------------------------------- flat optimizer / RNG


def flatten_optimizer(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """`optimizer.state_dict()` -> tensors {"optimizer.<param id>.<key>": tensor} + the rest as JSON."""
    tensors: dict[str, torch.Tensor] = {}
    other: dict[str, dict[str, Any]] = {}
    for pid, state in sd["state"].items():
        for k, v in state.items():
            if torch.is_tensor(v):
                tensors[f"optimizer.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                other.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "state": other}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `flatten_optimizer` (JSON lists stay lists, e.g. AdamW's betas; torch accepts them)."""
    state: dict[int, dict[str, Any]] = {int(pid): dict(v) for pid, v in meta["state"].items()}
    for key, t in tensors.items():
        if key.startswith("optimizer."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = t
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> dict[str, Any]:
    """This process's RNG state: Python, NumPy, torch CPU and every CUDA device."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def flatten_rng(states: list[dict[str, Any]]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """RNG states of processes 0..n-1 -> tensors "rng.<rank>.*" + JSON."""
    tensors, meta = {}, []
    for rank, s in enumerate(states):
        name, keys, pos, has_gauss, cached = s["numpy"]
        tensors[f"rng.{rank}.torch"] = s["torch"]
        tensors[f"rng.{rank}.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
        for i, c in enumerate(s["cuda"]):
            tensors[f"rng.{rank}.cuda.{i}"] = c
        version, internal, gauss = s["python"]
        meta.append({"python": [version, list(internal), gauss], "numpy": [name, pos, has_gauss, cached],
                     "cuda": len(s["cuda"])})  # fmt: skip
    return tensors, meta


def set_rng(tensors: dict[str, torch.Tensor], meta: list[dict[str, Any]], rank: int) -> None:
    m = meta[rank]
    version, internal, gauss = m["python"]
    random.setstate((version, tuple(internal), gauss))
    name, pos, has_gauss, cached = m["numpy"]
    np.random.set_state(
        (name, tensors[f"rng.{rank}.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached)
    )
    torch.set_rng_state(tensors[f"rng.{rank}.torch"])
    if m["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[f"rng.{rank}.cuda.{i}"] for i in range(m["cuda"])])


def _gather(obj: Any) -> list[Any]:
    """`obj` of every process, by rank (a list of one outside distributed training)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [obj]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------------- trainer


class ResumableTrainer(Trainer):
    """`Trainer` whose checkpoints are `lora.resume` checkpoints (safetensors + JSON), under `resume_root`.

    run_state: returns the JSON-able state of the run record so far, stored with the checkpoint.
    config_hash: the run's config hash; a checkpoint of another config is never loaded.
    decay_all: apply weight decay to every trainable parameter (the released NLG trainer) instead of the
    Trainer's default, which exempts biases and LayerNorm weights.
    """

    def __init__(
        self, *args: Any, resume_root: Path, run_state: Callable[[], dict], config_hash: str,
        decay_all: bool = False, **kw: Any,
    ):  # fmt: skip
        super().__init__(*args, **kw)
        self.resume_root, self.run_state, self.config_hash = Path(resume_root), run_state, config_hash
        self.decay_all = decay_all
        self._loaded: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None

    def get_decay_parameter_names(self, model: Any) -> list[str]:
        if self.decay_all:
            return [n for n, _ in model.named_parameters()]
        return super().get_decay_parameter_names(model)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return  # sharded optimizer state: not ours to gather
        rngs = _gather(rng_state())  # a collective: every process takes part
        if not is_main_process():
            return
        params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        tensors = {f"param.{n}": p.detach().cpu().contiguous() for n, p in params.items()}
        opt_tensors, opt_meta = flatten_optimizer(self.optimizer.state_dict())
        rng_tensors, rng_meta = flatten_rng(rngs)
        step = self.state.global_step
        meta = {
            "format": FORMAT, "config_hash": self.config_hash, "global_step": step, "params": list(params),
            "optimizer": opt_meta, "scheduler": self.lr_scheduler.state_dict(), "rng": rng_meta,
            "run": self.run_state(),
        }  # fmt: skip
        final = self.resume_root / f"step-{step}"
        tmp = self.resume_root / f".step-{step}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({**tensors, **opt_tensors, **rng_tensors}, str(tmp / TENSORS), metadata={"format": FORMAT})
        self.state.save_to_json(str(tmp / TRAINER_STATE))
        (tmp / META).write_text(json.dumps(meta, allow_nan=False))  # raises on a state JSON cannot hold
        for f in tmp.iterdir():
            _fsync(f)
        shutil.rmtree(final, ignore_errors=True)  # a checkpoint of this step from an earlier attempt
        os.replace(tmp, final)
        _fsync(self.resume_root)
        for old in self.resume_root.glob("step-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)

    def _read(self, checkpoint: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        if self._loaded is None:
            self._loaded = read_tensors(Path(checkpoint) / TENSORS), read_meta(Path(checkpoint))
        return self._loaded

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        tensors, meta = self._read(resume_from_checkpoint)
        params = dict((model or self.model).named_parameters())
        missing = [n for n in meta["params"] if n not in params]
        if missing:
            raise ConfigError(
                f"checkpoint {resume_from_checkpoint} has parameters this model lacks: {missing[:3]}"
            )
        with torch.no_grad():
            for n in meta["params"]:
                params[n].copy_(tensors[f"param.{n}"])

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is None:
            return
        tensors, meta = self._read(checkpoint)
        self.optimizer.load_state_dict(unflatten_optimizer(tensors, meta["optimizer"]))
        self.lr_scheduler.load_state_dict(meta["scheduler"])

    def _load_rng_state(self, checkpoint: str | None) -> None:
        if checkpoint is None:
            return
        tensors, meta = self._read(checkpoint)
        rank = self.args.process_index
        if rank < len(meta["rng"]):
            set_rng(tensors, meta["rng"], rank)
        else:
            log.warning(
                "no RNG state for process %d in %s: the resumed run is not bit-exact", rank, checkpoint
            )
