"""One run: a validated config in, a run record out.

build the model -> inject the method -> data -> transformers' Trainer (AdamW, linear decay after warmup, evaluation
every epoch) -> one JSON record with every epoch, the best epoch (the paper reports the best epoch of each run,
Appendix D), parameter counts, peak memory and time.

At scale and under failure:
- The Trainer is used as is, so `torchrun` / `accelerate launch` (DDP) work unchanged, and so do the tasks of one
  submitit job (hydra/launcher=slurm, tasks_per_node=N). `train.batch_size` is per process; a run on N > 1
  processes has `world_size: N` in its recorded config. Only the main process writes (record, adapter,
  predictions, metrics.csv, resume checkpoint); it tokenises first, the others then read its cache.
- A bad input (data, init adapter, method for this architecture) fails before any record is written. Once training
  starts the record is rewritten after every epoch; a loss that becomes NaN/inf ends the run as `diverged`, an
  out-of-memory error as `oom` (both with the reason; `execute` returns, so a sweep goes on), any other error as
  `failed` (and is raised).
- Every epoch leaves a small resume checkpoint (`lora.resume`); a run whose process was killed continues from it
  when the same config runs again.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import transformers
from omegaconf import DictConfig
from transformers import DataCollatorWithPadding, TrainerCallback, TrainingArguments

from lora import methods, records, resume
from lora.checkpoint import load_adapter, save_adapter
from lora.config import Config, RunSpec, validate
from lora.models import build_model, build_tokenizer, head_parameter_names
from lora.params import count_parameters
from lora.resume import is_main_process

log = logging.getLogger(__name__)

# Eval split -> suffix of its metric keys in the record (MNLI's mismatched dev set -> accuracy_mm).
EVAL_SUFFIX = {"validation": "", "validation_mismatched": "_mm"}


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def export_submitit_ranks() -> None:
    """A submitit job of several tasks (hydra/launcher=slurm with tasks_per_node=N, one GPU each) is one DDP run:
    export RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT for torch.distributed, as torchrun does."""
    if "RANK" in os.environ or not os.environ.get("SUBMITIT_EXECUTOR"):
        return
    from submitit import JobEnvironment
    from submitit.helpers import TorchDistributedEnvironment

    if JobEnvironment().num_tasks > 1:
        TorchDistributedEnvironment().export(
            set_cuda_visible_devices=False
        )  # the Trainer picks cuda:LOCAL_RANK


def device_of(cfg: Config) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


class MemoryMeter:
    """Peak memory of a run: CUDA peak allocated on a GPU; on a CPU the peak RSS of this process during the run,
    sampled every 5 ms by a thread (the process-lifetime maximum would carry over between runs of a sweep)."""

    def __init__(self, device: torch.device):
        self.device, self.peak, self._stop = device, 0, threading.Event()

    def __enter__(self) -> MemoryMeter:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            import psutil

            proc = psutil.Process()

            def sample() -> None:
                while not self._stop.wait(0.005):
                    self.peak = max(self.peak, proc.memory_info().rss)

            self.peak = proc.memory_info().rss
            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self._stop.set()
            self._thread.join()

    @property
    def kind(self) -> str:
        return "cuda_allocated" if self.device.type == "cuda" else "cpu_rss"


@dataclass
class TaskData:
    """What the trainer needs from a task: datasets, collator, metrics, and the metric that picks the best epoch."""

    train: Any
    evals: dict[str, Any]
    collator: Any
    compute_metrics: Any
    num_labels: int
    primary: str
    kind: str = "classification"


def glue_data(cfg: Config, tokenizer: Any) -> TaskData:
    """GLUE (and the demo's sentence-polarity task) as tokenised datasets + metrics."""
    from lora.data import glue
    from lora.metrics import glue as glue_metrics

    task = cfg.task.name
    spec = glue.get_task(task)
    raw = glue.load_glue(task, cfg.data_dir)
    if cfg.task.max_train_samples:
        raw["train"] = glue.subsample(raw["train"], cfg.task.max_train_samples, seed=0)
    for split in spec.eval_splits:
        if cfg.task.max_eval_samples:
            raw[split] = glue.subsample(raw[split], cfg.task.max_eval_samples, seed=0)
    max_length = min(cfg.train.max_length, tokenizer.model_max_length)  # e.g. a tiny model's 128 positions
    data = glue.tokenize_glue(raw, tokenizer, task, max_length)
    regression = spec.num_labels == 1

    def compute_metrics(pred: transformers.EvalPrediction) -> dict[str, float]:
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        preds = logits.squeeze(-1) if regression else np.argmax(logits, axis=-1)
        return glue_metrics.compute(task, preds, pred.label_ids)

    return TaskData(
        train=data["train"],
        evals={s: data[s] for s in spec.eval_splits},
        collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
        num_labels=spec.num_labels,
        primary=glue_metrics.PRIMARY[task],
    )


class RecordCallback(TrainerCallback):
    """After each evaluation: add the epoch's metrics to the record, keep the best epoch's adapter, write the
    record (so an interrupted run leaves its progress). Stops the run when the loss becomes NaN/inf (the logged
    loss is the mean over all processes, so every process stops)."""

    def __init__(self, run: Run):
        self.run = run
        self.pending: dict[str, float] = {}
        self.last_loss: float | None = None

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any
    ) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None:
            if not math.isfinite(loss):
                raise Diverged(f"training loss became {loss} at step {state.global_step}")
            self.last_loss = float(loss)

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float], **kw: Any) -> None:
        for split, suffix in EVAL_SUFFIX.items():
            prefix = f"eval_{split}_"
            for k, v in metrics.items():
                name = k[len(prefix) :]
                if not k.startswith(prefix):
                    continue
                key = ("eval_loss" if name == "loss" else name) + suffix
                if name == "runtime":
                    self.run.eval_s += float(v)
                elif key in records.METRIC_KEYS:  # drop bookkeeping such as model_preparation_time
                    self.pending[key] = float(v)
        if not all(any(k.endswith(s) for k in self.pending) for s in self.run.suffixes):
            return  # wait for the other eval split of this epoch (MNLI)
        epoch = round(state.epoch or 0)
        self.run.epoch_done(epoch, state.global_step, dict(self.pending), self.last_loss, kw.get("model"))
        self.pending = {}


