"""`edge-slim quantize`: an int8 (or fp16) bundle from an fp32 one, within an accuracy budget [quantize]."""
from __future__ import annotations

import click

from .common import emit, json_option


@click.command("quantize")
@click.argument("model", required=False)
@click.option("--out", "-o", default=None, help="Bundle directory to write (default: a sibling <name>-int8 / -fp16).")
@click.option("--calib-samples", type=click.IntRange(1, 100_000), default=100, show_default=True,
              help="Generated calibration scenes (seed 2; held-out evaluation uses seed 1).")
@click.option("--calib", "calib_dir", type=click.Path(), default=None,
              help="Calibrate on a folder of images + calib.jsonl instead (format: docs/quantize.md); for MODEL.onnx: "
                   "images (with --preprocess) or .npz/.npy input tensors (docs/compile.md).")
@click.option("--preprocess", default=None, metavar="SPEC",
              help="MODEL.onnx calibrated on images: how an image becomes the input, e.g. 'size=224x224 mean=0.5 std=0.5'.")
@click.option("--method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax", show_default=True,
              help="How activation ranges are calibrated (static parts of the form).")
@click.option("--form", default=None, help="int8 form (default: the fastest measured; see docs/quantize.md).")
@click.option("--precision", type=click.Choice(["int8", "fp16"]), default="int8", show_default=True,
              help="fp16 writes a mixed-precision bundle for GPU targets instead.")
@click.option("--max-accuracy-drop", type=click.FloatRange(0, 1), default=0.01, show_default=True,
              help="Largest allowed drop of VQA accuracy, match R@1 or locate IoU>=0.5 (0.01 = 1 point).")
@click.option("--max-fp32-nodes", type=click.IntRange(0), default=16, show_default=True,
              help="Most nodes the budget loop may keep in fp32 before giving up.")
@click.option("--eval-samples", type=click.IntRange(1, 1_000_000), default=500, show_default=True,
              help="Held-out scenes for the fp32 vs quantized comparison.")
@click.option("--fuse/--no-fuse", default=False, show_default=True,
              help="Merge linear layers that read the same tensor (q/k/v) into one MatMul first (no speed-up measured).")
@click.option("--weight-bits", type=click.Choice(["7", "8"]), default="7", show_default=True,
              help="Integer weights in [-64, 64] (exact on every CPU) or [-127, 127] (ONNX Runtime saturates some "
                   "products on x86 without VNNI).")
@click.option("--arithmetic", type=click.Choice(["auto", "exact", "ort-avx2", "both"]), default="auto",
              show_default=True, help="Integer arithmetic(s) the accuracy budget is checked in; auto: every one the "
                                      "bundle can meet that may answer differently (docs/quantize.md).")
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="ONNX Runtime threads while evaluating.")
@json_option
def quantize_cmd(model, out, calib_samples, calib_dir, method, form, precision, max_accuracy_drop, max_fp32_nodes,
                 eval_samples, fuse, weight_bits, arithmetic, threads, preprocess, as_json):
    """Quantize MODEL (default: the shipped SlimPajama-Tiny) and check it on held-out scenes.

    Exits 5 and writes nothing when the accuracy budget cannot be met.
    """
    try:
        from ..aot.quantize import slimpajama as Q
    except ImportError as e:
        from ..errors import MissingDependencyError
        raise MissingDependencyError(f"quantize needs {e.name or e}: pip install 'edge-slim[quantize]'") from None
    src = click.get_current_context().get_parameter_source("calib_samples")
    if calib_dir is not None and src is not click.core.ParameterSource.DEFAULT:
        raise click.UsageError("--calib-samples and --calib are alternatives; pass one")
    log = lambda m: click.echo(m, err=True)
    if model is not None and str(model).endswith(".onnx"):   # an own model: edge_slim/aot/quantize/any_model.py
        from ..aot.quantize import any_model as QA
        from ..vision.spec import parse_spec
        if calib_dir is None:
            raise click.UsageError("MODEL.onnx needs --calib DATA (images with --preprocess, or .npz/.npy tensors)")
        r = QA.quantize_onnx(model, out, calib=calib_dir, preprocess=parse_spec(preprocess) if preprocess else None,
                             form=form or QA.DEFAULT_FORM, method=method, max_drop=max_accuracy_drop,
                             max_fp32_nodes=max_fp32_nodes, threads=threads, log=log)
        emit(r, as_json, QA.summary(r))
        return
    # the libraries print the resolved settings once the inputs are known to be good (so that a bad
    # input gives exactly one line on stderr)
    if precision == "fp16":
        from ..aot.quantize.fp16 import fp16_bundle
        r = fp16_bundle(model, out, max_drop=max_accuracy_drop, eval_samples=eval_samples, threads=threads, log=log)
    else:
        r = Q.quantize_bundle(model, out, calib_samples=calib_samples, calib_dir=calib_dir, method=method,
                              form=form or Q.DEFAULT_FORM, max_drop=max_accuracy_drop, max_fp32_nodes=max_fp32_nodes,
                              eval_samples=eval_samples, threads=threads, fuse=fuse, weight_bits=int(weight_bits),
                              arithmetic=arithmetic, log=log)
    ev = r["eval"]
    text = [f"{r['bundle']}  ({r.get('form', precision)}, {r['size']['ratio']:.3f} x fp32 size, "
            f"drop {r['drop'] * 100:.2f} points, {len(r.get('kept_fp32') or [])} node(s) kept in fp32)",
            f"{'':14s} {'fp32':>7s} {precision:>7s}"]
    text += [f"{k:14s} {ev['fp32'][k]:7.4f} {ev[precision][k]:7.4f}" for k in ev["fp32"]]
    text += [f"  {f:12s} {v['fp32']:7.4f} {v[precision]:7.4f}" for f, v in ev.get("per_family", {}).items()]
    d = r.get("describe")
    if d:  # the caption decoder: its own precision and figures (aot/quantize/describe.py)
        line = f"describe: decoder {d['precision']}"
        e = d.get("eval") or {}
        if e.get("fp32") and e.get("int8"):
            line += ", " + ", ".join(f"{k} {e['fp32'][k]:.4f} -> {e['int8'][k]:.4f}"
                                     for k in ("object_precision", "object_recall", "exact_scene") if k in e["fp32"])
            line += f" ({e['samples']} scenes)"
        if d.get("why"):
            line += f"; {d['why']}"
        text.append(line)
    emit(r, as_json, "\n".join(text))
