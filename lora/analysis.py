"""Section 7 of the LoRA paper (Hu et al., 2021): what do the learned updates look like?

Pure linear algebra on saved adapter factors A: (r, d_in) and B: (d_out, r), with dW = B @ A * scaling.

* Subspace similarity (Sec. 7.2, Figs. 3-4): phi(A1, A2, i, j) = ||U1_i^T U2_j||_F^2 / min(i, j) in [0, 1], where U_i
  (d_in, i) holds the top-i right-singular vectors of A as columns. 1: one subspace contains the other; 0: orthogonal.
* Amplification (Sec. 7.3, Table 7): how much of W lies in the top-r singular subspace of dW, against W's own top-r
  subspace and a random one, and the factor ||dW||_F / ||U_dW^T W V_dW||_F by which LoRA amplifies those directions.

All maths runs in float64 on the inputs' device. Trailing singular vectors of a rank-deficient matrix (e.g. dW = 0 at
initialisation, B = 0) are arbitrary, so analyse trained adapters only.
"""

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import Tensor

from lora.errors import ConfigError, InputNotFound

# Table 7 (layer 48 of GPT-3 175B, W_q): ||U^T W_q V||_F for U, V from dW_q / W_q / random; the norms; the factor
# ||dW_q||_F / proj_dW quoted in Sec. 7.3 ("21.5 = 6.91/0.32" for r=4, "only around 2" for r=64). Reference only.
TABLE7_KEYS = ("proj_dW", "proj_W", "proj_random", "norm_W", "norm_dW", "amplification")
PAPER_TABLE7: dict[int, dict[str, float]] = {
    4: dict(zip(TABLE7_KEYS, (0.32, 21.67, 0.02, 61.95, 6.91, 21.5), strict=True)),
    64: dict(zip(TABLE7_KEYS, (1.90, 37.71, 0.33, 61.95, 3.57, 2.0), strict=True)),
}
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])(?:\.(?P<slice>[^.]+))?$")


def _f64(x: Tensor | np.ndarray, name: str = "input") -> Tensor:
    t = torch.as_tensor(x).detach().to(torch.float64)
    if t.ndim != 2:
        raise ConfigError(f"{name} must be a 2-D matrix, got shape {tuple(t.shape)}")
    return t


def right_singular_vectors(A: Tensor) -> Tensor:
    """Right-singular vectors of A (r, d_in) as columns, by decreasing singular value: (d_in, min(r, d_in)), float64."""
    _, _, Vh = torch.linalg.svd(_f64(A, "A"), full_matrices=False)
    return Vh.mT


def _bases(A1: Tensor, A2: Tensor) -> tuple[Tensor, Tensor]:
    if A1.ndim != 2 or A2.ndim != 2 or A1.shape[-1] != A2.shape[-1]:
        raise ConfigError(
            f"A1 {tuple(A1.shape)} and A2 {tuple(A2.shape)} must both be (r, d_in) with the same d_in; "
            "pass the lora_A factors of the same weight matrix"
        )
    return right_singular_vectors(A1), right_singular_vectors(A2)


def _check_k(k: int, U: Tensor, name: str, which: str) -> None:
    if not 1 <= k <= U.shape[1]:
        raise ConfigError(
            f"{name}={k} is out of range for {which} of rank {U.shape[1]}; use 1 <= {name} <= {U.shape[1]}"
        )


def subspace_similarity(A1: Tensor, A2: Tensor, i: int, j: int) -> float:
    """phi(A1, A2, i, j) = ||U1[:, :i]^T U2[:, :j]||_F^2 / min(i, j) (Sec. 7.2, Eq. 4). A1: (r1, d_in), A2: (r2, d_in)."""
    U1, U2 = _bases(A1, A2)
    _check_k(i, U1, "i", "A1")
    _check_k(j, U2, "j", "A2")
    return float((U1[:, :i].mT @ U2[:, :j]).square().sum() / min(i, j))


