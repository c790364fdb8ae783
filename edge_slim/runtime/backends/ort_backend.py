"""ONNX Runtime backend (the default where onnxruntime is installed).

Each backend counts as one live session in edge_slim.runtime.threads; while another session is alive
in the process its thread pool stops spinning when a call returns (see that module for why), which
ONNX Runtime only reads when a session is created: the InferenceSession is rebuilt when that changes.
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
        try:
            sess = ort.InferenceSession(self.model_path, session_options(self.threads, want),
                                        providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types for bad graphs
            raise ModelError(f"{self.model_path}: ONNX Runtime cannot load it "
                             f"({str(e).splitlines()[0]})") from None
        with self._swap_lock:
            if request > self._swapped:         # calls in flight keep the session they started on
                self.sess, self.config, self._swapped = sess, want, request

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
