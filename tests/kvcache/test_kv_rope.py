"""RoPE at arbitrary positions against the pairwise rotation formula and HF transformers' Llama RoPE."""

from __future__ import annotations

import math

import pytest
import torch

from kvcache.rope import (RopeTable, apply_rope, inverse_rope_table, remove_rope, rope_cos_sin, rope_inv_freq,
                          shared_rope_table)


def _direct(x: torch.Tensor, positions: list[int], theta: float) -> torch.Tensor:
    h, n, d = x.shape
    out = torch.empty(h, n, d, dtype=torch.float64)
    half = d // 2
    xd = x.double()
    for j, p in enumerate(positions):
        for i in range(half):
            # float32 frequency and float32 angle, as HF / vLLM compute them
            freq = torch.tensor(theta ** (-2.0 * i / d), dtype=torch.float32)
            angle = float(torch.tensor(float(p), dtype=torch.float32) * freq)
            c, s = math.cos(angle), math.sin(angle)
            a, b = xd[:, j, i], xd[:, j, i + half]
            out[:, j, i] = a * c - b * s
            out[:, j, i + half] = b * c + a * s
    return out


def test_rope_matches_direct_formula_at_arbitrary_positions() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16)
    positions = [0, 7, 1, 4095, 32767]
    got = apply_rope(x, torch.tensor(positions), theta=10000.0)
    torch.testing.assert_close(got.double(), _direct(x, positions, 10000.0), atol=2e-5, rtol=1e-5)
    assert torch.equal(got[:, 0], x[:, 0])  # position 0 is the identity
    per_head = torch.tensor([[5, 0, 9, 1, 2], [0, 0, 0, 0, 0], [1, 2, 3, 4, 5]])
    for h in range(3):
        torch.testing.assert_close(apply_rope(x, per_head, theta=10.0)[h], apply_rope(x[h : h + 1], per_head[h], theta=10.0)[0])


def test_rope_preserves_norm_and_relative_position() -> None:
    torch.manual_seed(1)
    q, k = torch.randn(1, 1, 64), torch.randn(1, 1, 64)
    dots = []
    for shift in (0, 100, 5000):
        qr = apply_rope(q, torch.tensor([shift + 30]), theta=100000.0)
        kr = apply_rope(k, torch.tensor([shift + 10]), theta=100000.0)
        dots.append(float((qr * kr).sum()))
        torch.testing.assert_close(kr.norm(), k.norm())
    assert max(dots) - min(dots) < 1e-3 * abs(dots[0]) + 1e-4


def test_rope_matches_transformers_llama_rotary_embedding() -> None:
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    config = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, head_dim=16, rope_theta=50000.0)
    rotary = LlamaRotaryEmbedding(config)
    torch.manual_seed(2)
    k = torch.randn(1, 2, 6, 16)
    pos = torch.tensor([[3, 0, 900, 17, 2048, 5]])
    cos, sin = rotary(k, pos)
    _, ref = apply_rotary_pos_emb(k, k, cos, sin)
    got = apply_rope(k[0], pos[0], inv_freq=rotary.inv_freq, attention_scaling=rotary.attention_scaling)
    torch.testing.assert_close(got, ref[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rotary.inv_freq.float(), rope_inv_freq(16, 50000.0))


def test_rope_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        apply_rope(torch.randn(2, 3, 8), torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        rope_inv_freq(7)


def test_rope_table_gives_the_exact_rotation_grows_on_demand_and_is_shared() -> None:
    inv_freq, scaling = rope_inv_freq(64, 10000.0) * 0.25, 1.1
    table = RopeTable(inv_freq, scaling)
    pos = torch.tensor([[5, 40000, 3], [0, 1, 2047]])
    cos, sin = table.cos_sin(pos)
    want_cos, want_sin = rope_cos_sin(pos, inv_freq, scaling)
    assert torch.equal(cos, want_cos) and torch.equal(sin, want_sin) and len(table) == 40001
    x = torch.randn(2, 3, 64)
    assert torch.equal(apply_rope(x, pos, table=table), apply_rope(x, pos, inv_freq=inv_freq, attention_scaling=scaling))
    with pytest.raises(ValueError, match="non-negative"):
        table.cos_sin(torch.tensor([-1, 2]))
    assert shared_rope_table(inv_freq, scaling) is shared_rope_table(inv_freq.clone(), scaling)
    assert shared_rope_table(inv_freq, 1.0) is not shared_rope_table(inv_freq, scaling)


@pytest.mark.parametrize("scaling", [1.0, 1.2, 0.7])
def test_remove_rope_from_the_inverse_table_is_bitwise_the_computed_one(scaling: float) -> None:
    inv_freq = rope_inv_freq(64, 100000.0) * 0.25
    x = torch.randn(3, 4000, 64)
    pos = torch.arange(4000) * 9  # up to 36K: angles of every size
    want = remove_rope(x, pos, inv_freq=inv_freq, attention_scaling=scaling)
    got = remove_rope(x, pos, inv_freq=inv_freq, attention_scaling=scaling, table=inverse_rope_table(inv_freq, scaling))
    assert torch.equal(got, want)
    back = apply_rope(got, pos, inv_freq=inv_freq, attention_scaling=scaling)
    torch.testing.assert_close(back, x, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="positions"):
        remove_rope(x, pos[:10], inv_freq=inv_freq, table=inverse_rope_table(inv_freq, scaling))
