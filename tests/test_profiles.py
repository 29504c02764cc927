"""Device profiles: measured on this machine, saved and loaded, checked against the model, and the
simulated decode of a trace under one."""

from __future__ import annotations

import numpy as np
import pytest
from drafters import greedy_sequence, overfit_drafter

from bp_rl import speculative_generate
from bp_rl.profiles import DeviceProfile, flat_profile, measure_profile, roofline_profile, simulate
from bp_rl.traces import trace_request

PROMPT, NEW = [5, 6, 7, 8, 9], 30


@pytest.fixture(scope="module")
def setup(tiny_target):
    drafter = overfit_drafter(tiny_target, greedy_sequence(tiny_target, PROMPT, NEW), len(PROMPT))
    profile = measure_profile(tiny_target, drafter, "overfit", "tiny-cpu", block_sizes=(1, 2, 4, 8), contexts=(16, 64),
                              prompt_lengths=(8, 32), repeats=2, decode_tokens=12, concurrencies=(4,))
    return drafter, profile


def test_measured_profile_covers_every_pass_and_round_trips(tmp_path, setup, tiny_target):
    drafter, profile = setup
    assert profile.kind == "measured" and profile.device.startswith("CPU") and "torch" in profile.versions
    assert set(profile.verify) == {1, 2, 4, 8} and set(profile.draft) == {2, 4, 8}
    assert all(t > 0 for by_c in profile.verify.values() for t in by_c.values()) and set(profile.overhead) == {1, 2, 4, 8}
    loaded = DeviceProfile.load(profile.save(tmp_path / "p.json"))
    assert loaded == profile
    assert loaded.check(tiny_target, drafter, "overfit") is loaded


def test_simulated_decode_counts_every_cycle(setup, tiny_target):
    drafter, profile = setup
    trace = trace_request(tiny_target, drafter, PROMPT, (1, 4), max_new_tokens=NEW, stop_token_ids=[])
    stats = simulate(trace, profile, 4)
    assert stats.acceptance_lengths == trace.acceptance_lengths(4) and stats.new_tokens == NEW
    cycles = len(stats.acceptance_lengths)
    contexts = len(PROMPT) + 1 + np.concatenate([[0], np.cumsum(stats.acceptance_lengths)[:-1]])  # each cycle's anchor
    # near the budget a cycle drafts, and so verifies, fewer tokens: priced at what it verifies, as decoded
    live = speculative_generate(tiny_target, drafter, PROMPT, 4, max_new_tokens=NEW, stop_token_ids=[])
    assert stats.verify_counts == live.stats.verify_counts
    assert stats.decode_seconds == pytest.approx(sum(profile.cycle_seconds(4, int(c), v) for c, v in zip(contexts, stats.verify_counts)))
    assert profile.cycle_seconds(4, 20) == pytest.approx(profile.draft[4] + profile.verify_seconds(4, 20) + profile.overhead[4])
    flat = flat_profile(profile)
    assert flat.kind == "model" and "not a measurement" in flat.note
    # under the flat model a cycle costs one step, so simulated speedup over block 1 is the mean acceptance
    ar, spec = simulate(trace, flat, 1), simulate(trace, flat, 4)
    assert ar.decode_seconds / spec.decode_seconds == pytest.approx((NEW - 1) / cycles)


def test_a_verify_count_between_profiled_sizes_is_priced_between_them(setup):
    _, profile = setup
    for context in (16, 40, 64):
        low, high = profile.verify_seconds(2, context), profile.verify_seconds(4, context)
        assert profile.verify_seconds(3, context) == pytest.approx((low + high) / 2)
    assert profile.cycle_seconds(8, 20, 6) == pytest.approx(
        profile.draft[8] + (profile.verify_seconds(4, 20) + profile.verify_seconds(8, 20)) / 2 + (profile.overhead[4] + profile.overhead[8]) / 2)


def test_bad_profiles_are_explained(tmp_path, setup, tiny_target):
    drafter, profile = setup
    with pytest.raises(FileNotFoundError, match="no profile 'nope': shipped profiles"):
        DeviceProfile.load("nope")
    broken = tmp_path / "broken.json"
    broken.write_text(profile.save(tmp_path / "ok.json").read_text()[:50])
    with pytest.raises(ValueError, match="not a readable device profile"):
        DeviceProfile.load(broken)
    with pytest.raises(ValueError, match="no verify cost for 9 tokens; profiled: \\[1, 2, 4, 8\\]"):
        profile.verify_seconds(9, 20)
    with pytest.raises(ValueError, match="no loop overhead for 0 tokens; profiled: \\[1, 2, 4, 8\\]"):
        profile.cycle_seconds(2, 20, 0)
    with pytest.raises(ValueError, match="made for another model: drafter"):
        profile.check(tiny_target, overfit_drafter(tiny_target, greedy_sequence(tiny_target, PROMPT, NEW), len(PROMPT), steps=1), "other")
    with pytest.raises(ValueError, match="unknown profile kind 'guess'"):
        DeviceProfile(**{**profile.__dict__, "kind": "guess"})


