"""DuoAttention-style choice: the lowest-streaming-recall heads dense, the others one A-shape candidate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attention_backends.patterns import AShapeParams, BlockSparseParams
from profiles.profiler import ProfileRequest, build_profile
from profiles.retrieval_heads import block_sparse_candidate, choose_retrieval_heads, streaming_candidate
from profiles.scoring import LayerScores, candidate_grid
from profiles.summary import format_summary

CANDIDATES = candidate_grid(512)  # A-shape windows 64 and 128, block-sparse top_k 2


def scores(seed: int, heads: int = 4) -> LayerScores:
    gen = torch.Generator().manual_seed(seed)
    return LayerScores(CANDIDATES, torch.rand(len(CANDIDATES), heads, generator=gen),
                       torch.rand(len(CANDIDATES), heads, generator=gen))


def test_lowest_streaming_recall_heads_stay_dense_and_the_rest_take_the_window() -> None:
    per_layer = [[scores(1), scores(2)], [scores(3), scores(4)], [scores(5), scores(6)]]
    streaming = [torch.tensor([0.9, 0.2, 0.8, 0.7]), torch.tensor([0.1, 0.95, 0.6, 0.5]), torch.tensor([0.3, 0.99, 0.98, 0.97])]
    out = choose_retrieval_heads(per_layer, streaming, fraction=0.25, window=128)
    dense = {(layer, h) for layer, heads in enumerate(out) for h, c in enumerate(heads) if c.params.pattern.value == "dense"}
    assert dense == {(1, 0), (0, 1), (2, 0)}  # round(0.25 * 12) = 3 lowest: 0.1, 0.2, 0.3
    c = streaming_candidate(CANDIDATES, 128)
    for layer, heads in enumerate(out):
        for h, choice in enumerate(heads):
            if (layer, h) in dense:
                assert choice.recall == 1.0 and choice.density == 1.0
                continue
            assert choice.params == CANDIDATES[c] and isinstance(choice.params, AShapeParams) and choice.params.n_local == 128
            # conservative over the inputs: the smaller recall, the larger density
            assert choice.recall == pytest.approx(min(float(s.recall[c, h]) for s in per_layer[layer]))
            assert choice.density == pytest.approx(max(float(s.density[c, h]) for s in per_layer[layer]))


def test_retrieval_heads_can_run_a_scored_block_sparse_candidate_instead_of_dense() -> None:
    per_layer = [[scores(1), scores(2)], [scores(3), scores(4)]]
    streaming = [torch.tensor([0.9, 0.2, 0.8, 0.7]), torch.tensor([0.1, 0.95, 0.6, 0.5])]
    dense = choose_retrieval_heads(per_layer, streaming, fraction=0.25, window=64)
    wide = choose_retrieval_heads(per_layer, streaming, fraction=0.25, window=64, retrieval_top_k=2)
    c = block_sparse_candidate(CANDIDATES, 2)
    for layer in range(2):
        for h in range(4):
            if dense[layer][h].params.pattern.value != "dense":
                assert wide[layer][h] == dense[layer][h]  # the streaming heads do not move
                continue
            assert wide[layer][h].params == CANDIDATES[c] == BlockSparseParams(top_k=2)
            assert wide[layer][h].recall == pytest.approx(min(float(s.recall[c, h]) for s in per_layer[layer]))
            assert wide[layer][h].density == pytest.approx(max(float(s.density[c, h]) for s in per_layer[layer]))
    assert sum(ch.params.pattern.value == "block_sparse" for row in wide for ch in row) == 2
    with pytest.raises(ValueError, match=r"block-sparse top_k 5 was not scored.*\[2, 2\]"):
        choose_retrieval_heads(per_layer, streaming, fraction=0.25, window=64, retrieval_top_k=5)


def test_dense_layers_are_dense_and_outside_the_ranking() -> None:
    streaming = [torch.tensor([0.0, 0.0, 0.0, 0.0]), torch.tensor([0.9, 0.2, 0.8, 0.7])]
    out = choose_retrieval_heads([[], [scores(1)]], streaming, fraction=0.1, window=64, dense_layers=1)
    assert all(c.params.pattern.value == "dense" for c in out[0])
    assert [c.params.pattern.value for c in out[1]] == ["a_shape", "dense", "a_shape", "a_shape"]  # round(0.8) = 1
    none = choose_retrieval_heads([[scores(1)]], [torch.tensor([0.5, 0.1, 0.2, 0.3])], fraction=0.0, window=64)
    assert all(c.params.pattern.value == "a_shape" for c in none[0])


def test_bad_arguments_raise() -> None:
    one = [[scores(1)]]
    recall = [torch.tensor([0.5, 0.1, 0.2, 0.3])]
    with pytest.raises(ValueError, match=r"streaming window 100 was not scored.*\[64, 128\]"):
        choose_retrieval_heads(one, recall, fraction=0.1, window=100)
    with pytest.raises(ValueError, match="fraction must be in"):
        choose_retrieval_heads(one, recall, fraction=1.0, window=64)
    with pytest.raises(ValueError, match="2 layers of scores but 1"):
        choose_retrieval_heads(one * 2, recall, fraction=0.1, window=64)


def test_profiler_keeps_the_lowest_streaming_recall_heads_dense(tiny_llama: Path) -> None:
    request = ProfileRequest(model_dir=tiny_llama, lengths=(512,), query_rows=16, dense_layers=0, retrieval_heads=0.25,
                             streaming_window=128, pattern_cost={"a_shape": 0.5, "block_sparse": 0.5, "vertical_slash": 0.8,
                                                                 "flexprefill": 0.8})
    profile = build_profile(request, progress=False)
    heads = [h for layer in profile.layers for h in layer.heads]
    dense = [h for h in heads if h.prefill.pattern.value == "dense"]
    streaming = [h for h in heads if h.prefill.pattern.value != "dense"]
    assert len(dense) == 2  # round(0.25 * 2 layers x 4 heads)
    assert all(h.prefill == AShapeParams(n_init=64, n_local=128) and 0.0 < h.density < 1.0 for h in streaming)
    assert max(h.kv.params["streaming_recall"] for h in dense) <= min(h.kv.params["streaming_recall"] for h in streaming)
    assert profile.calibration.retrieval_heads == 0.25
    assert "retrieval heads 0.25 dense (the others A-shape)" in format_summary(profile)
    with pytest.raises(ValueError, match="streaming window 100 was not scored"):
        build_profile(request.model_copy(update={"streaming_window": 100}), progress=False)
    with pytest.raises(ValueError, match="block-sparse top_k 5 was not scored"):
        build_profile(request.model_copy(update={"retrieval_top_k": 5}), progress=False)
    with pytest.raises(ValueError, match="retrieval_top_k is set but retrieval_heads is not"):
        ProfileRequest(model_dir=tiny_llama, lengths=(512,), retrieval_top_k=2)
    wide = build_profile(request.model_copy(update={"retrieval_top_k": 2}), progress=False)
    sparse = [h for layer in wide.layers for h in layer.heads if h.prefill.pattern.value == "block_sparse"]
    assert [(h.head, h.kv) for h in sparse] == [(h.head, h.kv) for h in dense]  # the same heads, the same KV policies
    assert all(h.prefill == BlockSparseParams(top_k=2) and 0.0 < h.density <= 1.0 for h in sparse)
    assert wide.calibration.retrieval_top_k == 2
    assert "retrieval heads 0.25 block-sparse top_k 2 (the others A-shape)" in format_summary(wide)
