"""Synthetic fact QA: answer a question about one fact among many (RULER QA-style).

Ten invented facts (founding years, hometowns, ship cargos, suppliers'
places) about made-up names are planted in filler prose; the question
targets the one at the requested depth. Nothing is downloaded and no answer
can come from world knowledge; answers are all distinct and none is a common
substring (4-digit years, cargo nouns, made-up place names). Scored with
string_match_part.
"""

from __future__ import annotations

import random

from accuracy.sample import Sample
from accuracy.tasks.context import SampleContext, other_depths, planted_sample
from loadtests.documents import Insert
from loadtests.filler import distinct_pseudo_words

FACTS = 10
INTRO = "Read the text below carefully; it contains facts you will be asked about."
# none of these occurs in the filler phrase bank, so the answer appears only in its fact
CARGOS = ("salt", "silk", "timber", "marble", "coffee", "cotton", "ivory", "pepper", "amber", "cinnamon", "porcelain", "indigo")
# (fact, question, value drawer): {e} is a made-up name, {v} the answer
_KINDS = (
    ("The village of {e} was founded in the year {v}.", "In which year was the village of {e} founded?",
     lambda rng: str(rng.randint(1100, 1899))),
    ("The sculptor {e} spent most of her life in a town called {v}.",
     "In which town did the sculptor {e} spend most of her life?", lambda rng: distinct_pseudo_words(rng, 1)[0].title()),
    ("On its last voyage the ship {e} carried a cargo of {v}.", "What cargo did the ship {e} carry on its last voyage?",
     lambda rng: rng.choice(CARGOS)),
    ("The chef {e} buys all of his barley from a farm near {v}.", "Near which place is the farm where the chef {e} buys his barley?",
     lambda rng: distinct_pseudo_words(rng, 1)[0].title()),
)


def fact_qa(ctx: SampleContext) -> Sample:
    rng = ctx.rng()
    names = [n.title() for n in distinct_pseudo_words(rng, FACTS)]
    kinds = [rng.randrange(len(_KINDS)) for _ in names]
    values = _distinct_values(rng, kinds)
    target_depth = 0.5 if ctx.depth is None else ctx.depth
    depths = [target_depth, *other_depths(rng, FACTS - 1)]
    inserts = [Insert(depth=d, text=_KINDS[k][0].format(e=n, v=v)) for n, k, v, d in zip(names, kinds, values, depths)]
    question = "Question: " + _KINDS[kinds[0]][1].format(e=names[0]) + " Answer briefly."
    return planted_sample(ctx, inserts, INTRO, question, [values[0]], "part", 32)


def _distinct_values(rng: random.Random, kinds: list[int]) -> list[str]:
    """One answer per fact, all different (bounded redraws)."""
    values: list[str] = []
    for kind in kinds:
        for _ in range(100):
            value = _KINDS[kind][2](rng)
            if value not in values:
                break
        else:
            raise ValueError("cannot draw distinct fact values")
        values.append(value)
    return values
