"""Speculative decoding: lossless at temperature 0, exact accounting, stop and budget rules, bad input."""

from __future__ import annotations

import pytest
import torch
from drafters import NoisyContinuationDrafter, SelfDrafter

from bp_rl import (
    BlockDrafter,
    DecodeStats,
    ContinuationDrafter,
    SpeculativeDecoder,
    autoregressive_generate,
    speculative_generate,
)

PROMPT = [5, 6, 7, 8, 9, 10, 11]
BLOCK_SIZES = [1, 2, 3, 4, 8, 16]


def hf_greedy(target, prompt, max_new_tokens, eos=None):
    out = target.model.generate(
        torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=0
    )
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_greedy_equals_hf_generate_with_random_block_drafter(tiny_target, tiny_drafter, block_size):
    expected = hf_greedy(tiny_target, PROMPT, 48)
    out = speculative_generate(tiny_target, tiny_drafter, PROMPT, block_size, max_new_tokens=48, stop_token_ids=[])
    assert out.token_ids == expected
    assert out.stats.new_tokens == 48 == 1 + sum(out.stats.acceptance_lengths)


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_greedy_equals_hf_generate_with_partial_acceptance(tiny_target, block_size):
    expected = hf_greedy(tiny_target, PROMPT, 48)
    drafter = NoisyContinuationDrafter(len(PROMPT), expected, tiny_target.vocab_size, period=3)
    out = speculative_generate(tiny_target, drafter, PROMPT, block_size, max_new_tokens=48, stop_token_ids=[])
    assert out.token_ids == expected
    if block_size >= 3:  # two correct drafts, then a wrong one: acceptance lengths of 3 (2 drafts + bonus)
        assert max(out.stats.acceptance_lengths) == 3
        assert 1 < out.stats.mean_acceptance < block_size


@pytest.mark.parametrize("block_size", [2, 4, 8, 16])
def test_continuation_drafter_accepts_whole_blocks(tiny_target, block_size):
    expected = hf_greedy(tiny_target, PROMPT, 49)
    drafter = ContinuationDrafter(len(PROMPT), expected)
    out = speculative_generate(tiny_target, drafter, PROMPT, block_size, max_new_tokens=49, stop_token_ids=[])
    assert out.token_ids == expected
    # 1 token from the prefill, then full blocks; the last cycle is cut to the remaining budget
    full, rest = divmod(48, block_size)
    assert out.stats.acceptance_lengths == [block_size] * full + ([rest] if rest else [])


def test_autoregressive_is_block_size_one(tiny_target):
    out = autoregressive_generate(tiny_target, PROMPT, max_new_tokens=20, stop_token_ids=[])
    assert out.token_ids == hf_greedy(tiny_target, PROMPT, 20)
    assert out.stats.acceptance_lengths == [1] * 19 and out.stats.cycles == 19
    assert out.stats.tokens_per_second > 0 and out.stats.prefill_seconds > 0


def test_a_request_stopping_at_its_first_token_counts_its_prefill():
    # The first token comes from the prefill's logits: by decode time alone this is 1e6 tokens/s.
    stats = DecodeStats(prompt_tokens=5, new_tokens=1, prefill_seconds=0.1, decode_seconds=1e-6)
    assert stats.tokens_per_second == pytest.approx(1 / 0.100001)


@pytest.mark.parametrize("max_new_tokens", [1, 2, 7, 16, 17, 33])
def test_max_new_tokens_is_reached_exactly(tiny_target, tiny_drafter, max_new_tokens):
    expected = hf_greedy(tiny_target, PROMPT, max_new_tokens)
    for drafter in (tiny_drafter, ContinuationDrafter(len(PROMPT), expected)):
        out = speculative_generate(tiny_target, drafter, PROMPT, 8, max_new_tokens=max_new_tokens, stop_token_ids=[])
        assert out.token_ids == expected and out.stats.new_tokens == max_new_tokens


@pytest.mark.parametrize("block_size", [1, 4, 16])
def test_stops_at_first_stop_token_even_inside_an_accepted_block(tiny_target, block_size):
    free = hf_greedy(tiny_target, PROMPT, 40)
    stop = free[13]  # a token first produced at index <= 13, somewhere inside a block
    cut = free.index(stop)
    drafter = ContinuationDrafter(len(PROMPT), free)
    out = speculative_generate(tiny_target, drafter, PROMPT, block_size, max_new_tokens=40, stop_token_ids=[stop])
    assert out.token_ids == free[: cut + 1]
    assert out.token_ids == hf_greedy(tiny_target, PROMPT, 40, eos=stop)


def test_default_stop_tokens_are_the_targets_eos(tiny_target):
    decoder = SpeculativeDecoder(tiny_target, None, PROMPT)
    assert decoder.stop_token_ids == {1}


def test_same_seed_same_output_at_temperature_one(tiny_target, tiny_drafter):
    runs = [
        speculative_generate(tiny_target, tiny_drafter, PROMPT, 6, max_new_tokens=30, temperature=1.0, seed=s, stop_token_ids=[])
        for s in (7, 7, 8)
    ]
    assert runs[0].token_ids == runs[1].token_ids
    assert runs[0].stats.acceptance_lengths == runs[1].stats.acceptance_lengths
    assert runs[0].token_ids != runs[2].token_ids


def test_block_size_may_change_between_cycles(tiny_target):
    expected = hf_greedy(tiny_target, PROMPT, 40)
    decoder = SpeculativeDecoder(tiny_target, ContinuationDrafter(len(PROMPT), expected), PROMPT, max_new_tokens=40, stop_token_ids=[])
    decoder.prefill()
    schedule = [2, 5, 1, 16, 3]
    while not decoder.done:
        decoder.step(schedule[decoder.stats.cycles % len(schedule)])
    assert decoder.new_token_ids == expected
    assert decoder.stats.block_sizes[:5] == schedule
    assert decoder.stats.acceptance_lengths[:5] == schedule


