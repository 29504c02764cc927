"""At temperature > 0 speculative decoding must sample exactly the target's distribution.

Each test draws N sequences of 3 new tokens and compares their joint distribution with the
target's exact one (enumerated over a vocabulary of 8) by a chi-square test at significance
1e-3: a correct decoder fails it with probability 0.001 for a random seed; the seeds are fixed,
so the outcome is deterministic. A negative control shows the same test catches a real bug.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from conftest import make_tiny_target
from drafters import SelfDrafter
from scipy.stats import chisquare

from bp_rl import BlockDrafter, Sampler, speculative_generate

VOCAB = 8
PROMPT = [3, 5, 2]
NEW = 3
SAMPLES = 1500
ALPHA = 1e-3


@pytest.fixture(scope="module")
def small_target():
    return make_tiny_target("llama", vocab_size=VOCAB, seed=3)


def exact_joint(target, sampler: Sampler) -> dict[tuple[int, ...], float]:
    """P(t1, t2, t3 | prompt) under the target's (warped) sampling distribution, by enumeration."""
    seqs = list(itertools.product(range(VOCAB), repeat=NEW))
    ids = torch.tensor([PROMPT + list(s[:-1]) for s in seqs])
    with torch.no_grad():
        logits = target.model(ids).logits[:, len(PROMPT) - 1 :]  # rows predict t1, t2, t3
    probs = sampler.probs(logits)
    chosen = probs.gather(-1, torch.tensor(seqs)[..., None])[..., 0]
    return dict(zip(seqs, chosen.prod(dim=-1).tolist()))


def chi_square_pvalue(target, drafter, top_k=0, top_p=1.0, verify_count=None) -> float:
    exact = exact_joint(target, Sampler(1.0, top_k, top_p))
    counts = dict.fromkeys(exact, 0)
    for seed in range(SAMPLES):
        out = speculative_generate(
            target, drafter, PROMPT, 4, max_new_tokens=NEW, temperature=1.0, top_k=top_k, top_p=top_p,
            seed=seed, stop_token_ids=[], verify_count=verify_count,
        )
        counts[tuple(out.token_ids)] += 1
    # pool the cells with expected count < 5 into one, as the chi-square approximation needs
    keys = sorted(exact, key=exact.get, reverse=True)
    big = [k for k in keys if exact[k] * SAMPLES >= 5]
    small = [k for k in keys if exact[k] * SAMPLES < 5]
    observed = [counts[k] for k in big] + [sum(counts[k] for k in small)]
    expected = [exact[k] * SAMPLES for k in big] + [sum(exact[k] for k in small) * SAMPLES]
    expected = np.array(expected) * sum(observed) / sum(expected)
    return chisquare(observed, expected).pvalue


def test_matches_target_with_a_drafter_that_agrees_often(small_target):
    assert chi_square_pvalue(small_target, SelfDrafter(small_target, temperature=1.3)) > ALPHA


def test_matches_target_with_a_drafter_that_rarely_agrees(small_target):
    drafter = BlockDrafter.for_target(small_target, num_layers=1, seed=0)
    assert chi_square_pvalue(small_target, drafter) > ALPHA


def test_matches_target_under_top_k_and_top_p(small_target):
    assert chi_square_pvalue(small_target, SelfDrafter(small_target, temperature=1.5), top_k=5, top_p=0.9) > ALPHA


def test_negative_control_a_drafter_that_misreports_its_distribution_is_caught(small_target):
    """A drafter that reports another distribution than it sampled from biases the output: the test must see it."""
    buggy = SelfDrafter(small_target, temperature=0.5, reported_temperature=2.0)
    assert chi_square_pvalue(small_target, buggy) < ALPHA


def test_matches_target_with_prompt_lookup(small_target):
    """Deterministic proposals (q one-hot) from the text itself: frequent matches with 8 tokens."""
    from bp_rl import PromptLookupDrafter

    assert chi_square_pvalue(small_target, PromptLookupDrafter(max_ngram=2)) > ALPHA


def test_matches_target_with_a_reduced_draft_vocabulary(small_target):
    """q is zero outside the draft vocabulary: tokens the drafter cannot propose still come out exactly."""
    drafter = BlockDrafter.for_target(small_target, num_layers=1, seed=0).set_draft_vocabulary(torch.tensor([0, 2, 3, 5]))
    assert chi_square_pvalue(small_target, drafter) > ALPHA


def test_matches_target_verifying_only_part_of_each_block(small_target):
    """A verify budget checks a prefix of the draft: a shorter draft from the same distributions."""
    drafter = SelfDrafter(small_target, temperature=1.3)
    assert chi_square_pvalue(small_target, drafter, verify_count=2) > ALPHA
