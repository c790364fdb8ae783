"""Side-by-side model latency on this device (`edge-slim bench`): the numbers that decide which bundle,
backend and thread count to ship, measured where it will run.

Three choices make the numbers comparable on a noisy machine:
- Paired rounds. Boards throttle and shared VMs drift by tens of percent within minutes, so two models
  timed one after the other cannot be compared. Each round runs every configuration once, for a block
  of consecutive calls, in a fresh random order; each configuration's round median divided by its
  baseline's median in the same round cancels the drift. The report gives the median of these paired
  ratios and their 10th-90th percentiles, beside plain p50/p90/min.
- One session at a time. An idle ONNX Runtime thread pool keeps spinning after a call and takes a core
  from whichever session runs next, and an app loads one model; so each block loads its configuration
  (not timed), warms it, times its calls and drops it before the next configuration loads.
- A configuration's baseline is the first configuration with the same thread count, so with the
  default list (fp32, then int8) every ratio is int8 / fp32 at equal threads.

What is timed: the backend's model call on prepared inputs (image tensor + tokens), which is what `ask`
spends in the model; image decoding, tokenizing and answer decoding are not in it. Inputs are generated
scenes (one question, caption and phrase each), rotated through the block.
"""
from __future__ import annotations

import gc
import os
import random
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from ..errors import BadInputError
from .machine import cpu_info

BENCH_SEED = 3        # its own scene stream: training uses 0, evaluation 1, calibration 2


@dataclass(frozen=True)
class Config:
    """One thing to time: a bundle (path, or None for a shipped precision), a backend and a thread count."""
    model: str | None
    precision: str | None = None
    backend: str = "auto"
    threads: int | None = None      # None: the backend's own default

    def load(self):
        import edge_slim
        return edge_slim.load(self.model, backend=self.backend, threads=self.threads, precision=self.precision)


def _stats(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"p50_ms": round(float(np.median(a)), 4), "p90_ms": round(float(np.percentile(a, 90)), 4),
            "min_ms": round(float(a.min()), 4), "calls": int(a.size)}


def bench(configs: list[Config], rounds: int = 20, block: int = 10, warmup: int = 3, samples: int = 4,
          progress: Callable[[int], None] = lambda k: None) -> dict:
    """Time every configuration in paired rounds (see the module docstring); -> a JSON-ready report."""
    if not configs:
        raise BadInputError("nothing to benchmark: give at least one model")
    if rounds < 1 or block < 1 or warmup < 0 or samples < 1:
        raise BadInputError("rounds, block and samples must be >= 1 and warmup >= 0")
    load_before = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    feeds, inputs, meta = None, None, []
    for c in configs:                            # every configuration must load before anything is timed
        s = c.load()
        spec = [(i["name"], tuple(i["shape"]), i["dtype"]) for i in s.manifest["inputs"]]
        if inputs is None:
            inputs, feeds = spec, _feeds(s, samples)
        elif spec != inputs:
            raise BadInputError(f"{s.bundle.path} takes other inputs ({spec}) than {meta[0]['model']} "
                                f"({inputs}); bench compares models of one input format")
        m = {"model": str(s.bundle.path), "name": s.manifest.get("name") or s.bundle.path.name,
             "format": s.manifest["format"], "target": (s.manifest.get("target") or {}).get("name"),
             "precision": s.manifest.get("precision"), "backend": s.backend_name, "threads": c.threads}
        meta.append({"label": f"{_model(m)} {m['backend']} {m['threads'] or 'default'}t", **m})
        del s
    gc.collect()
    base = [next(j for j, d in enumerate(configs) if d.threads == c.threads) for c in configs]
    times: list[list[float]] = [[] for _ in configs]
    per_round: list[list[float]] = [[] for _ in configs]
    order = list(range(len(configs)))
    rng = random.Random(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for j in order:
            s = configs[j].load()
            for i in range(warmup):      # a fresh session's first calls allocate and prepack weights
                s.backend.run(feeds[i % len(feeds)])
            got = []
            for i in range(block):
                f = feeds[i % len(feeds)]
                t0 = time.perf_counter()
                s.backend.run(f)
                got.append((time.perf_counter() - t0) * 1000)
            del s
            gc.collect()
            times[j] += got
            per_round[j].append(float(np.median(got)))
        progress(1)
    results = [{**m, **_stats(times[j]), "baseline": meta[base[j]]["label"],
                "p50_ratio": round(float(np.median(times[j]) / np.median(times[base[j]])), 3),
                **paired_ratio(per_round[j], per_round[base[j]])} for j, m in enumerate(meta)]
    return {"cpu": cpu_info(), "load_average_1min": load_before, "timed": "backend model call on prepared inputs",
            "rounds": rounds, "block": block,
            "warmup": warmup, "inputs": len(feeds), "configs": [asdict(c) for c in configs], "results": results}


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


def table(report: dict) -> str:
    """The report as a Markdown table, machine first (paste into BENCHMARKS.md)."""
    from .machine import describe
    rows = [describe(report["cpu"]),
            f"{report['rounds']} rounds x {report['block']} calls per configuration, one session at a time; "
            f"timed: {report['timed']}; ratios are to the first configuration with the same threads"
            + (f"; load average {report['load_average_1min']} at the start" if report.get("load_average_1min") is not None else ""),
            "| model | precision | backend | threads | p50 ms | p90 ms | min ms | p50 ratio | paired ratio [p10-p90] |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        lo, hi = r["paired_p10_p90"]
        rows.append(f"| {_model(r)} | {r['precision']} | {r['backend']} | {r['threads'] or 'default'} | {r['p50_ms']:.3f} "
                    f"| {r['p90_ms']:.3f} | {r['min_ms']:.3f} | {r['p50_ratio']:.3f} | {r['paired_ratio']:.3f} "
                    f"[{lo:.2f}-{hi:.2f}] |")
    return "\n".join(rows)
