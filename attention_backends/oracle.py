"""Oracle sparsity: the fewest pairs any pattern of a given granularity must keep to reach a recall.

A sparse pattern that keeps whole ``B x B`` tiles of the causal attention matrix (block-sparse:
``B = 64``; single pairs: ``B = 1``, the granularity that bounds vertical-slash and every other
pattern) cannot reach a recall target with fewer pairs than an *oracle* that sees the exact
softmax and keeps the tiles with the most mass per pair first. That minimum is a fractional
knapsack: sort the tiles by mass per pair, take them until the kept mass reaches the target.
Its density bounds the speed-up of every estimator from above: at best ``1 / density`` for an
executor as fast per pair as the dense one.

:func:`tile_mass_histogram` computes the exact causal softmax in row chunks (memory
O(chunk * N)) over a sample of query tiles and bins every tile by ``log2`` of its mass per pair,
accumulating mass and pair counts per head and bin; :class:`MassHistogram` reads the minimum
density off that histogram, per head or for the mean over heads (heads pooled, so budget
moves to the heads that need it, as a per-head profile does).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .inputs import check_qk, expand_kv
from .metrics import causal_row_probs, sample_rows

LOG2_MIN = -64.0
"""Lower edge of the ``log2(mass per pair)`` bins; tiles below it share the lowest bin."""

BINS_PER_OCTAVE = 64
"""Bin width 1/64 octave: pairs within one bin differ in mass per pair by < 1.1 %."""


@dataclass(frozen=True)
class MassHistogram:
    """Kept-mass and pair counts per head and ``log2(mass per pair)`` bin, over ``rows`` query rows.

    ``mass [H, bins]`` (float64, summed over rows, so the total per head is ``rows``),
    ``pairs [H, bins]`` (float64 causal pair counts, the same total per head), bins ordered
    from the lowest mass per pair to the highest.
    """

    mass: torch.Tensor
    pairs: torch.Tensor
    rows: int
    granularity: int

    def _density(self, mass: torch.Tensor, pairs: torch.Tensor, target: float) -> torch.Tensor:
        """Minimum density for ``target`` mass fraction, per row of ``mass``/``pairs`` ``[G, bins]``."""
        m, p = mass.flip(-1), pairs.flip(-1)  # highest mass per pair first
        need = target * m.sum(-1, keepdim=True)
        cum_m, cum_p = m.cumsum(-1), p.cumsum(-1)
        crossing = (cum_m < need).sum(-1, keepdim=True).clamp(max=m.shape[-1] - 1)
        before_m = (cum_m - m).gather(-1, crossing)
        before_p = (cum_p - p).gather(-1, crossing)
        bin_m, bin_p = m.gather(-1, crossing), p.gather(-1, crossing)
        # within the crossing bin every pair carries (nearly) the same mass: take a fraction of it
        frac = ((need - before_m) / bin_m.clamp(min=1e-300)).clamp(0.0, 1.0)
        return ((before_p + frac * bin_p) / p.sum(-1, keepdim=True)).squeeze(-1)

    def density_per_head(self, target: float) -> torch.Tensor:
        """``float64 [H]``: the fewest pairs (fraction of causal pairs) with which each head alone
        keeps ``target`` of its softmax mass, mean over the rows."""
        _check_target(target)
        return self._density(self.mass, self.pairs, target)

    def density_pooled(self, target: float) -> float:
        """The fewest pairs for a mean recall of ``target`` over all heads (budget shared)."""
        _check_target(target)
        return float(self._density(self.mass.sum(0, keepdim=True), self.pairs.sum(0, keepdim=True), target))

    def concat(self, other: MassHistogram) -> MassHistogram:
        """Heads of both (e.g. two layers), which must cover the same number of rows."""
        if other.rows != self.rows or other.granularity != self.granularity or other.mass.shape[1] != self.mass.shape[1]:
            raise ValueError("histograms differ in rows, granularity or bins; concatenate like with like")
        return MassHistogram(
            torch.cat([self.mass, other.mass]), torch.cat([self.pairs, other.pairs]), self.rows, self.granularity
        )


def _check_target(target: float) -> None:
    if not 0.0 < target <= 1.0:
        raise ValueError(f"recall target must be in (0, 1]; got {target}")


def _tile_pairs(q_tiles: torch.Tensor, granularity: int, n: int, num_k_tiles: int) -> torch.Tensor:
    """Causal pairs per (query tile, key tile): ``float64 [T, num_k_tiles]``."""
    rows = q_tiles.unsqueeze(1) * granularity + torch.arange(granularity, device=q_tiles.device)  # [T, B]
    rows = rows.clamp(max=n - 1).masked_fill(rows >= n, -1)  # padding rows of the last tile: no pairs
    cols = torch.arange(num_k_tiles * granularity, device=q_tiles.device)
    keep = (cols <= rows.unsqueeze(-1)) & (cols < n)  # [T, B, K*B]
    return keep.view(len(q_tiles), granularity, num_k_tiles, granularity).sum((1, 3)).double()


@torch.no_grad()
def tile_mass_histogram(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    granularity: int = 64,
    query_tiles: int | None = None,
    scale: float | None = None,
    chunk_elems: int = 1 << 24,
) -> MassHistogram:
    """Histogram of the exact causal attention of ``q [Hq, N, D]`` over ``k [Hkv, N, D]`` by tile.

    Tiles are ``granularity x granularity`` (1 = single pairs); ``query_tiles`` samples that
    many query tiles evenly (first and last included; ``None`` = all), every row of a sampled
    tile counted. Raises ``ValueError`` on bad shapes or a non-positive granularity.
    """
    shape = check_qk(q, k, scale=scale)
    if granularity < 1:
        raise ValueError(f"granularity must be positive; got {granularity}")
    n, hq, g = shape.seq_len, shape.num_q_heads, granularity
    num_tiles = -(-n // g)
    tiles = torch.arange(num_tiles, device=q.device) if query_tiles is None else sample_rows(num_tiles, query_tiles, q.device)
    bins = int(-LOG2_MIN * BINS_PER_OCTAVE) + 1
    mass = torch.zeros(hq, bins, dtype=torch.float64, device=q.device)
    pairs = torch.zeros_like(mass)
    kf = expand_kv(k, shape.group_size).float()
    padded = num_tiles * g
    step = max(chunk_elems // (hq * g * padded), 1)  # query tiles per chunk
    rows_total = 0
    for start in range(0, len(tiles), step):
        chunk = tiles[start : start + step]
        rows = (chunk.unsqueeze(1) * g + torch.arange(g, device=q.device)).flatten()
        valid = rows < n
        rows_total += int(valid.sum())
        probs = causal_row_probs(q, kf, rows.clamp(max=n - 1), shape.scale) * valid.view(1, -1, 1)
        probs = torch.nn.functional.pad(probs, (0, padded - n))
        tile_mass = probs.view(hq, len(chunk), g, num_tiles, g).sum((2, 4)).double()  # [H, T, K]
        tile_pairs = _tile_pairs(chunk, g, n, num_tiles).expand_as(tile_mass)
        has = tile_pairs > 0
        per_pair = (tile_mass / tile_pairs.clamp(min=1)).clamp(min=2.0**LOG2_MIN)
        idx = ((per_pair.log2() - LOG2_MIN) * BINS_PER_OCTAVE).long().clamp(0, bins - 1)
        for h in range(hq):
            sel = has[h]
            mass[h].index_add_(0, idx[h][sel], tile_mass[h][sel])
            pairs[h].index_add_(0, idx[h][sel], tile_pairs[h][sel])
    return MassHistogram(mass=mass, pairs=pairs, rows=rows_total, granularity=g)
