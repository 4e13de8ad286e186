"""The plan of one batch for the sparse backend: which rows vLLM's kernel runs, which we run.

Made once per batch by the adapter's metadata builder (``vllm_backend.SparseCPUMetadataBuilder``)
and read by every layer (``SparseCPUAttentionImpl.forward``), as FlashInfer and SGLang split
planning from running: long prefill segments (sparse, or exact over a windowed layer's history)
and the decode rows of compressed KV stores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from kvcache.decode_step import RopeSpec

if TYPE_CHECKING:
    from .cpu_kernel import SegmentKernel
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionMetadata


@dataclass(frozen=True)
class Segment:
    """One request's prefill segment run by us: its query rows in the batch and its context.

    ``dense``: computed exactly (a windowed layer's segment too short for the sparse path);
    ``slot``: the slot its first row writes (names the request in windowed layers);
    ``kernel``: vLLM's kernel for its dense heads (outside windowed layers, whose pool lacks the context);
    ``tail``: its last query rows computed exactly by the sparse heads too (:func:`segment_tail`).
    """

    q_start: int
    q_end: int
    seq_len: int
    block_ids: torch.Tensor
    dense: bool = False
    slot: int = -1
    kernel: SegmentKernel | None = None
    tail: int = 0


def segment_tail(seq_len: int, prompt_tokens: int | None, dense_tail: int) -> int:
    """Rows at the end of a prefill segment whose context reaches ``seq_len`` that run exact attention.

    ``dense_tail`` when the segment ends its prompt (``seq_len >= prompt_tokens``, or the prompt is
    unknown: the safe side), else 0: a prompt's question is at its end, and an earlier chunk's last
    rows are only document.
    """
    return dense_tail if prompt_tokens is None or seq_len >= prompt_tokens else 0


@dataclass(frozen=True)
class KvRow:
    """One decode row of a long request: its row in the batch, the slot it writes, its context."""

    row: int
    slot: int
    seq_len: int
    block_ids: torch.Tensor


@dataclass
class BatchPlan:
    """Split of one batch into vLLM-kernel rows and our segments, plus the compressed-decode rows.

    ``dense_rows``: the rows vLLM's kernel runs (with ``dense_metadata``), ``None`` for every row.
    ``kv_rows`` replace vLLM's output for the compressed heads; in a windowed layer group
    (``window`` > 0: its sliding window) they cover every head, so vLLM's kernel skips them.
    """

    segments: list[Segment]
    kv_rows: list[KvRow] = field(default_factory=list)
    rope: RopeSpec | None = None
    window: int = 0
    dense_rows: torch.Tensor | None = None
    dense_metadata: CPUAttentionMetadata | None = None
