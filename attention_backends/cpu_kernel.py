"""vLLM's own CPU attention ops, called on part of a batch: one segment, some query heads.

The dense heads of a sparse prefill segment need exact causal attention over the segment's whole
context, which is what vLLM's paged kernel (``cpu_attention_with_kv_cache``) computes, reading
the keys in place from the cache. Measured on a 2-core AVX-512 host (bf16, 8,192 queries over
16,384 keys, 9 query / 3 KV heads): 1.55 s for vLLM's kernel vs 1.8-1.9 s for a gather of the
context plus ATen's flash attention (``segment.dense_tail_attention``). The kernel maps query head
``h`` to KV head ``h // (Hq / Hkv)``, so the dense heads of one KV head run together against a
one-head view of the cache (the op takes strided views; checked against the reference in tests).

The sparse heads of a segment run on the same kernel (:meth:`SegmentKernel.blocks`): a column-free
index becomes a varlen batch with one sequence per query block whose block table lists the kept
cache blocks (``paged_plan``), all heads of a layer in one call over a view of the cache in which
every (block, KV head) pair is a one-head block.

Also :func:`check_cache_layout`: the paged layout that :mod:`attention_backends.paged_kv` reads,
checked against vLLM's own cache-write op. The only module besides the adapter that calls vLLM's ops.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from vllm import _custom_ops as ops

from .paged_kv import ISAS, gather_sequence_kv
from .paged_plan import PagedPlan, plan_paged
from .sparse_index import SparseIndex


def check_cache_layout(isa: str, dtype: torch.dtype, block_size: int, head_size: int) -> None:
    """Write a few keys/values with vLLM's own cache op and read them back with ``paged_kv``.

    Raises ``RuntimeError`` when the layout differs or ``paged_kv`` has no reader for ``isa``.
    """
    if isa not in ISAS:
        raise RuntimeError(f"sparse-serve reads vLLM's CPU KV cache in the layouts of ISAs {', '.join(ISAS)}, "
                           f"not {isa!r}; serve with --no-sparse on this machine")
    hkv, tokens = 2, block_size + 3
    cache = torch.zeros(3, hkv, block_size, 2 * head_size, dtype=dtype)
    k = torch.randn(tokens, hkv, head_size).to(dtype)
    v = torch.randn(tokens, hkv, head_size).to(dtype)
    write_kv(cache, k, v, torch.arange(block_size, block_size + tokens), isa)
    got_k, got_v = gather_sequence_kv(cache, torch.tensor([1, 2]), tokens, isa)
    if not (torch.equal(got_k, k.transpose(0, 1)) and torch.equal(got_v, v.transpose(0, 1))):
        raise RuntimeError(f"vLLM's CPU KV-cache layout for ISA {isa!r} is not the one sparse-serve "
                           "reads; serve with --no-sparse on this machine")


def write_kv(cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor, isa: str) -> None:
    """vLLM's own cache-write op: ``k, v [T, Hkv, D]`` at ``slots [T]`` of ``cache [NB, Hkv, B, 2D]`` (layout of ``isa``)."""
    key_cache, value_cache = split_cache(cache)
    ops.cpu_attn_reshape_and_cache(k, v, key_cache, value_cache, slots, isa, k_scale=1.0, v_scale=1.0,
                                   kv_cache_dtype="auto")


