"""RULER string matching on hand-written predictions."""

from __future__ import annotations

import pytest

from accuracy.scoring import score, string_match_all, string_match_part


def test_match_all_gives_partial_credit() -> None:
    refs = ["4174173", "5621642", "6299006", "9677610"]
    assert string_match_all("The numbers are 4174173, 5621642, 6299006 and 9677610.", refs) == 1.0
    assert string_match_all("I found 4174173 and 9677610.", refs) == 0.5
    assert string_match_all("No idea.", refs) == 0.0
    assert string_match_all("417417", ["4174173"]) == 0.0  # a prefix is not the answer


def test_matching_is_case_insensitive_substring() -> None:
    assert string_match_all("VARIABLES: nzlxb, KLXRZ", ["NZLXB", "klxrz"]) == 1.0
    assert string_match_part("It carried SALT.", ["salt", "rock salt"]) == 1.0
    assert string_match_part("It carried sugar.", ["salt", "rock salt"]) == 0.0


def test_part_needs_only_one_reference() -> None:
    assert string_match_part("founded in 1492", ["1492", "fourteen ninety-two"]) == 1.0
    assert string_match_all("founded in 1492", ["1492", "fourteen ninety-two"]) == 0.5


def test_dispatch_and_errors() -> None:
    assert score("a b", ["a", "c"], "all") == 0.5
    assert score("a b", ["a", "c"], "part") == 1.0
    with pytest.raises(ValueError, match="unknown metric"):
        score("a", ["a"], "exact")
    with pytest.raises(ValueError):
        string_match_all("a", [])
