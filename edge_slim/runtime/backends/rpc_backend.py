"""RPC backend: runs a compiled bundle on a remote board through a TVM RPC tracker (a device farm).

The host uploads model.so to a board the tracker hands out for a key (`rpi5`, `jetson-orin`, ...), loads it
there in the Relax VM, and each `run` sends the inputs, runs `main` on the board and fetches the outputs.
`board_timing` times `main` with the board's own clock (TVM's time_evaluator), so network round trips are
not in it. The host needs the `tvm` package (edge-slim[tvm]); the board only the light runtime and
`python -m edge_slim.runtime.rpc_server`. Where to connect: the backend options `tracker` (HOST:PORT of the
tracker) and `key`, which `edge-slim eval/bench --rpc HOST:PORT --key KEY` pass, else $EDGE_SLIM_RPC and
$EDGE_SLIM_RPC_KEY.
"""
from __future__ import annotations

import os
import threading

import numpy as np

from ...errors import BadInputError, ModelError
from ..bundle import VARIANT_ENV

ENV_TRACKER, ENV_KEY = "EDGE_SLIM_RPC", "EDGE_SLIM_RPC_KEY"
SESSION_TIMEOUT_S = 1800


def parse_tracker(addr: str) -> tuple[str, int]:
    host, _, port = (addr or "").rpartition(":")
    if not host or not port.isdigit():
        raise BadInputError(f"--rpc {addr!r}: expected HOST:PORT of a TVM RPC tracker")
    return host, int(port)


class RpcBackend:
    name = "rpc"

    def __init__(self, bundle, threads: int | None = None, tracker: str | None = None, key: str | None = None):
        m = bundle.manifest
        if m["format"] != "tvm":
            raise ModelError(f"{bundle.path} is a {m['format']} bundle; --rpc runs compiled bundles "
                             "(make one with `edge-slim compile --target BOARD`)")
        if (m.get("target") or {}).get("kind", "cpu") != "cpu":
            raise ModelError(f"{bundle.path}: --rpc runs CPU artifacts only")
        if m.get("variant_of") and not os.environ.get(VARIANT_ENV):
            # the set picked its build by this host's CPU flags (runtime/bundle.py), which say nothing of the board's
            vo = m["variant_of"]
            raise ModelError(f"{vo['path']} is a variant set ({', '.join(vo['variants'])}) whose build is picked by "
                             f"the CPU that loads it: here, not the board. Name the board's build with "
                             f"{VARIANT_ENV}=TARGET, or compile for the board's target")
        tracker = tracker or os.environ.get(ENV_TRACKER)
        key = key or os.environ.get(ENV_KEY)
        if not tracker or not key:
            raise BadInputError("the rpc backend needs a tracker and a device key (--rpc HOST:PORT --key KEY)")
        host, port = parse_tracker(tracker)
        import tvm  # the host side of TVM RPC lives in the full package
        from tvm import relax, rpc
        self._tvm = tvm
        try:
            self.remote = rpc.connect_tracker(host, port).request(key, priority=1, session_timeout=SESSION_TIMEOUT_S)
            self.remote.upload(str(bundle.model_path), "model.so")
            self.dev = self.remote.cpu()
            self._vm = relax.VirtualMachine(self.remote.load_module("model.so"), self.dev)
        except (RuntimeError, OSError, ValueError) as e:  # tvm_ffi errors are RuntimeErrors
            raise ModelError(f"--rpc {tracker} key {key}: {str(e).splitlines()[-1] if str(e) else e}") from None
        self.bundle, self.tracker, self.key = bundle, tracker, key
        self.inputs = m["inputs"]
        self.output_names = [o["name"] for o in m["outputs"]]
        self._lock = threading.Lock()  # one remote VM: calls are serialized

    def _tensors(self, feeds: dict[str, np.ndarray]) -> list:
        from .tvm_backend import check_feeds
        return [self._tvm.runtime.tensor(a, self.dev) for a in check_feeds(self.inputs, feeds)]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            self._vm.set_input("main", *self._tensors(feeds))
            self._vm.invoke_stateful("main")
            outs = self._vm.get_outputs("main")
            outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
            return {name: o.numpy() for name, o in zip(self.output_names, outs)}

    def close(self) -> None:
        """End the RPC session (the board's server then serves the next client)."""
        import gc
        self._vm = self.remote = None
        gc.collect()

    def board_timing(self, feeds: dict[str, np.ndarray], number: int = 3, repeat: int = 5) -> dict:
        """Milliseconds per call of `main` measured on the board (mean of `number` calls, `repeat` times)."""
        with self._lock:
            res = self._vm.time_evaluator("main", self.dev, number=number, repeat=repeat)(*self._tensors(feeds))
        ms = sorted(float(r) * 1000 for r in res.results)
        return {"median_ms": round(ms[len(ms) // 2], 3), "min_ms": round(ms[0], 3), "max_ms": round(ms[-1], 3),
                "number": number, "repeat": repeat}


def board_bench(models: list, tracker: str, key: str, samples: int = 2, number: int = 3, repeat: int = 5,
                seed: int = 1) -> dict:
    """Time each compiled bundle's model call on a board from the tracker, with the board's clock.

    One RPC session per bundle (the board's server hands out one at a time); inputs are the first of
    `samples` generated scenes with its first question, prepared on the host as `ask` prepares them.
    """
    import edge_slim

    from ...scenes import generate as G
    from ...scenes.render import MODEL_RES, render
    rows = []
    for m in models:
        s = edge_slim.load(m, backend="rpc", backend_options={"tracker": tracker, "key": key})
        try:
            sc = G.sample(seed, 0)
            x, _ = s.prepare_image(render(sc["scene"], MODEL_RES))
            feeds = {"image": x, "tokens": s._tokens(sc["questions"][0]["text"], "ask")}
            t = s.backend.board_timing(feeds, number=number, repeat=repeat)
            rows.append({"model": str(s.bundle.path), "name": s.manifest["name"],
                         "target": (s.manifest.get("target") or {}).get("name"), "key": key, **t})
        finally:
            s.backend.close()
    return {"tracker": tracker, "key": key, "rows": rows}


def table(report: dict) -> str:
    out = [f"board timings through tracker {report['tracker']}, key {report['key']} (ms per model call, "
           "measured on the board)"]
    for r in report["rows"]:
        out.append(f"  {r['name']:<24} {r['target'] or '?':<10} median {r['median_ms']:9.3f}  min {r['min_ms']:9.3f}"
                   f"  max {r['max_ms']:9.3f}  ({r['repeat']} x {r['number']} calls)")
    return "\n".join(out)