def write_paged(k: torch.Tensor, v: torch.Tensor, block_size: int, isa: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One sequence's ``k, v [Hkv, N, D]`` in a fresh paged cache, written by vLLM's own cache op.

    Returns ``cache [NB, Hkv, B, 2D]`` in the layout of ``isa`` and its block table ``[NB]``
    (blocks in order). For op-level benchmarks of the kernel outside an engine.
    """
    hkv, n, d = k.shape
    cache = torch.zeros(-(-n // block_size), hkv, block_size, 2 * d, dtype=k.dtype)
    write_kv(cache, k.transpose(0, 1).contiguous(), v.transpose(0, 1).contiguous(), torch.arange(n), isa)
    return cache, torch.arange(cache.shape[0])


def vllm_isa(dtype: torch.dtype, block_size: int, head_size: int) -> str:
    """The kernel ISA vLLM's CPU backend picks for such a cache (its own rule); asks the OS for AMX tiles
    when it picks ``amx`` (vLLM's workers do so at start; a process that did not would get SIGILL)."""
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    isa = _get_attn_isa(dtype, block_size, head_size)
    if isa == "amx":
        torch.cpu._init_amx()
    return isa


def split_cache(kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """vLLM's key and value views of one layer's cache ``[NB, Hkv, B, 2D]`` (each ``[NB, Hkv, B, D]``).

    Works on a one-KV-head slice ``kv_cache[:, g:g + 1]`` too (a strided view, no copy).
    """
    nb, hkv, bs, two_d = kv_cache.shape
    return kv_cache.view(nb, hkv, 2 * bs, two_d // 2).chunk(2, dim=2)


def _attend(isa: str, query: torch.Tensor, kv_cache: torch.Tensor, query_start_loc: torch.Tensor,
            seq_lens: torch.Tensor, block_table: torch.Tensor, *, scale: float,
            metadata: torch.Tensor | None = None) -> torch.Tensor:
    """vLLM's causal varlen kernel: ``query [T, Hq, D]`` over ``kv_cache [NB, Hkv, B, 2D]`` -> ``[T, Hq, D]``."""
    if metadata is None:
        metadata = ops.cpu_attn_get_scheduler_metadata(
            num_reqs=seq_lens.numel(), num_heads=query.shape[1], num_kv_heads=kv_cache.shape[1],
            head_dim=query.shape[2], seq_lens=seq_lens, dtype=query.dtype, query_start_loc=query_start_loc,
            causal=True, sliding_window_size=-1, isa=isa, enable_kv_split=False, dynamic_causal=None,
            kv_cache_dtype="auto")
    out = torch.empty_like(query)
    key_cache, value_cache = split_cache(kv_cache)
    ops.cpu_attention_with_kv_cache(
        query=query, key_cache=key_cache, value_cache=value_cache, output=out, query_start_loc=query_start_loc,
        seq_lens=seq_lens, scale=scale, causal=True, alibi_slopes=None, sliding_window=-1, block_table=block_table,
        softcap=0.0, scheduler_metadata=metadata, s_aux=None, dynamic_causal=None, k_scale=1.0, v_scale=1.0,
        kv_cache_dtype="auto")
    return out


@dataclass
class SegmentKernel:
    """vLLM's kernel over one request's segment: ``Nq`` queries at the end of a ``seq_len`` context.

    Planned once per batch (the adapter's ``Segment`` carries it through every layer); the
    scheduler metadata, which depends on the number of query heads in a call, is made on first use.
    """

    isa: str
    dtype: torch.dtype
    head_dim: int
    num_queries: int
    seq_len: int
    block_ids: torch.Tensor
    _metadata: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)
    _plans: dict[tuple[int, int, int], tuple[SparseIndex, PagedPlan]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._query_start_loc = torch.tensor([0, self.num_queries], dtype=torch.int32)
        self._seq_lens = torch.tensor([self.seq_len], dtype=torch.int32)
        self._block_table = self.block_ids.to(torch.int32).unsqueeze(0)

    def _scheduler(self, num_heads: int) -> torch.Tensor:
        if num_heads not in self._metadata:
            self._metadata[num_heads] = ops.cpu_attn_get_scheduler_metadata(
                num_reqs=1, num_heads=num_heads, num_kv_heads=1, head_dim=self.head_dim, seq_lens=self._seq_lens,
                dtype=self.dtype, query_start_loc=self._query_start_loc, causal=True, sliding_window_size=-1,
                isa=self.isa, enable_kv_split=False, dynamic_causal=None, kv_cache_dtype="auto")
        return self._metadata[num_heads]

    def _check(self, query: torch.Tensor) -> None:
        nq, _, d = query.shape
        if nq != self.num_queries or d != self.head_dim:
            raise ValueError(f"segment planned for {self.num_queries} x {self.head_dim}, got queries {tuple(query.shape)}")

    def heads(self, query: torch.Tensor, kv_cache: torch.Tensor, heads: tuple[int, ...], *, scale: float) -> torch.Tensor:
        """Exact causal attention of some query heads: ``query [Nq, Hq, D]`` -> ``[len(heads), Nq, D]``.

        ``kv_cache [NB, Hkv, B, 2D]`` holds the segment's whole context (its own rows written).
        """
        self._check(query)
        nq, hq, d = query.shape
        per_kv = hq // kv_cache.shape[1]
        out = query.new_empty(len(heads), nq, d)
        by_kv: dict[int, list[int]] = {}
        for i, h in enumerate(heads):
            by_kv.setdefault(h // per_kv, []).append(i)
        for g, slots in by_kv.items():
            q = query[:, [heads[i] for i in slots]].contiguous()
            o = _attend(self.isa, q, kv_cache[:, g:g + 1], self._query_start_loc, self._seq_lens, self._block_table,
                        scale=scale, metadata=self._scheduler(len(slots)))
            out[slots] = o.transpose(0, 1)
        return out

    def blocks(self, query: torch.Tensor, kv_cache: torch.Tensor, heads: tuple[int, ...], plan: PagedPlan, *,
               scale: float) -> torch.Tensor:
        """Block-sparse attention of some query heads as ``plan`` lays it out -> ``[len(heads), Nq, D]``.

        ``plan`` comes from :func:`paged_plan.plan_paged` for an index over these heads (in this order),
        this segment's ``seq_len`` and rows, and this cache's block size. One kernel call for all heads.
        """
        self._check(query)
        nq, hq, d = query.shape
        nb, hkv, bs, two_d = kv_cache.shape
        idx = torch.tensor(heads)
        q = query[:, idx].transpose(0, 1).reshape(len(heads) * nq, 1, d)
        # every (block, KV head) pair as a one-head block: physical = block * Hkv + KV head of the sequence's head
        kv_head = (idx // (hq // hkv)).repeat_interleave(plan.seqs_per_head).unsqueeze(1)
        table = (self.block_ids.to(torch.int64)[plan.block_table] * hkv + kv_head).to(torch.int32)
        out = _attend(self.isa, q, kv_cache.view(nb * hkv, 1, bs, two_d), plan.query_start_loc, plan.seq_lens,
                      table, scale=scale)
        return out.view(len(heads), nq, d)

    def sparse(self, query: torch.Tensor, kv_cache: torch.Tensor, heads: tuple[int, ...], index: SparseIndex, *,
               tail: int, scale: float) -> tuple[torch.Tensor, int]:
        """Plan and run a column-free ``index`` over these heads (its last ``tail`` rows exact).

        Returns ``out [len(heads), Nq, D]`` and the (query, key) pairs computed.
        """
        # an index object seen before (a static pattern shared by the layers) reuses its plan; the
        # entry holds the index, so its id cannot be reused by another object while the entry lives
        key = (id(index), tail, kv_cache.shape[2])
        if key not in self._plans:
            self._plans[key] = (index, plan_paged(index, self.seq_len - self.num_queries, tail, kv_cache.shape[2]))
        plan = self._plans[key][1]
        return self.blocks(query, kv_cache, heads, plan, scale=scale), plan.kept_pairs


@dataclass
class PagedSequence:
    """One whole sequence (``q [Hq, N, D]``, its k/v) in a fresh paged cache, run through vLLM's kernel
    the way the engine runs a prefill segment: for op-level benchmarks and the profiler's cost model."""

    query: torch.Tensor  # [N, Hq, D]
    cache: torch.Tensor
    kernel: SegmentKernel
    scale: float

    @classmethod
    def of(cls, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_size: int = 128) -> PagedSequence:
        hq, n, d = q.shape
        isa = vllm_isa(q.dtype, block_size, d)
        cache, block_ids = write_paged(k, v, block_size, isa)
        return cls(q.transpose(0, 1).contiguous(), cache, SegmentKernel(isa, q.dtype, d, n, n, block_ids), d ** -0.5)

    @property
    def heads(self) -> tuple[int, ...]:
        return tuple(range(self.query.shape[1]))

    def dense(self) -> torch.Tensor:
        """Exact causal attention of every head -> ``[Hq, N, D]``."""
        return self.kernel.heads(self.query, self.cache, self.heads, scale=self.scale)

    def sparse(self, index: SparseIndex) -> torch.Tensor:
        """A column-free index over every head -> ``[Hq, N, D]``."""
        return self.kernel.sparse(self.query, self.cache, self.heads, index, tail=0, scale=self.scale)[0]
