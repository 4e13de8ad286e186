import math

import pytest
import torch

from attention_backends.block_sparse import estimate_block_sparse
from attention_backends.metrics import attention_recall
from attention_backends.oracle import MassHistogram, tile_mass_histogram
from attention_backends.patterns import BlockSparseParams

from sparse_cases import random_qkv


def exact_oracle_density(q: torch.Tensor, k: torch.Tensor, g: int, target: float) -> list[float]:
    """Brute force: every tile's exact mass and pair count, greedy by mass per pair, fractional last tile."""
    n = q.shape[1]
    kx = k.repeat_interleave(q.shape[0] // k.shape[0], 0)
    logits = q @ kx.transpose(1, 2) / math.sqrt(q.shape[-1]) + torch.full((n, n), -math.inf).triu(1)
    probs = torch.softmax(logits.double(), -1)
    causal = torch.ones(n, n, dtype=torch.float64).tril()
    out = []
    for p in probs:
        tiles = []
        for i in range(0, n, g):
            for j in range(0, i + 1, g):
                pairs = float(causal[i : i + g, j : j + g].sum())
                tiles.append((float(p[i : i + g, j : j + g].sum()), pairs))
        tiles.sort(key=lambda t: t[0] / t[1], reverse=True)
        need, kept = target * n, 0.0
        for mass, pairs in tiles:
            if need <= mass:
                kept += pairs * need / mass
                break
            need -= mass
            kept += pairs
        out.append(kept / float(causal.sum()))
    return out


@pytest.mark.parametrize("n, g", [(50, 8), (37, 1), (20, 64)])
def test_histogram_density_matches_brute_force_oracle(n, g):
    q, k, _ = random_qkv(n, q_heads=4, kv_heads=2)
    q = q * 3  # sharper than random: a spread of tile masses
    hist = tile_mass_histogram(q, k, granularity=g, chunk_elems=300)
    assert hist.rows == n
    torch.testing.assert_close(hist.mass.sum(-1), torch.full((4,), float(n), dtype=torch.float64))
    for target in (0.5, 0.9, 0.95):
        got = hist.density_per_head(target)
        want = torch.tensor(exact_oracle_density(q, k, g, target), dtype=torch.float64)
        torch.testing.assert_close(got, want, rtol=0.02, atol=1e-3)
    steps = torch.stack([hist.density_per_head(t) for t in (0.5, 0.9, 0.99, 1.0)])
    assert bool((steps.diff(dim=0) >= 0).all()) and bool((steps <= 1.0 + 1e-9).all())


def test_pooled_budget_never_needs_more_than_per_head():
    q, k, _ = random_qkv(64, q_heads=4, kv_heads=1)
    q[0] *= 6  # one sharp head, three diffuse ones
    hist = tile_mass_histogram(q, k, granularity=4)
    per_head = hist.density_per_head(0.9)
    assert per_head[0] < per_head[1:].min()
    assert hist.density_pooled(0.9) <= float(per_head.mean()) + 1e-9
    both = hist.concat(hist)
    assert both.mass.shape[0] == 8 and both.density_pooled(0.9) == pytest.approx(hist.density_pooled(0.9))


def test_a_head_on_one_key_needs_that_key_in_target_of_its_rows():
    n = 256
    k = torch.zeros(1, n, 8)
    k[0, 0, 0] = 1.0
    q = torch.zeros(1, n, 8)
    q[0, :, 0] = 200.0  # every row puts ~all its mass on key 0
    hist = tile_mass_histogram(q, k, granularity=1)
    # the mean recall of 0.95 takes key 0 in 95 % of the rows: one pair each
    assert float(hist.density_per_head(0.95)[0]) == pytest.approx(0.95 * n / (n * (n + 1) / 2), rel=0.01)


def test_oracle_needs_no_more_than_the_block_sparse_estimator_on_real_heads(captured):
    layer = captured[1]
    q, k = layer.q[:3], layer.k[:1]
    index = estimate_block_sparse(q, k, BlockSparseParams(top_k=8))
    recall = attention_recall(q, k, index)
    hist = tile_mass_histogram(q, k, granularity=64)
    oracle = hist.density_per_head(float(recall.min()))
    assert float(oracle.max()) <= index.density() + 1e-6
    assert float(tile_mass_histogram(q, k, granularity=1, query_tiles=256).density_pooled(0.9)) < hist.density_pooled(0.9)


def test_sampled_query_tiles_count_every_row_of_each_tile():
    q, k, _ = random_qkv(100, q_heads=2, kv_heads=1)
    hist = tile_mass_histogram(q, k, granularity=16, query_tiles=3)  # tiles 0, 3, 6 (rows 96-99)
    assert hist.rows == 16 + 16 + 4
    assert float(hist.pairs[0].sum()) == sum(r + 1 for r in [*range(16), *range(48, 64), *range(96, 100)])


def test_bad_arguments_raise_clear_errors():
    q, k, _ = random_qkv(16, q_heads=2, kv_heads=1)
    with pytest.raises(ValueError, match="granularity"):
        tile_mass_histogram(q, k, granularity=0)
    hist = tile_mass_histogram(q, k, granularity=4)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="recall target"):
            hist.density_per_head(bad)
    with pytest.raises(ValueError, match="like with like"):
        hist.concat(tile_mass_histogram(q, k, granularity=8))
    with pytest.raises(ValueError, match="same seq_len"):
        tile_mass_histogram(q, k[:, :8], granularity=4)
    assert isinstance(hist, MassHistogram)
