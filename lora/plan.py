"""The cost of every sweep before it starts: device-hours per Makefile sweep target, from measured step times.

    python experiments/plan.py                        # every sweep, measured on this machine -> results/bench/plan_cpu.*
    python experiments/plan.py --device cuda          # on a GPU -> results/bench/gpu/plan.*
    python experiments/plan.py --from-report results/bench/gpu/plan.csv   # re-plan with step times measured before
    make plan SEEDS=0 TASKS=rte                       # the sweep knobs of the Makefile apply

What a sweep runs is read from the Makefile itself (`make -n <target>`: the same TASKS, SEEDS, METHODS, MODEL, EXTRA
knobs), expanded as Hydra's basic sweeper expands it, and each run's config composed from the experiment files
(`conf/experiment/*.yaml`): model, method and its config, task, `train.batch_size` (the GLOBAL batch), epochs,
`train.max_steps`, `train.max_length`, `train.bf16`. Then, per run,

    steps = max_steps if set, else ceil(epochs x ceil(train examples / global batch))
    hours = steps x step time / 3600,   x seeds, summed over the sweep's rows

with the training-set sizes of `TRAIN_SIZES` (one table, each with its source). A step time is measured once per
shape (model, method and its config, sequence length, global batch, precision): a few steps of the real model and
method on random tokens at the experiment's `max_length`, an upper bound (the collators pad each batch to its
longest example only). Only training steps are counted: evaluation each epoch and the NLG runs' beam search come
on top.

A step is measured as gradient accumulation runs it: forward + backward of a micro-batch, times ceil(global batch
/ micro-batch), plus the AdamW step. On a GPU the micro-batch is the global batch (halved on an out-of-memory
error); on a CPU, where the paper's models at batch x 512 take minutes a step, one example. Both parts are measured
on shallow copies of the model at two depths (1 and 3 layers; AdapterDrop: its dropped layers + 1 and + 3;
ft_top2: 2 and 4) and extrapolated linearly to the model's depth (`--fit full`: the whole model instead), which
keeps DeBERTa XXL within a CPU's memory and the whole plan within minutes on a GPU. CPU times are the process's CPU
time (one torch thread), GPU times the wall clock.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from lora.errors import ConfigError, InputNotFound

ROOT = Path(__file__).resolve().parent.parent
SWEEPS = (
    "glue-roberta", "glue-roberta-large", "glue-deberta", "e2e-gpt2", "webnlg-gpt2", "dart-gpt2",
    "ablation-targets", "ablation-rank", "ablation-rank-e2e",
)  # fmt: skip

# Training examples per epoch (GLUE: rows of the train split; NLG: (input, reference) pairs, one training row each).
TRAIN_SIZES: dict[str, tuple[int, str]] = {
    "mnli": (392_702, "GLUE (Wang et al., 2019, Table 1); hub nyu-mll/glue train split"),
    "sst2": (67_349, "GLUE Table 1; nyu-mll/glue; = ../shared/data/glue/SST-2/train.tsv rows"),
    "mrpc": (3_668, "GLUE Table 1; nyu-mll/glue; = ../shared/data/glue/MRPC/train.tsv rows"),
    "cola": (8_551, "GLUE Table 1; nyu-mll/glue; = ../shared/data/glue/CoLA/train.tsv rows"),
    "qnli": (104_743, "GLUE Table 1; hub nyu-mll/glue train split"),
    "qqp": (363_846, "GLUE Table 1; hub nyu-mll/glue train split"),
    "rte": (2_490, "GLUE Table 1; nyu-mll/glue; = ../shared/data/glue/RTE/train.tsv rows"),
    "stsb": (5_749, "GLUE Table 1; nyu-mll/glue; = ../shared/data/glue/STS-B/train.tsv rows"),
    "e2e": (42_061, "E2E NLG (Novikova et al., 2017): trainset.csv rows = the paper's e2e/train.txt lines"),
    "webnlg": (18_025, "WebNLG 2017 train (Gardent et al., 2017): pairs of lora.data.nlg.training_pairs = the paper's train.json"),
    "dart": (62_659, "DART v1.1.1 train (Nan et al., 2021, Table 2: 62,659 / 6,980 / 12,552)"),
    "polarity": (3_200, "the demo's split of Pang & Lee sentence polarity (lora.data.polarity)"),
}  # fmt: skip


# --- what a sweep runs ---------------------------------------------------------------------------------------------


def sweep_commands(target: str, make: str = "make") -> list[list[str]]:
    """The overrides of every `experiments/train.py -m` invocation `make -n <target>` prints (the Makefile's knobs,
    from the environment or MAKEFLAGS, apply)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL",)}
    try:
        done = subprocess.run(
            [make, "-n", "--no-print-directory", target], cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=60, check=True,
        )  # fmt: skip
    except FileNotFoundError:
        raise InputNotFound(f"`{make}` is not installed: the plan reads the sweeps from `make -n`") from None
    except subprocess.CalledProcessError as e:
        raise ConfigError(f"make -n {target} failed: {e.stderr.strip().splitlines()[-1:]}") from None
    out = []
    for line in done.stdout.splitlines():
        for part in line.split("experiments/train.py")[1:]:
            words = shlex.split(part.split("||")[0].split(";")[0])
            out.append([w for w in words if w != "-m" and not w.startswith("hydra/")])
    if not out:
        raise ConfigError(f"make -n {target} runs no experiments/train.py sweep")
    return out


