"""Gather CPU sparse executor: gather the kept keys, batched matmul, fused softmax.

For each query head, the keys the :class:`SparseIndex` keeps for a query block are laid out
as ``[off-diagonal blocks | columns | diagonal block]``, gathered into one ``[B, L, D]`` tile
per query block, scored with one ``baddbmm`` whose additive bias masks unused slots, masked
causally where keys can follow a row (the diagonal block and columns inside it), normalised
with one fused softmax and reduced with one ``bmm``. A query block's whole key list fits in
one tile (at most ``block_size * N`` logits), so rows need no cross-tile softmax merge;
``tile_elems`` caps how many query blocks are batched. Only kept pairs are computed: time
and memory are O(N * budget). Needs no compiler; see ``executor_flex`` for the faster path.
"""

from __future__ import annotations

import torch

from .inputs import check_qkv
from .sparse_index import SparseIndex, pack_rows

DEFAULT_TILE_ELEMS = 1 << 20
"""Logits per tile (4 MiB in float32): small enough to stay in cache between the kernels."""


def _head_layout(index: SparseIndex, head: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Key positions ``[nQB, L]`` and their additive bias (0 or ``-inf``) for one head.

    The last ``B`` slots are always the query block's own (diagonal) keys.
    """
    b, nqb = index.block_size, index.num_q_blocks
    dev = index.device
    qb = torch.arange(nqb, device=dev).unsqueeze(1)
    nb = int(index.block_counts[head].max().item())
    ids = index.block_ids[head, :, :nb]
    used = torch.arange(nb, device=dev) < index.block_counts[head].unsqueeze(1)
    off_diag, off_count = pack_rows(ids, used & (ids != qb))
    diag_kept = (used & (ids == qb)).any(dim=1, keepdim=True)
    off_used = torch.arange(off_diag.shape[1], device=dev) < off_count.unsqueeze(1)
    offsets = torch.arange(b, device=dev)
    block_pos = (off_diag.unsqueeze(-1) * b + offsets).reshape(nqb, -1)
    nc = int(index.column_counts[head].max().item())
    col_pos = index.columns[head, :, :nc]
    col_used = torch.arange(nc, device=dev) < index.column_counts[head].unsqueeze(1)
    diag_pos = qb * b + offsets
    positions = torch.cat([block_pos, col_pos, diag_pos], dim=1)
    kept = torch.cat([off_used.repeat_interleave(b, dim=1), col_used, diag_kept.expand(nqb, b)], dim=1)
    bias = torch.zeros(positions.shape, dtype=torch.float32, device=dev).masked_fill_(~kept, float("-inf"))
    return positions, bias


def gather_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: SparseIndex,
    *,
    scale: float | None = None,
    tile_elems: int = DEFAULT_TILE_ELEMS,
    rows_from: int = 0,
) -> torch.Tensor:
    """Sparse causal attention over ``index``: ``q [Hq, N, D]``, ``k, v [Hkv, N, D]`` -> ``[Hq, N - rows_from, D]``.

    ``rows_from`` computes only the query rows ``[rows_from, N)`` (a chunked-prefill segment whose
    earlier rows were computed before; their ``q`` rows are not read). Computes in float32 and
    returns ``q.dtype``. Rows that keep no key output zeros.
    """
    shape = check_qkv(q, k, v, scale=scale)
    index.check_matches(shape.num_q_heads, shape.seq_len)
    if tile_elems <= 0:
        raise ValueError(f"tile_elems must be positive; got {tile_elems}")
    n, d, b, nqb = shape.seq_len, shape.head_dim, index.block_size, index.num_q_blocks
    if not 0 <= rows_from < n:
        raise ValueError(f"rows_from must be in [0, {n}); got {rows_from}")
    first = rows_from // b
    rows = nqb * b
    q_pad = torch.zeros(shape.num_q_heads, rows, d, dtype=torch.float32, device=q.device)
    q_pad[:, first * b : n] = q[:, first * b :].float() * shape.scale
    k_pad = torch.zeros(shape.num_kv_heads, rows, d, dtype=torch.float32, device=q.device)
    v_pad = torch.zeros_like(k_pad)
    k_pad[:, :n] = k.float()
    v_pad[:, :n] = v.float()
    row_pos = torch.arange(rows, device=q.device).view(nqb, b, 1)
    out = torch.empty(shape.num_q_heads, rows, d, dtype=torch.float32, device=q.device)
    for h in range(shape.num_q_heads):
        kv = h // shape.group_size
        positions, bias = _head_layout(index, h)
        width = positions.shape[1]
        n_cols = int(index.column_counts[h].max().item())
        # keys that may follow a row: the diagonal block, and columns inside the query block
        causal_from = width - b - n_cols
        chunk = max(tile_elems // (b * width), 1)
        for b0 in range(first, nqb, chunk):
            b1 = min(b0 + chunk, nqb)
            at = positions[b0:b1].reshape(-1)
            k_tile = k_pad[kv].index_select(0, at).view(b1 - b0, width, d)
            v_tile = v_pad[kv].index_select(0, at).view(b1 - b0, width, d)
            logits = torch.baddbmm(bias[b0:b1].unsqueeze(1), q_pad[h, b0 * b : b1 * b].view(-1, b, d), k_tile.transpose(1, 2))
            tail = positions[b0:b1, causal_from:].unsqueeze(1)
            logits[:, :, causal_from:].masked_fill_(tail > row_pos[b0:b1], float("-inf"))
            out[h, b0 * b : b1 * b] = torch.bmm(torch.softmax(logits, dim=-1), v_tile).view(-1, d)
    return out[:, rows_from:n].nan_to_num_(0.0).to(q.dtype)
