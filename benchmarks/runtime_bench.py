"""Side-by-side latency of the runtime backends on one bundle, interleaved in one process.

    python benchmarks/runtime_bench.py [--model DIR] [--backends ort,numpy] [--threads 1,2] [--runs 200]
                                       [--compiled DIR ...]

--bundle adds another ONNX bundle run by the first backend (old vs new export side by side);
--compiled adds a compiled bundle (from `edge-slim compile`), run by the tvm backend, beside the
ONNX bundle's backends: that is how BENCHMARKS.md compares TVM artifacts with ONNX Runtime.
Each round runs every (backend, threads) pair once on the same inputs, in a rotating order, so a
noisy machine slows all of them alike; the table reports p50, p90 and min per pair and the ratio of
medians (and of minima) to the first pair. Prints the CPU model and its vector flags.
"""
import argparse
import json
import platform
import subprocess
import time

import numpy as np

import edge_slim


def cpu_info() -> dict:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = info.get("Flags", "").split()
    return {"model": info.get("Model name", platform.processor()).strip(), "cpus": info.get("CPU(s)", "").strip(),
            "vector_flags": [f for f in flags if f.startswith(("avx", "amx", "fma")) or "vnni" in f]}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--backends", default="ort,numpy")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--compiled", action="append", default=[], help="a compiled bundle to add (tvm backend)")
    ap.add_argument("--bundle", action="append", default=[],
                    help="another ONNX bundle to add, run by the first of --backends (e.g. an older export)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    threads = [int(t) for t in a.threads.split(",")]
    # a pair is (label, threads); the label names the backend, and the artifact for compiled bundles
    models = {b: (a.model, b) for b in a.backends.split(",")}
    first = a.backends.split(",")[0]
    models.update({f"{first}:{d.rstrip('/').split('/')[-1]}": (d, first) for d in a.bundle})
    models.update({f"tvm:{c.rstrip('/').split('/')[-1]}": (c, "tvm") for c in a.compiled})
    pairs = [(label, t) for label in models for t in threads]
    sessions = {p: edge_slim.load(models[p[0]][0], backend=models[p[0]][1], threads=p[1]) for p in pairs}
    s0 = sessions[pairs[0]]
    x, _ = s0.prepare_image("examples/images/scene0.png")
    feeds = {"image": x, "tokens": s0._tokens("what color is the large cylinder?", "ask")}
    times = {p: [] for p in pairs}
    for p in pairs:  # warm-up
        for _ in range(5):
            sessions[p].backend.run(feeds)
    for r in range(a.runs):
        for k in range(len(pairs)):
            p = pairs[(r + k) % len(pairs)]
            t0 = time.perf_counter()
            sessions[p].backend.run(feeds)
            times[p].append((time.perf_counter() - t0) * 1000)
    base = pairs[0]
    rows = []
    for p in pairs:
        t = np.array(times[p])
        rows.append({"backend": p[0], "threads": p[1], "p50_ms": round(float(np.median(t)), 3),
                     "p90_ms": round(float(np.percentile(t, 90)), 3), "min_ms": round(float(t.min()), 3),
                     "ratio_p50": round(float(np.median(t) / np.median(times[base])), 2),
                     "ratio_min": round(float(t.min() / np.min(times[base])), 2)})
    res = {"cpu": cpu_info(), "runs": a.runs, "model": str(s0.bundle.path), "rows": rows}
    if a.json:
        print(json.dumps(res, indent=1))
        return
    print(f"CPU: {res['cpu']['model']} ({res['cpu']['cpus']} CPUs); flags: {' '.join(res['cpu']['vector_flags'])}")
    print("| backend | threads | p50 ms | p90 ms | min ms | p50 / first | min / first |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['threads']} | {r['p50_ms']} | {r['p90_ms']} | {r['min_ms']} | {r['ratio_p50']} | {r['ratio_min']} |")


if __name__ == "__main__":
    main()
