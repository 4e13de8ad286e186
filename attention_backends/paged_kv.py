"""Read one sequence's keys and values back out of vLLM's paged KV cache (CPU layout).

vLLM's CPU attention cache is one tensor ``[num_blocks, Hkv, block_size, 2 * D]`` per layer:
per (block, kv head), the first ``block_size * D`` elements hold the keys and the next as many
the values. Values are stored row-major ``[block_size, D]``; with the ``vec`` / ``vec16`` ISAs
(x86 without AMX, the machines we run on) keys are stored transposed, ``[D, block_size]``,
which is what the kernel's dot products want. ``gather_sequence_kv`` undoes both; the vLLM
adapter checks this layout against vLLM's own cache-write op at start-up
(``cpu_kernel.check_cache_layout``) and refuses to start if it does not match.
"""

from __future__ import annotations

import torch


def gather_sequence_kv(
    kv_cache: torch.Tensor, block_ids: torch.Tensor, seq_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of one sequence: ``kv_cache [NB, Hkv, B, 2D]``, ``block_ids [>= ceil(N/B)]``
    -> ``k, v [Hkv, N, D]`` (contiguous copies in the cache dtype)."""
    _, hkv, bs, two_d = kv_cache.shape
    d = two_d // 2
    nblk = -(-seq_len // bs)
    if block_ids.numel() < nblk:
        raise ValueError(f"block table has {block_ids.numel()} blocks, {nblk} needed for {seq_len} tokens")
    blocks = kv_cache.view(kv_cache.shape[0], hkv, 2, bs * d)[block_ids[:nblk].long()]
    keys = blocks[:, :, 0].view(nblk, hkv, d, bs).permute(1, 0, 3, 2).reshape(hkv, nblk * bs, d)
    values = blocks[:, :, 1].view(nblk, hkv, bs, d).permute(1, 0, 2, 3).reshape(hkv, nblk * bs, d)
    return keys[:, :seq_len].contiguous(), values[:, :seq_len].contiguous()
