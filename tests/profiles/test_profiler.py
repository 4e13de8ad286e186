"""End-to-end profiling of a tiny seeded random Llama: valid, deterministic, consistent with its scores."""

from __future__ import annotations

from pathlib import Path

from profiles.kv_stats import choose_kv_policy
from profiles.profiler import ProfileRequest, build_profile
from profiles.schema import Profile, parse_profile

LENGTH = 512
COSTS = {"a_shape": 0.5, "block_sparse": 0.5, "vertical_slash": 0.8, "flexprefill": 0.8}


def test_tiny_llama_profile_is_valid_and_deterministic(tiny_llama: Path) -> None:
    request = ProfileRequest(model_dir=tiny_llama, lengths=(LENGTH,), target_recall=0.9, query_rows=32, pattern_cost=COSTS,
                             dense_layers=0)
    first = build_profile(request, progress=False)
    second = build_profile(request, progress=False)
    assert first == second  # given costs: the rest is deterministic
    assert any(h.prefill.pattern.value != "dense" for h in first.layers[0].heads)  # else the next check proves nothing
    one_dense = build_profile(request.model_copy(update={"dense_layers": 1}), progress=False)
    assert all(h.prefill.pattern.value == "dense" and h.density == 1.0 for h in one_dense.layers[0].heads)
    assert one_dense.layers[1] == first.layers[1]
    assert one_dense.calibration.dense_layers == 1 and first.calibration.dense_layers == 0
    assert first.calibration.pattern_cost == COSTS
    assert first.calibration.tasks == ["kv_report", "niah_multikey", "variable_tracking"]
    again = parse_profile(first.model_dump(mode="json"), "roundtrip")
    assert isinstance(again, Profile) and again == first
    assert first.model.num_layers == 2 and first.model.num_q_heads == 4 and first.model.num_kv_heads == 2
    assert first.model.head_dim == 16
    for layer in first.layers + one_dense.layers:
        for head in layer.heads:
            if head.prefill.pattern.value == "dense":
                assert head.recall == 1.0 and head.density == 1.0
            else:
                assert head.recall >= 0.9 and 0.0 < head.density <= 1.0
            # the KV policy is the rule applied to the statistics recorded with it
            stats = head.kv.params
            rule = choose_kv_policy(head.prefill, stats["lowrank_error_r32"], stats["decode_recall"],
                                    streaming_recall=stats["streaming_recall"], nosa_recall=stats["nosa_recall"],
                                    target_recall=0.9)
            assert head.kv.policy == rule.policy
            assert 0.0 <= stats["lowrank_error_r32"] <= 1.0
            assert all(0.0 <= stats[key] <= 1.0 + 1e-6 for key in ("decode_recall", "nosa_recall", "streaming_recall"))


def test_costs_are_measured_when_not_given(tiny_llama: Path) -> None:
    profile = build_profile(ProfileRequest(model_dir=tiny_llama, lengths=(LENGTH,), query_rows=16, dense_layers=0), progress=False)
    costs = profile.calibration.pattern_cost
    assert set(costs) == {"a_shape", "vertical_slash", "block_sparse", "flexprefill"}
    assert all(0.0 < c < 1e4 for c in costs.values())
    for layer in profile.layers:
        for head in layer.heads:
            if head.prefill.pattern.value != "dense":
                assert head.density * costs[head.prefill.pattern.value] < 1.0  # cheaper than dense, else dense
