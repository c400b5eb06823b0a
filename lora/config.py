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
from lora.errors import ConfigError

TASK_KINDS = ("glue", "nlg")
REFERENCES = ("paper", "official")
SELECT = ("both", "best", "last")
PROTOCOLS = ("code", "paper")
LOGGERS = ("none", "csv", "wandb", "tensorboard")


def _by(key: str, table: Any) -> Any:
    """`${by:<key>,{k1: v1, ...}}`: the entry of `table` for `key` (e.g. the learning rate of the current task)."""
    if key not in table:
        raise ConfigError(f"no value for {key!r} in {dict(table)}; set it explicitly on the command line")
    return table[key]


def _mul(a: Any, b: Any) -> Any:
    """`${mul:a,b}`: a x b (e.g. a per-process batch times the released scripts' 8 processes)."""
    return a * b


if not OmegaConf.has_resolver("by"):
    OmegaConf.register_new_resolver("by", _by)
if not OmegaConf.has_resolver("mul"):
    OmegaConf.register_new_resolver("mul", _mul)


@dataclass
class ModelConfig:
    """Which model a run adapts (`lora.models.resolve` reads these).

    name: a registered model of `lora.models.MODELS` (`model=<name>`, conf/model/), or null for any Hugging Face
    model given by `hub` or `path` (`model=hf model.hub=<id>`, `model=hf model.path=<dir>`), whose family is read
    from its config.json and must be supported (`lora.architectures.ARCHITECTURES`: else a one-line error).
    hub: a hub id. path: a local directory written by save_pretrained; it wins whenever it is given (with a
    registered name it must hold a model of that name's family: a local copy of it). `label` is what the run record
    calls the model: the name, else the hub id, else the directory's name.
    pretrained=false builds it from config with random weights; trust_remote_code: allow a checkpoint's own code;
    dropout: every dropout probability of the backbone (attention, residual, embedding:
    `lora.models.BACKBONE_DROPOUTS`), null = the checkpoint's own. The task head's dropout is `train.cls_dropout`;
    LoRA's own is `method.dropout`."""

    name: str | None = MISSING
    hub: str | None = None
    pretrained: bool = True
    path: str | None = None
    trust_remote_code: bool = False
    dropout: float | None = None

    def __post_init__(self) -> None:
        from lora.models import resolve

        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ConfigError(f"model.dropout={self.dropout!r} is out of range: give a probability in [0, 1)")
        if self.name == MISSING:  # the schema's own default, before a model is chosen
            return
        # Offline checks only: a hub id given alone is read from the hub when the model is built, and `model=hf`
        # with neither hub nor path is refused by `resolve()` before anything is built.
        if self.name is not None or self.path is not None:
            resolve(self.name, hub=self.hub, path=self.path)

    @property
    def label(self) -> str:
        """The model's name in run records: the registered name, else the hub id, else the directory's name."""
        from pathlib import Path

        if self.name not in (None, MISSING):
            return str(self.name)
        if self.hub is None and self.path is None:
            self.resolve()  # raises: no model given
        return self.hub or Path(str(self.path)).expanduser().resolve().name

    def resolve(self) -> Any:
        """The `lora.models.ModelSpec` of this model (reads a hub model's config.json from the hub)."""
        from lora.models import resolve

        return resolve(self.name, hub=self.hub, path=self.path)


@dataclass
class TaskConfig:
    """name: task (GLUE: cola sst2 mrpc stsb qqp mnli qnli rte; polarity; NLG: e2e webnlg dart); kind: glue or nlg;
    max_*_samples: subsample for quick runs (None = all). Generation tasks are scored after training by decoding
    `decode_split` with beam search (num_beams, length_penalty, no_repeat_ngram_size, max_new_tokens).

    As the released decoder (microsoft/LoRA examples/NLG/src/gpt2_beam.py, gpt2_decode.py): a beam ends at the end
    token or, with `stop_at_blank_line`, at a blank line (GPT-2's token 628, "\\n\\n"), and the text is cut at the
    first blank line. `references`: `paper` scores E2E against the references as the paper's own data files write
    them (`e2e/lora_format/{valid,test}.txt`, falling back to the csv when absent); `official` re-tokenises the
    official csv. `select`: which checkpoints are decoded: `last` (the released README decodes the final one),
    `best` (lowest plain validation loss, the paper's text), or `both` (the tables then choose; see lora.tables)."""

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
    stop_at_blank_line: bool = True
    references: str = "paper"
    select: str = "both"

    def __post_init__(self) -> None:
        if self.references not in REFERENCES:
            raise ConfigError(f"task.references must be one of {REFERENCES}, got {self.references!r}")
        if self.select not in SELECT:
            raise ConfigError(f"task.select must be one of {SELECT}, got {self.select!r}")
        if self.kind not in TASK_KINDS:
            raise ConfigError(f"task.kind must be one of {TASK_KINDS}, got {self.kind!r}")
        if self.decode_split not in ("train", "validation", "test"):
            raise ConfigError(
                f"task.decode_split must be train, validation or test, got {self.decode_split!r}"
            )
        if self.num_beams <= 0 or self.max_new_tokens <= 0 or self.no_repeat_ngram_size < 0:
            raise ConfigError("task.num_beams and task.max_new_tokens must be > 0, no_repeat_ngram_size >= 0")
        for k in ("max_train_samples", "max_eval_samples", "max_decode_samples"):
            v = getattr(self, k)
            if v is not None and v <= 0:
                raise ConfigError(f"task.{k} must be a positive number of examples or null, got {v}")


