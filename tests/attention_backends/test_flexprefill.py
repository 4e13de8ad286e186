import math

import torch

from attention_backends.block_sparse import pooled_block_scores
from attention_backends.flexprefill import plan_flexprefill, sqrt_js_divergence
from attention_backends.patterns import FlexPrefillParams
from attention_backends.vertical_slash import last_query_attention, vertical_slash_scores

N, D, B = 1024, 32, 32
SCATTERED = (3, 9, 14, 22)


def _rotations(positions: torch.Tensor, freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    angles = positions.float().unsqueeze(1) * freqs
    return angles.cos(), angles.sin()


def _constructed_heads() -> tuple[torch.Tensor, torch.Tensor]:
    """Head 0 attends to scattered key blocks (content match); head 1 is local/streaming (RoPE-like)."""
    gen = torch.Generator().manual_seed(0)
    q = torch.zeros(2, N, D)
    k = torch.zeros(2, N, D)
    # head 0: every query looks for `u`, which only the keys of a few scattered blocks carry
    u = torch.randn(D, generator=gen)
    u = u / u.norm()
    q[0] = 6.0 * u + 0.05 * torch.randn(N, D, generator=gen)
    k[0] = 0.3 * torch.randn(N, D, generator=gen)
    for blk in SCATTERED:
        k[0, blk * B : (blk + 1) * B] += 2.0 * u
    # head 1: high-frequency rotations make q_i . k_j peak at i == j and average out in block means
    freqs = torch.exp(torch.linspace(math.log(0.7), math.log(3.0), D // 2))
    cos, sin = _rotations(torch.arange(N), freqs)
    amp = 3.0
    q[1] = torch.cat([cos, sin], dim=1) * amp
    k[1] = torch.cat([cos, sin], dim=1) * amp
    return q, k


def test_jsd_properties():
    p = torch.tensor([0.5, 0.5, 0.0])
    assert sqrt_js_divergence(p, p).item() == 0.0
    disjoint = sqrt_js_divergence(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])).item()
    assert math.isclose(disjoint, math.sqrt(math.log(2)), rel_tol=1e-5)


def test_head_decisions_on_constructed_patterns():
    q, k = _constructed_heads()
    plan = plan_flexprefill(q, k, FlexPrefillParams(block_size=B, min_budget=1))
    assert plan.query_aware.tolist() == [True, False]
    assert plan.divergence[0] < 0.1 < plan.divergence[1]
    plan.index.validate()
    blocks = plan.index.block_mask()
    for blk in SCATTERED:
        assert blocks[0, blk + 1 :, blk].all()
    # the streaming head keeps the local band (n_recent=64 diagonals: 3 blocks) and stays sparse
    assert blocks[1].diagonal().all() and blocks[1].diagonal(-2).all()
    assert plan.index.pair_counts()[1] / (N * (N + 1) / 2) < 0.3


def test_selection_reaches_gamma_on_the_estimated_distributions():
    q, k = _constructed_heads()
    params = FlexPrefillParams(block_size=B, min_budget=B, gamma=0.9)
    plan = plan_flexprefill(q, k, params)
    scale = D**-0.5
    # query-aware head: kept pooled mass over all query blocks
    pooled = torch.softmax(pooled_block_scores(q, k, B, scale), dim=-1)[0]
    kept = plan.index.block_mask()[0]
    assert (pooled * kept).sum() / pooled.sum() >= params.gamma
    # vertical-slash head: kept column mass and kept diagonal mass of the last block
    vertical, slash = vertical_slash_scores(last_query_attention(q, k, B, scale))
    mask = plan.index.to_mask()[1]
    last = N - 1
    kept_cols = mask[last]
    assert (vertical[1] * kept_cols).sum() >= params.gamma
    kept_offsets = torch.tensor([bool(mask[last, last - o]) for o in range(N)])
    assert (slash[1] * kept_offsets).sum() >= params.gamma


def test_gqa_and_short_sequences():
    gen = torch.Generator().manual_seed(3)
    for n in (1, 20, 70):
        q = torch.randn(4, n, 16, generator=gen)
        k = torch.randn(2, n, 16, generator=gen)
        plan = plan_flexprefill(q, k, FlexPrefillParams(block_size=16, min_budget=16))
        plan.index.validate()
        assert plan.query_aware.shape == (4,)
