"""FlexPrefill index (Lai et al., 2025): per-head choice of query-aware blocks or vertical-slash.

For each head, the exact attention of the last query block, summed per key block, is compared
with the block-pooled estimate ``softmax(pool(q_last) pool(k)^T * scale)``. When the square
root of their Jensen-Shannon divergence is below ``tau`` the pooled scores are trusted and the
head is *query-aware*: the fewest key blocks whose pooled attention covers ``gamma`` of the
total (over all query blocks) are kept. Otherwise the head follows a *vertical-slash* pattern:
the fewest key columns and the fewest diagonals that each cover ``gamma`` of the last block's
attention. Both keep a minimum budget, the sink and the diagonal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .block_sparse import mean_pool_blocks, pooled_block_scores
from .inputs import check_qk, expand_kv
from .patterns import FlexPrefillParams
from .selection import select_cover, select_top
from .sparse_index import SparseIndex
from .vertical_slash import kept_positions, last_query_attention, vertical_slash_index, vertical_slash_scores


@dataclass(frozen=True)
class FlexPrefillPlan:
    """The index plus the per-head decision that produced it.

    Attributes:
        index: the combined :class:`SparseIndex`.
        query_aware: ``bool [H]``, true where the head uses query-aware block selection.
        divergence: ``float32 [H]``, sqrt of the Jensen-Shannon divergence that decided it.
    """

    index: SparseIndex
    query_aware: torch.Tensor
    divergence: torch.Tensor


def sqrt_js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Square root of the Jensen-Shannon divergence (natural log) over the last dim: ``[..., M] -> [...]``."""
    p = p.float()
    q = q.float()
    m = 0.5 * (p + q)

    def kl(a: torch.Tensor) -> torch.Tensor:
        terms = torch.where(a > 0, a * (torch.log(a) - torch.log(m.clamp(min=1e-30))), torch.zeros_like(a))
        return terms.sum(-1)

    return torch.sqrt((0.5 * kl(p) + 0.5 * kl(q)).clamp(min=0))


def block_distributions(
    q: torch.Tensor, k: torch.Tensor, probs_last: torch.Tensor, block_size: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Estimated and true attention of the last query block over key blocks, each ``[Hq, nKB]``.

    ``probs_last [Hq, L, N]`` is the exact attention of the last ``L`` queries. The estimate
    is the softmax of the pooled last-block query against the pooled keys (causal blocks only).
    """
    n = q.shape[1]
    nkb = -(-n // block_size)
    pad = nkb * block_size - n
    true = torch.nn.functional.pad(probs_last.mean(dim=1), (0, pad)).view(q.shape[0], nkb, block_size).sum(-1)
    rows = probs_last.shape[1]
    pq = q[:, n - rows :].float().mean(dim=1, keepdim=True)
    pk = expand_kv(mean_pool_blocks(k, block_size), q.shape[0] // k.shape[0])
    estimate = torch.softmax(torch.matmul(pq, pk.transpose(1, 2)).squeeze(1) * scale, dim=-1)
    return estimate, true


def _query_aware_mask(logits: torch.Tensor, params: FlexPrefillParams) -> torch.Tensor:
    """Key-block mask ``bool [H, nQB, nKB]`` covering ``gamma`` of the pooled attention mass."""
    h, nqb, nkb = logits.shape
    probs = torch.softmax(logits, dim=-1)  # each causal row sums to 1
    keep = select_cover(probs.reshape(h, -1), params.gamma, 0).view(h, nqb, nkb)
    min_blocks = -(-params.min_budget // params.block_size)
    keep |= select_top(logits, min_blocks)
    eye = torch.eye(nqb, nkb, dtype=torch.bool, device=logits.device)
    keep |= eye
    keep[..., 0] = True
    return keep & torch.isfinite(logits)


def plan_flexprefill(
    q: torch.Tensor, k: torch.Tensor, params: FlexPrefillParams, *, scale: float | None = None
) -> FlexPrefillPlan:
    """FlexPrefill plan for ``q [Hq, N, D]``, ``k [Hkv, N, D]`` (see the module docstring)."""
    shape = check_qk(q, k, scale=scale)
    n, b = shape.seq_len, params.block_size
    probs_last = last_query_attention(q, k, b, shape.scale)
    estimate, true = block_distributions(q, k, probs_last, b, shape.scale)
    divergence = sqrt_js_divergence(estimate, true)
    query_aware = divergence < params.tau

    logits = pooled_block_scores(q, k, b, shape.scale)
    aware_index = SparseIndex.from_block_mask(_query_aware_mask(logits, params), n, b)

    vertical, slash = vertical_slash_scores(probs_last)
    positions = torch.arange(n, device=q.device)
    keep_v = select_cover(vertical, params.gamma, params.min_budget, positions < params.n_sink)
    keep_s = select_cover(slash, params.gamma, params.min_budget, positions < params.n_recent)
    # query-aware heads get an empty (diagonal-only) vertical-slash entry, replaced below
    keep_v &= ~query_aware.unsqueeze(1)
    keep_s &= ~query_aware.unsqueeze(1)
    vs_index = vertical_slash_index(kept_positions(keep_v), kept_positions(keep_s), n, b)

    index = SparseIndex.select_heads(vs_index, aware_index, query_aware)
    return FlexPrefillPlan(index=index, query_aware=query_aware, divergence=divergence)


def estimate_flexprefill(
    q: torch.Tensor, k: torch.Tensor, params: FlexPrefillParams, *, scale: float | None = None
) -> SparseIndex:
    """FlexPrefill index (the ``index`` of :func:`plan_flexprefill`)."""
    return plan_flexprefill(q, k, params, scale=scale).index
