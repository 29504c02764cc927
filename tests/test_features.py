"""Observation feature sets read off the prefill."""

from __future__ import annotations

import numpy as np
import pytest

from bp_rl.decoding import SpeculativeDecoder
from bp_rl.features import extract_features, parse_feature_set
from conftest import make_tiny_target


@pytest.fixture(scope="module")
def prefill():
    target = make_tiny_target("llama")  # 4 layers, hidden 32, vocab 64
    return SpeculativeDecoder(target, None, [3, 4, 5, 6, 7], max_new_tokens=4).prefill()


@pytest.mark.parametrize(
    "name, dim", [("last_hidden", 32), ("mean_hidden@2", 32), ("multi_layer", 96), ("logit_stats", 3), ("prompt_length", 1), ("logits", 64)]
)
def test_dimensions(prefill, name, dim):
    vector = extract_features(prefill, name)
    assert vector.shape == (dim,) and vector.dtype == np.float32 and np.isfinite(vector).all()


def test_values_come_from_the_prefill(prefill):
    np.testing.assert_allclose(extract_features(prefill, "last_hidden@2"), prefill.hidden_states[2][0, -1].numpy())
    np.testing.assert_allclose(extract_features(prefill, "mean_hidden@0"), prefill.hidden_states[0][0].mean(0).numpy(), rtol=1e-6)
    entropy, top1, margin = extract_features(prefill, "logit_stats")
    probs = np.sort(np.exp(prefill.last_logits.numpy()) / np.exp(prefill.last_logits.numpy()).sum())[::-1]
    assert top1 == pytest.approx(probs[0], rel=1e-5) and margin == pytest.approx(probs[0] - probs[1], rel=1e-4)
    assert 0 <= entropy <= np.log(64)
    assert extract_features(prefill, "prompt_length")[0] == pytest.approx(np.log(6))


def test_combinations_concatenate_in_order(prefill):
    combined = extract_features(prefill, "logit_stats+prompt_length")
    np.testing.assert_array_equal(combined, np.concatenate([extract_features(prefill, "logit_stats"), extract_features(prefill, "prompt_length")]))
    assert parse_feature_set("last_hidden@3+logits") == [("last_hidden", 3), ("logits", None)]


@pytest.mark.parametrize(
    "bad, message",
    [("hidden", "unknown feature 'hidden'"), ("logits@2", "takes no layer"), ("last_hidden@x", "non-negative integer"), ("last_hidden@9", "layers 0..4")],
)
def test_bad_feature_sets_fail_clearly(prefill, bad, message):
    with pytest.raises(ValueError, match=message):
        extract_features(prefill, bad)