@dataclass
class TrainConfig:
    """AdamW with linear decay after warmup (Appendix D). epochs may be fractional; max_steps > 0 overrides it;
    max_steps = 0 trains nothing and only evaluates (the unadapted baseline).

    batch_size is the GLOBAL batch: examples per optimizer step over all processes and accumulation steps. The
    per-process batch is batch_size / (world size x grad_accum) and must divide evenly; a run records both.
    Optimizer: AdamW (betas, epsilon), gradient clipping at max_grad_norm (0 = none). transformers' Trainer
    exempts biases and LayerNorm weights from weight decay; decay_bias_and_norm=true decays every trainable
    parameter, as the released NLG trainer does (examples/NLG/src/optimizer.py, no `--no_decay_bias`).

    Fast-path switches (lora/fastpath.py; each measured off vs on by `experiments/bench.py fast-path`):
    attn_implementation: `sdpa` (default: PyTorch's fused scaled_dot_product_attention where transformers has it for
    the family, else the family's eager attention, e.g. DeBERTa-v2) or `eager`. bf16_frozen: with bf16, hold the
    frozen weights in bf16 and the trainable ones in fp32 (no effect without bf16). optim: `auto` (default:
    `adamw_torch_fused` on CUDA, `adamw_torch` on CPU), `adamw_torch` or `adamw_torch_fused` (torch 2.13 has the
    fused AdamW on CPU too). compile: torch.compile the model (off by default; the first steps compile).
    group_by_length: batches of examples of similar length (transformers' LengthGroupedSampler over the tokenised
    lengths): less padding, the same examples every epoch in another order."""

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
    max_grad_norm: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    decay_bias_and_norm: bool = False
    label_smoothing: float = 0.0
    cls_dropout: float | None = None
    bf16: bool = False
    group_by_length: bool = False  # batch examples of similar length (less padding, same examples per epoch)
    attn_implementation: str = "sdpa"
    bf16_frozen: bool = False
    optim: str = "auto"
    compile: bool = False
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
            "max_grad_norm": self.max_grad_norm >= 0,
            "adam_beta1": 0 <= self.adam_beta1 < 1,
            "adam_beta2": 0 <= self.adam_beta2 < 1,
            "adam_epsilon": self.adam_epsilon > 0,
            "label_smoothing": 0 <= self.label_smoothing < 1,
            "logging_steps": self.logging_steps > 0,
        }
        if self.cls_dropout is not None:
            checks["cls_dropout"] = 0 <= self.cls_dropout < 1
        for k, ok in checks.items():
            if not ok:
                raise ConfigError(f"train.{k}={getattr(self, k)!r} is out of range")
        from lora.fastpath import ATTENTION, OPTIMIZERS

        if self.attn_implementation not in ATTENTION:
            raise ConfigError(
                f"train.attn_implementation must be one of {ATTENTION}, got {self.attn_implementation!r}"
            )
        if self.optim not in OPTIMIZERS:
            raise ConfigError(f"train.optim must be one of {OPTIMIZERS}, got {self.optim!r}")


@dataclass
class LoggerConfig:
    """name: none, csv (a metrics.csv in the run directory), wandb (one wandb run per training run, offline unless
    mode=online; project and mode win over WANDB_PROJECT / WANDB_MODE) or tensorboard (<run dir>/tensorboard).
    See lora.loggers."""

    name: str = "none"
    project: str = "lora-suite"
    mode: str = "offline"

    def __post_init__(self) -> None:
        if self.name not in LOGGERS:
            raise ConfigError(f"unknown logger {self.name!r}: choose from {', '.join(LOGGERS)}")
        if self.mode not in ("offline", "online", "disabled"):
            raise ConfigError(f"logger.mode must be offline, online or disabled, got {self.mode!r}")


@dataclass
class Config:
    """One run. `experiment` names the paper row it reproduces; `init_from` starts from a saved adapter (a
    directory, or `best:<experiment>/<task>` for the best complete record of that row, e.g. MNLI for MRPC).
    `protocol`: where the paper's text and its released code disagree, experiment files follow the code
    (`code`, default) or the text (`paper`), e.g. RoBERTa-base LoRA's alpha (scripts 16, Table 9 8)."""

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
    protocol: str = "code"

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")


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
        raise ConfigError(f"invalid config: {msg}") from None
    assert isinstance(raw, dict)
    raw.pop("hydra", None)
    method = dict(raw.get("method") or {})
    name = method.pop("name", None)
    if not name:
        raise ConfigError("no method selected: add method=<name> (e.g. method=lora)")
    method_cfg = methods.method_config(name, **method)
    typed = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), {k: v for k, v in raw.items()}))
    assert isinstance(typed, Config)
    return RunSpec(cfg=typed, method=name, method_cfg=method_cfg, raw=raw)
