"""One run: a validated config in, a run record out.

build the model -> inject the method -> data -> transformers' Trainer (AdamW, linear decay after warmup, evaluation
every epoch) -> one JSON record with every epoch, the best epoch (the paper reports the best epoch of each run,
Appendix D), parameter counts, peak memory and time. The Trainer is used as is, so `torchrun`/`accelerate launch`
(DDP, DeepSpeed, FSDP) work unchanged; only the main process writes records and checkpoints.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from omegaconf import DictConfig
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

from lora import methods, records
from lora.checkpoint import load_adapter, save_adapter
from lora.config import Config, RunSpec, validate
from lora.models import build_model, build_tokenizer, head_parameter_names
from lora.params import count_parameters

log = logging.getLogger(__name__)

# Eval split -> suffix of its metric keys in the record (MNLI's mismatched dev set -> accuracy_mm).
EVAL_SUFFIX = {"validation": "", "validation_mismatched": "_mm"}


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


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
    record (so an interrupted run leaves its progress). Stops the run when the loss becomes NaN/inf."""

    def __init__(self, run: Run):
        self.run = run
        self.pending: dict[str, float] = {}
        self.last_loss: float | None = None

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
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
        self.spec, self.record, self.out_dir, self.primary, self.report = spec, record, out_dir, primary, report
        self.best: float | None = None
        self.eval_s = 0.0
        self.suffixes: list[str] = [""]

    def save(self) -> None:
        if is_main_process():
            records.write_record(self.record, self.spec.cfg.results_dir)

    def epoch_done(self, epoch: int, step: int, metrics: dict[str, float], loss: float | None, model: Any) -> None:
        self.record.add_epoch(epoch, step, metrics, loss)
        self.last_model = model
        value = metrics.get(self.primary) if self.primary else None
        if value is not None and math.isfinite(value) and (self.best is None or value > self.best):
            self.best = value
            self.record.best = {"epoch": epoch, "metrics": dict(metrics)}
            if self.spec.cfg.save_adapter and model is not None and is_main_process():
                save_adapter(model, self.out_dir / "adapter", self.spec.method, self.spec.method_cfg, self.report)
        self.save()


