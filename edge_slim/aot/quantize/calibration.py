"""Calibration inputs for quantization: generated scenes, or a user's folder of images + texts.

Feeds are model inputs ({"image": [1,3,H,W] float32, "tokens": [1,L] int64}) made with a Session's own
preprocessing and tokenizer, so calibration sees exactly what inference will. Folder format: docs/quantize.md.
"""
from __future__ import annotations

import json
from pathlib import Path

from ...errors import BadInputError
from ...scenes.feeds import scene_feeds as _scene_feeds

CALIB_SEED = 2        # training uses scene stream 0 and evaluation stream 1
CALIB_FILE = "calib.jsonl"
TASKS = ("ask", "match", "locate")


def scene_feeds(session, samples: int, seed: int = CALIB_SEED) -> list[dict]:
    """Calibration inputs from generated scenes of their own stream (see scenes/feeds.py)."""
    return _scene_feeds(session, samples, seed)


def read_calib_folder(directory) -> list[tuple[Path, str, str]]:
    """Parse DIR/calib.jsonl into (image path, text, task) entries; any bad entry is a BadInputError.

    Each non-blank line not starting with '#' is an object {"image": "rel/path.png",
    "text": "what color is the mug?" or ["...", ...], "task": "ask"|"match"|"locate"} (task defaults to ask).
    """
    d = Path(directory)
    if not d.is_dir():
        raise BadInputError(f"calibration folder not found: {d}")
    index = d / CALIB_FILE
    if not index.is_file():
        raise BadInputError(f"{d} has no {CALIB_FILE}; see docs/quantize.md for the calibration folder format")
    root, entries, bad = d.resolve(), [], []
    try:
        lines = index.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise BadInputError(f"{index} is not readable UTF-8 text ({e})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            entries += _parse_entry(line, root)
        except ValueError as e:
            bad.append(f"line {n}: {e}")
    if bad:
        more = f" (and {len(bad) - 1} more bad {'entry' if len(bad) == 2 else 'entries'})" if len(bad) > 1 else ""
        raise BadInputError(f"{index} {bad[0]}{more}")
    if not entries:
        raise BadInputError(f"{index} lists no calibration entries")
    return entries


def _parse_entry(line: str, root: Path) -> list[tuple[Path, str, str]]:
    try:
        e = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"not a JSON object ({err.msg})") from None
    if not isinstance(e, dict):
        raise ValueError("not a JSON object")
    unknown = set(e) - {"image", "text", "task"}
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(sorted(unknown))}; expected image, text, task")
    img, text, task = e.get("image"), e.get("text"), e.get("task", "ask")
    if not isinstance(img, str) or not img:
        raise ValueError("'image' must be a relative path string")
    path = (root / img).resolve()
    if root not in path.parents:
        raise ValueError(f"image {img!r} is outside the calibration folder")
    if not path.is_file():
        raise ValueError(f"image {img!r} does not exist")
    if task not in TASKS:
        raise ValueError(f"task {task!r} is not one of {', '.join(TASKS)}")
    texts = [text] if isinstance(text, str) else text
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise ValueError("'text' must be a non-empty string or list of strings")
    return [(path, t, task) for t in texts]


def folder_feeds(session, directory) -> list[dict]:
    """Model inputs from a calibration folder (format: docs/quantize.md); bad entries raise BadInputError."""
    feeds, images = [], {}
    for path, text, task in read_calib_folder(directory):
        try:
            if path not in images:
                images[path] = session.prepare_image(path)[0]
            feeds.append({"image": images[path], "tokens": session.tokenizer.encode(text, task)[None]})
        except BadInputError as e:
            raise BadInputError(f"{Path(directory) / CALIB_FILE}: {e}") from None
    return feeds


class FeedReader:
    """ONNX Runtime CalibrationDataReader over a list of feeds (re-readable)."""

    def __init__(self, feeds: list[dict]):
        self.feeds, self.i = feeds, 0

    def get_next(self):
        if self.i >= len(self.feeds):
            return None
        self.i += 1
        return self.feeds[self.i - 1]

    def __len__(self):
        return len(self.feeds)

    def set_range(self, start_index: int, end_index: int):
        self.feeds, self.i = self.feeds[start_index:end_index], 0


class _Recording:
    """A backend wrapper that keeps a copy of every feed it is given (the decoder's calibration inputs)."""

    def __init__(self, backend, seen: list[dict]):
        self.backend, self.seen = backend, seen

    def run(self, feeds: dict) -> dict:
        self.seen.append({k: v.copy() for k, v in feeds.items()})
        return self.backend.run(feeds)


def describe_feeds(session, describer, feeds: list[dict], images: int = 16, limit: int = 256) -> list[dict]:
    """Calibration inputs of the caption decoder graph: the feeds it is given while decoding the first
    `images` distinct calibration images greedily in fp32 (memory from model.onnx, then one call per token),
    evenly thinned to at most `limit`. So a calibrated decoder sees the caches and positions of real captions."""
    import numpy as np
    seen: list[dict] = []
    backend = describer.backend
    describer.backend = _Recording(backend, seen)
    try:
        done: list = []
        for f in feeds:
            if len(done) >= images:
                break
            if any(f["image"] is d or np.array_equal(f["image"], d) for d in done):
                continue
            done.append(f["image"])
            tokens = session.tokenizer.encode("object", "match")[None]
            memory = session.backend.run({"image": f["image"], "tokens": tokens})[describer.spec["memory_output"]]
            describer.tokens(memory)
    finally:
        describer.backend = backend
    step = max(1, -(-len(seen) // limit))
    return seen[::step][:limit]
