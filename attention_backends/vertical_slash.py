"""Vertical-slash index (MInference): key columns plus diagonals, estimated from the last queries.

The attention of the last ``last_q`` queries against all keys is summed per key (vertical
lines) and per diagonal offset ``i - j`` (slash lines). The best columns and diagonals are
kept, and the selection is converted into the block + column :class:`SparseIndex`: every
kept diagonal is rounded out to the (at most two) aligned key blocks it crosses in each query
block, and the kept columns not already inside a kept block become columns.
FlexPrefill's vertical-slash heads reuse the scores and the conversion.
"""

from __future__ import annotations

import torch

from .inputs import check_qk, expand_kv
from .metrics import causal_row_probs
from .patterns import VerticalSlashParams
from .selection import select_top
from .sparse_index import SparseIndex, pack_rows


def last_query_attention(q: torch.Tensor, k: torch.Tensor, last_q: int, scale: float) -> torch.Tensor:
    """Exact causal softmax of the last ``L = min(last_q, N)`` queries: ``float32 [Hq, L, N]``.

    ``q [Hq, N, D]``, ``k [Hkv, N, D]``; row ``r`` is query position ``N - L + r``.
    """
    n = q.shape[1]
    rows = torch.arange(n - min(last_q, n), n, device=q.device)
    return causal_row_probs(q, expand_kv(k, q.shape[0] // k.shape[0]).float(), rows, scale)


def vertical_slash_scores(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean attention per key column and per diagonal offset.

    ``probs [H, L, N]`` from :func:`last_query_attention` -> ``(vertical [H, N], slash [H, N])``
    where ``slash[:, o]`` is the attention on keys ``j = i - o``; each sums to 1 per head.
    """
    h, rows, n = probs.shape
    vertical = probs.mean(dim=1)
    query_pos = torch.arange(n - rows, n, device=probs.device).unsqueeze(1)
    offsets = (query_pos - torch.arange(n, device=probs.device).unsqueeze(0)).clamp(min=0)
    slash = torch.zeros(h, n, dtype=probs.dtype, device=probs.device)
    # future keys have probability 0, so clamping their offsets to 0 adds nothing
    slash.scatter_add_(1, offsets.reshape(1, -1).expand(h, -1), probs.reshape(h, -1))
    return vertical, slash / rows


def diagonal_block_offsets(offsets: torch.Tensor, block_size: int) -> torch.Tensor:
    """Relative key blocks ``r <= 0`` (key block = query block + r) that cover the given diagonals.

    Diagonal ``o`` crosses the query block's rows at keys ``[s - o, s - o + B - 1]`` for the
    block's first row ``s``, i.e. key blocks ``-(o // B)`` and, unless ``o`` is a multiple of
    ``B``, ``-(o // B) - 1``. Returns ``bool [nQB]``: entry ``t`` is true when offset ``-t`` is kept.
    """
    nblocks = int(offsets.max().item()) // block_size + 2 if offsets.numel() else 1
    kept = torch.zeros(nblocks, dtype=torch.bool, device=offsets.device)
    kept[offsets // block_size] = True
    kept[(offsets // block_size + 1)[offsets % block_size != 0]] = True
    return kept


def vertical_slash_index(
    verticals: list[torch.Tensor], slashes: list[torch.Tensor], seq_len: int, block_size: int
) -> SparseIndex:
    """Build the index from per-head key columns and diagonal offsets.

    ``verticals[h]`` are key positions in ``[0, N)`` and ``slashes[h]`` diagonal offsets in
    ``[0, N)`` (``0`` = the main diagonal, always added so every row keeps itself). Each
    diagonal is rounded out to the aligned key blocks it crosses; columns already inside a
    kept block are dropped.
    """
    if len(verticals) != len(slashes):
        raise ValueError("need one vertical and one slash list per head")
    device = verticals[0].device if verticals else torch.device("cpu")
    b = block_size
    nqb = -(-seq_len // b)
    qb = torch.arange(nqb, device=device).unsqueeze(1)
    block_masks, heads_cols = [], []
    for cols, offs in zip(verticals, slashes):
        offs = torch.cat([offs.to(device, torch.int64), torch.zeros(1, dtype=torch.int64, device=device)])
        rel = diagonal_block_offsets(offs, b)
        rel = torch.nn.functional.pad(rel, (0, max(nqb - rel.numel(), 0)))[:nqb]
        # key block j is kept by query block i when i - j is a kept relative offset
        lag = qb - torch.arange(nqb, device=device).unsqueeze(0)
        block_masks.append((lag >= 0) & rel[lag.clamp(min=0)])
        cols = torch.unique(cols.to(device, torch.int64))
        col_lag = qb - (cols // b).unsqueeze(0)
        keep = (col_lag >= 0) & ~rel[col_lag.clamp(min=0, max=nqb - 1)]
        heads_cols.append(pack_rows(cols.expand(nqb, -1), keep))
    width = max(c[0].shape[-1] for c in heads_cols)
    columns = torch.stack([torch.nn.functional.pad(c[0], (0, width - c[0].shape[-1])) for c in heads_cols])
    column_counts = torch.stack([c[1] for c in heads_cols])
    return SparseIndex.from_block_mask(torch.stack(block_masks), seq_len, b, columns, column_counts)


def kept_positions(keep: torch.Tensor) -> list[torch.Tensor]:
    """Per row of ``keep bool [H, M]``, the kept positions as a 1-D tensor."""
    return [row.nonzero().flatten() for row in keep]


def estimate_vertical_slash(
    q: torch.Tensor, k: torch.Tensor, params: VerticalSlashParams, *, scale: float | None = None
) -> SparseIndex:
    """Vertical-slash index for ``q [Hq, N, D]``, ``k [Hkv, N, D]``.

    Keeps at most ``n_vertical`` columns (the first ``n_sink`` first) and ``n_slash``
    diagonals (the ``n_recent`` most recent first) per head.
    """
    shape = check_qk(q, k, scale=scale)
    n = shape.seq_len
    vertical, slash = vertical_slash_scores(last_query_attention(q, k, params.last_q, shape.scale))
    positions = torch.arange(n, device=q.device)
    keep_v = select_top(vertical, params.n_vertical, positions < params.n_sink)
    keep_s = select_top(slash, params.n_slash, positions < params.n_recent)
    return vertical_slash_index(kept_positions(keep_v), kept_positions(keep_s), n, params.block_size)
