"""`edge-slim slim`: prune + distill + quantize a teacher bundle into candidates, measure them, write the chosen
one [train, quantize]. The library is edge_slim/aot/slim/search.py; docs/slim.md."""
from __future__ import annotations

import click

from .common import emit, json_option

HEADLINE = ("vqa_accuracy", "match_r1", "locate_iou50")


def table(report: dict) -> str:
    """The candidate table: '*' on the Pareto frontier, '>' the chosen one."""
    rends = report["renderers"]
    head = (f"   {'candidate':40s} {'prec':4s} {'params':>9s} {'MB':>6s} "
            + " ".join(f"{'err% ' + r:>13s}" for r in rends) + f" {'p50 ms':>7s} {'x tch':>6s} {'cplx':>6s}")
    lines = [head]
    for c in report["candidates"]:
        mark = (">" if c["chosen"] else " ") + ("*" if c["pareto"] else " ")
        errs = " ".join(f"{100 * (1 - sum(c['scores'][r][k] for k in HEADLINE) / 3):13.2f}" for r in rends)
        lat = f"{c['latency_ms']:7.2f} {c['latency_vs_teacher']:6.3f}" if c.get("latency_ms") is not None else " " * 14
        infeasible = "" if c["feasible"] else "  (over a constraint)"
        lines.append(f"{mark} {c['name'][:40]:40s} {c['precision']:4s} {c['params']:9,d} {c['size_mb']:6.2f} {errs} "
                     f"{lat} {c['complexity']:6.3f}{infeasible}")
    ch = report["candidates"][report["chosen"]]
    lines.append(f"chosen: {ch['name']} ({ch['precision']}) -> {report['bundle']}  "
                 f"[* Pareto frontier over {', '.join(report['axes'])}; error = 1 - mean of VQA, match R@1, "
                 f"locate IoU>=0.5]")
    return "\n".join(lines)


@click.command("slim")
@click.argument("teacher", required=False)
@click.option("--target", "-t", required=True, help="Device the model is for (edge-slim targets); recorded in the "
                                                     "lineage; latency is measured through the runtime on this host.")
@click.option("--out", "-o", required=True, help="Bundle directory to write the chosen candidate to (atomically).")
@click.option("--alpha", type=click.FloatRange(0), default=None, help="Weight of normalized size [default 1].")
@click.option("--beta", type=click.FloatRange(0), default=None, help="Weight of normalized error [default 1].")
@click.option("--gamma", type=click.FloatRange(0), default=None, help="Weight of normalized latency [default 0].")
@click.option("--max-size-mb", type=click.FloatRange(0, min_open=True), default=None,
              help="Only candidates whose ONNX graphs are at most this size.")
@click.option("--max-latency-ms", type=click.FloatRange(0, min_open=True), default=None,
              help="Only candidates whose p50 model call is at most this on this host.")
@click.option("--ratios", "ratios", multiple=True, metavar="SPEC",
              help="A pruning ratio set, e.g. heads=0.5,mlp=0.5,stem=0.25,layers=1 (repeat for several; "
                   "default: four sets from light to heavy, docs/slim.md).")
@click.option("--precisions", default="fp32,int8", show_default=True, help="Comma list of fp32, int8.")
@click.option("--steps", type=click.IntRange(1), default=300, show_default=True,
              help="Distillation steps per pruned candidate.")
@click.option("--batch", type=click.IntRange(2), default=32, show_default=True, help="Images per step (5 texts each).")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=5e-4, show_default=True)
@click.option("--importance", type=click.Choice(["taylor", "magnitude"]), default="taylor", show_default=True,
              help="How heads, FFN units and stem channels are ranked (layers: by ablation).")
@click.option("--scenes", type=click.IntRange(10), default=5000, show_default=True,
              help="Training scenes rendered (cached) for importance and distillation.")
@click.option("--renderers", default="flat", show_default=True, metavar="MIX",
              help="Their renderer mix (as edge-slim train); evaluation uses these renderers and 'unseen'.")
@click.option("--cache-dir", default=None, help="Where rendered scenes are cached (default ~/.cache/edge-slim).")
@click.option("--eval-samples", type=click.IntRange(1), default=300, show_default=True,
              help="Held-out scenes per renderer for each candidate (and int8's budget check).")
@click.option("--int8-max-drop", type=click.FloatRange(0, 1), default=0.01, show_default=True,
              help="int8 candidates: quantize's accuracy budget (largest drop of VQA, match or locate).")
@click.option("--bench-rounds", type=click.IntRange(1), default=5, show_default=True,
              help="Paired latency rounds (edge-slim bench) over all candidates.")
@click.option("--budget-minutes", type=click.FloatRange(0), default=0.0,
              help="Stop building candidates when the next would end past this wall-clock budget (0: none).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="Torch threads (default: torch's).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write the frontier as a PNG (size or latency against error).")
@click.option("--plot-x", type=click.Choice(["size", "latency"]), default="size", show_default=True)
@click.option("--keep-candidates", "keep_dir", type=click.Path(file_okay=False), default=None,
              help="Also keep every candidate's bundle in this directory (TAG/PRECISION) with report.json.")
@json_option
def slim_cmd(teacher, target, out, alpha, beta, gamma, max_size_mb, max_latency_ms, ratios, precisions, steps, batch,
             lr, importance, scenes, renderers, cache_dir, eval_samples, int8_max_drop, bench_rounds, budget_minutes,
             seed, threads, plot_path, plot_x, keep_dir, as_json):
    """Compress TEACHER (an fp32 bundle; default: the shipped SlimPajama-Tiny) into candidates, show the
    size / error / latency table with its Pareto frontier, and write the chosen one.

    Exits 5 and writes nothing when no candidate meets --max-size-mb / --max-latency-ms.
    """
    try:
        import torch  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        from ..errors import MissingDependencyError
        raise MissingDependencyError(f"slim needs {e.name or e}: pip install 'edge-slim[train,quantize]'") from None
    from ..aot.slim import search as SR
    from ..aot.slim.distill import DistillArgs
    from ..aot.slim.prune import Ratios
    from ..aot.slim.select import Objective
    try:
        parsed = tuple(Ratios.parse(v) for v in ratios)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--ratios") from None
    given = {k: v for k, v in (("alpha", alpha), ("beta", beta), ("gamma", gamma)) if v is not None}
    try:
        obj = Objective(**given, max_size_mb=max_size_mb, max_latency_ms=max_latency_ms, weights_given=bool(given))
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    a = SR.SlimArgs(teacher=teacher, target=target, precisions=tuple(p.strip() for p in precisions.split(",") if p.strip()),
                    distill=DistillArgs(steps=steps, batch=batch, lr=lr, seed=seed), importance=importance,
                    scenes=scenes, renderers=renderers, eval_samples=eval_samples, int8_max_drop=int8_max_drop,
                    bench_rounds=bench_rounds, budget_minutes=budget_minutes, seed=seed, threads=threads,
                    keep_dir=keep_dir)
    if parsed:
        a.ratios = parsed
    if cache_dir:
        a.cache_dir = cache_dir
    log = lambda m: click.echo(m, err=True)
    from .progress import Progress
    n_rend = len(SR.eval_renderers(renderers)) if renderers else 2
    per_bundle = eval_samples * n_rend
    total = len(a.ratios) * steps + (1 + len(a.ratios)) * len(a.precisions) * per_bundle
    with Progress(total, "slim (distillation steps + evaluated scenes)") as bar:
        r = SR.slim(a, out, obj, log=log, progress=bar.update, plot=plot_path, plot_x=plot_x)
    emit(r, as_json, table(r))
