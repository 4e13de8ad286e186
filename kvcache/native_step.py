"""A compressed store's decode step through the C kernel (:mod:`kvcache.native`): arguments in, stats out.

:func:`attend_native` hands the kernel pointers into the store's own tensors (no copies: every
buffer's live rows are addressed through its head stride), runs one step (selection, NOSA
resident LRU, key rebuild + RoPE or exact offloaded keys, exact attention) and applies its results to the store (the
NOSA chunk set, the LRU counters). It returns ``None`` where the kernel does not apply (not a
CPU store, a dtype other than float32/bfloat16, no kernel built); the caller then runs the
PyTorch path, which computes the same.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .native import load_kernel
from .buffers import LandmarkBuffer, TokenBuffer
from .decode_stats import DecodeStats
from .params import NosaKvParams

if TYPE_CHECKING:
    from .store import SequenceKvStore

_DTYPES = {torch.float32: 0, torch.bfloat16: 1}
_ptr = ctypes.c_void_p
_i32, _i64 = ctypes.c_int32, ctypes.c_int64


class _HeadRows(ctypes.Structure):
    _fields_ = [("ptr", _ptr), ("head_stride", _i64)]


class _StepArgs(ctypes.Structure):
    """Mirror of ``StepArgs`` in ``csrc/step.h`` (same field order and types)."""

    _fields_ = [
        *((name, _i32) for name in ("hkv", "group", "d", "dtype", "chunk", "max_change", "budget", "n_sink", "rank",
                                    "n_outlier_chunks", "capacity", "prev_chunks")),
        *((name, _i64) for name in ("seq_len", "window_start", "n_fit", "n_pending", "n_win", "n_sink_stored",
                                    "slot_cols", "clock")),
        ("scale", ctypes.c_float), ("q", _ptr), ("out", _ptr), ("landmarks", _HeadRows), ("landmark_scale", _HeadRows),
        ("outliers", _ptr), ("outlier_k", _ptr), ("outlier_v", _ptr), ("factor_a", _ptr), ("factor_b", _ptr),
        ("pending", _HeadRows),
        ("rope_cos", _ptr), ("rope_sin", _ptr), ("sink_k", _HeadRows), ("sink_v", _HeadRows), ("win_k", _HeadRows),
        ("win_v", _HeadRows), ("offload_v", _HeadRows), ("offload_k", _HeadRows), ("previous", _ptr), ("chunk_mask", _ptr), ("slot_of", _ptr),
        ("slot_chunk", _ptr), ("last_used", _ptr), ("resident_v", _ptr), ("resident_k", _ptr), ("positions", _ptr),
        ("offload_bytes", _i64), ("hits", _i64), ("misses", _i64), ("filled", _i64),
    ]


def _rows(buffer: TokenBuffer | LandmarkBuffer) -> _HeadRows:
    """A buffer's live rows (contiguous within each head) as pointer + head stride."""
    return _HeadRows(*buffer.rows_address())


def _c(t: torch.Tensor) -> torch.Tensor:
    if not t.is_contiguous():
        raise ValueError("kernel argument must be contiguous")
    return t


def applies(store: SequenceKvStore) -> bool:
    """Whether the kernel can run this store's steps (compressed, CPU, float32/bfloat16, head_dim % 16 == 0, built)."""
    return (store.compressed and store.device.type == "cpu" and store.dtype in _DTYPES and store.d % 16 == 0
            and load_kernel() is not None)


@dataclass
class _Call:
    """One store's prepared step: its arguments and the tensors they point into (alive until the call returns)."""

    store: SequenceKvStore
    args: _StepArgs
    mask: torch.Tensor
    keep: list[torch.Tensor]


@dataclass
class _Batch:
    """Float32 queries, outputs and positions read of several steps, one buffer each: step ``i`` owns the rows
    ``[head[i], head[i + 1])`` of ``q``/``out`` (query heads) and ``[kv[i], kv[i + 1])`` of ``positions``."""

    q: torch.Tensor
    out: torch.Tensor
    positions: torch.Tensor
    head: list[int]
    kv: list[int]

    @classmethod
    def of(cls, steps: list[tuple[SequenceKvStore, torch.Tensor]]) -> _Batch:
        head, kv = [0], [0]
        for store, q in steps:
            head.append(head[-1] + q.shape[0])
            kv.append(kv[-1] + store.hkv)
        q = torch.cat([q for _, q in steps]) if len(steps) > 1 else steps[0][1]
        q = q.detach().to("cpu", torch.float32).contiguous()
        return cls(q, torch.empty_like(q), torch.empty(kv[-1], dtype=torch.int64), head, kv)

    def address(self, t: torch.Tensor, row: int) -> int:
        """Address of row ``row`` of ``t`` (one of this batch's buffers)."""
        return t.data_ptr() + row * t.stride(0) * t.element_size()


