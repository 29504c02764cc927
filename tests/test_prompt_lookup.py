"""The training-free prompt-lookup drafter behind the same Drafter interface."""

from __future__ import annotations

import pytest
import torch
from test_decoding import hf_greedy

from bp_rl import DraftContext, PromptLookupDrafter, Sampler, load_drafter, speculative_generate


def proposal(drafter, tokens, num_tokens=4) -> list[int]:
    return drafter.propose(DraftContext(torch.tensor(tokens)), num_tokens, Sampler()).tokens.tolist()


def test_proposes_what_followed_the_most_recent_match():
    drafter = PromptLookupDrafter(max_ngram=3, min_ngram=1)
    assert proposal(drafter, [1, 2, 3, 4, 5, 9, 1, 2, 3]) == [4, 5, 9, 1]
    # two earlier occurrences of [7, 8]: the later one wins
    assert proposal(drafter, [7, 8, 1, 7, 8, 2, 6, 7, 8], 2) == [2, 6]


def test_falls_back_to_shorter_ngrams_and_then_to_nothing():
    drafter = PromptLookupDrafter(max_ngram=3, min_ngram=2)
    assert proposal(drafter, [5, 6, 7, 1, 9, 6, 7]) == [1, 9, 6, 7]  # trigram misses, bigram [6, 7] hits
    assert proposal(drafter, [5, 6, 7, 1, 9, 6]) == []  # only a unigram would match, below min_ngram
    assert proposal(PromptLookupDrafter(min_ngram=1), [5, 6, 7, 1, 9, 6]) == [7, 1, 9, 6]


def test_proposal_is_capped_and_may_overlap_the_tail():
    drafter = PromptLookupDrafter(max_ngram=1)
    assert proposal(drafter, [4, 4, 4], 8) == [4]  # most recent match of [4] is index 1: followed by one token


@pytest.mark.parametrize("block_size", [1, 2, 3, 4, 6, 8, 12, 16])
def test_greedy_equals_hf_generate(tiny_target, block_size):
    prompt = [5, 6, 7, 8, 9, 5, 6, 7, 10, 11, 5, 6]
    expected = hf_greedy(tiny_target, prompt, 40)
    drafter = PromptLookupDrafter(max_ngram=3, min_ngram=1)
    out = speculative_generate(tiny_target, drafter, prompt, block_size, max_new_tokens=40, stop_token_ids=[])
    assert out.token_ids == expected


def test_no_repetition_costs_exactly_autoregressive_steps(tiny_target):
    prompt = list(range(20, 40))
    greedy = hf_greedy(tiny_target, prompt, 8)

    def bigrams_unique(text):
        pairs = list(zip(text, text[1:]))
        return len(set(pairs)) == len(pairs)

    new = max(n for n in range(1, 9) if bigrams_unique(prompt + greedy[:n]))
    assert new >= 3, "precondition: a few new tokens without any repeated bigram"
    lengths = []
    hook = tiny_target.model.register_forward_pre_hook(lambda m, a, kw: lengths.append(kw["input_ids"].shape[1]), with_kwargs=True)
    try:
        out = speculative_generate(
            tiny_target, PromptLookupDrafter(max_ngram=3, min_ngram=2), prompt, 8, max_new_tokens=new, stop_token_ids=[]
        )
    finally:
        hook.remove()
    assert out.token_ids == greedy[:new]
    assert lengths == [len(prompt)] + [1] * (new - 1)  # prefill, then one single-token pass per new token
    assert out.stats.acceptance_lengths == [1] * (new - 1)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"max_ngram": 0}, r"max_ngram must be >= min_ngram \(1\), got 0"),
        ({"min_ngram": 0}, "min_ngram must be >= 1, got 0"),
        ({"max_ngram": 2, "min_ngram": 3}, r"max_ngram must be >= min_ngram \(3\), got 2"),
        ({"max_ngram": 2.5}, "max_ngram must be an integer, got 2.5"),
        ({"max_block_size": 1}, "max_block_size must be >= 2, got 1"),
    ],
)
def test_bad_ngram_settings_are_rejected(options, message):
    with pytest.raises(ValueError, match=message):
        PromptLookupDrafter(**options)


def test_selectable_by_name_with_options(tiny_target):
    drafter = load_drafter("prompt-lookup", tiny_target, max_ngram=4, min_ngram=2)
    assert isinstance(drafter, PromptLookupDrafter) and (drafter.max_ngram, drafter.min_ngram) == (4, 2)
    with pytest.raises(ValueError, match="bad option for drafter 'prompt-lookup'.*ngram_max"):
        load_drafter("prompt-lookup", tiny_target, ngram_max=4)
    with pytest.raises(FileNotFoundError, match=r"no drafter 'prompt-lokup': known names \[.*'prompt-lookup', 'random-block'.*\]"):
        load_drafter("prompt-lokup", tiny_target)


@pytest.mark.real_model
def test_repeating_a_long_span_is_accepted_in_blocks(smollm2):
    code = "def area(width, height):\n    return width * height\n\nprint(area(3, 4))\n"
    chat = [{"role": "user", "content": f"Copy this code exactly, with no comment:\n{code}"}]
    prompt = smollm2.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    ar = speculative_generate(smollm2, None, prompt, 1, max_new_tokens=32)
    out = speculative_generate(smollm2, PromptLookupDrafter(), prompt, 8, max_new_tokens=32)
    assert out.token_ids == ar.token_ids
    assert out.stats.mean_acceptance > 2.0, out.stats.acceptance_lengths
