"""Smoke tests of the fast-path, MFU and trace benchmarks and of the FLOPs formula (lora/bench/{fast_path,mfu,trace,
flops}.py) on tiny models: each runs end to end with one repetition and writes its report and CSV; the formula is
checked against numbers worked out by hand and against torch's FlopCounterMode. No speed is asserted."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from lora.bench import fast_path, flops, mfu, trace
from lora.bench.harness import make_inputs, with_method
from lora.methods.lora import LoRAConfig
from lora.models import build_model

from .helpers import QUIET, has_row, report_csv

GLUE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "glue"


# --- the FLOPs formula ----------------------------------------------------------------------------------------------


def test_step_flops_by_hand_on_tiny_gpt2() -> None:
    """tiny-gpt2: d 32, 2 layers, vocab 512. Per layer c_attn 32x96 + attn c_proj 32x32 + c_fc 32x128 + mlp c_proj
    128x32 = 12,288 weights; x 2 layers + the LM head 512 x 32 = N = 40,960. LoRA r=8 on q, v: 4 matrices of 8 x 32
    per layer = N_a = 2,048. T = 2 x 16; A = 4 L s d T = 4 x 2 x 16 x 32 x 32 = 131,072."""
    base = build_model("tiny-gpt2", "causal_lm")
    full = with_method(base, "full")
    for p, t in full.flags:
        p.requires_grad_(t)
    f = flops.step_flops(full.model, 2, 16)
    assert (f.n, f.n_a, f.n_t, f.attention) == (40_960, 0, 40_960, 131_072)
    assert f.train == 6 * 40_960 * 32 + 3 * 131_072 == 8_257_536
    lora = with_method(base, "lora", LoRAConfig(r=8, alpha=8, targets=["q", "v"]))
    for p, t in lora.flags:
        p.requires_grad_(t)
    g = flops.step_flops(lora.model, 2, 16)
    assert (g.n, g.n_a, g.n_t) == (40_960, 2_048, 2_048)
    assert g.train == 4 * (40_960 + 2_048) * 32 + 2 * 2_048 * 32 + 3 * 131_072 == 6_029_312
    assert "6 N T + 3 A" in f.formula() and "4 (N + N_a) T + 2 N_t T + 3 A" in g.formula()


@pytest.mark.parametrize(("name", "method", "tol"), [("gpt2-medium", "full", 0.01), ("gpt2-medium", "lora", 0.01),
                                                     ("roberta-base", "full", 0.02), ("roberta-base", "lora", 0.02)])  # fmt: skip
def test_formula_matches_the_flop_counter(name: str, method: str, tol: float) -> None:
    """The formula against FlopCounterMode on the real shapes (meta device: nothing computed)."""
    counted = mfu.counted_flops(mfu.MfuShape(name, 2, 128), method)
    base = build_model(
        name, "causal_lm" if "gpt2" in name else "classification", pretrained=False, device="meta"
    )
    v = with_method(base, method, mfu.configure(name, method))
    for p, t in v.flags:
        p.requires_grad_(t)
    assert counted is not None
    assert counted == pytest.approx(flops.step_flops(v.model, 2, 128).train, rel=tol)


def test_peak_flops() -> None:
    assert flops.peak_flops(torch.device("cpu"), torch.float32, 989.4) == pytest.approx(989.4e12)
    assert flops.peak_flops(torch.device("cpu"), torch.float32) is None
    assert flops.PEAK_TFLOPS["H200"]["bfloat16"] == 989.4
    assert flops.measured_matmul_flops(torch.device("cpu"), torch.float32, n=64, reps=1) > 0


# --- benchmarks -----------------------------------------------------------------------------------------------------


def test_fast_path_runs_every_pair_and_writes_its_report(tmp_path: Path) -> None:
    pairs = tuple(p for p in fast_path.PAIRS if p != "compile")  # compile: tests/test_fast_path.py (~40 s)
    cfg = fast_path.FastPathConfig(
        encoder="tiny-roberta", decoder="tiny-gpt2", layers=None, batch=2, seq=16, dec_batch=2, dec_seq=16,
        pairs=pairs, reps=1, warmup=0, glue_dir=str(GLUE) if GLUE.is_dir() else None,
    )  # fmt: skip
    out = tmp_path / "fast_path.md"
    report = fast_path.run(cfg, out, command="python experiments/bench.py fast-path --test", log=QUIET)
    assert [r.pair for r in report.pairs] == list(pairs)
    for r in report.pairs:
        assert set(r.stats) == {"off", "on"} and r.ratio.median > 0 and r.flops > 0
    text = out.read_text()
    assert "`python experiments/bench.py fast-path --test`" in text
    assert has_row(text, "fused_qv", "always on (FusedLoRA.forward)")
    csv = report_csv(out)
    rows = csv[csv["table"] == "pairs"]
    assert list(rows["pair"]) == list(pairs) and (rows["mfu_on"] > 0).all()
    if GLUE.is_dir():
        groups = csv[csv["table"] == "group_by_length"]
        assert (groups["grouped_tokens"] <= groups["random_tokens"]).all() and len(groups) >= 5


def test_former_forwards_equal_the_current_ones() -> None:
    """The benchmark's "off" sides compute what the "on" sides do (the former forwards, kept for the comparison)."""
    model = build_model("tiny-gpt2", "causal_lm").eval()
    v = with_method(model, "lora", LoRAConfig(r=4, alpha=8, targets=["q", "v", "o"]))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in v.params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    ids = torch.randint(5, 512, (2, 8), generator=g)
    with torch.no_grad():
        on = v.model(input_ids=ids).logits
        fast_path._patched(v.model, fast_path.FusedLoRA, fast_path.former_fused_forward)
        fast_path._patched(v.model, fast_path.LoRALinear, fast_path.former_linear_forward)
        off = v.model(input_ids=ids).logits
    torch.testing.assert_close(on, off, atol=1e-5, rtol=1e-5)


