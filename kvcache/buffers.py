"""Growable per-head token buffers on one memory tier, with exact byte accounting.

A buffer holds ``[H, capacity, W]`` and exposes the live ``[H, len, W]`` rows; when it must grow
it allocates the rows it needs plus 1/64 of them, at least 16 rows (a decode store's buffers hold a
whole context and gain a row per step or per chunk: 1.5x growth would leave up to a third of the
held bytes unused, 1/64 leaves at most 1.6% for a copy of the buffer every capacity/64 appended
rows). The headroom is there from the first append too: a store's offload buffers are filled by
its prefill in one append, and without it the first chunk leaving the decode window would copy the
whole prefilled history (25 MB per buffer and layer for a 32K float32 request). A buffer can drop
rows from the front (sliding windows) and reports the bytes it *holds* (its capacity, not its length). The offload tier is host memory, pinned when CUDA is
available so host-to-device copies can be asynchronous.

:class:`LandmarkBuffer` holds a store's int8 chunk landmarks in the blocked layout that the C decode
kernel scores without horizontal sums (16 landmarks per vector, one per lane).
"""

from __future__ import annotations

import torch

from .landmarks import Int8Landmarks


def offload_device_pinned() -> bool:
    """Whether offload-tier tensors are allocated in pinned host memory (only with CUDA)."""
    return torch.cuda.is_available()


