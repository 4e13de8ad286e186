"""Vertical-slash index (MInference): key columns plus diagonals, estimated from the last queries.

The attention of the last ``last_q`` queries against all keys is summed per key (vertical
lines) and per diagonal offset ``i - j`` (slash lines). The best columns and diagonals are
kept, and the selection is converted into the block + column :class:`SparseIndex`: for each
query block, every kept diagonal covers a band of ``block_q`` keys; the bands are merged
and tiled with key blocks, and the kept columns not already inside a tile become columns.
FlexPrefill's vertical-slash heads reuse the scores and the conversion.
"""

from __future__ import annotations

import torch

from .inputs import check_qk, expand_kv
from .patterns import VerticalSlashParams
from .selection import select_top
from .sparse_index import SparseIndex, pack_rows


def last_query_attention(q: torch.Tensor, k: torch.Tensor, last_q: int, scale: float) -> torch.Tensor:
    """Exact causal softmax of the last ``L = min(last_q, N)`` queries: ``float32 [Hq, L, N]``.

    ``q [Hq, N, D]``, ``k [Hkv, N, D]``; row ``r`` is query position ``N - L + r``.
    """
    n = q.shape[1]
    rows = min(last_q, n)
    group = q.shape[0] // k.shape[0]
    logits = torch.matmul(q[:, n - rows :].float(), expand_kv(k, group).float().transpose(1, 2)) * scale
    positions = torch.arange(n - rows, n, device=q.device).unsqueeze(1)
    future = torch.arange(n, device=q.device).unsqueeze(0) > positions
    return torch.softmax(logits.masked_fill(future, float("-inf")), dim=-1)


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


def _diagonal_tiles(offsets: list[int], block_q: int, block_k: int) -> list[int]:
    """Key-block starts, relative to a query block's first row, covering the diagonals' bands.

    Diagonal ``o`` covers relative keys ``[-o, -o + block_q - 1]`` of every query block; the
    bands are merged and tiled left to right with disjoint tiles of ``block_k`` keys.
    """
    tiles: list[int] = []
    covered_to = None  # first relative key not yet covered
    for o in sorted(set(offsets), reverse=True):
        lo, hi = -o, -o + block_q - 1
        start = lo if covered_to is None else max(lo, covered_to)
        while start <= hi:
            tiles.append(start)
            start += block_k
        covered_to = start if covered_to is None else max(covered_to, start)
    return tiles


def vertical_slash_index(
    verticals: list[torch.Tensor], slashes: list[torch.Tensor], seq_len: int, block_size: int
) -> SparseIndex:
    """Build the index from per-head key columns and diagonal offsets.

    ``verticals[h]`` are key positions in ``[0, N)`` and ``slashes[h]`` diagonal offsets in
    ``[0, N)`` (``0`` = the main diagonal, always added so every row keeps itself).
    """
    if len(verticals) != len(slashes):
        raise ValueError("need one vertical and one slash list per head")
    device = verticals[0].device if verticals else torch.device("cpu")
    nqb = -(-seq_len // block_size)
    q_start = torch.arange(nqb, device=device) * block_size
    q_end = torch.clamp(q_start + block_size, max=seq_len)  # exclusive
    heads_blocks, heads_cols = [], []
    for cols, offs in zip(verticals, slashes):
        tiles = torch.tensor(
            _diagonal_tiles([0, *offs.tolist()], block_size, block_size), dtype=torch.int64, device=device
        )
        starts = q_start.unsqueeze(1) + tiles.unsqueeze(0)
        heads_blocks.append(pack_rows(starts, starts + block_size > 0))
        cols = torch.unique(cols.to(device, torch.int64))
        rel = cols.unsqueeze(0) - q_start.unsqueeze(1)
        tile_idx = (torch.searchsorted(tiles, rel, right=True) - 1).clamp(min=0)
        covered = (rel >= tiles[tile_idx]) & (rel < tiles[tile_idx] + block_size)
        keep = (cols.unsqueeze(0) < q_end.unsqueeze(1)) & ~covered
        heads_cols.append(pack_rows(cols.expand(nqb, -1), keep))
    return _stack_heads(heads_blocks, heads_cols, seq_len, block_size)


def _stack_heads(
    blocks: list[tuple[torch.Tensor, torch.Tensor]],
    cols: list[tuple[torch.Tensor, torch.Tensor]],
    seq_len: int,
    block_size: int,
) -> SparseIndex:
    def stack(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(p[0].shape[-1] for p in parts)
        padded = [torch.nn.functional.pad(p[0], (0, width - p[0].shape[-1])) for p in parts]
        return torch.stack(padded), torch.stack([p[1] for p in parts]).to(torch.int64)

    block_starts, block_counts = stack(blocks)
    columns, column_counts = stack(cols)
    return SparseIndex(
        seq_len=seq_len,
        block_q=block_size,
        block_k=block_size,
        block_starts=block_starts,
        block_counts=block_counts,
        columns=columns,
        column_counts=column_counts,
    )


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