class Run:
    """State of one run while it trains (the record, the output directory, the best metric so far)."""

    def __init__(self, spec: RunSpec, record: records.RunRecord, out_dir: Path, primary: str, report: Any):
        self.spec, self.record, self.out_dir = spec, record, out_dir
        self.primary, self.report = primary, report
        self.best: float | None = None
        self.eval_s = 0.0
        self.suffixes: list[str] = [""]
        self.written = False  # whether the record file exists (training started)
        self.note: str | None = None  # the reason of a complete record: resumed or restarted

    def save(self) -> None:
        if is_main_process():
            records.write_record(self.record, self.spec.cfg.results_dir)
        self.written = True

    def fail(self, status: str, reason: str) -> None:
        self.record.finish(status, reason)
        self.save()

    def epoch_done(
        self, epoch: int, step: int, metrics: dict[str, float], loss: float | None, model: Any
    ) -> None:
        self.record.add_epoch(epoch, step, metrics, loss)
        self.last_model = model
        value = metrics.get(self.primary) if self.primary else None
        if value is not None and math.isfinite(value) and (self.best is None or value > self.best):
            self.best = value
            self.record.best = {"epoch": epoch, "metrics": dict(metrics)}
            if self.spec.cfg.save_adapter and model is not None and is_main_process():
                save_adapter(
                    model, self.out_dir / "adapter", self.spec.method, self.spec.method_cfg, self.report
                )
        self.save()

    def state(self) -> dict[str, Any]:
        """The run's progress as JSON, stored with each resume checkpoint."""
        d = self.record.to_dict()
        return {"started": d["started"], "epochs": d["epochs"], "best": d["best"], "best_value": self.best,
                "eval_s": self.eval_s}  # fmt: skip

    def restore(self, state: dict[str, Any]) -> None:
        self.record.epochs, self.record.best = state["epochs"], state["best"]
        self.best, self.eval_s = state["best_value"], state["eval_s"]


