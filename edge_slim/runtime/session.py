"""A loaded model: tokenizer + preprocessing + one backend, with the task methods users call.

One Session can be shared between threads: it holds no per-call state, and every
backend's `run` is thread-safe.

An image can be encoded once (`encode`) and asked, matched, located and described any number of times:
the backends that can (ort, numpy) run the graph's image part once and only its text part per text
(edge_slim.runtime.split); the others run the whole graph per text, with the same answers.

`ask` only answers with words of the type the question asks for: the question's opening words
give its family (edge_slim.scenes.families) and the answer head is restricted to that family's
answers before the softmax, so a colour question never gets a number.
"""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from ..errors import BadInputError, ModelError
from ..scenes.families import FAMILY_ANSWERS, question_family
from ..text.tokenizer import Tokenizer
from ..vision.preprocess import ImageLike, prepare
from .backends import available, backend_class
from .bundle import Bundle
from .describe import Description, Describer


@dataclass
class Answer:
    answer: str
    score: float
    top: list            # [[answer, probability], ...] best first
    latency_ms: float
    backend: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Match:
    scores: list         # probability that each text describes the image
    best: int
    latency_ms: float
    backend: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Location:
    box: list            # [x0, y0, x1, y1] in pixels of the input image
    score: float         # the pointer's confidence in the chosen image cell
    latency_ms: float
    backend: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(eq=False)
class EncodedImage:
    """An image as Session.encode left it: the image part's tensors (or, on a backend that cannot cut its
    graph, the prepared input), for any number of ask / match / locate / describe calls on that Session."""
    size: tuple[int, int]                     # (width, height) of the decoded image
    state: dict | None                        # the image part's outputs (edge_slim.runtime.split)
    pixels: np.ndarray                        # the model input [1,3,S,S]
    owner: int                                # id of the Session that encoded it


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def choose_backend(bundle: Bundle, backend: str) -> str:
    if backend != "auto":
        return backend
    if bundle.manifest["format"] == "tvm":
        return "tvm"
    return "ort" if available("ort") else "numpy"


