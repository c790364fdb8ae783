"""Side-by-side latency on this device (`edge-slim bench`): the numbers that decide which bundle, backend
and thread count to ship, measured where it will run.

Three choices make the numbers comparable on a noisy machine:
- Paired rounds. Boards throttle and shared VMs drift by tens of percent within minutes, so two models
  timed one after the other cannot be compared. Each round runs every configuration once, for a block
  of consecutive calls, in a fresh random order; each row's round median divided by its baseline's
  median in the same round cancels the drift. The report gives the median of these paired ratios and
  their 10th-90th percentiles, beside plain p50/p90/min.
- One session at a time. An idle ONNX Runtime thread pool keeps spinning after a call and takes a core
  from whichever session runs next, and an app usually loads one model; so each block loads its
  configuration (not timed), warms it, times its calls and closes it before the next one loads.
  `together` adds the other case, an app with several models: in each round, at a random place among
  the blocks, every configuration is loaded at once (so edge_slim.runtime.threads' rule for several
  live sessions applies) and they are called in turn, one call each, `block` turns.
- A row's baseline is the first configuration with the same thread count, timing the same call, alone
  or together alike; with the default list (fp32, then int8) every ratio is int8 / fp32 at equal threads.
  Rows also carry one ratio to their own configuration (`vs`): a full `ask` to its model call,
  N questions to one, together to alone, paired in the same rounds.

What is timed (`calls`):
- "model": the backend's model call on prepared inputs (image tensor + tokens), what `ask` spends in
  the model; no image decoding, tokenizing or answer decoding.
- "ask": the full call an app makes, `Session.ask(path of a PNG, question) -> Answer`, through the public
  API: file read, PNG decode, preprocessing, tokenizing, the model, answer decoding.
- with `questions` N >= 2, also "ask xN": one image and N questions in one `ask` call, against "ask".
- "describe": `Session.describe(path of a PNG) -> Description` (bundles with a describe head): the image
  encoded once, then one decoder call per generated token.
Inputs are generated scenes (scene stream BENCH_SEED; one question, caption and phrase each for the model
call, the scene's questions for ask), rotated through the block; PNGs are written to a temporary folder at
`image_px` pixels (default: the model's input size, so preprocessing does not resize).
"""
from __future__ import annotations

import gc
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import BadInputError
from .machine import cpu_info

BENCH_SEED = 3        # its own scene stream: training uses 0, evaluation 1, calibration 2
CALLS = ("model", "ask", "describe")
TIMED = {"model": "backend model call on prepared inputs",
         "ask": "Session.ask(path of a PNG, question) -> Answer (public API, full call)",
         "describe": "Session.describe(path of a PNG) -> Description (image encoded once, greedy kv-cache decoding)"}


@dataclass(frozen=True)
class Config:
    """One thing to time: a bundle (path, or None for a shipped precision), a backend and a thread count."""
    model: str | None
    precision: str | None = None
    backend: str = "auto"
    threads: int | None = None      # None: the backend's own default

    def load(self):
        import edge_slim
        from .own_model import OwnModel, is_own_model
        if is_own_model(self.model):  # a compiled/quantized own model or a bare .onnx: model calls only
            return OwnModel(self.model, self.backend, self.threads)
        return edge_slim.load(self.model, backend=self.backend, threads=self.threads, precision=self.precision)


@dataclass(frozen=True)
class Row:
    """One line of the report: a configuration, the call it times, alone or with all the others alive."""
    config: int
    call: str             # "model", "ask" or "ask xN"
    together: bool = False


def _stats(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"p50_ms": round(float(np.median(a)), 4), "p90_ms": round(float(np.percentile(a, 90)), 4),
            "min_ms": round(float(a.min()), 4), "calls": int(a.size)}


def _close(s) -> None:
    s.close()
    del s
    gc.collect()


