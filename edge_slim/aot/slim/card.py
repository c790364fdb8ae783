"""MODEL_CARD.md for a bundle that `edge-slim slim` wrote, from its manifest's `slim` lineage alone."""
from __future__ import annotations

import json

HEADLINE = (("vqa_accuracy", "VQA"), ("match_r1", "match R@1"), ("locate_iou50", "locate IoU>=.5"))
CAPTION = (("object_precision", "obj precision"), ("object_recall", "obj recall"), ("exact_scene", "exact scene"),
           ("relation_precision", "relation precision"))


def slim_card(manifest: dict, args: dict) -> str:
    """The card: what the bundle is, whose student, how it was pruned and distilled, what it scores."""
    lin = manifest["slim"]
    f = lin["figures"]
    d = lin["distill"]
    r = lin["ratios"]
    t = lin["training_scenes"]
    out = [f"# {manifest['name']} — model card", "",
           f"A SlimPajama made smaller by `edge-slim slim` from the teacher `{lin['teacher']['name']}` "
           f"(model sha256 `{lin['teacher']['model_sha256'][:16]}…`). Like its teacher it knows only the "
           "generated CLEVR-like scenes of `docs/scenes.md`.", "",
           "## What was done", "",
           f"- structured pruning ({lin['importance']['method']} importance on {lin['importance']['batches']} "
           f"batches): heads {r['heads']:.0%}, FFN units {r['mlp']:.0%}, stem channels {r['stem']:.0%} removed, "
           f"{r['layers']} whole layer(s); the result is a dense model of the config below",
           f"- config: `{json.dumps(manifest['config'])}`",
           f"- {f['params'] / 1e6:.2f} M parameters, {f['size_mb']:.2f} MB of ONNX graphs, {lin['precision']}"]
    if d:
        out.append(f"- distillation: {d['steps']} steps of batch {d['batch']} (5 texts per image), lr {d['lr']}, "
                   f"{d['seconds'] / 60:.1f} min; answer KL to the teacher {d['answer_kl_to_teacher']['before']} "
                   f"before, {d['answer_kl_to_teacher']['after']} after")
    out.append(f"- training scenes: {t['count']} of seed {t['seed']}, renderers {t['renderers']}")
    q = manifest.get("quantization")
    if q:
        out.append(f"- int8: {q.get('method')} {q.get('form', '')}; nodes kept fp32: {len(q.get('kept_fp32') or [])}")
    out += ["", f"## Evaluation (ONNX Runtime, {lin['eval_samples']} held-out scenes of seed 1 per renderer)", "",
            "| renderer | " + " | ".join(n for _, n in HEADLINE + CAPTION) + " |",
            "|---|" + "---|" * (len(HEADLINE) + len(CAPTION))]
    for name, s in f["scores"].items():
        cap = s.get("describe") or {}
        out.append(f"| {name} | " + " | ".join(f"{s[k]:.3f}" for k, _ in HEADLINE) + " | "
                   + " | ".join(f"{cap[k]:.3f}" if k in cap else "-" for k, _ in CAPTION) + " |")
    lat = f.get("latency_ms")
    out += ["", f"Error (1 - mean of VQA, match and locate over the renderers): {f['error']:.4f}."
            + (f" Model-call p50 {lat:.2f} ms, {f['latency_vs_teacher']:.2f}x the teacher's in paired rounds on "
               f"the machine that ran slim." if lat else ""), "",
            "## Reproduce", "",
            "```",
            "edge-slim slim " + (str(args.get("teacher")) + " " if args.get("teacher") else "")
            + f"--target {lin['target']} --ratios heads={r['heads']},mlp={r['mlp']},stem={r['stem']},layers={r['layers']} "
            f"--renderers {t['renderers']} --scenes {t['count']} --steps "
            f"{d['steps'] if d else args['distill']['steps']} --batch {args['distill']['batch']} --lr "
            f"{args['distill']['lr']:g} --int8-max-drop {args['int8_max_drop']:g} --eval-samples "
            f"{lin['eval_samples']} --seed {t['seed']} -o OUT",
            "```", "",
            "The other candidates of the same run (manifest `slim.frontier`):", "",
            "| candidate | precision | MB | error | p50 ms | frontier |", "|---|---|---|---|---|---|"]
    out += [f"| {c['name']} | {c['precision']} | {c['size_mb']:.2f} | {c['error']:.4f} | "
            f"{c['latency_ms'] if c['latency_ms'] is not None else '-'} | {'*' if c['pareto'] else ''} |"
            for c in lin["frontier"]]
    return "\n".join(out) + "\n"
