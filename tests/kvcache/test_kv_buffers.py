"""Growable token buffers: appends, sliding the front, byte accounting and row gathers."""

from __future__ import annotations

import pytest
import torch

from kvcache.buffers import TokenBuffer


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