class Session:
    """Run SlimPajama tasks on images: ask, match, locate, describe, embed_image, embed_text."""

    def __init__(self, bundle: Bundle, backend: str = "auto", threads: int | None = None,
                 backend_options: dict | None = None):
        """`backend_options` go to the backend's constructor (e.g. {"arithmetic": "ort-avx2"} for numpy)."""
        m = bundle.manifest
        if not m.get("tokenizer") or not m.get("answers"):
            raise ModelError(f"{bundle.path} is not a SlimPajama bundle (no tokenizer/answers); "
                             "use `edge-slim run` for bring-your-own models")
        self.bundle = bundle
        self.manifest = m
        self.backend_name = choose_backend(bundle, backend)
        self.backend = backend_class(self.backend_name)(bundle, threads=threads, **(backend_options or {}))
        t = m["tokenizer"]
        self.tokenizer = Tokenizer(t["vocab"], t["max_len"], t.get("synonyms"))
        self.answers = list(m["answers"])
        self.size = int(m["preprocess"]["size"])
        self._blank_image = np.zeros((1, 3, self.size, self.size), np.float32)
        # answer-head indices allowed per question family (families whose words the head lacks: no limit)
        self._family_answers = {f: np.array([i for i, a in enumerate(self.answers) if a in words])
                                for f, words in FAMILY_ANSWERS.items()}
        self._threads = threads
        self._backend_options = dict(backend_options or {})
        self._describer: Describer | None = None  # the caption decoder, loaded on the first describe
        self._describer_lock = threading.Lock()

    # -- inputs ------------------------------------------------------------------------------
    def prepare_image(self, image: ImageLike) -> tuple[np.ndarray, tuple[int, int]]:
        """-> (model input [1,3,S,S], (width, height) of the decoded image)."""
        x, wh = prepare(image, self.size)
        return x[None], wh

    def encode(self, image: ImageLike | EncodedImage) -> EncodedImage:
        """Decode, preprocess and run the image part once; pass the result to ask / match / locate /
        describe instead of the image to skip that work on every call."""
        if isinstance(image, EncodedImage):
            if image.owner != id(self):
                raise BadInputError("this image was encoded by another session; encode it with this one")
            return image
        x, wh = self.prepare_image(image)
        split = getattr(self.backend, "split", None)
        state = self.backend.encode({"image": x}) if split is not None and split() is not None else None
        return EncodedImage(wh, state, x, id(self))

    def _tokens(self, text: str, task: str) -> np.ndarray:
        return self.tokenizer.encode(text, task)[None]

    def _run(self, image: EncodedImage, tokens: np.ndarray) -> dict[str, np.ndarray]:
        if image.state is not None:
            return self.backend.run_text(image.state, {"tokens": tokens})
        return self.backend.run({"image": image.pixels, "tokens": tokens})

    def _run_texts(self, image: EncodedImage, tokens: list[np.ndarray], name: str) -> list[np.ndarray]:
        """Output `name` for each text ([1, ...] each): one run of the text part for all of them where the
        backend's text part takes several texts (split.batch_consts), else one run per text."""
        if len(tokens) > 1 and image.state is not None and getattr(self.backend, "texts_at_once", False):
            out = self.backend.run_text(image.state, {"tokens": np.concatenate(tokens)})[name]
            return [out[i:i + 1] for i in range(len(tokens))]
        return [self._run(image, tk)[name] for tk in tokens]

    def _answer_probs(self, logits: np.ndarray, question: str) -> np.ndarray:
        """Softmax over the answers of the question's type only (the others get probability 0)."""
        allowed = self._family_answers.get(question_family(self.tokenizer.words(question)))
        if allowed is None or not len(allowed):
            return _softmax(logits)
        p = np.zeros_like(logits)
        p[allowed] = _softmax(logits[allowed])
        return p

    # -- tasks -------------------------------------------------------------------------------
    def ask(self, image: ImageLike | EncodedImage, question: str | Sequence[str], top_k: int = 5):
        """Answer a question (or a list of questions, encoding the image once) about an image."""
        t0 = time.perf_counter()
        x = self.encode(image)
        many = not isinstance(question, str)
        qs = list(question) if many else [question]
        if not qs:
            raise BadInputError("no question given")
        toks = [self._tokens(q, "ask") for q in qs]
        out = []
        for q, logits in zip(qs, self._run_texts(x, toks, "answer_logits")):
            p = self._answer_probs(logits[0].astype(np.float64), q)
            order = np.argsort(-p, kind="stable")[:max(1, min(top_k, int((p > 0).sum())))]
            out.append(Answer(self.answers[order[0]], float(p[order[0]]),
                              [[self.answers[i], round(float(p[i]), 6)] for i in order], 0.0, self.backend_name))
        ms = (time.perf_counter() - t0) * 1000 / len(out)
        for a in out:
            a.latency_ms = round(ms, 3)
        return out if many else out[0]

    def match(self, image: ImageLike | EncodedImage, texts: Sequence[str]) -> Match:
        """Score how well each text describes the image; `best` is the index of the best one."""
        t0 = time.perf_counter()
        if isinstance(texts, str) or not texts:
            raise BadInputError("match needs a list of one or more texts")
        x = self.encode(image)
        toks = [self._tokens(t, "match") for t in texts]
        logits = np.array([float(v[0]) for v in self._run_texts(x, toks, "match_logit")])
        scores = 1.0 / (1.0 + np.exp(-logits))
        return Match([round(float(s), 6) for s in scores], int(np.argmax(logits)),
                     round((time.perf_counter() - t0) * 1000, 3), self.backend_name)

    def locate(self, image: ImageLike | EncodedImage, phrase: str) -> Location:
        """Find the object a referring expression names ('the small red cube')."""
        t0 = time.perf_counter()
        x = self.encode(image)
        w, h = x.size
        o = self._run(x, self._tokens(phrase, "locate"))
        b = np.clip(o["box"][0].astype(np.float64), 0.0, 1.0) * [w, h, w, h]
        return Location([round(float(v), 2) for v in b], round(float(o["box_score"][0]), 6),
                        round((time.perf_counter() - t0) * 1000, 3), self.backend_name)

    def describe(self, image: ImageLike | EncodedImage) -> Description:
        """A caption of the image in the scene grammar's words: every object with its size, colour and
        shape, left to right, each with its relation to the one before (docs/scenes.md, Scene descriptions)."""
        t0 = time.perf_counter()
        if self.backend_name == "rpc":
            # the decoder would open a second remote session, and a board serves one at a time: it would wait
            # on this session until the server's lifetime ends
            raise ModelError("describe does not run over RPC yet (a board serves one session at a time and the "
                             "caption decoder needs a second); run describe on the device itself")
        with self._describer_lock:
            if self._describer is None:
                self._describer = Describer(self.bundle, backend_class(self.backend_name), threads=self._threads,
                                            backend_options=self._backend_options)
        d = self._describer
        x = self.encode(image)
        key = d.spec["memory_output"]
        memory = x.state[key] if x.state and key in x.state else self._run(x, self._tokens("object", "match"))[key]
        from ..scenes.caption import decode_caption, parse_caption
        text = decode_caption(d.tokens(memory), d.vocab)
        return Description(text, parse_caption(text, strict=False).objects,
                           round((time.perf_counter() - t0) * 1000, 3), self.backend_name)

    def embed_image(self, image: ImageLike | EncodedImage) -> np.ndarray:
        """Unit-norm image embedding (contrastively trained with embed_text) for retrieval."""
        x = self.encode(image)
        if x.state is not None and "image_embed" in x.state:
            return np.array(x.state["image_embed"][0])
        return self._run(x, self._tokens("object", "match"))["image_embed"][0].copy()

    def embed_text(self, text: str) -> np.ndarray:
        """Unit-norm text embedding; cosine with embed_image ranks images for a text."""
        blank = EncodedImage((self.size, self.size), None, self._blank_image, id(self))
        return self._run(blank, self._tokens(text, "match"))["text_embed"][0].copy()

    # -- lifetime ----------------------------------------------------------------------------
    def close(self) -> None:
        """Stop counting as a live session (edge_slim.runtime.threads: while several sessions are alive,
        the runtimes' pools stop spinning between calls). Idempotent; garbage collection does the same."""
        for owner in (self, getattr(self, "_describer", None)):      # the describe head has its own backend
            close = getattr(getattr(owner, "backend", None), "close", None)
            if close is not None:
                close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
