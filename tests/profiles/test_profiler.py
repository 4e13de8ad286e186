"""End-to-end profiling of a tiny seeded random Llama: valid, deterministic, consistent with its scores."""

from __future__ import annotations

from pathlib import Path

from profiles.profiler import ProfileRequest, build_profile
from profiles.schema import Profile, parse_profile

LENGTH = 512


def test_tiny_llama_profile_is_valid_and_deterministic(tiny_llama: Path) -> None:
    request = ProfileRequest(model_dir=tiny_llama, lengths=(LENGTH,), target_recall=0.9, query_rows=32)
    first = build_profile(request, progress=False)
    second = build_profile(request, progress=False)
    assert first == second
    again = parse_profile(first.model_dump(mode="json"), "roundtrip")
    assert isinstance(again, Profile) and again == first
    assert first.model.num_layers == 2 and first.model.num_q_heads == 4 and first.model.num_kv_heads == 2
    assert first.model.head_dim == 16
    for layer in first.layers:
        for head in layer.heads:
            if head.prefill.pattern.value == "dense":
                assert head.recall == 1.0 and head.density == 1.0 and head.kv.policy == "full"
            else:
                assert head.recall >= 0.9 and 0.0 < head.density < 1.0
            assert head.kv.policy == ("streaming" if head.prefill.pattern.value == "a_shape" else "full")
            err = head.kv.params["lowrank_error_r16"]
            assert 0.0 <= err <= 1.0
