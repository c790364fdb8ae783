"""Regenerate examples/images/*.png and examples/questions.json from the scene generator.

    python examples/make_examples.py

Scenes come from seed 7 (never used for training or evaluation); each image is rendered
at 192x192 (the model sees it resized to 96x96, as it would a photo). Answers are
computed from the scene by the generator and re-checked by the independent parser.
"""
import json
from pathlib import Path

from edge_slim.scenes import generate as G
from edge_slim.scenes.answer import answer
from edge_slim.scenes.render import render

HERE = Path(__file__).resolve().parent
SEED, COUNT = 7, 6


def main():
    out = []
    for i in range(COUNT):
        s = G.sample(SEED, i)
        name = f"scene{i}.png"
        render(s["scene"], 192).save(HERE / "images" / name)
        qs = [{"question": q["text"], "answer": q["answer"], "family": q["family"]} for q in s["questions"]]
        assert all(answer(s["scene"], q["question"]) == q["answer"] for q in qs)
        box = [round(v * 2, 2) for v in s["refer"]["box"]]  # scene pixels are 96x96; the image is 192x192
        out.append({"image": f"images/{name}", "questions": qs,
                    "locate": {"phrase": s["refer"]["text"], "box": box},
                    "match": {"texts": s["captions"], "true": s["caption_true"]},
                    "scene": s["scene"]})
    (HERE / "questions.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
