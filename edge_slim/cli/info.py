"""`edge-slim info [MODEL]`: what a bundle is, from its verified manifest."""
from __future__ import annotations

import click

from .common import emit, json_option


@click.command()
@click.argument("model", required=False)
@click.option("--precision", type=click.Choice(["fp32", "int8"]), default=None, help="Shipped variant to describe.")
@click.option("--list", "list_", is_flag=True, help="List the shipped models (their names work as --model NAME).")
@json_option
def info(model, precision, list_, as_json):
    """Show a model bundle's manifest (default: the shipped SlimPajama-Tiny), after verifying it."""
    from .. import PRECISIONS
    from ..runtime.bundle import default_model_dir, open_bundle, shipped_models
    if list_:
        rows = []
        for name in shipped_models():
            m = open_bundle(name).manifest
            rows.append({"name": name, "precision": m["precision"], "mb": round(sum(f["bytes"] for f in m["files"].values()) / 1e6, 2), "describe": bool(m.get("describe"))})
        emit(rows, as_json, "\n".join(f"{r['name']:<28} {r['precision']:<5} {r['mb']:6.2f} MB"
                                      + ("  describe" if r["describe"] else "") for r in rows))
        return
    if model is None and precision not in (None, "fp32"):
        model = default_model_dir().parent / PRECISIONS[precision]
    b = open_bundle(model)
    m = {**b.manifest, "path": str(b.path)}
    if as_json:
        emit(m, True)
        return
    size = sum(f["bytes"] for f in m["files"].values())
    lines = [f"{m['name']}  ({m['format']}, {m['precision']}, {size / 1e6:.2f} MB, {len(m['files'])} files verified)",
             f"path:    {m['path']}"]
    if m.get("target"):
        t = m["target"]
        lines.append(f"target:  {t.get('name')} ({t.get('kind')}, {t.get('host_triple', '')} {t.get('cuda_arch') or ''})".rstrip())
    if m.get("variant_of"):
        v = m["variant_of"]
        lines.append(f"variant: chosen from {v['target']} ({', '.join(v['variants'])}) for this CPU; "
                     "EDGE_SLIM_VARIANT=TARGET overrides")
    c = m["config"]
    lines.append("inputs:  " + ", ".join(f"{i['name']} {i['dtype']}{i['shape']}" for i in m["inputs"]))
    lines.append("outputs: " + ", ".join(o["name"] for o in m["outputs"]))
    if isinstance(c, dict) and "dim" in c:
        lines.append(f"model:   dim {c['dim']}, heads {c['heads']}, layers image {c['image_layers']} / text "
                     f"{c['text_layers']} / cross {c['cross_layers']} / fusion {c['fusion_layers']}")
    ev = m.get("eval") or {}
    if ev.get("vqa_accuracy") is not None:
        lines.append(f"eval:    VQA {ev['vqa_accuracy']:.3f}, match R@1 {ev['match_r1']:.3f}, locate IoU>=0.5 "
                     f"{ev['locate_iou50']:.3f} on {ev.get('samples')} held-out scenes (seed {ev.get('seed')})")
    q = m.get("quantization")
    if q:
        lines.append(f"quant:   {q.get('method')} {q.get('form', '')}; fp32 kept: {', '.join(q.get('kept_fp32') or []) or 'none'}")
        i = q.get("integer")
        if i:
            lines.append(f"integer: {i['activations']} x {i['weights']} weights in {i['weight_range']}; "
                         + ("exact on every CPU" if i["exact_on_every_cpu"] else
                            "ONNX Runtime saturates some products on x86 without VNNI")
                         + f" (checked in {', '.join(i['checked_arithmetic'])} arithmetic)")
    click.echo("\n".join(lines))