def expand(overrides: list[str]) -> list[list[str]]:
    """The jobs Hydra's basic sweeper makes of these overrides (the product of the comma lists)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


@dataclass(frozen=True)
class Shape:
    """What a step's time depends on."""

    model: str
    kind: str
    method: str
    method_cfg: str  # JSON of the method's config dataclass
    seq: int
    batch: int
    bf16: bool
    attn: str = "sdpa"

    @property
    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def label(self) -> str:
        cfg = {k: v for k, v in json.loads(self.method_cfg).items() if v not in (None, [], False)}
        show = " ".join(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in cfg.items())
        return (
            f"{self.model} {self.method} ({show}), {self.batch} x {self.seq}{', bf16' if self.bf16 else ''}"
        )


@dataclass
class Row:
    """One experiment x task (x other swept values) of a sweep: its runs differ only by seed."""

    sweep: str
    experiment: str
    task: str
    overrides: str  # the swept values other than experiment, task and seed (e.g. method.r=4)
    seeds: int
    shape: Shape
    epochs: float
    max_steps: int
    train_size: int
    steps: int = 0

    def steps_per_run(self) -> int:
        if self.max_steps > 0:
            return self.max_steps
        return math.ceil(self.epochs * math.ceil(self.train_size / self.shape.batch))


def compose_run(overrides: list[str]) -> Any:
    """The validated run (`lora.config.RunSpec`) these overrides make (inside `hydra_conf()`)."""
    from hydra import compose

    from lora.config import validate

    return validate(compose("config", overrides=overrides))


def hydra_conf() -> Any:
    """The context in which `compose_run` reads conf/."""
    from hydra import initialize_config_dir

    return initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3")


def sweep_rows(sweep: str, make: str = "make", log: Callable[[str], None] = print) -> list[Row]:
    """One row per experiment x task (x other swept values) of `sweep`, its seeds counted."""
    rows: dict[tuple[str, ...], Row] = {}
    with hydra_conf():
        for command in sweep_commands(sweep, make):
            for job in expand(command):
                seedless = [o for o in job if not o.startswith("seed=")]
                key = tuple(sorted(seedless))
                if key in rows:
                    rows[key].seeds += 1
                    continue
                spec = compose_run(seedless)
                c = spec.cfg
                if c.task.name not in TRAIN_SIZES:
                    raise ConfigError(
                        f"no training-set size for task {c.task.name!r}: add it to lora.plan.TRAIN_SIZES"
                    )
                size = TRAIN_SIZES[c.task.name][0]
                if c.task.max_train_samples:
                    size = min(size, c.task.max_train_samples)
                kind = "causal_lm" if c.task.kind == "nlg" else "classification"
                method_cfg = json.dumps(asdict(spec.method_cfg), sort_keys=True)
                shape = Shape(c.model.label, kind, spec.method, method_cfg, c.train.max_length, c.train.batch_size,
                              c.train.bf16, c.train.attn_implementation)  # fmt: skip
                other = " ".join(o for o in seedless if not o.startswith(("experiment=", "task=")))
                rows[key] = Row(sweep, c.experiment, c.task.name, other, 1, shape, float(c.train.epochs),
                                c.train.max_steps, size)  # fmt: skip
    out = list(rows.values())
    for r in out:
        r.steps = r.steps_per_run()
    log(f"{sweep}: {len(out)} rows, {sum(r.seeds for r in out)} runs")
    return out


# --- step times ----------------------------------------------------------------------------------------------------


