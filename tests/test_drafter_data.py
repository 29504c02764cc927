"""The drafter's data pipeline: regenerations are the target's own, their features and soft labels are
the teacher-forced ones, shards resume, and nothing held out gets in."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bp_rl import autoregressive_generate
from bp_rl.drafter_data import (
    DecodedSequence, RegenPrompt, SequencePool, complete_shards, cut_paragraphs, deduplicate, draft_vocabulary, function_head,
    offline_doc_prompts, python_functions, read_continuations, regenerate, self_written_code_problems, write_continuations,
)

PROMPTS = [[5, 6, 7], [9, 3, 4, 8, 10, 12], [20, 21]]
LAYERS = [0, 2]


def regen_prompts(temperature=0.0):
    return [RegenPrompt(f"p{i}", "", ids, "test", temperature) for i, ids in enumerate(PROMPTS)]


def test_greedy_regenerations_are_the_targets_own_with_teacher_forced_features(tiny_target, tmp_path):
    regenerate(tiny_target, regen_prompts(), tmp_path, "train", max_new_tokens=12, layer_ids=LAYERS, top_k=4, batch_size=3)
    pool = SequencePool(tmp_path, "train", LAYERS)
    assert len(pool) == 3
    by_prompt = {}
    for i in range(len(pool)):
        seq = pool.get(i)
        by_prompt[tuple(seq.tokens[: seq.loss_start].tolist())] = seq
    for prompt in PROMPTS:
        seq = by_prompt[tuple(prompt)]
        expected = autoregressive_generate(tiny_target, prompt, max_new_tokens=12).token_ids
        assert seq.tokens[len(prompt) :].tolist() == expected  # left padding changed nothing
        with torch.no_grad():
            out = tiny_target.model(seq.tokens[None], output_hidden_states=True)
        states = torch.cat([out.hidden_states[i + 1][0] for i in LAYERS], dim=-1)
        torch.testing.assert_close(seq.features[:-1], states[:-1].half().float(), rtol=2e-3, atol=2e-3)
        assert (seq.features[-1] == 0).all()  # the last token never went through the target
        top = out.logits[0, len(prompt) - 1 : -1].topk(4, dim=-1)
        assert (seq.topk_ids[len(prompt) - 1 : -1] == top.indices).all()
        torch.testing.assert_close(seq.topk_logits[len(prompt) - 1 : -1], top.values.half().float(), rtol=2e-3, atol=2e-3)


def test_regeneration_resumes_after_the_last_complete_shard(tiny_target, tmp_path):
    prompts = regen_prompts()
    regenerate(tiny_target, prompts[:2], tmp_path, "train", max_new_tokens=6, layer_ids=LAYERS, shard_sequences=1)
    (tmp_path / "train-00001.json").unlink()  # as if killed before the second shard's meta was written
    regenerate(tiny_target, prompts, tmp_path, "train", max_new_tokens=6, layer_ids=LAYERS, shard_sequences=1)
    ids = [i for meta in complete_shards(tmp_path, "train") for i in meta["ids"]]
    assert sorted(ids) == ["p0", "p1", "p2"]  # each prompt once
    with pytest.raises(ValueError, match=r"holds target layers \[0, 2\], the drafter reads \[1, 3\]"):
        SequencePool(tmp_path, "train", [1, 3])


def test_sampled_regenerations_follow_their_seed(tiny_target, tmp_path):
    for run in ("a", "b"):
        regenerate(tiny_target, regen_prompts(1.0), tmp_path / run, "train", max_new_tokens=8, layer_ids=LAYERS, seed=7)
    tokens = [np.load(tmp_path / run / "train-00000.tokens.npy") for run in ("a", "b")]
    assert (tokens[0] == tokens[1]).all()
    assert json.loads((tmp_path / "a" / "train-00000.json").read_text())["temperatures"] == [1.0, 1.0, 1.0]


def test_stored_continuations_rebuild_the_decoded_shards_by_teacher_forcing(tiny_target, tmp_path):
    prompts = regen_prompts()
    options = dict(max_new_tokens=10, layer_ids=LAYERS, top_k=4, batch_size=3)
    regenerate(tiny_target, prompts, tmp_path / "decoded", "train", **options)
    store = tmp_path / "continuations.jsonl.gz"
    assert write_continuations(store, tmp_path / "decoded", ["train"]) == 3
    known = read_continuations(store, prompts)
    # the first prompt is left to decode: a store may cover only part of a manifest
    regenerate(tiny_target, prompts, tmp_path / "rebuilt", "train", known={k: v for k, v in known.items() if k != "p0"}, **options)
    decoded, rebuilt = (SequencePool(tmp_path / run, "train", LAYERS) for run in ("decoded", "rebuilt"))
    by_tokens = {tuple(decoded.get(i).tokens.tolist()): decoded.get(i) for i in range(len(decoded))}
    assert len(rebuilt) == 3
    for i in range(len(rebuilt)):
        mine = rebuilt.get(i)
        theirs = by_tokens[tuple(mine.tokens.tolist())]  # same tokens: the stored continuation is the decode's
        assert mine.loss_start == theirs.loss_start
        torch.testing.assert_close(mine.features, theirs.features, rtol=2e-3, atol=2e-3)
        assert (mine.topk_ids[mine.loss_start - 1 : -1] == theirs.topk_ids[theirs.loss_start - 1 : -1]).all()
        torch.testing.assert_close(mine.topk_logits, theirs.topk_logits, rtol=2e-3, atol=2e-3)
    # a later run over part of the manifest keeps the stored rows it did not redo
    regenerate(tiny_target, prompts[:1], tmp_path / "partial", "train", **options)
    merged = tmp_path / "merged.jsonl.gz"
    assert write_continuations(merged, tmp_path / "partial", ["train"], carry=store) == 3
    assert read_continuations(merged, prompts) == known
    assert write_continuations(merged, tmp_path / "partial", ["train"]) == 1  # without carry: this run's rows only
    other = [RegenPrompt("p1", "", [9, 3, 4], "test")]  # the same id, another prompt
    with pytest.raises(ValueError, match="'p1' was made for another prompt or temperature"):
        read_continuations(store, other)


def test_deduplicate_drops_repeats_and_held_out_texts():
    rows = [
        RegenPrompt("a", "Explain tides.", [1, 2], "x"),
        RegenPrompt("b", "explain  tides.", [1, 2], "x"),  # same tokens
        RegenPrompt("c", "What is 2 + 2?", [3], "x"),
        RegenPrompt("d", "Something new", [4], "x"),
        RegenPrompt("e", "Explain tides.", [1, 2], "x", temperature=1.0),  # same prompt, sampled: kept
    ]
    assert [p.id for p in deduplicate(rows, held_out_texts=["what is 2 + 2?"])] == ["a", "d", "e"]


def test_draft_vocabulary_keeps_the_most_frequent_and_the_stop_tokens():
    counts = np.array([0, 0, 5, 9, 1, 9, 3])
    assert draft_vocabulary(counts, 3, always=[1]).tolist() == [1, 3, 5]
    assert draft_vocabulary(counts, 4).tolist() == [2, 3, 5, 6]


def test_python_functions_cut_at_the_docstring(tmp_path):
    source = tmp_path / "m.py"
    source.write_text('def f(x):\n    """Double x.\n\n    Long text here."""\n    return 2 * x\n\n\ndef g():\n    pass\n')
    [(head, doc)] = list(python_functions(source))
    assert head == 'def f(x):\n    """Double x.\n\n    Long text here."""\n' and doc.startswith("Double x.")


def test_function_head_keeps_a_whole_signature_and_docstring():
    body = 'def is_even(n: int) -> bool:\n    """ Return True when n is even.\n    >>> is_even(2)\n    True\n    """\n    return n % 2 == 0\n'
    assert function_head(body) == body[: body.index("    return")]
    assert function_head("def f(x):\n    \'\'\'Double the value of x.\'\'\'\n    pass") == "def f(x):\n    \'\'\'Double the value of x.\'\'\'\n"
    for rejected in (
        "def f(x):\n    return x\n",  # no docstring
        'def f(x):\n    """Never closed, the sample ran out',
        'def f(x):\n    """Too short."""\n',  # under five words
        'def f(x:\n    """A signature that does not parse at all."""\n',
        'x = 1\ndef f(x):\n    """Not at the start of the text."""\n',
    ):
        assert function_head(rejected) is None, rejected


