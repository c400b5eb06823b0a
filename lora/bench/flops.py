"""Model FLOPs of a training step, and model FLOPs utilisation (MFU): achieved model FLOP/s over the device's peak.

The formula (per training step of T = batch x seq tokens), in the convention of PaLM (Chowdhery et al., 2022,
Appendix B), which counts the matmuls of the model and its attention, and no recomputation:

    forward                 F  = 2 (N + N_a) T + A
    backward, activations      = 2 (N + N_a) T + 2 A       (every method: the gradient flows down every layer)
    backward, weights          = 2 N_t T                   (only for the trainable matrices)
    full fine-tuning  (N_a = 0, N_t = N):   6 N T + 3 A
    LoRA / adapters   (N_t = N_a):          4 N T + 6 N_a T + 3 A

N: the weights of the matrices every token goes through (attention and feed-forward projections; a causal LM's LM
head, tied to the embedding or not); embedding look-ups, norms and biases are not matmuls and are left out, so is
a classifier's head (it sees one token per sequence). N_a: the method's own matrices that every token goes through
(LoRA: r (d_in + d_out) per adapted matrix; adapters: their down and up projections). N_t: the trainable ones.
A = 4 L s d_attn T: the attention scores QK^T and their product with V, 2 s d_attn FLOPs each per token and layer
(d_attn = heads x head size; causal masking is not discounted, as PaLM). DeBERTa's relative-position terms (c2p,
p2c) add attention matmuls the formula does not count (the FLOP counter below does).

`count_step_flops` counts the same step's FLOPs with `torch.utils.flop_counter.FlopCounterMode` (every aten
matmul, convolution and SDPA call, forward and backward), on the meta device: a check of the formula.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from lora.methods.base import Projection
from lora.methods.lora import FusedLoRA, LoRALinear
from lora.models import is_classifier

# Dense peak FLOP/s (tensor cores, no sparsity) by device name and dtype, from the vendors' data sheets. H100 SXM
# and H200 share the Hopper SXM5 compute (989.4 TFLOP/s bf16/fp16 dense, 494.7 TF32, 66.9 FP32 without tensor
# cores); A100: 312 bf16, 156 TF32, 19.5 FP32.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"bfloat16": 989.4, "float16": 989.4, "float32": 66.9, "tf32": 494.7},
    "H100": {"bfloat16": 989.4, "float16": 989.4, "float32": 66.9, "tf32": 494.7},
    "A100": {"bfloat16": 312.0, "float16": 312.0, "float32": 19.5, "tf32": 156.0},
}


@dataclass(frozen=True)
class StepFlops:
    """The terms of the formula for one model, method and shape (see the module docstring)."""

    n: int  # frozen + trainable matrices of the backbone (and LM head) every token goes through
    n_a: int  # the method's own per-token matrices (LoRA A and B, adapter projections)
    n_t: int  # trainable per-token matrices
    layers: int
    d_attn: int
    batch: int
    seq: int

    @property
    def tokens(self) -> int:
        return self.batch * self.seq

    @property
    def attention(self) -> float:
        """A: forward attention FLOPs, 4 L s d_attn T."""
        return 4.0 * self.layers * self.seq * self.d_attn * self.tokens

    @property
    def forward(self) -> float:
        return 2.0 * (self.n + self.n_a) * self.tokens + self.attention

    @property
    def train(self) -> float:
        """forward + backward (activations) + backward (weights of the trainable matrices)."""
        t = self.tokens
        return 4.0 * (self.n + self.n_a) * t + 2.0 * self.n_t * t + 3.0 * self.attention

    def formula(self) -> str:
        full = self.n_a == 0 and self.n_t == self.n
        if full:
            return (
                f"6 N T + 3 A = 6 x {self.n / 1e6:,.1f}M x {self.tokens:,} + 3 x 4 L s d T "
                f"(L={self.layers}, s={self.seq}, d={self.d_attn}) = {self.train / 1e12:,.3f} TFLOP"
            )
        return (
            f"4 (N + N_a) T + 2 N_t T + 3 A = 4 x ({self.n / 1e6:,.1f}M + {self.n_a / 1e6:,.3f}M) x {self.tokens:,} + "
            f"2 x {self.n_t / 1e6:,.3f}M x {self.tokens:,} + 3 x 4 L s d T (L={self.layers}, s={self.seq}, "
            f"d={self.d_attn}) = {self.train / 1e12:,.3f} TFLOP"
        )


def _is_head(model: nn.Module, name: str) -> bool:
    """A classifier's head (outside the backbone): one token per sequence, not counted in N."""
    return is_classifier(model) and not name.startswith(model.base_model_prefix + ".")


def step_flops(model: nn.Module, batch: int, seq: int) -> StepFlops:
    """The formula's terms for `model` as it is (method applied, `requires_grad` set) at batch x seq."""
    from lora.methods.adapters import BottleneckAdapter

    own: set[int] = set()  # the method's matrices
    for m in model.modules():
        if isinstance(m, LoRALinear | FusedLoRA):
            own |= {id(m.get_parameter(k)) for k in m.lora_names()}
        elif isinstance(m, BottleneckAdapter):
            own |= {id(m.down.weight), id(m.up.weight)}
    n = n_a = n_t = 0
    seen: set[int] = set()
    for name, m in model.named_modules():
        if _is_head(model, name):
            continue
        weights = [m.weight] if isinstance(m, nn.Linear | Conv1D | Projection) else []
        if isinstance(m, LoRALinear | FusedLoRA):
            weights += [m.get_parameter(k) for k in m.lora_names()]
        for w in weights:
            if id(w) in seen:
                continue
            seen.add(id(w))
            if id(w) in own:
                n_a += w.numel()
            else:
                n += w.numel()
            if w.requires_grad:
                n_t += w.numel()
    cfg = model.config
    layers = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
    heads = getattr(cfg, "num_attention_heads", None) or cfg.n_head
    hidden = getattr(cfg, "hidden_size", None) or cfg.n_embd
    head_dim = getattr(cfg, "head_dim", None) or hidden // heads
    return StepFlops(n, n_a, n_t, layers, heads * head_dim, batch, seq)


def count_step_flops(model: nn.Module, inputs: dict[str, torch.Tensor]) -> int:
    """FLOPs of one forward + backward of `model` on `inputs`, counted by torch's FlopCounterMode (aten matmuls,
    convolutions, SDPA). Run it on a model on the `meta` device to count without computing."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model(**inputs).loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def peak_flops(device: torch.device, dtype: torch.dtype, given_tflops: float | None = None) -> float | None:
    """The peak FLOP/s to divide by: `given_tflops` (TFLOP/s) when given, else the data-sheet value of a known
    GPU for `dtype` (fp32 counts as TF32, PyTorch's default for matmuls on those GPUs only when enabled: we take
    the plain FP32 peak unless `torch.backends.cuda.matmul.allow_tf32`), else None."""
    if given_tflops is not None:
        return given_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, table in PEAK_TFLOPS.items():
        if key in name:
            kind = str(dtype).removeprefix("torch.")
            if kind == "float32" and torch.backends.cuda.matmul.allow_tf32:
                kind = "tf32"
            return table.get(kind, table["float32"]) * 1e12
    return None


def measured_matmul_flops(device: torch.device, dtype: torch.dtype, n: int = 2048, reps: int = 3) -> float:
    """FLOP/s of a square n x n matmul on this device (best of `reps`): the rate a CPU reaches in practice, for an
    MFU on CPU where no data-sheet peak applies."""
    import time

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(reps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best
