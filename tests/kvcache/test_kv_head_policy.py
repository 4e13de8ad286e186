"""Per-query-head KV policies of a profile become per-rank KV-head groups (GQA merge, TP slices)."""

from __future__ import annotations

import pytest

from attention_backends.head_plan import rank_query_heads
from kvcache.head_policy import KvPlan, kv_policy_counts, layer_kv_groups, policy_params
from kvcache.params import NosaKvParams, ShadowKvParams, StreamingKvParams
from profiles.schema import KvChoice, load_profile
from profiles.variants import exact_kv
from server.sparse_setup import SHIPPED_PROFILE

FULL, SHADOW = KvChoice(policy="full"), KvChoice(policy="shadowkv", params={"decode_recall": 0.97, "rank": 16})
NOSA, STREAM = KvChoice(policy="nosa"), KvChoice(policy="streaming", params={"n_local": 256})


def test_policy_params_take_own_fields_and_ignore_statistics() -> None:
    assert policy_params(SHADOW) == ShadowKvParams(rank=16)
    assert policy_params(STREAM) == StreamingKvParams(n_local=256)
    with pytest.raises(ValueError, match="budget"):
        policy_params(KvChoice(policy="shadowkv", params={"budget": 10}))


def test_kv_head_takes_the_most_exact_policy_of_its_query_heads() -> None:
    # 6 query heads over 2 KV heads: KV 0 <- q0..2 (one full), KV 1 <- q3..5 (shadowkv > nosa > streaming)
    choices = [SHADOW, FULL, STREAM, NOSA, SHADOW, STREAM]
    groups = layer_kv_groups(choices, range(6), 6, 2, 64)
    assert len(groups) == 1
    g = groups[0]
    assert g.params == ShadowKvParams(rank=16) and g.kv_heads == (1,) and g.q_heads == (3, 4, 5)


def test_groups_share_parameters_and_rank_is_capped_by_group_width() -> None:
    big = KvChoice(policy="shadowkv", params={"rank": 1000})
    groups = layer_kv_groups([big] * 6 + [NOSA] * 3, range(9), 9, 3, 64)
    assert [(g.kv_heads, g.q_heads) for g in groups] == [((0, 1), (0, 1, 2, 3, 4, 5)), ((2,), (6, 7, 8))]
    assert groups[0].params.rank == 128 and groups[1].params == NosaKvParams()


def test_tensor_parallel_rank_sees_local_heads() -> None:
    choices = [FULL] * 3 + [SHADOW] * 3 + [STREAM] * 3
    for rank, want in enumerate([(), ((0,), (0, 1, 2)), ((0,), (0, 1, 2))]):
        groups = layer_kv_groups(choices, rank_query_heads(9, 3, rank), 9, 3, 64)
        assert tuple((g.kv_heads, g.q_heads) for g in groups) == (want if not want else (want,))
    # more ranks than KV heads: each rank reads the one KV head of its query heads (replicated)
    groups = layer_kv_groups([SHADOW] * 4, rank_query_heads(4, 4, 3), 4, 2, 64)
    assert [(g.kv_heads, g.q_heads) for g in groups] == [((0,), (0,))]


def test_plan_of_shipped_profile_and_exact_kv_variant() -> None:
    shipped = load_profile(SHIPPED_PROFILE)
    counts = kv_policy_counts(shipped)
    assert sum(counts.values()) == 30 * 3
    plan = KvPlan.from_profile(shipped, range(9))
    assert sum(len(g.kv_heads) for layer in plan.layers for g in layer) == 90 - counts["full"]
    exact = KvPlan.from_profile(exact_kv(shipped), range(9))
    for layer in exact.layers:
        (g,) = layer
        assert g.kv_heads == (0, 1, 2) and g.q_heads == tuple(range(9))
        assert g.params.rank == 192 and g.params.budget == 1 << 24
    with pytest.raises(ValueError, match="layer 30"):
        exact.groups(30)
    # windowed layers: every KV head compressed (layers 13, 16, 18 of the shipped profile; every layer of exact_kv)
    assert plan.windowed_layers(3) == (13, 16, 18) and exact.windowed_layers(3) == tuple(range(30))
