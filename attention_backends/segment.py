"""Sparse prefill of one request segment inside a paged engine, per head group.

An engine with chunked prefill and prefix caching runs prefill in segments: the queries of a
segment are the last ``Nq`` of the ``N`` positions whose keys/values are in the cache (earlier
chunks, a cached prefix, then the segment itself). This module runs the per-head patterns of
a profile on such a segment (MInference's and FlexPrefill's patterns estimated on the
segment's queries against every key, as MInference does per chunk):

* heads are grouped by pattern parameters; each group is planned and executed once, its
  key/value heads expanded per query head (GQA) so any subset of query heads forms a group;
* the index is planned for the whole ``N x N`` causal square with the segment's queries in
  the last rows (earlier rows are zero and never executed: ``rows_from``); block-sparse indices
  are planned on the segment's own query blocks only (the same choice, in ``Nq`` rows);
* ``dense`` heads run exact causal attention over the segment (:func:`dense_tail_attention`, or
  the engine's own paged kernel passed in as ``exact``);
* sparse groups whose index has no single columns can run on that paged kernel too (``paged``,
  see ``paged_plan``); the others run ``interface.run_index``;
* the context's keys/values are copied out of the cache (:class:`SequenceKV`) only for what
  needs them: estimating a query-aware index, ``run_index``, dense heads without ``exact``. An
  A-shape index needs no tensor at all (planned once per segment and shape, shared by the
  layers), so a segment of dense and A-shape heads on the engine's kernel reads nothing.

Pure tensors in, tensors out; the vLLM adapter (``vllm_backend``) feeds it from the paged cache.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch

from .a_shape import a_shape_index
from .interface import Backend, estimate_index, run_index
from .block_sparse import estimate_block_sparse_rows, mean_pool_blocks
from .patterns import AShapeParams, BlockSparseParams, DenseParams, PatternParams
from .sparse_index import SparseIndex


@dataclass(frozen=True)
class HeadGroup:
    """Query heads (local numbers on this rank) that share one pattern's parameters."""

    params: PatternParams
    heads: tuple[int, ...]


ExactHeads = Callable[[tuple[int, ...]], torch.Tensor]
"""Exact causal attention of a segment's queries for some query heads -> ``[len(heads), Nq, D]``."""

PagedHeads = Callable[[tuple[int, ...], SparseIndex, int], tuple[torch.Tensor, int]]
"""``(heads, column-free index, tail rows)`` -> the segment's output of those heads ``[len(heads), Nq, D]``
(their last ``tail`` rows exact over every key) and the (query, key) pairs computed."""


class SequenceKV:
    """Keys and values ``[Hkv, N, D]`` of a segment's whole sequence, read on first use, once.

    ``read`` returns them (the vLLM adapter: a gather from the paged cache); :meth:`of` wraps
    tensors at hand.
    """

    def __init__(self, read: Callable[[], tuple[torch.Tensor, torch.Tensor]], num_kv_heads: int,
                 seq_len: int) -> None:
        self._read = read
        self.num_kv_heads = num_kv_heads
        self.seq_len = seq_len
        self._kv: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def of(cls, k: torch.Tensor, v: torch.Tensor) -> SequenceKV:
        return cls(lambda: (k, v), k.shape[0], k.shape[1])

    @property
    def was_read(self) -> bool:
        return self._kv is not None

    def get(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``k, v [Hkv, N, D]``; raises ``ValueError`` when the reader's shapes disagree with the declared ones."""
        if self._kv is None:
            k, v = self._read()
            if tuple(k.shape[:2]) != (self.num_kv_heads, self.seq_len) or v.shape != k.shape:
                raise ValueError(f"context read as k {tuple(k.shape)}, v {tuple(v.shape)}; expected "
                                 f"[{self.num_kv_heads}, {self.seq_len}, D] for both")
            self._kv = (k, v)
        return self._kv


@dataclass
class SegmentStats:
    """Kept and causal (query, key) pairs of one segment, summed over heads."""

    kept_pairs: int = 0
    causal_pairs: int = 0

    @property
    def density(self) -> float:
        return self.kept_pairs / self.causal_pairs if self.causal_pairs else 1.0


def causal_pairs(n: int, rows_from: int) -> int:
    """Causal pairs of the query rows ``[rows_from, n)``: ``sum(i + 1)``."""
    return (n * (n + 1) - rows_from * (rows_from + 1)) // 2


def dense_tail_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, rows_per_tile: int = 256
) -> torch.Tensor:
    """Exact causal attention of the last rows: ``q [Hq, Nq, D]``, ``k, v [Hkv, N, D]`` -> ``[Hq, Nq, D]``.

    Query ``i`` sits at position ``N - Nq + i``. On CPU: two flash-attention calls, the queries over
    every earlier key (no mask) and causally over the segment's own square, merged by their
    log-sum-exp (as flash-decoding merges splits), about 5x faster at 8K than masked SDPA. Elsewhere:
    masked SDPA in row tiles (memory O(rows_per_tile * N)).
    """
    if q.device.type == "cpu":
        return _split_causal_attention(q, k, v, scale=scale)
    return _tiled_masked_attention(q, k, v, scale=scale, rows_per_tile=rows_per_tile)


