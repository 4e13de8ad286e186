"""Fast CPU sparse executor: gather the kept keys, batched matmul, online softmax.

For each query head, the keys listed by the :class:`SparseIndex` for every query block are
gathered into ``[nQB, L, D]`` tiles (``L`` = the head's largest per-block budget), scored
with one batched matmul per tile, and reduced with a log-sum-exp (online) softmax that merges
tiles of at most ``tile_elems`` logits. Only kept pairs are computed, so time and memory are
O(N * budget), never O(N^2). Unused slots and future keys are masked with one comparison:
invalid slots get a position past every query.
"""

from __future__ import annotations

import torch

from .inputs import check_qkv
from .sparse_index import SparseIndex

DEFAULT_TILE_ELEMS = 1 << 22
"""Logits per tile (16 MiB in float32): bounds the executor's working memory."""


def _merge(
    acc: torch.Tensor, acc_lse: torch.Tensor, out: torch.Tensor, lse: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two normalised partial softmax results ``(out [.., D], lse [..])`` over disjoint keys."""
    new_lse = torch.logaddexp(acc_lse, lse)
    safe = torch.where(torch.isfinite(new_lse), new_lse, torch.zeros_like(new_lse))
    acc = acc * torch.exp(acc_lse - safe).unsqueeze(-1) + out * torch.exp(lse - safe).unsqueeze(-1)
    return acc, new_lse


def _tile_attention(
    q_tile: torch.Tensor, k_tile: torch.Tensor, v_tile: torch.Tensor, key_pos: torch.Tensor, row_pos: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of one tile: ``q [B, R, D]``, ``k, v [B, L, D]``, ``key_pos [B, L]``, ``row_pos [B, R]``.

    Returns the normalised output ``[B, R, D]`` and the log-sum-exp ``[B, R]`` (``-inf`` where
    a row keeps no key; its output is then 0).
    """
    logits = torch.bmm(q_tile, k_tile.transpose(1, 2))
    logits.masked_fill_(key_pos.unsqueeze(1) > row_pos.unsqueeze(2), float("-inf"))
    lse = torch.logsumexp(logits, dim=-1)
    safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    probs = logits.sub_(safe.unsqueeze(-1)).exp_()
    return torch.bmm(probs, v_tile), lse


def gather_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: SparseIndex,
    *,
    scale: float | None = None,
    tile_elems: int = DEFAULT_TILE_ELEMS,
) -> torch.Tensor:
    """Sparse causal attention over ``index``: ``q [Hq, N, D]``, ``k, v [Hkv, N, D]`` -> ``[Hq, N, D]``.

    Computes in float32 and returns ``q.dtype``. ``tile_elems`` caps the logits held at once.
    """
    shape = check_qkv(q, k, v, scale=scale)
    index.check_matches(shape.num_q_heads, shape.seq_len)
    if tile_elems < index.block_q:
        raise ValueError(f"tile_elems must be at least block_q ({index.block_q}); got {tile_elems}")
    n, d, bq, nqb = shape.seq_len, shape.head_dim, index.block_q, index.num_q_blocks
    rows = nqb * bq
    q_pad = torch.zeros(shape.num_q_heads, rows, d, dtype=torch.float32, device=q.device)
    q_pad[:, :n] = q.float() * shape.scale
    kf, vf = k.float(), v.float()
    row_pos = torch.arange(rows, device=q.device).view(nqb, bq)
    out = torch.empty(shape.num_q_heads, rows, d, dtype=torch.float32, device=q.device)
    for h in range(shape.num_q_heads):
        kv = h // shape.group_size
        positions, valid = index.key_slots(h)
        width = positions.shape[1]
        key_pos = torch.where(valid, positions, torch.full_like(positions, rows))
        gather_at = torch.where(valid, positions, torch.zeros_like(positions))
        key_chunk = min(width, max(tile_elems // bq, 1))
        q_chunk = max(tile_elems // (bq * key_chunk), 1)
        q_blocks = q_pad[h].view(nqb, bq, d)
        for b0 in range(0, nqb, q_chunk):
            b1 = min(b0 + q_chunk, nqb)
            acc = lse_acc = None
            for l0 in range(0, width, key_chunk):
                at = gather_at[b0:b1, l0 : l0 + key_chunk]
                k_tile = kf[kv].index_select(0, at.reshape(-1)).view(b1 - b0, -1, d)
                v_tile = vf[kv].index_select(0, at.reshape(-1)).view(b1 - b0, -1, d)
                part, lse = _tile_attention(
                    q_blocks[b0:b1], k_tile, v_tile, key_pos[b0:b1, l0 : l0 + key_chunk], row_pos[b0:b1]
                )
                acc, lse_acc = (part, lse) if acc is None else _merge(acc, lse_acc, part, lse)
            out[h, b0 * bq : b1 * bq] = acc.reshape(-1, d)
    return out[:, :n].to(q.dtype)
