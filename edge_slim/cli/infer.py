"""`edge-slim ask | match | locate`: the everyday commands."""
from __future__ import annotations

import click

from .common import backend_option, emit, json_option, model_option, threads_option


def _session(model, backend, threads, precision=None):
    import edge_slim
    return edge_slim.load(model, backend=backend, threads=threads, precision=precision)


def _precision_option(f):
    return click.option("--precision", type=click.Choice(["fp32", "int8"]), default=None,
                        help="Use the shipped fp32 or int8 SlimPajama-Tiny (ignored with --model).")(f)


@click.command()
@click.argument("image", metavar="IMAGE")
@click.argument("question")
@click.option("--top", "top_k", type=click.IntRange(1, 100), default=5, show_default=True, help="How many answers to list.")
@model_option
@_precision_option
@backend_option
@threads_option
@json_option
def ask(image, question, top_k, model, precision, backend, threads, as_json):
    """Answer QUESTION about IMAGE (a path, or - for standard input)."""
    s = _session(model, backend, threads, precision)
    a = s.ask(_read(image), question, top_k=top_k)
    d = {"answer": a.answer, "score": round(a.score, 4), "top": a.top, "backend": a.backend,
         "latency_ms": a.latency_ms}
    emit(d, as_json, f"{a.answer}  ({a.score:.2f})")


@click.command()
@click.argument("image", metavar="IMAGE")
@click.argument("texts", nargs=-1, required=True)
@model_option
@_precision_option
@backend_option
@threads_option
@json_option
def match(image, texts, model, precision, backend, threads, as_json):
    """Score how well each TEXT describes IMAGE; the best one is marked."""
    s = _session(model, backend, threads, precision)
    m = s.match(_read(image), list(texts))
    lines = [f"{'*' if i == m.best else ' '} {sc:.3f}  {t}" for i, (sc, t) in enumerate(zip(m.scores, texts))]
    emit({"scores": m.scores, "best": m.best, "backend": m.backend, "latency_ms": m.latency_ms},
         as_json, "\n".join(lines))


@click.command()
@click.argument("image", metavar="IMAGE")
@click.argument("phrase")
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="Write a copy of the image with the box drawn on it.")
@model_option
@_precision_option
@backend_option
@threads_option
@json_option
def locate(image, phrase, out, model, precision, backend, threads, as_json):
    """Find the object PHRASE names in IMAGE ('the small red cube'); prints its box in pixels."""
    s = _session(model, backend, threads, precision)
    src = _read(image)
    loc = s.locate(src, phrase)
    if out:
        _draw(src, loc.box, out)
    emit({"box": loc.box, "score": loc.score, "backend": loc.backend, "latency_ms": loc.latency_ms},
         as_json, f"box {loc.box}  ({loc.score:.2f})" + (f"\nwrote {out}" if out else ""))


def _read(image: str):
    """'-' reads the image bytes from stdin; anything else is a path."""
    if image == "-":
        return click.get_binary_stream("stdin").read()
    return image


def _draw(src, box, out: str) -> None:
    import os
    import tempfile
    from pathlib import Path

    from PIL import ImageDraw

    from ..errors import BadInputError
    from ..vision.preprocess import load_image
    img = load_image(src).copy()
    w = max(2, round(max(img.size) / 150))
    ImageDraw.Draw(img).rectangle(box, outline=(255, 0, 0), width=w)
    dest = Path(out)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".webp": "WEBP"}.get(dest.suffix.lower())
    if fmt is None:
        raise BadInputError(f"--out {out}: use a .png, .jpg, .bmp or .webp file name")
    if not dest.parent.exists():
        raise BadInputError(f"--out {out}: directory {dest.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            img.save(f, format=fmt)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
