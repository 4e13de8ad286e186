"""Offline per-head profiler: score every head on calibration prompts, choose, write a profile.

At each calibration length the model runs with transformers (float32, YaRN RoPE scaling past the
native length) over the retrieval prompts of :mod:`profiles.calibration`, rendered through the
model's chat template. Layers stream out of the forward one at a time
(:func:`attention_backends.capture.stream_layers`): each layer's post-RoPE q/k and pre-RoPE keys
are scored per head with chunked recall (prefill patterns, :mod:`profiles.scoring`) and decode
recall under the KV budgets (KV policies, :mod:`profiles.kv_choice`), then dropped, so neither
all layers' q/k/v nor any N x N attention is ever held; the first ``dense_layers`` layers keep
every head dense and skip the prefill scoring (an error there reaches every later layer). Candidate
costs are measured once on a real layer (:mod:`profiles.pattern_cost`). Per-head choices aggregate
conservatively over lengths and prompts (MInference's offline pattern search, MoA /
DuoAttention's per-head heterogeneity).
With ``retrieval_heads`` set, the recall target gives way to DuoAttention's split
(:mod:`profiles.retrieval_heads`): a fraction of heads dense (or block-sparse with ``retrieval_top_k``),
every other head streaming.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm import tqdm

from attention_backends.capture import LayerCapture, load_model, stream_layers

from .calibration import TASKS, calibration_inputs
from .kv_choice import KvLayerStats, choose_kv, decode_rows, score_kv_layer
from .pattern_cost import measure_pattern_costs
from .retrieval_heads import block_sparse_candidate, choose_retrieval_heads, streaming_candidate
from .schema import CalibrationSettings, HeadProfile, LayerProfile, Profile, fingerprint_from_dir
from .scoring import LayerScores, candidate_grid, choose_patterns, dense_choice, late_rows, score_layer


class ProfileRequest(BaseModel):
    """Inputs of one profiling run."""

    model_config = ConfigDict(frozen=True)

    model_dir: Path
    lengths: tuple[int, ...] = Field((8192,), min_length=1)
    target_recall: float = Field(0.95, gt=0.0, le=1.0)
    seed: int = 0
    query_rows: int = Field(256, gt=0)
    command: str = ""
    dense_layers: int = Field(
        3,
        ge=0,
        description=(
            "The first layers keep every head dense whatever it scores: an error there reaches every later layer "
            "(measured: layer 2's two block-sparse heads alone lost a 16K needle; Quest leaves two layers dense)."
        ),
    )
    pattern_cost: dict[str, float] | None = Field(
        None, description="Per-pattern costs to use instead of measuring them (makes a rerun reproducible)."
    )
    retrieval_heads: float | None = Field(
        None, ge=0.0, lt=1.0,
        description="Instead of the recall target: keep this fraction of the model's heads dense (the lowest "
        "streaming recall) and run every other head A-shape (:mod:`profiles.retrieval_heads`).",
    )
    streaming_window: int = Field(512, gt=0, description="Local window of the A-shape heads with retrieval_heads.")
    retrieval_top_k: int | None = Field(
        None, gt=0, description="With retrieval_heads: run the retrieval heads block-sparse with this many key "
        "blocks per query block (a scored candidate) instead of dense.",
    )

    @model_validator(mode="after")
    def _top_k_needs_retrieval_heads(self) -> ProfileRequest:
        if self.retrieval_top_k is not None and self.retrieval_heads is None:
            raise ValueError("retrieval_top_k is set but retrieval_heads is not: it picks the retrieval heads' pattern")
        return self


def build_profile(request: ProfileRequest, *, progress: bool = True) -> Profile:
    """Profile every (layer, head) of the model in ``request.model_dir``."""
    fingerprint = fingerprint_from_dir(request.model_dir)
    if request.dense_layers > fingerprint.num_layers:
        raise ValueError(f"dense_layers {request.dense_layers} exceeds the model's {fingerprint.num_layers} layers")
    lengths = sorted(set(request.lengths))
    candidates = candidate_grid(lengths[0])
    if request.retrieval_heads is not None:
        streaming_candidate(candidates, request.streaming_window)  # a window the grid lacks fails now, not after scoring
        if request.retrieval_top_k is not None:
            block_sparse_candidate(candidates, request.retrieval_top_k)
    cost_layer = fingerprint.num_layers // 2
    torch.manual_seed(request.seed)
    scores: list[list[LayerScores]] = [[] for _ in range(fingerprint.num_layers)]
    kv_stats: list[KvLayerStats | None] = [None] * fingerprint.num_layers
    costs: dict[str, float] = dict(request.pattern_cost or {})
    bar = tqdm(
        total=len(lengths) * len(TASKS) * fingerprint.num_layers * fingerprint.num_q_heads,
        desc="profiling (prompts x layers x heads)",
        unit="head",
        disable=not progress,
    )
    for seq_len in lengths:
        model, tokenizer = load_model(request.model_dir, seq_len)
        for item in calibration_inputs(tokenizer, seq_len, request.seed):
            spread = late_rows(item.ids.numel(), request.query_rows)
            decode = decode_rows(item.question_rows)

            def on_layer(cap: LayerCapture) -> None:
                if cap.layer >= request.dense_layers:  # the first layers stay dense: nothing to choose
                    scores[cap.layer].append(score_layer(cap.q, cap.k, candidates, spread, item.question_rows))
                kv_stats[cap.layer] = score_kv_layer(cap.q, cap.k, cap.k_pre_rope, decode).merge(kv_stats[cap.layer])
                if not costs and cap.layer == cost_layer:
                    costs.update(measure_pattern_costs(cap.q, cap.k, cap.v, candidates))
                bar.update(fingerprint.num_q_heads)

            stream_layers(model, item.ids, range(fingerprint.num_layers), on_layer)
        del model
    bar.close()
    if request.retrieval_heads is None:
        chosen = [[dense_choice(candidates[0].block_size)] * fingerprint.num_q_heads if layer < request.dense_layers
                  else choose_patterns(per_input, request.target_recall, costs) for layer, per_input in enumerate(scores)]
    else:
        chosen = choose_retrieval_heads(scores, [s.streaming for s in kv_stats if s is not None],
                                        fraction=request.retrieval_heads, window=request.streaming_window,
                                        dense_layers=request.dense_layers, retrieval_top_k=request.retrieval_top_k)
    layers = []
    for layer, choices in enumerate(chosen):
        kv = choose_kv([c.params for c in choices], kv_stats[layer], request.target_recall)
        heads = [
            HeadProfile(
                head=h,
                prefill=c.params,
                kv=kv[h],
                recall=round(min(c.recall, 1.0), 6),
                density=round(min(c.density, 1.0), 6),
            )
            for h, c in enumerate(choices)
        ]
        layers.append(LayerProfile(layer=layer, heads=heads))
    calibration = CalibrationSettings(
        lengths=lengths,
        target_recall=request.target_recall,
        seed=request.seed,
        query_rows=request.query_rows,
        command=request.command,
        tasks=list(TASKS),
        pattern_cost=costs,
        dense_layers=request.dense_layers,
        retrieval_heads=request.retrieval_heads,
        retrieval_top_k=request.retrieval_top_k,
    )
    return Profile(model=fingerprint, calibration=calibration, layers=layers)


def timed_build(request: ProfileRequest, *, progress: bool = True) -> tuple[Profile, float]:
    """:func:`build_profile` and its wall time in seconds."""
    start = time.perf_counter()
    profile = build_profile(request, progress=progress)
    return profile, time.perf_counter() - start
