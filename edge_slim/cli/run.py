"""`edge-slim run`: run any compiled (or ONNX) bundle on .npy inputs and write its outputs as .npy."""
from __future__ import annotations

import click

from .common import backend_option, emit, json_option, threads_option


@click.command("run")
@click.argument("bundle", metavar="BUNDLE")
@click.option("--input", "-i", "inputs", multiple=True, metavar="NAME=FILE.npy", help="One per model input.")
@click.option("--output-dir", "-o", default=None, metavar="DIR", help="Write each output as DIR/NAME.npy.")
@backend_option
@threads_option
@json_option
def run_cmd(bundle, inputs, output_dir, backend, threads, as_json):
    """Run BUNDLE on inputs given as .npy files."""
    from ..runtime.backends.tvm_backend import run_bundle
    res = run_bundle(bundle, dict(_pair(s) for s in inputs), output_dir=output_dir, backend=backend, threads=threads)
    text = "\n".join(f"{o['name']}: shape {o['shape']} {o['dtype']}" + (f" -> {o['file']}" if o.get("file") else
                     f" {o['preview']}") for o in res["outputs"])
    emit(res, as_json, text)


def _pair(s: str) -> tuple[str, str]:
    name, sep, path = s.partition("=")
    if not sep or not name or not path:
        raise click.BadParameter(f"{s!r}: expected NAME=FILE.npy", param_hint="--input")
    return name, path
