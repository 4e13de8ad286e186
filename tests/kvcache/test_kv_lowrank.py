"""Low-rank pre-RoPE keys: error falls with rank, is ~0 at full rank, and rebuild + RoPE equals RoPE of the exact keys."""

from __future__ import annotations

import pytest
import torch

from kvcache.lowrank import fit_lowrank, rebuild, rebuild_rotated, reconstruction_error, relative_error
from kvcache.rope import apply_rope, rope_inv_freq

HKV, N, D = 3, 96, 16


def _low_rank_plus_noise(true_rank: int = 6, noise: float = 0.05, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    flat = torch.randn(N, true_rank, generator=g) @ torch.randn(true_rank, HKV * D, generator=g)
    flat = flat + noise * torch.randn(N, HKV * D, generator=g)
    return flat.reshape(N, HKV, D).permute(1, 0, 2).contiguous()


def test_error_decreases_with_rank_and_vanishes_at_full_rank() -> None:
    k = _low_rank_plus_noise()
    errors = [float(reconstruction_error(k, fit_lowrank(k, r)).norm()) for r in range(1, HKV * D + 1, 3)]
    assert all(b <= a + 1e-7 for a, b in zip(errors, errors[1:]))
    assert errors[0] > 0.3
    full = reconstruction_error(k, fit_lowrank(k, HKV * D))
    assert float(full.max()) < 1e-6
    # past the planted rank only the noise is left: error ~ noise / signal
    at_true = relative_error(k, 6)
    assert at_true < 0.05 and relative_error(k, 5) > 0.1
    # the per-layer error of the fit matches the SVD tail formula
    per_head = reconstruction_error(k, fit_lowrank(k, 6))
    overall = float((per_head.double() ** 2 * k.double().pow(2).sum(dim=(1, 2))).sum().sqrt() / k.double().norm())
    assert overall == pytest.approx(at_true, rel=1e-4)


def test_factor_shapes_and_rank_clamp() -> None:
    k = _low_rank_plus_noise()
    f = fit_lowrank(k, 10)
    assert f.a.shape == (N, 10) and f.b.shape == (10, HKV * D) and f.nbytes() == (N * 10 + 10 * HKV * D) * 4
    torch.testing.assert_close(f.b @ f.b.T, torch.eye(10), atol=1e-5, rtol=0)
    assert fit_lowrank(k[:, :5], 40).rank == 5
    with pytest.raises(ValueError):
        fit_lowrank(k, 0)


def test_rebuild_rotated_equals_rope_of_exact_keys_at_full_rank() -> None:
    k = _low_rank_plus_noise(seed=3)
    f = fit_lowrank(k, HKV * D)
    inv_freq = rope_inv_freq(D, 10000.0)
    positions = torch.tensor([95, 0, 40, 41, 7])
    got = rebuild_rotated(f, positions, inv_freq=inv_freq)
    ref = apply_rope(k[:, positions], positions, inv_freq=inv_freq)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    heads = torch.tensor([2, 0])
    torch.testing.assert_close(rebuild(f, positions, heads), k[heads][:, positions], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        rebuild(f, torch.tensor([N]))
