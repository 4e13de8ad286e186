"""Per-head choice on engineered heads: a streaming head gets A-shape, a retrieval head does not."""

from __future__ import annotations

import pytest
import torch

from attention_backends import AShapeParams, DenseParams, Pattern, attention_recall, estimate_index
from profiles.scoring import candidate_grid, choose_patterns, late_rows, score_layer

N, D = 1024, 32
COSTS = {"a_shape": 1.0, "block_sparse": 1.0, "vertical_slash": 1.5, "flexprefill": 1.5}
"""Per-pair costs of a machine where column gathers cost more (the profiler measures its own)."""


def streaming_head(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Query i scores key j by 400 cos((i - j) / N): mass on a local window of ~100 keys."""
    pos = torch.arange(N, dtype=torch.float32)
    feats = torch.zeros(N, D)
    feats[:, 0], feats[:, 1] = torch.cos(pos / N), torch.sin(pos / N)
    q = feats * 400.0 + 0.01 * torch.randn(N, D, generator=gen)
    return q, feats


def retrieval_head(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query copies a random far earlier key (scaled), so its mass sits on one scattered key."""
    k = torch.nn.functional.normalize(torch.randn(N, D, generator=gen), dim=-1)
    targets = (torch.rand(N, generator=gen) * torch.arange(N) * 0.5).long()
    q = 30.0 * k[targets]
    return q, k


def test_streaming_head_gets_a_shape_and_retrieval_head_does_not() -> None:
    gen = torch.Generator().manual_seed(0)
    qs, ks = streaming_head(gen)
    qr, kr = retrieval_head(gen)
    q = torch.stack([qs, qr])
    k = torch.stack([ks, kr])
    scores = score_layer(q, k, candidate_grid(N), late_rows(N, 128))
    stream, retrieve = choose_patterns([scores], 0.95, COSTS)
    assert isinstance(stream.params, AShapeParams)
    assert stream.recall >= 0.95 and stream.density < 0.6
    assert not isinstance(retrieve.params, AShapeParams)
    assert isinstance(retrieve.params, DenseParams) or retrieve.recall >= 0.95


def test_aggregation_is_conservative_over_lengths() -> None:
    gen = torch.Generator().manual_seed(1)
    q, k = streaming_head(gen)
    scores = score_layer(q[None], k[None], candidate_grid(N), late_rows(N, 64))
    worse = type(scores)(scores.candidates, scores.recall * 0.5, scores.density)
    (alone,) = choose_patterns([scores], 0.95)
    (both,) = choose_patterns([scores, worse], 0.95)
    assert alone.params.pattern != Pattern.DENSE
    # halving every recall at one length leaves nothing at 0.95: dense
    assert isinstance(both.params, DenseParams) and both.recall == 1.0


def test_recall_and_density_are_in_range() -> None:
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(3, 512, 16, generator=gen)
    k = torch.randn(1, 512, 16, generator=gen)
    scores = score_layer(q, k, candidate_grid(512), late_rows(512, 32))
    assert scores.recall.shape == scores.density.shape == (len(candidate_grid(512)), 3)
    assert bool((scores.recall >= 0).all() and (scores.recall <= 1.0 + 1e-5).all())
    assert bool((scores.density > 0).all() and (scores.density <= 1.0).all())


def test_late_rows_are_in_the_later_half() -> None:
    rows = late_rows(1000, 10)
    assert rows.min() >= 500 and rows.max() == 999 and rows.numel() == 10
    assert torch.equal(late_rows(10, 100), torch.arange(5, 10))


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="too short"):
        candidate_grid(100)
    with pytest.raises(ValueError, match="positive"):
        late_rows(100, 0)
    with pytest.raises(ValueError, match="target recall"):
        choose_patterns([score_layer(torch.randn(1, 256, 8), torch.randn(1, 256, 8), candidate_grid(256)[:1], late_rows(256, 8))], 1.5)


def test_scores_match_attention_recall() -> None:
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(4, 512, 16, generator=gen)
    k = torch.randn(2, 512, 16, generator=gen)
    rows = late_rows(512, 40)
    candidates = candidate_grid(512)
    scores = score_layer(q, k, candidates, rows)
    for c, params in enumerate(candidates):
        index = estimate_index(q, k, params)
        torch.testing.assert_close(scores.recall[c], attention_recall(q, k, index, rows=rows), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(scores.density[c].mean().item(), index.density(), atol=1e-6, rtol=1e-6)


def test_a_pattern_slower_than_dense_is_not_chosen() -> None:
    gen = torch.Generator().manual_seed(3)
    q, k = streaming_head(gen)
    scores = score_layer(q[None], k[None], candidate_grid(N), late_rows(N, 64))
    (cheap,) = choose_patterns([scores], 0.95, COSTS)
    assert cheap.params.pattern != Pattern.DENSE
    slow = {name: 1.0 / scores.density.min().item() for name in COSTS}  # every candidate now costs >= dense
    (chosen,) = choose_patterns([scores], 0.95, slow)
    assert isinstance(chosen.params, DenseParams)


def test_every_row_set_must_be_served() -> None:
    gen = torch.Generator().manual_seed(4)
    q, k = retrieval_head(gen)
    cands = candidate_grid(N)[:1]  # narrowest A-shape
    spread, question = late_rows(N, 64), torch.arange(N - 8, N)
    both = score_layer(q[None], k[None], cands, spread, question)
    alone = [score_layer(q[None], k[None], cands, rows) for rows in (spread, question)]
    torch.testing.assert_close(both.recall, torch.minimum(alone[0].recall, alone[1].recall))
    with pytest.raises(ValueError, match="at least one set"):
        score_layer(q[None], k[None], cands)