@dataclass
class StepTime:
    """seconds: one optimizer step of the shape's global batch; how: measured how (full / depth-fit); parts: the
    measured pieces (seconds) it was built from."""

    seconds: float
    how: str
    parts: dict[str, float] = field(default_factory=dict)


def _parts(variant: Any, inputs: dict, steps: int, device: torch.device, bf16: bool) -> tuple[float, float]:
    """Seconds of forward + backward and of the AdamW step, the fastest of `steps` after one warm-up (other jobs
    only add time): wall clock on a GPU, the process's CPU time on a CPU (one torch thread: the computation's own
    cost)."""
    from lora.bench.timing import sync

    opt = variant.optimizer(1e-4)
    clock = time.perf_counter if device.type == "cuda" else time.process_time  # CPU: the process's own time
    fb, st = [], []
    for i in range(steps + 1):
        for p, trainable in variant.flags:
            p.requires_grad_(trainable)
        sync(device)
        t0 = clock()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = variant.model(**inputs).loss
        loss.backward()
        sync(device)
        t1 = clock()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if i:
            fb.append(t1 - t0)
            st.append(clock() - t1)
    return min(fb), min(st)


def _depths(shape: Shape) -> tuple[int, int]:
    """The two depths of the depth fit: 1 and 3 layers; past AdapterDrop's dropped layers; from ft_top2's top
    layers (the step time is linear in the depth from there on). Two layers apart, so that the per-layer slope,
    multiplied by the model's depth, is not mostly noise."""
    cfg = json.loads(shape.method_cfg)
    if shape.method == "adapter_d":  # no adapters in the first drop_layers layers
        return cfg["drop_layers"] + 1, cfg["drop_layers"] + 3
    if shape.method == "ft_top2":  # the top n_layers layers trained
        return cfg["n_layers"], cfg["n_layers"] + 2
    return 1, 3


