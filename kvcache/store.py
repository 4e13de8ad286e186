"""Per-request, per-layer store of one sequence's decode-time KV state on two memory tiers.

A store covers the KV heads of one layer that share a policy (the engine makes one store per
(request, layer, policy group)). Tiers: the *pool* (the accelerator / the engine's KV space)
holds what decode reads every step; the *offload* tier (host memory, pinned on CUDA) holds the
values of the compressed history. Layout for ``shadowkv`` / ``nosa``, with ``W`` the start of
the local window (:func:`kvcache.selection.local_start`):

* pool: low-rank factors of the pre-RoPE keys of the prefill (``A [N0, r]``, ``B [r, Hkv*D]``),
  landmarks of the chunks before ``W`` (int8, :class:`kvcache.landmarks.Int8Landmarks`), the outlier chunks' exact keys/values (chosen at
  prefill), the sinks' keys/values, the window's keys (pre- and post-RoPE) and values, and the
  *pending* pre-RoPE keys of positions ``[N0, W)``: tokens generated after the fit that have
  left the window. They are kept exact (rotated on read) until :meth:`SequenceKvStore.refit`
  folds them into a new rank-``r`` fit, which happens once ``refit_every`` of them wait
  (refitting is lossy below full rank: the old keys enter the new fit as their reconstruction).
* offload: the values of positions ``[0, W)``.

``nosa`` adds a resident tier on the pool: per KV head ``resident_chunks`` slots of chunk values
(:class:`kvcache.resident.ResidentChunks`, LRU) and, with ``resident_keys``, their rebuilt
post-RoPE keys; a decode step copies only the selected chunks that are not resident from the
offload tier, and reads the others from the pool. A refit evicts the tier (its keys came from the
old fit). ``nosa`` with ``offload_keys`` keeps no factors, pending or pre-RoPE window keys: the
exact post-RoPE keys of ``[0, W)`` go to the offload tier with the values, and a miss copies both.

Compressed stores on the CPU run :meth:`SequenceKvStore.attend` through the C kernel
(:mod:`kvcache.native_step`); :meth:`SequenceKvStore.attend_reference` is the same step in PyTorch.

``full`` keeps everything exact in the pool; ``streaming`` keeps sinks + the last ``n_local``
tokens and drops the rest. Byte accounting counts the capacity of every tensor held.
"""

from __future__ import annotations

import math

import torch

from .buffers import LandmarkBuffer, TokenBuffer, offload_device_pinned
from .decode_attention import padded_positions, sparse_decode_attention
from .decode_stats import DecodeStats
from .landmarks import chunk_landmarks, chunk_positions, outlier_chunks
from .lowrank import LowRankKeys, fit_lowrank, rebuild
from .native_step import attend_native
from .nosa import nosa_select_positions
from .params import FullKvParams, NosaKvParams, ShadowKvParams, StreamingKvParams, low_rank_keys
from .resident import ResidentChunks
from .rope import apply_rope, rope_inv_freq, shared_rope_table
from .selection import local_start, select_positions

AnyKvParams = FullKvParams | StreamingKvParams | ShadowKvParams | NosaKvParams


def _nbytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


