"""MODEL_CARD.md for an exported bundle, written from the training run's own logs."""
from __future__ import annotations

import json
import platform
from pathlib import Path


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def model_card(model, run_dir: Path, manifest: dict, res: dict) -> str:
    args = json.loads((run_dir / "args.json").read_text()) if (run_dir / "args.json").exists() else {}
    log, evals = _lines(run_dir / "log.jsonl"), _lines(run_dir / "eval.jsonl")
    last = log[-1] if log else {}
    n_params = sum(p.numel() for p in model.parameters())
    ev = manifest.get("eval") or {}
    step = getattr(model, "trained_steps", None) or last.get("step")
    cmd = (f"edge-slim train --size {args.get('size', 'tiny')} --minutes {args.get('minutes', 0):g} "
           f"--batch {args.get('batch')} --lr {args.get('lr')} --scenes {args.get('scenes')} --seed {args.get('seed')}"
           + (f" --renderers {args['renderers']}" if args.get("renderers", "flat") != "flat" else "")
           + (f" --init-from {args['init_from']}" if args.get("init_from") else ""))
    out = [f"# {manifest['name']} — model card", "",
           "A compact image+text transformer (see `edge_slim/aot/model/slimpajama.py`), trained (from scratch, or warm-started as below) on "
           "generated CLEVR-like scenes (`docs/scenes.md`). It knows only that world: 5 shapes, 8 colours, "
           "2 sizes on textured backgrounds; photos of real objects are out of its domain.", "",
           "## Architecture", "",
           f"- {n_params / 1e6:.2f} M parameters; config: `{json.dumps(manifest['config'])}`",
           f"- ONNX opset {manifest['toolchain']['opset']}, fp32, {manifest['files']['model.onnx']['bytes'] / 1e6:.2f} MB",
           "", "## Training", "",
           f"- command: `{cmd}` (the schedule follows wall-clock time when --minutes is set)",
           f"- steps: {step}, wall-clock {last.get('time_s', 0) / 60:.1f} min on "
           f"{platform.machine()} with {args.get('threads') or 'the default number of'} torch threads, batch {args.get('batch')} images x 5 texts",
           f"- data: {args.get('scenes')} rendered scenes of seed {args.get('seed')}, 12 questions, 3 referring "
           "expressions, 3 true and 3 false captions each; every step draws fresh combinations",
           f"- final losses (EMA): {json.dumps({k: v for k, v in last.items() if k not in ('step', 'lr', 'time_s')})}",
           f"- PyTorch vs ONNX Runtime max abs diff: {res['parity_max_abs_diff']:.2e}", ""]
    if (run_dir / "history.md").exists():  # how the run was warm-started, written by whoever ran it
        out += [(run_dir / "history.md").read_text().strip(), ""]
    if evals:
        # one row per step (flat-only runs) or per step and renderer (a renderer mix: train.py evaluates
        # each renderer of the mix and the unseen one)
        rows = [(e["step"], None, e) if "vqa_accuracy" in e else (e["step"], n, r)
                for e in evals for n, r in ([(None, e)] if "vqa_accuracy" in e else
                                            [(k, v) for k, v in e.items() if isinstance(v, dict)])]
        mixed = any(n for _, n, _ in rows)
        out += ["Held-out accuracy during training (PyTorch, quick check on "
                f"{args.get('eval_samples')} scenes of seed {args.get('seed', 0) + 1}):", "",
                "| step |" + (" renderer |" if mixed else "") + " VQA | match R@1 | locate IoU>=.5 |",
                "|---|" + ("---|" if mixed else "") + "---|---|---|"]
        out += [f"| {st} |" + (f" {n} |" if mixed else "") +
                f" {r['vqa_accuracy']:.3f} | {r['match_r1']:.3f} | {r['locate_iou50']:.3f} |" for st, n, r in rows]
        out.append("")
    if ev:
        out += ["## Evaluation (`edge-slim eval`, ONNX Runtime)", "",
                f"{ev['samples']} held-out scenes of seed {ev['seed']} (training used seed {args.get('seed', 0)}):", "",
                "| metric | value | target |", "|---|---|---|",
                f"| VQA accuracy | {ev['vqa_accuracy']:.4f} | >= 0.92 |",
                *[f"| &nbsp; {k} | {v:.4f} | |" for k, v in ev["per_family"].items()],
                f"| matching R@1 (1 true of 8) | {ev['match_r1']:.4f} | >= 0.92 |",
                f"| locate IoU >= 0.5 | {ev['locate_iou50']:.4f} | >= 0.85 |", "",
                f"Reproduce: `edge-slim eval --samples {ev['samples']} --seed {ev['seed']}`.", ""]
    return "\n".join(out)
