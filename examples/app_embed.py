"""Embedding edge-slim in an app: load once, then answer many requests (from any thread).

    python examples/app_embed.py
"""
import json
from pathlib import Path

import edge_slim

HERE = Path(__file__).resolve().parent


def main():
    session = edge_slim.load()  # verifies the bundle's checksums once, then stays loaded
    examples = json.loads((HERE / "questions.json").read_text())
    right = total = 0
    for e in examples:
        image = HERE / e["image"]
        for q, a in zip(e["questions"], session.ask(image, [q["question"] for q in e["questions"]])):
            right += a.answer == q["answer"]
            total += 1
            print(f"{e['image']}: {q['question']!r} -> {a.answer} ({a.score:.2f}); expected {q['answer']}")
        loc = session.locate(image, e["locate"]["phrase"])
        print(f"{e['image']}: {e['locate']['phrase']!r} -> box {loc.box}; expected {e['locate']['box']}")
    print(f"{right}/{total} answers as expected")


if __name__ == "__main__":
    main()
