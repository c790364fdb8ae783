"""A robot loop: read frames from a folder or a video at a fixed rate, ask about each, report latency.

    python examples/robot_loop.py examples/images "is there a red sphere?" --fps 5
    python examples/robot_loop.py clip.gif "how many cubes are there?" --json

Frames come from a folder of images (sorted by name) or from an animated GIF/PNG/WebP (Pillow);
an .mp4/.avi needs OpenCV (pip install opencv-python-headless). A frame that cannot be read is
reported and skipped: a robot should not stop for one bad frame.
"""
import argparse
import json
import sys
import time
from pathlib import Path

from PIL import Image, ImageSequence

import edge_slim
from edge_slim.errors import EdgeSlimError

IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def frames(source: Path):
    """Yield (name, frame) where a frame is a path or a PIL image."""
    if source.is_dir():
        for p in sorted(source.iterdir()):
            if p.suffix.lower() in IMAGE_EXT:
                yield p.name, p
    elif source.suffix.lower() in (".mp4", ".avi", ".mov", ".mkv"):
        import cv2  # optional
        cap = cv2.VideoCapture(str(source))
        i = 0
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            yield f"frame{i:05d}", bgr[..., ::-1].copy()
            i += 1
    else:
        with Image.open(source) as im:
            for i, f in enumerate(ImageSequence.Iterator(im)):
                yield f"frame{i:05d}", f.convert("RGB")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path)
    ap.add_argument("question")
    ap.add_argument("--fps", type=float, default=10.0, help="frames per second to process (default 10)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--json", action="store_true", help="one JSON object per frame")
    a = ap.parse_args(argv)
    session = edge_slim.load(a.model, backend=a.backend)
    period, next_t, lat = 1.0 / a.fps, time.perf_counter(), []
    for name, frame in frames(a.source):
        time.sleep(max(0.0, next_t - time.perf_counter()))
        next_t += period
        try:
            ans = session.ask(frame, a.question)
        except EdgeSlimError as e:
            print(f"{name}: skipped ({e})", file=sys.stderr)
            continue
        lat.append(ans.latency_ms)
        if a.json:
            print(json.dumps({"frame": name, "answer": ans.answer, "score": round(ans.score, 4),
                              "latency_ms": ans.latency_ms}))
        else:
            print(f"{name}: {ans.answer} ({ans.score:.2f})  {ans.latency_ms:.1f} ms")
    if lat:
        lat.sort()
        print(f"{len(lat)} frames, latency p50 {lat[len(lat) // 2]:.1f} ms, max {lat[-1]:.1f} ms", file=sys.stderr)


if __name__ == "__main__":
    main()