def similarity_grid(A1: Tensor, A2: Tensor, max_i: int | None = None, max_j: int | None = None) -> np.ndarray:
    """All phi(A1, A2, i, j) for 1 <= i <= max_i, 1 <= j <= max_j: array (max_i, max_j), entry [i-1, j-1] = phi(i, j).

    One SVD per matrix: with G[a, b] = <u1_a, u2_b>^2, ||U1_i^T U2_j||_F^2 = sum_{a<i, b<j} G[a, b], i.e. a 2-D cumsum.
    """
    U1, U2 = _bases(A1, A2)
    max_i = U1.shape[1] if max_i is None else max_i
    max_j = U2.shape[1] if max_j is None else max_j
    _check_k(max_i, U1, "max_i", "A1")
    _check_k(max_j, U2, "max_j", "A2")
    overlap = (U1[:, :max_i].mT @ U2[:, :max_j]).square().cumsum(0).cumsum(1)  # (max_i, max_j)
    i = torch.arange(1, max_i + 1, dtype=torch.float64, device=overlap.device)[:, None]
    j = torch.arange(1, max_j + 1, dtype=torch.float64, device=overlap.device)[None, :]
    return (overlap / torch.minimum(i, j)).cpu().numpy()


def random_gaussian_like(A: Tensor, seed: int) -> Tensor:
    """Control (Sec. 7.2 / 7.3): an i.i.d. N(0, 1) matrix with A's shape, dtype and device, reproducible from `seed`.

    Its row space is uniformly distributed, so phi against an independent subspace has mean max(i, j) / d_in.
    """
    g = torch.Generator().manual_seed(seed)
    return torch.randn(tuple(A.shape), generator=g, dtype=torch.float64).to(A.device, A.dtype)


def delta_weight(A: Tensor, B: Tensor, scaling: float = 1.0) -> Tensor:
    """dW = B @ A * scaling (Sec. 4.1): A (r, d_in), B (d_out, r) -> (d_out, d_in) in float64."""
    A64, B64 = _f64(A, "A"), _f64(B, "B")
    if B64.shape[1] != A64.shape[0]:
        raise ConfigError(
            f"B {tuple(B64.shape)} and A {tuple(A64.shape)} disagree on the rank r; expected B (d_out, r)"
        )
    return B64 @ A64 * scaling


