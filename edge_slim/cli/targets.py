"""`edge-slim targets`: the device profiles in targets/, and which toolchains are installed."""
from __future__ import annotations

import click

from .common import emit, json_option


@click.command("targets")
@json_option
def targets_cmd(as_json: bool):
    """List compile targets and what each needs installed."""
    from ..targets import describe
    rows = describe()
    lines = []
    for r in rows:
        alias = f" (alias {', '.join(r['aliases'])})" if r["aliases"] else ""
        state = "ready" if r["ready"] else "missing: " + "; ".join(r["missing"])
        lines.append(f"{r['name']:<18} {r['kind']:<4} {r['description']}{alias}\n{'':<23}{state}")
    emit({"targets": rows}, as_json, "\n".join(lines))
