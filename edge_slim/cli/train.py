"""`edge-slim train` and `edge-slim export` (need the [train] extra)."""
from __future__ import annotations

import click

from .common import emit, json_option


def _need_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        from ..errors import MissingDependencyError
        raise MissingDependencyError("training needs PyTorch: pip install 'edge-slim[train]'") from None


@click.command("train")
@click.option("--size", type=click.Choice(["tiny", "small"]), default="tiny", show_default=True)
@click.option("--steps", type=click.IntRange(1), default=20000, show_default=True, help="Optimizer steps (ignored with --minutes).")
@click.option("--minutes", type=click.FloatRange(0), default=0.0, help="Train for a wall-clock budget instead of a step count.")
@click.option("--batch", type=click.IntRange(2), default=48, show_default=True, help="Images per step (5 texts each).")
@click.option("--lr", type=float, default=2e-3, show_default=True)
@click.option("--scenes", type=click.IntRange(100), default=100000, show_default=True, help="Rendered training scenes (cached).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the training scene stream and init.")
@click.option("--out", "-o", default="runs/tiny", show_default=True, help="Run directory (checkpoints, logs); resumes if it holds last.pt.")
@click.option("--cache-dir", default=None, help="Where rendered scenes are cached (default ~/.cache/edge-slim).")
@click.option("--eval-every", type=click.IntRange(0), default=2000, show_default=True)
@click.option("--threads", type=click.IntRange(0), default=0, help="Torch threads (0 = torch's default).")
@click.option("--init-from", default="", help="Warm-start from a checkpoint (last.pt) or an exported fp32 bundle directory (new parameters keep their init).")
@click.option("--warmup", type=click.IntRange(0), default=400, show_default=True, help="Linear warm-up steps.")
@click.option("--renderers", default="flat", show_default=True, metavar="MIX",
              help="Renderer mix of the training scenes, e.g. flat:0.2,varied2d:0.4,raycast:0.4 (docs/scenes.md).")
def train_cmd(size, steps, minutes, batch, lr, scenes, seed, out, cache_dir, eval_every, threads, init_from, warmup,
              renderers):
    """Train SlimPajama's three heads jointly on generated scenes (seeded, resumable)."""
    from ..scenes.renderers import parse_mix
    mix = parse_mix(renderers)  # a bad mix fails before torch is needed or anything is rendered
    _need_torch()
    from ..aot.model.train import TrainArgs, train
    a = TrainArgs(size=size, steps=steps, minutes=minutes, batch=batch, lr=lr, scenes=scenes, seed=seed, out=out,
                  eval_every=eval_every, threads=threads, init_from=init_from, warmup=warmup,
                  renderers=",".join(f"{k}:{v:g}" for k, v in mix.items()))
    if cache_dir:
        a.cache_dir = cache_dir
    click.echo(f"training {size} -> {out} ({'%g min' % minutes if minutes else f'{steps} steps'}, batch {batch}, lr {lr}, seed {seed}, "
               f"renderers {a.renderers})", err=True)
    ckpt = train(a, log=lambda m: click.echo(m, err=True))
    click.echo(str(ckpt))


@click.command("export")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "-o", required=True, help="Bundle directory to write (replaced atomically).")
@click.option("--eval-samples", type=click.IntRange(0), default=0, help="Evaluate the exported bundle and record it in the manifest.")
@click.option("--card/--no-card", default=False, help="Write MODEL_CARD.md from the checkpoint's run directory.")
@json_option
def export_cmd(checkpoint, out, eval_samples, card, as_json):
    """Export a checkpoint to an ONNX bundle, checking PyTorch vs ONNX Runtime parity."""
    _need_torch()
    from pathlib import Path

    from ..aot.model.export import export_bundle
    from ..aot.model.train import load_checkpoint
    model = load_checkpoint(checkpoint)
    res = export_bundle(model, Path(out), eval_samples=eval_samples, run_dir=Path(checkpoint).parent if card else None)
    emit(res, as_json)
