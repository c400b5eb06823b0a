"""Smoke tests of the training, storage, figure5 and cost benchmarks (lora/bench/): each runs end to end on tiny
models with one repetition and writes its report (and figure); byte counts are checked against values worked out
by hand. No speed is asserted."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from lora.bench import cost, figure5, storage, training
from lora.models import build_model

from .helpers import QUIET, has_row, report_csv

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --- training -------------------------------------------------------------------------------------------------------


def test_training_runs_every_method_and_writes_its_report(tmp_path: Path) -> None:
    cfg = training.TrainingConfig(models=("tiny-roberta", "tiny-gpt2"), batch=2, seq=8, reps=1)
    out = tmp_path / "training.md"
    report = training.run(cfg, out, command="python experiments/bench.py training --test", log=QUIET)
    roberta, gpt2 = report.results
    assert list(roberta.step) == [m for m in training.TRAINING_METHODS if m != "prefix_layer"]
    assert "prefix_layer" in roberta.skipped and "roberta" in roberta.skipped["prefix_layer"]
    assert list(gpt2.step) == list(training.TRAINING_METHODS)  # prefix_layer runs on GPT-2
    for res in report.results:
        full = res.memory["full"]
        n_tensors = sum(1 for _ in build_model(res.model, training.model_kind(res.model)).parameters())
        # Full FT: a gradient per parameter; AdamW: exp_avg + exp_avg_sq (2x the parameters) + a 4-byte fp32 step
        # scalar per parameter tensor (torch.optim.AdamW's state layout).
        assert full.grads == full.params
        assert full.optimizer == 2 * full.params + 4 * n_tensors
        for m, mem in res.memory.items():
            assert res.exact(m) == mem.params + mem.grads + mem.optimizer
            assert mem.extra >= mem.grads > 0, m  # the gradients are alive inside the step
            assert len(res.step[m].samples) == 1 and res.step[m].min > 0
            if m != "full":
                assert res.exact(m) < res.exact("full") and res.trainable[m] < res.trainable["full"]
        assert res.time_ratio["full"].median == 1.0
    # LoRA r=8 on q, v of a 2-layer, 32-wide model: 2 layers x 2 matrices x 8 x (32 + 32) = 2048, plus the head
    # (dense 32x32 + 32, out_proj 2x32 + 2 = 1,122) for the classifier; GPT-2 has no task head.
    assert roberta.trainable["lora"] == 2048 + 1122 and gpt2.trainable["lora"] == 2048
    text = out.read_text()
    assert "`python experiments/bench.py training --test`" in text
    assert "## tiny-roberta" in text and "## tiny-gpt2" in text and "load average" in text
    assert has_row(text, "lora", "r=8 alpha=8.0 targets=q,v", "3,170")
    assert "prefix_layer: not run (prefix_layer supports gpt2" in text
    csv = report_csv(out)
    assert set(csv["table"]) == {"tiny-roberta", "tiny-gpt2"}
    lora = csv[(csv["table"] == "tiny-roberta") & (csv["method"] == "lora")].iloc[0]
    assert lora["trainable"] == 3170 and lora["exact_bytes"] == roberta.exact("lora")


def test_training_config_is_validated() -> None:
    with pytest.raises(ValueError, match="must include 'full'"):
        training.TrainingConfig(methods=("lora",))
    with pytest.raises(ValueError, match="unknown method 'loraa'"):
        training.TrainingConfig(methods=("full", "loraa"))
    with pytest.raises(ValueError, match="batch must be >= 1, got 0"):
        training.TrainingConfig(batch=0)
    with pytest.raises(ValueError, match="unknown model 'gpt5'"):
        training.TrainingConfig(models=("gpt5",))


def test_configure_follows_the_papers_rows() -> None:
    # conf/method/adapter_h_0.8m.yaml (RoBERTa-large AdptH 0.8M) and conf/method/lora_gpt2.yaml.
    h = training.configure("roberta-large", "adapter_h")
    assert (h.bottleneck, h.train_norms) == (8, False)
    assert training.config_label(training.configure("gpt2-medium", "lora")) == "r=4 alpha=32 targets=q,v"
    assert training.configure("tiny-bert", "adapter_p").bottleneck == 64  # no paper row: the defaults
    assert training.config_label(training.configure("roberta-base", "full")) == "-"


# --- storage --------------------------------------------------------------------------------------------------------


def test_storage_counts_match_the_files_written(tmp_path: Path) -> None:
    cfg = storage.StorageConfig(models=("tiny-roberta", "tiny-gpt2"), verify=("tiny-roberta", "tiny-gpt2"))
    out = tmp_path / "storage.md"
    report = storage.run(cfg, out, command="python experiments/bench.py storage --test", log=QUIET)
    rows = {(r.model, r.method): r for r in report.rows}
    assert ("tiny-roberta", "prefix_layer") in report.skipped and ("tiny-gpt2", "prefix_layer") in rows
    for r in report.rows:
        assert r.written == (None if r.method == "full" else r.checkpoint_bytes)  # run() raises on a mismatch
        assert r.method_bytes <= r.checkpoint_bytes
        assert r.ratio > 1 if r.method != "full" else r.checkpoint_bytes >= r.full_bytes  # data + JSON header
    lora = rows["tiny-gpt2", "lora"]
    # 2,048 fp32 LoRA parameters = 8,192 bytes of data plus the safetensors header (8 tensors: 832 bytes).
    assert (lora.trainable, lora.checkpoint_bytes, lora.method_bytes) == (2048, 9024, 9024)
    assert lora.full_bytes == 4 * 50_048  # tiny-gpt2's parameters (tied LM head counted once)
    text = out.read_text()
    assert "`python experiments/bench.py storage --test`" in text and "## GPT-3 175B" in text
    assert "18,874,368 parameters" in text
    csv = report_csv(out).set_index(["model", "method"])
    assert csv.loc[("tiny-gpt2", "lora"), "checkpoint_bytes"] == 9024


def test_gpt3_lora_is_the_papers_arithmetic() -> None:
    g = storage.Gpt3LoRA()
    assert g.params == 96 * 2 * 4 * (12288 + 12288) == 18_874_368  # L x (W_q, W_v) x r x (d + d)
    assert g.bytes == 37_748_736 and g.full_bytes == 350e9
    assert round(g.ratio) == 9272  # 350e9 / 37,748,736: the paper's "roughly 10,000x"


def test_storage_config_and_units() -> None:
    with pytest.raises(ValueError, match="verify"):
        storage.StorageConfig(models=("tiny-gpt2",), verify=("tiny-bert",))
    assert [storage.human(n) for n in (512, 1536, 3 * 2**20, 5 * 2**30)] == [
        "512 B",
        "1.5 KiB",
        "3.0 MiB",
        "5.0 GiB",
    ]


# --- figure 5 -------------------------------------------------------------------------------------------------------


def test_figure5_runs_the_grid_and_draws_it(tmp_path: Path) -> None:
    cfg = figure5.Figure5Config(
        model="tiny-gpt2", batches=(1, 2), seqs=(8, 16), bottlenecks=(2, 4), layers=1, reps=1, warmup=0
    )
    out, png = tmp_path / "figure5.md", tmp_path / "figure5.png"
    report = figure5.run(
        cfg, out, command="python experiments/bench.py figure5 --test", log=QUIET, figure=png
    )
    assert [(c.batch, c.seq) for c in report.cells] == [(1, 8), (2, 8), (1, 16), (2, 16)]
    names = [figure5.LORA] + [figure5.variant_name(a, m) for a in ("AdapterL", "AdapterH") for m in (2, 4)]
    assert all(list(c.overhead) == names for c in report.cells)
    assert report.n_layers == 1
    # AdapterL per layer: 2 d m + m + d + 2 d (its LayerNorm), d = 32, m = 2 -> 226 (lora/methods/adapters.py).
    assert report.params[figure5.variant_name("AdapterL", 2)] == 2 * 32 * 2 + 2 + 32 + 64
    assert png.read_bytes()[:8] == PNG_MAGIC
    text = out.read_text()
    assert "`python experiments/bench.py figure5 --test`" in text and "the grid is reduced" in text
    assert "Merged LoRA / base" in text and "![Figure 5](figure5.png)" in text
    assert len(report_csv(out)) == 4 * len(names)  # one row per cell and variant


def test_figure5_config_is_validated() -> None:
    with pytest.raises(ValueError, match="batches must be a non-empty list"):
        figure5.Figure5Config(batches=())
    with pytest.raises(ValueError, match="layers must be >= 1"):
        figure5.Figure5Config(layers=0)
    assert figure5.FULL.layers is None and figure5.FULL.batches == (1, 2, 4, 8, 16, 32)


# --- cost curve -----------------------------------------------------------------------------------------------------


def test_cost_sweeps_rank_and_width(tmp_path: Path) -> None:
    cfg = cost.CostConfig(
        model="tiny-gpt2",
        layers=1,
        widths=(32, 64),
        ranks=(1, 4),
        width_rank=2,
        head_dim=16,
        batch=1,
        seq=8,
        reps=1,
    )
    assert [p.name for p in cost.points(cfg)] == [
        "d=64 LoRA r=1", "d=64 LoRA r=2", "d=64 LoRA r=4", "d=64 full FT", "d=32 LoRA r=2", "d=32 full FT",
    ]  # fmt: skip
    out, png = tmp_path / "cost.md", tmp_path / "cost.png"
    report = cost.run(cfg, out, command="python experiments/bench.py cost --test", log=QUIET, figure=png)
    for r in (1, 2, 4):  # 1 layer x (W_q, W_v) x r x (d + d), d = 64
        assert report.trainable[cost.Point(64, r)] == 2 * r * 128
    for p in report.step:
        n = report.trainable[p]
        # parameters + gradients + exp_avg + exp_avg_sq = 16 bytes each, plus a 4-byte step per tensor
        assert 16 * n < report.trainable_bytes(p) <= 16 * n + 4 * 64
    assert report.vs_full[cost.Point(32, None)].median == 1.0
    assert png.read_bytes()[:8] == PNG_MAGIC
    text = out.read_text()
    assert "`python experiments/bench.py cost --test`" in text and "## Rank sweep (d = 64)" in text
    csv = report_csv(out)
    assert sorted(csv[csv["table"] == "rank"]["r"].fillna(0).astype(int)) == [0, 1, 2, 4]  # 0: full FT


def test_cost_config_is_validated() -> None:
    with pytest.raises(ValueError, match="not a GPT-2 model"):
        cost.CostConfig(model="roberta-base")
    with pytest.raises(ValueError, match="multiples of head_dim=64"):
        cost.CostConfig(widths=(100,))


# --- command line ---------------------------------------------------------------------------------------------------


def _bench_cli() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_cli", ROOT / "experiments" / "bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_options_and_report_paths(capsys: pytest.CaptureFixture[str]) -> None:
    cli = _bench_cli()
    for argv, message in [
        (["storage", "--gpu-full"], "--gpu-full applies to the training benchmark only"),
        (["training", "--full"], "--full applies to the latency, figure5, cost, fast-path, mfu and trace"),
        (["cost", "--threads", "0"], "--threads must be >= 1"),
    ]:
        with pytest.raises(SystemExit) as exc:
            cli.parse_args(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err
    assert (
        cli._out(cli.parse_args(["figure5", "--full"]), "figure5") == ROOT / "results/bench/figure5_full.md"
    )
    assert (
        cli._out(cli.parse_args(["training", "--gpu-full"]), "training")
        == ROOT / "results/bench/training_gpu.md"
    )
    assert cli._out(cli.parse_args(["cost", "--quick"]), "cost") == ROOT / "outputs/bench/cost_quick.md"
    assert cli._out(cli.parse_args(["fast-path"]), "fast_path") == ROOT / "results/bench/fast_path.md"
    full = cli.parse_args(["mfu", "--full", "--peak-tflops", "989.4"])
    assert cli._device(full) == "cuda" and full.peak_tflops == 989.4


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error for a missing GPU")
def test_cli_gpu_full_without_a_gpu_is_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run(
        [sys.executable, "experiments/bench.py", "training", "--gpu-full"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: device 'cuda' requested but torch sees no")
