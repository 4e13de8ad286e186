"""Deterministic haystack text: English-like filler sentences and pseudo-words.

Long-context prompts need many tokens of plausible, non-repeating prose that
contains no answers. Sentences are assembled from a small bundled phrase bank
with a seeded `random.Random`, so the same seed always yields the same text
(no downloads, no corpora). Pseudo-words ("tovami", "selkuro") give keys and
word lists that cannot collide with the filler vocabulary.
"""

from __future__ import annotations

import random

SUBJECTS = (
    "The river", "An old bridge", "The village council", "A quiet library", "The morning train",
    "Our neighbour", "The museum guide", "A travelling merchant", "The lighthouse keeper",
    "The school choir", "A young carpenter", "The harbour master", "The night baker",
    "A retired sailor", "The mountain road", "The town clock", "A patient gardener",
    "The weather station", "The orchard owner", "A curious student", "The ferry captain",
    "The market square", "An elderly painter", "The city archive", "A wandering poet",
    "The copper mill", "The forest ranger", "A small bookshop", "The radio host", "The chess club",
)
VERBS = (
    "repaired", "described", "painted", "measured", "remembered", "ignored", "welcomed",
    "carried", "studied", "questioned", "celebrated", "borrowed", "polished", "mapped",
    "photographed", "rebuilt", "sorted", "collected", "praised", "translated", "guarded",
    "visited", "counted", "admired", "recorded", "followed", "discussed", "planted",
)
OBJECTS = (
    "the broken fence", "a box of letters", "the northern path", "every lantern in the street",
    "the last autumn apples", "a faded map of the coast", "the tall oak trees", "the evening tide",
    "a basket of wool", "the stone stairs", "the blue fishing boats", "a long list of recipes",
    "the narrow alleys", "the winter supplies", "a pile of old newspapers", "the distant hills",
    "the bell tower", "a drawer of rusty keys", "the wild strawberries", "the empty warehouse",
    "a sketch of the valley", "the first snowfall", "the rows of beehives", "the canal locks",
)
ADVERBIALS = (
    "before the harvest", "after a long winter", "during the spring fair", "late in the evening",
    "without saying a word", "with great care", "for the third time that year", "at dawn",
    "while the rain kept falling", "as the bells rang", "on a windy afternoon",
    "once the shops had closed", "despite the cold", "in the golden light", "just before noon",
    "every other Sunday", "with a borrowed ladder", "under a cloudless sky", "near the old well",
)
ADJECTIVES = (
    "calm", "crowded", "unusually bright", "half forgotten", "warm", "noisy", "peaceful",
    "damp", "busy", "silent", "cheerful", "quite ordinary", "freshly painted", "windswept",
)
_TEMPLATES = (
    "{S} {v} {o} {a}.",
    "{S} {v} {o}, and {s} {v2} {o2}.",
    "{A}, {s} {v} {o}.",
    "The day was {j}, so {s} {v} {o} {a}.",
    "Few people knew that {s} had {v} {o}.",
    "{S} {v} {o} while {s2} {v2} {o2}.",
    "By then the town felt {j}, and {s} {v} {o}.",
)
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "sh", "ch")
_VOWELS = ("a", "e", "i", "o", "u")


def _lower_first(phrase: str) -> str:
    return phrase[0].lower() + phrase[1:]


def filler_sentence(rng: random.Random) -> str:
    """One grammatical filler sentence drawn from the phrase bank."""
    template = rng.choice(_TEMPLATES)
    adverbial = rng.choice(ADVERBIALS)
    return template.format(
        S=rng.choice(SUBJECTS),
        s=_lower_first(rng.choice(SUBJECTS)),
        s2=_lower_first(rng.choice(SUBJECTS)),
        v=rng.choice(VERBS),
        v2=rng.choice(VERBS),
        o=rng.choice(OBJECTS),
        o2=rng.choice(OBJECTS),
        a=adverbial,
        A=adverbial[0].upper() + adverbial[1:],
        j=rng.choice(ADJECTIVES),
    )


def pseudo_word(rng: random.Random, syllables: int = 3) -> str:
    """A pronounceable made-up word of `syllables` consonant-vowel pairs."""
    if syllables < 1:
        raise ValueError(f"syllables must be >= 1, got {syllables}")
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables))


def distinct_pseudo_words(rng: random.Random, count: int, syllables: int = 3) -> list[str]:
    """`count` different pseudo-words (bounded number of draws)."""
    words: dict[str, None] = {}
    for _ in range(50 * count + 100):
        if len(words) == count:
            break
        words[pseudo_word(rng, syllables)] = None
    if len(words) < count:
        raise ValueError(f"cannot draw {count} distinct {syllables}-syllable words")
    return list(words)


def random_number(rng: random.Random, digits: int = 7) -> str:
    """A decimal number with exactly `digits` digits (no leading zero)."""
    return str(rng.randrange(10 ** (digits - 1), 10**digits))
