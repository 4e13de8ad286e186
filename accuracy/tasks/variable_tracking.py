"""Variable tracking (RULER's multi-hop tracing task).

A chain `VAR A = 12345.`, `VAR B = VAR A.`, ... is spread through filler
prose in order, next to a distractor chain holding another value. The model
must list every variable that ends up holding the queried value. Scored with
string_match_all over the chain's variable names.
"""

from __future__ import annotations

import random
import string

from accuracy.sample import Sample
from accuracy.tasks.context import SampleContext, other_depths, planted_sample
from loadtests.documents import Insert
from loadtests.filler import random_number

HOPS = 4
INTRO = "Memorize the variable assignments hidden in the text below; you will be asked about them."


def variable_names(rng: random.Random, count: int) -> list[str]:
    """`count` distinct 5-letter upper-case names."""
    names: dict[str, None] = {}
    for _ in range(100 * count):
        if len(names) == count:
            return list(names)
        names["".join(rng.choice(string.ascii_uppercase) for _ in range(5))] = None
    raise ValueError(f"cannot draw {count} distinct names")


def chain(names: list[str], value: str) -> list[str]:
    """Statements that assign `value` to names[0] and pass it down the chain."""
    return [f"VAR {names[0]} = {value}."] + [f"VAR {b} = VAR {a}." for a, b in zip(names, names[1:])]


def variable_tracking(ctx: SampleContext) -> Sample:
    rng = ctx.rng()
    names = variable_names(rng, 2 * (HOPS + 1))
    value, other = random_number(rng, 5), random_number(rng, 5)
    while other == value:
        other = random_number(rng, 5)
    inserts = []
    for chain_names, chain_value in ((names[: HOPS + 1], value), (names[HOPS + 1 :], other)):
        statements = chain(chain_names, chain_value)
        depths = sorted(other_depths(rng, len(statements)))
        inserts += [Insert(depth=d, text=s) for d, s in zip(depths, statements)]
    question = (
        f"Question: Which variables hold the value {value}, either directly or through other variables? "
        "List all of them."
    )
    return planted_sample(ctx, inserts, INTRO, question, names[: HOPS + 1], "all", 32)
