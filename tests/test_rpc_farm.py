"""The device farm: `edge-slim eval/bench --rpc HOST:PORT --key KEY` run a compiled bundle on a board handed out
by a TVM RPC tracker. End to end on loopback: TVM's own tracker, and an aarch64 board emulated with qemu
running `python -m edge_slim.runtime.rpc_server` with only the light runtime (the guest of scripts/arm-env.sh:
numpy, tvm_ffi, libtvm_runtime.so). The board's accuracy must equal the x86 artifact's on the same scenes;
its timings come from the board's clock. The server serves two sessions and exits; everything is bounded.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tvm", reason="the host side of TVM RPC needs apache-tvm")
pytest.importorskip("tornado", reason="TVM's RPC tracker needs tornado (pip install 'edge-slim[tvm]')")

from compile_helpers import arm_env, compiled, has_cc  # noqa: E402

import edge_slim  # noqa: E402
from edge_slim.scenes.evaluate import evaluate  # noqa: E402

KEY = "rpi5-qemu"
SAMPLES = 2  # each costs ~15 model calls, ~0.5-1.5 s apiece emulated


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "edge_slim", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
@pytest.mark.skipif(not has_cc("rpi5"), reason="no aarch64 cross compiler (apt-get install gcc-aarch64-linux-gnu "
                    "libc6-dev-arm64-cross)")
@pytest.mark.skipif(sys.platform != "linux", reason="qemu user-mode emulation is Linux-only")
def test_eval_and_bench_on_an_emulated_aarch64_board_through_a_tracker():
    from tvm.rpc.tracker import Tracker
    env = arm_env()
    board, x86 = compiled("rpi5"), compiled("x86-64")
    tracker = Tracker(host="127.0.0.1", port=9190, port_end=9290, silent=True)
    guest = {**os.environ, "QEMU_LD_PREFIX": env["QEMU_LD_PREFIX"], "PYTHONPATH": env["PYTHONPATH"],
             "EDGE_SLIM_TVM_RUNTIME": env["EDGE_SLIM_TVM_RUNTIME"], "PYTHONDONTWRITEBYTECODE": "1"}
    server = subprocess.Popen([*env["PYTHON"].split(), "-m", "edge_slim.runtime.rpc_server", "--tracker",
                               f"127.0.0.1:{tracker.port}", "--key", KEY, "--host", "127.0.0.1", "--sessions", "2",
                               "--lifetime", "900"], env=guest, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        r = _cli("eval", "--model", board, "--rpc", f"127.0.0.1:{tracker.port}", "--key", KEY,
                 "--samples", SAMPLES, "--json")
        assert r.returncode == 0, r.stderr[-3000:]
        got = json.loads(r.stdout)
        assert got["backend"] == "rpc"
        ref = evaluate(edge_slim.load(x86, backend="tvm"), samples=SAMPLES, seed=got["seed"])
        for k in ("vqa_accuracy", "per_family", "match_r1", "locate_iou50", "samples"):
            assert got[k] == ref[k], (k, got[k], ref[k])
        r = _cli("bench", board, "--rpc", f"127.0.0.1:{tracker.port}", "--key", KEY, "--rounds", 3, "--block", 10,
                 "--json")
        assert r.returncode == 0, r.stderr[-3000:]
        row, = json.loads(r.stdout)["rows"]
        assert row["target"] == "rpi5" and row["key"] == KEY and 0 < row["min_ms"] <= row["median_ms"] <= row["max_ms"]
        out, err = server.communicate(timeout=180)  # two sessions served: it stops by itself
        assert server.returncode == 0 and "session 2 over" in out, (out, err[-2000:])
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
        tracker.terminate()


def test_rpc_options_are_checked_before_anything_connects():
    r = _cli("eval", "--rpc", "127.0.0.1:9190", timeout=120)
    assert r.returncode == 2 and "--rpc and --key go together" in r.stderr, r.stderr
    r = _cli("bench", "--rpc", "nohostport", "--key", "k", "x", timeout=120)
    assert r.returncode in (2, 3) and "HOST:PORT" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_describe_over_rpc_refuses_instead_of_waiting_on_the_board():
    # a board serves one RPC session at a time; the caption decoder would need a second and wait forever
    from edge_slim.errors import ModelError
    from edge_slim.runtime.session import Session
    s = object.__new__(Session)          # the guard runs before anything remote: no board needed
    s.backend_name = "rpc"
    with pytest.raises(ModelError, match="RPC"):
        s.describe(np.zeros((96, 96, 3), np.uint8))


def test_rpc_refuses_a_variant_set_unless_its_build_is_named(monkeypatch):
    """A variant set picks its build by the CPU that opens it, which over --rpc is this host, not the board."""
    from types import SimpleNamespace
    from edge_slim.errors import BadInputError, ModelError
    from edge_slim.runtime import bundle as B
    from edge_slim.runtime.backends.rpc_backend import RpcBackend
    m = {"format": "tvm", "target": {"name": "x86-64", "kind": "cpu"},
         "variant_of": {"path": "/art/multi", "target": "x86-64-multi", "variants": ["x86-64-avx512", "x86-64"]}}
    fake = SimpleNamespace(manifest=m, path="/art/multi/x86-64")
    monkeypatch.delenv(B.VARIANT_ENV, raising=False)
    with pytest.raises(ModelError, match="variant set .*x86-64-avx512, x86-64.*EDGE_SLIM_VARIANT"):
        RpcBackend(fake, tracker="127.0.0.1:9190", key="k")
    monkeypatch.setenv(B.VARIANT_ENV, "x86-64")       # named: on to the next check (no tracker given here)
    monkeypatch.delenv("EDGE_SLIM_RPC", raising=False)
    with pytest.raises(BadInputError, match="tracker"):
        RpcBackend(fake)
