"""Compare int8 forms of SlimPajama against fp32 in ONNX Runtime on this machine (issue 5).

Builds every form in edge_slim.aot.quantize.slimpajama.FORMS from one fp32 bundle, then times all of them
in one process, at 1 and 2 threads, in one of two harnesses (`edge-slim bench` adds a third for
bundles: one session at a time, which is how the shipped int8 is compared with fp32 in BENCHMARKS.md):
- interleaved (default): each round runs every model once, in a fresh random order; caches hold the
  other models' weights in between, as in an app that does other work between calls;
- --block N: N consecutive calls per model per round (warm caches, ORT's thread pool left spinning as by
  default; the first calls of each block are not counted).
Prints and optionally writes: median and minimum ms per form, their ratios to fp32, the median of the
per-round ratios (each round's int8 block against the same round's fp32 block, which cancels this
machine's drift) with its 10th-90th percentile, model size, the CPU's lscpu identity and flags (ratios
differ between CPUs) and how much a second thread speeds up a plain fp32 MatMul (benchmarks/machine.py).

    python benchmarks/quantize_forms.py --model edge_slim/models/slimpajama-tiny --rounds 400 --json out.json
    python benchmarks/quantize_forms.py --forms none --int8 edge_slim/models/slimpajama-tiny-int8 --block 10 --repeat 5

--int8 adds existing int8 bundles (the shipped one) beside the built forms (--forms none: only those);
--repeat K times everything K times in a row and reports the median ratio and its range, because this
machine's speed drifts by tens of percent within minutes.
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

import edge_slim
from edge_slim.aot.quantize import slimpajama as Q
from edge_slim.runtime.bench import paired_ratio
from edge_slim.runtime.machine import cpu_info, describe
from machine import thread_scaling


def make_session(path: Path, threads: int, spin: bool) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    if threads > 1 and not spin:
        # interleaved sessions: an idle pool that keeps spinning steals the core from the session being timed
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def bench(models: dict[str, Path], feeds: list[dict], threads: int, rounds: int, block: int = 1,
          warmup: int | None = None) -> dict:
    """Time every model, `rounds` rounds in a fresh random order each; per model: p50, min, their ratios to fp32,
    and the median (and 10th-90th percentile) of the per-round ratios to fp32, which cancel the slow drift.
    All sessions stay loaded, so their weights share the caches."""
    warmup = (20 if block == 1 else 2) if warmup is None else warmup
    spin = block > 1
    sess = {k: make_session(p, threads, spin) for k, p in models.items()}
    times = {k: [] for k in models}
    per_round = {k: [] for k in models}
    names = list(models)
    skip = 0 if block == 1 else max(1, block // 10)   # calls that still pay for the switch between models
    for r in range(warmup + rounds):
        random.shuffle(names)
        for k in names:
            s = sess[k]
            got = []
            for i in range(block):
                f = feeds[(r * block + i) % len(feeds)]
                t = time.perf_counter()
                s.run(None, f)
                if i >= skip:
                    got.append((time.perf_counter() - t) * 1000)
            if r >= warmup:
                times[k] += got
                per_round[k].append(float(np.median(got)))
    med0, min0 = np.median(times["fp32"]), np.min(times["fp32"])
    return {k: {"p50_ms": round(float(np.median(v)), 4), "min_ms": round(float(np.min(v)), 4),
                "p50_ratio": round(float(np.median(v) / med0), 3), "min_ratio": round(float(np.min(v) / min0), 3),
                **paired_ratio(per_round[k], per_round["fp32"])}
            for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="fp32 bundle (default: the shipped SlimPajama-Tiny)")
    ap.add_argument("--forms", default=",".join(Q.FORMS), help="comma-separated forms")
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--block", type=int, default=1, help="consecutive calls per model per round (1 = interleaved)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--calib-samples", type=int, default=50)
    ap.add_argument("--fuse", choices=["both", "on", "off"], default="both",
                    help="also (or only) build from the graph with parallel linears fused (fuse_parallel_linears)")
    ap.add_argument("--int8", action="append", default=[], help="an existing int8 bundle to time as well")
    ap.add_argument("--repeat", type=int, default=1, help="time everything this many times in a row")
    ap.add_argument("--json", default=None, help="write the results here")
    a = ap.parse_args()
    s = edge_slim.load(a.model)
    fp32 = s.bundle.model_path
    feeds = Q.scene_feeds(s, a.calib_samples)
    with tempfile.TemporaryDirectory(prefix="edge-slim-bench-") as tmp:
        models = {"fp32": fp32}
        sources = {"": fp32}
        if a.fuse in ("both", "on"):
            import onnx
            g, n = Q.fuse_parallel_linears(onnx.load(str(fp32)))
            onnx.save(g, str(Path(tmp) / "fp32-fused.onnx"))
            models["fp32+fused"] = sources["+fused"] = Path(tmp) / "fp32-fused.onnx"
            if a.fuse == "on":
                del sources[""]
        for d in a.int8:
            models[Path(d).name] = edge_slim.load(d).bundle.model_path
        for name in [f for f in a.forms.split(",") if f != "none"]:
            for tag, src in sources.items():
                (Path(tmp) / f"cache{tag}").mkdir(exist_ok=True)
                models[name + tag] = Q.build(src, Path(tmp) / f"{name}{tag}.onnx", Q.FORMS[name], feeds,
                                             cache_dir=Path(tmp) / f"cache{tag}")
        sizes = {k: p.stat().st_size for k, p in models.items()}
        res = {"cpu": cpu_info(), "onnxruntime": ort.__version__, "rounds": a.rounds, "block": a.block,
               "repeat": a.repeat, "model": str(s.bundle.path),
               "size_ratio": {k: round(v / sizes["fp32"], 4) for k, v in sizes.items()},
               "thread_scaling": thread_scaling(), "threads": {}}
        for t in (int(x) for x in a.threads.split(",")):
            res["threads"][t] = [bench(models, feeds[:30], t, a.rounds, a.block) for _ in range(a.repeat)]
    print(describe(res["cpu"]))
    print("fp32 MatMul speedup from threads (m,k,n: speedup per thread count):",
          "; ".join(f"{r['mkn']}: {r['speedup']}" for r in res["thread_scaling"]))
    print(f"ORT {res['onnxruntime']}, {a.repeat} x {a.rounds} rounds, "
          + ("interleaved" if a.block == 1 else f"blocks of {a.block} calls"))
    print(f"{'form':22s} {'size':>6s} "
          + " ".join(f"{t}t p50 ms  p50 ratio [range]  min ratio  paired [p10-p90]" for t in res["threads"]))

    def cell(runs, k):
        r = sorted(x[k]["p50_ratio"] for x in runs)
        med = lambda key: float(np.median([x[k][key] for x in runs]))
        lo, hi = (float(np.median([x[k]["paired_p10_p90"][i] for x in runs])) for i in (0, 1))
        return (f"{med('p50_ms'):9.3f} {np.median(r):9.3f} [{r[0]:.2f}-{r[-1]:.2f}] {med('min_ratio'):10.3f}"
                f" {med('paired_ratio'):8.3f} [{lo:.2f}-{hi:.2f}]")
    for k in models:
        print(f"{k:22s} {res['size_ratio'][k]:6.3f} " + " ".join(cell(res["threads"][t], k) for t in res["threads"]))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
