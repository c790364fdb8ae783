"""`edge-slim slim` as a library: build candidates from a teacher bundle, measure them, choose one, write it.

    teacher fp32 bundle -> torch model (aot/model/from_bundle.py) + a scene cache (aot/model/train.py's)
      -> importance of every head / FFN unit / stem channel / layer, measured once on the teacher
      -> per pruning ratio set: prune -> distill (teacher + ground truth) -> export an fp32 bundle
      -> per candidate (the teacher itself included), per precision: int8 by aot/quantize/slimpajama.py's
         quantize_bundle (per-node fp32 fallback by measured sensitivity, within --int8-max-drop)
      -> every candidate measured through the runtime: size, accuracy on held-out scenes of each
         training renderer and the unseen one, p50 model-call latency (runtime/bench.py, paired rounds)
      -> Pareto frontier, complexity objective, constraints (select.py) -> the chosen bundle, written
         atomically with its lineage in the manifest

Error, the objective's accuracy axis: 1 - the mean of VQA accuracy, match R@1 and locate IoU>=0.5
(quantize.HEADLINE), averaged over the evaluated renderers.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ...errors import BadInputError, ModelError
from ...runtime import bundle as B
from . import select as S
from .distill import DistillArgs
from .prune import Ratios

DEFAULT_RATIOS = ("heads=0.25,mlp=0.25,stem=0.25", "heads=0.5,mlp=0.5,stem=0.25",
                  "heads=0.5,mlp=0.5,stem=0.5,layers=1", "heads=0.5,mlp=0.75,stem=0.5,layers=2",
                  "heads=0.75,mlp=0.875,stem=0.5,layers=3")     # the last: ~0.32x Tiny's parameters (Nano)
PRECISIONS = ("fp32", "int8")
UNSEEN = "unseen"


@dataclass
class SlimArgs:
    teacher: str | None = None                 # an fp32 bundle; None: the shipped SlimPajama-Tiny
    target: str = "x86-64"                     # targets/*.toml; recorded, and latency is measured on this host
    ratios: tuple[Ratios, ...] = tuple(Ratios.parse(r) for r in DEFAULT_RATIOS)
    precisions: tuple[str, ...] = PRECISIONS
    distill: DistillArgs = field(default_factory=DistillArgs)
    importance: str = "taylor"
    importance_batches: int = 8
    scenes: int = 5000                          # training scenes rendered (cached) for importance + distillation
    renderers: str = "flat"                     # their renderer mix; evaluation: these renderers + unseen
    cache_dir: str = str(Path.home() / ".cache" / "edge-slim")
    eval_samples: int = 300
    int8_max_drop: float = 0.01
    calib_samples: int = 100
    bench_rounds: int = 5
    budget_minutes: float = 0.0                 # 0: no budget
    seed: int = 0
    threads: int | None = None                  # torch threads (None: torch's default)
    keep_dir: str | None = None                 # keep every candidate bundle here (<tag>/<precision>), with report.json

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ratios"] = [r.to_dict() for r in self.ratios]
        return d


def eval_renderers(mix: str) -> list[str]:
    from ...scenes.renderers import parse_mix
    return sorted(parse_mix(mix)) + [UNSEEN]


def graph_bytes(bundle: Path) -> int:
    """Bytes of the bundle's ONNX graphs (model + describe decoder): what a device stores and loads."""
    files = B.open_bundle(bundle, verify=False).manifest["files"]
    return sum(f["bytes"] for name, f in files.items() if name.endswith(".onnx"))


def error_of(scores: dict[str, dict]) -> float:
    from ..quantize.slimpajama import HEADLINE
    per = [sum(s[k] for k in HEADLINE) / len(HEADLINE) for s in scores.values()]
    return round(1.0 - sum(per) / len(per), 5)


def measure_accuracy(bundle: Path, renderers: list[str], samples: int, progress: Callable[[int], None]) -> dict:
    import edge_slim
    from ...scenes.evaluate import DEFAULT_EVAL_SEED, evaluate
    with edge_slim.load(bundle, backend="ort") as s:
        return {r: evaluate(s, samples=samples, seed=DEFAULT_EVAL_SEED, renderer=r, progress=progress) for r in renderers}


