"""Retrieval heads dense, every other head streaming (DuoAttention's split, chosen from measured recall).

DuoAttention observes that only a few heads ("retrieval heads") need the whole context; the others
("streaming heads") do with attention sinks plus a recent window. This chooser ranks every head of
the model by its measured *streaming recall* (the attention mass that 4 sinks + a 1,024-token window
keep for the closing question's last rows, the worst over calibration prompts and lengths;
:func:`profiles.kv_stats.streaming_decode_recall`): the given fraction of heads that keep the least
stay dense, every other head runs the A-shape candidate with the given local window. DuoAttention
learns its split with gates optimised on synthetic passkey data; this is the measured-recall
shortcut. The recall and density recorded per A-shape head are that candidate's scores.

Much sparser than the recall-target choice (:func:`profiles.scoring.choose_patterns`), so it is the
one that reaches large prefill speedups; what it costs in accuracy must be measured per model
(``sparse-serve eval``; README).
"""

from __future__ import annotations

import torch

from attention_backends.patterns import AShapeParams, SparseParams

from .scoring import HeadChoice, LayerScores, dense_choice


def streaming_candidate(candidates: list[SparseParams], window: int) -> int:
    """Index of the A-shape candidate with local window ``window`` (``ValueError`` naming the windows scored)."""
    windows = [c.n_local for c in candidates if isinstance(c, AShapeParams)]
    for i, c in enumerate(candidates):
        if isinstance(c, AShapeParams) and c.n_local == window:
            return i
    raise ValueError(f"streaming window {window} was not scored; the calibration length gives A-shape windows {windows}")


def choose_retrieval_heads(
    scores: list[list[LayerScores]],
    streaming_recall: list[torch.Tensor],
    *,
    fraction: float,
    window: int,
    dense_layers: int = 0,
) -> list[list[HeadChoice]]:
    """Per layer, per head: dense for the ``fraction`` of the model's heads with the lowest streaming
    recall (rounded; at least one when ``fraction > 0``), A-shape with local window ``window`` for the
    others; every head of the first ``dense_layers`` layers dense as well.

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
        c = streaming_candidate(scores[layer][0].candidates, window)
        recall = torch.stack([s.recall[c] for s in scores[layer]]).amin(0)
        density = torch.stack([s.density[c] for s in scores[layer]]).amax(0)
        params = scores[layer][0].candidates[c]
        out.append([dense_choice() if (layer, h) in retrieval else HeadChoice(params, float(recall[h]), float(density[h]))
                    for h in range(recalls.numel())])
    return out
