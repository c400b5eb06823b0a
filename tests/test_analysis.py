"""Known-answer tests for lora/analysis.py (Sec. 7 of the LoRA paper)."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lora.analysis import (
    amplification,
    delta_weight,
    load_adapter_factors,
    lora_factors,
    plot_similarity_heatmaps,
    random_gaussian_like,
    right_singular_vectors,
    similarity_grid,
    subspace_similarity,
    table7_markdown,
)


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_right_singular_vectors_are_orthonormal_and_span_the_row_space() -> None:
    A = _randn(4, 10, seed=0)
    V = right_singular_vectors(A)
    assert V.shape == (10, 4) and V.dtype == torch.float64
    torch.testing.assert_close(V.mT @ V, torch.eye(4, dtype=torch.float64))
    torch.testing.assert_close(
        A.double() @ V @ V.mT, A.double()
    )  # projecting rows onto span(V) changes nothing


def test_identical_subspaces_give_one_on_the_diagonal() -> None:
    # Q A has the same Gram matrix A^T A as A for orthogonal Q, hence the same right singular vectors (up to sign).
    A = _randn(6, 20, seed=1)
    Q = torch.linalg.qr(_randn(6, 6, seed=2)).Q
    grid = similarity_grid(A, Q @ A)
    np.testing.assert_allclose(np.diag(grid), np.ones(6), atol=1e-10)
    assert subspace_similarity(A, Q @ A, 6, 6) == pytest.approx(1.0, abs=1e-10)


def test_orthogonal_subspaces_give_zero() -> None:
    eye = torch.eye(16)
    A1 = _randn(4, 4, seed=3) @ eye[:4]  # rows span e1..e4
    A2 = _randn(4, 4, seed=4) @ eye[4:8]  # rows span e5..e8
    np.testing.assert_allclose(similarity_grid(A1, A2), np.zeros((4, 4)), atol=1e-12)


def test_contained_subspace_gives_one() -> None:
    A2 = _randn(8, 32, seed=5)
    A1 = _randn(4, 8, seed=6) @ A2  # row space of A1 is inside that of A2
    assert subspace_similarity(A1, A2, 4, 8) == pytest.approx(1.0, abs=1e-10)


def test_symmetry_and_grid_matches_direct_computation() -> None:
    A1, A2 = _randn(5, 24, seed=7), _randn(8, 24, seed=8)
    grid = similarity_grid(A1, A2)
    assert grid.shape == (5, 8)
    assert ((grid >= 0) & (grid <= 1 + 1e-12)).all()
    direct = np.array([[subspace_similarity(A1, A2, i, j) for j in range(1, 9)] for i in range(1, 6)])
    np.testing.assert_allclose(grid, direct, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(similarity_grid(A2, A1), grid.T, rtol=1e-12, atol=1e-14)
    assert subspace_similarity(A1, A2, 2, 7) == pytest.approx(subspace_similarity(A2, A1, 7, 2), rel=1e-12)
    assert similarity_grid(A1, A2, max_i=3, max_j=2).shape == (3, 2)
    np.testing.assert_allclose(similarity_grid(A1, A2, 3, 2), grid[:3, :2], rtol=1e-12)


def test_random_subspaces_have_expected_similarity_max_i_j_over_d() -> None:
    # For independent uniformly random subspaces with projectors P_i, P_j in R^d: E[P_j] = (j/d) I by rotation
    # invariance, so E||U_i^T U_j||_F^2 = E tr(P_i P_j) = tr(P_i) j/d = i j/d and E phi = max(i, j)/d. The top-i right
    # singular subspace of a Gaussian matrix is uniformly random (G Q ~ G for orthogonal Q). The exact variance is
    # Var tr(P_i P_j) = 2ij(d-i)(d-j) / (d^2 (d-1)(d+2)) (checked here by a 2e5-sample Monte Carlo: 0.0619 vs 0.0621
    # for d=16, i=3, j=5), so we allow 5 standard errors of the n-seed mean per entry.
    d, r, n = 32, 8, 100
    A = torch.empty(r, d)
    grids = np.stack(
        [similarity_grid(random_gaussian_like(A, s), random_gaussian_like(A, 1000 + s)) for s in range(n)]
    )
    i, j = np.arange(1, r + 1)[:, None], np.arange(1, r + 1)[None, :]
    expected = np.maximum(i, j) / d
    std_err = (
        np.sqrt(2 * i * j * (d - i) * (d - j) / (d**2 * (d - 1) * (d + 2))) / np.minimum(i, j) / math.sqrt(n)
    )
    assert (np.abs(grids.mean(0) - expected) < 5 * std_err).all()


def test_random_gaussian_like_is_reproducible_and_matches_shape() -> None:
    A = torch.zeros(3, 7, dtype=torch.float32)
    G = random_gaussian_like(A, seed=11)
    assert G.shape == A.shape and G.dtype == A.dtype
    torch.testing.assert_close(G, random_gaussian_like(A, seed=11))
    assert not torch.equal(G, random_gaussian_like(A, seed=12))


def test_amplification_of_update_aligned_with_top_singular_pair() -> None:
    # W = diag(3, 2, 1) padded to (4, 3): sigma_1 = 3 with u = e1, v = e1; dW = 0.5 e1 e1^T.
    # Hand values: proj_dW = |e1^T W e1| = 3, proj_W(r=1) = 3, ||W||_F = sqrt(14), ||dW||_F = 0.5, factor = 0.5/3.
    W = torch.zeros(4, 3)
    W[0, 0], W[1, 1], W[2, 2] = 3.0, 2.0, 1.0
    dW = torch.zeros(4, 3)
    dW[0, 0] = 0.5
    out = amplification(W, dW, r=1)
    assert set(out) == {"proj_dW", "proj_W", "proj_random", "norm_W", "norm_dW", "amplification"}
    assert all(isinstance(v, float) for v in out.values())
    assert out["proj_dW"] == pytest.approx(3.0)
    assert out["proj_W"] == pytest.approx(3.0)
    assert out["norm_W"] == pytest.approx(math.sqrt(14.0))
    assert out["norm_dW"] == pytest.approx(0.5)
    assert out["amplification"] == pytest.approx(0.5 / 3.0)
    assert amplification(W, dW, r=2)["proj_W"] == pytest.approx(math.sqrt(13.0))  # sqrt(3^2 + 2^2)


def test_amplification_of_random_update_is_small_and_random_control_has_known_mean() -> None:
    # W with a spiked spectrum (50, 40, 30, then 1s); a random rank-4 dW = B A barely sees W's top directions.
    d, r = 64, 4
    Q1, Q2 = torch.linalg.qr(_randn(d, d, seed=20)).Q, torch.linalg.qr(_randn(d, d, seed=21)).Q
    sigma = torch.ones(d)
    sigma[:3] = torch.tensor([50.0, 40.0, 30.0])
    W = Q1 @ torch.diag(sigma) @ Q2.mT
    dW = delta_weight(_randn(r, d, seed=22), _randn(d, r, seed=23), scaling=2.0)
    out = amplification(W, dW, r)
    assert out["proj_W"] == pytest.approx(math.sqrt(50**2 + 40**2 + 30**2 + 1), rel=1e-5)
    assert out["proj_dW"] < 0.2 * out["proj_W"]
    # Random control: U, V of a Gaussian matrix are independent Haar frames, so E[U U^T] = (r/d_out) I and
    # E[V V^T] = (r/d_in) I give E proj_random^2 = r^2 / (d_out d_in) ||W||_F^2. The 400-seed mean has a relative
    # standard deviation of about 2.6% (measured: 3.7% over 30 repeats of 200 seeds), so 12% is about 4.5 sigma.
    W = _randn(24, 16, seed=24)
    mean_sq = np.mean([amplification(W, W, 3, seed=s)["proj_random"] ** 2 for s in range(400)])
    assert mean_sq == pytest.approx(9 / (24 * 16) * float(W.square().sum()), rel=0.12)


def test_bad_inputs_raise_clear_value_errors() -> None:
    A1, A2 = _randn(4, 10, seed=30), _randn(4, 12, seed=31)
    with pytest.raises(ValueError, match="same d_in"):
        subspace_similarity(A1, A2, 1, 1)
    with pytest.raises(ValueError, match="i=5 is out of range"):
        subspace_similarity(A1, A1, 5, 1)
    with pytest.raises(ValueError, match="j=0 is out of range"):
        subspace_similarity(A1, A1, 1, 0)
    with pytest.raises(ValueError, match="max_j=9"):
        similarity_grid(A1, A1, max_j=9)
    with pytest.raises(ValueError, match="2-D"):
        right_singular_vectors(torch.ones(3))
    with pytest.raises(ValueError, match="same"):
        amplification(torch.ones(3, 4), torch.ones(4, 3), r=1)
    with pytest.raises(ValueError, match="r=4 is out of range"):
        amplification(torch.ones(3, 4), torch.ones(3, 4), r=4)
    with pytest.raises(ValueError, match="rank r"):
        delta_weight(torch.ones(2, 5), torch.ones(5, 3))


def test_lora_factors_parses_plain_and_sliced_keys(tmp_path: Path) -> None:
    r, d = 2, 6
    sd = {
        "transformer.h.0.attn.c_attn.lora_A.q": _randn(r, d, seed=40),
        "transformer.h.0.attn.c_attn.lora_B.q": _randn(d, r, seed=41),
        "transformer.h.0.attn.c_attn.lora_A.v": _randn(r, d, seed=42),
        "transformer.h.0.attn.c_attn.lora_B.v": _randn(d, r, seed=43),
        "encoder.layer.0.attention.self.query.lora_A": _randn(r, d, seed=44),
        "encoder.layer.0.attention.self.query.lora_B": _randn(3, r, seed=45),
        "classifier.weight": torch.ones(2, d),  # not an adapter factor: ignored
    }
    factors = lora_factors(sd)
    assert sorted(factors) == [
        "encoder.layer.0.attention.self.query",
        "transformer.h.0.attn.c_attn.q",
        "transformer.h.0.attn.c_attn.v",
    ]
    A, B = factors["encoder.layer.0.attention.self.query"]
    assert A.shape == (r, d) and B.shape == (3, r)
    assert torch.equal(
        factors["transformer.h.0.attn.c_attn.v"][0], sd["transformer.h.0.attn.c_attn.lora_A.v"]
    )

    path = tmp_path / "adapter.safetensors"
    save_file(sd, str(path))
    loaded = load_adapter_factors(path)
    assert sorted(loaded) == sorted(factors)
    torch.testing.assert_close(
        loaded["transformer.h.0.attn.c_attn.q"][1], sd["transformer.h.0.attn.c_attn.lora_B.q"]
    )


def test_lora_factors_rejects_incomplete_or_inconsistent_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not its pair"):
        lora_factors({"m.lora_A": torch.ones(2, 4)})
    with pytest.raises(ValueError, match="not \\(r, d_in\\)"):
        lora_factors({"m.lora_A": torch.ones(2, 4), "m.lora_B": torch.ones(4, 3)})
    with pytest.raises(ValueError, match="no '.lora_A'"):
        lora_factors({"m.weight": torch.ones(2, 4)})
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_adapter_factors(tmp_path / "missing.safetensors")


def test_plot_similarity_heatmaps_writes_png(tmp_path: Path) -> None:
    A8, A64 = _randn(8, 128, seed=50), _randn(64, 128, seed=51)
    full = similarity_grid(A8, A64)
    path = plot_similarity_heatmaps(
        {"ΔW_q (i ≤ 8, j ≤ 64)": full, "ΔW_q (j ≤ 8)": full[:, :8]}, tmp_path / "fig" / "fig3.png", "Fig. 3"
    )
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    with pytest.raises(ValueError, match="grids is empty"):
        plot_similarity_heatmaps({}, tmp_path / "empty.png")


def test_table7_markdown_has_our_numbers_and_the_papers() -> None:
    W, dW = _randn(16, 16, seed=60), _randn(16, 16, seed=61)
    rows = [{"label": "h.0 W_q", "r": r, **amplification(W, dW, r)} for r in (4, 8)]
    md = table7_markdown(rows).splitlines()
    assert len(md) == 4 and md[0].startswith("| module | r |")
    assert "0.32 / 21.67 / 0.02" in md[2] and "61.95" in md[2] and "×21.5" in md[2]
    assert f"{rows[0]['proj_W']:.2f}" in md[2]
    assert md[3].endswith("| – |")  # the paper reports no r=8 row
