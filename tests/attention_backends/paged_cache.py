"""Test helper: a paged CPU KV cache written by vLLM's own cache-write op, in the layout of each ISA."""

from __future__ import annotations

import pytest
import torch

ISAS = [pytest.param("vec"), pytest.param("vec16"),
        pytest.param("amx", marks=pytest.mark.skipif(not torch.cpu._is_amx_tile_supported(),
                                                     reason="this CPU has no AMX tiles (vLLM picks amx only there)"))]
"""ISAs whose layout tests can write here: ``amx`` only on CPUs with AMX."""


def write_with_vllm(cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor, isa: str = "vec") -> None:
    """Write ``k, v [T, Hkv, D]`` at ``slots [T]`` of ``cache [NB, Hkv, B, 2D]`` in the layout of ``isa``."""
    from attention_backends.cpu_kernel import write_kv

    write_kv(cache, k, v, slots, isa)