def top_singular_directions(M: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """Top-r singular directions of M (d_out, d_in): U (d_out, r) and V (d_in, r), both with orthonormal columns."""
    U, _, Vh = torch.linalg.svd(_f64(M, "M"), full_matrices=False)
    return U[:, :r], Vh[:r].mT


def amplification(W: Tensor, dW: Tensor, r: int, seed: int = 0) -> dict[str, float]:
    """Table 7 for one weight matrix W (d_out, d_in) and its update dW (d_out, d_in) (Sec. 7.3).

    Convention: with M = U S V^T (U: (d_out, k), V: (d_in, k); torch returns Vh = V^T), the projection of W onto
    M's top-r subspace is U_r^T W V_r, an (r, r) matrix; the paper's "U^T W V^T" names the same thing, its V^T
    denoting the right singular vectors stored as rows (torch's Vh), transposed into columns. We return its Frobenius
    norm for M = dW (`proj_dW`), M = W (`proj_W`, = sqrt(sum of W's top-r sigma^2)) and M = a Gaussian matrix of W's
    shape drawn from `seed` (`proj_random`), plus `norm_W`, `norm_dW` and `amplification` = norm_dW / proj_dW.
    GPT-2's Conv1D stores its weight as (d_in, d_out): pass weight.T (and, for fused c_attn, the q/k/v row block).
    """
    W64, dW64 = _f64(W, "W"), _f64(dW, "dW")
    if W64.shape != dW64.shape:
        raise ConfigError(
            f"W {tuple(W64.shape)} and dW {tuple(dW64.shape)} must have the same (d_out, d_in) shape"
        )
    if not 1 <= r <= min(W64.shape):
        raise ConfigError(
            f"r={r} is out of range for a {tuple(W64.shape)} matrix; use 1 <= r <= {min(W64.shape)}"
        )

    def proj(M: Tensor) -> float:
        U, V = top_singular_directions(M, r)
        return float(torch.linalg.matrix_norm(U.mT @ W64 @ V))

    out = {"proj_dW": proj(dW64), "proj_W": proj(W64), "proj_random": proj(random_gaussian_like(W64, seed))}
    out |= {"norm_W": float(torch.linalg.matrix_norm(W64)), "norm_dW": float(torch.linalg.matrix_norm(dW64))}
    out["amplification"] = out["norm_dW"] / out["proj_dW"] if out["proj_dW"] > 0 else float("inf")
    return out


def lora_factors(state_dict: Mapping[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
    """Pair up adapter factors: {'<module>[.<slice>]': (A (r, d_in), B (d_out, r))}.

    Accepts keys '<module>.lora_A' / '.lora_B' and the per-slice form '<module>.lora_A.<slice>' used for GPT-2's fused
    c_attn (e.g. 'h.0.attn.c_attn.lora_A.q' -> 'h.0.attn.c_attn.q'). Other keys are ignored.
    """
    parts: dict[str, dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        if m := _LORA_KEY.match(key):
            name = m["module"] + (f".{m['slice']}" if m["slice"] else "")
            parts.setdefault(name, {})[m["which"]] = value
    if not parts:
        raise ConfigError(
            f"no '.lora_A'/'.lora_B' keys among {len(state_dict)} keys (e.g. {list(state_dict)[:3]})"
        )
    out = {}
    for name, ab in sorted(parts.items()):
        if set(ab) != {"A", "B"}:
            raise ConfigError(
                f"adapter '{name}' has lora_{''.join(ab)} but not its pair; the checkpoint is incomplete"
            )
        A, B = ab["A"], ab["B"]
        if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1]:
            raise ConfigError(
                f"adapter '{name}': A {tuple(A.shape)} and B {tuple(B.shape)} are not (r, d_in), (d_out, r)"
            )
        out[name] = (A, B)
    return out


def load_adapter_factors(path: str | Path) -> dict[str, tuple[Tensor, Tensor]]:
    """Read an adapter .safetensors file and return `lora_factors` of it."""
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise InputNotFound(f"adapter file {path} does not exist; pass a .safetensors written by training")
    return lora_factors(load_file(str(path)))


def plot_similarity_heatmaps(grids: Mapping[str, np.ndarray], path: str | Path, title: str = "") -> Path:
    """Side-by-side phi heatmaps as in Figs. 3-4 (row i, column j, 1-based; colour 0..1; one colorbar); writes a PNG."""
    if not grids:
        raise ConfigError("grids is empty; pass {panel title: similarity_grid(...)}")
    fig = Figure(figsize=(3.2 * len(grids) + 1.0, 3.4), layout="constrained")
    axes = fig.subplots(1, len(grids), squeeze=False)[0]
    for ax, (name, grid) in zip(axes, grids.items(), strict=True):
        n_i, n_j = grid.shape
        im = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto", interpolation="nearest",
                       extent=(0.5, n_j + 0.5, n_i + 0.5, 0.5))  # fmt: skip
        ax.set(title=name, xlabel="j", ylabel="i")
        for axis in (ax.xaxis, ax.yaxis):  # i and j are integer ranks: no ticks at 1.5
            axis.set_major_locator(MaxNLocator(integer=True))
    fig.colorbar(im, ax=list(axes), shrink=0.9)
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, format="png")
    return path


def table7_markdown(rows: Sequence[Mapping[str, float | int | str]]) -> str:
    """Markdown table like Table 7: one row per `amplification` result dict plus 'r' (and an optional 'label'),
    with the paper's GPT-3 layer-48 W_q values beside where the paper reports that r."""
    proj = [f"‖UᵀWV‖ {m}" for m in ("ΔW", "W", "random")]
    head = ["module", "r", *proj, "‖W‖_F", "‖ΔW‖_F", "factor", "paper (GPT-3 L48 W_q)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        paper = "–"
        if p := PAPER_TABLE7.get(int(row["r"])):
            paper = " / ".join(f"{p[k]:.2f}" for k in TABLE7_KEYS[:3])
            paper += f"; ‖W‖ {p['norm_W']:.2f}, ‖ΔW‖ {p['norm_dW']:.2f}, ×{p['amplification']:.1f}"
        cells = [str(row.get("label", "")), str(row["r"]), *(f"{float(row[k]):.2f}" for k in TABLE7_KEYS)]
        lines.append("| " + " | ".join([*cells, paper]) + " |")
    return "\n".join(lines)
