"""The Python API on the shipped model: inputs of every kind, threads, embeddings, backends."""
import concurrent.futures as cf

import numpy as np
import pytest
from PIL import Image

import edge_slim
from conftest import EXAMPLES
from edge_slim.errors import BadInputError
from edge_slim.runtime.backends import available

IMG = EXAMPLES / "images" / "scene1.png"
BACKENDS = [b for b in ("ort", "numpy") if available(b)]


@pytest.fixture(scope="module")
def sess():
    return edge_slim.load()


def test_image_kinds_agree(sess):
    q = "what shape is the small gray object?"
    pil = Image.open(IMG)
    answers = {sess.ask(x, q).answer for x in (IMG, str(IMG), IMG.read_bytes(), pil, np.asarray(pil))}
    assert len(answers) == 1


def test_batch_of_questions_matches_singles(sess):
    qs = ["what color is the small cone?", "is there a red sphere?"]
    many = sess.ask(IMG, qs)
    assert [a.answer for a in many] == [sess.ask(IMG, q).answer for q in qs]


def test_threads_share_one_session(sess, examples):
    jobs = [(EXAMPLES / e["image"], q["question"]) for e in examples for q in e["questions"]]
    serial = [sess.ask(i, q).answer for i, q in jobs]
    with cf.ThreadPoolExecutor(4) as ex:
        parallel = list(ex.map(lambda j: sess.ask(*j).answer, jobs))
    assert parallel == serial


def test_embeddings_rank_true_caption(sess, examples):
    e = examples[0]
    im = sess.embed_image(EXAMPLES / e["image"])
    assert im.shape == (64,) and abs(np.linalg.norm(im) - 1) < 1e-4
    tx = sess.embed_text(e["match"]["texts"][0])
    assert tx.shape == (64,) and abs(np.linalg.norm(tx) - 1) < 1e-4


def test_bad_inputs(sess):
    with pytest.raises(BadInputError):
        sess.ask(IMG, "")
    with pytest.raises(BadInputError):
        sess.match(IMG, [])
    with pytest.raises(BadInputError):
        sess.locate(b"nope", "the cube")


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_give_the_same_answers(backend, examples):
    ref, s = edge_slim.load(backend="ort" if "ort" in BACKENDS else "numpy"), edge_slim.load(backend=backend)
    assert s.backend_name == backend
    for e in examples:
        img = EXAMPLES / e["image"]
        for q in e["questions"]:
            a, b = ref.ask(img, q["question"]), s.ask(img, q["question"])
            assert a.answer == b.answer and abs(a.score - b.score) < 1e-4
        assert np.allclose(ref.match(img, e["match"]["texts"]).scores, s.match(img, e["match"]["texts"]).scores, atol=1e-4)
        assert np.allclose(ref.locate(img, e["locate"]["phrase"]).box, s.locate(img, e["locate"]["phrase"]).box, atol=0.05)


@pytest.mark.skipif(not available("ort"), reason="onnxruntime is not installed")
def test_close_and_with_block_end_a_live_session():
    """Live sessions make each other's thread pools stop spinning (runtime/threads.py); closing one counts."""
    from edge_slim.runtime import threads as T
    before = T.SESSIONS.live()
    with edge_slim.load(backend="ort") as s:
        assert T.SESSIONS.live() == before + 1
        assert s.ask(IMG, "what shape is the small gray object?").answer
    assert T.SESSIONS.live() == before
    s.close()                                        # idempotent
    assert T.SESSIONS.live() == before