def _teacher(a: SlimArgs) -> B.Bundle:
    tb = B.open_bundle(a.teacher)
    m = tb.manifest
    if m["format"] != "onnx" or m.get("precision") != "fp32" or m.get("quantization"):
        raise ModelError(f"{tb.path} is a {m['format']}/{m.get('precision')} bundle; slim takes an fp32 ONNX "
                         "teacher (the bundle an int8 one was quantized from)")
    return tb


def check_args(a: SlimArgs, out: Path) -> B.Bundle:
    """Every input checked before anything heavy runs; -> the teacher bundle."""
    from ...scenes.renderers import parse_mix
    from ...targets import get_target
    get_target(a.target)
    parse_mix(a.renderers)
    if not a.ratios:
        raise BadInputError("no pruning ratios given")
    if not a.precisions or any(p not in PRECISIONS for p in a.precisions):
        raise BadInputError(f"precisions must be some of {', '.join(PRECISIONS)}")
    if a.distill.steps < 1 or a.eval_samples < 1 or a.bench_rounds < 1 or a.scenes < 2 * a.distill.batch:
        raise BadInputError("steps, eval samples and bench rounds must be >= 1, and scenes >= 2 x batch")
    tb = _teacher(a)
    if Path(out).resolve() == tb.path.resolve():
        raise BadInputError(f"the output {out} would replace the teacher; pass another -o")
    return tb


def slim(a: SlimArgs, out: Path, objective: S.Objective, log: Callable[[str], None] = lambda m: None,
         progress: Callable[[int], None] = lambda k: None, plot: Path | None = None, plot_x: str = "size") -> dict:
    """Run the whole search (module docstring) and write the chosen candidate to `out` (and the frontier PNG
    to `plot`); -> the report."""
    tb = check_args(a, Path(out))
    import torch
    from ..model.from_bundle import model_from_bundle
    from ..model.train import TrainArgs, scene_cache
    from .batches import loss_batches
    from .prune import measure_importance

    if a.threads:
        torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)
    t0 = time.time()
    renderers = eval_renderers(a.renderers)
    log(f"slim {tb.path} for {a.target}: {len(a.ratios)} pruning ratio set(s) x {'/'.join(a.precisions)}, "
        f"{a.distill.steps} distillation steps each (batch {a.distill.batch}), importance {a.importance} on "
        f"{a.importance_batches} batches, {a.scenes} training scenes ({a.renderers}), {a.eval_samples} held-out "
        f"scenes per renderer ({', '.join(renderers)}), {a.bench_rounds} latency rounds"
        + (f", budget {a.budget_minutes:g} min" if a.budget_minutes else ""))
    teacher = model_from_bundle(tb.path)
    cache = scene_cache(TrainArgs(scenes=a.scenes, seed=a.seed, cache_dir=a.cache_dir, renderers=a.renderers),
                       teacher.cfg, log)
    imp = measure_importance(teacher, loss_batches(cache, a.importance_batches, 16, a.seed), a.importance)
    log(f"importance measured ({time.time() - t0:.0f} s so far)")
    with tempfile.TemporaryDirectory(prefix="edge-slim-slim-") as tmp:
        work = Path(tmp)
        cands: list[dict] = []
        _add(cands, _measured({"name": tb.manifest["name"], "tag": "teacher", "ratios": Ratios().to_dict(),
                               "precision": "fp32", "bundle": tb.path, "params": _params(teacher), "distill": None},
                              a, renderers, progress), a, renderers, work, log, progress)
        skipped, last = [], None
        for r in a.ratios:
            if a.budget_minutes and last is not None and time.time() - t0 + last > 60 * a.budget_minutes:
                skipped.append(r.tag)
                continue
            start = time.time()
            _add(cands, _build(teacher, imp, r, cache, a, work, renderers, log, progress), a, renderers, work, log,
                 progress)
            last = time.time() - start
        if skipped:
            log(f"budget of {a.budget_minutes:g} min: skipped {', '.join(skipped)}")
        rows = [c for c in cands if c["precision"] in a.precisions]
        if not rows:
            raise S.NoFeasibleCandidate("no int8 candidate met --int8-max-drop and fp32 was not asked for; "
                                        "nothing written")
        _latency(rows, a, log)
        report = _decide(rows, objective, a, tb, skipped, renderers)
        i = report["chosen"]
        _write(rows[i], report["candidates"][i], Path(out), report, a, tb, imp.method)
        if a.keep_dir:
            _keep(rows, Path(a.keep_dir), report, a, tb, imp.method)
    report["seconds"] = round(time.time() - t0, 1)
    report["bundle"] = str(out)
    if plot is not None:
        from .plot import plot_frontier
        report["plot"] = str(plot_frontier(report["candidates"], plot, plot_x))
    return report