def resolve_init(spec: RunSpec) -> Path | None:
    """`init_from`: a directory, or `best:<experiment>/<task>`, the adapter of the best complete record of that
    experiment and task for the same model (the paper starts RoBERTa-base MRPC, RTE, STS-B from MNLI)."""
    src = spec.cfg.init_from
    if not src:
        return None
    if not src.startswith("best:"):
        path = Path(src)
        if not path.is_dir():
            raise FileNotFoundError(
                f"init_from={src}: no such adapter directory; give a saved adapter's folder"
            )
        return path
    experiment, _, task = src.removeprefix("best:").partition("/")
    root = Path(spec.cfg.results_dir)
    found = [
        r
        for r in (records.load_records(root) if root.is_dir() else [])
        if r.status == "complete"
        and r.experiment == experiment
        and r.task == task
        and r.model == spec.cfg.model.name
    ]
    metric = records.PRIMARY_METRIC.get(task, "accuracy")
    found = [r for r in found if r.best and r.best["metrics"].get(metric) is not None]
    if not found:
        raise FileNotFoundError(
            f"init_from={src}: no complete {experiment} run on {task} with model {spec.cfg.model.name} in {root}; "
            f"train it first, or set init_from=null"
        )
    best = max(found, key=lambda r: r.best["metrics"][metric])
    return Path(best.config["output_dir"]) / run_name(best) / "adapter"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def run_name(record: records.RunRecord) -> str:
    return records.record_filename(record).removesuffix(".json")


def training_args(cfg: Config, out_dir: Path, device: torch.device) -> TrainingArguments:
    t = cfg.train
    report_to = "wandb" if cfg.logger.name == "wandb" else "none"
    return TrainingArguments(
        output_dir=str(out_dir),  # the Trainer writes nothing there itself (see lora.resume)
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size,
        gradient_accumulation_steps=t.grad_accum,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        learning_rate=t.lr,
        weight_decay=t.weight_decay,
        lr_scheduler_type="linear",
        warmup_steps=t.warmup_steps if t.warmup_steps > 0 else t.warmup_ratio,
        optim="adamw_torch",
        label_smoothing_factor=0.0 if cfg.task.kind == "nlg" else t.label_smoothing,
        eval_strategy="epoch",
        save_strategy="epoch",  # lora.resume's checkpoints (ResumableTrainer._save_checkpoint)
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        logging_nan_inf_filter=False,  # a NaN/inf loss must reach RecordCallback (the filter hides it)
        report_to=report_to,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=t.bf16,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        use_cpu=device.type == "cpu",
        disable_tqdm=not t.progress,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )


def execute(cfg: DictConfig) -> records.RunRecord:
    """Validate `cfg`, skip the run if a complete record with the same config hash exists (sweep resume), else
    train and evaluate it and write its record. Returns the record; a run that diverged or ran out of memory
    returns its record (status `diverged` / `oom`), any other error is raised (status `failed` if it had started)."""
    export_submitit_ranks()
    spec = validate(cfg)
    c = spec.cfg
    records.ensure_writable(c.results_dir)
    config = {k: v for k, v in spec.raw.items() if k != "force"}
    if world_size() > 1:  # part of the run: the global batch is batch_size x world_size x grad_accum
        config["world_size"] = world_size()
    record = records.new_record(
        config, experiment=c.experiment, model=c.model.name, task=c.task.name, method=spec.method, seed=c.seed,
        device=device_of(c),
    )  # fmt: skip
    done = records.find_complete(c.results_dir, record.config_hash)
    if done is not None and not c.force:
        log.info("skipping %s: complete record %s", run_name(record), done.source)
        print(f"skip: {run_name(record)} is complete ({done.source})")
        return done
    init = resolve_init(spec)
    out_dir = Path(c.output_dir) / run_name(record)
    if c.logger.name == "wandb":  # the config decides: offline unless logger.mode=online
        os.environ["WANDB_MODE"] = c.logger.mode
        os.environ["WANDB_DIR"] = str(out_dir)
        os.environ.setdefault("WANDB_PROJECT", c.logger.project)
    run = Run(spec, record, out_dir, primary="", report=None)
    try:
        prepared = _setup(spec, run, init)  # a bad input fails here, before the record is written
        _fit(spec, run, prepared)
    except torch.OutOfMemoryError as e:
        run.fail("oom", f"out of memory: {_first_line(e)}")
        if world_size() > 1:
            raise  # the other processes wait in a collective: let the launcher stop them
    except Diverged as e:
        run.fail("diverged", str(e))
        if is_main_process():
            shutil.rmtree(out_dir / "resume", ignore_errors=True)  # resuming would diverge again
    except BaseException as e:
        if run.written:
            run.fail("failed", f"{type(e).__name__}: {_first_line(e)}")
        raise
    gc.collect()  # free the run's model and optimizer before the next run of a sweep (after an OOM too)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return record


