"""ONNX Runtime backend (the default where onnxruntime is installed).

Each backend counts as one live session in edge_slim.runtime.threads; while another session is alive
in the process its thread pool stops spinning when a call returns (see that module for why), which
ONNX Runtime only reads when a session is created: the InferenceSession is rebuilt when that changes.

Image once, many texts (edge_slim.runtime.split): on the first `encode` the bundle's graph is cut into its
image part and its text part, each an InferenceSession on a subgraph written back from the bundle's bytes.
The image part's pool always stops spinning when its call returns, since the text part runs next.
"""
from __future__ import annotations

import itertools
import threading

import numpy as np
import onnxruntime as ort

from ...errors import ModelError
from .. import threads as T
from ..machine import physical_cores


def session_options(threads: int | None, config: dict) -> ort.SessionOptions:
    """SessionOptions for `threads` intra-op threads (None: ORT's default, one per physical core)."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    for k, v in config.items():
        so.add_session_config_entry(k, v)
    return so


# The per-text rewrite of an int8 text part runs on one thread: its ~900 small operators gain nothing from a
# second (8 texts of SlimPajama-Tiny: 3.66 ms at 1 thread, 3.78 ms at 2; Zen 3, 2026-12-08), and a session
# without a pool of its own leaves the second core to the image part's.
PER_TEXT_THREADS = 1


class OrtBackend:
    name = "ort"

    def __init__(self, bundle, threads: int | None = None):
        if bundle.manifest["format"] != "onnx":
            raise ModelError(f"{bundle.path} is a {bundle.manifest['format']} artifact; the ort backend runs "
                             "ONNX bundles (use --backend tvm for compiled ones)")
        self.model_path = str(bundle.model_path)
        self.threads = int(threads) if threads else None
        self.version = ort.__version__
        self.config: dict | None = None      # the session config entries the current InferenceSession has
        # Sessions are built with no lock held (a garbage-collected backend's finalizer may run inside the
        # build and take the registry's lock); the lock only orders the swaps: the newest request wins.
        self._swap_lock = threading.Lock()
        self._requests = itertools.count(1)
        self._swapped = 0
        # (image session, text session, Split, session for several texts: the text session itself where
        # that takes them, else the per-text rewrite's or None), built on the first encode from _part_graphs
        # (image, text, several texts or b"")
        self._parts = None
        self._part_graphs: tuple[bytes, bytes, bytes] | None = None
        self._texts_later = None              # what _texts_session needs to build the per-text rewrite
        self._texts_lock = threading.Lock()
        self.texts_at_once = False            # run_text takes tokens of several texts (set by the first encode)
        self._lease = T.SESSIONS.join(self)
        try:
            self._ensure(T.SESSIONS.current())
        except BaseException:
            self._lease.close()
            raise
        self.output_names = [o.name for o in self.sess.get_outputs()]

    def _ensure(self, p: T.Policy) -> None:
        want = T.ort_config(p, self.threads, physical_cores())
        with self._swap_lock:
            request = next(self._requests)
            if want == self.config:
                self._swapped = max(self._swapped, request)
                return
        sess = self._session(self.model_path, want)
        parts = self._part_sessions(want) if self._parts is not None else None
        with self._swap_lock:
            if request > self._swapped:         # calls in flight keep the session they started on
                self.sess, self.config, self._swapped = sess, want, request
                if parts is not None:
                    self._parts = (parts[0], parts[1], self._parts[2],
                                   parts[1] if self._parts[3] is self._parts[1] else parts[2])

    def _session(self, model, config: dict, threads: int | None = None) -> ort.InferenceSession:
        try:
            return ort.InferenceSession(model, session_options(threads or self.threads, config),
                                        providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types for bad graphs
            raise ModelError(f"{self.model_path}: ONNX Runtime cannot load it "
                             f"({str(e).splitlines()[0]})") from None

    def _part_configs(self, config: dict) -> tuple[dict, dict]:
        """(image part, text part) session config entries for the whole graph's `config`."""
        return {**config, **(T.ORT_SHARED_CONFIG if self.threads != 1 else {})}, config

    def _part_sessions(self, config: dict):
        image_cfg, text_cfg = self._part_configs(config)
        image, text, texts = self._part_graphs
        return (self._session(image, image_cfg), self._session(text, text_cfg),
                self._session(texts, text_cfg, PER_TEXT_THREADS) if texts else None)

    # -- image once, many texts ---------------------------------------------------------------
    def split(self):
        """The Split this backend encodes with (None: the graph has no image/text cut); builds it once."""
        if self._parts is None and self._part_graphs is None:
            with self._swap_lock:
                if self._part_graphs is None:
                    self._build_parts()
        return self._parts[2] if self._parts else None

    def _build_parts(self) -> None:
        from ..onnx_proto import dtype_code, load_model, tensor_value_info, write_subgraph
        from ..split import dynamic_quantize_inputs, plan_split
        model = load_model(self.model_path)
        sp = plan_split(model.graph)
        if sp is None:
            self._part_graphs = (b"", b"", b"")
            return
        # the image part's outputs may stay untyped (ORT infers them); the text part's inputs need their types,
        # read from one run of the image part
        untyped = [tensor_value_info(c) for c in sp.cut]
        image_graph = write_subgraph(model, list(sp.image_nodes), ["image"], untyped + list(sp.image_outputs),
                                     "image_part")
        image_cfg, text_cfg = self._part_configs(self.config or {})
        probe = self._session(image_graph, image_cfg)      # kept as the image part's session
        shapes = {i.name: i.shape for i in model.graph.inputs}
        feed = {"image": np.zeros([d if isinstance(d, int) and d > 0 else 1 for d in shapes["image"]], np.float32)}
        got = dict(zip([o.name for o in probe.get_outputs()], probe.run(None, feed)))
        typed = [tensor_value_info(c, dtype_code(got[c].dtype), got[c].shape) for c in sp.cut]
        state = {c: got[c] for c in sp.cut}
        batched = self._batched_text_graph(model, sp, typed, state, text_cfg, None)
        if batched is not None:       # one graph for one text and for several
            text_graph, text_sess = batched
            self._part_graphs = (image_graph, text_graph, b"")
            self._parts = (probe, text_sess, sp, text_sess)
            return
        text_graph = write_subgraph(model, list(sp.text_nodes), typed + ["tokens"], list(sp.text_outputs),
                                    "text_part")
        self._part_graphs = (image_graph, text_graph, b"")
        self._parts = (probe, self._session(text_graph, text_cfg), sp, None)
        if dynamic_quantize_inputs(model.graph, sp):     # int8: built when several texts first come
            self._texts_later, self.texts_at_once = (typed, state), True

    def _texts_session(self):
        """The session of split.quantize_per_text's rewrite of the text part, built on the first run of
        several texts (it costs about as much as 100-300 runs of one text, which most sessions never make
        at once); None where it cannot be built or does not pass the check against the text part."""
        from ..onnx_proto import load_model
        with self._texts_lock:
            if self._texts_later is not None:
                (typed, state), model = self._texts_later, load_model(self.model_path)
                _, text_sess, sp, _ = self._parts
                text_cfg = self._part_configs(self.config or {})[1]
                try:
                    rewrite = self._per_text_rewrite(model, sp, typed, state, text_cfg)
                    built = rewrite and self._batched_text_graph(model, sp, typed, state, text_cfg, rewrite,
                                                                 text_sess)
                except Exception:  # noqa: BLE001 - a graph the rewrite mishandles: one text a run, still right
                    built = None    # (the shipped int8 bundles take the rewrite: tests/test_split.py)
                with self._swap_lock:
                    if built:
                        self._part_graphs = (*self._part_graphs[:2], built[0])
                        self._parts = (*self._parts[:3], built[1])
                    self._texts_later, self.texts_at_once = None, bool(built)
            return self._parts[3]

    def _per_text_rewrite(self, model, sp, typed: list[bytes], probe_state: dict, config: dict):
        """split.quantize_per_text for an int8 text part (the ranks it needs from one probe run), or None."""
        from ..onnx_proto import tensor_value_info, write_subgraph
        from ..split import dynamic_quantize_inputs, quantize_per_text
        xs = dynamic_quantize_inputs(model.graph, sp)
        if not xs:
            return None
        graph = write_subgraph(model, list(sp.text_nodes), typed + ["tokens"],
                               [tensor_value_info(x) for x in dict.fromkeys(xs)], "text_probe")
        tok = next(vi for vi in model.graph.inputs if vi.name == "tokens")
        try:
            got = self._session(graph, config).run(list(dict.fromkeys(xs)), {
                **probe_state, "tokens": np.zeros([d if isinstance(d, int) and d > 0 else 1 for d in tok.shape],
                                                  np.int64)})
        except Exception:  # noqa: BLE001 - no rewrite: the text part runs one text at a time, as before
            return None
        return quantize_per_text(model.graph, sp, {x: np.ndim(v) for x, v in zip(dict.fromkeys(xs), got)})

    def _batched_text_graph(self, model, sp, typed: list[bytes], probe_state: dict, config: dict, rewrite,
                            one=None):
        """(graph, its session) of the text part (or of split.quantize_per_text's `rewrite` of it) with a batch
        of texts (split.batch_consts), if it passes split.texts_agree on the probe image's state against
        itself (or against `one`, the session of the text part as it was), else None; sets texts_at_once."""
        from ..onnx_proto import dtype_code, tensor_value_info, write_subgraph
        from ..split import batch_consts, texts_agree
        over = batch_consts(model.graph, sp, rewrite=rewrite)
        if over is None:
            return None
        tok = next(vi for vi in model.graph.inputs if vi.name == "tokens")
        graph = write_subgraph(model, list(rewrite.nodes if rewrite else sp.text_nodes),
                               typed + [tensor_value_info("tokens", tok.elem_type or dtype_code(np.int64),
                                                          ("texts", *tok.shape[1:]))],
                               [tensor_value_info(o) for o in sp.text_outputs], "text_part",
                               replace={**(rewrite.initializers if rewrite else {}), **over})
        try:
            sess = self._session(graph, config, PER_TEXT_THREADS if rewrite else None)
        except ModelError:
            return None
        names = list(sp.text_outputs)
        def runner(s):
            return lambda t: dict(zip(names, s.run(names, {**probe_state, "tokens": t})))
        if not texts_agree(runner(sess), tok.shape, names, run_one=runner(one) if one is not None else None):
            return None
        self.texts_at_once = True
        return graph, sess

    def encode(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the image part: -> the cut tensors and the image-only outputs (Session.encode keeps them)."""
        if self._parts is None and self.split() is None:
            raise ModelError(f"{self.model_path}: the graph has no image/text cut to encode with")
        image_sess, _, sp, _ = self._parts
        names = list(sp.cut + sp.image_outputs)
        return dict(zip(names, image_sess.run(names, feeds)))

    def run_text(self, state: dict[str, np.ndarray], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the text part on an encoded image: -> every graph output, as `run` returns them (with
        texts_at_once, `tokens` may hold several texts: one row per text)."""
        _, text_sess, sp, texts_sess = self._parts
        rows = len(feeds["tokens"])
        if rows > 1 and texts_sess is None and self.texts_at_once:
            texts_sess = self._texts_session()
            if texts_sess is None:      # the rewrite did not apply: one run per text
                outs = [self.run_text(state, {**feeds, "tokens": feeds["tokens"][i:i + 1]}) for i in range(rows)]
                return {n: np.concatenate([o[n] for o in outs]) if n in sp.text_outputs else outs[0][n]
                        for n in outs[0]}
        if rows > 1:
            text_sess = texts_sess
        out = dict(zip(sp.text_outputs, text_sess.run(list(sp.text_outputs), {**{c: state[c] for c in sp.cut},
                                                                                **feeds})))
        return sp.outputs(self.output_names, out, state)

    def apply_threads_policy(self, p: T.Policy) -> None:
        """Called by the registry when another session opens or closes (see edge_slim.runtime.threads)."""
        try:
            self._ensure(p)
        except ModelError:
            pass    # the model loaded before: keep the running session (it only spins as it did)

    def close(self) -> None:
        """Stop counting as a live session (the InferenceSession is freed with the backend)."""
        self._lease.close()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # InferenceSession.run is thread-safe, so one backend serves many threads.
        sess = self.sess
        return dict(zip(self.output_names, sess.run(self.output_names, feeds)))
