"""Several sessions in one process (edge_slim.runtime.threads): which options each runtime gets with one
and with two live sessions, that they revert when one closes, and that idle pools then really stop.

The real-backend checks run in a fresh process each, so sessions other test modules keep alive do not
change the count. No test times a call.
"""
import gc
import json
import os
import subprocess
import sys
import textwrap

import pytest

from edge_slim.runtime import threads as T
from edge_slim.runtime.backends import available


def test_policy_one_vs_two_live_sessions():
    alone, two, three = T.policy(1), T.policy(2), T.policy(3)
    assert not alone.shared and alone.ort_config == {}
    assert two.shared and two.ort_config == {"session.force_spinning_stop": "1"} and three.ort_config == two.ort_config
    # TVM reads its spin count once per process, so it is bounded whatever the count
    assert alone.tvm_spin_count == two.tvm_spin_count == T.TVM_SPIN_COUNT < T.TVM_DEFAULT_SPIN_COUNT


def test_one_thread_ort_sessions_have_no_pool_to_configure():
    assert T.ort_config(T.policy(2), threads=1, cores=4) == {}
    assert T.ort_config(T.policy(2), threads=None, cores=1) == {}
    assert T.ort_config(T.policy(2), threads=None, cores=2) == T.ORT_SHARED_CONFIG
    assert T.ort_config(T.policy(1), threads=4, cores=4) == {}


class Member:
    """A live session as the registry sees it: it records each policy it is told to apply."""

    def __init__(self):
        self.told = []

    def apply_threads_policy(self, p):
        self.told.append(p.live)


def test_registry_tells_members_when_the_count_crosses_one_and_reverts():
    reg = T.Registry()
    a, b, c = Member(), Member(), Member()
    la = reg.join(a)
    assert reg.live() == 1 and a.told == []
    lb = reg.join(b)
    assert reg.live() == 2 and reg.current().shared
    assert a.told == [2] and b.told == []          # the one already open is told; the new one reads current()
    lc = reg.join(c)
    assert a.told == [2] and b.told == []          # 2 -> 3 changes nothing: nobody is rebuilt
    lc.close()
    lc.close()                                     # idempotent
    assert reg.live() == 2 and a.told == [2]
    lb.close()
    assert reg.live() == 1 and not reg.current().shared and a.told == [2, 1]
    la.close()
    assert reg.live() == 0


def test_garbage_collected_session_stops_counting():
    reg = T.Registry()
    a, b = Member(), Member()
    reg.join(a)
    reg.join(b)
    assert reg.live() == 2
    del b
    gc.collect()
    assert reg.live() == 1 and a.told == [2, 1]


def test_app_spin_count_is_not_overridden(monkeypatch):
    monkeypatch.setenv(T.TVM_SPIN_ENV, "7")
    assert T.tvm_spin_count(T.policy(1)) == 7
    monkeypatch.delenv(T.TVM_SPIN_ENV)
    assert T.tvm_spin_count(T.policy(2)) == T.TVM_SPIN_COUNT and os.environ[T.TVM_SPIN_ENV] == str(T.TVM_SPIN_COUNT)


# In a fresh process: open sessions, report each backend's options, and the CPU time the process's other
# threads (the runtimes' workers) burn in the 0.3 s after a call (the least of three such windows).
PROBE = textwrap.dedent("""
    import json, os, sys, threading, time
    import numpy as np
    import edge_slim
    from edge_slim.runtime import threads as T

    def worker_cpu_ns():
        me, tot = str(threading.get_native_id()), 0
        for t in os.listdir("/proc/self/task"):
            if t != me:
                try:
                    tot += int(open(f"/proc/self/task/{t}/schedstat").read().split()[0])
                except OSError:
                    pass
        return tot

    def idle_ms(s):
        # the least of three call-then-idle windows: one stray wakeup of a worker on a busy machine
        # (seen: 14 ms once on CI) is noise, while a spinning pool burns its ~40 ms after every call
        f = {"image": np.zeros((1, 3, 96, 96), np.float32), "tokens": np.zeros((1, 16), np.int64)}
        windows = []
        for _ in range(3):
            for _ in range(3):
                s.backend.run(f)
            a = worker_cpu_ns(); time.sleep(0.3)
            windows.append((worker_cpu_ns() - a) / 1e6)
        return min(windows)

    def state(s):
        return {"config": getattr(s.backend, "config", None), "spin": getattr(s.backend, "spin_count", None)}

    f = {"image": np.zeros((1, 3, 96, 96), np.float32), "tokens": np.zeros((1, 16), np.int64)}
    out, models = {}, json.loads(sys.argv[1])
    ss = [edge_slim.load(m, threads=2) for m in models]
    first = ss[0].backend.run(f)["answer_logits"]
    out["together"] = [state(s) for s in ss]
    out["live"] = T.SESSIONS.live()
    out["idle_ms"] = [idle_ms(s) for s in ss]
    for s in ss[1:]:
        s.close()
    out["after_close"] = state(ss[0])
    out["live_after"] = T.SESSIONS.live()
    out["same_output"] = bool(np.array_equal(first, ss[0].backend.run(f)["answer_logits"]))
    print(json.dumps(out))
""")


def probe(models, env=None):
    e = {k: v for k, v in os.environ.items() if k != T.TVM_SPIN_ENV}
    p = subprocess.run([sys.executable, "-c", PROBE, json.dumps(models)], capture_output=True, text=True,
                       timeout=300, env={**e, **(env or {})})
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.splitlines()[-1])


needs_ort = pytest.mark.skipif(not available("ort"), reason="onnxruntime is not installed")
needs_schedstat = pytest.mark.skipif(not os.path.exists("/proc/self/schedstat"), reason="needs Linux schedstat")


@needs_ort
@needs_schedstat
def test_two_ort_sessions_stop_spinning_and_revert_when_one_closes():
    r = probe([None, None])
    assert r["live"] == 2 and r["live_after"] == 1
    assert [s["config"] for s in r["together"]] == [T.ORT_SHARED_CONFIG] * 2
    assert r["after_close"]["config"] == {}          # rebuilt with ORT's defaults again
    assert r["same_output"]                          # the rebuilt session computes the same
    # alone, ORT's workers spin ~30 ms of CPU after a call; with the rule they stop when it returns
    assert max(r["idle_ms"]) < 10, r["idle_ms"]


@needs_ort
@needs_schedstat
@pytest.mark.slow
def test_ort_and_tvm_sessions_together():
    pytest.importorskip("tvm", reason="the TVM compiler (apache-tvm) is not installed")
    from compile_helpers import compiled
    r = probe([None, str(compiled("x86-64"))])
    assert r["live"] == 2
    assert r["together"][0]["config"] == T.ORT_SHARED_CONFIG and r["together"][1]["spin"] == T.TVM_SPIN_COUNT
    # TVM's default spin (300,000 yields) burns ~170 ms of a core after each call here; bounded, ~1 ms
    assert max(r["idle_ms"]) < 10, r["idle_ms"]
    r = probe([str(compiled("x86-64"))], env={T.TVM_SPIN_ENV: "5"})
    assert r["together"][0]["spin"] == 5             # the app's own setting wins
