"""How far a second thread speeds up a plain fp32 MatMul on this machine (the CPU's lscpu identity, which
every result in benchmarks/ records, is edge_slim.runtime.machine's). The probe
exists because a VM's "2 CPUs" can be two SMT siblings of one core: then no thread count beats 1 on a
small model, and a ratio measured at 2 threads measures the thread handoff, not the kernels.

    python benchmarks/machine.py        # prints both as JSON
"""
from __future__ import annotations

import json
import time

from edge_slim.runtime.machine import cpu_info


def thread_scaling(sizes=((1024, 1024, 1024), (36, 128, 512)), threads=(1, 2), calls: int = 30) -> list[dict]:
    """Median time of one fp32 MatMul in ONNX Runtime per thread count; speedup = 1 thread / N threads.

    A large GEMM near 2x means two real cores; near 1.3-1.4x means SMT siblings or a shared core.
    """
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rows = []
    for m, k, n in sizes:
        w = numpy_helper.from_array(np.random.default_rng(0).random((k, n), dtype=np.float32), "w")
        g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])], [w])
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 9
        x = np.random.default_rng(1).random((m, k), dtype=np.float32)
        sess = {}
        for t in threads:
            so = ort.SessionOptions()
            so.intra_op_num_threads, so.inter_op_num_threads = t, 1
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle pools must not steal a core
            sess[t] = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
            for _ in range(3):
                sess[t].run(None, {"x": x})
        ts = {t: [] for t in threads}
        for _ in range(max(calls, int(3e9 / (m * k * n))) // 5):  # alternate blocks of 5 calls: drift hits all alike
            for t, s in sess.items():
                for _ in range(5):
                    t0 = time.perf_counter()
                    s.run(None, {"x": x})
                    ts[t].append(time.perf_counter() - t0)
        ms = {t: float(np.median(v)) * 1000 for t, v in ts.items()}
        rows.append({"mkn": [m, k, n], "ms": {str(t): round(v, 4) for t, v in ms.items()},
                     "speedup": {str(t): round(ms[threads[0]] / v, 2) for t, v in ms.items()}})
    return rows


if __name__ == "__main__":
    print(json.dumps({"cpu": cpu_info(), "thread_scaling": thread_scaling()}, indent=1))
