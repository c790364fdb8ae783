"""`edge-slim describe`: a caption of an image in the scene grammar's words."""
from __future__ import annotations

import click

from .common import backend_option, emit, json_option, model_option, threads_option
from .infer import _precision_option, _read, _session


@click.command()
@click.argument("image", metavar="IMAGE")
@model_option
@_precision_option
@backend_option
@threads_option
@json_option
def describe(image, model, precision, backend, threads, as_json):
    """Describe IMAGE (a path, or - for standard input): every object with its size, colour and shape."""
    s = _session(model, backend, threads, precision)
    d = s.describe(_read(image))
    emit(d.to_dict(), as_json, d.text)
