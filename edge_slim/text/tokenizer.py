"""A word-level tokenizer over the scene grammar's closed vocabulary, in pure Python.

Lower-cases, splits on anything that is not a letter or digit, maps synonyms
("big" -> "large"), replaces unknown words with [unk], prefixes the task token
and pads or truncates to the model's fixed length.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from ..errors import BadInputError

MAX_CHARS = 2000
_WORD = re.compile(r"[a-z0-9]+")


class Tokenizer:
    def __init__(self, vocab: Sequence[str], max_len: int, synonyms: dict[str, str] | None = None):
        self.vocab = list(vocab)
        self.ids = {w: i for i, w in enumerate(self.vocab)}
        if len(self.ids) != len(self.vocab):
            raise ValueError("vocabulary has duplicate words")
        self.max_len = int(max_len)
        self.synonyms = dict(synonyms or {})
        self.pad, self.unk = self.ids["[pad]"], self.ids["[unk]"]

    def words(self, text: str) -> list[str]:
        if not isinstance(text, str):
            raise BadInputError(f"text must be a string, not {type(text).__name__}")
        if len(text) > MAX_CHARS:
            raise BadInputError(f"text is {len(text)} characters long; the limit is {MAX_CHARS}")
        words = [self.synonyms.get(w, w) for w in _WORD.findall(text.lower())]
        if not words:
            raise BadInputError("text is empty (no words)")
        return words

    def encode(self, text: str, task: str) -> np.ndarray:
        """text -> int64 [max_len]: [task] w1 w2 ... [pad]...; long texts are truncated."""
        ids = [self.ids[f"[{task}]"]] + [self.ids.get(w, self.unk) for w in self.words(text)]
        ids = ids[: self.max_len]
        return np.array(ids + [self.pad] * (self.max_len - len(ids)), dtype=np.int64)

    def unknown_words(self, text: str) -> list[str]:
        return [w for w in self.words(text) if w not in self.ids]
