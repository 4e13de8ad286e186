import math

import pytest
import torch

from attention_backends.a_shape import estimate_a_shape
from attention_backends.metrics import attention_recall, density, sample_rows
from attention_backends.patterns import AShapeParams
from attention_backends.sparse_index import SparseIndex

from sparse_cases import random_qkv


def test_density_counts_causal_pairs():
    n = 40
    full = SparseIndex.from_block_mask(torch.ones(3, 3, 3, dtype=torch.bool).tril(), n, 16)
    assert density(full) == pytest.approx(1.0)
    diag = SparseIndex.from_block_mask(torch.eye(3, dtype=torch.bool).expand(1, 3, 3), n, 16)
    assert density(diag) == pytest.approx((136 + 136 + 8 * 9 / 2) / (n * (n + 1) / 2))


def test_recall_is_one_for_full_and_matches_explicit_mass():
    q, k, _ = random_qkv(50, q_heads=2, kv_heads=1)
    full = SparseIndex.from_block_mask(torch.ones(2, 4, 4, dtype=torch.bool).tril(), 50, 16)
    torch.testing.assert_close(attention_recall(q, k, full), torch.ones(2))
    index = estimate_a_shape(q, k, AShapeParams(n_init=4, n_local=16, block_size=16))
    logits = q @ k.expand(2, -1, -1).transpose(1, 2) / math.sqrt(16) + torch.full((50, 50), -math.inf).triu(1)
    probs = torch.softmax(logits, -1)
    expected = (probs * index.to_mask()).sum(-1).mean(-1)
    torch.testing.assert_close(attention_recall(q, k, index, chunk_elems=200), expected)
    rows = torch.tensor([3, 49])
    torch.testing.assert_close(attention_recall(q, k, index, rows=rows), (probs * index.to_mask()).sum(-1)[:, rows].mean(-1))


def test_sample_rows_spans_the_sequence():
    rows = sample_rows(1000, 11)
    assert rows[0] == 0 and rows[-1] == 999 and rows.numel() == 11
    assert sample_rows(5, 10).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError):
        sample_rows(5, 0)
