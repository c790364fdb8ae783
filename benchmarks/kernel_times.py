"""Where a compiled model's time goes, kernel by kernel: every PrimFunc the Relax `main` calls, built alone for
the target and timed with TVM's time_evaluator on random inputs of its shapes (warm caches, one thread unless
TVM_NUM_THREADS says otherwise), times its number of calls.

This is how the slow kernels of BENCHMARKS.md ("Own models", "Integer stem convs") were found. Do not profile
through the VM's instrument hook instead: its Python callback costs about 2 us per call, which made the VM's
builtins (alloc_tensor, null_value) look like a millisecond of a 1.2 ms model call. Calls of pure reshape
kernels are left out: the build turns them into views (before 2026-12-07 21:30 they were counted, 4-5 us).

    TVM_NUM_THREADS=1 python benchmarks/kernel_times.py MODEL -t x86-64 [--input-shape x=1,3,320,320]
        [--group PREFIX ...] [--top 25] [--each]

MODEL is a bundle or a .onnx file (as `edge-slim compile` takes it). The sum is the kernels alone; the
whole model call (edge-slim bench) is higher by the VM's own work and by colder caches.
"""
from __future__ import annotations

import argparse
import collections
from pathlib import Path

import numpy as np


def kernel_calls(mod):
    """{PrimFunc name: (calls from main, [argument and output types])}."""
    from tvm import relax
    calls: dict = collections.Counter()
    sig: dict = {}

    def visit(e):
        if isinstance(e, relax.Call) and getattr(e.op, "name", None) == "relax.call_tir":
            name = e.args[0].name_hint
            calls[name] += 1
            out = e.ty_args[0]
            sig[name] = [a.ty for a in e.args[1].fields] + list(out.fields if isinstance(out, relax.TupleType) else [out])
    relax.analysis.post_order_visit(mod["main"].body, visit)
    return {n: (c, sig[n]) for n, c in calls.items()}


def time_kernel(func, types, target, number: int = 200, repeat: int = 5) -> float:
    """Best-of-`repeat` mean time in microseconds of one call of `func` on random data of `types`."""
    import tvm
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
    rng = np.random.default_rng(0)
    dev = tvm.cpu()
    args = []
    for ty in types:
        shape = [int(d) for d in (ty.shape.values if hasattr(ty.shape, "values") else ty.shape)]
        dt = str(ty.dtype)
        a = rng.uniform(-2, 2, shape) if "float" in dt else rng.integers(-3, 3, shape)
        args.append(tvm.runtime.tensor(np.asarray(a).astype(dt), dev))
    te = getattr(lib, "mod", lib).time_evaluator("main", dev, number=number, repeat=repeat)
    return min(te(*args).results) * 1e6


def main() -> None:
    from edge_slim import targets as T
    from edge_slim.aot.lower import pipeline as L
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("-t", "--target", default="x86-64")
    p.add_argument("--input-shape", action="append", default=[], help="NAME=D1,D2,... as for edge-slim compile")
    p.add_argument("--group", action="append", default=[], help="sum kernels whose name starts with PREFIX")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--each", action="store_true", help="one row per PrimFunc (default: names without digits)")
    a = p.parse_args()
    tgt = T.get_target(a.target)
    job = L.Job(source=Path(a.model), target=tgt, recipe=T.get_recipe(tgt.recipe),
                input_shapes=L.parse_shapes(a.input_shape))
    for name, phase in L.PHASES:
        phase(job)
        if name == "prepack":
            break
    from tvm import relax
    # the build turns calls of pure reshape kernels into views (tvm.compile's RewriteDataflowReshape): not kernels
    viewed = relax.transform.RewriteDataflowReshape()(job.mod)
    rows: dict = collections.defaultdict(lambda: [0, 0.0])
    for name, (n, types) in kernel_calls(viewed).items():
        try:
            us = time_kernel(job.mod[name], types, job.tvm_target)
        except Exception as e:  # noqa: BLE001 - report the kernel and go on
            print(f"{name}: not timed ({str(e).splitlines()[0][:100]})")
            continue
        key = name if a.each else name.rstrip("0123456789_")
        key = next((g + "*" for g in a.group if key.startswith(g)), key)
        rows[key][0] += n
        rows[key][1] += us * n
    for key, (n, us) in sorted(rows.items(), key=lambda r: -r[1][1])[:a.top]:
        print(f"{us:10.1f} us {n:4d}  {key[:110]}")
    print(f"kernels total {sum(r[1] for r in rows.values()):.1f} us over {sum(r[0] for r in rows.values())} calls")


if __name__ == "__main__":
    main()