def nlg_data(cfg: Config, tokenizer: Any) -> TaskData:
    """E2E / WebNLG / DART as causal-LM rows (loss on the target only); metrics come from decoding after training."""
    from lora import generation
    from lora.data import nlg

    task, t = cfg.task, cfg.train
    train = nlg.load_nlg(task.name, "train", cfg.data_dir)
    val = nlg.load_nlg(task.name, "validation", cfg.data_dir)
    if task.max_train_samples:
        train = train[: task.max_train_samples]
    if task.max_eval_samples:
        val = val[: task.max_eval_samples]
    max_length = min(t.max_length, tokenizer.model_max_length)
    return TaskData(
        train=generation.lm_dataset(train, tokenizer, max_length),
        evals={"validation": generation.lm_dataset(val, tokenizer, max_length)},
        collator=nlg.LMCollator.from_tokenizer(tokenizer),
        compute_metrics=None,
        num_labels=0,
        primary="",
        kind="causal_lm",
    )


def decode_and_score(spec: RunSpec, run: Run, model: Any, tokenizer: Any) -> dict[str, float]:
    """Beam-search the decode split, write the predictions next to the run record, return the paper's metrics."""
    from lora import generation
    from lora.data import nlg

    task = spec.cfg.task
    examples = nlg.load_nlg(task.name, task.decode_split, spec.cfg.data_dir)
    if task.max_decode_samples:
        examples = examples[: task.max_decode_samples]
    dcfg = generation.DecodeConfig(
        num_beams=task.num_beams, length_penalty=task.length_penalty, max_new_tokens=task.max_new_tokens,
        no_repeat_ngram_size=task.no_repeat_ngram_size, batch_size=spec.cfg.train.eval_batch_size,
    )  # fmt: skip
    hyps = generation.decode(model, tokenizer, examples, dcfg, progress=spec.cfg.train.progress)
    if is_main_process():
        path = Path(spec.cfg.results_dir) / f"{run_name(run.record)}.predictions.txt"
        path.write_text("".join(h.replace("\n", " ") + "\n" for h in hyps))
    return generation.score(task.name, hyps, examples)


@dataclass
class Prepared:
    """What a run trains with, built (and so checked) before its record is written."""

    args: TrainingArguments
    tokenizer: Any
    data: TaskData
    model: Any
    report: Any


def _setup(spec: RunSpec, run: Run, init: Path | None) -> Prepared:
    """Tokenizer, model with the method (and `init_from` adapter), data: the cheap checks of the inputs first."""
    from lora.data import glue

    c = spec.cfg
    transformers.set_seed(c.seed)
    if not c.train.progress:
        datasets.disable_progress_bars()
    args = training_args(c, run.out_dir, device_of(c))
    kind = "causal_lm" if c.task.kind == "nlg" else "classification"
    num_labels = 0 if c.task.kind == "nlg" else glue.get_task(c.task.name).num_labels
    overrides = {} if c.train.cls_dropout is None else {"classifier_dropout": c.train.cls_dropout,
                                                         "cls_dropout": c.train.cls_dropout}  # fmt: skip
    # Rank 0 (of each node) fills the caches first (tokenised data, a converted checkpoint); the others read them.
    with args.main_process_first(desc="build the model and tokenise the data"):
        tokenizer = build_tokenizer(c.model.name, c.model.path)
        model = build_model(
            c.model.name, kind, num_labels=num_labels, pretrained=c.model.pretrained, path=c.model.path,
            trust_remote_code=c.model.trust_remote_code, overrides=overrides,
        )  # fmt: skip
        transformers.set_seed(
            c.seed
        )  # the method's random init (LoRA's A, adapters' W_down) follows the run seed
        report = methods.apply(model, spec.method, spec.method_cfg, head=head_parameter_names(model))
        if init is not None:
            load_adapter(model, init, head=False)
        data = nlg_data(c, tokenizer) if c.task.kind == "nlg" else glue_data(c, tokenizer)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if kind == "causal_lm" and c.train.label_smoothing > 0:
        # Smoothed inside the model's own loss, on the labels the model sees (a prefix method extends them), not by
        # the Trainer on the caller's labels (training_args passes it label_smoothing_factor=0 for generation).
        from lora.generation import smoothed_lm_loss

        model.loss_function = smoothed_lm_loss(c.train.label_smoothing)
    if kind == "classification":
        # Its loss is a batch mean that ignores `num_items_in_batch`; told otherwise (its forward takes **kwargs),
        # the Trainer multiplies it by the number of processes under DDP and skips dividing it by grad_accum.
        model.accepts_loss_kwargs = False
    run.report, run.primary = report, data.primary
    run.suffixes = [EVAL_SUFFIX[s] for s in data.evals]
    run.record.params = {k: v for k, v in count_parameters(model).as_dict().items()}
    run.record.targets = list(report.modules)
    return Prepared(args, tokenizer, data, model, report)


