import warnings

import pytest
import torch

from attention_backends.executor_flex import build_block_mask, flex_sparse_attention
from attention_backends.interface import estimate_index
from attention_backends.reference import masked_attention

from sparse_cases import SPARSE_CASES, random_qkv


@pytest.fixture(autouse=True)
def _quiet_unfused_warning():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        yield


@pytest.mark.parametrize("params", SPARSE_CASES, ids=lambda p: p.pattern.value)
@pytest.mark.parametrize("seq_len", (1, 37, 130))
def test_flex_mask_semantics_equal_reference(params, seq_len):
    """Uncompiled flex applies mask_mod densely: this checks that the mask_mod alone is exact."""
    q, k, v = random_qkv(seq_len, q_heads=6, kv_heads=2)
    index = estimate_index(q, k, params)
    got = flex_sparse_attention(q, k, v, index, compiled=False)
    torch.testing.assert_close(got, masked_attention(q, k, v, index), atol=2e-6, rtol=1e-5)


def test_block_lists_cover_exactly_the_kept_blocks_and_column_slots():
    q, k, _ = random_qkv(130)
    index = estimate_index(q, k, SPARSE_CASES[2])
    mask, col_pos = build_block_mask(index)
    nqb = index.num_q_blocks
    dense = mask.to_dense()[0]  # [H, nQB, nKB]: listed blocks, partial or full
    assert torch.equal(dense[..., :nqb], index.block_mask())
    # a column-slot block is listed iff one of its slots is kept by that query block
    for h in range(index.num_heads):
        for qb in range(nqb):
            cols = set(index.columns[h, qb, : index.column_counts[h, qb]].tolist())
            listed = dense[h, qb, nqb:].nonzero().flatten().tolist()
            slots = {int(col_pos[h, s]) for blk in listed for s in range(blk * 16, blk * 16 + 16)}
            assert cols <= slots


@pytest.mark.slow
def test_compiled_flex_equals_reference():
    """Compiles the fused CPU kernel once (about a minute on two cores)."""
    q, k, v = random_qkv(256, q_heads=4, kv_heads=2, head_dim=16)
    for params in (SPARSE_CASES[1], SPARSE_CASES[2]):
        index = estimate_index(q, k, params)
        got = flex_sparse_attention(q, k, v, index, compiled=True)
        torch.testing.assert_close(got, masked_attention(q, k, v, index), atol=1e-5, rtol=1e-4)
