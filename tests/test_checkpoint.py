"""Tests of lora/checkpoint.py: adapter-only save/load round trips, clear errors on wrong or damaged checkpoints,
and the peft export (reloaded through peft itself)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from torch import nn

from lora import methods
from lora.checkpoint import CONFIG, WEIGHTS, export_peft, load_adapter, save_adapter
from lora.methods.lora import LoRAConfig, lora_modules
from lora.models import head_parameter_names


def logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def trained(model: nn.Module, randomize_lora, cfg: LoRAConfig | None = None):
    """`model` with LoRA (B != 0) and a perturbed head, as if trained; returns (model, cfg, report)."""
    cfg = cfg or LoRAConfig(r=4, alpha=8, targets=["q", "v", "ffn_out"])
    head = head_parameter_names(model)
    report = methods.apply(model, "lora", cfg, head=head)
    randomize_lora(model)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n in head:
            params[n].add_(0.1)
    return model, cfg, report


@pytest.fixture
def saved_roberta(make_tiny, randomize_lora, tmp_path) -> tuple[nn.Module, Path]:
    model, cfg, report = trained(make_tiny("tiny-roberta"), randomize_lora)
    return model, save_adapter(model, tmp_path / "adapter", "lora", cfg, report)


def test_save_load_round_trip_gives_identical_logits(
    tiny_name: str, make_tiny, tiny_batch, randomize_lora, tmp_path
):
    model, cfg, report = trained(make_tiny(tiny_name), randomize_lora)
    save_adapter(model, tmp_path, "lora", cfg, report)
    assert {p.name for p in tmp_path.iterdir()} == {WEIGHTS, CONFIG}
    fresh = make_tiny(tiny_name)
    loaded = load_adapter(fresh, tmp_path)
    assert loaded.trainable == report.trainable
    assert torch.equal(logits(fresh, tiny_batch), logits(model, tiny_batch))
    trainable = {n for n, p in fresh.named_parameters() if p.requires_grad}
    assert trainable == set(report.trainable) | set(head_parameter_names(fresh))


def test_load_into_a_model_that_already_carries_the_adapter(saved_roberta, make_tiny, tiny_batch) -> None:
    model, directory = saved_roberta
    fresh = make_tiny("tiny-roberta")
    methods.apply(fresh, "lora", LoRAConfig(r=4, alpha=8, targets=["q", "v", "ffn_out"]))
    load_adapter(fresh, directory)
    assert torch.equal(logits(fresh, tiny_batch), logits(model, tiny_batch))


def test_head_false_skips_the_head(saved_roberta, make_tiny) -> None:
    model, directory = saved_roberta
    fresh, init = make_tiny("tiny-roberta"), make_tiny("tiny-roberta")
    load_adapter(fresh, directory, head=False)
    ours, theirs, init_p = (dict(m.named_parameters()) for m in (fresh, model, init))
    head = head_parameter_names(fresh)
    assert head and all(torch.equal(ours[n], init_p[n]) and not torch.equal(ours[n], theirs[n]) for n in head)
    lora = [n for n in ours if "lora_" in n]
    assert lora and all(torch.equal(ours[n], theirs[n]) for n in lora)


def test_adapter_of_another_architecture_is_a_clear_error(make_tiny, randomize_lora, tmp_path) -> None:
    model, cfg, report = trained(make_tiny("tiny-gpt2"), randomize_lora, LoRAConfig(r=4))
    save_adapter(model, tmp_path, "lora", cfg, report)
    llama = make_tiny("tiny-llama")
    with pytest.raises(
        ValueError,
        match="trained on a gpt2 model of width 32 with 2 layers; this is a llama model of width 32",
    ):
        load_adapter(llama, tmp_path)
    assert not lora_modules(llama)


def test_adapter_of_another_width_is_a_clear_error(saved_roberta) -> None:
    wide = transformers.RobertaForSequenceClassification(
        transformers.RobertaConfig(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            vocab_size=512,
            max_position_embeddings=130,
            pad_token_id=1,
        )  # fmt: skip
    )
    with pytest.raises(
        ValueError, match="roberta model of width 32 with 2 layers; this is a roberta model of width 64"
    ):
        load_adapter(wide, saved_roberta[1])
    assert not lora_modules(wide)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_weights_are_a_clear_error(damage: str, saved_roberta, make_tiny) -> None:
    path = saved_roberta[1] / WEIGHTS
    data = path.read_bytes()
    path.write_bytes(
        {"truncate": data[: len(data) // 2], "garbage": bytes(range(256)) * 8, "empty": b""}[damage]
    )
    fresh = make_tiny("tiny-roberta")
    with pytest.raises(ValueError, match="is not a readable safetensors file") as e:
        load_adapter(fresh, saved_roberta[1])
    assert "\n" not in str(e.value) and WEIGHTS in str(e.value)
    assert not lora_modules(fresh)


@pytest.mark.parametrize("missing", [CONFIG, WEIGHTS])
def test_missing_files_are_file_not_found(missing: str, saved_roberta, make_tiny) -> None:
    (saved_roberta[1] / missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing):
        load_adapter(make_tiny("tiny-roberta"), saved_roberta[1])


def test_foreign_or_broken_config_is_a_clear_error(saved_roberta, make_tiny) -> None:
    config = saved_roberta[1] / CONFIG
    config.write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(ValueError, match="not an adapter written by this suite"):
        load_adapter(make_tiny("tiny-roberta"), saved_roberta[1])
    config.write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        load_adapter(make_tiny("tiny-roberta"), saved_roberta[1])


# --- peft export ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-roberta", "tiny-gpt2", "tiny-llama"])
def test_peft_export_reloads_through_peft_to_the_same_logits(
    name: str, make_tiny, tiny_batch, randomize_lora, tmp_path
) -> None:
    peft = pytest.importorskip("peft")
    cfg = LoRAConfig(r=4, alpha=8, targets=["q", "v"])
    model, _, report = trained(make_tiny(name), randomize_lora, cfg)
    export_peft(model, tmp_path, cfg)
    exported = json.loads((tmp_path / "adapter_config.json").read_text())
    if name == "tiny-gpt2":  # per-slice q/v -> one rank-2r LoRA over the fused c_attn, same scaling alpha/r
        c_attn = [f"transformer.h.{i}.attn.c_attn" for i in range(2)]
        assert exported["target_modules"] == c_attn and exported["fan_in_fan_out"] is True
        assert exported["rank_pattern"] == {p: 2 * cfg.r for p in c_attn}
        assert exported["alpha_pattern"] == {p: 2 * cfg.alpha for p in c_attn}
    if name == "tiny-roberta":
        assert exported["task_type"] == "SEQ_CLS" and exported["modules_to_save"] == ["classifier"]

    reloaded = peft.PeftModel.from_pretrained(make_tiny(name), tmp_path).eval()
    torch.testing.assert_close(logits(reloaded, tiny_batch), logits(model, tiny_batch), atol=1e-5, rtol=0)
    assert not torch.allclose(logits(make_tiny(name), tiny_batch), logits(model, tiny_batch), atol=1e-3)


def test_assign_loads_a_lora_adapter_into_a_meta_model(make_tiny, randomize_lora, tmp_path) -> None:
    """assign=True: the saved factors become the parameters of a model built on `meta` (no base weights), which is
    how lora.export writes a run's peft form; the peft export equals the one of the real model."""
    from lora.models import build_model

    cfg = LoRAConfig(r=4, alpha=8, targets=["q", "v", "ffn_in"])
    model, _, report = trained(make_tiny("tiny-phi3", "classification"), randomize_lora, cfg)
    save_adapter(model, tmp_path / "a", "lora", cfg, report)
    meta = build_model("tiny-phi3", "classification", pretrained=False, device="meta")
    load_adapter(meta, tmp_path / "a", assign=True)
    params, saved = dict(meta.named_parameters()), dict(model.named_parameters())
    for n in [*report.trainable, *head_parameter_names(meta)]:
        assert params[n].device.type == "cpu" and torch.equal(params[n], saved[n]), n
        assert params[n].requires_grad
    assert params["model.embed_tokens.weight"].is_meta
    export_peft(model, tmp_path / "real", cfg)
    export_peft(meta, tmp_path / "meta", cfg)
    assert (tmp_path / "real" / "adapter_config.json").read_text() == (
        tmp_path / "meta" / "adapter_config.json"
    ).read_text()
    assert (tmp_path / "real" / "adapter_model.safetensors").read_bytes() == (
        tmp_path / "meta" / "adapter_model.safetensors"
    ).read_bytes()
