"""Smoke tests of lora/bench/: each benchmark runs end to end on a tiny model with one repetition and writes its
report; the timing and memory helpers are checked on inputs whose answers are known. No speed is asserted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lora.bench import latency, lora_core
from lora.bench.timing import Stats, interleaved, paired_ratio, peak_bytes
from lora.models import build_model

from .helpers import QUIET, has_row, report_csv

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
VIEW_OPS = {"aten::view", "aten::reshape", "aten::_reshape_alias", "aten::_unsafe_view"}


# --- timing helpers ------------------------------------------------------------------------------------------------


def test_interleaved_rotates_the_order_and_skips_warmup() -> None:
    calls: list[str] = []
    fns = {n: (lambda n=n: calls.append(n)) for n in "abc"}
    stats = interleaved(fns, reps=2, device=CPU, warmup=1)
    assert calls == list("abcbcacab")  # round i starts with variant i mod 3
    assert all(len(s.samples) == len(s.cpu) == 2 and min(s.samples + s.cpu) >= 0 for s in stats.values())


def test_stats_and_paired_ratio() -> None:
    s = Stats((1.0, 2.0, 4.0), cpu=(2.0, 2.0, 2.0))
    assert (s.mean, s.median, s.min, s.cpu_median) == (7 / 3, 2.0, 1.0, 2.0)
    assert s.std == pytest.approx(1.527525, abs=1e-6)  # sample std of [1, 2, 4] by hand: sqrt(7/3)
    other = Stats((1.0, 1.0, 0.5), cpu=(1.0, 4.0, 1.0))
    r = paired_ratio(s, other)  # per-round wall ratios 1, 2, 8; minima 1 / 0.5
    assert (r.median, r.low, r.high, r.of_minima) == (2.0, 1.0, 8.0, 2.0)
    c = paired_ratio(s, other, clock="cpu")  # per-round CPU ratios 2, 0.5, 2; minima 2 / 1
    assert (c.median, c.low, c.high, c.of_minima) == (2.0, 0.5, 2.0, 2.0)
    with pytest.raises(ValueError, match="cannot pair"):
        paired_ratio(s, Stats((1.0,)))
    with pytest.raises(ValueError, match="clock must be"):
        paired_ratio(s, other, clock="gpu")


def test_peak_bytes_on_cpu_counts_every_live_tensor() -> None:
    def two_tensors() -> None:
        x = torch.ones(2**20)  # 4 MiB of float32
        y = x + 1  # another 4 MiB while x is alive
        del x, y

    # Both 4 MiB tensors, plus a few bytes of small tensors torch makes along the way (12 B with torch 2.13).
    assert 2 * 4 * 2**20 <= peak_bytes(two_tensors, CPU) < 2 * 4 * 2**20 + 1024


# --- LoRA core micro-benchmark --------------------------------------------------------------------------------------


def test_lora_core_runs_and_writes_its_report(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    cfg = lora_core.CoreConfig(model="tiny-roberta", batch=2, seq=8, reps=1, fwd_reps=1)
    out = tmp_path / "core.md"
    report = lora_core.run(cfg, out, command="python experiments/bench.py lora-core --test", log=QUIET)
    ours, peft, full = lora_core.OURS, lora_core.PEFT, lora_core.FULL
    assert list(report.step) == [ours, peft, full]
    assert all(len(s.samples) == 1 and s.mean > 0 for s in [*report.step.values(), *report.forward.values()])
    assert report.trainable[ours] == report.trainable[peft] < report.trainable[full]
    for name, mem in report.memory.items():
        assert mem.extra >= mem.grads > 0, name  # the gradients are alive at the end of the step
    assert report.memory[full].grads == report.memory[full].params  # every parameter has a gradient
    assert (
        set(report.ratios)
        == set(report.cpu_ratios)
        == {
            "step time, ours / peft",
            "step time, ours / full FT",
            "forward latency, merged / base",
        }
    )
    assert all(0 < r.low <= r.median <= r.high and r.of_minima > 0 for r in report.ratios.values())
    text = out.read_text()
    assert "`python experiments/bench.py lora-core --test`" in text
    assert has_row(text, "LoRA (peft)", "3,170") and "## Ratios" in text and "load average" in text
    csv = report_csv(out)
    assert set(csv["table"]) == {"step", "forward", "ratios"}
    step = csv[csv["table"] == "step"].set_index("variant")
    assert step.loc["LoRA (peft)", "trainable"] == 3170
    assert step.loc["full FT", "peak_bytes"] == report.memory[full].peak


@pytest.mark.parametrize("name", ["tiny-roberta", "tiny-gpt2"])
def test_merged_lora_runs_exactly_the_base_models_ops(name: str) -> None:
    """Why merged LoRA has the base model's latency (Section 4.1): one forward runs the same aten ops, as many
    times, on the same shapes (both profiled with torch.profiler). View ops are left out: on GPT-2 our `Conv1D`
    wrapper flattens its input with `reshape` where transformers' `Conv1D` uses `view`, and on a contiguous
    input both return a view without copying (no compute)."""
    from torch.profiler import ProfilerActivity, profile

    kind = "causal_lm" if name == "tiny-gpt2" else "classification"
    base = build_model(name, kind).eval()
    merged = latency.merged_lora(base, r=4, alpha=8)[0].eval()
    ids = torch.randint(5, 512, (2, 8), generator=torch.Generator().manual_seed(0))

    def ops(model: torch.nn.Module) -> dict[tuple[str, str], int]:
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof, torch.inference_mode():
            model(input_ids=ids)
        events = prof.key_averages(group_by_input_shape=True)
        return {(e.key, repr(e.input_shapes)): e.count for e in events if e.key not in VIEW_OPS}

    assert ops(merged) == ops(base)


def test_lora_core_refuses_a_fused_model() -> None:
    pytest.importorskip("peft")
    base = build_model("tiny-gpt2", "causal_lm")
    with pytest.raises(ValueError, match="fuses q, k and v"):
        lora_core.with_peft_lora(base, lora_core.CoreConfig(model="tiny-gpt2"))


# --- Table 1 latency ------------------------------------------------------------------------------------------------


def test_latency_runs_and_writes_table1(tmp_path: Path) -> None:
    settings = (latency.Setting("A", 1, 16, 2000, 32, 512), latency.Setting("C", 1, 8, 600, 1, 128))
    cfg = latency.LatencyConfig(settings, model="tiny-gpt2", reps=1, warmup=0)
    out = tmp_path / "table1.md"
    report = latency.run(cfg, out, command="python experiments/bench.py latency --test", log=QUIET)
    assert [r.setting.name for r in report.results] == ["A", "C"]
    for res in report.results:
        assert list(res.stats) == [latency.BASE, latency.LORA, latency.ADAPTER_L, latency.ADAPTER_H]
        assert (
            set(res.overhead) == set(res.cpu_overhead) == {latency.LORA, latency.ADAPTER_L, latency.ADAPTER_H}
        )
        for name, m in res.bottleneck.items():  # m's count is the nearest to the budget
            method = latency.ADAPTER_METHODS[name]
            near = [latency.adapter_params("tiny-gpt2", method, k) for k in (max(m - 1, 1), m + 1)]
            assert all(
                abs(res.params[name] - res.setting.params) <= abs(n - res.setting.params) for n in near
            )
    text = out.read_text()
    assert "`python experiments/bench.py latency --test`" in text
    assert "1449.4 ± 0.8" in text and "+30.3%" in text  # the paper's cells, read from the CSV
    assert list(report_csv(out)["variant"][:4]) == [
        latency.BASE,
        latency.LORA,
        latency.ADAPTER_L,
        latency.ADAPTER_H,
    ]


def test_bottleneck_for_gpt2_medium_follows_the_papers_count() -> None:
    # |Theta| per layer (d = 1024, 24 layers): AdapterL 2dm + m + d + 2d (its LayerNorm); AdapterH two adapters
    # 2 (2dm + m + d) plus the layer's two trained LayerNorms 4d (Section 5.1). Nearest m to 0.5M and 11M by hand.
    assert latency.bottleneck_for("gpt2-medium", "adapter_l", 500_000) == (
        9,
        24 * (2 * 1024 * 9 + 9 + 3 * 1024),
    )
    assert latency.bottleneck_for("gpt2-medium", "adapter_h", 11_000_000) == (
        110,
        24 * (2 * (2 * 1024 * 110 + 110 + 1024) + 4 * 1024),
    )


def test_settings_for_the_paper_and_the_cpu() -> None:
    full, note = latency.settings_for("full")
    assert [(s.name, s.batch, s.seq, s.params) for s in full] == [
        ("A", 32, 512, 500_000),
        ("B", 16, 256, 11_000_000),
        ("C", 1, 128, 11_000_000),
    ]  # results/paper/table1_latency.csv
    cpu, note = latency.settings_for("cpu")
    assert [(s.batch, s.seq) for s in cpu] == [(1, 512), (1, 256), (1, 128)]
    assert "A 32x512 -> 1x512" in note and "C" not in note.split("(")[1]
    with pytest.raises(ValueError, match="unknown latency mode"):
        latency.settings_for("gpu")
    with pytest.raises(FileNotFoundError, match="table1_latency.csv"):
        latency.read_paper(Path("/nonexistent/table1_latency.csv"))


def test_parse_count() -> None:
    assert [latency.parse_count(x) for x in ("0.5M", "11M", "20k", "1234")] == [
        500_000,
        11_000_000,
        20_000,
        1234,
    ]
    with pytest.raises(ValueError, match="cannot read the parameter count 'lots'"):
        latency.parse_count("lots")


# --- command line ---------------------------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error for a missing GPU")
def test_cli_reports_a_missing_gpu_in_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run(
        [sys.executable, "experiments/bench.py", "latency", "--device", "cuda"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: device 'cuda' requested but torch sees no")
