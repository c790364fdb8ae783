"""The closed world of generated scenes: objects, words, templates and answers.

Everything a person needs to write a scene by hand and know the right answer is
here (and in docs/scenes.md). The tokenizer vocabulary and the answer head's
classes are derived from these tables, so changing them changes the model.
"""
from __future__ import annotations

SHAPES = ("cube", "sphere", "cylinder", "cone", "torus")
SHAPE_PLURALS = {"cube": "cubes", "sphere": "spheres", "cylinder": "cylinders",
                 "cone": "cones", "torus": "tori", "object": "objects"}
# Base RGB of each colour before lighting jitter (CLEVR's eight colours).
COLORS = {
    "red": (173, 35, 35), "green": (29, 135, 40), "blue": (42, 75, 215),
    "yellow": (235, 215, 40), "purple": (129, 38, 192), "cyan": (41, 208, 208),
    "brown": (129, 74, 25), "gray": (110, 110, 110),
}
SIZES = ("small", "large")
# Object half-extent in pixels at the model's 96x96 resolution.
SIZE_RADIUS = {"small": 6.5, "large": 10.5}
RELATIONS = ("left of", "right of", "above", "below")
MIN_OBJECTS, MAX_OBJECTS = 3, 6
# Centres closer than this (pixels at 96x96) along an axis make a relation ambiguous;
# such pairs are never asked about.
RELATION_MARGIN = 3.0

FAMILIES = ("color", "shape", "size", "count", "exists", "spatial")

# Answer vocabulary of the VQA head, in class order.
ANSWERS = (tuple(COLORS) + SHAPES + SIZES + tuple(str(n) for n in range(MAX_OBJECTS + 1))
           + ("yes", "no"))

# Question templates per family. {d}, {d1}, {d2}: a description such as
# "small red cube" or "red object"; {dp}: its plural; {rel}: one of RELATIONS.
TEMPLATES = {
    "color": "what color is the {d}?",
    "shape": "what shape is the {d}?",
    "size": "what size is the {d}?",
    "count": "how many {dp} are there?",
    "exists": "is there a {d}?",
    "spatial": "is the {d1} {rel} the {d2}?",
}
REFER_TEMPLATE = "the {d}"
CAPTION_TEMPLATES = ("a {d}", "a {d1} and a {d2}", "a {d1} {rel} a {d2}")

# Words users may type that mean a word of the grammar; the tokenizer maps them.
SYNONYMS = {
    "big": "large", "tiny": "small", "little": "small", "ball": "sphere", "balls": "spheres",
    "block": "cube", "blocks": "cubes", "box": "cube", "boxes": "cubes", "grey": "gray",
    "thing": "object", "things": "objects", "ring": "torus", "rings": "tori", "donut": "torus",
    "toruses": "tori", "colour": "color", "an": "a",
}

TASK_TOKENS = ("[ask]", "[match]", "[locate]")
SPECIAL_TOKENS = ("[pad]", "[unk]") + TASK_TOKENS


def vocabulary() -> list[str]:
    """Every word the templates can produce, after the special tokens, in a fixed order."""
    words: list[str] = []
    texts = list(TEMPLATES.values()) + [REFER_TEMPLATE, *CAPTION_TEMPLATES, *RELATIONS]
    texts += list(SHAPES) + ["object"] + list(SHAPE_PLURALS.values()) + list(COLORS) + list(SIZES)
    for t in texts:
        for w in t.replace("?", " ").replace("{d}", " ").replace("{d1}", " ").replace(
                "{d2}", " ").replace("{dp}", " ").replace("{rel}", " ").split():
            if w not in words:
                words.append(w)
    return list(SPECIAL_TOKENS) + [w for w in words if w not in SPECIAL_TOKENS]
