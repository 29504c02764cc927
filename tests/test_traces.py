"""Acceptance traces replay real greedy decoding exactly, for fixed and per-cycle schedules."""

from __future__ import annotations

import numpy as np
import pytest
from drafters import greedy_sequence, overfit_drafter

from bp_rl import ContinuationDrafter, PromptLookupDrafter, SpeculativeDecoder, speculative_generate
from bp_rl.drafter_data import greedy_guesses
from bp_rl.measurement import DecodeSettings, measure
from bp_rl.profiles import DeviceProfile, simulate
from bp_rl.traces import effective_block, trace_request

PROMPT, NEW = [5, 6, 7, 8, 9], 40
BLOCKS = (1, 2, 4, 8)


@pytest.fixture(scope="module")
def trained(tiny_target):
    return overfit_drafter(tiny_target, greedy_sequence(tiny_target, PROMPT, NEW), len(PROMPT))


@pytest.fixture(scope="module")
def trace(tiny_target, trained):
    return trace_request(tiny_target, trained, PROMPT, BLOCKS, max_new_tokens=NEW, stop_token_ids=[])


@pytest.mark.parametrize("block_size", BLOCKS)
def test_fixed_block_replay_equals_live_decoding(tiny_target, trained, trace, block_size):
    live = speculative_generate(tiny_target, trained, PROMPT, block_size, max_new_tokens=NEW, stop_token_ids=[])
    assert trace.tokens == live.token_ids
    assert trace.acceptance_lengths(block_size) == live.stats.acceptance_lengths
    if block_size > 1:
        assert 1 < max(live.stats.acceptance_lengths) and min(live.stats.acceptance_lengths) < block_size  # partial acceptance


