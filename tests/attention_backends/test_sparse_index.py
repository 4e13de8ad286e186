import pytest
import torch

from attention_backends.sparse_index import SparseIndex, pack_rows


def _index(block_mask, seq_len, block, columns=None, counts=None) -> SparseIndex:
    return SparseIndex.from_block_mask(torch.tensor(block_mask), seq_len, block, columns, counts)


def test_pack_rows_moves_kept_entries_first_in_order():
    values = torch.tensor([[5, 6, 7, 8], [1, 2, 3, 4]])
    keep = torch.tensor([[False, True, False, True], [False, False, False, False]])
    packed, counts = pack_rows(values, keep)
    assert packed.tolist() == [[6, 8], [0, 0]]
    assert counts.tolist() == [2, 0]


def test_mask_and_pair_counts_agree_with_hand_computed_pairs():
    # N = 10, block 4: query blocks rows [0,4), [4,8), [8,10)
    index = _index(
        [[[True, False, False], [True, True, False], [False, False, True]]],
        10,
        4,
        columns=torch.tensor([[[0], [0], [5]]]),
        counts=torch.tensor([[0, 0, 1]]),
    )
    mask = index.to_mask()[0]
    expected = torch.zeros(10, 10, dtype=torch.bool)
    for i in range(10):
        blocks = {0: [0], 1: [0, 1], 2: [2]}[i // 4]
        for j in range(i + 1):
            if j // 4 in blocks or (i // 4 == 2 and j == 5):
                expected[i, j] = True
    assert torch.equal(mask, expected)
    assert index.pair_counts().tolist() == [int(expected.sum())]
    assert index.density() == pytest.approx(expected.sum().item() / 55)
    index.validate()


def test_block_mask_round_trip():
    mask = torch.tril(torch.ones(2, 5, 5, dtype=torch.bool))
    mask[0, 4, 1:3] = False
    index = SparseIndex.from_block_mask(mask, 70, 16)
    assert torch.equal(index.block_mask(), mask)


def test_block_lists_build_the_same_index_as_their_block_mask():
    g = torch.Generator().manual_seed(0)
    h, nqb, k = 3, 9, 4
    ids = torch.stack([torch.stack([torch.randperm(nqb, generator=g)[:k] for _ in range(nqb)]) for _ in range(h)])
    valid = (ids <= torch.arange(nqb).view(1, -1, 1)) & (torch.rand(h, nqb, k, generator=g) > 0.3)
    mask = torch.zeros(h, nqb, nqb, dtype=torch.bool)
    mask.scatter_(-1, ids, valid)
    got, want = SparseIndex.from_block_lists(ids, valid, 9 * 16 - 5, 16), SparseIndex.from_block_mask(mask, 9 * 16 - 5, 16)
    assert torch.equal(got.block_counts, want.block_counts)
    used = torch.arange(got.block_ids.shape[-1]) < got.block_counts.unsqueeze(-1)
    assert torch.equal(torch.where(used, got.block_ids, -1), torch.where(used, want.block_ids[..., :used.shape[-1]], -1))
    assert torch.equal(got.block_mask(), mask) and not got.has_columns


def test_select_heads_takes_each_head_from_the_chosen_index():
    full = SparseIndex.from_block_mask(torch.tril(torch.ones(2, 3, 3, dtype=torch.bool)), 12, 4)
    diag = SparseIndex.from_block_mask(torch.eye(3, dtype=torch.bool).expand(2, 3, 3), 12, 4)
    mixed = SparseIndex.select_heads(full, diag, torch.tensor([False, True]))
    assert torch.equal(mixed.block_mask()[0], full.block_mask()[0])
    assert torch.equal(mixed.block_mask()[1], diag.block_mask()[1])


@pytest.mark.parametrize(
    "block_mask, columns, counts, message",
    [
        ([[[True, True], [True, True]]], None, None, "non-causal"),
        ([[[False, False], [True, True]]], None, None, "diagonal"),
        ([[[True, False], [True, True]]], [[[0], [1]]], [[0, 1]], "twice"),
        ([[[True, False], [True, True]]], [[[5], [0]]], [[1, 0]], "outside"),
    ],
)
def test_validate_rejects_broken_indices(block_mask, columns, counts, message):
    index = _index(
        block_mask,
        8,
        4,
        None if columns is None else torch.tensor(columns),
        None if counts is None else torch.tensor(counts),
    )
    with pytest.raises(ValueError, match=message):
        index.validate()


def test_check_matches():
    index = SparseIndex.from_block_mask(torch.ones(2, 1, 1, dtype=torch.bool), 4, 4)
    index.check_matches(2, 4)
    with pytest.raises(ValueError, match="planned for 2 heads x 4 tokens"):
        index.check_matches(3, 4)
