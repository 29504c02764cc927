"""Per-cycle schedules on traces: action sets, the two heuristics, and the exact optimum."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import tiny_profile
from drafters import greedy_sequence, overfit_drafter

from bp_rl.profiles import simulate
from bp_rl.schedules import action_set, assistant_schedule, confidence_schedule, entropy_schedule, optimal_schedule
from bp_rl.learned_schedules import fit_verify_rules
from bp_rl.traces import AcceptanceTrace, Cycle, CycleState, trace_request

PROMPT, NEW = [5, 6, 7, 8, 9], 24
BLOCKS = (1, 2, 4)


@pytest.fixture(scope="module")
def setup(tiny_target):
    drafter = overfit_drafter(tiny_target, greedy_sequence(tiny_target, PROMPT, NEW), len(PROMPT))
    trace = trace_request(tiny_target, drafter, PROMPT, BLOCKS, max_new_tokens=NEW, stop_token_ids=[])
    return trace, tiny_profile(tiny_target, drafter)


def test_action_sets():
    assert action_set("block", (4, 1, 2)) == [(1, 1), (2, 2), (4, 4)]
    assert action_set("block_verify", (1, 2, 4)) == [(1, 1), (2, 1), (2, 2), (4, 1), (4, 2), (4, 4)]
    assert action_set("verify", (1, 2, 4)) == [(4, 1), (4, 2), (4, 4)]
    with pytest.raises(ValueError, match=r"unknown action set 'blocks'; valid: \['block', 'block_verify', 'verify'\]"):
        action_set("blocks", (1, 2))


def test_assistant_schedule_grows_after_full_acceptance_and_shrinks_otherwise():
    schedule = assistant_schedule((1, 2, 4, 8, 16), start_drafts=3)
    state = CycleState(committed=1, budget=60)
    assert schedule(state) == 4  # 3 drafts
    state.history.append(Cycle(4, 4, 4))  # all accepted: 5 drafts
    assert schedule(state) == 4
    state.history += [Cycle(4, 4, 4), Cycle(4, 4, 4)]  # 9 drafts
    assert schedule(state) == 8
    state.history += [Cycle(8, 8, 1)] * 9  # 9 - 9 = 0, floored at 1 draft
    assert schedule(state) == 2


def test_confidence_schedule_verifies_the_confident_prefix():
    schedule = confidence_schedule(0.5, (1, 2, 4, 8))
    assert schedule(CycleState(1, 10, draft=(0.9, 0.8, 0.7, 0.2, 0.9, 0.9, 0.9))) == (8, 4)
    assert schedule(CycleState(1, 10, draft=(0.9, 0.8, 0.7, 0.6, 0.9, 0.2, 0.9))) == (8, 4)  # 5 confident + the anchor: rounded down to 4
    assert schedule(CycleState(1, 10, draft=(0.9, 0.4) + (0.9,) * 5)) == (8, 2)  # 1 confident draft + the anchor
    assert schedule(CycleState(1, 10, draft=(0.1,) * 7)) == (8, 1)
    with pytest.raises(ValueError, match="draft_block"):
        schedule(CycleState(1, 10))


def test_entropy_schedule_verifies_the_prefix_whose_adaedl_bound_clears_lambda():
    # gamma 0.2, lambda 0.5: a slot passes while 1 - sqrt(0.2 h) >= 0.5, i.e. entropy h <= 1.25 nats
    schedule = entropy_schedule(0.5, (1, 2, 4, 8))
    confident = (0.9,) * 7  # the rule reads the entropies only
    assert schedule(CycleState(1, 10, draft=confident, draft_entropy=(0.1, 1.2, 1.0, 2.0, 0.0, 0.0, 0.0))) == (8, 4)
    assert schedule(CycleState(1, 10, draft=confident, draft_entropy=(0.0, 1.3) + (0.0,) * 5)) == (8, 2)
    assert schedule(CycleState(1, 10, draft=confident, draft_entropy=(0.0,) * 7)) == (8, 8)
    assert entropy_schedule(0.5, (1, 2, 4, 8), gamma=1.0)(CycleState(1, 10, draft=confident, draft_entropy=(0.2, 0.3) + (0.0,) * 5)) == (8, 2)
    with pytest.raises(ValueError, match="'draft_entropy'.*keep it"):
        schedule(CycleState(1, 10, draft=confident))  # traces collected before entropies were kept


def test_a_learned_verify_rule_reads_a_draft_whose_confidence_tells_acceptance(setup):
    """On traces where every accepted slot is drafted at confidence 0.95 and every rejected one at 0.05,
    the fitted rule verifies exactly the accepted drafts on new traces (the ideal rule: what the
    confidence tells), far faster than any fixed verify count; only the optimum, which also knows where
    each cycle leaves the decode, is faster."""
    _, profile = setup
    blocks = BLOCKS

    def made_up_trace(seed: int) -> AcceptanceTrace:
        rng = np.random.default_rng(seed)
        anchors = 60
        accepted = {b: [0] * anchors for b in blocks}
        confidence = {b: [[0.0] * (b - 1) for _ in range(anchors)] for b in blocks}
        for i, run in enumerate(rng.choice([0, 0, 1, 3], size=anchors)):  # runs the verify counts 1, 2 and 4 fit
            for b in blocks:
                accepted[b][i] = min(int(run), b - 1)
                confidence[b][i] = [0.95 if j < run else 0.05 for j in range(b - 1)]
        return AcceptanceTrace(8, list(range(anchors + 1)), accepted, confidence)

    rules = fit_verify_rules([made_up_trace(s) for s in range(4)], profile, blocks, ridges=(0.1, 1e6))
    rule, shrunk = rules[0.1], rules[1e6]
    test = made_up_trace(99)
    optimum, _ = optimal_schedule(test, profile, action_set("verify", blocks))
    learned = simulate(test, profile, rule, draft_block=4).decode_seconds
    fixed = min(simulate(test, profile, lambda state, k=k: (4, k), draft_block=4).decode_seconds for k in blocks)
    ideal = simulate(test, profile, confidence_schedule(0.5, blocks), draft_block=4).decode_seconds
    assert learned == pytest.approx(ideal) and learned < 0.85 * fixed and optimum <= learned
    # shrunk to its bias alone, the rule verifies one count everywhere: a fixed verify count's speed at best
    assert simulate(test, profile, shrunk, draft_block=4).decode_seconds >= fixed - 1e-9
    with pytest.raises(ValueError, match="ridges must be a non-empty list of penalties >= 0"):
        fit_verify_rules([test], profile, blocks, ridges=(-1,))


def test_optimum_beats_every_fixed_block_and_replays_to_its_own_cost(setup):
    trace, profile = setup
    actions = action_set("block_verify", BLOCKS)
    seconds, plan = optimal_schedule(trace, profile, actions)
    assert simulate(trace, profile, lambda state: plan[len(state.history)]).decode_seconds == pytest.approx(seconds)
    assert all(seconds <= simulate(trace, profile, b).decode_seconds + 1e-12 for b in BLOCKS)
    assert seconds <= optimal_schedule(trace, profile, action_set("block", BLOCKS))[0] + 1e-12  # more actions, never slower


def test_optimum_equals_the_best_of_every_schedule_on_a_short_request(tiny_target):
    prompt, new = [5, 6, 7, 8, 9], 6
    drafter = overfit_drafter(tiny_target, greedy_sequence(tiny_target, prompt, new), len(prompt))
    trace = trace_request(tiny_target, drafter, prompt, BLOCKS, max_new_tokens=new, stop_token_ids=[])
    profile = tiny_profile(tiny_target, drafter)
    actions = action_set("block_verify", BLOCKS)
    every = min(  # every action sequence long enough to finish (5 anchors: at most 5 cycles)
        simulate(trace, profile, lambda state, plan=plan: plan[len(state.history)]).decode_seconds
        for plan in itertools.product(actions, repeat=trace.anchors)
    )
    assert optimal_schedule(trace, profile, actions)[0] == pytest.approx(every)


def test_a_schedule_replayed_through_simulate_costs_each_cycle_at_its_verify_count(setup):
    trace, profile = setup
    stats = simulate(trace, profile, (4, 2))
    # 2 tokens a cycle, but the last one: with one token left in the budget it drafts nothing and verifies the anchor
    assert stats.verify_counts == [2] * (len(stats.verify_counts) - 1) + [1] and trace.anchors % 2 == 1
    context, expected = trace.prompt_tokens + 1, 0.0
    for committed, verified in zip(stats.acceptance_lengths, stats.verify_counts):
        expected += profile.draft_seconds(4) + profile.verify_seconds(verified, context) + profile.overhead[verified]
        context += committed
    assert stats.decode_seconds == pytest.approx(expected) and max(stats.acceptance_lengths) <= 2


def test_every_block_verify_pair_replays_a_prefix_of_the_drafts(setup):
    trace, _ = setup
    for (b, k), anchor in itertools.product(action_set("block_verify", BLOCKS), range(trace.anchors)):
        assert trace.committed(anchor, b, k) == min(trace.committed(anchor, b), k, trace.anchors - anchor)
