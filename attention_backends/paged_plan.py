"""Block tables that make a paged causal attention kernel execute a block-sparse index.

A paged kernel (vLLM's ``cpu_attention_with_kv_cache``, FlashAttention's varlen call) attends
each sequence of a varlen batch to the cache blocks its block-table row lists, causally: the
``q_len`` queries of a sequence of length ``seq_len`` sit at its last ``q_len`` positions. So a
column-free :class:`SparseIndex` (A-shape, block-sparse, FlexPrefill's query-aware blocks) runs
on such a kernel unchanged if every query block becomes its own sequence whose block table is
the kept key blocks, mapped to cache blocks, with the query block's own (diagonal) cache blocks
last: the earlier blocks are seen whole by every row and the diagonal ones causally (the same
trick as MInference's block-sparse kernel, expressed as paging). The last ``tail`` query rows
form one more sequence per head over the whole context (the exact tail rows of
``segment.segment_attention``).

Index blocks of ``Bi`` keys map to cache blocks of ``Bc`` keys: when ``Bc`` divides ``Bi`` the
kernel computes exactly the index's pairs; when ``Bi`` divides ``Bc`` a kept key block brings
its whole cache block (a superset of the index, counted in :attr:`PagedPlan.kept_pairs`).

Pure tensor planning, logical block numbers only; ``cpu_kernel`` maps them to the sequence's
physical blocks and calls the kernel. Sequences are ordered head by head, rows ascending, so the
queries are simply ``q[heads]`` flattened.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .sparse_index import SparseIndex, pack_rows


@dataclass(frozen=True)
class PagedPlan:
    """A varlen batch of ``S`` sequences covering ``H`` heads x ``Nq`` query rows, head-major.

    Attributes:
        seqs_per_head: ``S / H``: query blocks of the segment (before the tail), plus 1 with a tail.
        query_start_loc: ``int32 [S + 1]`` offsets into the ``H * Nq`` flattened query rows.
        seq_lens: ``int32 [S]`` virtual sequence lengths (kept keys before the diagonal + diagonal part).
        block_table: ``int64 [S, W]`` logical cache block numbers of the sequence (padding: 0).
        kept_pairs: (query, key) pairs the kernel computes, summed over heads.
    """

    seqs_per_head: int
    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    block_table: torch.Tensor
    kept_pairs: int


def _sum_range(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``sum(range(lo, hi))`` elementwise (``hi > lo``)."""
    return (hi - lo) * (lo + hi - 1) // 2


def plan_paged(index: SparseIndex, start: int, tail: int, cache_block: int) -> PagedPlan:
    """Plan the kernel batch for the query rows ``[start, N)`` of every head of ``index``.

    ``index`` must have no columns; its block size and ``cache_block`` must divide one another.
    The last ``tail`` rows (clipped to the segment) attend to every key. Raises ``ValueError``.
    """
    n, bi, bc, h = index.seq_len, index.block_size, cache_block, index.num_heads
    if index.has_columns:
        raise ValueError("a paged kernel runs whole blocks; this index has single key columns")
    if bi % bc and bc % bi:
        raise ValueError(f"index blocks of {bi} keys and cache blocks of {bc} keys do not divide one another")
    if not 0 <= start < n:
        raise ValueError(f"segment start {start} outside [0, {n})")
    tail = min(max(tail, 0), n - start)
    sparse_end = n - tail
    dev = index.device
    tables: list[torch.Tensor] = []
    if sparse_end > start:
        qbs = torch.arange(start // bi, -(-sparse_end // bi), device=dev)
        r0 = torch.clamp(qbs * bi, min=start)
        r1 = torch.clamp((qbs + 1) * bi, max=sparse_end)
        first = qbs * bi // bc
        n_diag = (r1 - 1) // bc - first + 1
        ids = index.block_ids[:, qbs]
        used = torch.arange(ids.shape[-1], device=dev) < index.block_counts[:, qbs].unsqueeze(-1)
        if bi >= bc:  # each kept key block is bi // bc whole cache blocks
            per = bi // bc
            cache = (ids.unsqueeze(-1) * per + torch.arange(per, device=dev)).flatten(-2)
            used = used.repeat_interleave(per, dim=-1)
        else:  # each kept key block lies in one cache block, which may hold others
            cache = ids * bi // bc
        big = torch.iinfo(torch.int64).max
        cache, _ = torch.sort(torch.where(used & (cache < first.view(1, -1, 1)), cache, big), dim=-1)
        distinct = torch.ones_like(cache, dtype=torch.bool)
        distinct[..., 1:] = cache[..., 1:] != cache[..., :-1]
        off, off_count = pack_rows(cache, distinct & (cache != big))
        width = off.shape[-1] + int(n_diag.max().item())
        cols = torch.arange(width, device=dev)
        diag_col = cols - off_count.unsqueeze(-1)
        table = torch.where(cols < off_count.unsqueeze(-1), torch.nn.functional.pad(off, (0, width - off.shape[-1])),
                            torch.where(diag_col < n_diag.view(1, -1, 1), first.view(1, -1, 1) + diag_col, 0))
        seq_lens = off_count * bc + (r1 - first * bc)
        q_lens = (r1 - r0).expand(h, -1)
        kept = (q_lens * off_count * bc + _sum_range(r0 - first * bc + 1, r1 - first * bc + 1)).sum()
        tables.append(table)
    else:
        seq_lens = q_lens = torch.zeros(h, 0, dtype=torch.int64, device=dev)
        kept = torch.zeros((), dtype=torch.int64)
    if tail:
        full = torch.arange(-(-n // bc), device=dev).expand(h, 1, -1)
        tables.append(full)
        seq_lens = torch.cat([seq_lens, torch.full((h, 1), n, device=dev)], dim=1)
        q_lens = torch.cat([q_lens, torch.full((h, 1), tail, device=dev)], dim=1)
        kept = kept + h * _sum_range(torch.tensor(sparse_end + 1), torch.tensor(n + 1))
    width = max(t.shape[-1] for t in tables)
    table = torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[-1])) for t in tables], dim=1)
    starts = torch.zeros(q_lens.numel() + 1, dtype=torch.int32, device=dev)
    starts[1:] = torch.cumsum(q_lens.flatten(), 0)
    return PagedPlan(seqs_per_head=q_lens.shape[1], query_start_loc=starts, seq_lens=seq_lens.flatten().to(torch.int32),
                     block_table=table.flatten(0, 1), kept_pairs=int(kept))
