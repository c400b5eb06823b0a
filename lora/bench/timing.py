"""Timing and memory primitives under the benchmark harness (`lora.bench.harness`): interleaved repetitions, paired
ratios, peak tensor memory, the machine description.

Interleaving: every repetition ("round") runs each variant once, back to back, in an order rotated by one each
round, so slow drifts of a shared machine's load hit all variants alike. Ratios between variants are taken per
round and summarised by their median, which is robust to the rounds a burst of load spoils; the ratio of the
minima (best rounds) is reported beside it (`paired_ratio`). Each call is timed twice: wall clock, and the CPU
time the process used (see `Stats`).
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from torch import nn

from lora.errors import ConfigError

MiB = 2**20


@dataclass(frozen=True)
class Stats:
    """Samples of one variant, one per round, in round order: `samples` wall-clock seconds, `cpu` the CPU seconds
    the process used over the same calls (`time.process_time`, all threads).

    With one torch thread on a shared CPU, the CPU time is the compute's own cost, whatever the other jobs do;
    the wall clock adds the time the process waited for a core. (With several threads it also counts threads
    spinning at barriers; on CUDA it is only the host's share.)"""

    samples: tuple[float, ...]
    cpu: tuple[float, ...] = ()

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples)

    @property
    def std(self) -> float:
        """Sample standard deviation of the wall-clock samples (0 for a single sample)."""
        return statistics.stdev(self.samples) if len(self.samples) > 1 else 0.0

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu) if self.cpu else float("nan")

    def ms(self) -> str:
        """`mean ± std` of the wall-clock samples in milliseconds."""
        return f"{1e3 * self.mean:.1f} ± {1e3 * self.std:.1f}"


@dataclass(frozen=True)
class Ratio:
    """num / den of one clock. median, low, high: the median and range of the per-round ratios (both variants
    timed in the same round); of_minima: min(num) / min(den), the ratio of the best rounds. Other jobs on a shared
    machine only ever add time, so the best round is the closest to the unloaded cost (why `timeit` reports
    minima)."""

    median: float
    low: float
    high: float
    of_minima: float

    def __str__(self) -> str:
        return f"{self.median:.3f} (rounds {self.low:.3f}-{self.high:.3f}; of minima {self.of_minima:.3f})"


def resolve_device(device: str) -> torch.device:
    """`auto` -> cuda when available, else cpu; anything else as given (a clear error for cuda without a GPU)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but torch sees no CUDA GPU: use --device cpu")
    return dev


def sync(device: torch.device) -> None:
    """Wait for queued kernels (CUDA is asynchronous; CPU work is done when the call returns)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    fns: Mapping[str, Callable[[], object]],
    reps: int,
    device: torch.device,
    warmup: int = 1,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Stats]:
    """Time every function `reps` times, interleaved (one round = each once, order rotated by one per round),
    after `warmup` untimed rounds. Returns one `Stats` per name."""
    if reps < 1 or warmup < 0:
        raise ConfigError(f"need reps >= 1 and warmup >= 0, got reps={reps}, warmup={warmup}")
    names = list(fns)
    samples: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for i in range(warmup + reps):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            fns[name]()
            sync(device)
            if i >= warmup:
                samples[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
        if progress is not None:
            tag = f"warm-up {i + 1}/{warmup}" if i < warmup else f"round {i - warmup + 1}/{reps}"
            times = ", ".join(f"{n} {1e3 * samples[n][-1]:.0f} ms" for n in names if i >= warmup)
            progress(f"  {tag}" + (f": {times}" if times else ""))
    return {n: Stats(tuple(samples[n]), tuple(cpu[n])) for n in names}


def paired_ratio(num: Stats, den: Stats, clock: str = "wall") -> Ratio:
    """num / den of the `wall` or `cpu` clock: the median and range of the per-round ratios, and the ratio of the
    minima."""
    if clock not in ("wall", "cpu"):
        raise ConfigError(f"clock must be 'wall' or 'cpu', got {clock!r}")
    a, b = (num.samples, den.samples) if clock == "wall" else (num.cpu, den.cpu)
    if len(a) != len(b) or not a:
        raise ConfigError(f"cannot pair {len(a)} samples with {len(b)}")
    r = [x / y for x, y in zip(a, b, strict=True)]
    return Ratio(statistics.median(r), min(r), max(r), min(a) / min(b))


def set_threads(threads: int | None) -> None:
    """Set torch's intra-op threads (None: leave torch's default)."""
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak of the tensor bytes allocated by `fn` on `device` over those live when it starts (>= 0).

    CUDA: `torch.cuda.max_memory_allocated` minus the allocated bytes at the start. CPU: torch has no CPU allocator
    statistics, so `fn` runs under `torch.profiler` with `profile_memory=True`, which records every allocation and
    free of torch's CPU allocator; the running sum of those records, in time order, peaks at the answer. Memory
    that BLAS/oneDNN allocate internally (scratch buffers, outside torch's allocator) is not seen.
    """
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return max(torch.cuda.max_memory_allocated(device) - start, 0)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # The raw records (not `prof.events()`, which folds allocations into the ops that made them).
    records = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    records = [e for e in records if e.device_type() == torch._C._autograd.DeviceType.CPU]
    live = peak = 0
    for e in sorted(records, key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the given tensors (each storage counted once per tensor; pass distinct tensors)."""
    return sum(t.numel() * t.element_size() for t in tensors)


def parameter_bytes(model: nn.Module) -> int:
    return tensor_bytes(model.parameters())


def gradient_bytes(model: nn.Module) -> int:
    """Bytes the gradients of the trainable parameters take once backward has run (computed from shapes)."""
    return tensor_bytes(p for p in model.parameters() if p.requires_grad)


def optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of the optimizer's state tensors (AdamW: exp_avg, exp_avg_sq and a scalar step per parameter)."""
    return tensor_bytes(v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor))


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def load_average() -> str:
    """The 1/5/15-minute load averages, as `uptime` prints them."""
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unavailable"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_lines(device: torch.device, dtype: torch.dtype, load_at_start: str) -> list[str]:
    """Markdown bullet lines describing where and with what a benchmark ran; `load_at_start`: `load_average()`
    when the run began (the end's is read here)."""
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return [
        f"- device: {device.type} ({hw}); {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}",
        f"- dtype: {str(dtype).removeprefix('torch.')}",
        f"- python {sys.version.split()[0]}, torch {torch.__version__}, transformers "
        f"{package_version('transformers')}, peft {package_version('peft')}",
        f"- load average (1/5/15 min, as `uptime` prints it) at the start of the run: {load_at_start}; at its end: "
        f"{load_average()} (a shared machine: other jobs ran beside this one)",
    ]


def threads_line(device: torch.device) -> str:
    """A markdown bullet: torch's CPU threads, and why one thread on a shared CPU."""
    n = torch.get_num_threads()
    if device.type != "cpu":
        return f"- torch CPU threads: {n} (host side); on a GPU the wall-clock columns are the measurement"
    line = f"- torch CPU threads: {n}"
    if n == 1:
        line += (
            ". One thread because the CPU is shared: a second intra-op thread stalls at every barrier whenever "
            "another job takes its core (trial runs here, under load: a roberta-base LoRA step took 16-27 s with "
            "2 threads, 5-9 s with 1). With one thread the process CPU time is the computation's own cost, "
            "which other jobs barely change: the CPU-time ratios are the steadier estimate on a shared machine"
        )
    return line


def pct_over(ratio: float) -> str:
    """A time ratio as the percentage over the reference: 1.052 -> "+5.2%"."""
    return f"{100 * (ratio - 1):+.1f}%"
