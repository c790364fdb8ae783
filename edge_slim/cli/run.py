"""`edge-slim run`: run any compiled (or ONNX) bundle on .npy or image inputs; outputs as .npy or JSON."""
from __future__ import annotations

import click

from .common import backend_option, emit, json_option, threads_option


@click.command("run")
@click.argument("bundle", metavar="BUNDLE")
@click.option("--input", "-i", "inputs", multiple=True, metavar="NAME=FILE",
              help="One per model input: a .npy file, or an image for an image model.")
@click.option("--preprocess", default=None, metavar="SPEC",
              help="Image preprocessing (default: the bundle's), e.g. 'size=48x192 mean=0.5 std=0.5'.")
@click.option("--output-dir", "-o", default=None, metavar="DIR", help="Write each output as DIR/NAME.npy.")
@backend_option
@threads_option
@json_option
def run_cmd(bundle, inputs, output_dir, preprocess, backend, threads, as_json):
    """Run BUNDLE on inputs given as .npy files or images; small outputs are printed whole (JSON with --json)."""
    import json

    from ..runtime.backends.tvm_backend import run_bundle
    from ..vision.spec import parse_spec
    res = run_bundle(bundle, dict(_pair(s) for s in inputs), output_dir=output_dir, backend=backend, threads=threads,
                     preprocess=parse_spec(preprocess) if preprocess else None)
    text = "\n".join(f"{o['name']}: shape {o['shape']} {o['dtype']}" + (f" -> {o['file']}" if o.get("file") else "")
                     + (f" {json.dumps(o['values'])}" if "values" in o else "" if o.get("file") else f" {o['preview']}")
                     for o in res["outputs"])
    emit(res, as_json, text)


def _pair(s: str) -> tuple[str, str]:
    name, sep, path = s.partition("=")
    if not sep or not name or not path:
        raise click.BadParameter(f"{s!r}: expected NAME=FILE (.npy or an image)", param_hint="--input")
    return name, path
