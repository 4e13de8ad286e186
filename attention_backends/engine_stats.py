"""Counters shared between the engine process (writer) and the HTTP server (reader).

The attention backend runs in vLLM's engine-core / worker processes, the Prometheus endpoint
in the API server process. A small memory-mapped file of float64 slots carries the counters
across: the server creates it, passes its path in the plugin config, the backend of
tensor-parallel rank 0 adds to it, and ``/metrics`` reads it. Slots:

``active``: attention layers built with the sparse backend (proves at start-up that vLLM
selected it); ``layout``: the ISA whose paged-cache layout the backend reads (1 + its index in
:data:`attention_backends.paged_kv.ISAS`; 0 before a layer is built); ``sparse_tokens`` /
``dense_tokens``: prefill tokens run sparse / dense (counted once per segment, at the model's
first layer); ``fallback[reason]``: sparse-eligible segments
that ran dense, per reason; ``kept[layer]`` / ``causal[layer]``: pairs computed and causal
pairs of sparse segments, per layer (their ratio is the layer's mean density); ``kv[name]``:
compressed decode (:mod:`kvcache`), see :data:`KV_COUNTERS` and :data:`KV_GAUGES`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .paged_kv import ISAS

FALLBACK_REASONS = ("short_segment", "error", "no_history")
"""Why a sparse-eligible prefill segment ran dense, or a windowed layer's segment read only the pool
window (``no_history``); each is logged and counted."""

KV_COUNTERS = ("decode_steps", "native_steps", "positions_read", "offload_read_bytes", "cache_hits", "cache_misses",
               "unknown_request", "errors")
"""Compressed decode, summed: (row, layer, group) steps through a store, those the C kernel ran, positions they read, bytes
copied from the offload tier, NOSA resident-cache hits / misses, decode rows whose request the
connector did not name and compressed steps that raised (both keep the dense kernel's output;
logged)."""

KV_GAUGES = ("pool_bytes", "offload_bytes", "stores")
"""Compressed decode, current: bytes held by the stores of live requests on each tier, and requests holding stores."""

_HEADER = 4  # active, sparse_tokens, dense_tokens, layout


class EngineStats:
    """Fixed layout of counters over a float64 memory map of ``num_layers`` layers."""

    def __init__(self, path: Path, num_layers: int, *, create: bool = False) -> None:
        self.path = Path(path)
        self.num_layers = num_layers
        self._kv_base = _HEADER + len(FALLBACK_REASONS) + 2 * num_layers
        size = self._kv_base + len(KV_COUNTERS) + len(KV_GAUGES)
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            np.zeros(size, dtype=np.float64).tofile(self.path)
        elif self.path.stat().st_size != size * 8:
            raise ValueError(f"{self.path}: stats file does not match {num_layers} layers")
        self._slots = np.memmap(self.path, dtype=np.float64, mode="r+", shape=(size,))

    # ---------------------------------------------------------------- writer side
    def mark_active(self) -> None:
        self._slots[0] += 1

    def set_cache_layout(self, isa: str) -> None:
        self._slots[3] = 1 + ISAS.index(isa)

    def add_tokens(self, sparse: int, dense: int) -> None:
        self._slots[1] += sparse
        self._slots[2] += dense

    def add_fallback(self, reason: str) -> None:
        self._slots[_HEADER + FALLBACK_REASONS.index(reason)] += 1

    def add_pairs(self, layer: int, kept: int, causal: int) -> None:
        base = _HEADER + len(FALLBACK_REASONS)
        self._slots[base + layer] += kept
        self._slots[base + self.num_layers + layer] += causal

    def add_kv(self, **counts: int) -> None:
        """Add to :data:`KV_COUNTERS` by name."""
        for name, n in counts.items():
            self._slots[self._kv_base + KV_COUNTERS.index(name)] += n

    def set_kv(self, **levels: int) -> None:
        """Set :data:`KV_GAUGES` by name."""
        base = self._kv_base + len(KV_COUNTERS)
        for name, n in levels.items():
            self._slots[base + KV_GAUGES.index(name)] = n

    # ---------------------------------------------------------------- reader side
    @property
    def active_layers(self) -> int:
        return int(self._slots[0])

    @property
    def cache_layout(self) -> str | None:
        """The ISA whose KV-cache layout the backend reads, once a layer is built."""
        code = int(self._slots[3])
        return ISAS[code - 1] if code else None

    @property
    def sparse_tokens(self) -> int:
        return int(self._slots[1])

    @property
    def dense_tokens(self) -> int:
        return int(self._slots[2])

    def fallbacks(self) -> dict[str, int]:
        return {r: int(self._slots[_HEADER + i]) for i, r in enumerate(FALLBACK_REASONS)}

    def layer_density(self) -> dict[int, float]:
        """Mean density per layer over the sparse segments seen so far (layers with none left out)."""
        base = _HEADER + len(FALLBACK_REASONS)
        kept = self._slots[base : base + self.num_layers]
        causal = self._slots[base + self.num_layers : base + 2 * self.num_layers]
        return {i: float(kept[i] / causal[i]) for i in range(self.num_layers) if causal[i] > 0}

    def kv(self) -> dict[str, int]:
        """Every compressed-decode counter and gauge by name."""
        names = KV_COUNTERS + KV_GAUGES
        return {n: int(self._slots[self._kv_base + i]) for i, n in enumerate(names)}
