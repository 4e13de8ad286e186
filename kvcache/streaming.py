"""Streaming decode (StreamingLLM, Xiao et al. 2023): attention sinks plus a local window, nothing else.

For heads whose prefill attention is A-shaped, a decode query only needs the first ``n_sink``
tokens (the attention sinks) and the last ``n_local`` tokens; the middle of the cache can be
dropped. Unlike the compressed policies, the window here is exactly the last ``n_local`` tokens
(no chunk grid is needed).
"""

from __future__ import annotations

import torch

DEFAULT_STREAMING_SINK = 4
DEFAULT_STREAMING_LOCAL = 1024


def streaming_positions(
    seq_len: int, n_sink: int = DEFAULT_STREAMING_SINK, n_local: int = DEFAULT_STREAMING_LOCAL, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Sorted unique positions ``[0, n_sink) U [N - n_local, N)`` (clipped to ``[0, N)``): ``int64 [<= n_sink + n_local]``."""
    if seq_len < 0 or n_sink < 0 or n_local < 0:
        raise ValueError(f"seq_len, n_sink and n_local must be >= 0; got {seq_len}, {n_sink}, {n_local}")
    start = max(seq_len - n_local, 0)
    sinks = torch.arange(min(n_sink, start), device=device)
    return torch.cat((sinks, torch.arange(start, seq_len, device=device)))


def streaming_mask(
    num_kv_heads: int, seq_len: int, n_sink: int = DEFAULT_STREAMING_SINK, n_local: int = DEFAULT_STREAMING_LOCAL, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The same positions as a mask for every KV head: ``bool [Hkv, N]``."""
    mask = torch.zeros(num_kv_heads, seq_len, dtype=torch.bool, device=device)
    mask[:, streaming_positions(seq_len, n_sink, n_local, device)] = True
    return mask
