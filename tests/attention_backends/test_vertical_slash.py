import math

import torch

from attention_backends.patterns import VerticalSlashParams
from attention_backends.vertical_slash import (
    diagonal_block_offsets,
    estimate_vertical_slash,
    last_query_attention,
    vertical_slash_index,
    vertical_slash_scores,
)

from sparse_cases import random_qkv


def test_last_query_attention_is_the_causal_softmax():
    q, k, _ = random_qkv(40)
    probs = last_query_attention(q, k, 8, 0.25)
    full = torch.softmax((q @ k.repeat_interleave(2, 0).transpose(1, 2)) * 0.25 + torch.full((40, 40), -math.inf).triu(1), -1)
    torch.testing.assert_close(probs, full[:, -8:])


def test_scores_sum_per_column_and_per_diagonal():
    probs = torch.zeros(1, 2, 5)
    probs[0, 0, 1] = 1.0  # query 3 -> key 1: offset 2
    probs[0, 1, 4] = 0.5  # query 4 -> key 4: offset 0
    probs[0, 1, 2] = 0.5  # query 4 -> key 2: offset 2
    vertical, slash = vertical_slash_scores(probs)
    assert vertical.flatten().tolist() == [0, 0.5, 0.25, 0, 0.25]
    assert slash.flatten().tolist() == [0.25, 0, 0.75, 0, 0]


def test_diagonals_round_out_to_the_blocks_they_cross():
    kept = diagonal_block_offsets(torch.tensor([0, 16, 20]), 16)
    assert kept.nonzero().flatten().tolist() == [0, 1, 2]


def test_index_covers_every_listed_column_and_diagonal():
    n, b = 130, 16
    cols, offs = torch.tensor([3, 40, 41, 100]), torch.tensor([0, 5, 33])
    index = vertical_slash_index([cols], [offs], n, b)
    index.validate()
    mask = index.to_mask()[0]
    for i in range(n):
        for c in cols.tolist():
            assert c > i or mask[i, c]
        for o in offs.tolist():
            assert o > i or mask[i, i - o]
    assert (index.block_counts <= 2 * len(offs) + 1).all()


def test_estimator_finds_planted_column_and_respects_budgets():
    q, k, _ = random_qkv(256, q_heads=2, kv_heads=1, seed=1)
    direction = torch.randn(16)
    k[0, 37] = direction * 4
    q[:] = q * 0.1 + direction
    params = VerticalSlashParams(n_vertical=5, n_slash=6, n_sink=2, n_recent=3, last_q=16, block_size=16)
    index = estimate_vertical_slash(q, k, params)
    index.validate()
    mask = index.to_mask()
    assert mask[:, 37:, 37].all()
    distinct_cols = [set(index.columns[h][index.column_counts[h] > 0].flatten().tolist()) for h in range(2)]
    assert all(len(c) <= params.n_vertical for c in distinct_cols)
    assert (index.block_counts <= 2 * params.n_slash).all()
    again = estimate_vertical_slash(q.clone(), k.clone(), params)
    assert torch.equal(again.to_mask(), mask)