class CharTarget:
    """Just what sampling texts needs of a target: one token per character."""

    device = torch.device("cpu")

    def encode(self, text):
        return torch.tensor([ord(c) for c in text])

    def decode(self, ids):
        return "".join(map(chr, ids))


def test_self_written_code_problems_are_cut_deduplicated_and_never_named_like_held_out_ones(monkeypatch):
    samples = [
        ' is_even(n):\n    """Return True when n is even."""\n    return n % 2 == 0\n',
        ' is_even(n):\n    """Return True when n is even."""\n    return not n % 2\n',  # the same problem again
        ' has_close_elements(xs):\n    """Whether any two numbers are close to each other."""\n',  # a held-out name
        " f(x):\n    return x\n",  # no docstring
        ' count_vowels(s):\n    """Count the vowels in the string s."""\n    pass\n',
    ]
    seen_prompts = []

    def scripted_decode(target, prompts, max_new_tokens, temperature, generator, layer_ids, top_k):
        seen_prompts.extend(target.decode(p) for p in prompts)
        return [DecodedSequence(list(p) + [ord(c) for c in samples[(len(seen_prompts) - len(prompts) + i) % len(samples)]], len(p),
                                None, None, None, True) for i, p in enumerate(prompts)]

    monkeypatch.setattr("bp_rl.drafter_data._batched_decode", scripted_decode)
    example = 'def add(a, b):\n    """Add two numbers."""\n'
    problems = self_written_code_problems(CharTarget(), [example], 5, seed=0, banned_names=["has_close_elements"], batch_size=5)
    assert problems == ['def is_even(n):\n    """Return True when n is even."""\n', 'def count_vowels(s):\n    """Count the vowels in the string s."""\n']
    assert len(seen_prompts) == 20  # gave up after 4x the count asked
    assert set(seen_prompts) == {example + "    pass\n\n\ndef"}
    with pytest.raises(ValueError, match="at least one example"):
        self_written_code_problems(CharTarget(), [], 5, seed=0)


