"""The examples run as documented: an app embedding the API and a robot loop over frames."""
import json
import shutil
import subprocess
import sys

from conftest import EXAMPLES


def _run(*args):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=300)


def test_app_embed_example():
    p = _run(EXAMPLES / "app_embed.py")
    assert p.returncode == 0, p.stderr
    right, total = map(int, p.stdout.strip().splitlines()[-1].split()[0].split("/"))
    assert total >= 30 and right / total >= 0.85


def test_robot_loop_reports_each_frame_and_skips_bad_ones(tmp_path):
    for f in sorted((EXAMPLES / "images").glob("*.png")):
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "scene9.png").write_bytes(b"truncated frame")  # a bad frame must not stop the loop
    p = _run(EXAMPLES / "robot_loop.py", tmp_path, "is there a cube?", "--fps", "50", "--json")
    assert p.returncode == 0, p.stderr
    rows = [json.loads(x) for x in p.stdout.splitlines()]
    assert [r["frame"] for r in rows] == [f"scene{i}.png" for i in range(6)]
    assert all(r["answer"] in ("yes", "no") and r["latency_ms"] > 0 for r in rows)
    assert "scene9.png: skipped" in p.stderr and "latency p50" in p.stderr


def test_robot_loop_reads_an_animated_gif(tmp_path):
    from PIL import Image
    frames = [Image.open(f).convert("RGB") for f in sorted((EXAMPLES / "images").glob("*.png"))[:3]]
    gif = tmp_path / "clip.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100)
    p = _run(EXAMPLES / "robot_loop.py", gif, "how many cubes are there?", "--fps", "50", "--json")
    assert p.returncode == 0, p.stderr
    assert len(p.stdout.splitlines()) == 3