def _keep(rows: list[dict], dest: Path, report: dict, a: SlimArgs, tb: B.Bundle, importance: str) -> None:
    """Every candidate but the teacher itself as a bundle with its lineage and card (dest/<tag>/<precision>,
    the teacher's int8 as teacher/int8) and the report, so that a run's other points can be shipped or
    compared without rerunning it; replaced atomically."""
    import json
    with B.staging_dir(dest) as tmp:
        for c, row in zip(rows, report["candidates"]):
            if c["tag"] != "teacher" or c["precision"] != "fp32":
                _write(c, row, tmp / c["tag"] / c["precision"], report, a, tb, importance)
        (tmp / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")


def _params(model) -> int:
    from .prune import parameter_count
    return parameter_count(model)


def _build(teacher, imp, r: Ratios, cache, a: SlimArgs, work: Path, renderers, log, progress) -> dict:
    from ..model.export import export_bundle
    from .distill import distill, divergence
    from .prune import prune
    student = prune(teacher, imp, r, name=f"{teacher.cfg.name}-slim-{r.tag}")
    kl_before = divergence(student, teacher, cache, seed=a.seed)["kd_answer"]
    summary = distill(student, teacher, cache, a.distill, progress)
    summary["answer_kl_to_teacher"] = {"before": round(kl_before, 4),
                                       "after": round(divergence(student, teacher, cache, seed=a.seed)["kd_answer"], 4)}
    path = work / r.tag / "fp32"
    export_bundle(student, path)
    log(f"{r.tag}: {_params(student):,} parameters, distilled {summary['steps']} steps in {summary['seconds']:.0f} s "
        f"(answer KL to teacher {summary['answer_kl_to_teacher']['before']:.3f} -> "
        f"{summary['answer_kl_to_teacher']['after']:.3f})")
    return _measured({"name": student.cfg.name, "tag": r.tag, "ratios": r.to_dict(), "precision": "fp32",
                      "bundle": path, "params": _params(student), "distill": summary}, a, renderers, progress)


def _measured(c: dict, a: SlimArgs, renderers, progress) -> dict:
    c["size_mb"] = round(graph_bytes(c["bundle"]) / 1e6, 4)
    c["scores"] = measure_accuracy(c["bundle"], renderers, a.eval_samples, progress)
    c["error"] = error_of(c["scores"])
    return c


def _add(cands: list[dict], fp32: dict, a: SlimArgs, renderers, work: Path, log, progress) -> None:
    """The fp32 candidate, and its int8 one when int8 is asked for and fits the budget."""
    cands.append(fp32)
    if "int8" not in a.precisions:
        return
    from ..quantize.slimpajama import BudgetError, quantize_bundle
    dst = work / fp32["tag"] / "int8"
    try:
        q = quantize_bundle(fp32["bundle"], dst, calib_samples=a.calib_samples, max_drop=a.int8_max_drop,
                            eval_samples=a.eval_samples)
    except BudgetError as e:
        log(f"{fp32['tag']} int8: {e}")
        return
    c = {**{k: fp32[k] for k in ("tag", "ratios", "params", "distill")}, "name": f"{fp32['name']}-int8",
         "precision": "int8", "bundle": dst, "int8": {"drop": q["drop"], "kept_fp32": len(q["kept_fp32"]),
                                                     "form": q["form"]}}
    cands.append(_measured(c, a, renderers, progress))
    log(f"{fp32['tag']} int8: drop {q['drop'] * 100:.2f} points, {len(q['kept_fp32'])} node(s) kept fp32")


def _latency(rows: list[dict], a: SlimArgs, log) -> None:
    """p50 of the model call of every candidate, in paired rounds on this host (runtime/bench.py)."""
    from ...runtime.bench import Config, bench
    r = bench([Config(str(c["bundle"]), backend="ort") for c in rows], rounds=a.bench_rounds, block=10, warmup=3)
    for c, res in zip(rows, [x for x in r["results"] if not x["together"] and x["call"] == "model"]):
        c["latency_ms"] = res["p50_ms"]
        c["latency_vs_teacher"] = res["paired_ratio"]       # paired with the first row (the teacher)
    from ...runtime.machine import describe
    from ...targets import get_target, host_triple
    t = get_target(a.target)
    other = t.kind != "cpu" or t.host_triple != host_triple()
    log(f"latency: {a.bench_rounds} paired rounds of {len(rows)} bundles on this host, {describe(r['cpu'])}"
        + (f" (not a {t.name} device: its figures rank the candidates, they are not the device's)" if other else ""))
    for c in rows:
        c["latency_cpu"] = r["cpu"]


def _decide(rows: list[dict], obj: S.Objective, a: SlimArgs, tb: B.Bundle, skipped, renderers) -> dict:
    front = set(S.pareto(rows))
    cplx = S.complexity(rows, obj)
    chosen = S.choose(rows, obj)
    table = []
    for i, c in enumerate(rows):
        table.append({"name": c["name"], "tag": c["tag"], "precision": c["precision"], "params": c["params"],
                      "size_mb": c["size_mb"], "error": c["error"], "latency_ms": c.get("latency_ms"),
                      "latency_vs_teacher": c.get("latency_vs_teacher"),
                      "scores": {r: {k: s[k] for k in ("vqa_accuracy", "match_r1", "locate_iou50", "describe") if k in s}
                                 for r, s in c["scores"].items()},   # describe: caption figures (not in error)
                      "answer_kl_to_teacher": (c["distill"] or {}).get("answer_kl_to_teacher"),
                      "int8": c.get("int8"),
                      "complexity": round(cplx[i], 4), "pareto": i in front, "chosen": i == chosen,
                      "feasible": i in S.feasible(rows, obj)})
    return {"teacher": str(tb.path), "target": a.target, "objective": obj.to_dict(), "renderers": renderers,
            "eval_samples": a.eval_samples, "candidates": table, "chosen": chosen, "skipped_by_budget": list(skipped),
            "axes": list(S._axes(rows))}


def _write(c: dict, row: dict, out: Path, report: dict, a: SlimArgs, tb: B.Bundle, importance: str) -> None:
    """Candidate `c` (its table row `row`) as a bundle at `out`, replaced atomically: its files, `eval`, the
    `slim` lineage and a MODEL_CARD.md written from it (aot/slim/card.py)."""
    from .card import slim_card
    src = B.open_bundle(c["bundle"])
    lineage = {
        "teacher": {"name": tb.manifest["name"], "path": str(tb.path),
                    "model_sha256": tb.manifest["files"][tb.manifest["model_file"]]["sha256"]},
        "target": a.target, "tag": c["tag"], "ratios": c["ratios"], "precision": c["precision"],
        "importance": {"method": importance, "batches": a.importance_batches},
        "distill": None if c["distill"] is None else {**a.distill.to_dict(), **c["distill"]},
        "training_scenes": {"count": a.scenes, "seed": a.seed, "renderers": a.renderers},
        "figures": {k: row[k] for k in ("params", "size_mb", "error", "latency_ms", "latency_vs_teacher", "scores",
                                        "complexity")},
        "objective": report["objective"], "eval_samples": a.eval_samples, "latency_cpu": c.get("latency_cpu"),
        "frontier": [{k: r[k] for k in ("name", "precision", "size_mb", "error", "latency_ms", "pareto")}
                     for r in report["candidates"]],
    }
    with B.staging_dir(out) as tmp:
        for name in src.manifest["files"]:
            if name == "MODEL_CARD.md":         # the teacher's card describes the teacher
                continue
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src.path / name, tmp / name)
        man = {k: v for k, v in src.manifest.items() if k != "files"}
        first = report["renderers"][0]
        man["eval"] = {**c["scores"][first], "by_renderer": {r: {k: s[k] for k in ("vqa_accuracy", "match_r1",
                                                                                    "locate_iou50")}
                                                             for r, s in c["scores"].items()}}
        man["slim"] = lineage
        (tmp / "MODEL_CARD.md").write_text(slim_card(man, a.to_dict()))
        B.write_manifest(tmp, man)
