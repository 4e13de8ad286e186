"""Retrieval heads dense, every other head streaming (DuoAttention's split, chosen from measured recall).

DuoAttention observes that only a few heads ("retrieval heads") need the whole context; the others
("streaming heads") do with attention sinks plus a recent window. This chooser ranks every head of
the model by its measured *streaming recall* (the attention mass that 4 sinks + a 1,024-token window
keep for the closing question's last rows, the worst over calibration prompts and lengths;
:func:`profiles.kv_stats.streaming_decode_recall`): the given fraction of heads that keep the least
stay dense (or, with ``retrieval_top_k``, run the block-sparse candidate keeping that many key blocks
per query block: a budget that grows with nothing but the block count, so the retrieval heads stop
costing quadratic time at 64K), every other head runs the A-shape candidate with the given local window. DuoAttention
learns its split with gates optimised on synthetic passkey data; this is the measured-recall
shortcut. The recall and density recorded per A-shape head are that candidate's scores.

Much sparser than the recall-target choice (:func:`profiles.scoring.choose_patterns`), so it is the
one that reaches large prefill speedups; what it costs in accuracy must be measured per model
(``sparse-serve eval``; README).
"""

from __future__ import annotations

import torch

from attention_backends.patterns import AShapeParams, BlockSparseParams, SparseParams

from .scoring import HeadChoice, LayerScores, dense_choice


def streaming_candidate(candidates: list[SparseParams], window: int) -> int:
    """Index of the A-shape candidate with local window ``window`` (``ValueError`` naming the windows scored)."""
    return _grid_index(candidates, AShapeParams, "n_local", window, "streaming window")


def block_sparse_candidate(candidates: list[SparseParams], top_k: int) -> int:
    """Index of the block-sparse candidate keeping ``top_k`` blocks (``ValueError`` naming those scored)."""
    return _grid_index(candidates, BlockSparseParams, "top_k", top_k, "block-sparse top_k")


def _grid_index(candidates: list[SparseParams], kind: type, field: str, value: int, what: str) -> int:
    scored = [getattr(c, field) for c in candidates if isinstance(c, kind)]
    for i, c in enumerate(candidates):
        if isinstance(c, kind) and getattr(c, field) == value:
            return i
    raise ValueError(f"{what} {value} was not scored; the calibration length gives {scored}")


def _scored(per_input: list[LayerScores], c: int) -> tuple[SparseParams, torch.Tensor, torch.Tensor]:
    """Candidate ``c``'s parameters, recall (minimum over inputs) and density (maximum) per head."""
    recall = torch.stack([s.recall[c] for s in per_input]).amin(0)
    density = torch.stack([s.density[c] for s in per_input]).amax(0)
    return per_input[0].candidates[c], recall, density


def choose_retrieval_heads(
    scores: list[list[LayerScores]],
    streaming_recall: list[torch.Tensor],
    *,
    fraction: float,
    window: int,
    dense_layers: int = 0,
    retrieval_top_k: int | None = None,
) -> list[list[HeadChoice]]:
    """Per layer, per head: dense for the ``fraction`` of the model's heads with the lowest streaming
    recall (rounded; at least one when ``fraction > 0``), or block-sparse with ``retrieval_top_k`` key
    blocks when given; A-shape with local window ``window`` for the others; every head of the first
    ``dense_layers`` layers dense.

    ``scores[l]``: the layer's candidate scores per calibration input (empty for dense layers);
    ``streaming_recall[l]``: ``float [Hq]``, its heads' streaming recall (minimum over inputs).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"retrieval-head fraction must be in [0, 1); got {fraction}")
    if len(scores) != len(streaming_recall):
        raise ValueError(f"{len(scores)} layers of scores but {len(streaming_recall)} of streaming recall")
    heads = [(float(r), layer, h) for layer, recalls in enumerate(streaming_recall) if layer >= dense_layers
             for h, r in enumerate(recalls.tolist())]
    count = min(max(round(fraction * sum(r.numel() for r in streaming_recall)), 1 if fraction > 0 else 0), len(heads))
    retrieval = {(layer, h) for _, layer, h in sorted(heads)[:count]}
    out: list[list[HeadChoice]] = []
    for layer, recalls in enumerate(streaming_recall):
        if layer < dense_layers:
            out.append([dense_choice()] * recalls.numel())
            continue
        if not scores[layer]:
            raise ValueError(f"layer {layer} has no candidate scores")
        candidates = scores[layer][0].candidates
        streaming = _scored(scores[layer], streaming_candidate(candidates, window))
        wide = None if retrieval_top_k is None else _scored(scores[layer], block_sparse_candidate(candidates, retrieval_top_k))
        row = []
        for h in range(recalls.numel()):
            if (layer, h) in retrieval and wide is None:
                row.append(dense_choice())
            else:
                params, recall, density = wide if (layer, h) in retrieval else streaming
                row.append(HeadChoice(params, float(recall[h]), float(density[h])))
        out.append(row)
    return out
