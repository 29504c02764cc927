"""Prompt suites: versioned JSONL files of categorised prompts with a fixed train/val/test split.

Each line holds `id` (stable), `category`, `source`, `license`, `chat` (whether the target's
chat template wraps it), `split`, `text` and, where known, `answer`. The shipped suite is
built by `experiments/build_prompts.py` from offline, licence-compatible sources.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

SUITES_DIR = Path(__file__).parent / "data" / "prompts"
DEFAULT_SUITE = "bp-v1"
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)


@dataclass(frozen=True)
class Prompt:
    id: str
    category: str
    source: str
    license: str
    chat: bool
    text: str
    split: str = ""
    answer: str | None = None


def available_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.jsonl"))


def suite_path(suite: str) -> Path:
    """A shipped suite name, or a path to a suite JSONL file."""
    if Path(suite).suffix == ".jsonl" and Path(suite).is_file():
        return Path(suite)
    path = SUITES_DIR / f"{suite}.jsonl"
    if not path.is_file():
        raise ValueError(f"unknown prompt suite {suite!r}; shipped suites: {available_suites()}, or a path to a .jsonl file")
    return path


def load_prompts(suite: str = DEFAULT_SUITE, split: str | None = None, category: str | None = None) -> list[Prompt]:
    """Prompts of `suite`, optionally only one split and/or category, in file order."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {list(SPLITS)}")
    path = suite_path(suite)
    with open(path) as f:
        prompts = [Prompt(**json.loads(line)) for line in f if line.strip()]
    categories = sorted({p.category for p in prompts})
    if category is not None and category not in categories:
        raise ValueError(f"unknown category {category!r} in suite {suite!r}; valid: {categories}")
    return [p for p in prompts if (split is None or p.split == split) and (category is None or p.category == category)]


def first_per_category(prompts: Iterable[Prompt], count: int) -> list[Prompt]:
    """The first `count` prompts of each category, in the given order (a balanced sample)."""
    if count < 1:
        raise ValueError(f"prompts per category must be >= 1, got {count}")
    seen: dict[str, int] = {}
    kept = []
    for prompt in prompts:
        seen[prompt.category] = seen.get(prompt.category, 0) + 1
        if seen[prompt.category] <= count:
            kept.append(prompt)
    return kept


def render_prompt(prompt: Prompt, tokenizer: Any) -> str:
    """The text the target sees: wrapped as a user turn by the chat template when `prompt.chat`."""
    return chat_prompt(prompt.text, tokenizer, who=f"prompt {prompt.id!r}") if prompt.chat else prompt.text


def chat_prompt(text: str, tokenizer: Any, who: str = "a chat prompt") -> str:
    """`text` as one user turn of the tokenizer's chat template, ready for the assistant's answer."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{who} needs a chat template, and the target's tokenizer has none")
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)


def assign_splits(prompts: Iterable[Prompt]) -> list[Prompt]:
    """Deterministic 60/20/20 split, stratified by category: within each category prompts are
    ordered by a hash of their id and cut at the split fractions."""
    prompts = list(prompts)
    by_category: dict[str, list[Prompt]] = {}
    for p in prompts:
        by_category.setdefault(p.category, []).append(p)
    split_of: dict[str, str] = {}
    for group in by_category.values():
        ranked = sorted(group, key=lambda p: hashlib.sha256(p.id.encode()).hexdigest())
        n_train = round(len(ranked) * SPLIT_FRACTIONS[0])
        n_val = round(len(ranked) * SPLIT_FRACTIONS[1])
        for i, p in enumerate(ranked):
            split_of[p.id] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    return [Prompt(**{**asdict(p), "split": split_of[p.id]}) for p in prompts]


def write_suite(prompts: list[Prompt], path: Path) -> None:
    """Write a suite JSONL atomically (temporary file, then rename)."""
    ids = [p.id for p in prompts]
    if len(set(ids)) != len(ids):
        raise ValueError("prompt ids must be unique")
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w") as f:
        for p in prompts:
            f.write(json.dumps(asdict(p), ensure_ascii=False) + "\n")
    tmp.replace(path)
