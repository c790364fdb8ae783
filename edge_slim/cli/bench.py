"""`edge-slim bench`: side-by-side latency of bundles, backends and thread counts on this device."""
from __future__ import annotations

import click

from .common import emit, json_option

BACKENDS = ("auto", "ort", "numpy", "tvm")


def _list(value: str, name: str, parse, allowed=None) -> list:
    out = []
    for item in (x.strip() for x in value.split(",")):
        try:
            v = parse(item)
        except ValueError:
            v = None
        if v is None or (allowed is not None and v not in allowed):
            raise click.BadParameter(f"{item!r} is not one of {', '.join(map(str, allowed))}" if allowed else
                                     f"{item!r} is not a positive integer or 'default'", param_hint=name)
        out.append(v)
    if len(set(out)) != len(out):
        raise click.BadParameter(f"{value!r} repeats an entry", param_hint=name)
    return out


def _threads(item: str):
    if item == "default":
        return "default"
    n = int(item)
    return n if 1 <= n <= 256 else None


def _runnable(targets, backends) -> list[tuple]:
    """(model, precision, backend) for every model x backend pair whose formats agree; the rest are skipped
    with a note, so `--backend ort,numpy,tvm` can time an ONNX bundle and a compiled one in one run."""
    import edge_slim
    from ..errors import ModelError
    from ..runtime.backends import FORMATS
    from ..runtime.bundle import open_bundle
    out = []
    for m, p in targets:
        is_onnx = m is not None and str(m).endswith(".onnx")    # a bare .onnx own model, run by ORT
        fmt = "onnx" if is_onnx else open_bundle(edge_slim.shipped(p) if m is None else m).manifest["format"]
        ok = [b for b in backends if b == "auto" or FORMATS[b] == fmt]
        if not ok:
            raise ModelError(f"{m or edge_slim.shipped(p)} is a {fmt} bundle; none of --backend "
                             f"{','.join(backends)} runs it (use auto)")
        skipped = [b for b in backends if b not in ok]
        if skipped:
            verb = "it does" if len(skipped) == 1 else "they do"
            click.echo(f"edge-slim bench: {m or p}: skipping {', '.join(skipped)} ({verb} not run {fmt} bundles)", err=True)
        out += [(m, p, b) for b in ok]
    return out


def _busy() -> str | None:
    """A note when the machine is already loaded (1-minute load average above half its CPUs)."""
    import os
    if not hasattr(os, "getloadavg"):
        return None
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    return f"load average {load:.1f} on {cpus} CPUs" if load > cpus / 2 else None


@click.command("bench")
@click.argument("models", nargs=-1, metavar="[MODEL]...")
@click.option("--precision", default="fp32,int8", show_default=True,
              help="Shipped variants to compare when no MODEL is given (comma-separated).")
@click.option("--backend", "-b", "backends", default="auto", show_default=True,
              help="Backends, comma-separated: auto, ort, numpy, tvm (each model runs on each).")
@click.option("--threads", "threads", default="1,default", show_default=True,
              help="Thread counts, comma-separated; 'default' is what `ask` uses (one per physical core).")
@click.option("--rounds", type=click.IntRange(1, 100_000), default=20, show_default=True,
              help="Paired rounds; each runs every configuration once, in random order.")
@click.option("--block", type=click.IntRange(1, 100_000), default=20, show_default=True,
              help="Timed calls per configuration per round.")
@click.option("--warmup", type=click.IntRange(0, 1000), default=3, show_default=True,
              help="Untimed calls after each load.")
@click.option("--samples", type=click.IntRange(1, 1000), default=4, show_default=True,
              help="Generated scenes the inputs come from (a question, caption and phrase each).")
@click.option("--call", "calls", default="model,ask", show_default=True,
              help="What to time, comma-separated: model (the backend's model call on prepared inputs), "
                   "ask (the full call: path of a PNG -> Answer, through the public API), "
                   "describe (path of a PNG -> Description; models with a describe head).")
@click.option("--questions", type=click.IntRange(2, 256), default=None,
              help="Also time one image with N questions in one `ask` call, against one question.")
@click.option("--together", is_flag=True,
              help="Also time all configurations alive at once, called in turn (one call each), against alone.")
@click.option("--image-px", type=click.IntRange(8, 8192), default=None,
              help="Side of the PNGs `ask` reads (default: the model's input size, 96).")
@click.option("--rpc", metavar="HOST:PORT", default=None,
              help="Time compiled MODELs on a board from this TVM RPC tracker, with the board's clock "
                   "(docs/device-farm.md).")
@click.option("--key", default=None, help="The board's device key at the tracker (with --rpc), e.g. rpi5.")
@json_option
def bench_cmd(models, precision, backends, threads, rounds, block, warmup, samples, calls, questions, together,
              image_px, rpc, key, as_json):
    """Time MODELs (default: the shipped fp32 and int8 SlimPajama-Tiny) side by side, in paired rounds.

    Ratios are to the first configuration with the same thread count and call (fp32 first, so int8 / fp32);
    `vs own` compares a row with its own configuration: a full ask with its model call, N questions with
    one, together with alone. See edge_slim/runtime/bench.py for why the harness is built so.
    """
    import edge_slim

    if (rpc is None) != (key is None):
        raise click.BadParameter("--rpc and --key go together", param_hint="--rpc/--key")
    if rpc:
        from ..runtime.backends import rpc_backend
        rpc_backend.parse_tracker(rpc)
        if not models:
            raise click.BadParameter("--rpc times compiled bundles: name them (edge-slim compile --target BOARD)",
                                     param_hint="MODEL")
        report = rpc_backend.board_bench(list(models), rpc, key, number=max(1, block // 10), repeat=rounds)
        emit(report, as_json, rpc_backend.table(report))
        return

    from ..runtime.bench import CALLS, Config, bench, table
    from .progress import Progress
    bks = _list(backends, "--backend", str, BACKENDS)
    ths = [None if t == "default" else t for t in _list(threads, "--threads", _threads)]
    if models:
        targets = [(m, None) for m in models]
    else:
        targets = [(None, p) for p in _list(precision, "--precision", str, tuple(edge_slim.PRECISIONS))]
    pairs = _runnable(targets, bks)
    what = tuple(_list(calls, "--call", str, CALLS))
    configs = [Config(m, p, b, t) for t in ths for m, p, b in pairs]
    if together and len(configs) < 2:
        raise click.BadParameter("needs at least two configurations (models x backends x threads)",
                                 param_hint="--together")
    busy = _busy()
    if busy:
        click.echo(f"edge-slim bench: warning: {busy}; other work is running and the times will be noisy", err=True)
    with Progress(rounds, "bench rounds") as bar:
        report = bench(configs, rounds=rounds, block=block, warmup=warmup, samples=samples, calls=what,
                       questions=questions or 0, together=together, image_px=image_px, progress=bar.update)
    emit(report, as_json, table(report))
