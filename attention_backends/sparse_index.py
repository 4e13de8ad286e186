"""The sparse index: which keys each query block of each head attends to.

One representation serves every pattern and every executor (masked reference, CPU flex /
gather, Triton): per query head and per query block of ``block_size`` rows, a list of aligned
key blocks (key block ``j`` = keys ``[j * B, (j + 1) * B)``) and a list of single key columns
outside those blocks. This is the "block + column" form of MInference's vertical-slash kernel
(with aligned blocks, so that block-sparse engines such as FlexAttention can run the block
part); block-sparse and A-shape use blocks only.

The kept pairs of head ``h`` are ``(i, j)`` with ``0 <= j <= i < N`` and ``j`` in one of
the blocks or columns listed for the query block ``i // block_size``. Estimators plan the index
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
        block_size: ``B``, rows per query block and keys per key block; there are
            ``nQB = ceil(N / B)`` query blocks and as many key blocks.
        block_ids: ``int64 [H, nQB, maxB]`` kept key block numbers (distinct, at most the query
            block's own number). Slots past ``block_counts`` are unused.
        block_counts: ``int64 [H, nQB]``.
        columns: ``int64 [H, nQB, maxC]`` single key positions in ``[0, N)``, outside every
            kept block of the same query block.
        column_counts: ``int64 [H, nQB]``.
    """

    seq_len: int
    block_size: int
    block_ids: torch.Tensor
    block_counts: torch.Tensor
    columns: torch.Tensor
    column_counts: torch.Tensor

    @property
    def num_heads(self) -> int:
        return int(self.block_ids.shape[0])

    @property
    def num_q_blocks(self) -> int:
        return int(self.block_ids.shape[1])

    @property
    def has_columns(self) -> bool:
        """Some query block keeps single key columns (vertical-slash, FlexPrefill's fallback)."""
        return bool(self.column_counts.numel()) and int(self.column_counts.max().item()) > 0

    @property
    def device(self) -> torch.device:
        return self.block_ids.device

    # ----------------------------------------------------------------- construction
    @staticmethod
    def from_block_mask(
        block_mask: torch.Tensor,
        seq_len: int,
        block_size: int,
        columns: torch.Tensor | None = None,
        column_counts: torch.Tensor | None = None,
    ) -> "SparseIndex":
        """Index from ``block_mask bool [H, nQB, nKB]`` (causal blocks only) plus optional columns.

        ``columns [H, nQB, maxC]`` / ``column_counts [H, nQB]`` must avoid the kept blocks.
        """
        h, nqb, nkb = block_mask.shape
        ids = torch.arange(nkb, device=block_mask.device, dtype=torch.int64)
        packed, counts = pack_rows(ids.expand(h, nqb, nkb), block_mask)
        if columns is None:
            columns = torch.zeros(h, nqb, 1, dtype=torch.int64, device=block_mask.device)
            column_counts = torch.zeros(h, nqb, dtype=torch.int64, device=block_mask.device)
        elif column_counts is None:
            raise ValueError("columns need column_counts")
        return SparseIndex(
            seq_len=seq_len,
            block_size=block_size,
            block_ids=packed,
            block_counts=counts.to(torch.int64),
            columns=columns,
            column_counts=column_counts.to(torch.int64),
        )

    @staticmethod
    def from_block_lists(ids: torch.Tensor, valid: torch.Tensor, seq_len: int, block_size: int) -> "SparseIndex":
        """Index from per-query-block lists of distinct key blocks ``ids [H, nQB, K]`` (e.g. top-k
        indices), where ``valid bool [H, nQB, K]`` marks the entries to keep; no columns.

        Costs ``O(H * nQB * K log K)`` (sorting the lists), not ``O(H * nQB^2)`` like a block mask.
        """
        h, nqb, _ = ids.shape
        big = torch.iinfo(torch.int64).max
        ordered, _ = torch.sort(torch.where(valid, ids.to(torch.int64), big), dim=-1)
        counts = valid.sum(-1)
        width = max(int(counts.max().item()) if counts.numel() else 0, 1)
        ordered = ordered[..., :width]
        return SparseIndex(
            seq_len=seq_len,
            block_size=block_size,
            block_ids=torch.where(ordered == big, 0, ordered).contiguous(),
            block_counts=counts.to(torch.int64),
            columns=torch.zeros(h, nqb, 1, dtype=torch.int64, device=ids.device),
            column_counts=torch.zeros(h, nqb, dtype=torch.int64, device=ids.device),
        )

    @staticmethod
    def select_heads(first: "SparseIndex", second: "SparseIndex", use_second: torch.Tensor) -> "SparseIndex":
        """Per head, take ``second``'s entry where ``use_second [H]`` is true, else ``first``'s."""
        if (first.seq_len, first.block_size) != (second.seq_len, second.block_size):
            raise ValueError("cannot combine indices of different seq_len or block size")
        if first.block_ids.shape[:2] != second.block_ids.shape[:2]:
            raise ValueError("cannot combine indices with different head or query-block counts")
        pick = use_second.view(-1, 1, 1)
        width_b = max(first.block_ids.shape[-1], second.block_ids.shape[-1])
        width_c = max(first.columns.shape[-1], second.columns.shape[-1])
        return SparseIndex(
            seq_len=first.seq_len,
            block_size=first.block_size,
            block_ids=torch.where(pick, _pad_last(second.block_ids, width_b, 0), _pad_last(first.block_ids, width_b, 0)),
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

    # ----------------------------------------------------------------- views
    def block_mask(self) -> torch.Tensor:
        """Kept key blocks as ``bool [H, nQB, nKB]`` (columns not included)."""
        h, nqb = self.block_counts.shape
        used = torch.arange(self.block_ids.shape[-1], device=self.device) < self.block_counts.unsqueeze(-1)
        mask = torch.zeros(h, nqb, nqb + 1, dtype=torch.bool, device=self.device)
        mask.scatter_(2, torch.where(used, self.block_ids, torch.full_like(self.block_ids, nqb)), True)
        return mask[..., :nqb]

    def key_slots(self, head: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Key positions of one head's query blocks, blocks expanded then columns.

        Returns ``(positions, valid)``, both ``[nQB, L]`` with ``L = maxB * B + maxC`` trimmed
        to this head's largest counts; ``valid`` is false for unused slots and for positions
        past ``N``. Causality is not applied here.
        """
        b = self.block_size
        nb = int(self.block_counts[head].max().item())
        nc = int(self.column_counts[head].max().item())
        offsets = torch.arange(b, device=self.device)
        block_pos = (self.block_ids[head, :, :nb].unsqueeze(-1) * b + offsets).reshape(self.num_q_blocks, nb * b)
        block_used = torch.arange(nb, device=self.device) < self.block_counts[head].unsqueeze(-1)
        col_used = torch.arange(nc, device=self.device) < self.column_counts[head].unsqueeze(-1)
        positions = torch.cat([block_pos, self.columns[head, :, :nc]], dim=-1)
        valid = torch.cat([block_used.repeat_interleave(b, dim=-1), col_used], dim=-1) & (positions < self.seq_len)
        return positions, valid

    def row_mask(self, rows: torch.Tensor) -> torch.Tensor:
        """Kept causal pairs for some query rows: ``rows [R]`` -> ``bool [H, R, N]``."""
        n = self.seq_len
        rows = rows.to(self.device, torch.int64)
        out = torch.zeros(self.num_heads, rows.numel(), n + 1, dtype=torch.bool, device=self.device)
        qblocks = rows // self.block_size
        for h in range(self.num_heads):
            positions, valid = self.key_slots(h)
            pos = torch.where(valid, positions, torch.full_like(positions, n))[qblocks]
            out[h].scatter_(1, pos, True)
        causal = torch.arange(n, device=self.device) <= rows.unsqueeze(-1)
        return out[..., :n] & causal

    def to_mask(self) -> torch.Tensor:
        """Dense kept-pairs mask ``bool [H, N, N]`` (small ``N`` only: tests and the reference)."""
        return self.row_mask(torch.arange(self.seq_len, device=self.device))

    def pair_counts(self, from_q_block: int = 0) -> torch.Tensor:
        """Number of kept causal ``(query, key)`` pairs per head: ``int64 [H]`` (no dense mask built).

        ``from_q_block`` counts only the query blocks from that one on (a chunked-prefill segment).
        """
        n, b = self.seq_len, self.block_size
        qb = torch.arange(self.num_q_blocks, device=self.device).view(1, -1, 1)
        in_range = qb >= from_q_block
        rows_in_block = torch.clamp(n - qb * b, max=b)
        used = torch.arange(self.block_ids.shape[-1], device=self.device) < self.block_counts.unsqueeze(-1)
        # an off-diagonal block is seen whole by every row; the diagonal block is a triangle
        keys_in_block = torch.clamp(n - self.block_ids * b, max=b)
        off_diag = rows_in_block * keys_in_block
        diagonal = rows_in_block * (rows_in_block + 1) // 2
        per_block = torch.where(self.block_ids == qb, diagonal, off_diag)
        total = (per_block * (used & in_range)).sum(dim=(1, 2))
        # column c is seen by the rows i >= c of its query block
        col_used = torch.arange(self.columns.shape[-1], device=self.device) < self.column_counts.unsqueeze(-1)
        rows_after = (qb * b + rows_in_block - torch.maximum(self.columns, qb * b)).clamp(min=0)
        return total + (rows_after * (col_used & in_range)).sum(dim=(1, 2))

    def density(self) -> float:
        """Fraction of all causal pairs (over heads) that the index keeps."""
        n = self.seq_len
        return float(self.pair_counts().sum().item()) / (self.num_heads * n * (n + 1) / 2)

    # ----------------------------------------------------------------- checks
    def validate(self) -> None:
        """Check shapes, bounds, causality, disjointness and that every row keeps its own key.

        Raises ``ValueError``. Costs ``O(H * nQB * (N + L))``; meant for tests and debugging.
        """
        h, nqb = self.block_counts.shape
        n, b = self.seq_len, self.block_size
        if nqb != -(-n // b):
            raise ValueError(f"index has {nqb} query blocks, expected ceil({n}/{b})")
        if self.block_ids.shape[:2] != (h, nqb) or self.columns.shape[:2] != (h, nqb):
            raise ValueError("block_ids/columns do not match the counts' [H, nQB] shape")
        if (self.block_counts > self.block_ids.shape[-1]).any() or (self.column_counts > self.columns.shape[-1]).any():
            raise ValueError("a count exceeds its padded width")
        qb = torch.arange(nqb, device=self.device).view(1, -1, 1)
        used = torch.arange(self.block_ids.shape[-1], device=self.device) < self.block_counts.unsqueeze(-1)
        if ((self.block_ids < 0) | (self.block_ids > qb))[used].any():
            raise ValueError("a key block lies after its query block (non-causal) or below 0")
        col_used = torch.arange(self.columns.shape[-1], device=self.device) < self.column_counts.unsqueeze(-1)
        if ((self.columns < 0) | (self.columns >= torch.clamp((qb + 1) * b, max=n)))[col_used].any():
            raise ValueError("a column lies outside [0, N) or after its query block (non-causal)")
        rows = torch.arange(n, device=self.device)
        for head in range(h):
            positions, valid = self.key_slots(head)
            clipped = torch.where(valid, positions, torch.full_like(positions, n))
            hits = torch.zeros(nqb, n + 1, dtype=torch.int64, device=self.device)
            hits.scatter_add_(1, clipped, torch.ones_like(clipped))
            if (hits[:, :n] > 1).any():
                raise ValueError(f"head {head}: a key is listed twice for one query block")
            if not (hits[rows // b, rows] > 0).all():
                raise ValueError(f"head {head}: some query rows do not keep their own (diagonal) key")
