"""The shipped prompt suite: size, categories, a stratified deterministic split, clear errors."""

from __future__ import annotations

from collections import Counter

import pytest

from bp_rl.prompts import SPLITS, Prompt, assign_splits, first_per_category, load_prompts, render_prompt


def test_shipped_suite_has_four_categories_and_enough_prompts():
    prompts = load_prompts()
    counts = Counter(p.category for p in prompts)
    assert len(prompts) >= 600 and set(counts) == {"code", "math", "chat", "prose"}
    assert len({p.id for p in prompts}) == len(prompts)
    assert all(p.text.strip() and p.license and p.source for p in prompts)
    assert all(p.answer is not None for p in prompts if p.category == "math")


def test_split_is_about_60_20_20_within_every_category():
    prompts = load_prompts()
    for category in {p.category for p in prompts}:
        group = [p for p in prompts if p.category == category]
        shares = Counter(p.split for p in group)
        assert abs(shares["train"] / len(group) - 0.6) < 0.02
        assert abs(shares["val"] / len(group) - 0.2) < 0.02
        assert abs(shares["test"] / len(group) - 0.2) < 0.02


def test_shipped_split_follows_the_hash_rule():
    prompts = load_prompts()
    assert [p.split for p in assign_splits(prompts)] == [p.split for p in prompts]


def test_split_of_a_prompt_depends_only_on_ids_in_its_category():
    base = [Prompt(id=f"a/{i}", category="a", source="s", license="l", chat=False, text="t") for i in range(50)]
    other = [Prompt(id=f"b/{i}", category="b", source="s", license="l", chat=False, text="t") for i in range(7)]
    alone = {p.id: p.split for p in assign_splits(base)}
    mixed = {p.id: p.split for p in assign_splits(other + base[::-1])}
    assert all(mixed[k] == v for k, v in alone.items())


def test_filters():
    test_code = load_prompts(split="test", category="code")
    assert test_code and all(p.split == "test" and p.category == "code" for p in test_code)
    assert sum(len(load_prompts(split=s)) for s in SPLITS) == len(load_prompts())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"suite": "bp-v0"}, r"unknown prompt suite 'bp-v0'; shipped suites: \['bp-v1'\]"),
        ({"split": "dev"}, r"unknown split 'dev'; valid: \['train', 'val', 'test'\]"),
        ({"category": "poetry"}, r"unknown category 'poetry'.*\['chat', 'code', 'math', 'prose'\]"),
    ],
)
def test_unknown_names_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_prompts(**kwargs)


class TemplateTokenizer:
    chat_template = "{user}"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return f"<user>{messages[0]['content']}<assistant>"


def test_render_wraps_only_chat_prompts():
    chat = next(p for p in load_prompts(category="chat"))
    code = next(p for p in load_prompts(category="code"))
    assert render_prompt(chat, TemplateTokenizer()) == f"<user>{chat.text}<assistant>"
    assert render_prompt(code, TemplateTokenizer()) == code.text
    with pytest.raises(ValueError, match="needs a chat template"):
        render_prompt(chat, None)


def test_first_per_category_keeps_the_first_n_of_each_category_in_order():
    test = load_prompts(split="test")
    kept = first_per_category(test, 2)
    categories = sorted({p.category for p in test})
    assert Counter(p.category for p in kept) == {c: 2 for c in categories}
    assert kept == [p for p in test if p in kept]  # order kept
    for category in categories:
        assert [p for p in kept if p.category == category] == [p for p in test if p.category == category][:2]
    with pytest.raises(ValueError, match="per category must be >= 1, got 0"):
        first_per_category(test, 0)
