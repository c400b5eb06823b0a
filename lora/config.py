"""The run configuration: structured-config schemas for Hydra, validated before any model loads.

Hydra composes `conf/config.yaml` from the groups model/, task/, method/, logger/ and experiment/ over the `Config`
schema registered here, so a misspelt key fails at composition. `validate(cfg)` then builds the dataclasses (running
their `__post_init__` checks) and the method's own config, and turns every problem into one clear line.

Experiment files set per-task hyperparameters (the paper's Tables 9 and 10) with the `by` resolver:
`lr: ${by:${task.name},{mnli: 5e-4, sst2: 5e-4, ...}}` picks the value of the current task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from lora import methods

TASK_KINDS = ("glue", "nlg")
LOGGERS = ("none", "csv", "wandb")


def _by(key: str, table: Any) -> Any:
    """`${by:<key>,{k1: v1, ...}}`: the entry of `table` for `key` (e.g. the learning rate of the current task)."""
    if key not in table:
        raise ValueError(f"no value for {key!r} in {dict(table)}; set it explicitly on the command line")
    return table[key]


if not OmegaConf.has_resolver("by"):
    OmegaConf.register_new_resolver("by", _by)


@dataclass
class ModelConfig:
    """name: a model of `lora.models.MODELS`; pretrained=false builds it from config with random weights;
    path: a local checkpoint directory instead of the hub."""

    name: str = MISSING
    pretrained: bool = True
    path: str | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        from lora.models import MODELS

        if self.name != MISSING and self.name not in MODELS:
            raise ValueError(f"unknown model {self.name!r}: choose from {', '.join(MODELS)}")


@dataclass
class TaskConfig:
    """name: task (GLUE: cola sst2 mrpc stsb qqp mnli qnli rte; polarity; NLG: e2e webnlg dart); kind: glue or nlg;
    max_*_samples: subsample for quick runs (None = all). Generation tasks are scored after training by decoding
    `decode_split` with beam search (num_beams, length_penalty, no_repeat_ngram_size, max_new_tokens)."""

    name: str = MISSING
    kind: str = "glue"
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    # generation tasks (kind: nlg): beam search on `decode_split` after training (Appendix D.3)
    decode_split: str = "test"
    max_decode_samples: int | None = None
    num_beams: int = 10
    length_penalty: float = 0.9
    no_repeat_ngram_size: int = 4
    max_new_tokens: int = 64

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ValueError(f"task.kind must be one of {TASK_KINDS}, got {self.kind!r}")
        if self.decode_split not in ("train", "validation", "test"):
            raise ValueError(
                f"task.decode_split must be train, validation or test, got {self.decode_split!r}"
            )
        if self.num_beams <= 0 or self.max_new_tokens <= 0 or self.no_repeat_ngram_size < 0:
            raise ValueError("task.num_beams and task.max_new_tokens must be > 0, no_repeat_ngram_size >= 0")
        for k in ("max_train_samples", "max_eval_samples", "max_decode_samples"):
            v = getattr(self, k)
            if v is not None and v <= 0:
                raise ValueError(f"task.{k} must be a positive number of examples or null, got {v}")


@dataclass
class TrainConfig:
    """AdamW with linear decay after warmup (Appendix D). epochs may be fractional; max_steps > 0 overrides it;
    max_steps = 0 trains nothing and only evaluates (the unadapted baseline)."""

    batch_size: int = 16
    eval_batch_size: int = 64
    epochs: float = 3.0
    max_steps: int = -1
    lr: float = 5e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    warmup_steps: int = 0
    max_length: int = 128
    grad_accum: int = 1
    label_smoothing: float = 0.0
    cls_dropout: float | None = None
    bf16: bool = False
    group_by_length: bool = False  # batch examples of similar length (less padding, same examples per epoch)
    logging_steps: int = 50
    progress: bool = True

    def __post_init__(self) -> None:
        checks = {
            "batch_size": self.batch_size > 0,
            "eval_batch_size": self.eval_batch_size > 0,
            "epochs": self.epochs > 0,
            "max_steps": self.max_steps >= -1,
            "lr": self.lr > 0,
            "weight_decay": self.weight_decay >= 0,
            "warmup_ratio": 0 <= self.warmup_ratio < 1,
            "warmup_steps": self.warmup_steps >= 0,
            "max_length": self.max_length > 0,
            "grad_accum": self.grad_accum > 0,
            "label_smoothing": 0 <= self.label_smoothing < 1,
            "logging_steps": self.logging_steps > 0,
        }
        if self.cls_dropout is not None:
            checks["cls_dropout"] = 0 <= self.cls_dropout < 1
        for k, ok in checks.items():
            if not ok:
                raise ValueError(f"train.{k}={getattr(self, k)!r} is out of range")


@dataclass
class LoggerConfig:
    """name: none, csv (a metrics.csv in the run directory) or wandb (offline unless mode=online)."""

    name: str = "none"
    project: str = "lora-suite"
    mode: str = "offline"

    def __post_init__(self) -> None:
        if self.name not in LOGGERS:
            raise ValueError(f"unknown logger {self.name!r}: choose from {', '.join(LOGGERS)}")
        if self.mode not in ("offline", "online", "disabled"):
            raise ValueError(f"logger.mode must be offline, online or disabled, got {self.mode!r}")


@dataclass
class Config:
    """One run. `experiment` names the paper row it reproduces; `init_from` starts from a saved adapter (a
    directory, or `best:<experiment>/<task>` for the best complete record of that row, e.g. MNLI for MRPC)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    method: Any = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    experiment: str = "custom"
    seed: int = 0
    data_dir: str | None = None
    results_dir: str = "results/runs"
    output_dir: str = "outputs/runs"
    init_from: str | None = None
    save_adapter: bool = True
    force: bool = False
    device: str = "auto"


def register() -> None:
    """Register the schema with Hydra's ConfigStore (conf/config.yaml lists `config_schema` first)."""
    ConfigStore.instance().store(name="config_schema", node=Config)


register()


@dataclass
class RunSpec:
    """A validated run: the typed config, the method name and its validated config dataclass."""

    cfg: Config
    method: str
    method_cfg: Any
    raw: dict[str, Any]


def validate(cfg: DictConfig) -> RunSpec:
    """Resolve and check everything before a model is built; raises ValueError with one line on any problem."""
    try:
        raw = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except Exception as e:  # omegaconf raises several types; all are config errors here
        msg = str(e).splitlines()[0]
        raise ValueError(f"invalid config: {msg}") from None
    assert isinstance(raw, dict)
    raw.pop("hydra", None)
    method = dict(raw.get("method") or {})
    name = method.pop("name", None)
    if not name:
        raise ValueError("no method selected: add method=<name> (e.g. method=lora)")
    method_cfg = methods.method_config(name, **method)
    typed = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), {k: v for k, v in raw.items()}))
    assert isinstance(typed, Config)
    return RunSpec(cfg=typed, method=name, method_cfg=method_cfg, raw=raw)