def test_fast_path_config_is_validated() -> None:
    with pytest.raises(ValueError, match="unknown fast-path pair"):
        fast_path.FastPathConfig(pairs=("warp",))
    assert (
        fast_path.FULL.layers is None
        and fast_path.FULL.amp
        and (fast_path.FULL.batch, fast_path.FULL.seq) == (16, 512)
    )


def test_mfu_runs_and_prints_its_formula(tmp_path: Path) -> None:
    out = tmp_path / "mfu.md"
    report = mfu.run(mfu.QUICK, out, command="python experiments/bench.py mfu --test", log=QUIET)
    assert [(r.shape.model, r.method) for r in report.rows] == [
        ("tiny-roberta", "full"), ("tiny-roberta", "lora"), ("tiny-gpt2", "full"), ("tiny-gpt2", "lora"),
    ]  # fmt: skip
    text = out.read_text()
    assert "6 N T + 3 A" in text and "4 N T + 6 N_a T + 3 A" in text and "measured: a 2048 x 2048" in text
    csv = report_csv(out)
    assert (csv["mfu"] > 0).all() and csv["formula"].str.contains("TFLOP").all()
    assert [s.model for s in mfu.PAPER_SHAPES] == [
        "roberta-base",
        "roberta-large",
        "gpt2-medium",
        "gpt2-large",
    ]


def test_trace_writes_chrome_traces_and_top_operators(tmp_path: Path) -> None:
    out = tmp_path / "trace.md"
    report = trace.run(trace.QUICK, out, command="python experiments/bench.py trace --test", log=QUIET)
    assert set(report.files) == {("tiny-roberta", "lora"), ("tiny-roberta", "full")}
    for path in report.files.values():
        events = json.loads(gzip.decompress(path.read_bytes()))["traceEvents"]
        assert any(e.get("name", "").startswith("aten::") for e in events)
    text = out.read_text()
    assert "## tiny-roberta (2 x 16), lora" in text and "ProfilerStep" not in text
    assert set(report_csv(out)["table"]) == {"tiny-roberta/lora", "tiny-roberta/full"}


def test_make_inputs_labels_by_kind() -> None:
    cls = make_inputs(build_model("tiny-roberta", "classification"), 2, 4, torch.device("cpu"))
    lm = make_inputs(build_model("tiny-gpt2", "causal_lm"), 2, 4, torch.device("cpu"))
    assert cls["labels"].shape == (2,) and torch.equal(lm["labels"], lm["input_ids"])
