"""`edge-slim` entry point. Each subcommand lives in its own module and is imported on use."""
from __future__ import annotations

import importlib
import sys

import click

# command name -> ("module:function", one-line help); one thin module per command (edge_slim/cli/*.py).
# The help lives here so that `edge-slim --help` lists commands without importing any of them.
COMMANDS = {
    "ask": ("edge_slim.cli.infer:ask", "Answer a question about an image."),
    "match": ("edge_slim.cli.infer:match", "Score how well texts describe an image."),
    "locate": ("edge_slim.cli.infer:locate", "Find the object a phrase names; print its box."),
    "describe": ("edge_slim.cli.describe:describe", "Describe an image: its objects and where they are."),
    "bench": ("edge_slim.cli.bench:bench_cmd", "Time models side by side on this device (paired rounds)."),
    "info": ("edge_slim.cli.info:info", "Show a model bundle's verified manifest."),
    "eval": ("edge_slim.cli.evaluate:eval_cmd", "Accuracy on freshly generated held-out scenes."),
    "train": ("edge_slim.cli.train:train_cmd", "Train SlimPajama on generated scenes [train]."),
    "export": ("edge_slim.cli.train:export_cmd", "Export a checkpoint to an ONNX bundle [train]."),
    "targets": ("edge_slim.cli.targets:targets_cmd", "List compile targets and their toolchains."),
    "compile": ("edge_slim.cli.compile:compile_cmd", "Compile a model with Apache TVM for a device [tvm]."),
    "run": ("edge_slim.cli.run:run_cmd", "Run a compiled bring-your-own model on .npy inputs."),
    "quantize": ("edge_slim.cli.quantize:quantize_cmd", "Make an int8 bundle within an accuracy budget [quantize]."),
    "slim": ("edge_slim.cli.slim:slim_cmd", "Prune, distill and quantize a teacher; choose on the size/error frontier."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        mod, fn = COMMANDS[name][0].split(":")
        return getattr(importlib.import_module(mod), fn)

    def format_commands(self, ctx, formatter):
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][1]) for name in self.list_commands(ctx)])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edge-slim")
def cli():
    """edge-slim: run and compile the SlimPajama image+text model on edge devices, offline."""


def main():
    from .common import run_cli
    sys.exit(run_cli(cli))


if __name__ == "__main__":
    main()