def test_block_drafter_sees_every_committed_position_once(tiny_target, tiny_drafter):
    """The drafter's context cache ends exactly one behind the committed text (the newest token)."""
    decoder = SpeculativeDecoder(tiny_target, tiny_drafter, PROMPT, max_new_tokens=30, stop_token_ids=[])
    decoder.prefill()
    while not decoder.done:
        decoder.step(5)
    cached = decoder.draft_context.cache.get_seq_length()
    pending = 0 if decoder.draft_context.new_hidden is None else decoder.draft_context.new_hidden.shape[1]
    assert cached + pending == len(decoder.tokens) - 1


# --- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize("block_size", [0, -1, 17, 2.5])
def test_block_size_outside_drafter_range_is_rejected(tiny_target, tiny_drafter, block_size):
    with pytest.raises(ValueError, match=r"block_size must be an integer in \[1, 16\].*" + str(block_size)):
        speculative_generate(tiny_target, tiny_drafter, PROMPT, block_size)


def test_no_drafter_allows_only_block_size_one(tiny_target):
    with pytest.raises(ValueError, match=r"\[1, 1\]"):
        speculative_generate(tiny_target, None, PROMPT, 4)


def test_empty_prompt_is_rejected(tiny_target, tiny_drafter):
    with pytest.raises(ValueError, match="prompt is empty"):
        speculative_generate(tiny_target, tiny_drafter, [], 4)


def test_prompt_beyond_context_is_rejected(tiny_target, tiny_drafter):
    with pytest.raises(ValueError, match=r"200 tokens.*max_new_tokens \(100\).*context of 256"):
        speculative_generate(tiny_target, tiny_drafter, [3] * 200, 4, max_new_tokens=100)


def test_out_of_vocabulary_prompt_is_rejected(tiny_target, tiny_drafter):
    with pytest.raises(ValueError, match=r"outside \[0, 64\).*999"):
        speculative_generate(tiny_target, tiny_drafter, [3, 999], 4)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"temperature": -1.0}, "temperature"), ({"top_k": -2}, "top_k"), ({"top_p": 0.0}, "top_p"), ({"max_new_tokens": 0}, "max_new_tokens")],
)
def test_bad_sampling_settings_are_rejected(tiny_target, tiny_drafter, kwargs, message):
    with pytest.raises(ValueError, match=message):
        speculative_generate(tiny_target, tiny_drafter, PROMPT, 4, **kwargs)


def test_drafter_for_another_target_is_rejected(tiny_target):
    from conftest import make_tiny_target

    other = make_tiny_target("llama", vocab_size=96)
    drafter = BlockDrafter.for_target(other, num_layers=1)
    with pytest.raises(ValueError, match=r"vocabulary 96 != target's 64"):
        drafter.bind(tiny_target)


def test_self_drafter_is_lossless_at_temperature_zero(tiny_target):
    expected = hf_greedy(tiny_target, PROMPT, 24)
    out = speculative_generate(tiny_target, SelfDrafter(tiny_target), PROMPT, 4, max_new_tokens=24, stop_token_ids=[])
    assert out.token_ids == expected


@pytest.mark.parametrize("block_size,verify_count", [(4, 2), (8, 3), (16, 1), (16, 16)])
def test_greedy_equals_hf_generate_with_a_verify_count(tiny_target, block_size, verify_count):
    expected = hf_greedy(tiny_target, PROMPT, 40)
    drafter = NoisyContinuationDrafter(len(PROMPT), expected, tiny_target.vocab_size, period=5)
    out = speculative_generate(tiny_target, drafter, PROMPT, block_size, max_new_tokens=40, stop_token_ids=[], verify_count=verify_count)
    assert out.token_ids == expected
    assert max(out.stats.acceptance_lengths) <= verify_count and set(out.stats.verify_counts) <= set(range(1, verify_count + 1))
    assert out.stats.verify_counts[0] == verify_count and out.stats.block_sizes[0] == block_size


def test_a_cycle_in_two_halves_shows_its_draft_before_verifying(tiny_target, tiny_drafter):
    decoder = SpeculativeDecoder(tiny_target, tiny_drafter, PROMPT, max_new_tokens=20, stop_token_ids=[])
    decoder.prefill()
    drafted = decoder.draft(8)
    assert len(drafted.confidence) == 7 and all(0 < p <= 1 for p in drafted.confidence)
    assert decoder.stats.cycles == 0  # nothing verified yet
    assert decoder.verify(drafted, 3) in (1, 2, 3) and decoder.stats.verify_counts == [3]
    continuation = ContinuationDrafter(len(PROMPT), hf_greedy(tiny_target, PROMPT, 20))
    other = SpeculativeDecoder(tiny_target, continuation, PROMPT, max_new_tokens=20, stop_token_ids=[])
    other.prefill()
    assert other.draft(4).confidence == [1.0, 1.0, 1.0]  # a deterministic drafter's proposals


@pytest.mark.parametrize("verify_count", [0, 5, 2.0])
def test_a_verify_count_outside_the_block_is_rejected(tiny_target, tiny_drafter, verify_count):
    decoder = SpeculativeDecoder(tiny_target, tiny_drafter, PROMPT, max_new_tokens=20)
    decoder.prefill()
    with pytest.raises(ValueError, match=r"verify_count must be an integer in \[1, 4\] \(the block size\)"):
        decoder.step(4, verify_count)
