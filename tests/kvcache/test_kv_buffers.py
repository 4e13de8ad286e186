"""Growable token buffers: appends, sliding the front, byte accounting and row gathers."""

from __future__ import annotations

import pytest
import torch

from kvcache.buffers import LANDMARK_BLOCK, LandmarkBuffer, TokenBuffer
from kvcache.landmarks import Int8Landmarks


def test_appends_drops_and_gathers_read_the_live_rows() -> None:
    buf = TokenBuffer(2, 4, dtype=torch.float32, device="cpu")
    rows = torch.randn(2, 50, 4)
    for start in range(0, 50, 7):
        buf.append(rows[:, start:start + 7])
    buf.drop_front(5)
    assert len(buf) == 45 and torch.equal(buf.view(), rows[:, 5:])
    assert buf.nbytes() >= 2 * 50 * 4 * 4  # capacity, not length
    heads = torch.tensor([[0, 1, 1], [1, 0, 0]])
    pos = torch.tensor([[0, 44, 3], [7, 7, 20]])
    assert torch.equal(buf.gather(heads, pos), buf.view()[heads, pos])  # live positions, after the dropped front
    with pytest.raises(ValueError, match="expected \\[2, T, 4\\]"):
        buf.append(torch.randn(3, 1, 4))
    buf.free()
    assert len(buf) == 0 and buf.nbytes() == 0


def test_growth_leaves_headroom_from_the_first_append() -> None:
    """A prefilled buffer takes its next rows in place (no copy of the history) and holds <= 1/64 + 16 spare rows."""
    buf = TokenBuffer(3, 8, dtype=torch.float32, device="cpu")
    buf.append(torch.randn(3, 4096, 8))
    assert buf.nbytes() == 3 * (4096 + 64) * 8 * 4
    address = buf.rows_address()
    for _ in range(8):
        buf.append(torch.randn(3, 8, 8))  # chunks leaving a decode window
    assert buf.rows_address() == address and len(buf) == 4160
    buf.append(torch.randn(3, 1, 8))  # past the headroom: one copy, new headroom of 1/64
    assert buf.rows_address() != address and buf.nbytes() == 3 * (4161 + 4161 // 64) * 8 * 4
    small = TokenBuffer(1, 2, dtype=torch.float32, device="cpu")
    small.append(torch.randn(1, 3, 2))
    assert small.nbytes() == (3 + 16) * 2 * 4


def test_landmark_buffer_keeps_blocks_of_16_with_dims_paired() -> None:
    """Appends of any size (one landmark per decode chunk, thousands at prefill) land in the blocked int8 layout."""
    buf = LandmarkBuffer(3, 8, device="cpu")
    marks = torch.randn(3, 70, 8)
    for start, stop in ((0, 1), (1, 40), (40, 41), (41, 70)):
        buf.append(marks[:, start:stop])
    want = Int8Landmarks.of(marks)
    got = buf.view()
    assert len(buf) == 70 and got.values.dtype == torch.int8
    assert torch.equal(got.values, want.values) and torch.equal(got.scale, want.scale)
    raw = buf._data  # [H, blocks, D/2, 16, 2]: landmark 37's dims 4, 5 sit at block 2, pair 2, lane 5
    assert raw.shape[2:] == (4, LANDMARK_BLOCK, 2)
    assert torch.equal(raw[1, 2, 2, 5], want.values[1, 37, 4:6]) and buf._scale[1, 2, 5] == want.scale[1, 37]
    blocks = raw.shape[1]
    assert buf.nbytes() == blocks * 3 * LANDMARK_BLOCK * (8 + 4) and blocks * LANDMARK_BLOCK >= 70 + 16
    assert buf.rows_address() == (raw.data_ptr(), raw.stride(0))
    assert buf.scale_address() == (buf._scale.data_ptr(), buf._scale.stride(0))
    with pytest.raises(ValueError, match="expected \\[3, T, 8\\]"):
        buf.append(torch.randn(3, 1, 6))
    with pytest.raises(ValueError, match="even"):
        LandmarkBuffer(1, 7, device="cpu")
    buf.free()
    assert len(buf) == 0 and buf.nbytes() == 0 and buf.view().shape == (3, 0, 8)