def _previous(record: records.RunRecord, results_dir: str) -> records.RunRecord | None:
    """The record a previous attempt of this run left, if any."""
    path = Path(results_dir) / records.record_filename(record)
    try:
        return records.RunRecord.from_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _fit(spec: RunSpec, run: Run, p: Prepared) -> None:
    c, record = spec.cfg, run.record
    ckpt = resume.latest(run.out_dir / "resume", record.config_hash) if c.train.max_steps != 0 else None
    # What an earlier attempt left (read before this attempt writes; only the main process writes the record)
    previous = _previous(record, c.results_dir) if is_main_process() else None
    if ckpt is not None:
        state = resume.read_meta(ckpt)
        run.restore(state["run"])
        run.note = (f"resumed after epoch {len(record.epochs)} (step {state['global_step']}) from the checkpoint "
                    f"of an interrupted attempt started {state['run']['started']}")  # fmt: skip
    elif previous is not None and previous.status == "running":
        run.note = (
            f"restarted: the attempt started {previous.started} was interrupted before its first checkpoint"
        )
    trainer = resume.ResumableTrainer(
        model=p.model,
        args=p.args,
        train_dataset=p.data.train,
        eval_dataset=p.data.evals,
        data_collator=p.data.collator,
        compute_metrics=p.data.compute_metrics,
        callbacks=[RecordCallback(run)],
        resume_root=run.out_dir / "resume",
        run_state=run.state,
        config_hash=record.config_hash,
    )
    if c.logger.name == "csv":
        csv = CsvLogger(run.out_dir / "metrics.csv")
        if ckpt is not None:
            csv.truncate(int(resume.read_meta(ckpt)["global_step"]))
        trainer.add_callback(csv)
    device = device_of(c)
    run.save()  # status `running` from here on
    with MemoryMeter(device) as mem:
        start = time.perf_counter()
        if c.train.max_steps == 0:  # evaluate the model as it is (e.g. method=none: before adaptation)
            trainer.evaluate()  # the callback records it as epoch 0
            samples_per_s = 0.0
        else:
            out = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt is not None else None)
            samples_per_s = float(out.metrics.get("train_samples_per_second", 0.0))
        elapsed = time.perf_counter() - start
    # NLG: the paper scores the final model (Table 18: after 26,000 steps), by beam search on rank 0
    if c.task.kind == "nlg":
        last = record.epochs[-1] if record.epochs else {"epoch": 0, "metrics": {}}
        scores = decode_and_score(spec, run, p.model, p.tokenizer) if is_main_process() else {}
        record.best = {"epoch": last["epoch"], "metrics": {**last["metrics"], **scores}}
        if c.save_adapter and is_main_process():
            save_adapter(p.model, run.out_dir / "adapter", spec.method, spec.method_cfg, p.report)
    if record.best is None:
        raise Diverged(f"no finite {p.data.primary} at any epoch")
    record.memory = {"peak_bytes": int(mem.peak), "kind": mem.kind}
    record.time = {
        "train_s": round(elapsed, 3),
        "eval_s": round(run.eval_s, 3),
        "samples_per_s": round(samples_per_s, 3),
    }
    record.finish("complete", run.note)
    run.save()
    if is_main_process():
        shutil.rmtree(run.out_dir / "resume", ignore_errors=True)


class CsvLogger(TrainerCallback):
    """logger=csv: every logged value appended to `metrics.csv` in the run directory (step, key, value)."""

    def __init__(self, path: Path):
        self.path = path

    def truncate(self, step: int) -> None:
        """Drop the rows after `step` (a resumed run logs them again)."""
        if not is_main_process() or not self.path.exists():
            return
        lines = self.path.read_text().splitlines(keepends=True)
        kept = lines[:1] + [line for line in lines[1:] if int(line.split(",", 1)[0]) <= step]
        self.path.write_text("".join(kept))

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any
    ) -> None:
        if not is_main_process() or not logs:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        with self.path.open("a") as f:
            if new:
                f.write("step,key,value\n")
            for k, v in logs.items():
                f.write(f"{state.global_step},{k},{v}\n")
