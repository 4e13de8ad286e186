import pytest
import torch

from attention_backends.dense import dense_attention
from attention_backends.executor_cpu import gather_attention
from attention_backends.interface import estimate_index
from attention_backends.reference import masked_attention

from sparse_cases import SPARSE_CASES, full_budget_cases, random_qkv

LENGTHS = (1, 15, 16, 37, 130)  # below one block, exactly one, off-grid, several blocks


@pytest.mark.parametrize("params", SPARSE_CASES, ids=lambda p: p.pattern.value)
@pytest.mark.parametrize("seq_len", LENGTHS)
def test_gather_equals_masked_reference(params, seq_len):
    q, k, v = random_qkv(seq_len, q_heads=6, kv_heads=2)
    index = estimate_index(q, k, params)
    expected = masked_attention(q, k, v, index)
    # a tiny tile forces many query-block chunks
    got = gather_attention(q, k, v, index, tile_elems=16 * 48)
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(got[:, 0], v[:, 0].repeat_interleave(3, 0))  # first row sees only key 0
    torch.testing.assert_close(got[:, -1], expected[:, -1], atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("seq_len", (15, 70))
def test_full_budget_equals_dense(seq_len):
    q, k, v = random_qkv(seq_len, q_heads=4, kv_heads=1)
    dense = dense_attention(q, k, v)
    for params in full_budget_cases(seq_len):
        out = gather_attention(q, k, v, estimate_index(q, k, params))
        torch.testing.assert_close(out, dense, atol=2e-6, rtol=1e-5)


def test_bf16_inputs_within_tolerance():
    q, k, v = random_qkv(100, dtype=torch.bfloat16)
    index = estimate_index(q, k, SPARSE_CASES[2])
    got = gather_attention(q, k, v, index)
    assert got.dtype == torch.bfloat16
    # fp32 math on the same bf16 values, then one bf16 rounding: within 1 bf16 ulp of |v| <= 4
    expected = masked_attention(q.float(), k.float(), v.float(), index)
    torch.testing.assert_close(got.float(), expected, atol=2e-2, rtol=1e-2)


def test_bad_tile_and_mismatched_index():
    q, k, v = random_qkv(40)
    index = estimate_index(q, k, SPARSE_CASES[0])
    with pytest.raises(ValueError, match="tile_elems"):
        gather_attention(q, k, v, index, tile_elems=0)
    with pytest.raises(ValueError, match="planned for"):
        gather_attention(q[:, :20], k[:, :20], v[:, :20], index)