class _Inputs:
    """What each call kind is given: prepared model feeds, and PNG paths with their scene's questions."""

    def __init__(self, session, samples: int, image_px: int | None, questions: int, folder: Path):
        from ..scenes import generate as G
        from ..scenes.render import render
        self.asks: list[tuple[str, list[str]]] = []
        self.questions = questions
        if not session.manifest.get("tokenizer"):          # an own model: random tensors of its input shapes
            from .own_model import random_feeds
            self.feeds = random_feeds(session.manifest["inputs"], samples, BENCH_SEED)
            return
        self.feeds = _feeds(session, samples)
        size = image_px or session.size
        for i in range(samples):
            s = G.sample(BENCH_SEED, i)
            path = folder / f"scene{i}.png"
            render(s["scene"], size).save(path)
            qs = [q["text"] for q in s["questions"]]
            self.asks.append((str(path), qs))

    def call(self, session, call: str, i: int) -> Callable[[], object]:
        if call == "model":
            f = self.feeds[i % len(self.feeds)]
            return lambda: session.backend.run(f)
        path, qs = self.asks[i % len(self.asks)]
        if call == "describe":
            return lambda: session.describe(path)
        if call == "ask":
            q = qs[(i // len(self.asks)) % len(qs)]
            return lambda: session.ask(path, q)
        many = [qs[k % len(qs)] for k in range(self.questions)]      # "ask xN"
        return lambda: session.ask(path, many)


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def bench(configs: list[Config], rounds: int = 20, block: int = 10, warmup: int = 3, samples: int = 4,
          calls: tuple[str, ...] = ("model",), questions: int = 0, together: bool = False,
          image_px: int | None = None, progress: Callable[[int], None] = lambda k: None) -> dict:
    """Time every configuration in paired rounds (see the module docstring); -> a JSON-ready report."""
    if not configs:
        raise BadInputError("nothing to benchmark: give at least one model")
    if rounds < 1 or block < 1 or warmup < 0 or samples < 1:
        raise BadInputError("rounds, block and samples must be >= 1 and warmup >= 0")
    if not calls or any(c not in CALLS for c in calls):
        raise BadInputError(f"calls must be some of {', '.join(CALLS)}")
    if questions == 1 or questions < 0:
        raise BadInputError("questions must be >= 2 (one question is the 'ask' call itself)")
    if together and len(configs) < 2:
        raise BadInputError("--together needs at least two configurations to run side by side")
    kinds = list(dict.fromkeys([*calls, *(["ask", f"ask x{questions}"] if questions else [])]))
    load_before = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    with tempfile.TemporaryDirectory(prefix="edge-slim-bench-") as tmp:
        inputs, meta, first_spec = None, [], []
        for c in configs:                        # every configuration must load before anything is timed
            s = c.load()
            if s.manifest["inputs"] is None and inputs is not None:   # a bare .onnx: the first model's inputs
                s.manifest["inputs"] = [{"name": n, "shape": list(sh), "dtype": d} for n, sh, d in first_spec]
            if s.manifest["inputs"] is None:
                raise BadInputError(f"{c.model}: a bare .onnx takes its input shapes from the compiled model "
                                    "benched with it: name the compiled bundle first")
            if "describe" in kinds and not s.manifest.get("describe"):
                raise BadInputError(f"{s.bundle.path} has no describe head: leave describe out of --call")
            if not s.manifest.get("tokenizer") and kinds != ["model"]:
                raise BadInputError(f"{s.bundle.path} is not a SlimPajama bundle (no ask call): pass --call model")
            spec = [(i["name"], tuple(i["shape"]), i["dtype"]) for i in s.manifest["inputs"]]
            if inputs is None:
                inputs, first_spec = _Inputs(s, samples, image_px, questions, Path(tmp)), spec
            elif spec != first_spec:
                raise BadInputError(f"{s.bundle.path} takes other inputs ({spec}) than {meta[0]['model']} "
                                    f"({first_spec}); bench compares models of one input format")
            m = {"model": str(s.bundle.path), "name": s.manifest.get("name") or s.bundle.path.name,
                 "format": s.manifest["format"], "target": _target_name(s.manifest),
                 "precision": s.manifest.get("precision"), "backend": s.backend_name, "threads": c.threads}
            meta.append({"label": f"{_model(m)} {m['backend']} {m['threads'] or 'default'}t", **m})
            _close(s)
        rows = [Row(j, k, t) for t in ([False, True] if together else [False]) for j in range(len(configs))
                for k in kinds]
        times = {r: [] for r in rows}
        per_round = {r: [] for r in rows}
        rng = random.Random(0)
        for _ in range(rounds):
            phases: list[int | None] = list(range(len(configs))) + ([None] if together else [])
            rng.shuffle(phases)
            for j in phases:
                got = _alone(j, configs[j], inputs, kinds, block, warmup) if j is not None else \
                    _together(configs, inputs, kinds, block, warmup, rng)
                for (jj, k), ms in got.items():
                    r = Row(jj, k, j is None)
                    times[r] += ms
                    per_round[r].append(float(np.median(ms)))
            progress(1)
    results = [_result(r, rows, meta, configs, times, per_round) for r in rows]
    return {"cpu": cpu_info(), "load_average_1min": load_before,
            "timed": {k: TIMED.get(k, f"Session.ask(path of a PNG, {questions} questions) -> [Answer]")
                      for k in kinds},
            "rounds": rounds, "block": block, "warmup": warmup, "inputs": len(inputs.feeds),
            "image_px": image_px, "questions": questions or None, "together": together,
            "configs": [asdict(c) for c in configs], "results": results}


def _alone(j: int, config: Config, inputs: _Inputs, kinds: list[str], block: int, warmup: int) -> dict:
    """Configuration j alone: load, warm, a block of each call kind, close."""
    s = config.load()
    got = {}
    for k in kinds:
        for i in range(warmup):      # a fresh session's first calls allocate and prepack weights
            inputs.call(s, k, i)()
        got[(j, k)] = [_timed(inputs.call(s, k, i)) for i in range(block)]
    _close(s)
    return got


def _together(configs: list[Config], inputs: _Inputs, kinds: list[str], block: int, warmup: int,
              rng: random.Random) -> dict:
    """Every configuration alive at once, called in turn (one call each, a fresh order per round)."""
    sessions = [c.load() for c in configs]
    order = list(range(len(configs)))
    rng.shuffle(order)
    got = {}
    for k in kinds:
        for i in range(warmup):
            for j in order:
                inputs.call(sessions[j], k, i)()
        ms = {j: [] for j in order}
        for i in range(block):
            for j in order:
                ms[j].append(_timed(inputs.call(sessions[j], k, i)))
        got.update({(j, k): v for j, v in ms.items()})
    for s in sessions:
        s.close()
    del sessions
    gc.collect()
    return got


def _own_baseline(r: Row, rows: list[Row]) -> tuple[Row, str] | None:
    """The row of the same configuration this row is compared with: together -> alone, ask xN -> ask,
    ask -> model call (when it was timed)."""
    if r.together:
        return Row(r.config, r.call, False), "alone"
    if r.call.startswith("ask x"):
        return Row(r.config, "ask", False), "1 question"
    if r.call == "ask" and Row(r.config, "model", False) in rows:
        return Row(r.config, "model", False), "model call"
    return None


def _result(r: Row, rows: list[Row], meta: list[dict], configs: list[Config], times: dict, per_round: dict) -> dict:
    j0 = next(j for j, c in enumerate(configs) if c.threads == configs[r.config].threads)
    base = Row(j0, r.call, r.together)
    out = {**meta[r.config], "label": _label(meta[r.config], r), "config_label": meta[r.config]["label"],
           "call": r.call, "together": r.together, **_stats(times[r]), "baseline": _label(meta[j0], base),
           "p50_ratio": round(float(np.median(times[r]) / np.median(times[base])), 3),
           **paired_ratio(per_round[r], per_round[base])}
    own = _own_baseline(r, rows)
    if own is not None:
        out["vs"] = {"of": own[1], **paired_ratio(per_round[r], per_round[own[0]])}
    return out


def _target_name(manifest: dict) -> str | None:
    """The artifact's target; for a variant set, the set's and the variant loaded (x86-64-multi:x86-64-avx512)."""
    name = (manifest.get("target") or {}).get("name")
    of = manifest.get("variant_of")
    return f"{of['target']}:{name}" if of and name else name


def _label(m: dict, r: Row) -> str:
    return f"{m['label']} {r.call}" + (" together" if r.together else "")


def paired_ratio(round_ms: list[float], baseline_round_ms: list[float]) -> dict:
    """Median, and 10th-90th percentiles, of the per-round ratios to the baseline's same rounds."""
    r = np.asarray(round_ms) / np.asarray(baseline_round_ms)
    return {"paired_ratio": round(float(np.median(r)), 3),
            "paired_p10_p90": [round(float(x), 3) for x in np.percentile(r, [10, 90])]}


def _feeds(session, samples: int) -> list[dict]:
    from ..scenes.feeds import scene_feeds
    return scene_feeds(session, samples, BENCH_SEED)


def _model(m: dict) -> str:
    """A bundle's name in the report; compiled bundles of one model differ by their target."""
    return f"{m['name']} ({m['target']})" if m.get("target") else m["name"]


def _timed_name(r: dict) -> str:
    name = {"model": "model call", "ask": "ask", "describe": "describe"}.get(r["call"], r["call"].replace("ask x", "ask, ") + " questions")
    return name + (", together" if r["together"] else "")


def table(report: dict) -> str:
    """The report as a Markdown table, machine first (paste into BENCHMARKS.md)."""
    from .machine import describe
    timed = "; ".join(f"{k}: {v}" for k, v in report["timed"].items())
    rows = [describe(report["cpu"]),
            f"{report['rounds']} rounds x {report['block']} calls per configuration"
            + (", alone and all sessions alive together (called in turn)" if report.get("together") else
               ", one session at a time")
            + f"; timed: {timed}; ratios are to the first configuration with the same threads and call"
            + (f"; PNGs of {report['image_px']} px" if report.get("image_px") else "")
            + (f"; load average {report['load_average_1min']} at the start" if report.get("load_average_1min") is not None else ""),
            "| model | precision | backend | threads | timed | p50 ms | p90 ms | min ms | p50 ratio "
            "| paired ratio [p10-p90] | vs own [p10-p90] |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        lo, hi = r["paired_p10_p90"]
        own = ""
        if "vs" in r:
            v = r["vs"]
            own = f"{v['paired_ratio']:.3f} [{v['paired_p10_p90'][0]:.2f}-{v['paired_p10_p90'][1]:.2f}] of {v['of']}"
        rows.append(f"| {_model(r)} | {r['precision']} | {r['backend']} | {r['threads'] or 'default'} "
                    f"| {_timed_name(r)} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | {r['min_ms']:.3f} "
                    f"| {r['p50_ratio']:.3f} | {r['paired_ratio']:.3f} [{lo:.2f}-{hi:.2f}] | {own} |")
    return "\n".join(rows)