def measure(
    shape: Shape,
    device: torch.device,
    steps: int,
    fit: bool,
    micro: int | None = None,
    log: Callable[[str], None] = print,
) -> StepTime:
    """The step time of `shape` on `device`.

    micro: the micro-batch measured (None: the global batch, halved on an out-of-memory error); the step is
    ceil(global / micro) x (forward + backward of a micro-batch) + the AdamW step, as gradient accumulation runs it.
    fit: measure shallow copies at two depths (`_depths`) and extrapolate both parts linearly to the model's depth;
    else the model as it is."""
    from lora import methods
    from lora.bench.harness import make_inputs, with_method
    from lora.models import build_config, build_model

    cfg = methods.method_config(shape.method, **json.loads(shape.method_cfg))
    depth = build_config(shape.model).num_hidden_layers
    size = min(micro or shape.batch, shape.batch)

    def at_depth(layers: int | None) -> tuple[float, float]:
        """(forward + backward of one micro-batch, AdamW step) at this depth (None: the model's own)."""
        nonlocal size
        over = {} if layers is None else {"num_hidden_layers": layers}
        base = build_model(shape.model, shape.kind, pretrained=False, device=device, overrides=over,
                           attn_implementation=shape.attn)  # fmt: skip
        v = with_method(base, shape.method, cfg)
        while True:
            try:
                return _parts(v, make_inputs(base, size, shape.seq, device), steps, device, shape.bf16)
            except torch.OutOfMemoryError:
                v.model.zero_grad(set_to_none=True)
                if size == 1:
                    raise
                size = max(1, size // 2)
                torch.cuda.empty_cache()
                log(f"  out of memory: micro-batch {size}")

    if fit:
        (l1, l2), parts = _depths(shape), {}
        sizes = []
        for layers in (l1, l2):
            parts[f"fb_L{layers}"], parts[f"opt_L{layers}"] = at_depth(layers)
            sizes.append(size)
        if (
            sizes[0] != sizes[1]
        ):  # the deeper copy ran out of memory: measure the shallow one again at its size
            parts[f"fb_L{l1}"], parts[f"opt_L{l1}"] = at_depth(l1)
        fb, opt = (max(a + (b - a) * (depth - l1) / (l2 - l1), min(a, b))
                   for a, b in ((parts[f"fb_L{l1}"], parts[f"fb_L{l2}"]), (parts[f"opt_L{l1}"], parts[f"opt_L{l2}"])))  # fmt: skip
        how = f"depth fit ({l1}, {l2} -> {depth} layers)"
    else:
        fb, opt = at_depth(None)
        parts, how = {"fb": fb, "opt": opt}, f"{depth} layers"
    accum = math.ceil(shape.batch / size)
    return StepTime(accum * fb + opt, f"{how}, {accum} x micro-batch {size}", parts)


# --- the plan --------------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    device: str
    rows: list[Row] = field(default_factory=list)
    times: dict[str, StepTime] = field(default_factory=dict)  # Shape.key -> its step time
    reused: set[str] = field(default_factory=set)
    seconds: float = 0.0

    def hours(self, r: Row) -> float:
        """Device-hours of all seeds of the row."""
        return r.seeds * r.steps * self.times[r.shape.key].seconds / 3600

    def sweep_hours(self) -> dict[str, tuple[int, int, float]]:
        """sweep -> (rows, runs, device-hours)."""
        out: dict[str, tuple[int, int, float]] = {}
        for r in self.rows:
            n, runs, h = out.get(r.sweep, (0, 0, 0.0))
            out[r.sweep] = (n + 1, runs + r.seeds, h + self.hours(r))
        return out


def read_times(path: Path) -> dict[str, StepTime]:
    """Step times of a plan CSV written before (its `table == "shapes"` rows)."""
    if not path.is_file():
        raise InputNotFound(
            f"--from-report {path}: no such file (a plan CSV, e.g. results/bench/gpu/plan.csv)"
        )
    frame = pd.read_csv(path)
    shapes = frame[frame["table"] == "shapes"]
    return {
        row["shape_key"]: StepTime(float(row["step_s"]), f"from {path.name}: {row['how']}")
        for _, row in shapes.iterrows()
    }


def make_plan(
    sweeps: Iterable[str],
    device: str = "auto",
    steps: int = 2,
    fit: bool | None = None,
    from_report: Path | None = None,
    micro: int | None = None,
    make: str = "make",
    log: Callable[[str], None] = print,
) -> Plan:
    """Every row of `sweeps` and the step time of each shape: from `from_report` where it has it, else measured
    (`measure`; fit default: yes; micro default: 1 on a CPU, the global batch on a GPU)."""
    from lora.bench.timing import resolve_device

    t0 = time.perf_counter()
    dev = resolve_device(device)
    plan = Plan(str(dev))
    for s in sweeps:
        if s not in SWEEPS:
            raise ConfigError(f"unknown sweep {s!r}: choose from {', '.join(SWEEPS)}")
        plan.rows += sweep_rows(s, make, log)
    if from_report is not None:
        old = read_times(from_report)
        plan.times.update({k: v for k, v in old.items() if any(r.shape.key == k for r in plan.rows)})
        plan.reused = set(plan.times)
    fit = True if fit is None else fit
    micro = (1 if dev.type == "cpu" else None) if micro is None else micro
    shapes = {r.shape.key: r.shape for r in plan.rows}
    todo = [s for k, s in shapes.items() if k not in plan.times]
    how = ("depth fit" if fit else "full depth") + (f", micro-batch {micro}" if micro else ", global batch")
    log(f"{len(shapes)} shapes, {len(todo)} to measure on {dev} ({how})")
    for i, shape in enumerate(sorted(todo, key=lambda s: (s.model, s.seq, s.method)), 1):
        t = time.perf_counter()
        plan.times[shape.key] = measure(shape, dev, steps, fit, micro, log)
        log(
            f"[{i}/{len(todo)}] {shape.label()}: {plan.times[shape.key].seconds:.3f} s/step ({time.perf_counter() - t:.0f} s)"
        )
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    plan.seconds = time.perf_counter() - t0
    return plan


def fmt_hours(h: float) -> str:
    return f"{h:,.1f}" if h >= 10 else f"{h:,.2f}" if h >= 0.1 else f"{h:,.3f}"


def report(plan: Plan, command: str) -> tuple[str, pd.DataFrame]:
    """The Markdown and the CSV frame (tables `sweeps`, `runs`, `shapes`, `sizes`)."""
    from lora.bench.timing import load_average, machine_lines

    sweeps = pd.DataFrame([
        {"sweep": s, "rows": n, "runs": runs, "device_hours": h, "device_days": h / 24}
        for s, (n, runs, h) in plan.sweep_hours().items()
    ])  # fmt: skip
    runs = pd.DataFrame([
        {"sweep": r.sweep, "experiment": r.experiment, "task": r.task, "overrides": r.overrides, "seeds": r.seeds,
         "model": r.shape.model, "method": r.shape.method, "global_batch": r.shape.batch, "max_length": r.shape.seq,
         "bf16": r.shape.bf16, "epochs": r.epochs, "max_steps": r.max_steps, "train_size": r.train_size,
         "steps_per_run": r.steps, "step_s": plan.times[r.shape.key].seconds,
         "hours_per_run": r.steps * plan.times[r.shape.key].seconds / 3600, "device_hours": plan.hours(r)}
        for r in plan.rows
    ])  # fmt: skip
    shape_rows = {r.shape.key: r.shape for r in plan.rows}
    shapes = pd.DataFrame([
        {"shape": s.label(), "step_s": plan.times[k].seconds, "how": plan.times[k].how,
         "reused": k in plan.reused, "shape_key": k, **{f"part_{n}": v for n, v in plan.times[k].parts.items()}}
        for k, s in shape_rows.items()
    ])  # fmt: skip
    sizes = pd.DataFrame(
        [{"task": t, "train_examples": n, "source": src} for t, (n, src) in TRAIN_SIZES.items()]
    )
    show = lambda f: f.astype(str).to_markdown(index=False, disable_numparse=True)  # noqa: E731
    total = sweeps["device_hours"].sum() if len(sweeps) else 0.0
    summary = sweeps.assign(device_hours=[fmt_hours(h) for h in sweeps["device_hours"]],
                            device_days=[f"{d:,.2f}" for d in sweeps["device_days"]])  # fmt: skip
    per_run = runs[["sweep", "experiment", "task", "overrides", "seeds", "global_batch", "max_length", "epochs",
                    "train_size", "steps_per_run", "step_s", "hours_per_run", "device_hours"]].copy()  # fmt: skip
    per_run["step_s"] = [f"{v:,.3f}" for v in per_run["step_s"]]
    per_run["hours_per_run"] = [fmt_hours(v) for v in per_run["hours_per_run"]]
    per_run["device_hours"] = [fmt_hours(v) for v in per_run["device_hours"]]
    per_run["train_size"] = [f"{v:,}" for v in per_run["train_size"]]
    per_run["steps_per_run"] = [f"{v:,}" for v in per_run["steps_per_run"]]
    shapes_shown = shapes[["shape", "step_s", "how"]].assign(step_s=[f"{v:,.3f}" for v in shapes["step_s"]])
    dev = torch.device(plan.device)
    text = "\n\n".join([
        f"# Sweep plan: device-hours of every sweep target on {plan.device}",
        f"Made by: `{command}` (total {plan.seconds:.0f} s).",
        f"Device-hours of training, all sweeps listed: **{fmt_hours(total)}** ({total / 24:,.2f} device-days). "
        "Per run: steps = `train.max_steps` if set, else ceil(epochs x ceil(train examples / global batch)), "
        "`train.batch_size` being the global batch; hours = steps x the measured step time of the run's shape; "
        "summed over seeds and rows. Step times at the experiment's `max_length` (an upper bound: batches are "
        "padded to their longest example); evaluation and NLG decoding not included. The CSV beside this report "
        "holds every table; `--from-report` reuses its step times.",
        "## Sweeps",
        show(summary),
        "## Step time per shape",
        "*How*: *depth fit (l1, l2 -> L layers)* = measured on copies of l1 and l2 layers and extrapolated "
        "linearly to the model's L; *k x micro-batch m* = a step is k forward + backward passes of m examples "
        "(gradient accumulation) and one AdamW step. The CSV's `part_*` columns hold the measured parts (seconds).",
        show(shapes_shown),
        "## Runs",
        show(per_run),
        "## Training-set sizes",
        show(sizes.assign(train_examples=[f"{v:,}" for v in sizes["train_examples"]])),
        "## Machine",
        "\n".join(machine_lines(dev, torch.float32, load_average())),
    ]) + "\n"  # fmt: skip
    frames = [sweeps.assign(table="sweeps"), runs.assign(table="runs"), shapes.assign(table="shapes"),
              sizes.assign(table="sizes")]  # fmt: skip
    csv = pd.concat(frames, ignore_index=True)
    return text, csv[["table", *[c for c in csv.columns if c != "table"]]]


def write(plan: Plan, out: Path, command: str, log: Callable[[str], None] = print) -> Path:
    text, csv = report(plan, command)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    csv.to_csv(out.with_suffix(".csv"), index=False)
    log(f"wrote {out} and {out.with_suffix('.csv').name}")
    return out
