"""Greedy caption decoding for `Session.describe`, over the bundle's describe graph.

The image is encoded once: model.onnx's `describe_memory` output is the decoder's memory. The
decoder graph (manifest `describe`, docs/bundle.md) is then called once per generated token, either
with a key/value cache carried between calls (`kv_cache`) or with the whole padded prefix
(`prefix`). Decoding is constrained to the caption grammar (edge_slim.scenes.caption): at each
step only tokens that can continue a well-formed caption are eligible, so the text always parses;
which size, colour, shape and relation comes next, and when to stop, is the model's choice.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import ModelError


@dataclass
class Description:
    text: str
    objects: list        # [{"size", "color", "shape"}] read back from the text by the caption parser
    latency_ms: float
    backend: str

    def to_dict(self) -> dict:
        return asdict(self)


def _grammar(vocab: list[str]) -> dict[str, np.ndarray]:
    """Allowed next tokens after each kind of token, as boolean masks over `vocab`."""
    from ..scenes.grammar import COLORS, RELATIONS, SHAPES, SIZES
    ids = {w: i for i, w in enumerate(vocab)}

    def mask(words) -> np.ndarray:
        m = np.zeros(len(vocab), bool)
        missing = [w for w in words if w not in ids]
        if missing:
            raise ModelError(f"the describe vocabulary lacks {', '.join(missing)}; the bundle is not a caption model "
                             "of this edge-slim")
        m[[ids[w] for w in words]] = True
        return m

    after = {"[bos]": mask(["a"]), ",": mask(["a"]), "a": mask(SIZES), "it": mask([",", "[eos]"])}
    after.update({w: mask(COLORS) for w in SIZES})
    after.update({w: mask(SHAPES) for w in COLORS})
    after.update({w: mask(["it"]) for w in RELATIONS})
    after["shape"] = mask([",", "[eos]", *RELATIONS])
    after["first_shape"] = mask([",", "[eos]"])  # the first object has no object before it to relate to
    return after


def decoder_view(bundle):
    """The bundle as the decoder graph's backend sees it: its model file is the describe graph (an ONNX
    graph, or a compiled library in a compiled bundle), its inputs and outputs those of the manifest's
    `describe` entry (a compiled backend allocates its input tensors from them)."""
    spec = bundle.manifest["describe"]
    view = bundle.graph(spec["graph"], "describe")
    view.manifest = {**view.manifest, "inputs": spec["inputs"], "outputs": spec["outputs"], "split": None}
    return view


class Describer:
    """Drives one bundle's caption decoder on one backend; thread-safe like the backends."""

    def __init__(self, bundle, backend_cls, threads: int | None = None, backend_options: dict | None = None):
        spec = bundle.manifest.get("describe")
        if not spec:
            raise ModelError(f"{bundle.path}: this model has no describe head (the bundle has no caption decoder "
                             "graph); use a bundle exported from a model trained with one")
        if spec.get("decoding") not in ("kv_cache", "prefix"):
            raise ModelError(f"{bundle.path}: unknown describe decoding {spec.get('decoding')!r}")
        outputs = [o["name"] for o in bundle.manifest["outputs"]]
        if spec["memory_output"] not in outputs:
            raise ModelError(f"{bundle.path}: model.onnx has no {spec['memory_output']} output for describe")
        self.spec = spec
        self.vocab = list(spec["vocab"])
        self.max_len = int(spec["max_len"])
        self.bos, self.eos = int(spec["bos"]), int(spec["eos"])
        self.backend = backend_cls(decoder_view(bundle), threads=threads, **(backend_options or {}))
        self._after = _grammar(self.vocab)
        from ..scenes.grammar import RELATIONS, SHAPES
        self._shapes = set(SHAPES)
        self._comma = self.vocab.index(",")
        self._relations = [self.vocab.index(r) for r in RELATIONS]
        inputs = {i["name"]: i for i in spec["inputs"]}
        self._cache_shape = tuple(inputs["past_k"]["shape"]) if spec["decoding"] == "kv_cache" else None

    def _allowed(self, words: list[str], t: int) -> np.ndarray:
        """Tokens that may stand at position t after `words` (t counts the bos)."""
        last = words[-1] if words else "[bos]"
        if last in self._shapes:
            m = (self._after["first_shape"] if "," not in words else self._after["shape"]).copy()
        else:
            m = self._after[last].copy()
        # room left: a further object takes ", a size colour shape rel it" (7) then eos; a relation "rel it" then eos
        if t + 8 > self.max_len:
            m[self._comma] = False
        if last in self._shapes and t + 3 > self.max_len:
            m[self._relations] = False
        if t == self.max_len - 1 or not m.any():
            m[:] = False
            m[self.eos] = True
        return m

    def tokens(self, memory: np.ndarray) -> list[int]:
        """Greedy, grammar-constrained decoding from `memory` [1,N,d]; returns ids without bos/eos."""
        out: list[int] = []
        words: list[str] = []
        if self.spec["decoding"] == "kv_cache":
            past_k = np.zeros(self._cache_shape, np.float32)
            past_v = np.zeros(self._cache_shape, np.float32)
            prev = self.bos
        else:
            prefix = np.zeros((1, self.max_len), np.int64)
            prefix[0, 0] = self.bos
        for t in range(1, self.max_len):
            if self.spec["decoding"] == "kv_cache":
                o = self.backend.run({"memory": memory, "token": np.array([[prev]], np.int64),
                                      "pos": np.array([t - 1], np.int64), "past_k": past_k, "past_v": past_v})
                logits, past_k, past_v = o["logits"][0], o["present_k"], o["present_v"]
            else:
                logits = self.backend.run({"memory": memory, "tokens": prefix})["logits"][0, t - 1]
            allowed = self._allowed(words, t)
            nxt = int(np.argmax(np.where(allowed, logits, -np.inf)))
            if nxt == self.eos:
                break
            out.append(nxt)
            words.append(self.vocab[nxt])
            if self.spec["decoding"] == "kv_cache":
                prev = nxt
            else:
                prefix[0, t] = nxt
        return out
