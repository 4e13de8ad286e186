"""The sparse index: which keys each query block of each head attends to.

One representation serves every pattern and every executor (masked reference, CPU gather,
Triton): per query head and per query block of ``block_q`` rows, a list of key blocks
(``block_k`` consecutive keys from a start position, not necessarily aligned) and a list of
single key columns, disjoint from the blocks. This is the "block + column" form that
MInference's vertical-slash kernel uses; block-sparse and A-shape use blocks only.

The kept pairs of head ``h`` are ``(i, j)`` with ``0 <= j <= i < N`` and ``j`` in one of
the blocks or columns listed for the query block ``i // block_q``. Estimators plan the index
once (e.g. once per batch); executors run it per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _pad_last(x: torch.Tensor, size: int, value: int) -> torch.Tensor:
    if x.shape[-1] >= size:
        return x
    pad = x.new_full((*x.shape[:-1], size - x.shape[-1]), value)
    return torch.cat([x, pad], dim=-1)


def pack_rows(values: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move the kept entries of each row to the front, in their original order.

    ``values, keep [..., M]`` -> ``(packed [..., M'], counts [...])`` where ``M'`` is the
    largest count (at least 1) and slots past a row's count hold 0.
    """
    order = torch.argsort((~keep).to(torch.int8), dim=-1, stable=True)
    packed = torch.gather(values, -1, order)
    counts = keep.sum(-1)
    width = max(int(counts.max().item()) if counts.numel() else 0, 1)
    packed = packed[..., :width]
    slots = torch.arange(width, device=values.device)
    packed = torch.where(slots < counts.unsqueeze(-1), packed, torch.zeros_like(packed))
    return packed.contiguous(), counts


