"""Do the shipped int8 answers depend on the CPU's integer arithmetic? Record every answer, then compare.

ONNX Runtime's uint8 x int8 kernels on x86 without VNNI (AVX2: `vpmaddubsw`) add each pair of adjacent
products into a saturating int16, so a model can answer differently there than on a VNNI, ARM, TVM or NumPy
run, which compute exact int32 sums. Run `record` natively and under `qemu-x86_64-static -cpu Haswell`
(ONNX Runtime's AVX2 code path on any x86 machine), then `compare`:

    python benchmarks/int8_arith.py record --precision int8 --backend ort --stop 2000 --out exact.json
    qemu-x86_64-static -cpu Haswell .venv/bin/python benchmarks/int8_arith.py record --precision int8 \
        --backend ort --stop 2000 --out avx2.json
    python benchmarks/int8_arith.py compare exact.json avx2.json

`record` writes, for each held-out scene (seed 1, as `edge-slim eval`), the answer to one question per
family, the best of the 8 captions and the located box, plus which integer arithmetic ONNX Runtime used
(`ort_u8s8`: "exact" or "saturating-pairs", probed on a random MatMulInteger).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_slim.runtime import bundle as B  # noqa: E402
from edge_slim.runtime.session import Session  # noqa: E402
from edge_slim.scenes.evaluate import DEFAULT_EVAL_SEED, scene_answers, summarize  # noqa: E402


def record(args) -> None:
    from edge_slim.aot.quantize.int8_arith import ort_u8s8_arithmetic
    from edge_slim import shipped
    bundle = B.open_bundle(shipped(args.precision) if args.model is None else args.model)
    s = Session(bundle, backend=args.backend, threads=1,
                backend_options={"arithmetic": args.arithmetic} if args.arithmetic else None)
    rows, t0 = [], time.time()
    meta = {"model": str(bundle.path), "model_sha256": bundle.manifest["files"][bundle.manifest["model_file"]]["sha256"],
            "backend": s.backend_name, "arithmetic": args.arithmetic or "native", "seed": args.seed,
            "ort_u8s8": ort_u8s8_arithmetic() if s.backend_name == "ort" else None,
            "qemu_cpu": os.environ.get("QEMU_CPU")}
    for i in range(args.start, args.stop):
        rows.append(scene_answers(s, args.seed, i))
        if args.progress and (i + 1 - args.start) % args.progress == 0:
            print(f"{i + 1 - args.start}/{args.stop - args.start} scenes, {time.time() - t0:.0f} s", file=sys.stderr)
            _write(args.out, {**meta, "seconds": round(time.time() - t0, 1), "scenes": rows})  # a slow run's partial
    _write(args.out, {**meta, "seconds": round(time.time() - t0, 1), "scenes": rows})


def _write(path: str, doc: dict) -> None:
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)


def load_rows(paths: list[str]) -> tuple[dict, list[dict]]:
    """One or more record files of the same run (scene ranges split across processes), merged."""
    docs = [json.loads(Path(p).read_text()) for p in paths]
    rows = sorted((r for d in docs for r in d["scenes"]), key=lambda r: r["i"])
    return {k: docs[0][k] for k in ("model", "model_sha256", "backend", "arithmetic", "ort_u8s8", "qemu_cpu")}, rows


def compare(args) -> None:
    (ha, ra), (hb, rb) = load_rows(args.a.split(",")), load_rows(args.b.split(","))
    ia, ib = {r["i"]: r for r in ra}, {r["i"]: r for r in rb}
    common = sorted(set(ia) & set(ib))
    q_diff = sum(x != y for i in common for x, y in zip(ia[i]["answers"], ib[i]["answers"]))
    m_diff = sum(ia[i]["match"] != ib[i]["match"] for i in common)
    boxes = [(ia[i]["box"], ib[i]["box"]) for i in common if "box" in ia[i]]
    b_diff = sum(a != b for a, b in boxes)
    b_max = max((max(abs(x - y) for x, y in zip(a, b)) for a, b in boxes), default=0.0)
    res = {"a": ha, "b": hb, "scenes": len(common), "questions": sum(len(ia[i]["answers"]) for i in common),
           "answers_differ": q_diff, "match_differ": m_diff, "boxes_differ": b_diff, "box_max_abs_px": round(b_max, 3),
           "scores_a": summarize([ia[i] for i in common]), "scores_b": summarize([ib[i] for i in common])}
    print(json.dumps(res, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("--model", default=None)
    r.add_argument("--precision", default="int8")
    r.add_argument("--backend", default="ort")
    r.add_argument("--arithmetic", default=None, help="numpy backend only: exact or ort-avx2")
    r.add_argument("--seed", type=int, default=DEFAULT_EVAL_SEED)
    r.add_argument("--start", type=int, default=0)
    r.add_argument("--stop", type=int, default=2000)
    r.add_argument("--progress", type=int, default=100)
    r.add_argument("--out", required=True)
    c = sub.add_parser("compare")
    c.add_argument("a", help="record file(s), comma separated")
    c.add_argument("b")
    args = ap.parse_args()
    record(args) if args.cmd == "record" else compare(args)


if __name__ == "__main__":
    main()
