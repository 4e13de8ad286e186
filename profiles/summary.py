"""Human-readable summary of a profile: per-layer pattern counts, mean density and recall, KV policies."""

from __future__ import annotations

from collections import Counter

from .schema import Profile

_SHORT = {"dense": "D", "a_shape": "A", "vertical_slash": "VS", "block_sparse": "BS", "flexprefill": "FP"}


def pattern_counts(profile: Profile) -> Counter[str]:
    """How many heads use each prefill pattern, over the whole model."""
    return Counter(head.prefill.pattern.value for layer in profile.layers for head in layer.heads)


def format_summary(profile: Profile) -> str:
    """A per-layer table plus a histogram of patterns and KV policies."""
    fp = profile.model
    lines = [
        f"model: {fp.architecture}, {fp.num_layers} layers, {fp.num_q_heads} q / {fp.num_kv_heads} kv heads, head_dim {fp.head_dim}",
        f"calibration: lengths {profile.calibration.lengths}, target recall {profile.calibration.target_recall}, "
        f"seed {profile.calibration.seed}, first {profile.calibration.dense_layers} layers dense"
        + ("" if profile.calibration.retrieval_heads is None else
           f", retrieval heads {profile.calibration.retrieval_heads:g} "
           + ("dense" if profile.calibration.retrieval_top_k is None else
              f"block-sparse top_k {profile.calibration.retrieval_top_k}") + " (the others A-shape)"),
        "layer  patterns (head order)                   mean density  min recall",
    ]
    for layer in profile.layers:
        names = " ".join(_SHORT[h.prefill.pattern.value] for h in layer.heads)
        mean_density = sum(h.density for h in layer.heads) / len(layer.heads)
        min_recall = min(h.recall for h in layer.heads)
        lines.append(f"{layer.layer:5d}  {names:<40s} {mean_density:12.3f}  {min_recall:10.3f}")
    total = sum(pattern_counts(profile).values())
    lines.append("patterns:")
    for name, count in sorted(pattern_counts(profile).items(), key=lambda kv: -kv[1]):
        lines.append(f"  {name:<15s} {count:4d}  {'#' * round(40 * count / total)}")
    kv = Counter(h.kv.policy for layer in profile.layers for h in layer.heads)
    lines.append("kv policies: " + ", ".join(f"{k} {v}" for k, v in sorted(kv.items())))
    all_density = [h.density for layer in profile.layers for h in layer.heads]
    lines.append(f"mean prefill density: {sum(all_density) / len(all_density):.3f}")
    return "\n".join(lines)
