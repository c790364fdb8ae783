"""The frontier as a PNG (Pillow only: matplotlib is not a dependency of edge-slim).

x: size in MB (or p50 latency in ms), y: error; every candidate a dot (int8 squares, fp32 circles), red when
it is on the table's Pareto frontier (over every measured axis), grey when dominated; the line joins the
frontier of the two plotted axes; the chosen candidate is ringed and labelled.
"""
from __future__ import annotations

import os
from pathlib import Path

W, H, PAD = 720, 480, 64
AXES = {"size": ("size_mb", "size (MB of ONNX graphs)"), "latency": ("latency_ms", "p50 model call (ms)")}


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    return [lo + (hi - lo) * k / (n - 1) for k in range(n)]


def plot_frontier(table: list[dict], path: Path, x_axis: str = "size") -> Path:
    """Draw the candidate table (search._decide's rows) to `path`, atomically."""
    from PIL import Image, ImageDraw
    if x_axis not in AXES:
        raise ValueError(f"x axis must be one of {', '.join(AXES)}")
    key, label = AXES[x_axis]
    rows = [r for r in table if r.get(key) is not None]
    if not rows:
        raise ValueError(f"no candidate has a measured {key}")
    xs, ys = [r[key] for r in rows], [100 * r["error"] for r in rows]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    mx, my = (x1 - x0) * 0.08 or max(abs(x0) * 0.1, 1e-3), (y1 - y0) * 0.08 or max(abs(y0) * 0.1, 1e-3)
    x0, x1, y0, y1 = x0 - mx, x1 + mx, max(0.0, y0 - my), y1 + my
    px = lambda v: PAD + (v - x0) / (x1 - x0) * (W - 2 * PAD)
    py = lambda v: H - PAD - (v - y0) / (y1 - y0) * (H - 2 * PAD)
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    d.rectangle([PAD, PAD, W - PAD, H - PAD], outline="black")
    for t in _ticks(x0, x1):
        d.line([px(t), H - PAD, px(t), H - PAD + 5], fill="black")
        d.text((px(t) - 14, H - PAD + 8), f"{t:.2f}", fill="black")
    for t in _ticks(y0, y1):
        d.line([PAD - 5, py(t), PAD, py(t)], fill="black")
        d.text((6, py(t) - 6), f"{t:.2f}", fill="black")
    d.text((W // 2 - 60, H - 24), label, fill="black")
    d.text((6, 12), "error (%) = 100 x (1 - mean of VQA, match R@1, locate IoU>=0.5)", fill="black")
    from .select import pareto
    front = sorted((rows[i] for i in pareto(rows, (key, "error"))), key=lambda r: (r[key], r["error"]))
    d.line([(px(r[key]), py(100 * r["error"])) for r in front], fill=(200, 60, 40), width=2)
    for r in rows:
        cx, cy = px(r[key]), py(100 * r["error"])
        color = (200, 60, 40) if r["pareto"] else (120, 120, 120)
        box = [cx - 4, cy - 4, cx + 4, cy + 4]
        (d.rectangle if r["precision"] == "int8" else d.ellipse)(box, fill=color)
        if r["chosen"]:
            d.ellipse([cx - 9, cy - 9, cx + 9, cy + 9], outline=(20, 90, 200), width=2)
            d.text((cx + 11, cy - 14), f"chosen: {r['name']}", fill=(20, 90, 200))
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    img.save(tmp)
    os.replace(tmp, path)
    return path