class SequenceKvStore:
    """Compressed decode-time KV of one sequence, one layer and one policy group of ``num_kv_heads`` heads."""

    def __init__(
        self,
        params: AnyKvParams,
        num_kv_heads: int,
        head_dim: int,
        *,
        inv_freq: torch.Tensor | None = None,
        theta: float = 10000.0,
        attention_scaling: float = 1.0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        native: bool = True,
    ) -> None:
        self.params, self.hkv, self.d, self.dtype = params, num_kv_heads, head_dim, dtype
        self.native = native  # decode steps through the C kernel where it applies (kvcache/native_step.py)
        self.device = torch.device(device)
        inv_freq = (rope_inv_freq(head_dim, theta) if inv_freq is None else inv_freq).to(self.device)
        self.rope = shared_rope_table(inv_freq, attention_scaling)
        self.compressed = isinstance(params, ShadowKvParams)
        self.offload_keys = isinstance(params, NosaKvParams) and params.offload_keys
        self.low_rank = low_rank_keys(params)  # keys of [0, W) from the factors (else exact, offloaded)
        if isinstance(params, ShadowKvParams):
            self.chunk, self.n_sink, self.n_local = params.chunk, params.n_sink, params.n_local
        elif isinstance(params, StreamingKvParams):
            self.chunk, self.n_sink, self.n_local = 1, params.n_sink, params.n_local
        else:
            self.chunk, self.n_sink, self.n_local = 1, 0, 1 << 62
        pool = dict(dtype=dtype, device=self.device)
        self.win_k = TokenBuffer(num_kv_heads, head_dim, **pool)
        self.win_v = TokenBuffer(num_kv_heads, head_dim, **pool)
        self.win_k_pre = TokenBuffer(num_kv_heads, head_dim, **pool) if self.low_rank else None
        self.sink_k = TokenBuffer(num_kv_heads, head_dim, **pool)
        self.sink_v = TokenBuffer(num_kv_heads, head_dim, **pool)
        self.landmarks = LandmarkBuffer(num_kv_heads, head_dim, device=self.device)
        self.pending_pre = TokenBuffer(num_kv_heads, head_dim, **pool)
        offload = dict(dtype=dtype, device="cpu", pinned=offload_device_pinned())
        self.offload_v = TokenBuffer(num_kv_heads, head_dim, **offload)
        self.offload_k = TokenBuffer(num_kv_heads, head_dim, **offload) if self.offload_keys else None
        self.factors: LowRankKeys | None = None
        self._no_outliers()
        self.seq_len = 0
        self.window_start = 0
        self.n_fit = 0
        self.previous_chunks: torch.Tensor | None = None
        self.cache = (
            ResidentChunks(num_kv_heads, params.resident_chunks,
                           (2 if self.offload_keys else 1) * params.chunk * head_dim * dtype.itemsize, self.device)
            if isinstance(params, NosaKvParams)
            else None
        )
        self.resident_v: torch.Tensor | None = None  # [Hkv, resident_chunks, chunk, D] (nosa, allocated on first use)
        self.resident_k: torch.Tensor | None = None  # same, rebuilt post-RoPE keys (nosa with resident_keys)

    def _no_outliers(self) -> None:
        self.outliers = torch.empty(self.hkv, 0, dtype=torch.int64, device=self.device)  # chunk ids [Hkv, O]
        self.outlier_k = torch.empty(self.hkv, 0, self.d, dtype=self.dtype, device=self.device)  # post-RoPE [Hkv, O*chunk, D]
        self.outlier_v = torch.empty_like(self.outlier_k)

    # ---- filling -------------------------------------------------------------------------
    def prefill(self, k_pre_rope: torch.Tensor, k_post_rope: torch.Tensor, v: torch.Tensor) -> None:
        """Take the prompt's KV ``[Hkv, N0, D]`` (a fresh store only; ``k_pre_rope`` is unused unless :attr:`low_rank`)."""
        if self.seq_len:
            raise RuntimeError("prefill on a store that already holds a sequence (free() it or make a new one)")
        n = k_post_rope.shape[1]
        if self.compressed and n:
            p = self.params
            if self.low_rank:
                self.factors = fit_lowrank(k_pre_rope.to(self.device, self.dtype), p.rank)
                self.n_fit = n
            start = local_start(n, self.n_local, self.chunk)
            if start:
                self.landmarks.append(chunk_landmarks(k_post_rope[:, :start], self.chunk))
            self.outliers = outlier_chunks(k_post_rope[:, :start], p.n_outlier_chunks, self.chunk).to(self.device)
            pos = chunk_positions(self.outliers, self.chunk).to(k_post_rope.device)
            idx = pos.unsqueeze(-1).expand(-1, -1, self.d)
            self.outlier_k = k_post_rope.gather(1, idx).to(self.device, self.dtype)
            self.outlier_v = v.gather(1, idx).to(self.device, self.dtype)
            self.offload_v.append(v[:, :start])
            if self.offload_k is not None:
                self.offload_k.append(k_post_rope[:, :start])
            s = min(self.n_sink, start)
            self.sink_k.append(k_post_rope[:, :s])
            self.sink_v.append(v[:, :s])
            self.window_start = start
            self.seq_len = start
            k_pre_rope, k_post_rope, v = k_pre_rope[:, start:], k_post_rope[:, start:], v[:, start:]
        self.append(k_pre_rope, k_post_rope, v)

    def append(self, k_pre_rope_new: torch.Tensor, k_post_rope_new: torch.Tensor, v_new: torch.Tensor) -> None:
        """Add ``T`` decoded tokens ``[Hkv, T, D]`` to the window; chunks leaving the window are compressed (or dropped).

        ``k_pre_rope_new`` is read only by a :attr:`low_rank` store (others may pass the post-RoPE keys).
        """
        t = k_post_rope_new.shape[1]
        first_new = self.seq_len
        self.win_k.append(k_post_rope_new)
        self.win_v.append(v_new)
        if self.win_k_pre is not None:
            self.win_k_pre.append(k_pre_rope_new)
        self.seq_len += t
        if first_new < self.n_sink:
            s = min(self.n_sink, self.seq_len) - first_new
            self.sink_k.append(k_post_rope_new[:, :s])
            self.sink_v.append(v_new[:, :s])
        target = local_start(self.seq_len, self.n_local, self.chunk)
        if target > self.window_start:
            self._evict(target - self.window_start)
            every = self.params.refit_every if self.low_rank else 0
            if every and len(self.pending_pre) >= every:
                self.refit()

    def _evict(self, count: int) -> None:
        """Move the first ``count`` window tokens (whole chunks) out of the window."""
        if self.compressed:
            k_post = self.win_k.view()[:, :count]
            self.landmarks.append(chunk_landmarks(k_post, self.chunk))
            self.offload_v.append(self.win_v.view()[:, :count])
        if self.offload_k is not None:
            self.offload_k.append(k_post)
        elif self.compressed:
            first_pending = max(self.n_fit - self.window_start, 0)
            if first_pending < count:
                self.pending_pre.append(self.win_k_pre.view()[:, first_pending:count])
            self.win_k_pre.drop_front(count)
        self.win_k.drop_front(count)
        self.win_v.drop_front(count)
        self.window_start += count

    def refit(self) -> None:
        """Fold the pending exact keys into a new rank-``r`` fit of all compressed pre-RoPE keys (lossy)."""
        if not self.compressed or self.factors is None or len(self.pending_pre) == 0:
            return
        old = rebuild(self.factors, torch.arange(self.n_fit, device=self.device))
        keys = torch.cat((old, self.pending_pre.view(), self.win_k_pre.view()[:, max(self.n_fit - self.window_start, 0) :]), dim=1)
        self.factors = fit_lowrank(keys, self.params.rank)
        self.n_fit = keys.shape[1]
        self.pending_pre.free()
        if self.cache is not None and self.resident_k is not None:
            self.cache.evict_all()  # resident keys were rebuilt from the old fit

    # ---- decode --------------------------------------------------------------------------
    def _gather_rows(self, buf: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``buf [Hkv, L, D]`` rows at ``idx [Hkv, M]`` (clamped into range): ``[Hkv, M, D]``."""
        if buf.shape[1] == 0:
            return torch.zeros(idx.shape[0], idx.shape[1], self.d, dtype=self.dtype, device=self.device)
        heads = torch.arange(idx.shape[0], device=idx.device).unsqueeze(1)
        return buf[heads, idx.clamp(0, buf.shape[1] - 1)]

    def _compressed_kv(self, pos: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Post-RoPE keys, values ``[Hkv, M, D]`` and offload bytes read for compressed positions ``pos [Hkv, M]`` (< window start)."""
        hkv, m, d = self.hkv, pos.shape[1], self.d
        all_heads = torch.arange(hkv, device=pos.device).unsqueeze(1).expand_as(pos)
        # keys: exact post-RoPE ones of the offload tier (resident ones replaced below), or pre-RoPE
        # low-rank rows and the exact pending keys (tokens decoded after the fit), rotated
        if self.offload_k is not None:
            k = self.offload_k.gather(all_heads.cpu(), pos.clamp(0, self.window_start - 1).cpu()).to(self.device)
        elif self.factors is not None:
            a = self.factors.a[pos.clamp(max=self.n_fit - 1)]  # [Hkv, M, r]
            k = torch.bmm(a, self.factors.b.reshape(-1, hkv, d).permute(1, 0, 2))  # [Hkv, M, D]
        else:
            k = torch.zeros(hkv, m, d, dtype=self.dtype, device=self.device)
        if len(self.pending_pre):
            is_pending = valid & (pos >= self.n_fit)
            k[is_pending] = self._gather_rows(self.pending_pre.view(), pos - self.n_fit)[is_pending]
        if self.offload_k is None:
            k = apply_rope(k, pos, table=self.rope)
        v = torch.zeros_like(k)
        # exact rows of the pool: outlier chunks and sinks (few; overwritten in place)
        exact = ~valid
        out_pos = chunk_positions(self.outliers, self.chunk)  # [Hkv, O*chunk], sorted per head
        if out_pos.shape[1]:
            j = torch.searchsorted(out_pos, pos).clamp(max=out_pos.shape[1] - 1)
            is_out = valid & (out_pos.gather(1, j) == pos)
            heads = all_heads[is_out]
            k[is_out], v[is_out] = self.outlier_k[heads, j[is_out]], self.outlier_v[heads, j[is_out]]
            exact = exact | is_out
        if len(self.sink_k):
            is_sink = valid & (pos < len(self.sink_k))
            heads = all_heads[is_sink]
            k[is_sink], v[is_sink] = self.sink_k.view()[heads, pos[is_sink]], self.sink_v.view()[heads, pos[is_sink]]
            exact = exact | is_sink
        # everything else: values of resident chunks from the fast tier, the rest from the offload tier
        fetch = ~exact
        if self.resident_v is not None:
            slot = torch.full_like(pos, -1)
            slot[fetch] = self.cache.slots(all_heads[fetch], pos[fetch] // self.chunk)
            near = fetch & (slot >= 0)
            at = (all_heads[near], slot[near], pos[near] % self.chunk)
            v[near] = self.resident_v[at]
            if self.offload_keys:  # the tier holds these keys: read them there
                k[near] = self.resident_k[at]
            elif self.resident_k is not None:  # the tier holds these keys (equal to the rebuilt ones until a refit)
                self.resident_k[at] = k[near]
            fetch = fetch & ~near
        heads = all_heads[fetch]
        v[fetch] = self.offload_v.gather(heads.cpu(), pos[fetch].cpu()).to(self.device, non_blocking=True)
        return k, v, (2 if self.offload_keys else 1) * heads.numel() * d * self.dtype.itemsize

    def attend(self, q: torch.Tensor, scale: float | None = None) -> tuple[torch.Tensor, DecodeStats]:
        """Attention of the decode query ``q [Hq, D]`` (post-RoPE) over the stored sequence: ``[Hq, D]`` and stats."""
        scale = 1.0 / math.sqrt(self.d) if scale is None else scale
        q = q.to(self.device)
        if not self.compressed:
            s = min(len(self.sink_k), self.window_start)  # sinks that are no longer in the window
            ks = torch.cat((self.sink_k.view()[:, :s], self.win_k.view()), dim=1)
            vs = torch.cat((self.sink_v.view()[:, :s], self.win_v.view()), dim=1)
            out = sparse_decode_attention(q, ks, vs, None, scale)
            return out, DecodeStats(positions=[ks.shape[1]] * self.hkv, offload_bytes_read=0)
        if self.native:
            fast = attend_native(self, q, scale)
            if fast is not None:
                return fast
        return self.attend_reference(q, scale)

    def attend_reference(self, q: torch.Tensor, scale: float) -> tuple[torch.Tensor, DecodeStats]:
        """:meth:`attend` of a compressed store in PyTorch (any device and dtype; the kernel's reference)."""
        p = self.params
        marks = self.landmarks.view()
        common = dict(chunk=p.chunk, budget=p.budget, n_sink=p.n_sink, n_local=p.n_local, outliers=self.outliers, scale=scale)
        hits = misses = 0
        if isinstance(p, NosaKvParams):
            sel = nosa_select_positions(q, marks, self.seq_len, self.previous_chunks, max_change=p.max_change, **common)
            self.previous_chunks = sel.chunk_mask
            hits, misses, filled = self._serve_resident(sel.chunk_mask)
        else:
            sel = select_positions(q, marks, self.seq_len, **common)
            filled = 0
        ws = self.window_start
        pos, valid = padded_positions(sel.mask[:, :ws])
        k_mid, v_mid, read = self._compressed_kv(pos, valid)
        win = self.win_k.view().shape[1]  # the selection always holds the whole window [ws, N)
        k = torch.cat((k_mid, self.win_k.view()), dim=1)
        v = torch.cat((v_mid, self.win_v.view()), dim=1)
        valid = torch.cat((valid, torch.ones(self.hkv, win, dtype=torch.bool, device=valid.device)), dim=1)
        out = sparse_decode_attention(q, k, v, valid, scale)
        return out, DecodeStats(valid.sum(1).tolist(), read + filled, hits, misses)

    def _serve_resident(self, chunk_mask: torch.Tensor) -> tuple[int, int, int]:
        """Bring this step's missed chunks into the resident tier: hits, misses and offload bytes copied."""
        self.allocate_resident()
        step = self.cache.step(chunk_mask)
        if step.fill_heads.numel():
            rows = step.fill_chunks.unsqueeze(1) * self.chunk + torch.arange(self.chunk, device=step.fill_chunks.device)
            at = (step.fill_heads.cpu().unsqueeze(1).expand_as(rows), rows.cpu())
            chunks = self.offload_v.gather(*at)  # [F, chunk, D]
            self.resident_v[step.fill_heads, step.fill_slots] = chunks.to(self.device, non_blocking=True)
            if self.offload_k is not None:
                self.resident_k[step.fill_heads, step.fill_slots] = self.offload_k.gather(*at).to(self.device, non_blocking=True)
        return step.hits, step.misses, step.fill_heads.numel() * self.cache.bytes_per_chunk

    def allocate_resident(self) -> None:
        """The resident tier's value (and key) slots, on first use."""
        if self.resident_v is None:
            shape = (self.hkv, self.cache.capacity, self.chunk, self.d)
            self.resident_v = torch.empty(shape, dtype=self.dtype, device=self.device)
            if self.params.resident_keys:
                self.resident_k = torch.empty(shape, dtype=self.dtype, device=self.device)

    # ---- accounting ----------------------------------------------------------------------
    def pool_bytes(self) -> int:
        """Bytes held on the pool tier (capacity of every buffer, factors, outliers)."""
        buffers = (self.win_k, self.win_v, self.win_k_pre, self.sink_k, self.sink_v, self.landmarks, self.pending_pre)
        total = sum(b.nbytes() for b in buffers if b is not None)
        total += 0 if self.factors is None else self.factors.nbytes()
        total += _nbytes(self.resident_v) + _nbytes(self.resident_k)
        return total + _nbytes(self.outliers) + _nbytes(self.outlier_k) + _nbytes(self.outlier_v)

    def offload_bytes(self) -> int:
        """Bytes held on the offload (host) tier."""
        return self.offload_v.nbytes() + (0 if self.offload_k is None else self.offload_k.nbytes())

    def free(self) -> None:
        """Release every tensor; the store is empty (and reusable through :meth:`prefill`)."""
        for b in (self.win_k, self.win_v, self.win_k_pre, self.sink_k, self.sink_v, self.landmarks, self.pending_pre,
                  self.offload_v, self.offload_k):
            if b is not None:
                b.free()
        self.factors = self.previous_chunks = self.resident_v = self.resident_k = None
        self._no_outliers()
        if self.cache is not None:
            self.cache.clear()
        self.seq_len = self.window_start = self.n_fit = 0
