"""Several sessions in one process: the rule that keeps their thread pools from taking each other's cores.

ONNX Runtime's and TVM's worker threads keep spinning after a call, so that the next call finds them
awake. Alone that is what makes back-to-back calls fast. With two live sessions called in turn (a robot
loop running a detector and SlimPajama on every frame) the idle pool of one spins on the core the other
one's call needs: TVM's parallel kernels then wait for a worker the scheduler has not run (measured:
TVM `ask` p50 about 11x its time alone next to an ONNX Runtime session, issue 19).

The rule, applied to every live session whenever the number of live sessions crosses 1 <-> 2:
- one live session: ONNX Runtime keeps its defaults (a spinning pool);
- two or more: ONNX Runtime sessions get `session.force_spinning_stop=1`: their workers still spin inside
  a call, between the graph's kernels, and stop as soon as the call returns.
- TVM's pool always spins for at most TVM_SPIN_COUNT yields (~1 ms idle) instead of TVM's default of
  300,000 (measured here: ~170 ms of a core after every call), enough to bridge the gaps between the
  kernels of one call and between back-to-back calls. It cannot follow the count: libtvm_runtime reads
  TVM_THREAD_POOL_SPIN_COUNT once per process, when its first pool starts, and an app (or `edge-slim
  bench`) usually opens its first TVM session alone, so a count chosen then would be wrong for every
  session opened later. A value the app set in TVM_THREAD_POOL_SPIN_COUNT is never overridden.

How each runtime takes it:
- ONNX Runtime reads its spinning options only when a session is created, so an ORT backend rebuilds
  its InferenceSession (one load, ~0.1-0.3 s, in the thread that opened or closed the other session)
  when its options change. Calls in flight finish on the old session.
- Sessions with one thread have no worker pool to spin (ORT's call runs in the caller): they count as
  live, as they need a free core, but their own options do not change.

Sessions on the ort and tvm backends count (the NumPy fallback has no pool of its own to configure).
A session stops counting when it is closed (`Session.close()`, or leaving `with edge_slim.load() as s:`)
or garbage-collected.
"""
from __future__ import annotations

import itertools
import os
import threading
import weakref
from dataclasses import dataclass, field

TVM_SPIN_ENV = "TVM_THREAD_POOL_SPIN_COUNT"
TVM_DEFAULT_SPIN_COUNT = 300_000      # libtvm_runtime's own default (thread_pool.cc, kDefaultSpinCount)
TVM_SPIN_COUNT = 1_000                # sched_yield calls: ~0.5-2 ms on the project's x86 VMs
ORT_SHARED_CONFIG = {"session.force_spinning_stop": "1"}


@dataclass(frozen=True)
class Policy:
    """What every runtime gets while `live` sessions are alive in this process."""
    live: int
    ort_config: dict = field(default_factory=dict)   # ORT session config entries (add_session_config_entry)
    tvm_spin_count: int = TVM_SPIN_COUNT              # read by TVM once, when its first pool starts

    @property
    def shared(self) -> bool:
        return self.live > 1


def policy(live: int) -> Policy:
    """The rule itself (see the module docstring)."""
    return Policy(live, dict(ORT_SHARED_CONFIG) if live > 1 else {})


def ort_config(p: Policy, threads: int | None, cores: int) -> dict:
    """ORT session config entries for a session of `threads` intra-op threads (None: one per core)."""
    pool = int(threads) if threads else cores
    return dict(p.ort_config) if pool > 1 else {}


class Lease:
    """One live session's place in the count; `close()` (idempotent) or garbage collection gives it up."""

    def __init__(self, key: int, registry: Registry, owner):
        self.key, self._closed = key, False
        self._finalizer = weakref.finalize(owner, registry._leave, key)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._finalizer()


class Registry:
    """The live sessions of this process and the policy they run under.

    A member may define `apply_threads_policy(policy)`, called (in the thread that opened or closed the
    other session) whenever a change in the count changes the policy.
    """

    def __init__(self):
        self._lock = threading.RLock()
        self._members: dict[int, weakref.ref] = {}
        self._keys = itertools.count()

    def join(self, owner) -> Lease:
        """Count `owner` as a live session; the others are told if the policy changes."""
        with self._lock:
            lease = Lease(next(self._keys), self, owner)
            before = policy(len(self._members))
            self._members[lease.key] = weakref.ref(owner)
            self._notify(before, skip=owner)
            return lease

    def _leave(self, key: int) -> None:
        with self._lock:
            if self._members.pop(key, None) is not None:
                self._notify(policy(len(self._members) + 1))

    def _notify(self, before: Policy, skip=None) -> None:
        now = self.current()
        if (now.ort_config, now.tvm_spin_count) == (before.ort_config, before.tvm_spin_count):
            return
        for ref in list(self._members.values()):
            m = ref()
            if m is not None and m is not skip and hasattr(m, "apply_threads_policy"):
                m.apply_threads_policy(now)

    def live(self) -> int:
        with self._lock:
            return len(self._members)

    def current(self) -> Policy:
        return policy(self.live())


SESSIONS = Registry()     # the process's live sessions (the runtimes' pools are process-wide too)


def tvm_spin_count(p: Policy) -> int:
    """The spin count TVM's pool will read when it starts: the app's TVM_THREAD_POOL_SPIN_COUNT if it set
    one, else the policy's. Sets the variable (putenv: libtvm_runtime reads it with getenv)."""
    os.environ.setdefault(TVM_SPIN_ENV, str(p.tvm_spin_count))
    try:
        return int(os.environ.get(TVM_SPIN_ENV, TVM_DEFAULT_SPIN_COUNT))
    except ValueError:
        return TVM_DEFAULT_SPIN_COUNT