def _grown(need: int) -> int:
    """Rows to allocate when a buffer must hold ``need``: 1/64 more, at least 16 (module docstring)."""
    return need + max(need // 64, 16)


def _alloc(heads: int, capacity: int, width: int, dtype: torch.dtype, device: torch.device, pinned: bool) -> torch.Tensor:
    if pinned:
        return torch.empty(heads, capacity, width, dtype=dtype, device="cpu", pin_memory=True)
    return torch.empty(heads, capacity, width, dtype=dtype, device=device)


class TokenBuffer:
    """Rows appended along the token axis of ``[H, capacity, W]`` on ``device`` (``pinned`` host memory if asked)."""

    def __init__(self, heads: int, width: int, *, dtype: torch.dtype, device: torch.device | str, pinned: bool = False) -> None:
        self.heads, self.width, self.dtype = heads, width, dtype
        self.device = torch.device("cpu") if pinned else torch.device(device)
        self.pinned = pinned
        self._data = _alloc(heads, 0, width, dtype, self.device, pinned)
        self._start = 0
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def view(self) -> torch.Tensor:
        """The live rows ``[H, len, W]`` (a view; do not keep it across appends)."""
        return self._data[:, self._start : self._start + self._len]

    def rows_address(self) -> tuple[int, int]:
        """The live rows as raw memory: address of head 0's first live row, and elements between heads (no view built)."""
        return self._data.data_ptr() + self._start * self.width * self._data.element_size(), self._data.stride(0)

    def gather(self, heads: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rows ``[..., W]`` at live ``positions [...]`` of ``heads [...]`` (no copy of the whole buffer)."""
        flat = (heads * self._data.shape[1] + self._start + positions).reshape(-1).to(self.device)
        return self._data.view(-1, self.width).index_select(0, flat).reshape(*positions.shape, self.width)

    def append(self, x: torch.Tensor) -> None:
        """Append ``x [H, T, W]``."""
        if x.dim() != 3 or x.shape[0] != self.heads or x.shape[2] != self.width:
            raise ValueError(f"expected [{self.heads}, T, {self.width}]; got {tuple(x.shape)}")
        t = x.shape[1]
        cap = self._data.shape[1]
        if self._start + self._len + t > cap:
            if self._len + t <= cap:
                self._data[:, : self._len] = self._data[:, self._start : self._start + self._len].clone()
            else:
                need = self._len + t
                new = _alloc(self.heads, _grown(need), self.width, self.dtype, self.device, self.pinned)
                new[:, : self._len] = self.view()
                self._data = new
            self._start = 0
        self._data[:, self._start + self._len : self._start + self._len + t] = x  # the copy casts and moves
        self._len += t

    def drop_front(self, count: int) -> None:
        """Forget the first ``count`` rows."""
        if not 0 <= count <= self._len:
            raise ValueError(f"cannot drop {count} of {self._len} rows")
        self._start += count
        self._len -= count

    def nbytes(self) -> int:
        """Bytes held (capacity)."""
        return self._data.numel() * self._data.element_size()

    def free(self) -> None:
        self._data = _alloc(self.heads, 0, self.width, self.dtype, self.device, self.pinned)
        self._start = self._len = 0


LANDMARK_BLOCK = 16
"""Landmarks per block of :class:`LandmarkBuffer` (one per 32-bit lane of an AVX-512 vector)."""


class LandmarkBuffer:
    """Chunk landmarks ``[H, C, D]`` as :class:`~kvcache.landmarks.Int8Landmarks`, appended along C, in blocks of 16.

    Values ``int8 [H, blocks, D/2, 16, 2]``: landmark ``c``'s dims ``2t, 2t + 1`` sit at block
    ``c // 16``, pair ``t``, lane ``c % 16``; scales ``float32 [H, blocks, 16]``. The decode kernel
    (``kvcache/csrc/dots.h``, ``landmark_dots``) reads one pair of 16 landmarks as one vector of
    32-bit lanes, so a query's dot products accumulate lane-wise with no horizontal sum per
    landmark (AVX512-VNNI: one ``vpdpwssd`` per pair). :meth:`view` gives the PyTorch path the
    row-major landmarks (a copy). Capacity grows as :class:`TokenBuffer`'s, in whole blocks; unused
    lanes are zero.
    """

    def __init__(self, heads: int, width: int, *, device: torch.device | str) -> None:
        if width % 2:
            raise ValueError(f"landmark width must be even (dims are stored in pairs); got {width}")
        self.heads, self.width = heads, width
        self.device = torch.device(device)
        self._data, self._scale = self._alloc(0)
        self._len = 0

    def _alloc(self, blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.zeros(self.heads, blocks, self.width // 2, LANDMARK_BLOCK, 2, dtype=torch.int8, device=self.device),
                torch.zeros(self.heads, blocks, LANDMARK_BLOCK, dtype=torch.float32, device=self.device))

    def __len__(self) -> int:
        return self._len

    def view(self) -> Int8Landmarks:
        """The landmarks ``[H, len, D]``, row-major (a copy)."""
        rows = self._data.permute(0, 1, 3, 2, 4).reshape(self.heads, -1, self.width)
        return Int8Landmarks(rows[:, : self._len], self._scale.reshape(self.heads, -1)[:, : self._len])

    def rows_address(self) -> tuple[int, int]:
        """Address of head 0's first block of values, and elements between heads."""
        return self._data.data_ptr(), self._data.stride(0)

    def scale_address(self) -> tuple[int, int]:
        """Address of head 0's first scale, and elements between heads."""
        return self._scale.data_ptr(), self._scale.stride(0)

    def append(self, x: torch.Tensor) -> None:
        """Append float landmarks ``x [H, T, D]`` (quantized here)."""
        if x.dim() != 3 or x.shape[0] != self.heads or x.shape[2] != self.width:
            raise ValueError(f"expected [{self.heads}, T, {self.width}]; got {tuple(x.shape)}")
        t = x.shape[1]
        need = self._len + t
        if need > self._data.shape[1] * LANDMARK_BLOCK:
            data, scale = self._alloc(-(-_grown(need) // LANDMARK_BLOCK))
            data[:, : self._data.shape[1]] = self._data
            scale[:, : self._scale.shape[1]] = self._scale
            self._data, self._scale = data, scale
        marks = Int8Landmarks.of(x.to(self.device))
        pairs = marks.values.reshape(self.heads, t, self.width // 2, 2)
        if t <= 2:  # a decode step's chunk: basic indexing, no index tensors
            for i, c in enumerate(range(self._len, need)):
                self._data[:, c // LANDMARK_BLOCK, :, c % LANDMARK_BLOCK] = pairs[:, i]
                self._scale[:, c // LANDMARK_BLOCK, c % LANDMARK_BLOCK] = marks.scale[:, i]
        else:
            pos = torch.arange(self._len, need, device=self.device)
            self._data[:, pos // LANDMARK_BLOCK, :, pos % LANDMARK_BLOCK] = pairs.transpose(0, 1)  # advanced dims lead
            self._scale[:, pos // LANDMARK_BLOCK, pos % LANDMARK_BLOCK] = marks.scale
        self._len = need

    def nbytes(self) -> int:
        """Bytes held (capacity)."""
        return self._data.numel() * self._data.element_size() + self._scale.numel() * self._scale.element_size()

    def free(self) -> None:
        self._data, self._scale = self._alloc(0)
        self._len = 0
