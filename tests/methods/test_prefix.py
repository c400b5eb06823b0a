"""Tests of lora/methods/prefix.py: PreEmbed (all tiny families) and PreLayer (GPT-2, Llama).

Reference semantics, checked against the unmodified model:
- PreEmbed with prompt rows copied from the embeddings of tokens t is the base model run on the input with t
  inserted (exactly: the same float ops).
- PreLayer with activations set to the hidden states of tokens t (taken from the base model) is the base model run
  on [t; x], read at the x positions (tolerance 1e-5: the prefix keys are computed in a separate matmul).
- `generate` (with its KV cache, left padding) gives the logits of a full recomputation without cache.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lora import methods
from lora.checkpoint import load_adapter, save_adapter
from lora.methods.prefix import LayerPrefix, PrefixEmbedConfig, PrefixLayerConfig, PromptEmbedding
from lora.models import head_parameter_names, is_classifier
from lora.params import count_parameters

from .common import logits, loss, perturb

TINY = ["tiny-bert", "tiny-roberta", "tiny-deberta", "tiny-gpt2", "tiny-llama"]
CAUSAL = ["tiny-gpt2", "tiny-llama"]
D, N_LAYERS = 32, 2  # tiny models


def padded_batch() -> dict[str, torch.Tensor]:
    """Two prompts of 6 and 4 tokens, left-padded with id 0 (as for generation)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 500, (2, 6), generator=g)
    mask = torch.ones_like(ids)
    ids[1, :2], mask[1, :2] = 0, 0
    return {"input_ids": ids, "attention_mask": mask}