def resolve_init(spec: RunSpec) -> Path | None:
    """`init_from`: a directory, or `best:<experiment>/<task>`, the adapter of the best complete record of that
    experiment and task for the same model (the paper starts RoBERTa-base MRPC, RTE, STS-B from MNLI)."""
    src = spec.cfg.init_from
    if not src:
        return None
    if not src.startswith("best:"):
        path = Path(src)
        if not path.is_dir():
            raise FileNotFoundError(f"init_from={src}: no such adapter directory")
        return path
    experiment, _, task = src.removeprefix("best:").partition("/")
    root = Path(spec.cfg.results_dir)
    found = [
        r
        for r in (records.load_records(root) if root.is_dir() else [])
        if r.status == "complete" and r.experiment == experiment and r.task == task and r.model == spec.cfg.model.name
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


def run_name(record: records.RunRecord) -> str:
    return records.record_filename(record).removesuffix(".json")


def training_args(cfg: Config, out_dir: Path, device: torch.device) -> TrainingArguments:
    t = cfg.train
    report_to = "wandb" if cfg.logger.name == "wandb" else "none"
    return TrainingArguments(
        output_dir=str(out_dir / "trainer"),
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
        label_smoothing_factor=t.label_smoothing,
        eval_strategy="epoch",
        save_strategy="no",
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        report_to=report_to,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=t.bf16,
        use_cpu=device.type == "cpu",
        disable_tqdm=not t.progress,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )


def execute(cfg: DictConfig) -> records.RunRecord:
    """Validate `cfg`, skip the run if a complete record with the same config hash exists (sweep resume), else
    train and evaluate it and write its record. Returns the record."""
    spec = validate(cfg)
    c = spec.cfg
    records.ensure_writable(c.results_dir)
    config = {k: v for k, v in spec.raw.items() if k != "force"}
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
    if c.logger.name == "wandb":
        os.environ.setdefault("WANDB_MODE", c.logger.mode)
        os.environ["WANDB_DIR"] = str(out_dir)
        os.environ.setdefault("WANDB_PROJECT", c.logger.project)
    run = Run(spec, record, out_dir, primary="", report=None)
    run.save()
    try:
        _train(spec, run, init)
    except torch.OutOfMemoryError as e:
        record.finish("oom", str(e).splitlines()[0])
        run.save()
    except Diverged as e:
        record.finish("diverged", str(e))
        run.save()
    except BaseException as e:
        record.finish("failed", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        run.save()
        raise
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


def _train(spec: RunSpec, run: Run, init: Path | None) -> None:
    c = spec.cfg
    device = device_of(c)
    transformers.set_seed(c.seed)
    tokenizer = build_tokenizer(c.model.name, c.model.path)
    data = nlg_data(c, tokenizer) if c.task.kind == "nlg" else glue_data(c, tokenizer)
    overrides = {} if c.train.cls_dropout is None else {"classifier_dropout": c.train.cls_dropout,
                                                         "cls_dropout": c.train.cls_dropout}  # fmt: skip
    model = build_model(
        c.model.name, data.kind, num_labels=data.num_labels, pretrained=c.model.pretrained,
        path=c.model.path, trust_remote_code=c.model.trust_remote_code, overrides=overrides,
    )  # fmt: skip
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    head = head_parameter_names(model)
    report = methods.apply(model, spec.method, spec.method_cfg, head=head)
    if init is not None:
        load_adapter(model, init, head=False)
    run.report, run.primary = report, data.primary
    run.suffixes = [EVAL_SUFFIX[s] for s in data.evals]
    counts = count_parameters(model)
    run.record.params = {k: v for k, v in counts.as_dict().items()}
    run.record.targets = list(report.modules)
    callback = RecordCallback(run)
    trainer = Trainer(
        model=model,
        args=training_args(c, run.out_dir, device),
        train_dataset=data.train,
        eval_dataset=data.evals,
        data_collator=data.collator,
        compute_metrics=data.compute_metrics,
        callbacks=[callback],
    )
    if c.logger.name == "csv":
        trainer.add_callback(CsvLogger(run.out_dir / "metrics.csv"))
    with MemoryMeter(device) as mem:
        start = time.perf_counter()
        if c.train.max_steps == 0:  # evaluate the model as it is (e.g. method=none: before adaptation)
            trainer.evaluate()  # the callback records it as epoch 0
            samples_per_s = 0.0
        else:
            samples_per_s = float(trainer.train().metrics.get("train_samples_per_second", 0.0))
        elapsed = time.perf_counter() - start
    if c.task.kind == "nlg":  # the paper scores the final model (e.g. Table 18: after 26,000 steps)
        last = run.record.epochs[-1] if run.record.epochs else {"epoch": 0, "metrics": {}}
        scores = decode_and_score(spec, run, model, tokenizer)
        run.record.best = {"epoch": last["epoch"], "metrics": {**last["metrics"], **scores}}
        if c.save_adapter and is_main_process():
            save_adapter(model, run.out_dir / "adapter", spec.method, spec.method_cfg, report)
    if run.record.best is None:
        raise Diverged(f"no finite {data.primary} at any epoch")
    run.record.memory = {"peak_bytes": int(mem.peak), "kind": mem.kind}
    run.record.time = {
        "train_s": round(elapsed, 3),
        "eval_s": round(run.eval_s, 3),
        "samples_per_s": round(samples_per_s, 3),
    }
    run.record.finish("complete")
    run.save()


class CsvLogger(TrainerCallback):
    """logger=csv: every logged value appended to `metrics.csv` in the run directory (step, key, value)."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
        if not is_main_process() or not logs:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        with self.path.open("a") as f:
            if new:
                f.write("step,key,value\n")
            for k, v in logs.items():
                f.write(f"{state.global_step},{k},{v}\n")
