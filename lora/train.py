"""One run: a validated config in, a run record out.

build the model -> inject the method -> data -> transformers' Trainer (AdamW, linear decay after warmup, evaluation
every epoch) -> one JSON record with every epoch, the best epoch (the paper reports the best epoch of each run,
Appendix D), parameter counts, peak memory and time.

At scale and under failure:
- The Trainer is used as is, so `torchrun` / `accelerate launch` (DDP) work unchanged, and so do the tasks of one
  submitit job (hydra/launcher=slurm, tasks_per_node=N). `train.batch_size` is the global batch: each of N
  processes takes batch_size / (N x grad_accum), and the record's `effective.batch` says both. Only the main
  process writes (record, adapter, predictions, metrics.csv, resume checkpoint); it tokenises first, the others
  then read its cache.
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import transformers
from omegaconf import DictConfig
from transformers import DataCollatorWithPadding, TrainerCallback, TrainingArguments

from lora import loggers, methods, records, resume
from lora.chain import InitSource, canonical_method, resolve_init
from lora.checkpoint import WEIGHTS, load_adapter, save_adapter
from lora.config import Config, RunSpec, validate
from lora.data.fingerprint import data_fingerprint
from lora.errors import ConfigError, InputNotFound
from lora.export import peft_beside
from lora.fastpath import resolve_optim
from lora.models import (
    build_model,
    build_tokenizer,
    dropout_overrides,
    effective_dropouts,
    head_parameter_names,
)
from lora.params import count_parameters
from lora.resume import is_main_process, run_lock

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
    higher_is_better: bool = True


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


def epoch_label(epoch: float) -> int:
    """The label of an evaluation at the Trainer's (float) epoch: the epoch it ends, counting a last partial epoch
    of fractional `train.epochs` as the next one (2.5 epochs -> 1, 2, 3)."""
    return round(epoch) if abs(epoch - round(epoch)) < 1e-6 else math.ceil(epoch)


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
        if self.run.lm_loss is not None:  # NLG: the label-smoothed validation loss, beside the plain one
            smoothed = self.run.lm_loss.smoothed_eval_loss()
            if smoothed is not None:
                self.pending["eval_loss_smoothed"] = smoothed
            self.run.lm_loss.reset()
        epoch = epoch_label(state.epoch or 0.0)
        self.run.epoch_done(epoch, state.global_step, dict(self.pending), self.last_loss, kw.get("model"))
        self.pending = {}


class Run:
    """State of one run while it trains (the record, the output directory, the best metric so far)."""

    def __init__(self, spec: RunSpec, record: records.RunRecord, out_dir: Path, primary: str, report: Any):
        self.spec, self.record, self.out_dir = spec, record, out_dir
        self.primary, self.report = primary, report
        self.higher_is_better = True
        self.lm_loss: Any = None  # NLG: the LMLoss installed on the model (records the smoothed eval loss)
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
        better = self.best is None or (value > self.best if self.higher_is_better else value < self.best)
        if value is not None and math.isfinite(value) and better:
            self.best = value
            self.record.best = {"epoch": epoch, "metrics": dict(metrics)}
            if self.spec.cfg.save_adapter and model is not None and is_main_process():
                save_adapter(
                    model, self.out_dir / "adapter", self.spec.method, self.spec.method_cfg, self.report
                )
                # the same adapter as a peft folder that names its base model (LoRA runs only)
                peft_beside(model, self.out_dir, self.spec.method, self.spec.method_cfg, self.spec.cfg.model)
        self.save()

    def state(self) -> dict[str, Any]:
        """The run's progress as JSON, stored with each resume checkpoint."""
        d = self.record.to_dict()
        return {"started": d["started"], "epochs": d["epochs"], "best": d["best"], "best_value": self.best,
                "eval_s": self.eval_s}  # fmt: skip

    def restore(self, state: dict[str, Any]) -> None:
        self.record.epochs, self.record.best = state["epochs"], state["best"]
        self.best, self.eval_s = state["best_value"], state["eval_s"]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def run_name(record: records.RunRecord) -> str:
    return records.record_filename(record).removesuffix(".json")


def batch_sizes(cfg: Config) -> dict[str, int]:
    """The global batch (`train.batch_size`), split over the processes and accumulation steps."""
    t, n = cfg.train, world_size()
    if t.batch_size % (n * t.grad_accum):
        raise ConfigError(
            f"train.batch_size={t.batch_size} is the global batch and must divide evenly over {n} process(es) x "
            f"train.grad_accum={t.grad_accum}; change one of them"
        )
    return {"global": t.batch_size, "per_device": t.batch_size // (n * t.grad_accum), "world_size": n,
            "grad_accum": t.grad_accum}  # fmt: skip


