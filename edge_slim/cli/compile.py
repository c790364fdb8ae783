"""`edge-slim compile`: lower a bundle or any .onnx file with TVM into a compiled bundle."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from .common import emit, json_option


_open_line = [False]   # a phase line is printed without its newline until the phase is done


def _progress(ev: dict) -> None:
    if ev["state"] == "start":
        click.echo(f"[{ev['index']}/{ev['total']}] {ev['phase']:<9} ...", err=True, nl=False)
        sys.stderr.flush()
        _open_line[0] = True
    else:
        click.echo(f" {ev['seconds']:6.2f} s", err=True)
        _open_line[0] = False


@click.command("compile")
@click.argument("model", required=False, metavar="[MODEL]")
@click.option("--target", "-t", default="x86-64", show_default=True, help="Target name or alias (see `edge-slim targets`).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default=None,
              help="Default: the source graph's (an int8 graph compiles as int8; fp16 is for cuda).")
@click.option("--output", "-o", "out", default=None, metavar="DIR", help="Compiled bundle directory to write.")
@click.option("--tune-trials", type=click.IntRange(0, None), default=None,
              help="MetaSchedule trials on top of the rules (database kept and reused per model+target).")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=D0,D1,...",
              help="Fix an input's dynamic dimensions (bring-your-own .onnx).")
@click.option("--dynamic", "dynamic", multiple=True, metavar="DIM=MAX",
              help="Keep a named dimension symbolic (one artifact for sizes 1..MAX, checked at run time).")
@click.option("--bind", "binds", multiple=True, metavar="NAME=VALUE",
              help="Fix an input to a constant (a number, a comma list or FILE.npy); the graph folds around it.")
@click.option("--preprocess", default=None, metavar="SPEC",
              help="Image preprocessing stored for `edge-slim run IMAGE`, e.g. 'size=48x192 mean=0.5 std=0.5'.")
@click.option("--cuda-arch", default=None, metavar="sm_XX", help="GPU architecture for the cuda target.")
@click.option("--recipe", default=None, help="Recipe from compile/ (default: the target's).")
@click.option("--debug-dump", default=None, metavar="DIR", help="Write the IR after each phase to DIR.")
@click.option("--tuning-dir", default=None, metavar="DIR", help="Where tuning databases live.")
@click.option("--no-split", is_flag=True,
              help="Do not also compile the image and text parts (SlimPajama; a session then re-runs the image "
                   "tower for every question about an image).")
@json_option
def compile_cmd(model, target, precision, out, tune_trials, input_shapes, dynamic, binds, preprocess, cuda_arch,
                recipe, debug_dump, tuning_dir, no_split, as_json):
    """Compile MODEL (a bundle or .onnx; default the shipped SlimPajama-Tiny) for a device."""
    from ..aot.lower.pipeline import compile_model, parse_shapes
    from ..targets import cpu_flags, get_target
    tgt = get_target(target)
    from ..aot.lower.onnx_rewrites import parse_bind, parse_dynamic
    from ..vision.spec import parse_spec
    shapes = parse_shapes(input_shapes)
    dyn = dict(parse_dynamic(s) for s in dynamic)
    bound = dict(parse_bind(s) for s in binds)
    prep = parse_spec(preprocess) if preprocess else None
    click.echo(f"edge-slim compile: model={model or '(shipped slimpajama-tiny)'} target={tgt.name} "
               f"recipe={recipe or tgt.recipe} precision={precision or '(source)'}"
               + (f" cuda-arch={cuda_arch or tgt.cuda_arch}" if tgt.kind == "cuda" else "")
               + (f" tune-trials={tune_trials}" if tune_trials else "")
               + "".join(f" --input-shape {s}" for s in input_shapes) + "".join(f" --dynamic {s}" for s in dynamic)
               + "".join(f" --bind {s}" for s in binds), err=True)
    try:
        m = compile_model(model, tgt.name, precision=precision, out=out, tune_trials=tune_trials,
                          input_shapes=shapes, dynamic=dyn, binds=bound, preprocess=prep, cuda_arch=cuda_arch,
                          recipe=recipe, debug_dump=debug_dump, tuning_dir=tuning_dir,
                          progress=None if as_json else _progress, split=not no_split)
    finally:
        if _open_line[0]:  # an error ends the phase's line, so that it is a line of its own
            click.echo("", err=True)
            _open_line[0] = False
    size = sum(f.stat().st_size for f in Path(m["path"]).rglob("*") if f.is_file())   # the artifact, every file
    held = (f", variants {' '.join(v['target'] for v in m['variants'])}: the best this CPU runs is loaded"
            if m.get("variants") else "")
    emit({"path": m["path"], "target": m["target"], "precision": m["precision"], "compile": m["compile"],
          "bytes": size, **({"variants": m["variants"]} if m.get("variants") else {})}, as_json,
         f"wrote {m['path']} ({size / 1e6:.1f} MB, {m['compile']['seconds']:.1f} s, target {m['target']['name']}, "
         f"{m['precision']}{held})")
    if not as_json and tgt.name == "x86-64" and "avx512f" in cpu_flags():
        click.echo("note: this CPU has AVX-512, which an x86-64 (AVX2) artifact leaves unused; -t x86-64-multi adds "
                   "an AVX-512 build that the runtime loads on CPUs that have it (docs/targets.md)", err=True)
