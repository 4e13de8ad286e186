"""Engine-side decode step: a store built from the rotated context, extended per token, rebuilt when stale."""

from __future__ import annotations

import torch

from kvcache.decode_attention import dense_decode_attention
from kvcache.decode_step import RopeSpec, advance, group_decode, pre_rope_rows
from kvcache.head_policy import KvGroup
from kvcache.params import ShadowKvParams, StreamingKvParams
from kvcache.registry import StoreRegistry
from kvcache.rope import apply_rope, rope_inv_freq

HQ, HKV, D = 6, 3, 16
ROPE = RopeSpec(inv_freq=rope_inv_freq(D, 10000.0), attention_scaling=1.2)


def _context(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Post-RoPE keys and values ``[HKV, n, D]`` as an engine's cache holds them, and queries ``[n, HQ, D]``."""
    g = torch.Generator().manual_seed(seed)
    rot = lambda x: apply_rope(x, torch.arange(n), inv_freq=ROPE.inv_freq, attention_scaling=ROPE.attention_scaling)  # noqa: E731
    k = rot(torch.randn(HKV, n, D, generator=g))
    q = rot(torch.randn(HQ, n, D, generator=g)).transpose(0, 1)
    return k, torch.randn(HKV, n, D, generator=g), q


def _decode(stores, group, k, v, q, first: int, last: int, reads: list[int], request: str = "r"):
    outs = []
    for pos in range(first, last):
        def read(pos=pos):
            reads.append(pos)
            return k[:, : pos + 1], v[:, : pos + 1]
        out, _ = group_decode(stores, request, (0, 0), group, q[pos], k[:, pos], v[:, pos], pos, read, ROPE, D**-0.5)
        outs.append((pos, out))
    return outs


def test_full_rank_full_budget_group_equals_dense_and_reads_context_once() -> None:
    k, v, q = _context(300)
    group = KvGroup(ShadowKvParams(rank=2 * D, budget=1 << 20, n_local=16, n_outlier_chunks=2), kv_heads=(0, 2),
                    q_heads=(0, 1, 4, 5))
    stores, reads = StoreRegistry(), []
    for pos, out in _decode(stores, group, k, v, q, 250, 300, reads):
        want = dense_decode_attention(q[pos], k[:, : pos + 1], v[:, : pos + 1], D**-0.5)[[0, 1, 4, 5]]
        torch.testing.assert_close(out, want, atol=2e-5, rtol=2e-5)
    assert reads == [250]  # built once, then extended token by token
    assert stores.pool_bytes() > 0 and stores.offload_bytes() > 0
    assert stores.free("r") > 0 and stores.total_bytes() == 0


def test_stale_store_is_rebuilt_from_context() -> None:
    k, v, q = _context(120, seed=1)
    group = KvGroup(StreamingKvParams(n_sink=4, n_local=32), kv_heads=(1,), q_heads=(2, 3))
    stores, reads = StoreRegistry(), []
    _decode(stores, group, k, v, q, 60, 70, reads)
    # the request went away and came back later (e.g. recomputed after preemption): positions jump
    (pos, out), = _decode(stores, group, k, v, q, 100, 101, reads)
    assert reads == [60, 100]
    keep = torch.cat((torch.arange(4), torch.arange(101 - 32, 101)))
    want = dense_decode_attention(q[100][[2, 3]], k[1:2, keep], v[1:2, keep], D**-0.5)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)


def test_a_batch_of_pre_rope_keys_equals_each_row_and_feeds_advance_unchanged() -> None:
    k, v, _ = _context(200, seed=2)
    rows = [150, 37, 199]
    batch = pre_rope_rows(k[:, rows].transpose(0, 1), rows, ROPE)  # [R, Hkv, D]
    for i, pos in enumerate(rows):
        assert torch.equal(batch[i], ROPE.unrotate(k[:, pos : pos + 1], torch.tensor([pos]))[:, 0])
    group = KvGroup(ShadowKvParams(rank=8, budget=64, n_local=16, n_outlier_chunks=1), kv_heads=(0, 2), q_heads=(0, 1))
    stores = {name: StoreRegistry() for name in ("given", "computed")}
    for name, reg in stores.items():
        for pos in range(150, 153):
            k_pre = pre_rope_rows(k[:, pos : pos + 1].transpose(0, 1), [pos], ROPE)[0] if name == "given" else None
            advance(reg, "r", (0, 0), group, k[:, pos], v[:, pos], pos, lambda pos=pos: (k[:, : pos + 1], v[:, : pos + 1]),
                    ROPE, k_pre)
    a, b = stores["given"].find("r", (0, 0)), stores["computed"].find("r", (0, 0))
    assert a.seq_len == b.seq_len == 153
    assert torch.equal(a.win_k_pre.view(), b.win_k_pre.view()) and torch.equal(a.win_k.view(), b.win_k.view())