def training_args(cfg: Config, out_dir: Path, device: torch.device) -> TrainingArguments:

    t = cfg.train
    report_to = loggers.report_to(cfg.logger.name)
    return TrainingArguments(
        output_dir=str(out_dir),  # the Trainer writes nothing there itself (see lora.resume)
        per_device_train_batch_size=batch_sizes(cfg)["per_device"],
        per_device_eval_batch_size=t.eval_batch_size,
        gradient_accumulation_steps=t.grad_accum,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        learning_rate=t.lr,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        adam_beta1=t.adam_beta1,
        adam_beta2=t.adam_beta2,
        adam_epsilon=t.adam_epsilon,
        lr_scheduler_type="linear",
        warmup_steps=t.warmup_steps if t.warmup_steps > 0 else t.warmup_ratio,
        optim=resolve_optim(t.optim, device),
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
        torch_compile=t.compile,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        use_cpu=device.type == "cpu",
        disable_tqdm=not t.progress,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )


def execute(cfg: DictConfig) -> records.RunRecord:
    """Validate `cfg`, skip the run if a complete record with the same config hash exists (sweep resume) or if
    another process is training it now, else train and evaluate it and write its record. Returns the record; a
    run that diverged or ran out of memory returns its record (status `diverged` / `oom`), any other error is
    raised (status `failed` if it had started).

    The config hash covers the resolved config, the fingerprint of the data files the task reads
    (`config["data"]`) and the identity of the adapter it starts from (`config["init"]`), so other data or another
    MNLI adapter is another run."""
    export_submitit_ranks()
    spec = validate(cfg)
    c = spec.cfg
    records.ensure_writable(c.results_dir)
    check_combination(spec)
    init = resolve_init(
        c.init_from, results_dir=c.results_dir, model=spec.raw["model"],
        method=canonical_method(spec.method, asdict(spec.method_cfg)), seed=c.seed,
    )  # fmt: skip
    config = {k: v for k, v in spec.raw.items() if k != "force"}
    config["data"] = data_fingerprint(c)
    if init is not None:
        config["init"] = init.identity()
    record = records.new_record(
        config, experiment=c.experiment, model=c.model.label, task=c.task.name, method=spec.method, seed=c.seed,
        device=device_of(c),
    )  # fmt: skip
    if (done := _complete(record, c)) is not None:
        return done
    # One process per run: a second one (another sweep on the same results) skips it. Under DDP only rank 0
    # takes the lock, and waits for it (the other ranks follow rank 0 through the run's collectives).
    if not is_main_process():
        return _execute(spec, record, init)
    with run_lock(c.output_dir, run_name(record), wait=world_size() > 1) as lock:
        if lock is None:
            print(
                f"skip: {run_name(record)} is being trained by another process (lock in {c.output_dir}/.locks)"
            )
            return record
        if (done := _complete(record, c)) is not None:  # finished while this process waited for the lock
            return done
        return _execute(spec, record, init)


def _complete(record: records.RunRecord, c: Config) -> records.RunRecord | None:
    done = records.find_complete(c.results_dir, record.config_hash)
    if done is None or c.force:
        return None
    log.info("skipping %s: complete record %s", run_name(record), done.source)
    print(f"skip: {run_name(record)} is complete ({done.source})")
    return done


def check_combination(spec: RunSpec) -> None:
    """Refuse, before anything is built, a run that cannot give a meaningful record."""
    c = spec.cfg
    model = c.model.resolve()
    if c.task.kind == "nlg" and not model.causal:
        raise ConfigError(
            f"task={c.task.name} is generation and needs a decoder model; {c.model.label} is a {model.family} "
            "encoder (use a decoder, e.g. model=gpt2-medium or model=smollm2)"
        )
    if c.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device={c.device} but this machine has no usable CUDA GPU (torch.cuda.is_available() is False); "
            "use device=auto or device=cpu"
        )
    if c.train.max_steps == 0 and spec.method != "none" and c.experiment != "custom":
        raise ConfigError(
            f"train.max_steps=0 trains nothing, so experiment={c.experiment} would record an untrained {spec.method}; "
            "use method=none for the unadapted baseline, or experiment=custom to evaluate as is"
        )


