"""Per-head scoring of candidate sparse patterns on one layer's captured q/k.

For each candidate pattern (A-shape, vertical-slash over a (v, s) grid, block-sparse over
top-k, FlexPrefill over gamma; MInference / FlexPrefill ideas), the index is planned for all
heads at once and scored per head by the recall of exact attention mass on query rows from
the later half of the sequence and on the closing question's rows (the exact softmax of those R
rows is computed once per layer, ``[Hq, R, N]``, and shared by all candidates, so no N x N matrix
is held) and by density. The cheapest candidate (density x measured per-pair cost) that meets the
target recall on every calibration input wins; dense when none does or when dense is cheaper.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from attention_backends import estimate_index
from attention_backends.patterns import AShapeParams, BlockSparseParams, DenseParams, FlexPrefillParams
from attention_backends.patterns import PatternParams, SparseParams, VerticalSlashParams
from attention_backends.inputs import check_qk, expand_kv

BLOCK_SIZE = 64

def candidate_grid(min_len: int, block_size: int = BLOCK_SIZE) -> list[SparseParams]:
    """Candidates with budgets as fractions (1/32 .. 1/4) of the shortest calibration length ``min_len``."""
    if min_len < 4 * block_size:
        raise ValueError(f"calibration length {min_len} is too short: need at least {4 * block_size} tokens")
    fractions = (32, 16, 8, 4)
    budgets = sorted({max(block_size, (min_len // f) // block_size * block_size) for f in fractions})
    sink = min(128, block_size)
    last_q = min(64, block_size)
    out: list[SparseParams] = []
    out += [AShapeParams(block_size=block_size, n_init=sink, n_local=b) for b in budgets]
    out += [
        VerticalSlashParams(block_size=block_size, last_q=last_q, n_vertical=b, n_slash=b, n_sink=min(30, b), n_recent=min(64, b))
        for b in budgets
    ]
    out += [BlockSparseParams(block_size=block_size, top_k=max(2, b // block_size)) for b in budgets]
    out += [
        FlexPrefillParams(block_size=block_size, gamma=g, min_budget=budgets[0], n_sink=min(30, budgets[0]), n_recent=min(64, budgets[0]))
        for g in (0.9, 0.95, 0.99)
    ]
    return out


def late_rows(seq_len: int, count: int) -> torch.Tensor:
    """``min(count, N - N//2)`` evenly spaced query rows from the later half, last row included: ``int64 [R]``."""
    if count <= 0:
        raise ValueError(f"query row count must be positive; got {count}")
    start = seq_len // 2
    if count >= seq_len - start:
        return torch.arange(start, seq_len)
    return torch.linspace(start, seq_len - 1, count).round().long().unique()


@dataclass(frozen=True)
class LayerScores:
    """Scores of every candidate on one layer: ``recall, density float32 [C, Hq]`` (C = len(candidates))."""

    candidates: list[SparseParams]
    recall: torch.Tensor
    density: torch.Tensor


@torch.no_grad()
def exact_row_probs(q: torch.Tensor, k: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Exact causal attention of some query rows: ``q [Hq, N, D]``, ``k [Hkv, N, D]``, ``rows [R]`` -> ``float32 [Hq, R, N]``."""
    shape = check_qk(q, k)
    keys = expand_kv(k, shape.group_size).float()
    scores = torch.matmul(q[:, rows].float(), keys.transpose(1, 2)) * shape.scale
    ahead = torch.arange(shape.seq_len, device=q.device) > rows.unsqueeze(1)
    return torch.softmax(scores.masked_fill_(ahead, float("-inf")), dim=-1)


@torch.no_grad()
def score_layer(q: torch.Tensor, k: torch.Tensor, candidates: list[SparseParams], *row_sets: torch.Tensor) -> LayerScores:
    """Recall and per-head density of each candidate: ``q [Hq, N, D]`` (post-RoPE), ``k [Hkv, N, D]``.

    ``row_sets``: one or more ``int64 [R_i]`` sets of query rows (e.g. rows spread over the later
    half, and the rows of the closing question); a head's recall is the mean over the rows of each
    set, and the smallest of those means counts (a pattern must serve every set).
    """
    if not row_sets:
        raise ValueError("score_layer needs at least one set of query rows")
    n = q.shape[1]
    causal_pairs = n * (n + 1) / 2
    rows = torch.cat(row_sets)
    bounds = torch.tensor([0] + [r.numel() for r in row_sets]).cumsum(0).tolist()
    probs = exact_row_probs(q, k, rows)
    recalls, densities = [], []
    for params in candidates:
        index = estimate_index(q, k, params)
        per_row = (probs * index.row_mask(rows)).sum(dim=2)  # [Hq, R]
        recalls.append(torch.stack([per_row[:, a:b].mean(dim=1) for a, b in zip(bounds, bounds[1:])]).amin(0))
        densities.append(index.pair_counts().double() / causal_pairs)
    return LayerScores(candidates, torch.stack(recalls).float(), torch.stack(densities).float())


@dataclass(frozen=True)
class HeadChoice:
    """The pattern chosen for one head with its worst-case recall and density over lengths."""

    params: PatternParams
    recall: float
    density: float


def dense_choice(block_size: int = BLOCK_SIZE) -> HeadChoice:
    """The choice of a head kept dense: full causal attention, recall 1, density 1."""
    return HeadChoice(DenseParams(block_size=block_size), 1.0, 1.0)


def choose_patterns(
    per_length: list[LayerScores], target_recall: float, costs: Mapping[str, float] | None = None
) -> list[HeadChoice]:
    """Per head, the cheapest candidate whose recall meets ``target_recall`` on every scored input.

    Aggregation is conservative: a candidate's recall is its minimum and its density its maximum
    over the inputs (lengths x calibration prompts). Cost is density times the pattern's measured
    per-pair cost relative to dense (:mod:`profiles.pattern_cost`; 1.0 for every pattern when
    ``costs`` is None); ties go to the earlier candidate. Dense (recall 1, density 1) when no
    candidate qualifies or the cheapest one costs as much as dense (cost >= 1).
    """
    if not per_length:
        raise ValueError("no calibration lengths were scored")
    if not 0.0 < target_recall <= 1.0:
        raise ValueError(f"target recall must be in (0, 1]; got {target_recall}")
    candidates = per_length[0].candidates
    recall = torch.stack([s.recall for s in per_length]).amin(0)  # [C, Hq]
    dens = torch.stack([s.density for s in per_length]).amax(0)
    ok = recall >= target_recall
    speed = torch.tensor([1.0 if costs is None else costs[c.pattern.value] for c in candidates]).unsqueeze(1)
    cost = torch.where(ok, dens * speed, torch.full_like(dens, float("inf")))
    choices = []
    for h in range(recall.shape[1]):
        best = int(torch.argmin(cost[:, h]).item())
        if not bool(ok[best, h]) or float(cost[best, h]) >= 1.0:
            choices.append(dense_choice(candidates[0].block_size))
        else:
            choices.append(HeadChoice(candidates[best], float(recall[best, h]), float(dens[best, h])))
    return choices
