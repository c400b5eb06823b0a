"""Parameter accounting with the paper's convention.

`trainable` counts what a method trains, without the task head (the classifier every method trains; the paper's
Table 2 counts, e.g. 0.3M for RoBERTa-base LoRA, leave it out). `total` counts every parameter of the model as built
(backbone, method parameters and head; tied weights once). `adapter_bytes` is the exact size of the adapter-only
safetensors checkpoint, computed from shapes, so it works on the `meta` device too.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
from torch import nn

from lora.checkpoint import FORMAT
from lora.models import head_parameter_names


@dataclass(frozen=True)
class ParamCount:
    trainable: int
    total: int
    head: int
    adapter_bytes: int

    @property
    def percent(self) -> float:
        """Trainable parameters as a percentage of the backbone (total minus head)."""
        return 100.0 * self.trainable / max(self.total - self.head, 1)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def count_parameters(model: nn.Module, saved: list[str] | None = None) -> ParamCount:
    """Count `model`'s parameters (paper convention). `saved`: parameter names an adapter-only checkpoint holds
    (default: every trainable parameter, head included)."""
    head = set(head_parameter_names(model))
    params = dict(model.named_parameters())
    trainable = sum(p.numel() for n, p in params.items() if p.requires_grad and n not in head)
    saved = saved if saved is not None else [n for n, p in params.items() if p.requires_grad]
    return ParamCount(
        trainable=trainable,
        total=sum(p.numel() for p in params.values()),
        head=sum(params[n].numel() for n in head),
        adapter_bytes=safetensors_size({n: params[n] for n in saved}, metadata={"format": FORMAT}),
    )


# dtype -> (safetensors name, rank in safetensors' Dtype enum, which orders the data block: higher ranks first)
_DTYPES = {
    torch.bool: ("BOOL", 0), torch.uint8: ("U8", 1), torch.int8: ("I8", 2), torch.int16: ("I16", 3),
    torch.float16: ("F16", 4), torch.bfloat16: ("BF16", 5), torch.int32: ("I32", 6), torch.float32: ("F32", 7),
    torch.float64: ("F64", 8), torch.int64: ("I64", 9),
}  # fmt: skip


def safetensors_size(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> int:
    """Bytes of the safetensors file `safetensors.torch.save_file(tensors, metadata=metadata)` writes.

    The format is an 8-byte header length, a JSON header (tensors sorted by dtype, then name; space-padded to a
    multiple of 8 bytes) and the raw data. Computed from shapes and dtypes only (works for `meta` tensors)."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    order = sorted(tensors.items(), key=lambda kv: (-_DTYPES[kv[1].dtype][1], kv[0]))
    for name, t in order:
        n = t.numel() * t.element_size()
        header[name] = {
            "dtype": _DTYPES[t.dtype][0],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + n],
        }
        offset += n
    size = len(json.dumps(header, separators=(",", ":")).encode())
    return 8 + size + (-size % 8) + offset