def _execute(spec: RunSpec, record: records.RunRecord, init: InitSource | None) -> records.RunRecord:
    c = spec.cfg
    out_dir = Path(c.output_dir) / run_name(record)
    run = Run(spec, record, out_dir, primary="", report=None)
    try:
        prepared = _setup(spec, run, init)  # a bad input fails here, before the record is written
        with loggers.open_run_logger(c, record, run_name(record), out_dir) as callbacks:
            _fit(spec, run, prepared, callbacks)
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
    train = nlg.load_nlg(task.name, "train", cfg.data_dir, references=task.references)
    val = nlg.load_nlg(task.name, "validation", cfg.data_dir, references=task.references)
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
        primary="eval_loss",  # the best checkpoint has the lowest plain validation loss (gpt2_ft.py best_val_ppl)
        kind="causal_lm",
        higher_is_better=False,
    )


def decode_config(cfg: Config) -> Any:
    from lora import generation

    task = cfg.task
    return generation.DecodeConfig(
        num_beams=task.num_beams, length_penalty=task.length_penalty, max_new_tokens=task.max_new_tokens,
        no_repeat_ngram_size=task.no_repeat_ngram_size, batch_size=cfg.train.eval_batch_size,
        stop_at_blank_line=task.stop_at_blank_line,
    )  # fmt: skip


def predictions_path(spec: RunSpec, run: Run, which: str) -> Path:
    return Path(spec.cfg.results_dir) / f"{run_name(run.record)}.predictions.{which}.txt"


def decode_and_score(spec: RunSpec, run: Run, model: Any, tokenizer: Any, which: str) -> dict[str, float]:
    """Beam-search the decode split with the model as it is (`which`: the `best` or `last` checkpoint), write the
    predictions next to the run record (`<run>.predictions.<which>.txt`), return the paper's metrics."""
    from lora import generation
    from lora.data import nlg

    task = spec.cfg.task
    examples = nlg.load_nlg(task.name, task.decode_split, spec.cfg.data_dir, references=task.references)
    examples = generation.decode_split_examples(task.name, examples)
    if task.max_decode_samples:
        examples = examples[: task.max_decode_samples]
    hyps = generation.decode(
        model, tokenizer, examples, decode_config(spec.cfg), progress=spec.cfg.train.progress
    )
    if is_main_process():
        path = predictions_path(spec, run, which)
        path.write_text("".join(h.replace("\n", " ") + "\n" for h in hyps))
    return generation.score(task.name, hyps, examples)


def decode_checkpoints(spec: RunSpec, run: Run, p: Prepared) -> None:
    """NLG after training: decode the final model (`task.select` last|both) and the best epoch's (lowest plain
    validation loss; best|both), and put each one's scores into `record.last` / `record.best`.

    The paper's text reports the best epoch, mean over 3 seeds; the released README decodes the final checkpoint
    (model.26289.pt after 5 epochs); the tables choose (lora.tables `select`). The best model is read back from
    the adapter saved at its epoch, so that a resumed run decodes the right one."""
    record, select = run.record, spec.cfg.task.select
    last = record.epochs[-1] if record.epochs else {"epoch": 0, "metrics": {}}
    best = record.best or {"epoch": last["epoch"], "metrics": dict(last["metrics"])}
    scores: dict[str, float] = {}
    if select in ("last", "both"):
        scores = decode_and_score(spec, run, p.model, p.tokenizer, "last") if is_main_process() else {}
        record.last = {"epoch": last["epoch"], "metrics": {**last["metrics"], **scores}}
    if select in ("best", "both"):
        if select == "best" or best["epoch"] != last["epoch"]:
            if best["epoch"] != last["epoch"]:
                load_adapter(p.model, run.out_dir / "adapter", head=True)
            scores = decode_and_score(spec, run, p.model, p.tokenizer, "best") if is_main_process() else {}
        elif is_main_process():  # the final model is the best one: same predictions, same scores
            shutil.copyfile(predictions_path(spec, run, "last"), predictions_path(spec, run, "best"))
        record.best = {"epoch": best["epoch"], "metrics": {**best["metrics"], **scores}}


@dataclass
class Prepared:
    """What a run trains with, built (and so checked) before its record is written."""

    args: TrainingArguments
    tokenizer: Any
    data: TaskData
    model: Any
    report: Any


