"""Variable tracking: the chain is complete, ordered and separate from the distractor."""

from __future__ import annotations

import re

from accuracy.tasks.context import SampleContext
from accuracy.tasks.variable_tracking import HOPS, chain, variable_tracking


def test_chain_statements() -> None:
    assert chain(["AAAAA", "BBBBB", "CCCCC"], "123") == ["VAR AAAAA = 123.", "VAR BBBBB = VAR AAAAA.", "VAR CCCCC = VAR BBBBB."]


def test_chain_resolves_to_the_answers(tokenizer) -> None:
    sample = variable_tracking(SampleContext("variable_tracking", tokenizer, 2048, 3, None, seed=2))
    value = re.search(r"hold the value (\d+)", sample.prompt).group(1)
    holds: dict[str, str] = {}
    for name, source in re.findall(r"VAR ([A-Z]{5}) = (VAR [A-Z]{5}|\d+)\.", sample.prompt):
        holds[name] = holds[source[4:]] if source.startswith("VAR ") else source  # raises if out of order
    assert sorted(n for n, v in holds.items() if v == value) == sorted(sample.answers)
    assert len(sample.answers) == HOPS + 1 and len(holds) == 2 * (HOPS + 1)
