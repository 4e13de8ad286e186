"""FlexAttention sparse executor (PyTorch ``flex_attention`` with a ``BlockMask``), CPU and CUDA.

The kept key blocks of a :class:`SparseIndex` map one to one onto a FlexAttention
``BlockMask``: off-diagonal blocks are *full* (no per-element mask), the diagonal block is
*partial* (causal ``mask_mod``). Key columns do not fit a block mask, so each head's union of
columns is appended after the (block-padded) sequence as extra keys, and a ``mask_mod`` keeps
slot ``j`` for query ``i`` when the index lists that column for ``i``'s block and the column
is not after ``i``. One flex call then computes exactly the index's pairs with one softmax.

``torch.compile`` turns this into a fused flash-style kernel (inductor's C++ template on CPU,
Triton on CUDA); it is compiled once per shape. Uncompiled (``compiled=False``) it runs
PyTorch's dense reference implementation, which is only meant for tests.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from .inputs import check_qkv, expand_kv
from .sparse_index import SparseIndex, pack_rows


@lru_cache(maxsize=1)
def _compiled_flex() -> Callable[..., torch.Tensor]:
    return torch.compile(flex_attention, dynamic=False)


def _column_slots(index: SparseIndex) -> tuple[torch.Tensor, torch.Tensor]:
    """Per head, the union of listed columns and which query blocks keep each of them.

    Returns ``col_pos int64 [H, S]`` (sorted positions, padded with ``N``, ``S`` a multiple of
    the block size) and ``col_kept bool [H, nQB, S]``.
    """
    h, nqb = index.column_counts.shape
    n, b = index.seq_len, index.block_size
    used = torch.arange(index.columns.shape[-1], device=index.device) < index.column_counts.unsqueeze(-1)
    present = torch.zeros(h, n + 1, dtype=torch.bool, device=index.device)
    present.scatter_(1, torch.where(used, index.columns, torch.full_like(index.columns, n)).reshape(h, -1), True)
    present = present[:, :n]
    positions = torch.arange(n, device=index.device).expand(h, n)
    col_pos, _ = pack_rows(positions, present)
    slots = -(-col_pos.shape[1] // b) * b
    counts = present.sum(-1, keepdim=True)
    col_pos = torch.nn.functional.pad(col_pos, (0, slots - col_pos.shape[1]), value=n)
    col_pos = torch.where(torch.arange(slots, device=index.device) < counts, col_pos, torch.full_like(col_pos, n))
    # slot of each listed column within its head's sorted union
    slot_of = torch.searchsorted(col_pos, index.columns.reshape(h, -1)).view_as(index.columns)
    col_kept = torch.zeros(h, nqb, slots + 1, dtype=torch.bool, device=index.device)
    col_kept.scatter_(2, torch.where(used, slot_of, torch.full_like(slot_of, slots)), True)
    return col_pos, col_kept[..., :slots]


def build_block_mask(index: SparseIndex) -> tuple[BlockMask, torch.Tensor]:
    """FlexAttention ``BlockMask`` of the index and the per-head column positions ``[H, S]``.

    The key axis is ``[nKB * B sequence keys | S column slots]``.
    """
    h, nqb = index.block_counts.shape
    b, n = index.block_size, index.seq_len
    col_pos, col_kept = _column_slots(index)
    slots = col_pos.shape[1]
    nkb = nqb + slots // b
    seq_len_k = nqb * b + slots

    blocks = index.block_mask()  # [H, nQB, nQB]
    diagonal = torch.eye(nqb, dtype=torch.bool, device=index.device)
    full = torch.nn.functional.pad(blocks & ~diagonal, (0, nkb - nqb))
    col_blocks = col_kept.view(h, nqb, slots // b, b).any(-1) if slots else blocks.new_zeros(h, nqb, 0)
    partial = torch.cat([blocks & diagonal, col_blocks], dim=-1)
    ids = torch.arange(nkb, device=index.device, dtype=torch.int32).expand(h, nqb, nkb)
    full_idx, full_cnt = pack_rows(ids, full)
    part_idx, part_cnt = pack_rows(ids, partial)

    def pad(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, nkb - x.shape[-1])).unsqueeze(0).to(torch.int32)

    q_block = torch.arange(nqb * b, device=index.device) // b

    # mask_mod alone defines the kept pairs (the block lists only let the kernel skip work)
    def mask_mod(batch: torch.Tensor, head: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        q_blk = q_block[q_idx]
        k_blk = q_block[kv_idx.clamp(max=nqb * b - 1)]
        seq_ok = (q_idx >= kv_idx) & (kv_idx < n) & blocks[head, q_blk, k_blk]
        if slots == 0:
            return seq_ok
        slot = (kv_idx - nqb * b).clamp(min=0, max=slots - 1)
        col_ok = col_kept[head, q_blk, slot] & (col_pos[head, slot] <= q_idx)
        return torch.where(kv_idx < nqb * b, seq_ok, col_ok)

    mask = BlockMask.from_kv_blocks(
        part_cnt.unsqueeze(0).to(torch.int32),
        pad(part_idx),
        full_cnt.unsqueeze(0).to(torch.int32),
        pad(full_idx),
        BLOCK_SIZE=b,
        mask_mod=mask_mod,
        seq_lengths=(nqb * b, seq_len_k),
    )
    return mask, col_pos


def flex_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: SparseIndex,
    *,
    scale: float | None = None,
    compiled: bool = True,
) -> torch.Tensor:
    """Sparse causal attention over ``index`` with FlexAttention.

    ``q [Hq, N, D]``, ``k, v [Hkv, N, D]`` -> ``[Hq, N, D]`` in ``q.dtype``; computed in
    float32 on CPU and in the input dtype on CUDA. ``compiled=False`` runs the unfused
    reference implementation (dense scores: small inputs and tests only).
    """
    shape = check_qkv(q, k, v, scale=scale)
    index.check_matches(shape.num_q_heads, shape.seq_len)
    n, b = shape.seq_len, index.block_size
    rows = index.num_q_blocks * b
    work_dtype = q.dtype if q.is_cuda else torch.float32
    block_mask, col_pos = build_block_mask(index)
    h, slots = col_pos.shape

    def extend(x: torch.Tensor) -> torch.Tensor:
        full = expand_kv(x, shape.group_size).to(work_dtype)
        padded = torch.nn.functional.pad(full, (0, 0, 0, rows - n))
        gathered = torch.gather(full, 1, col_pos.clamp(max=n - 1).unsqueeze(-1).expand(h, slots, shape.head_dim))
        return torch.cat([padded, gathered], dim=1).unsqueeze(0)

    q_pad = torch.nn.functional.pad(q.to(work_dtype), (0, 0, 0, rows - n)).unsqueeze(0)
    run = _compiled_flex() if compiled else flex_attention
    out = run(q_pad, extend(k), extend(v), block_mask=block_mask, scale=shape.scale)
    return out[0, :, :n].to(q.dtype)
