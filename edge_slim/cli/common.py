"""What every command shares: common options, JSON output, and turning errors into exit codes.

Exit codes: 0 ok, 2 usage, 3 bad input, 4 model or artifact problem (see edge_slim.errors).
Errors the user can act on print one line on stderr, never a traceback.
"""
from __future__ import annotations

import json

import click

from ..errors import EdgeSlimError


def model_option(f):
    return click.option("--model", "-m", "model", default=None, metavar="PATH|NAME",
                        help="Model bundle directory or archive, or a shipped model's name (edge-slim info "
                             "--list; default: the shipped SlimPajama-Tiny).")(f)


def backend_option(f):
    return click.option("--backend", "-b", default="auto", show_default=True,
                        type=click.Choice(["auto", "ort", "numpy", "tvm"]),
                        help="ort, numpy, tvm, or auto (ort if installed, else numpy; tvm for compiled bundles).")(f)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")(f)


def threads_option(f):
    return click.option("--threads", type=click.IntRange(1, 256), default=None,
                        help="Threads for the backend (default: one per physical core; NumPy's BLAS sets its own).")(f)


def emit(obj, as_json: bool, text: str | None = None) -> None:
    if as_json:
        click.echo(json.dumps(obj, indent=None if len(json.dumps(obj)) < 2000 else 1))
    else:
        click.echo(text if text is not None else json.dumps(obj, indent=1))


def run_cli(cli) -> int:
    """Run the click group; map EdgeSlimError to its exit code with one line on stderr."""
    try:
        cli.main(standalone_mode=False)
        return 0
    except EdgeSlimError as e:
        click.echo(f"edge-slim: error: {e}", err=True)
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code  # 2 for usage errors
    except click.Abort:
        click.echo("edge-slim: aborted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("edge-slim: interrupted", err=True)
        return 130
    except BrokenPipeError:
        return 0