def _setup(spec: RunSpec, run: Run, init: InitSource | None) -> Prepared:
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
    if c.model.dropout is not None:
        overrides |= dropout_overrides(c.model.resolve(), c.model.dropout)
    if c.task.kind == "nlg":  # scoring needs Java (METEOR, PTB tokenizer): say so now, not after training
        from lora.metrics.java import require_java

        require_java()
        if c.task.select in ("best", "both") and not c.save_adapter:
            raise ConfigError(
                f"task.select={c.task.select} decodes the best epoch's adapter, which save_adapter=false does not "
                "keep: set save_adapter=true or task.select=last"
            )
    # Rank 0 (of each node) fills the caches first (tokenised data, a converted checkpoint); the others read them.
    with args.main_process_first(desc="build the model and tokenise the data"):
        model_spec = c.model.resolve()
        tokenizer = build_tokenizer(model_spec)
        model = build_model(
            model_spec, kind, num_labels=num_labels, pretrained=c.model.pretrained,
            trust_remote_code=c.model.trust_remote_code, overrides=overrides,
            attn_implementation=c.train.attn_implementation,
        )  # fmt: skip
        transformers.set_seed(
            c.seed
        )  # the method's random init (LoRA's A, adapters' W_down) follows the run seed
        report = methods.apply(model, spec.method, spec.method_cfg, head=head_parameter_names(model))
        if init is not None:
            load_adapter(model, init.path, head=False)
        if c.train.bf16 and c.train.bf16_frozen:  # frozen weights bf16, trainable fp32
            from lora.fastpath import hold_frozen_in_bf16

            hold_frozen_in_bf16(model, device_of(c).type)
        data = nlg_data(c, tokenizer) if c.task.kind == "nlg" else glue_data(c, tokenizer)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if kind == "causal_lm":
        # Smoothed inside the model's own loss, on the labels the model sees (a prefix method extends them), not by
        # the Trainer on the caller's labels (training_args passes it label_smoothing_factor=0 for generation).
        # Evaluation gets the plain cross-entropy (and records the smoothed one beside it).
        from lora.generation import LMLoss

        model.loss_function = run.lm_loss = LMLoss(model, c.train.label_smoothing)
    if kind == "classification":
        # Its loss is a batch mean that ignores `num_items_in_batch`; told otherwise (its forward takes **kwargs),
        # the Trainer multiplies it by the number of processes under DDP and skips dividing it by grad_accum.
        model.accepts_loss_kwargs = False
    run.report, run.primary, run.higher_is_better = report, data.primary, data.higher_is_better
    run.suffixes = [EVAL_SUFFIX[s] for s in data.evals]
    run.record.effective = effective_settings(c, model)
    if init is not None:
        run.record.effective["init"] = init.as_dict()
    if not report.trainable and spec.method != "none":
        raise ConfigError(f"method {spec.method} adapts nothing on {c.model.label}: no parameter to train")
    run.record.params = {k: v for k, v in count_parameters(model).as_dict().items()}
    run.record.targets = list(report.modules)
    return Prepared(args, tokenizer, data, model, report)


def effective_settings(c: Config, model: Any) -> dict[str, Any]:
    """What the run really uses, beyond its config: batch per process, the backbone's dropouts as built,
    optimizer, and for NLG the decoding (with the stop token ids of this tokenizer)."""
    t = c.train
    out: dict[str, Any] = {
        "batch": batch_sizes(c),
        "dropout": effective_dropouts(model),
        "optimizer": {
            "name": resolve_optim(t.optim, device_of(c)),
            "betas": [t.adam_beta1, t.adam_beta2],
            "eps": t.adam_epsilon,
            "weight_decay": t.weight_decay,
            "decay_bias_and_norm": t.decay_bias_and_norm,
            "max_grad_norm": t.max_grad_norm,
        },  # fmt: skip
        "protocol": c.protocol,
    }
    if c.task.kind == "nlg":
        out["decode"] = {**asdict(decode_config(c)), "split": c.task.decode_split, "references": c.task.references,
                         "select": c.task.select}  # fmt: skip
    return out


def _previous(record: records.RunRecord, results_dir: str) -> records.RunRecord | None:
    """The record a previous attempt of this run left, if any."""
    path = Path(results_dir) / records.record_filename(record)
    try:
        return records.RunRecord.from_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _fit(spec: RunSpec, run: Run, p: Prepared, callbacks: list[Any]) -> None:
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
        decay_all=c.train.decay_bias_and_norm,
    )
    for callback in callbacks:
        if isinstance(callback, loggers.CsvLogger) and ckpt is not None:
            callback.truncate(int(resume.read_meta(ckpt)["global_step"]))
        trainer.add_callback(callback)
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
    if record.epochs:
        last = record.epochs[-1]
        record.last = {"epoch": last["epoch"], "metrics": dict(last["metrics"])}
    if c.task.kind == "nlg":  # beam search on rank 0, of the final and/or the best checkpoint
        decode_checkpoints(spec, run, p)
    if record.best is None:
        raise Diverged(f"no finite {p.data.primary} at any epoch")
    adapter = run.out_dir / "adapter" / WEIGHTS
    if c.save_adapter and is_main_process() and spec.method != "none" and not adapter.is_file():
        raise InputNotFound(
            f"the run's adapter {adapter} is gone (was the output folder deleted during the run?); the record "
            "cannot be complete without it: rerun"
        )
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