def test_a_batched_profile_scales_every_pass_by_its_measured_batch_cost(setup, tiny_target):
    drafter, profile = setup
    assert profile.concurrencies == (1, 4) and set(profile.batched[4]) == {1, 2, 4, 8} and profile.batched_context == 64
    assert profile.at_concurrency(1) is profile
    loaded = profile.at_concurrency(4)
    assert loaded.concurrency == 4 and loaded.name == "tiny-cpu@c4" and "SIMULATED load" in loaded.note
    for n in (1, 2, 4, 8):
        factor = profile.batched[4][n] / profile.batched[1][n]
        assert loaded.verify_seconds(n, 40) == pytest.approx(profile.verify_seconds(n, 40) * factor)
        if n > 1:
            assert loaded.draft_seconds(n) == pytest.approx(profile.draft_seconds(n) * factor)
    assert loaded.prefill == profile.prefill and loaded.overhead == profile.overhead
    with pytest.raises(ValueError, match=r"no batched costs for concurrency 16; covered: \[1, 4\]"):
        profile.at_concurrency(16)
    with pytest.raises(ValueError, match="already at concurrency 4"):
        loaded.at_concurrency(1)
    with pytest.raises(ValueError, match=r"covered: \[1\]"):
        flat_profile(profile).at_concurrency(4)  # the flat model has no load


def test_roofline_model_is_labelled_and_memory_bound_for_small_blocks(setup, tiny_target):
    drafter, _ = setup
    model = roofline_profile(tiny_target, drafter, "overfit", "h200", block_sizes=(1, 2, 8), contexts=(16, 64), prompt_lengths=(8,))
    assert model.kind == "model" and "not a measurement" in model.note and "H200" in model.device
    # a tiny model on an H200 moves its weights in the same time whatever the block: flat verify cost
    assert model.verify[1][16] == pytest.approx(model.verify[8][16], rel=0.05)
    assert model.verify[8][64] >= model.verify[8][16] > 0 and model.draft[8] > 0
    # under load each request's pass is the batch's: 16 requests' caches and tokens cost more than one's
    assert model.batched[16][8] > model.batched[1][8] and model.at_concurrency(16).verify[8][16] > model.verify[8][16]
    with pytest.raises(ValueError, match="unknown accelerator 'tpu'; modelled: \\['a100', 'h100', 'h200'\\]"):
        roofline_profile(tiny_target, drafter, "overfit", "tpu")


def test_interleaved_timing_times_every_pass_once_a_round_in_a_fresh_order():
    from bp_rl.timing import measure_interleaved

    calls: list[str] = []
    timings = measure_interleaved({key: (lambda key=key: calls.append(key)) for key in "abcd"}, warmup=1, repeats=5, seed=3)
    assert calls[:4] == list("abcd")  # the warm-up
    rounds = [calls[4 + 4 * r : 8 + 4 * r] for r in range(5)]
    assert all(sorted(r) == list("abcd") for r in rounds) and len({tuple(r) for r in rounds}) > 1
    assert all(len(t.samples) == 5 and t.median >= 0 for t in timings.values())
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        measure_interleaved({"a": lambda: None}, repeats=0)


def test_the_closest_profile_shares_the_vendor_then_the_family_then_the_nearest_model():
    from bp_rl.profiles import device_distance

    here = "CPU Intel(R) Xeon(R) Processor, family 6 model 207 (2 threads)"
    shipped = [
        "CPU AMD EPYC, family 25 model 17 (2 threads)",
        "CPU Intel(R) Xeon(R) Processor, family 6 model 85 (2 threads)",
        "CPU Intel(R) Xeon(R) Processor, family 6 model 167 (2 threads)",
        "CPU Intel(R) Xeon(R) Processor, family 6 model 207 (4 threads)",
        "NVIDIA H200",
    ]
    ranked = sorted(shipped, key=lambda name: device_distance(name, here))
    assert ranked == [shipped[3], shipped[2], shipped[1], shipped[0], shipped[4]]  # same model: only the threads differ
    assert device_distance(here, here) == (False, False, False, 0, False)
    assert sorted(["NVIDIA A100-SXM4-80GB", "CPU AMD EPYC (2 threads)"], key=lambda n: device_distance(n, "NVIDIA H200"))[0].startswith("NVIDIA")
