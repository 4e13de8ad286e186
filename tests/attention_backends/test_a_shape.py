import torch

from attention_backends.a_shape import a_shape_block_mask, a_shape_index, estimate_a_shape
from attention_backends.patterns import AShapeParams

from sparse_cases import random_qkv


def test_every_row_keeps_its_sinks_and_local_window():
    params = AShapeParams(n_init=10, n_local=40, block_size=16)
    q, k, _ = random_qkv(150)
    mask = estimate_a_shape(q, k, params).to_mask()
    for i in range(150):
        wanted = set(range(min(10, i + 1))) | set(range(max(0, i - 39), i + 1))
        kept = set(mask[0, i].nonzero().flatten().tolist())
        assert wanted <= kept
        assert max(kept) == i  # causal
    assert all(torch.equal(mask[h], mask[0]) for h in range(4))


def test_block_budget_bound():
    params = AShapeParams(n_init=20, n_local=50, block_size=16)
    mask = a_shape_block_mask(1000, params)
    bound = -(-20 // 16) + -(-(50 - 1) // 16) + 1
    assert mask.sum(-1).max().item() <= bound
    assert torch.equal(mask, mask.tril())


def test_index_is_valid_for_lengths_off_the_block_grid():
    for n in (1, 15, 17, 100):
        q, k, _ = random_qkv(n)
        estimate_a_shape(q, k, AShapeParams(n_init=3, n_local=20, block_size=16)).validate()


def test_index_from_shapes_alone_equals_the_estimate():
    params = AShapeParams(n_init=3, n_local=20, block_size=16)
    q, k, _ = random_qkv(150)
    got, want = a_shape_index(150, q.shape[0], params), estimate_a_shape(q, k, params)
    assert torch.equal(got.to_mask(), want.to_mask())
    assert torch.equal(got.block_counts, want.block_counts)
