"""Offline per-head profiler: capture q/k per layer at each calibration length, score, choose, write a profile.

The model runs with transformers over seeded synthetic long documents with retrieval questions
(:mod:`attention_backends.capture`, YaRN RoPE scaling past the native length); every layer's
post-RoPE q/k and pre-RoPE keys are scored per head (:mod:`profiles.scoring`,
:mod:`profiles.kv_stats`) with chunked recall, so no layer's N x N attention is ever held.
Per-head choices aggregate conservatively over lengths (MInference's offline pattern search,
MoA / DuoAttention's per-head heterogeneity).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from attention_backends.capture import CaptureConfig, LayerCapture, run_capture

from .kv_stats import kv_policy, lowrank_error
from .schema import CalibrationSettings, HeadProfile, LayerProfile, Profile, fingerprint_from_dir
from .scoring import LayerScores, candidate_grid, choose_patterns, late_rows, score_layer


class ProfileRequest(BaseModel):
    """Inputs of one profiling run."""

    model_config = ConfigDict(frozen=True)

    model_dir: Path
    lengths: tuple[int, ...] = Field((8192,), min_length=1)
    target_recall: float = Field(0.95, gt=0.0, le=1.0)
    seed: int = 0
    query_rows: int = Field(256, gt=0)
    command: str = ""


def capture_all_layers(model_dir: Path, seq_len: int, num_layers: int, seed: int) -> list[LayerCapture]:
    """q/k/v of every layer at one length (one forward pass, float32 on CPU)."""
    return run_capture(CaptureConfig(model_dir=model_dir, seq_len=seq_len, layers=tuple(range(num_layers)), seed=seed))


def build_profile(request: ProfileRequest, *, progress: bool = True) -> Profile:
    """Profile every (layer, head) of the model in ``request.model_dir``."""
    fingerprint = fingerprint_from_dir(request.model_dir)
    lengths = sorted(set(request.lengths))
    candidates = candidate_grid(lengths[0])
    torch.manual_seed(request.seed)
    scores: list[list[LayerScores]] = [[] for _ in range(fingerprint.num_layers)]
    kv_err = torch.zeros(fingerprint.num_layers, fingerprint.num_kv_heads)
    bar = tqdm(
        total=len(lengths) * fingerprint.num_layers * fingerprint.num_q_heads,
        desc="profiling (layers x heads)",
        unit="head",
        disable=not progress,
    )
    for seq_len in lengths:
        captures = capture_all_layers(request.model_dir, seq_len, fingerprint.num_layers, request.seed)
        rows = late_rows(seq_len, request.query_rows)
        for cap in captures:
            scores[cap.layer].append(score_layer(cap.q, cap.k, candidates, rows))
            kv_err[cap.layer] = torch.maximum(kv_err[cap.layer], lowrank_error(cap.k_pre_rope))
            bar.update(fingerprint.num_q_heads)
        del captures
    bar.close()
    group = fingerprint.num_q_heads // fingerprint.num_kv_heads
    layers = []
    for layer, per_length in enumerate(scores):
        choices = choose_patterns(per_length, request.target_recall)
        heads = [
            HeadProfile(
                head=h,
                prefill=c.params,
                kv=kv_policy(c.params, float(kv_err[layer, h // group])),
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
    )
    return Profile(model=fingerprint, calibration=calibration, layers=layers)


def timed_build(request: ProfileRequest, *, progress: bool = True) -> tuple[Profile, float]:
    """:func:`build_profile` and its wall time in seconds."""
    start = time.perf_counter()
    profile = build_profile(request, progress=progress)
    return profile, time.perf_counter() - start
