"""RULER's scoring: case-insensitive substring matching of the exact answers.

string_match_all credits the fraction of reference answers found in the
prediction (multi-answer tasks give partial credit); string_match_part gives
full credit when any reference is found (QA with alternative answers).
Scores are in [0, 1]; reports show them as percentages.
"""

from __future__ import annotations

from collections.abc import Sequence


def string_match_all(prediction: str, references: Sequence[str]) -> float:
    """Fraction of `references` that occur in `prediction` (case-insensitive)."""
    if not references:
        raise ValueError("no reference answers")
    text = prediction.lower()
    return sum(ref.lower() in text for ref in references) / len(references)


def string_match_part(prediction: str, references: Sequence[str]) -> float:
    """1.0 if any of `references` occurs in `prediction` (case-insensitive), else 0.0."""
    if not references:
        raise ValueError("no reference answers")
    text = prediction.lower()
    return float(any(ref.lower() in text for ref in references))


def score(prediction: str, references: Sequence[str], metric: str) -> float:
    """Score with the named metric ("all" or "part")."""
    if metric == "all":
        return string_match_all(prediction, references)
    if metric == "part":
        return string_match_part(prediction, references)
    raise ValueError(f"unknown metric {metric!r}; expected 'all' or 'part'")