@dataclass(frozen=True)
class SparseIndex:
    """Kept key blocks and key columns per query head and query block.

    Attributes:
        seq_len: ``N``.
        block_q: query rows per query block; there are ``ceil(N / block_q)`` query blocks.
        block_k: keys per key block.
        block_starts: ``int64 [H, nQB, maxB]`` first key position of each key block; may be
            negative (keys below 0 are ignored). Slots past ``block_counts`` are unused.
        block_counts: ``int64 [H, nQB]``.
        columns: ``int64 [H, nQB, maxC]`` single key positions in ``[0, N)``, outside every block.
        column_counts: ``int64 [H, nQB]``.
    """

    seq_len: int
    block_q: int
    block_k: int
    block_starts: torch.Tensor
    block_counts: torch.Tensor
    columns: torch.Tensor
    column_counts: torch.Tensor

    @property
    def num_heads(self) -> int:
        return int(self.block_starts.shape[0])

    @property
    def num_q_blocks(self) -> int:
        return int(self.block_starts.shape[1])

    @property
    def device(self) -> torch.device:
        return self.block_starts.device

    # ----------------------------------------------------------------- construction
    @staticmethod
    def from_block_mask(block_mask: torch.Tensor, seq_len: int, block_size: int) -> "SparseIndex":
        """Index of aligned blocks: ``block_mask [H, nQB, nKB]`` bool, key block ``j`` = keys ``[j*B, (j+1)*B)``."""
        h, nqb, nkb = block_mask.shape
        starts = torch.arange(nkb, device=block_mask.device, dtype=torch.int64) * block_size
        packed, counts = pack_rows(starts.expand(h, nqb, nkb), block_mask)
        empty = torch.zeros(h, nqb, 1, dtype=torch.int64, device=block_mask.device)
        return SparseIndex(
            seq_len=seq_len,
            block_q=block_size,
            block_k=block_size,
            block_starts=packed,
            block_counts=counts.to(torch.int64),
            columns=empty,
            column_counts=torch.zeros(h, nqb, dtype=torch.int64, device=block_mask.device),
        )

    @staticmethod
    def select_heads(first: "SparseIndex", second: "SparseIndex", use_second: torch.Tensor) -> "SparseIndex":
        """Per head, take ``second``'s entry where ``use_second [H]`` is true, else ``first``'s."""
        if (first.seq_len, first.block_q, first.block_k) != (second.seq_len, second.block_q, second.block_k):
            raise ValueError("cannot combine indices of different seq_len or block sizes")
        if first.block_starts.shape[:2] != second.block_starts.shape[:2]:
            raise ValueError("cannot combine indices with different head or query-block counts")
        pick = use_second.view(-1, 1, 1)
        width_b = max(first.block_starts.shape[-1], second.block_starts.shape[-1])
        width_c = max(first.columns.shape[-1], second.columns.shape[-1])
        return SparseIndex(
            seq_len=first.seq_len,
            block_q=first.block_q,
            block_k=first.block_k,
            block_starts=torch.where(
                pick, _pad_last(second.block_starts, width_b, 0), _pad_last(first.block_starts, width_b, 0)
            ),
            block_counts=torch.where(pick[..., 0], second.block_counts, first.block_counts),
            columns=torch.where(pick, _pad_last(second.columns, width_c, 0), _pad_last(first.columns, width_c, 0)),
            column_counts=torch.where(pick[..., 0], second.column_counts, first.column_counts),
        )

    def check_matches(self, num_heads: int, seq_len: int) -> None:
        """Raise ``ValueError`` unless this index was planned for ``num_heads`` query heads and ``seq_len``."""
        if self.num_heads != num_heads or self.seq_len != seq_len:
            raise ValueError(
                f"index planned for {self.num_heads} heads x {self.seq_len} tokens, "
                f"used with {num_heads} heads x {seq_len} tokens"
            )

    # ----------------------------------------------------------------- key slots
    def key_slots(self, head: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Key positions of one head's query blocks, blocks expanded then columns.

        Returns ``(positions, valid)``, both ``[nQB, L]`` with ``L = maxB * block_k + maxC``
        trimmed to this head's largest counts; ``valid`` is false for unused slots and for
        positions outside ``[0, N)``. Causality is not applied here.
        """
        nb = max(int(self.block_counts[head].max().item()), 0)
        nc = max(int(self.column_counts[head].max().item()), 0)
        offsets = torch.arange(self.block_k, device=self.device)
        starts = self.block_starts[head, :, :nb]
        block_pos = (starts.unsqueeze(-1) + offsets).reshape(self.num_q_blocks, nb * self.block_k)
        block_used = torch.arange(nb, device=self.device) < self.block_counts[head].unsqueeze(-1)
        block_used = block_used.repeat_interleave(self.block_k, dim=-1)
        col_pos = self.columns[head, :, :nc]
        col_used = torch.arange(nc, device=self.device) < self.column_counts[head].unsqueeze(-1)
        positions = torch.cat([block_pos, col_pos], dim=-1)
        valid = torch.cat([block_used, col_used], dim=-1) & (positions >= 0) & (positions < self.seq_len)
        return positions, valid

    # ----------------------------------------------------------------- masks and counts
    def row_mask(self, rows: torch.Tensor) -> torch.Tensor:
        """Kept causal pairs for some query rows: ``rows [R]`` -> ``bool [H, R, N]``."""
        n = self.seq_len
        rows = rows.to(self.device, torch.int64)
        out = torch.zeros(self.num_heads, rows.numel(), n + 1, dtype=torch.bool, device=self.device)
        qblocks = rows // self.block_q
        for h in range(self.num_heads):
            positions, valid = self.key_slots(h)
            pos = torch.where(valid, positions, torch.full_like(positions, n))[qblocks]
            out[h].scatter_(1, pos, True)
        causal = torch.arange(n, device=self.device) <= rows.unsqueeze(-1)
        return out[..., :n] & causal

    def to_mask(self) -> torch.Tensor:
        """Dense kept-pairs mask ``bool [H, N, N]`` (small ``N`` only: tests and the reference)."""
        return self.row_mask(torch.arange(self.seq_len, device=self.device))

    def pair_counts(self) -> torch.Tensor:
        """Number of kept causal ``(query, key)`` pairs per head: ``int64 [H]`` (no dense mask built)."""
        n, bq, bk = self.seq_len, self.block_q, self.block_k
        dev = self.device
        qb = torch.arange(self.num_q_blocks, device=dev)
        row_lo = (qb * bq).view(1, -1, 1)
        row_hi = torch.clamp((qb + 1) * bq, max=n).view(1, -1, 1)  # exclusive
        # blocks: keys [lo, hi] clipped to [0, N); row i keeps max(0, min(i, hi) - lo + 1) of them
        used = torch.arange(self.block_starts.shape[-1], device=dev) < self.block_counts.unsqueeze(-1)
        lo = self.block_starts.clamp(min=0)
        hi = torch.clamp(self.block_starts + bk - 1, max=n - 1)
        total = torch.zeros(self.num_heads, dtype=torch.int64, device=dev)
        for r in range(bq):
            row = row_lo + r
            in_seq = row < row_hi
            kept = (torch.minimum(hi, row.expand_as(hi)) - lo + 1).clamp(min=0)
            total += (kept * (used & in_seq)).sum(dim=(1, 2))
        # columns: column c is kept by the rows i >= c of its query block
        col_used = torch.arange(self.columns.shape[-1], device=dev) < self.column_counts.unsqueeze(-1)
        rows_after = (row_hi - torch.maximum(self.columns, row_lo)).clamp(min=0)
        total += (rows_after * col_used).sum(dim=(1, 2))
        return total

    # ----------------------------------------------------------------- checks
    def validate(self) -> None:
        """Check shapes, bounds, disjointness and that every row keeps its diagonal key.

        Raises ``ValueError``. Costs ``O(H * nQB * L)``; meant for tests and debugging.
        """
        h, nqb = self.block_counts.shape
        expected = -(-self.seq_len // self.block_q)
        if nqb != expected:
            raise ValueError(f"index has {nqb} query blocks, expected ceil({self.seq_len}/{self.block_q})")
        if self.block_starts.shape[:2] != (h, nqb) or self.columns.shape[:2] != (h, nqb):
            raise ValueError("block_starts/columns do not match the counts' [H, nQB] shape")
        if (self.block_counts > self.block_starts.shape[-1]).any() or (self.column_counts > self.columns.shape[-1]).any():
            raise ValueError("a count exceeds its padded width")
        n = self.seq_len
        for head in range(h):
            positions, valid = self.key_slots(head)
            clipped = torch.where(valid, positions, torch.full_like(positions, n))
            hits = torch.zeros(nqb, n + 1, dtype=torch.int64, device=self.device)
            hits.scatter_add_(1, clipped, torch.ones_like(clipped))
            if (hits[:, :n] > 1).any():
                raise ValueError(f"head {head}: a key is listed twice for one query block")
            rows = torch.arange(n, device=self.device)
            if not (hits[rows // self.block_q, rows] > 0).all():
                raise ValueError(f"head {head}: some query rows do not keep their own (diagonal) key")
            ncols = int(self.column_counts[head].max().item())
            cols = self.columns[head, :, :ncols]
            col_used = torch.arange(ncols, device=self.device) < self.column_counts[head].unsqueeze(-1)
            if ((cols < 0) | (cols >= n))[col_used].any():
                raise ValueError(f"head {head}: a column lies outside [0, {n})")
