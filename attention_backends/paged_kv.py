"""Read one sequence's keys and values back out of vLLM's paged KV cache (CPU layouts).

vLLM's CPU attention cache is one tensor ``[num_blocks, Hkv, block_size, 2 * D]`` per layer:
per (block, kv head), the first ``block_size * D`` elements hold the keys and the next as many
the values. How the rows sit inside those two regions depends on the ISA vLLM picked for its
kernel (``layer.isa``; ``vllm.v1.attention.backends.cpu_attn._get_attn_isa``):

- ``vec`` / ``vec16`` (x86 without AMX, or float32): keys transposed ``[D, B]``, values ``[B, D]``.
- ``amx`` (bfloat16 on CPUs with AMX tiles, block size a multiple of 32): both packed in pairs for
  the tiles' bf16 dot products: keys ``[B/16, D/2, 16, 2]`` (16-token tiles, two dims per
  token side by side), values ``[D/16, B/2, 16, 2]`` (16-dim tiles, two tokens per dim side by
  side).

``gather_sequence_kv`` undoes either; the vLLM adapter checks the layout of the ISA in use against
vLLM's own cache-write op at start-up (``cpu_kernel.check_cache_layout``) and refuses to start if
it does not match.
"""

from __future__ import annotations

import torch

ISAS = ("vec", "vec16", "amx")
"""The cache layouts this module reads (other ISAs: ARM, POWER, s390x, RISC-V, not yet)."""


def _unpack(keys: torch.Tensor, values: torch.Tensor, isa: str, bs: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-block regions ``keys, values [n, Hkv, B * D]`` -> ``k, v [Hkv, n * B, D]`` (views where possible)."""
    n, hkv = keys.shape[:2]
    if isa == "amx":
        k = keys.view(n, hkv, bs // 16, d // 2, 16, 2).permute(1, 0, 2, 4, 3, 5)
        v = values.view(n, hkv, d // 16, bs // 2, 16, 2).permute(1, 0, 3, 5, 2, 4)
    elif isa in ("vec", "vec16"):
        k = keys.view(n, hkv, d, bs).permute(1, 0, 3, 2)
        v = values.view(n, hkv, bs, d).permute(1, 0, 2, 3)
    else:
        raise ValueError(f"no reader for vLLM's CPU KV-cache layout of ISA {isa!r} (known: {', '.join(ISAS)})")
    return k.reshape(hkv, n * bs, d), v.reshape(hkv, n * bs, d)


def gather_sequence_kv(
    kv_cache: torch.Tensor, block_ids: torch.Tensor, seq_len: int, isa: str = "vec"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of one sequence: ``kv_cache [NB, Hkv, B, 2D]``, ``block_ids [>= ceil(N/B)]``
    -> ``k, v [Hkv, N, D]`` (contiguous copies in the cache dtype), for the layout of ``isa``."""
    _, hkv, bs, two_d = kv_cache.shape
    d = two_d // 2
    nblk = -(-seq_len // bs)
    if block_ids.numel() < nblk:
        raise ValueError(f"block table has {block_ids.numel()} blocks, {nblk} needed for {seq_len} tokens")
    blocks = kv_cache.view(kv_cache.shape[0], hkv, 2, bs * d)[block_ids[:nblk].long()]
    keys, values = _unpack(blocks[:, :, 0], blocks[:, :, 1], isa, bs, d)
    return keys[:, :seq_len].contiguous(), values[:, :seq_len].contiguous()
