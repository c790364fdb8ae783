"""ONNX Runtime backend (the default where onnxruntime is installed)."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

from ...errors import ModelError


class OrtBackend:
    name = "ort"

    def __init__(self, bundle, threads: int | None = None):
        if bundle.manifest["format"] != "onnx":
            raise ModelError(f"{bundle.path} is a {bundle.manifest['format']} artifact; the ort backend runs "
                             "ONNX bundles (use --backend tvm for compiled ones)")
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        try:
            self.sess = ort.InferenceSession(str(bundle.model_path), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types for bad graphs
            raise ModelError(f"{bundle.model_path}: ONNX Runtime cannot load it ({str(e).splitlines()[0]})") from None
        self.output_names = [o.name for o in self.sess.get_outputs()]
        self.version = ort.__version__

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # InferenceSession.run is thread-safe, so one backend serves many threads.
        return dict(zip(self.output_names, self.sess.run(self.output_names, feeds)))
