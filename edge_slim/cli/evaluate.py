"""`edge-slim eval`: accuracy on freshly generated held-out scenes, through the runtime."""
from __future__ import annotations

import click

from .common import backend_option, emit, json_option, model_option, threads_option


DESCRIBE_ROWS = [("obj prec", "object_precision"), ("obj recall", "object_recall"),
                 ("exact", "exact_scene"), ("rel prec", "relation_precision")]


def _table(results: dict, backend: str) -> str:
    """Figures per renderer side by side: one column each."""
    names = list(results)
    first = results[names[0]]
    rows = [("VQA accuracy", "vqa_accuracy")] + [(f"  {k}", k) for k in first["per_family"]]
    rows += [("match R@1", "match_r1"), ("locate IoU>=.5", "locate_iou50")]
    if "type_errors" in first:
        rows.append(("type errors", "type_errors"))
    if "describe" in first:
        rows += [(f"describe {label}", ("describe", key)) for label, key in DESCRIBE_ROWS]
    width = max(10, *(len(n) for n in names))
    out = [f"{'':<20}" + "".join(f"{n:>{width + 2}}" for n in names)]
    for label, key in rows:
        vals = [r[key[0]].get(key[1]) if isinstance(key, tuple) else
                r["per_family"].get(key) if key in first["per_family"] else r.get(key) for r in results.values()]
        out.append(f"{label:<20}" + "".join(f"{'-' if v is None else (v if isinstance(v, int) else f'{v:.4f}'):>{width + 2}}"
                                             for v in vals))
    out.append(f"({first['samples']} scenes each, seed {first['seed']}, backend {backend})")
    return "\n".join(out)


@click.command("eval")
@model_option
@click.option("--precision", type=click.Choice(["fp32", "int8"]), default=None, help="Shipped variant (without --model).")
@backend_option
@click.option("--samples", type=click.IntRange(1, 1_000_000), default=500, show_default=True, help="Scenes to generate.")
@click.option("--seed", type=int, default=None, help="Scene stream (default 1; training used 0).")
@click.option("--renderer", "renderer", default="flat", show_default=True, metavar="NAME[,NAME...]",
              help="Renderer(s) that draw the scenes: flat, varied2d, raycast, unseen (evaluation only); "
                   "a comma list reports them side by side.")
@threads_option
@click.option("--rpc", metavar="HOST:PORT", default=None,
              help="Run on a board from this TVM RPC tracker (a compiled bundle; docs/device-farm.md).")
@click.option("--key", default=None, help="The board's device key at the tracker (with --rpc), e.g. rpi5.")
@json_option
def eval_cmd(model, precision, backend, samples, seed, renderer, threads, rpc, key, as_json):
    """VQA accuracy (overall and per question family), matching R@1, locate IoU>=0.5 and, for a model
    with a describe head, its captions' object precision and recall, exact-scene rate and relation
    precision (scenes/caption.py)."""
    import edge_slim
    if (rpc is None) != (key is None):
        raise click.BadParameter("--rpc and --key go together", param_hint="--rpc/--key")
    options = None
    if rpc:
        from ..runtime.backends.rpc_backend import parse_tracker
        parse_tracker(rpc)
        backend, options = "rpc", {"tracker": rpc, "key": key}

    from ..scenes.evaluate import DEFAULT_EVAL_SEED, evaluate
    from ..scenes.renderers import parse_names
    from .progress import Progress
    names = parse_names(renderer)  # a bad name fails before the model loads
    s = edge_slim.load(model, backend=backend, threads=threads, precision=precision, backend_options=options)
    seed = DEFAULT_EVAL_SEED if seed is None else seed
    results = {}
    with Progress(samples * len(names), "eval", enabled=True) as bar:
        for name in names:
            results[name] = evaluate(s, samples=samples, seed=seed, progress=bar.update, renderer=name)
    if len(names) == 1:
        r = {**results[names[0]], "backend": s.backend_name}
        text = [f"VQA accuracy   {r['vqa_accuracy']:.4f}"]
        text += [f"  {k:<12} {v:.4f}" for k, v in r["per_family"].items()]
        text += [f"match R@1      {r['match_r1']:.4f}", f"locate IoU>=.5 {r['locate_iou50']:.4f}"]
        if "type_errors" in r:
            text.append(f"type errors    {r['type_errors']}")
        if "describe" in r:
            d = r["describe"]
            text.append("describe       " + ", ".join(f"{label} {'-' if d[k] is None else f'{d[k]:.4f}'}"
                                                      for label, k in DESCRIBE_ROWS))
        text.append(f"({r['samples']} scenes, seed {r['seed']}, renderer {r['renderer']}, backend {r['backend']})")
        emit(r, as_json, "\n".join(text))
    else:
        emit({"renderers": names, "results": results, "samples": samples, "seed": seed, "backend": s.backend_name},
             as_json, _table(results, s.backend_name))
