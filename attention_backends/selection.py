"""Budgeted selection of scored items (key columns, diagonals, key blocks).

Two rules are used by the estimators: a fixed budget (MInference: keep the top ``k``) and a
coverage target (FlexPrefill: keep the fewest items whose normalised scores sum to at least
``gamma``). Both always include a set of forced items (attention sinks, recent diagonals).
"""

from __future__ import annotations

import torch


def select_top(scores: torch.Tensor, budget: int, forced: torch.Tensor | None = None) -> torch.Tensor:
    """Keep the ``budget`` best items per row, forced items first.

    ``scores [..., M]`` (``-inf`` = not selectable), ``forced bool [..., M]`` or broadcastable
    -> ``bool [..., M]`` with at most ``budget`` true entries per row.
    """
    if budget <= 0:
        raise ValueError(f"budget must be positive; got {budget}")
    ranked = scores.float()
    if forced is not None:
        ranked = torch.where(forced & (ranked > float("-inf")), torch.full_like(ranked, float("inf")), ranked)
    top = torch.topk(ranked, min(budget, ranked.shape[-1]), dim=-1)
    keep = torch.zeros(ranked.shape, dtype=torch.bool, device=ranked.device)
    keep.scatter_(-1, top.indices, top.values > float("-inf"))
    return keep


def select_cover(
    scores: torch.Tensor, gamma: float, min_count: int, forced: torch.Tensor | None = None
) -> torch.Tensor:
    """Keep the fewest best items whose scores sum to ``gamma`` of the row total, plus forced items.

    ``scores [..., M]`` non-negative, ``forced bool [..., M]`` or broadcastable -> ``bool [..., M]``.
    At least ``min(min_count, M)`` items are kept; the kept scores always reach ``gamma`` of the
    row total (forced items only add to the set).
    """
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must be in (0, 1]; got {gamma}")
    values = scores.float().clamp(min=0)
    total = values.sum(-1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)
    ordered, order = torch.sort(values / total, dim=-1, descending=True)
    before = torch.cumsum(ordered, dim=-1) - ordered  # mass of the better items
    # an item is needed while the better ones have not reached gamma (tolerate rounding)
    needed = before < gamma - 1e-6
    needed[..., : min(min_count, values.shape[-1])] = True
    keep = torch.zeros_like(needed)
    keep.scatter_(-1, order, needed)
    if forced is not None:
        keep |= forced
    return keep