def test_per_cycle_schedule_replay_equals_live_decoding(tiny_target, trained, trace):
    def schedule(state):  # HF-assistant style: grow after a full accept, shrink otherwise
        if not state.history:
            return 4
        last = state.history[-1]
        return min(8, last.block * 2) if last.committed == last.block else max(2, last.block // 2)

    replayed = trace.replay(schedule)
    decoder = SpeculativeDecoder(tiny_target, trained, PROMPT, max_new_tokens=NEW, stop_token_ids=[])
    decoder.prefill()
    for cycle in replayed:
        assert decoder.step(cycle.block) == cycle.committed
    assert decoder.done and decoder.new_token_ids == trace.tokens


def test_verify_count_replay_equals_live_decoding(tiny_target, trained, trace):
    """Verifying the first k tokens of a drafted block accepts min(accepted, k - 1): the trace needs nothing more."""
    actions = [(8, 2), (8, 8), (4, 1), (8, 4), (2, 2), (4, 2)]
    replayed = trace.replay(lambda state: actions[len(state.history) % len(actions)])
    assert any(c.committed == c.verify for c in replayed) and any(c.committed < c.verify for c in replayed)
    decoder = SpeculativeDecoder(tiny_target, trained, PROMPT, max_new_tokens=NEW, stop_token_ids=[])
    decoder.prefill()
    for cycle in replayed:
        assert decoder.step(cycle.block, cycle.verify) == cycle.committed
    assert decoder.new_token_ids == trace.tokens and decoder.stats.verify_counts[: len(actions)] == [k for _, k in actions]


def test_a_drafted_first_schedule_sees_the_draft_live_decoding_makes(tiny_target, trained, trace):
    """`draft_block`: the schedule sees this cycle's draft confidences and entropies before choosing what
    to verify, the same the engine's first half-cycle (`draft`) returns."""
    def schedule(state):  # verify the leading drafts the drafter is sure of
        return 8, 1 + next((j for j, p in enumerate(state.draft) if p < 0.5), len(state.draft))

    seen = []
    replayed = trace.replay(lambda state: seen.append((state.draft, state.draft_entropy)) or schedule(state), draft_block=8)
    decoder = SpeculativeDecoder(tiny_target, trained, PROMPT, max_new_tokens=NEW, stop_token_ids=[])
    decoder.prefill()
    for cycle, (draft, entropy) in zip(replayed, seen):
        drafted = decoder.draft(8)
        np.testing.assert_allclose(drafted.confidence, draft[: len(drafted.confidence)], atol=2e-3)
        np.testing.assert_allclose(drafted.entropy, entropy[: len(drafted.entropy)], atol=2e-3)
        assert decoder.verify(drafted, cycle.verify) == cycle.committed
    assert decoder.done and decoder.new_token_ids == trace.tokens
    with pytest.raises(ValueError, match="draft was made at block 8"):
        trace.replay(lambda state: 4, draft_block=8)


def test_a_verify_count_above_the_block_is_rejected(trace):
    with pytest.raises(ValueError, match=r"verify count 5 must be in \[1, block size 4\]"):
        trace.replay(lambda state: (4, 5))


def test_confidence_is_a_probability_per_drafted_slot(trace):
    for b in BLOCKS:
        assert len(trace.confidence[b]) == len(trace.tokens) - 1
        for i, slots in enumerate(trace.confidence[b]):
            drafted = effective_block(b, i, NEW) - 1  # near the budget a cycle drafts fewer slots
            assert len(slots) == b - 1 and all(0 < p <= 1 for p in slots[:drafted]) and not any(slots[drafted:])


def test_entropy_is_that_of_a_distribution_per_drafted_slot(trace):
    vocab = 64  # the tiny target's, and so the drafter's, vocabulary
    for b in BLOCKS:
        for i, (slots, top1) in enumerate(zip(trace.entropy[b], trace.confidence[b])):
            drafted = effective_block(b, i, NEW) - 1
            # Shannon entropy lies between the min-entropy -log(top-1 probability) and log(vocabulary size)
            assert all(-np.log(p) - 2e-3 <= h <= np.log(vocab) + 2e-3 for h, p in zip(slots[:drafted], top1)) and not any(slots[drafted:])
    assert max(max(slots) for slots in trace.entropy[8]) > 0.1  # not a degenerate all-zero column


def test_a_known_continuation_or_a_speculative_decode_gives_the_same_trace(tiny_target, trained, trace):
    """The greedy decode is the costly part of a trace: reusing a known continuation, or decoding it at a
    block size (lossless at T=0), must give the same trace."""
    for other in (trace_request(tiny_target, trained, PROMPT, BLOCKS, max_new_tokens=NEW, stop_token_ids=[], continuation=trace.tokens),
                  trace_request(tiny_target, trained, PROMPT, BLOCKS, max_new_tokens=NEW, stop_token_ids=[], decode_block=4)):
        assert other.tokens == trace.tokens and other.accepted == trace.accepted
        np.testing.assert_allclose(np.array(other.confidence[8]), np.array(trace.confidence[8]), atol=1e-5)
    with pytest.raises(ValueError, match="not this target's greedy continuation"):
        trace_request(tiny_target, trained, PROMPT, BLOCKS, max_new_tokens=NEW, continuation=[trace.tokens[0] + 1, *trace.tokens[1:]])
    with pytest.raises(ValueError, match="block_size must be an integer in"):
        trace_request(tiny_target, trained, PROMPT, BLOCKS, max_new_tokens=NEW, decode_block=99)


def test_a_guessed_continuation_is_checked_losslessly_right_or_wrong(tiny_target, trained, trace):
    """A guess (batched greedy decoding: several prompts of other lengths padded into one batch) is only
    a draft: right, wrong from some token on, or cut short, the trace is the one decoding gives."""
    other = [9, 8, 7, 6, 5, 4, 3, 2, 11, 12, 13]  # a longer prompt pads this one in the batch
    batched = greedy_guesses(tiny_target, [PROMPT, other], NEW)[0]
    assert batched[: len(trace.tokens)] == trace.tokens[: len(batched)]  # the tiny target's EOS may end the batch's guess
    wrong = [*trace.tokens[:7], (trace.tokens[7] + 1) % tiny_target.vocab_size, *trace.tokens[8:]]
    for guess in (batched, trace.tokens, wrong, trace.tokens[:3]):
        checked = trace_request(tiny_target, trained, PROMPT, BLOCKS, max_new_tokens=NEW, stop_token_ids=[], guess=guess)
        assert checked.tokens == trace.tokens and checked.accepted == trace.accepted


def test_a_wrong_guess_drafts_nothing_once_decoding_has_left_it(tiny_target):
    truth = speculative_generate(tiny_target, None, PROMPT, 1, max_new_tokens=20, stop_token_ids=[]).token_ids
    guess = [*truth[:5], (truth[5] + 1) % tiny_target.vocab_size, *truth[6:]]
    drafter = ContinuationDrafter(len(PROMPT), guess, max_block_size=8, only_while_right=True)
    out = speculative_generate(tiny_target, drafter, PROMPT, 8, max_new_tokens=20, stop_token_ids=[])
    assert out.token_ids == truth
    # the first cycle accepts the 4 right drafts and corrects the fifth; past it every cycle verifies its anchor alone
    assert out.stats.acceptance_lengths[0] == 5 and set(out.stats.verify_counts[1:]) == {1}


def test_replay_is_exact_when_the_budget_cuts_the_last_blocks_short(tiny_target, trained):
    """Decoding drafts fewer slots once the budget is near; a block drafter's shorter block drafts
    differently, and the trace must draft what decoding drafts."""
    budget = 13
    trace = trace_request(tiny_target, trained, PROMPT, BLOCKS, max_new_tokens=budget, stop_token_ids=[])
    for block_size in BLOCKS:
        live = speculative_generate(tiny_target, trained, PROMPT, block_size, max_new_tokens=budget, stop_token_ids=[])
        assert trace.acceptance_lengths(block_size) == live.stats.acceptance_lengths


def test_prompt_lookup_traces_replay_live_decoding(tiny_target):
    lookup = PromptLookupDrafter(max_block_size=8)
    prompt = [5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6]  # repetitive, so lookup finds matches
    trace = trace_request(tiny_target, lookup, prompt, BLOCKS, max_new_tokens=NEW, stop_token_ids=[])
    for block_size in BLOCKS:
        live = speculative_generate(tiny_target, lookup, prompt, block_size, max_new_tokens=NEW, stop_token_ids=[])
        assert trace.tokens == live.token_ids
        assert trace.acceptance_lengths(block_size) == live.stats.acceptance_lengths
        # each cycle verifies what the lookup proposed, not the whole block: a profile prices that
        assert [c.verify for c in trace.replay(lambda state: block_size)] == live.stats.verify_counts
        assert all(len(slots) == block_size - 1 and set(slots) <= {0.0, 1.0} for slots in trace.confidence[block_size])
        assert all(not any(slots) for slots in trace.entropy[block_size])  # a deterministic proposal has no spread
    # the lookup proposes fewer tokens than asked where the match is short: those slots stay 0
    assert any(0.0 in slots[: effective_block(8, i, NEW) - 1] for i, slots in enumerate(trace.confidence[8]))


def test_observations_are_the_ones_a_timed_measurement_reads(tiny_target, trained):
    trace = trace_request(tiny_target, trained, PROMPT, (1, 2), max_new_tokens=8, feature_sets=("last_hidden", "logit_stats"))
    measured = measure(tiny_target, trained, PROMPT, 2, DecodeSettings(max_new_tokens=8), ("last_hidden", "logit_stats"))
    for name, vector in measured.observations.items():
        np.testing.assert_allclose(trace.observations[name], vector, rtol=1e-5, atol=1e-6)


def test_above_zero_a_trace_is_the_seeded_decodes(tiny_target, trained, tiny_profile_path):
    sampled = trace_request(tiny_target, trained, PROMPT, (1, 4), max_new_tokens=16, temperature=1.0, seeds=[3, 4], stop_token_ids=[])
    assert sampled.seeds == (3, 4) and sampled.block_sizes == (1, 4)
    for b in (1, 4):
        for j, seed in enumerate((3, 4)):
            live = speculative_generate(tiny_target, trained if b > 1 else None, PROMPT, b, max_new_tokens=16, temperature=1.0, seed=seed,
                                        stop_token_ids=[])
            assert sampled.acceptance_lengths(b, j) == live.stats.acceptance_lengths
            assert sampled.new_tokens(b, j) == len(live.token_ids)
    assert sampled.acceptance_lengths(4, 0) != sampled.acceptance_lengths(4, 1)  # a sample: another seed, other cycles
    profile = DeviceProfile.load(tiny_profile_path)
    stats = simulate(sampled, profile, 4, seed_index=1)
    assert stats.acceptance_lengths == sampled.acceptance_lengths(4, 1) and stats.new_tokens == sampled.new_tokens(4, 1)
    with pytest.raises(ValueError, match="replays its own fixed-block decodes only"):
        simulate(sampled, profile, lambda state: 4)


def test_a_sampled_trace_needs_seeds_and_the_baseline(tiny_target, trained):
    with pytest.raises(ValueError, match="pass seeds"):
        trace_request(tiny_target, trained, PROMPT, (1, 2), temperature=1.0)
    with pytest.raises(ValueError, match=r"block sizes \[2, 4\] must include 1"):
        trace_request(tiny_target, trained, PROMPT, (2, 4), temperature=1.0, seeds=[0])


def test_block_size_outside_the_trace_or_the_drafter_is_rejected(tiny_target, trained, trace):
    with pytest.raises(ValueError, match=r"block size 3 is not in this trace; traced: \[1, 2, 4, 8\]"):
        trace.acceptance_lengths(3)
    with pytest.raises(ValueError, match=r"outside \[1, 8\]"):
        trace_request(tiny_target, trained, PROMPT, (2, 16), max_new_tokens=8)