def _prepare(store: SequenceKvStore, batch: _Batch, i: int, scale: float) -> _Call | None:
    """The kernel's arguments for step ``i`` of ``batch`` (``store.attend(q)``), or ``None`` where the kernel does not apply."""
    p, hkv, d, ws = store.params, store.hkv, store.d, store.window_start
    chunks = ws // p.chunk
    if len(store.landmarks) != chunks:
        return None
    mask = torch.empty(hkv, chunks, dtype=torch.bool)  # the kernel writes every entry
    group = (batch.head[i + 1] - batch.head[i]) // hkv
    a = _StepArgs(hkv=hkv, group=group, d=d, dtype=_DTYPES[store.dtype], chunk=p.chunk,
                  max_change=p.max_change if isinstance(p, NosaKvParams) else -1, budget=p.budget, n_sink=p.n_sink,
                  n_outlier_chunks=store.outliers.shape[1], seq_len=store.seq_len, window_start=ws,
                  n_win=len(store.win_k), n_sink_stored=len(store.sink_k), scale=scale,
                  q=batch.address(batch.q, batch.head[i]), out=batch.address(batch.out, batch.head[i]),
                  landmarks=_rows(store.landmarks), landmark_scale=_HeadRows(*store.landmarks.scale_address()),
                  outliers=_c(store.outliers).data_ptr(),
                  outlier_k=_c(store.outlier_k).data_ptr(), outlier_v=_c(store.outlier_v).data_ptr(),
                  sink_k=_rows(store.sink_k), sink_v=_rows(store.sink_v),
                  win_k=_rows(store.win_k), win_v=_rows(store.win_v),
                  offload_v=_rows(store.offload_v), chunk_mask=mask.data_ptr(),
                  positions=batch.address(batch.positions, batch.kv[i]))
    call = _Call(store, a, mask, [])
    if store.offload_k is not None:
        a.offload_k = _rows(store.offload_k)
    if store.low_rank:  # keys rebuilt (from the factors or the pending rows) and rotated by the kernel
        cos, sin = store.rope.halves(max(ws, 1))
        call.keep += [cos, sin]
        a.rope_cos, a.rope_sin = cos.data_ptr(), sin.data_ptr()
        a.pending, a.n_pending = _rows(store.pending_pre), len(store.pending_pre)
        if store.factors is not None:
            a.factor_a, a.factor_b = _c(store.factors.a).data_ptr(), _c(store.factors.b).data_ptr()
            a.rank, a.n_fit = store.factors.rank, store.n_fit
    cache = store.cache
    if cache is not None:
        store.allocate_resident()
        cache.cover(chunks)
        cache.clock += 1
        a.slot_of, a.slot_chunk, a.last_used = (_c(t).data_ptr() for t in (cache.slot_of, cache.slot_chunk,
                                                                             cache.last_used))
        a.slot_cols, a.capacity, a.clock = cache.slot_of.shape[1], cache.capacity, cache.clock
        a.resident_v = _c(store.resident_v).data_ptr()
        if store.resident_k is not None:
            a.resident_k = _c(store.resident_k).data_ptr()
        if store.previous_chunks is not None:
            call.keep.append(store.previous_chunks.contiguous())
            a.previous, a.prev_chunks = call.keep[-1].data_ptr(), call.keep[-1].shape[1]
    return call


def _finish(call: _Call, rc: int, out: torch.Tensor, positions: list[int]) -> tuple[torch.Tensor, DecodeStats]:
    """Apply a finished step to its store (NOSA chunk set, LRU counters); its output and stats. Raises on ``rc``."""
    store, a = call.store, call.args
    if rc == -1:
        raise ValueError(f"budget {store.params.budget} is smaller than the always-kept positions")
    if rc != 0:
        raise MemoryError("compressed_attend_many: allocation failed")
    filled = 0
    if store.cache is not None:
        store.cache.record(a.hits, a.misses)
        store.previous_chunks = call.mask
        filled = a.filled * store.cache.bytes_per_chunk
    return out, DecodeStats(positions, a.offload_bytes + filled, a.hits, a.misses, native=True)


def attend_native(store: SequenceKvStore, q: torch.Tensor, scale: float) -> tuple[torch.Tensor, DecodeStats] | None:
    """:meth:`SequenceKvStore.attend` of ``q [Hq, D]`` through the kernel, or ``None`` where it does not apply."""
    result = attend_native_many([(store, q)], scale, threads=1)[0]
    if isinstance(result, Exception):
        raise result
    return result


def attend_native_many(steps: list[tuple[SequenceKvStore, torch.Tensor]], scale: float, threads: int,
                       ) -> list[tuple[torch.Tensor, DecodeStats] | Exception | None]:
    """:func:`attend_native` of several distinct stores in one kernel call over up to ``threads`` threads.

    Per step: its result, the exception its step raised, or ``None`` where the kernel does not
    apply to that store (the caller runs it another way). The kernel spreads the steps' KV heads
    over the threads; each step writes only its own store. The steps' queries are converted to
    float32 in one copy and their outputs share one buffer (an output is a view of it).
    """
    if len({id(store) for store, _ in steps}) != len(steps):
        raise ValueError("attend_native_many: a store appears twice (its steps must run in order)")
    results: list[tuple[torch.Tensor, DecodeStats] | Exception | None] = [None] * len(steps)
    fit = [i for i, (store, _) in enumerate(steps) if applies(store)]
    if not fit:
        return results
    batch = _Batch.of([steps[i] for i in fit])
    calls: list[tuple[int, int, _Call]] = []  # (step, its row in the batch, call)
    for j, i in enumerate(fit):
        try:
            call = _prepare(steps[i][0], batch, j, scale)
        except Exception as exc:  # noqa: BLE001 - reported per step
            results[i] = exc
            continue
        if call is not None:
            calls.append((i, j, call))
    if not calls:
        return results
    args = (_StepArgs * len(calls))(*(call.args for _, _, call in calls))
    rc = (ctypes.c_int32 * len(calls))()
    load_kernel().compressed_attend_many(args, len(calls), max(1, threads), rc)
    positions = batch.positions.tolist()
    for k, (i, j, call) in enumerate(calls):
        call.args = args[k]  # the kernel wrote the counters into the array's copy
        out = batch.out[batch.head[j]:batch.head[j + 1]].to(steps[i][1].dtype)  # a view where float32
        try:
            results[i] = _finish(call, rc[k], out, positions[batch.kv[j]:batch.kv[j + 1]])
        except Exception as exc:  # noqa: BLE001 - reported per step
            results[i] = exc
    return results