def test_paragraphs_are_cut_for_continuation():
    text = "one two three four five six seven eight\n\nshort\n\n>>> doctest lines are no prose at all, skipped"
    assert cut_paragraphs([(text, "src")], min_chars=20) == [("one two three four", "src")]
    assert cut_paragraphs([(text, "src")], min_chars=20, cut=0.25) == [("one two", "src")]
    with pytest.raises(ValueError, match="in \\(0, 1\\); got 1.5"):
        cut_paragraphs([(text, "src")], cut=1.5)


def test_doc_prompts_are_prose_from_pydoc_topics():
    import random

    found = offline_doc_prompts(50, random.Random(0))
    assert len(found) == 50 and len(set(found)) == 50
    assert all(source.startswith("pydoc_data topic ") and len(text) >= 90 for text, source in found)
    assert not any("::=" in text for text, _ in found)  # grammar rules are indented in the docs: skipped


def test_length_batches_bound_padding_and_keep_one_temperature():
    from bp_rl.drafter_data import length_batches

    prompts = [RegenPrompt(f"p{i}", "", [1] * n, "x", t) for i, (n, t) in enumerate([(3, 0.0), (50, 0.0), (4, 0.0), (5, 1.0), (6, 0.0)])]
    batches = length_batches(prompts, batch_size=3, batch_tokens=20)
    assert [[p.id for p in b] for b in batches] == [["p0", "p2", "p4"], ["p1"], ["p3"]]


def test_a_mixed_precision_rebuild_keeps_the_stored_tokens(tiny_target, tmp_path):
    prompts = regen_prompts()
    options = dict(max_new_tokens=10, layer_ids=LAYERS, top_k=4, batch_size=3)
    regenerate(tiny_target, prompts, tmp_path / "decoded", "train", **options)
    write_continuations(tmp_path / "store.jsonl.gz", tmp_path / "decoded", ["train"])
    known = read_continuations(tmp_path / "store.jsonl.gz", prompts)
    for run, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        regenerate(tiny_target, prompts, tmp_path / run, "train", known=known, teacher_autocast=dtype, **options)
    full, mixed = (SequencePool(tmp_path / run, "train", LAYERS) for run in ("fp32", "bf16"))
    for i in range(len(full)):
        a, b = full.get(i), mixed.get(i)
        assert a.tokens.tolist() == b.tokens.tolist()  # the labels are the stored tokens, whatever the precision
        assert not torch.equal(a.features, b.features)  # the rebuild did run in bfloat16 ...
        # ... within its rounding (1% on SmolLM2-135M; a tiny random model amplifies it more)
        assert (b.features - a.features).norm() / a.features.norm() < 0.1
