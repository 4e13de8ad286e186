"""Triton sparse prefill kernels (CUDA; CPU through ``TRITON_INTERPRET=1`` in tests).

A flash-attention style kernel over the :class:`SparseIndex`: one program per (query block,
query head) loads its query tile once, then runs an online softmax (running max, running sum,
rescaled accumulator) over

1. the kept key blocks (*block-sparse* part: aligned ``[B, D]`` key/value tiles; the
   diagonal block gets the causal mask), then
2. the kept key columns in chunks of ``COLS`` (*vertical-slash* part: gathered key/value
   rows, masked when a column follows a row),

so block-sparse, A-shape, vertical-slash and FlexPrefill indices all run on it, in the
manner of MInference's block-sparse and vertical-slash kernels. The index is planned in
Python (shared with every other executor). Accumulation is in float32.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .inputs import check_qkv
from .sparse_index import SparseIndex


@triton.jit
def _dot(a, b, UPCAST: tl.constexpr):
    """``a @ b`` accumulated in float32; ``UPCAST`` multiplies in float32 (the interpreter has no bf16 matmul)."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32))
    return tl.dot(a, b)


@triton.jit
def _online_update(qk, m_i, l_i, acc, v, valid, UPCAST: tl.constexpr):
    """One online-softmax step over a tile of logits ``qk [M, K]`` (masked by ``valid``)."""
    qk = tl.where(valid, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m_i - m_safe)
    p = tl.exp(qk - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, UPCAST)
    return m_new, l_i, acc


@triton.jit
def _sparse_prefill_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr,
    block_ids_ptr, block_counts_ptr, columns_ptr, column_counts_ptr,
    seq_len, scale,
    stride_qh, stride_qn, stride_kh, stride_kn, stride_oh, stride_on,
    stride_bh, stride_bq, stride_ch, stride_cq,
    num_q_blocks,
    GROUP: tl.constexpr, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, COLS: tl.constexpr, UPCAST: tl.constexpr,
):
    qb = tl.program_id(0)
    head = tl.program_id(1)
    kv_head = head // GROUP
    rows = qb * BLOCK + tl.arange(0, BLOCK)
    dims = tl.arange(0, HEAD_DIM)
    row_ok = rows < seq_len
    q = tl.load(q_ptr + head * stride_qh + rows[:, None] * stride_qn + dims[None, :], mask=row_ok[:, None], other=0.0)
    m_i = tl.full([BLOCK], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK], tl.float32)
    acc = tl.zeros([BLOCK, HEAD_DIM], tl.float32)
    k_base = k_ptr + kv_head * stride_kh
    v_base = v_ptr + kv_head * stride_kh

    n_blocks = tl.load(block_counts_ptr + head * num_q_blocks + qb)
    for j in range(0, n_blocks):
        kb = tl.load(block_ids_ptr + head * stride_bh + qb * stride_bq + j)
        keys = kb * BLOCK + tl.arange(0, BLOCK)
        key_ok = keys < seq_len
        k = tl.load(k_base + keys[:, None] * stride_kn + dims[None, :], mask=key_ok[:, None], other=0.0)
        v = tl.load(v_base + keys[:, None] * stride_kn + dims[None, :], mask=key_ok[:, None], other=0.0)
        qk = _dot(q, tl.trans(k), UPCAST) * scale
        valid = key_ok[None, :] & (keys[None, :] <= rows[:, None])
        m_i, l_i, acc = _online_update(qk, m_i, l_i, acc, v, valid, UPCAST)

    n_cols = tl.load(column_counts_ptr + head * num_q_blocks + qb)
    for c0 in range(0, n_cols, COLS):
        slots = c0 + tl.arange(0, COLS)
        slot_ok = slots < n_cols
        cols = tl.load(columns_ptr + head * stride_ch + qb * stride_cq + slots, mask=slot_ok, other=0)
        k = tl.load(k_base + cols[:, None] * stride_kn + dims[None, :], mask=slot_ok[:, None], other=0.0)
        v = tl.load(v_base + cols[:, None] * stride_kn + dims[None, :], mask=slot_ok[:, None], other=0.0)
        qk = _dot(q, tl.trans(k), UPCAST) * scale
        valid = slot_ok[None, :] & (cols[None, :] <= rows[:, None])
        m_i, l_i, acc = _online_update(qk, m_i, l_i, acc, v, valid, UPCAST)

    l_safe = tl.where(l_i > 0, l_i, 1.0)
    out = acc / l_safe[:, None]
    tl.store(o_ptr + head * stride_oh + rows[:, None] * stride_on + dims[None, :], out.to(o_ptr.dtype.element_ty), mask=row_ok[:, None])


def triton_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: SparseIndex,
    *,
    scale: float | None = None,
    cols_per_step: int = 64,
) -> torch.Tensor:
    """Sparse causal attention over ``index`` with the Triton kernel.

    ``q [Hq, N, D]``, ``k, v [Hkv, N, D]`` (CUDA tensors, or CPU tensors under
    ``TRITON_INTERPRET=1``) -> ``[Hq, N, D]`` in ``q.dtype``. ``D`` must be a power of two
    of at least 16, and so must ``index.block_size`` and ``cols_per_step``.
    """
    shape = check_qkv(q, k, v, scale=scale)
    index.check_matches(shape.num_q_heads, shape.seq_len)
    for name, value in (("head_dim", shape.head_dim), ("block_size", index.block_size), ("cols_per_step", cols_per_step)):
        if value < 16 or value & (value - 1):
            raise ValueError(f"the Triton kernel needs a power-of-two {name} >= 16; got {value}")
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    out = torch.empty_like(q)
    block_ids = index.block_ids.to(q.device, torch.int32).contiguous()
    columns = index.columns.to(q.device, torch.int32).contiguous()
    block_counts = index.block_counts.to(q.device, torch.int32).contiguous()
    column_counts = index.column_counts.to(q.device, torch.int32).contiguous()
    grid = (index.num_q_blocks, shape.num_q_heads)
    _sparse_prefill_kernel[grid](
        q, k, v, out,
        block_ids, block_counts, columns, column_counts,
        shape.seq_len, shape.scale,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), out.stride(0), out.stride(1),
        block_ids.stride(0), block_ids.stride(1), columns.stride(0), columns.stride(1),
        index.num_q_blocks,
        GROUP=shape.group_size, BLOCK=index.block_size, HEAD_DIM=shape.head_dim, COLS=cols_per_step,
        UPCAST=q.dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1",
    )
    return out
