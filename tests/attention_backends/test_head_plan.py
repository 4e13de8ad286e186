"""Profile -> per-layer head groups, and the tensor-parallel head slice of each rank."""

from __future__ import annotations

import pytest

from attention_backends.head_plan import HeadPlan, layer_groups, pattern_counts, rank_query_heads
from attention_backends.patterns import AShapeParams, BlockSparseParams, DenseParams
from profiles.schema import load_profile
from server.sparse_setup import SHIPPED_PROFILE


@pytest.fixture(scope="module")
def shipped():
    return load_profile(SHIPPED_PROFILE)


def test_rank_slices_are_contiguous_and_cover_all_heads() -> None:
    assert [list(rank_query_heads(9, 3, r)) for r in range(3)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert list(rank_query_heads(9, 1, 0)) == list(range(9))
    with pytest.raises(ValueError, match="cannot be split"):
        rank_query_heads(9, 2, 0)
    with pytest.raises(ValueError, match="not valid"):
        rank_query_heads(9, 3, 3)


def test_layer_groups_merge_equal_params_in_first_seen_order() -> None:
    a, b = AShapeParams(n_local=256), BlockSparseParams(top_k=8)
    groups = layer_groups([a, b, a, DenseParams(), b])
    assert [(g.params, g.heads) for g in groups] == [(a, (0, 2)), (b, (1, 4)), (DenseParams(), (3,))]


@pytest.mark.parametrize("tp", [1, 3, 9])
def test_plan_maps_each_rank_to_its_global_heads(shipped, tp: int) -> None:
    for rank in range(tp):
        plan = HeadPlan.from_profile(shipped, tp, rank)
        heads = rank_query_heads(9, tp, rank)
        for layer_no, layer in enumerate(shipped.layers):
            local = {h: g.params for g in plan.groups(layer_no) for h in g.heads}
            assert sorted(local) == list(range(len(heads)))
            for local_head, global_head in enumerate(heads):
                assert local[local_head] == layer.heads[global_head].prefill


def test_plan_rejects_layers_outside_the_profile(shipped) -> None:
    with pytest.raises(ValueError, match="layer 30 is not in the profile"):
        HeadPlan.from_profile(shipped).groups(30)


def test_pattern_counts_of_the_shipped_profile(shipped) -> None:
    counts = pattern_counts(shipped)
    assert sum(counts.values()) == 30 * 9
    assert set(counts) <= {"dense", "a_shape", "vertical_slash", "block_sparse", "flexprefill"}
