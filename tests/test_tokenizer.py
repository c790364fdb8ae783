import numpy as np
import pytest

from edge_slim.errors import BadInputError
from edge_slim.scenes.grammar import SYNONYMS, vocabulary
from edge_slim.text.tokenizer import MAX_CHARS, Tokenizer


@pytest.fixture
def tok():
    return Tokenizer(vocabulary(), 16, SYNONYMS)


def test_encode_layout(tok):
    ids = tok.encode("What color is the cube?", "ask")
    assert ids.dtype == np.int64 and ids.shape == (16,)
    assert ids[0] == tok.ids["[ask]"]
    assert [tok.vocab[i] for i in ids[1:6]] == ["what", "color", "is", "the", "cube"]
    assert (ids[6:] == 0).all()


def test_case_punctuation_synonyms_unknown(tok):
    a = tok.encode("IS there a BIG   ball??", "ask")
    b = tok.encode("is there a large sphere", "ask")
    assert np.array_equal(a, b)
    u = tok.encode("is there a dragon", "ask")
    assert u[4] == tok.unk and tok.unknown_words("is there a dragon") == ["dragon"]


def test_truncation(tok):
    ids = tok.encode(" ".join(["cube"] * 100), "match")
    assert ids.shape == (16,) and (ids[1:] == tok.ids["cube"]).all()


@pytest.mark.parametrize("bad", ["", "   ", "?!?", "x" * (MAX_CHARS + 1), None, 3])
def test_bad_text(tok, bad):
    with pytest.raises(BadInputError):
        tok.encode(bad, "ask")