def assert_generate_matches_recomputation(model: nn.Module, steps: int = 4) -> None:
    """Greedy `generate` (KV cache) against the logits of a full forward without cache at every step. The prompt
    positions count attended tokens only, as `generate` does; generated tokens are marked as targets through
    `labels`, so an infix stays right after the prompt."""
    batch = padded_batch()
    t = batch["input_ids"].shape[1]
    out = model.generate(
        **batch, max_new_tokens=steps, do_sample=False, pad_token_id=0, return_dict_in_generate=True,
        output_logits=True,
    )  # fmt: skip
    seq = out.sequences
    for step in range(steps):
        ids = seq[:, : t + step]
        mask = torch.cat([batch["attention_mask"], torch.ones(2, step, dtype=torch.long)], dim=1)
        labels = torch.full_like(ids, -100)
        labels[:, t:] = ids[:, t:]
        pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        kw = dict(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
        with torch.no_grad():
            ref = model(**kw, labels=labels if step else None).logits[:, -1]
        torch.testing.assert_close(out.logits[step], ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- PreEmbed


@pytest.mark.parametrize("name", TINY)
def test_prefix_embed_trains_only_the_prompt(name, make_tiny, tiny_batch) -> None:
    base, model = make_tiny(name), make_tiny(name)
    head = head_parameter_names(model)
    report = methods.apply(
        model, "prefix_embed", PrefixEmbedConfig(prefix_length=3, infix_length=2), head=head
    )
    assert len(report.trainable) == 1 and report.trainable[0].endswith(".prompt")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(report.trainable) | set(head)
    assert count_parameters(model).trainable == D * (3 + 2)  # d_model (l_p + l_i), Section 5.1
    out = logits(model, tiny_batch)
    if not is_classifier(model):
        assert out.shape[1] == tiny_batch["input_ids"].shape[1] + 5  # outputs cover the inserted tokens
    model.train()
    loss(model, tiny_batch).backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None and p.grad.abs().sum() > 0) == (n in report.trainable or n in head), n
    result = model.load_state_dict(base.state_dict(), strict=False)
    assert result.unexpected_keys == [] and result.missing_keys == report.trainable


@pytest.mark.parametrize("name", TINY)
def test_prefix_embed_is_the_model_on_the_input_with_tokens_inserted(name, make_tiny, tiny_batch) -> None:
    base, model = make_tiny(name), make_tiny(name)
    methods.apply(model, "prefix_embed", PrefixEmbedConfig(prefix_length=2, infix_length=1))
    emb = model.get_input_embeddings()
    tokens = torch.tensor([11, 12, 13])  # prompt rows := embeddings of these tokens
    with torch.no_grad():
        emb.prompt.copy_(emb.weight[tokens])
    ids = tiny_batch["input_ids"]
    t = ids.shape[1]
    if is_classifier(model):  # prefix after the first token, infix before the last one
        placed = torch.cat(
            [ids[:, :1], tokens[:2].expand(2, -1), ids[:, 1 : t - 1], tokens[2:].expand(2, -1), ids[:, -1:]],
            1,
        )
    else:  # prefix first, infix after the prompt (no labels: the whole input is the prompt)
        placed = torch.cat([tokens[:2].expand(2, -1), ids, tokens[2:].expand(2, -1)], 1)
    ones = torch.ones_like(placed)
    assert torch.equal(logits(model, tiny_batch), logits(base, {"input_ids": placed, "attention_mask": ones}))


def test_prefix_embed_insertion_sites(make_tiny) -> None:
    """Causal: prefix at 0, infix before the first target (labels != -100), labels -100 on inserted tokens.
    Encoder: prefix after the first token, infix before the last attended token (right padding)."""
    gpt2 = make_tiny("tiny-gpt2")
    methods.apply(gpt2, "prefix_embed", PrefixEmbedConfig(prefix_length=1, infix_length=2))
    v = gpt2.get_input_embeddings().vocab_size
    ids = torch.tensor([[20, 21, 22, 23, 24]])
    labels = torch.tensor([[-100, -100, 22, 23, 24]])
    _, kw = gpt2.get_input_embeddings().insert(gpt2, (), dict(input_ids=ids, labels=labels, use_cache=False))
    assert kw["input_ids"].tolist() == [[v, 20, 21, v + 1, v + 2, 22, 23, 24]]
    assert kw["labels"].tolist() == [[-100, -100, -100, -100, -100, 22, 23, 24]]

    bert = make_tiny("tiny-bert")
    methods.apply(bert, "prefix_embed", PrefixEmbedConfig(prefix_length=1, infix_length=1))
    v = bert.get_input_embeddings().vocab_size
    ids = torch.tensor([[1, 30, 31, 2, 0], [1, 32, 2, 0, 0]])
    mask = (ids != 0).long()
    types = torch.tensor([[0, 0, 1, 1, 0], [0, 0, 0, 0, 0]])
    _, kw = bert.get_input_embeddings().insert(
        bert, (), dict(input_ids=ids, attention_mask=mask, token_type_ids=types)
    )
    assert kw["input_ids"].tolist() == [[1, v, 30, 31, v + 1, 2, 0], [1, v, 32, v + 1, 2, 0, 0]]
    assert kw["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0, 0]]
    assert kw["token_type_ids"].tolist() == [[0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0, 0]]


@pytest.mark.parametrize("name", CAUSAL)
@pytest.mark.parametrize("prefix, infix", [(3, 0), (2, 2), (0, 2)])
def test_prefix_embed_generate_matches_recomputation(name, prefix, infix, make_tiny) -> None:
    model = make_tiny(name)
    report = methods.apply(model, "prefix_embed", PrefixEmbedConfig(prefix_length=prefix, infix_length=infix))
    perturb(model, report.trainable, std=1.0)
    assert_generate_matches_recomputation(model)
    beams = model.generate(**padded_batch(), max_new_tokens=3, num_beams=2, do_sample=False, pad_token_id=0)
    assert beams.shape == (2, 6 + 3)


@pytest.mark.parametrize("name", ["tiny-roberta", "tiny-gpt2"])
def test_prefix_embed_save_load_round_trip(name, make_tiny, tiny_batch, tmp_path) -> None:
    model = make_tiny(name)
    cfg = PrefixEmbedConfig(prefix_length=2, infix_length=1)
    report = methods.apply(model, "prefix_embed", cfg, head=head_parameter_names(model))
    perturb(model, report.trainable, std=1.0)
    expected = logits(model, tiny_batch)
    save_adapter(model, tmp_path, "prefix_embed", cfg, report)
    fresh = make_tiny(name)
    load_adapter(fresh, tmp_path)
    assert isinstance(fresh.get_input_embeddings(), PromptEmbedding)
    assert torch.equal(logits(fresh, tiny_batch), expected)


def test_prefix_embed_keeps_the_lm_head_tied(make_tiny) -> None:
    model = make_tiny("tiny-gpt2")
    methods.apply(model, "prefix_embed", PrefixEmbedConfig(prefix_length=2))
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


# ---------------------------------------------------------------- PreLayer


@pytest.mark.parametrize("name", CAUSAL)
def test_prefix_layer_changes_the_output_and_trains_only_the_prefix(name, make_tiny, tiny_batch) -> None:
    base, model = make_tiny(name), make_tiny(name)
    report = methods.apply(model, "prefix_layer", PrefixLayerConfig(prefix_length=4))
    assert len(report.trainable) == 1 and report.trainable[0].endswith("layer_prefix.activations")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(report.trainable)
    assert count_parameters(model).trainable == N_LAYERS * D * 4  # L d_model l_p, Section 5.1
    out = logits(model, tiny_batch)
    assert out.shape == logits(base, tiny_batch).shape and not torch.allclose(out, logits(base, tiny_batch))
    model.train()
    loss(model, tiny_batch).backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None and p.grad.abs().sum() > 0) == (n in report.trainable), n
    result = model.load_state_dict(base.state_dict(), strict=False)
    assert result.unexpected_keys == [] and result.missing_keys == report.trainable


@pytest.mark.parametrize("name", CAUSAL)
def test_prefix_layer_is_the_model_run_on_prefix_tokens(name, make_tiny, tiny_batch) -> None:
    """Activations := hidden states of tokens t at each layer's input -> the base model on [t; x] at x."""
    base, model = make_tiny(name), make_tiny(name)
    methods.apply(model, "prefix_layer", PrefixLayerConfig(prefix_length=3))
    tokens = torch.tensor([[40, 41, 42]])
    with torch.no_grad():
        hidden = base(input_ids=tokens, output_hidden_states=True).hidden_states
        model.base_model.layer_prefix.activations.copy_(torch.cat(hidden[:N_LAYERS]))
    ids = tiny_batch["input_ids"]
    joined = torch.cat([tokens.expand(2, -1), ids], 1)
    ref = logits(base, {"input_ids": joined, "attention_mask": torch.ones_like(joined)})[:, 3:]
    torch.testing.assert_close(logits(model, tiny_batch), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", CAUSAL)
def test_prefix_layer_generate_matches_recomputation(name, make_tiny) -> None:
    model = make_tiny(name)
    report = methods.apply(model, "prefix_layer", PrefixLayerConfig(prefix_length=3))
    perturb(model, report.trainable, std=1.0)
    assert_generate_matches_recomputation(model)
    beams = model.generate(**padded_batch(), max_new_tokens=3, num_beams=2, do_sample=False, pad_token_id=0)
    assert beams.shape == (2, 6 + 3)


@pytest.mark.parametrize("name", CAUSAL)
def test_prefix_layer_save_load_round_trip(name, make_tiny, tiny_batch, tmp_path) -> None:
    model = make_tiny(name)
    cfg = PrefixLayerConfig(prefix_length=2)
    report = methods.apply(model, "prefix_layer", cfg)
    perturb(model, report.trainable, std=1.0)
    expected = logits(model, tiny_batch)
    save_adapter(model, tmp_path, "prefix_layer", cfg, report)
    fresh = make_tiny(name)
    load_adapter(fresh, tmp_path)
    assert isinstance(fresh.base_model.layer_prefix, LayerPrefix)
    assert torch.equal(logits(fresh, tiny_batch), expected)


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-roberta", "tiny-deberta"])
def test_prefix_layer_on_an_unsupported_architecture_is_a_clear_error(name, make_tiny) -> None:
    family = make_tiny(name).config.model_type
    with pytest.raises(ValueError, match=f"prefix_layer supports gpt2, llama .* not {family}$"):
        methods.apply(make_tiny(name), "prefix_layer", PrefixLayerConfig())


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "method, kwargs, message",
    [
        ("prefix_layer", dict(prefix_length=0), "prefix_length must be a positive integer, got 0"),
        ("prefix_layer", dict(prefix_length=-2), "prefix_length must be a positive integer, got -2"),
        ("prefix_layer", dict(prefix_length=True), "prefix_length must be a positive integer, got True"),
        ("prefix_embed", dict(prefix_length=-1), "prefix_length must be an integer >= 0, got -1"),
        ("prefix_embed", dict(infix_length=2.5), "infix_length must be an integer >= 0, got 2.5"),
        ("prefix_embed", dict(prefix_length=0, infix_length=0), "needs prefix_length \\+ infix_length > 0"),
    ],
)
def test_bad_config_is_a_one_line_error(method: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as e:
        methods.method_config(method, **kwargs)
    assert "\n" not in str(e.value)


def test_misuse_is_a_clear_error(make_tiny, tiny_batch) -> None:
    model = make_tiny("tiny-gpt2")
    methods.apply(model, "prefix_embed", PrefixEmbedConfig(prefix_length=2))
    with pytest.raises(ValueError, match="prefix_embed needs input_ids"):
        model(inputs_embeds=torch.zeros(1, 3, D))
    with pytest.raises(ValueError, match="already carries prefix_embed"):
        methods.apply(model, "prefix_embed", PrefixEmbedConfig(prefix_length=2))
    layer = make_tiny("tiny-llama")
    methods.apply(layer, "prefix_layer", PrefixLayerConfig(prefix_length=2))
    with pytest.raises(ValueError, match="already carries prefix_layer"):
        methods.apply(layer, "prefix_layer", PrefixLayerConfig(prefix_length=2))
    ids = tiny_batch["input_ids"]
    assert layer(ids).logits.shape[:2] == (2, 7)  # input_ids may come positionally
    with pytest.raises(TypeError, match="pass model inputs by keyword"):
        layer(ids, None)
    gpt2 = make_tiny("tiny-gpt2")
    methods.apply(gpt2, "prefix_layer", PrefixLayerConfig(prefix_length=2))
    gpt2.activation_checkpointing_enable()
    gpt2.train()
    with pytest.raises(RuntimeError, match="prefix_layer does not work with gradient checkpointing"):
        gpt2(input_ids=ids)