def _tiled_masked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, rows_per_tile: int
) -> torch.Tensor:
    """:func:`dense_tail_attention` as masked SDPA in row tiles (any device)."""
    h, nq, d = q.shape
    n = k.shape[1]
    start = n - nq
    out = torch.empty(h, nq, d, dtype=q.dtype, device=q.device)
    keys = torch.arange(n, device=q.device)
    for r0 in range(0, nq, rows_per_tile):
        r1 = min(r0 + rows_per_tile, nq)
        pos = start + torch.arange(r0, r1, device=q.device)
        mask = keys.unsqueeze(0) <= pos.unsqueeze(1)
        out[:, r0:r1] = torch.nn.functional.scaled_dot_product_attention(
            q[:, r0:r1], k, v, attn_mask=mask, scale=scale, enable_gqa=h != k.shape[0]
        )
    return out


def _split_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float) -> torch.Tensor:
    """:func:`dense_tail_attention` on CPU with ATen's flash kernel, which also returns the log-sum-exp."""
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    h, nq, _ = q.shape
    start = k.shape[1] - nq
    ke = k.repeat_interleave(h // k.shape[0], 0).unsqueeze(0)
    ve = v.repeat_interleave(h // v.shape[0], 0).unsqueeze(0)
    qb = q.unsqueeze(0)
    out, lse = flash(qb, ke[:, :, start:], ve[:, :, start:], 0.0, True, attn_mask=None, scale=scale)[:2]
    if start == 0:
        return out[0]
    out_p, lse_p = flash(qb, ke[:, :, :start], ve[:, :, :start], 0.0, False, attn_mask=None, scale=scale)[:2]
    top = torch.maximum(lse, lse_p)
    w, w_p = torch.exp(lse - top).unsqueeze(-1), torch.exp(lse_p - top).unsqueeze(-1)
    merged = (out.float() * w + out_p.float() * w_p) / (w + w_p)
    return merged[0].to(q.dtype)


def segment_attention(
    q: torch.Tensor,
    kv: SequenceKV,
    groups: list[HeadGroup],
    *,
    scale: float,
    backend: Backend = "auto",
    dense_tail: int = 0,
    exact: ExactHeads | None = None,
    paged: PagedHeads | None = None,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, SegmentStats]:
    """Per-head-group sparse attention of one prefill segment.

    ``q [Hq, Nq, D]`` are the queries at positions ``[N - Nq, N)``; ``kv`` every key/value
    ``[Hkv, N, D]`` of the sequence so far; ``groups`` must cover each query head once. ``dense``
    groups run ``exact(heads)`` (the vLLM adapter passes vLLM's own paged kernel), by default
    :func:`dense_tail_attention`. Sparse groups whose index has no columns run ``paged`` when
    given (the adapter passes vLLM's paged kernel), the others ``run_index(backend=...)``. The last
    ``dense_tail`` query rows of the sparse heads run exact attention over every key (a prompt's
    final question must read the whole context: SnapKV's observation window, FlexPrefill's exact
    last block).
    Returns ``out [Hq, Nq, D]`` (``q.dtype``; written into ``out`` when given, e.g. a strided view
    of the engine's output rows) and the kept / causal pair counts of the segment (kept counts the
    tail rows' sparse pairs too, so it is an upper bound by at most ``dense_tail`` rows' budgets).
    """
    hq, nq, d = q.shape
    hkv, n = kv.num_kv_heads, kv.seq_len
    if nq > n or hq % hkv:
        raise ValueError(f"segment of {nq} queries x {hq} heads does not fit {n} keys x {hkv} kv heads")
    covered = sorted(h for g in groups for h in g.heads)
    if covered != list(range(hq)):
        raise ValueError(f"head groups must cover query heads 0..{hq - 1} once; got {covered}")
    start, per_kv = n - nq, hq // hkv
    if out is None:
        out = torch.empty_like(q)
    elif out.shape != q.shape or out.dtype != q.dtype:
        raise ValueError(f"out {tuple(out.shape)} {out.dtype} does not match q {tuple(q.shape)} {q.dtype}")
    stats = SegmentStats()
    sparse_heads: list[int] = []
    for group in groups:
        heads = torch.tensor(group.heads, device=q.device)
        if isinstance(group.params, DenseParams):
            if exact is not None:
                out[heads] = exact(group.heads).to(q.dtype)
            else:
                k, v = kv.get()
                out[heads] = dense_tail_attention(q[heads], k[heads // per_kv], v[heads // per_kv], scale=scale)
            pairs = causal_pairs(n, start) * len(group.heads)
            stats.kept_pairs += pairs
            stats.causal_pairs += pairs
            continue
        q_full = kg = None
        if isinstance(group.params, AShapeParams):  # static: the same object for every layer of the segment
            index = _static_index(n, len(group.heads), group.params, q.device)
        elif isinstance(group.params, BlockSparseParams):  # planned on the segment's own query blocks
            index = _segment_block_sparse(q[heads], kv, heads // per_kv, group.params, scale)
        else:
            q_full, kg = _square_rows(q[heads], n), kv.get()[0][heads // per_kv]
            index = estimate_index(q_full, kg, group.params, scale=scale)
        if paged is not None and not index.has_columns:
            o, kept = paged(group.heads, index, dense_tail)
            out[heads] = o.to(q.dtype)
            stats.kept_pairs += kept
            stats.causal_pairs += causal_pairs(n, start) * len(group.heads)
            continue
        k, v = kv.get()
        if q_full is None or kg is None:  # A-shape: planned without tensors
            q_full, kg = _square_rows(q[heads], n), k[heads // per_kv]
        sparse_heads += group.heads
        out[heads] = run_index(q_full, kg, v[heads // per_kv], index, scale=scale, backend=backend, rows_from=start)
        first_block = start // index.block_size
        stats.kept_pairs += int(index.pair_counts(first_block).sum().item())
        stats.causal_pairs += causal_pairs(n, first_block * index.block_size) * len(group.heads)
    tail = min(dense_tail, nq)
    if tail > 0 and sparse_heads:
        k, v = kv.get()
        heads = torch.tensor(sorted(sparse_heads), device=q.device)
        out[heads, nq - tail :] = dense_tail_attention(
            q[heads, nq - tail :], k[heads // per_kv], v[heads // per_kv], scale=scale
        )
        stats.kept_pairs = min(stats.kept_pairs + causal_pairs(n, n - tail) * len(sparse_heads), stats.causal_pairs)
    return out, stats


_static_index = lru_cache(maxsize=64)(a_shape_index)
"""A-shape indices by (N, heads, params, device): planned once per segment, reused by every layer
(and by ``cpu_kernel.SegmentKernel``'s plan cache, which keys on the index object)."""


def _segment_block_sparse(q: torch.Tensor, kv: SequenceKV, kv_heads: torch.Tensor, params: BlockSparseParams,
                          scale: float) -> SparseIndex:
    """Block-sparse index of ``q [H, Nq, D]`` (the segment's rows of a group), keys pooled once per key/value head."""
    used, per_head = torch.unique(kv_heads, return_inverse=True)
    pooled = mean_pool_blocks(kv.get()[0][used], params.block_size)[per_head]
    return estimate_block_sparse_rows(q, pooled, kv.seq_len, params, scale=scale)


def _square_rows(q: torch.Tensor, n: int) -> torch.Tensor:
    """``q [H, Nq, D]`` as the last rows of ``[H, N, D]`` (earlier rows zero: planned, never executed)."""
    full = q.new_zeros(q.shape[0], n, q.shape[2])
    full[:, n - q.shape[1]:] = q
    return full
