"""Tests of lora/export.py, experiments/export.py and `lora.methods.lora.unload`: a finished run exported as a peft
adapter (reloaded through peft itself) or as a merged checkpoint (reloaded through transformers' Auto classes, with
no trace of this package), and one-line errors for what cannot be exported.

A "finished run" here is what lora.train leaves behind: a complete record in `results_dir` and the adapter in
`<output_dir>/<run>/adapter` (`fake_run` writes both from a tiny model with LoRA B != 0, as if trained; the last
test trains a real one with lora.train.execute).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from hydra import compose, initialize_config_dir
from safetensors import safe_open
from torch import nn
from transformers.pytorch_utils import Conv1D

from lora import methods, records
from lora.checkpoint import save_adapter
from lora.export import base_model_reference, export_merged, export_run, find_run, peft_beside
from lora.methods.lora import LoRAConfig, inject, lora_modules, merge, unload
from lora.models import build_model, build_tokenizer, head_parameter_names, tiny_tokenizer

ROOT = Path(__file__).resolve().parent.parent
GLUE = ROOT.parent / "shared" / "data" / "glue"


def out(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def trained(model: nn.Module, method: str, cfg: Any, randomize_lora) -> Any:
    """Apply `method` and move its parameters (and the head) away from their init, as training would."""
    report = methods.apply(model, method, cfg, head=head_parameter_names(model))
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        if method == "lora":
            randomize_lora(model)
        else:
            for n in report.trainable:
                params[n].add_(torch.randn(params[n].shape, generator=g) * 0.05)
        for n in head_parameter_names(model):
            params[n].add_(0.1)
    return report


def fake_run(
    tmp: Path,
    model_cfg: dict[str, Any],
    task: str,
    method: str,
    method_cfg: Any,
    randomize_lora,
    status: str = "complete",
) -> tuple[Path, Path, nn.Module]:
    """Write a finished run as lora.train does: returns (record path, run directory, the trained model)."""
    kind = "causal_lm" if task == "e2e" else "classification"
    model = build_model(
        model_cfg.get("name"), kind, path=model_cfg.get("path"), hub=model_cfg.get("hub")
    ).eval()
    report = trained(model, method, method_cfg, randomize_lora)
    model_entry = {"name": None, "hub": None, "pretrained": True, "path": None, "trust_remote_code": False}
    model_entry |= model_cfg
    config = {
        "model": model_entry,
        "task": {"name": task, "kind": "nlg" if task == "e2e" else "glue"},
        "method": {"name": method},
        "output_dir": str(tmp / "outputs"),
        "results_dir": str(tmp / "results"),
        "seed": 0,
    }
    label = model_entry["name"] or model_entry["hub"] or Path(model_entry["path"]).name
    record = records.new_record(config, experiment="custom", model=label, task=task, method=method, seed=0)
    name = records.record_filename(record).removesuffix(".json")
    save_adapter(model, tmp / "outputs" / name / "adapter", method, method_cfg, report)
    record.params = {"trainable": 1, "total": 2, "head": 0, "adapter_bytes": 3}
    record.memory = {"peak_bytes": 0, "kind": "cpu_rss"}
    record.time = {"train_s": 0.0, "eval_s": 0.0, "samples_per_s": 0.0}
    record.best = {"epoch": 1, "metrics": {"eval_loss" if task == "e2e" else "accuracy": 0.5}}
    if status == "running":
        record.best = None
    else:
        record.finish(status, None if status == "complete" else "test")
    return records.write_record(record, tmp / "results"), tmp / "outputs" / name, model


LORA_QV = LoRAConfig(r=4, alpha=8, targets=["q", "v"])
RUNS = {  # id -> (model.*, task, LoRA config)
    "tiny-roberta-cls": (
        {"name": "tiny-roberta"},
        "sst2",
        LoRAConfig(r=4, alpha=8, targets=["q", "v", "ffn_out"]),
    ),
    "tiny-gpt2-lm": ({"name": "tiny-gpt2"}, "e2e", LORA_QV),
    "tiny-phi3-lm": ({"name": "tiny-phi3"}, "e2e", LORA_QV),
    "tiny-gemma3-lm": (
        {"name": "tiny-gemma3"},
        "e2e",
        LoRAConfig(r=4, alpha=8, targets=["q", "v", "ffn_in"]),
    ),
    "tiny-mistral-cls": ({"name": "tiny-mistral"}, "sst2", LORA_QV),
    "tiny-phi3-cls": (
        {"name": "tiny-phi3"},
        "rte",
        LoRAConfig(r=2, alpha=4, targets=["q", "k", "v", "ffn_in"]),
    ),
    "path-qwen2-lm": ({"path": "QWEN"}, "e2e", LORA_QV),
    "path-qwen2-cls": ({"path": "QWEN"}, "sst2", LORA_QV),
}


def run_of(case: str, tmp_path: Path, qwen_dir: Path, randomize_lora) -> tuple[Path, Path, nn.Module, dict]:
    model_cfg, task, cfg = RUNS[case]
    model_cfg = {k: str(qwen_dir) if v == "QWEN" else v for k, v in model_cfg.items()}
    record, run_dir, model = fake_run(tmp_path, model_cfg, task, "lora", cfg, randomize_lora)
    return record, run_dir, model, model_cfg


def fresh_base(model_cfg: dict, task: str) -> nn.Module:
    kind = "causal_lm" if task == "e2e" else "classification"
    return build_model(model_cfg.get("name"), kind, path=model_cfg.get("path")).eval()


# --- unload ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-phi3", "tiny-roberta"])
@pytest.mark.parametrize("merged_first", [False, True])
def test_unload_merges_and_gives_back_plain_modules(
    name, merged_first, make_tiny, tiny_batch, randomize_lora
):
    kind = "classification" if name == "tiny-roberta" else "causal_lm"
    model = make_tiny(name, kind)
    plain_types = {n: type(m) for n, m in model.named_modules()}
    base_keys = set(model.state_dict())
    inject(model, LoRAConfig(r=4, alpha=8, targets=["q", "v", "ffn_in", "ffn_out"]))
    randomize_lora(model)
    y = out(model, tiny_batch)
    if merged_first:
        merge(model)
    assert unload(model) is model
    assert not lora_modules(model) and set(model.state_dict()) == base_keys
    assert {n: type(m) for n, m in model.named_modules()} == plain_types  # nn.Linear / Conv1D again
    if name == "tiny-gpt2":
        assert isinstance(model.transformer.h[0].attn.c_attn, Conv1D)
    torch.testing.assert_close(out(model, tiny_batch), y, atol=1e-5, rtol=0)
    assert (out(make_tiny(name, kind), tiny_batch) - y).abs().max() > 1e-4


@pytest.mark.parametrize("merged_first", [False, True])
def test_unload_without_merge_restores_the_base_model(
    merged_first, make_tiny, tiny_batch, randomize_lora
) -> None:
    base = make_tiny("tiny-phi3", "causal_lm")
    model = make_tiny("tiny-phi3", "causal_lm")
    inject(model, LoRAConfig(r=4, targets=list(("q", "v", "ffn_in"))))
    randomize_lora(model)
    if merged_first:
        merge(model)
    unload(model, merge=False)
    assert not lora_modules(model)
    sd, sb = model.state_dict(), base.state_dict()
    assert sd.keys() == sb.keys()
    for k in sb:
        torch.testing.assert_close(sd[k], sb[k], atol=1e-6, rtol=0)
    torch.testing.assert_close(out(model, tiny_batch), out(base, tiny_batch), atol=1e-5, rtol=0)


def test_unload_without_lora_is_a_clear_error(make_tiny) -> None:
    with pytest.raises(ValueError, match="no LoRA modules"):
        unload(make_tiny("tiny-gpt2"))


# --- peft and merged exports of a run --------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(RUNS))
def test_peft_export_of_a_run_reloads_through_peft(
    case, tmp_path, qwen_dir, tiny_batch, randomize_lora
) -> None:
    peft = pytest.importorskip("peft")
    record, run_dir, model, model_cfg = run_of(case, tmp_path, qwen_dir, randomize_lora)
    task = RUNS[case][1]
    folder = export_run(run_dir, "peft", results_dir=tmp_path / "results")
    assert folder == run_dir / "peft"
    exported = json.loads((folder / "adapter_config.json").read_text())
    expected_base = str(qwen_dir.resolve()) if "path" in model_cfg else model_cfg["name"]
    assert exported["base_model_name_or_path"] == expected_base
    assert exported["task_type"] == ("CAUSAL_LM" if task == "e2e" else "SEQ_CLS")
    reloaded = peft.PeftModel.from_pretrained(fresh_base(model_cfg, task), folder).eval()
    y = out(model, tiny_batch)
    assert (out(reloaded, tiny_batch) - y).abs().max() <= 1e-5
    assert (out(fresh_base(model_cfg, task), tiny_batch) - y).abs().max() > 1e-3


@pytest.mark.parametrize("case", list(RUNS))
def test_merged_export_loads_with_auto_classes_and_no_trace(
    case, tmp_path, qwen_dir, tiny_batch, randomize_lora
):
    record, run_dir, model, model_cfg = run_of(case, tmp_path, qwen_dir, randomize_lora)
    task = RUNS[case][1]
    folder = export_run(record, "merged", out=tmp_path / "merged")
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == model.config.model_type
    assert "lora" not in json.dumps(config).lower()
    (weights,) = folder.glob("*.safetensors")
    with safe_open(str(weights), framework="pt") as f:
        keys = set(f.keys())  # noqa: SIM118
    assert keys and not any("lora_" in k for k in keys)
    auto = (
        transformers.AutoModelForCausalLM
        if task == "e2e"
        else transformers.AutoModelForSequenceClassification
    )
    loaded = auto.from_pretrained(folder).eval()
    assert all(type(m).__module__.split(".")[0] in ("torch", "transformers") for m in loaded.modules())
    merge(model)  # ours, merged in place
    torch.testing.assert_close(out(loaded, tiny_batch), out(model, tiny_batch), atol=1e-5, rtol=0)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    used = build_tokenizer(model_cfg.get("name"), path=model_cfg.get("path"))  # the run's own tokenizer
    assert tok("a cat", "a dog")["input_ids"] == used("a cat", "a dog")["input_ids"]


@pytest.mark.parametrize("method", ["bitfit", "full"])
def test_methods_that_train_base_parameters_export_merged(
    method, tmp_path, tiny_batch, randomize_lora
) -> None:
    cfg = methods.method_config(method)
    record, run_dir, model = fake_run(tmp_path, {"name": "tiny-roberta"}, "sst2", method, cfg, randomize_lora)
    folder = export_run(run_dir, "merged", results_dir=tmp_path / "results")
    loaded = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    torch.testing.assert_close(out(loaded, tiny_batch), out(model, tiny_batch), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=f"run .* trained {method}: only LoRA runs export as a peft adapter"):
        export_run(run_dir, "peft", results_dir=tmp_path / "results")


@pytest.mark.parametrize("method", ["adapter_h", "prefix_embed"])
@pytest.mark.parametrize("fmt", ["merged", "peft"])
def test_methods_without_a_merged_form_are_a_one_line_error(method, fmt, tmp_path, randomize_lora) -> None:
    cfg = methods.method_config(
        method, **({"bottleneck": 4} if method == "adapter_h" else {"prefix_length": 2})
    )
    record, run_dir, _ = fake_run(tmp_path, {"name": "tiny-gpt2"}, "e2e", method, cfg, randomize_lora)
    match = "has no merged form" if fmt == "merged" else "only LoRA runs export as a peft adapter"
    with pytest.raises(ValueError, match=f"trained {method}.*{match}") as e:
        export_run(record, fmt)
    assert "\n" not in str(e.value)
    assert not (run_dir / fmt).exists()


def test_export_merged_refuses_a_model_that_keeps_foreign_modules(make_tiny, tmp_path) -> None:
    model = make_tiny("tiny-gpt2")
    methods.apply(model, "adapter_l", methods.method_config("adapter_l", bottleneck=4))
    with pytest.raises(
        ValueError, match="BottleneckAdapter of lora.methods.adapters: this model has no merged"
    ):
        export_merged(model, tmp_path / "m")
    assert not (tmp_path / "m").exists()


# --- finding the run, errors ------------------------------------------------------------------------------------


def test_a_run_is_found_by_directory_adapter_directory_name_or_record(tmp_path, randomize_lora) -> None:
    record, run_dir, _ = fake_run(tmp_path, {"name": "tiny-gpt2"}, "e2e", "lora", LORA_QV, randomize_lora)
    results = tmp_path / "results"
    for ref in (record, run_dir, run_dir / "adapter", run_dir.name):
        found = find_run(ref, results)
        assert found.name == run_dir.name and found.adapter.resolve() == (run_dir / "adapter").resolve()
        assert found.record.status == "complete" and found.kind == "causal_lm"


@pytest.mark.parametrize(
    ("make_ref", "error", "match"),
    [
        (lambda t, d, r: t / "outputs" / "nope", FileNotFoundError, "no such run directory"),
        (lambda t, d, r: t / "results" / "nope.json", FileNotFoundError, "no run record"),
        (lambda t, d, r: "nope", FileNotFoundError, "no record of run nope under"),
        (
            lambda t, d, r: d,
            FileNotFoundError,
            "no record of run .* under",
        ),  # looked for in another results_dir
    ],
    ids=["missing-dir", "missing-record", "unknown-name", "record-elsewhere"],
)
def test_missing_runs_are_one_line_errors(make_ref, error, match, tmp_path, randomize_lora) -> None:
    record, run_dir, _ = fake_run(tmp_path, {"name": "tiny-gpt2"}, "e2e", "lora", LORA_QV, randomize_lora)
    with pytest.raises(error, match=match) as e:
        export_run(make_ref(tmp_path, run_dir, record), "peft", results_dir=tmp_path / "elsewhere")
    assert "\n" not in str(e.value)


def test_unknown_format_unfinished_run_missing_adapter_and_existing_output(tmp_path, randomize_lora) -> None:
    record, run_dir, _ = fake_run(tmp_path, {"name": "tiny-gpt2"}, "e2e", "lora", LORA_QV, randomize_lora)
    with pytest.raises(ValueError, match="unknown export format 'onnx': choose from peft, merged"):
        export_run(record, "onnx")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    with pytest.raises(ValueError, match="taken exists: remove it, give another out=, or overwrite=true"):
        export_run(record, "peft", out=tmp_path / "taken")
    assert export_run(record, "peft", out=tmp_path / "taken", overwrite=True) == tmp_path / "taken"
    for f in (run_dir / "adapter").iterdir():
        f.unlink()
    with pytest.raises(FileNotFoundError, match="has no adapter at .*save_adapter=false"):
        export_run(record, "peft")
    running, _, _ = fake_run(
        tmp_path / "b", {"name": "tiny-gpt2"}, "e2e", "lora", LORA_QV, randomize_lora, "running"
    )
    with pytest.raises(ValueError, match="is running, not complete: only a finished run can be exported"):
        export_run(running, "merged")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match=r"bad.json is not a run record \(run record schema None"):
        export_run(tmp_path / "bad.json", "merged")


# --- the entry point and the training-time export ------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "experiments/export.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_entry_point_exports_and_fails_in_one_line(tmp_path, randomize_lora) -> None:
    record, run_dir, _ = fake_run(tmp_path, {"name": "tiny-gpt2"}, "e2e", "lora", LORA_QV, randomize_lora)
    done = cli(f"run={run_dir}", "format=merged", f"results_dir={tmp_path / 'results'}")
    assert done.returncode == 0, done.stderr
    assert f"wrote merged export to {run_dir / 'merged'}" in done.stdout
    assert (run_dir / "merged" / "config.json").is_file()
    for args, message in (
        ((f"run={record}", "format=gguf"), "error: unknown export format 'gguf': choose from peft, merged"),
        ((f"run={tmp_path / 'none'}", "format=peft"), "error: run "),
        ((f"run={record}",), "error: missing format=:"),
        (("runn=x",), "error: unknown argument 'runn=x'"),
    ):
        failed = cli(*args)
        assert failed.returncode == 2 and failed.stderr.startswith(message), failed.stderr
        assert failed.stderr.count("\n") == 1


def test_peft_beside_writes_the_peft_form_of_a_lora_run(
    make_tiny, tmp_path, qwen_dir, randomize_lora
) -> None:
    from lora.config import ModelConfig

    model = make_tiny("tiny-gpt2")
    report = trained(model, "lora", LORA_QV, randomize_lora)
    assert report.modules
    folder = peft_beside(model, tmp_path / "run", "lora", LORA_QV, ModelConfig(name="tiny-gpt2"))
    assert folder == tmp_path / "run" / "peft" and (folder / "adapter_model.safetensors").is_file()
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny-gpt2"
    assert peft_beside(model, tmp_path / "other", "adapter_h", None, ModelConfig(name="tiny-gpt2")) is None
    assert not (tmp_path / "other").exists()
    assert base_model_reference(None, path=str(qwen_dir)) == str(qwen_dir.resolve())
    assert base_model_reference(None, hub="Qwen/Qwen2.5-0.5B", path=str(qwen_dir)) == "Qwen/Qwen2.5-0.5B"
    assert base_model_reference("roberta-base") == "FacebookAI/roberta-base"


@pytest.mark.skipif(not GLUE.is_dir(), reason=f"real GLUE data not found at {GLUE} (../shared/data)")
def test_a_trained_run_exports_both_ways(tmp_path: Path, qwen_dir: Path, tiny_batch) -> None:
    """End to end: lora.train.execute trains tiny-roberta LoRA from a local directory (model.path wins), then the
    run exports as peft and merged, and both give the trained adapter's outputs."""
    peft = pytest.importorskip("peft")
    from lora.checkpoint import load_adapter
    from lora.train import execute, run_name

    model_dir = tmp_path / "roberta"
    build_model("tiny-roberta", "base").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    overrides = [
        "model=tiny-roberta", f"model.path={model_dir}", "task=rte", "method=lora", f"data_dir={GLUE}",
        "task.max_train_samples=16", "task.max_eval_samples=8", "train.batch_size=8", "train.epochs=1",
        "train.lr=5e-2", "train.progress=false", f"results_dir={tmp_path / 'results'}",
        f"output_dir={tmp_path / 'outputs'}", "device=cpu",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        record = execute(compose("config", overrides=overrides))
    assert record.status == "complete" and record.model == "tiny-roberta"
    run_dir = tmp_path / "outputs" / run_name(record)
    ours = build_model("tiny-roberta", "classification", path=str(model_dir)).eval()
    load_adapter(ours, run_dir / "adapter")
    beside = run_dir / "peft"  # written by the run itself, next to its adapter
    assert json.loads((beside / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        model_dir.resolve()
    )
    peft_dir = export_run(run_dir, "peft", results_dir=tmp_path / "results", out=tmp_path / "exported")
    assert json.loads((peft_dir / "adapter_config.json").read_text()) == json.loads(
        (beside / "adapter_config.json").read_text()
    )
    base = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    reloaded = peft.PeftModel.from_pretrained(base, peft_dir).eval()
    torch.testing.assert_close(out(reloaded, tiny_batch), out(ours, tiny_batch), atol=1e-5, rtol=0)
    merged = transformers.AutoModelForSequenceClassification.from_pretrained(
        export_run(run_name(record), "merged", results_dir=tmp_path / "results")
    ).eval()
    torch.testing.assert_close(out(merged, tiny_batch), out(ours, tiny_batch), atol=1e-5, rtol=0)
