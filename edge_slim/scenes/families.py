"""Which answers a question can have: its family, read off its first words, and each family's answer words.

The question grammar fixes the answer's type by the family (a colour to "what color is ...", a
number to "how many ..."), and the family by the question's opening words. The runtime uses this
to restrict the VQA head to answers of the right type (Session.ask), and evaluation counts answers
of the wrong type. Pure Python: the runtime imports it.
"""
from __future__ import annotations

from typing import Sequence

from .grammar import COLORS, MAX_OBJECTS, SHAPES, SIZES

# family -> the answer words a question of that family can have
FAMILY_ANSWERS: dict[str, tuple[str, ...]] = {
    "color": tuple(COLORS),
    "shape": SHAPES,
    "size": SIZES,
    "count": tuple(str(n) for n in range(MAX_OBJECTS + 1)),
    "exists": ("yes", "no"),
    "spatial": ("yes", "no"),
}

# opening words (after the tokenizer's lower-casing and synonyms) -> family
_OPENINGS = (
    (("what", "color"), "color"), (("what", "shape"), "shape"), (("what", "size"), "size"),
    (("how", "many"), "count"), (("is", "there"), "exists"), (("is", "the"), "spatial"),
)


def question_family(words: Sequence[str]) -> str | None:
    """The family of a question given as tokenizer words, or None when its opening is not the grammar's."""
    for opening, family in _OPENINGS:
        if tuple(words[:len(opening)]) == opening:
            return family
    return None


def answer_type_ok(family: str, answer: str) -> bool:
    """Whether `answer` is of the type a question of `family` asks for."""
    return answer in FAMILY_ANSWERS[family]
