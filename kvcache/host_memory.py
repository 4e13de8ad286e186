"""Host memory of the KV stores: the heap pages that freed stores and histories leave go back to the OS.

The stores and histories (:mod:`kvcache.store`, :mod:`kvcache.history`) hold buffers of a few to
tens of MB, reallocated as they grow and freed when a history is handed over to its stores or a
request ends. glibc's ``malloc`` gives such blocks their own mappings only until it has freed one:
it then raises its mmap threshold to that block's size (up to 32 MB), and later buffers come from
the heap, where the holes that freed ones leave stay resident. Measured on this CPU host in the
windowed-layer lifecycle (histories grown per 2,048-token chunk, copied into stores, dropped; 32K
tokens, 30 layers per request, four requests in a row): resident memory over held bytes grew from
0.40 to 0.87 GB; with ``malloc_trim(0)`` after each request's histories were dropped (50-110 ms a
call) it stayed at 0.26 GB, the runtime's own. In the engine, eight 32K requests had ended ~6 GB
above the bytes the stores held, and the worker was OOM-killed. (Fixing the mmap threshold at 4 MiB
instead kept it at 0.26 GB too, but made the engine's own 12 MB activations page-fault on every
allocation: an MLP-like op ran 40% slower.)

:class:`HeapTrimmer` trims once every ``every_bytes`` of released KV memory, not on every free.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)


def _libc_trim() -> Callable[[], object] | None:
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):  # no glibc (musl, macOS): nothing to trim
        return None
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)


class HeapTrimmer:
    """Returns freed heap pages to the OS once ``every_bytes`` of KV buffers have been released."""

    def __init__(self, every_bytes: int = 256 << 20) -> None:
        self.every_bytes = every_bytes
        self.pending = 0  # bytes released since the last trim
        self.trims = 0
        self._trim = _libc_trim()
        if self._trim is None:
            logger.info("sparse-serve: no malloc_trim in this C library; freed KV buffers may stay resident")

    def released(self, nbytes: int) -> None:
        """Count ``nbytes`` of freed KV buffers; trim when enough have accumulated."""
        self.pending += nbytes
        if self.pending >= self.every_bytes:
            self.trim()

    def trim(self) -> None:
        """Give every free heap page back to the OS now."""
        self.pending = 0
        if self._trim is not None:
            self._trim()
            self.trims += 1
