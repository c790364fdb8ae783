"""`edge-slim eval`: accuracy on freshly generated held-out scenes, through the runtime."""
from __future__ import annotations

import click

from .common import backend_option, emit, json_option, model_option, threads_option


@click.command("eval")
@model_option
@click.option("--precision", type=click.Choice(["fp32", "int8"]), default=None, help="Shipped variant (without --model).")
@backend_option
@click.option("--samples", type=click.IntRange(1, 1_000_000), default=500, show_default=True, help="Scenes to generate.")
@click.option("--seed", type=int, default=None, help="Scene stream (default 1; training used 0).")
@threads_option
@json_option
def eval_cmd(model, precision, backend, samples, seed, threads, as_json):
    """VQA accuracy (overall and per question family), matching R@1 and locate IoU>=0.5."""
    import edge_slim

    from ..scenes.evaluate import DEFAULT_EVAL_SEED, evaluate
    from .progress import Progress
    s = edge_slim.load(model, backend=backend, threads=threads, precision=precision)
    with Progress(samples, "eval", enabled=True) as bar:
        r = evaluate(s, samples=samples, seed=DEFAULT_EVAL_SEED if seed is None else seed, progress=bar.update)
    r["backend"] = s.backend_name
    text = [f"VQA accuracy   {r['vqa_accuracy']:.4f}"]
    text += [f"  {k:<12} {v:.4f}" for k, v in r["per_family"].items()]
    text += [f"match R@1      {r['match_r1']:.4f}", f"locate IoU>=.5 {r['locate_iou50']:.4f}",
             f"({r['samples']} scenes, seed {r['seed']}, backend {r['backend']})"]
    emit(r, as_json, "\n".join(text))
