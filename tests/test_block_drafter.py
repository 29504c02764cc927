"""BlockDrafter: checkpoint and forward compatibility with the public DFlash drafter; save/load; bad files."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import dflash_reference_config, make_tiny_target
from transformers import DynamicCache, Qwen3Config

from bp_rl import BlockDrafter, load_drafter, speculative_generate

dflash_model = pytest.importorskip("dflash.model", reason="the reference `dflash` package is a test-only dependency")


@pytest.fixture(scope="module")
def qwen_target():
    return make_tiny_target("qwen3")


@pytest.fixture(scope="module")
def reference_checkpoint(qwen_target, tmp_path_factory):
    """A random drafter saved by the public DFlashDraftModel, with its own save_pretrained."""
    torch.manual_seed(0)
    model = dflash_model.DFlashDraftModel(dflash_reference_config(qwen_target)).eval()
    path = tmp_path_factory.mktemp("dflash_ref")
    model.save_pretrained(path)
    return model, path


def random_inputs(config, ctx_len, block_len, start=0):
    hidden = config.hidden_size
    return dict(
        target_hidden=torch.randn(1, ctx_len, 2 * hidden),
        noise_embedding=torch.randn(1, block_len, hidden),
        position_ids=torch.arange(start, start + ctx_len + block_len)[None],
    )


def test_reference_checkpoint_loads_with_every_weight(reference_checkpoint, qwen_target):
    reference, path = reference_checkpoint
    ours = load_drafter(str(path), qwen_target)
    assert isinstance(ours, BlockDrafter)
    assert ours.target_layer_ids == (0, 2) and ours.max_block_size == 16 and ours.mask_token_id == 63
    ref_state = reference.state_dict()
    assert set(ours.state_dict()) == set(ref_state)
    for name, tensor in ours.state_dict().items():
        torch.testing.assert_close(tensor, ref_state[name].float(), rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("is_causal", [False, True])
def test_forward_matches_reference(reference_checkpoint, qwen_target, is_causal):
    reference, path = reference_checkpoint
    ours = load_drafter(str(path), qwen_target)
    torch.manual_seed(1)
    inputs = random_inputs(reference.config, ctx_len=9, block_len=6)
    with torch.no_grad():
        expected = reference(**inputs, is_causal=is_causal)
        got = ours(**inputs, is_causal=is_causal)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_forward_with_cache_matches_reference_over_cycles(reference_checkpoint, qwen_target):
    """Two decoding-style cycles: context K/V cached, block dropped from the cache after each."""
    reference, path = reference_checkpoint
    ours = load_drafter(str(path), qwen_target)
    caches = {"ref": DynamicCache(), "ours": DynamicCache()}
    torch.manual_seed(2)
    start = 0
    for ctx_len, block_len in [(7, 5), (3, 8)]:
        inputs = random_inputs(reference.config, ctx_len, block_len, start)
        with torch.no_grad():
            expected = reference(**inputs, past_key_values=caches["ref"], use_cache=True)
            got = ours(**inputs, past_key_values=caches["ours"], use_cache=True)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        for cache in caches.values():
            cache.crop(-block_len)
        start += ctx_len


@pytest.mark.parametrize("block_size", [2, 4, 16])
def test_greedy_decoding_matches_reference_generate(reference_checkpoint, qwen_target, block_size):
    """Same tokens as the reference's own speculative loop, with the same drafter weights."""
    reference, path = reference_checkpoint
    ours = load_drafter(str(path), qwen_target)
    prompt = [4, 9, 13, 2, 7, 30]
    with torch.no_grad():
        expected = dflash_model.dflash_generate(
            reference, qwen_target.model, torch.tensor([prompt]), max_new_tokens=40, stop_token_ids=None, block_size=block_size
        )[0, len(prompt) :].tolist()
    got = speculative_generate(qwen_target, ours, prompt, block_size, max_new_tokens=40, stop_token_ids=[])
    assert got.token_ids == expected


def test_save_load_roundtrip_is_fp16_and_reproduces_outputs(tiny_target, tmp_path):
    drafter = BlockDrafter.for_target(tiny_target, num_layers=2, seed=3)
    drafter.save(tmp_path / "d")
    assert json.loads((tmp_path / "d" / "config.json").read_text())["dtype"] == "float16"
    loaded = load_drafter(str(tmp_path / "d"), tiny_target)
    for name, tensor in drafter.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor.half().float(), rtol=0, atol=0)
    assert not list((tmp_path / "d").glob(".*.tmp")), "no temporary files left behind"


def test_missing_checkpoint_is_reported(tiny_target, tmp_path):
    with pytest.raises(FileNotFoundError, match="no drafter"):
        load_drafter(str(tmp_path / "nowhere"), tiny_target)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"needs config.json and \*.safetensors"):
        load_drafter(str(tmp_path / "empty"), tiny_target)


def test_corrupt_checkpoint_files_are_reported(tiny_target, tmp_path):
    BlockDrafter.for_target(tiny_target, num_layers=1).save(tmp_path / "d")
    weights = tmp_path / "d" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt drafter weights"):
        load_drafter(str(tmp_path / "d"), tiny_target)
    (tmp_path / "d" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt drafter config"):
        load_drafter(str(tmp_path / "d"), tiny_target)


@pytest.mark.parametrize(
    "other, message",
    [
        ({"vocab_size": 80}, r"vocabulary 80 != target's 64"),
        ({"hidden_size": 48}, r"hidden size 48 != target's 32"),
        ({"num_hidden_layers": 6}, r"built for 6 target layers, target has 4"),
    ],
)
def test_checkpoint_for_another_target_is_rejected(tmp_path, other, message):
    BlockDrafter.for_target(make_tiny_target("llama", **other), num_layers=1).save(tmp_path / "d")
    with pytest.raises(ValueError, match=r"does not match target 'tiny-llama'.*" + message):
        load_drafter(str(tmp_path / "d"), make_tiny_target("llama"))


def test_config_without_dflash_keys_is_rejected():
    with pytest.raises(ValueError, match="not a DFlash drafter config"):
        BlockDrafter(Qwen3Config(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8))


def test_no_shipped_drafter_for_an_unknown_target(tiny_target):
    with pytest.raises(FileNotFoundError, match="no shipped drafter for target 'tiny-"):
        load_drafter("default", tiny_target)


# --- reduced draft vocabulary ---------------------------------------------------------------------


def reduced_drafter(target, ids, seed=3):
    return BlockDrafter.for_target(target, num_layers=2, seed=seed).set_draft_vocabulary(torch.tensor(ids))


def test_reduced_vocabulary_drafts_only_its_tokens_and_decodes_losslessly(tiny_target):
    from bp_rl import autoregressive_generate

    drafter = reduced_drafter(tiny_target, list(range(0, 64, 3)))
    assert drafter.draft_vocab_size == 22 and drafter.draft_head().shape == (22, 32)
    prompt = [5, 6, 7, 8]
    expected = autoregressive_generate(tiny_target, prompt, max_new_tokens=30, stop_token_ids=[]).token_ids
    for block_size in (2, 4, 16):
        assert speculative_generate(tiny_target, drafter, prompt, block_size, max_new_tokens=30, stop_token_ids=[]).token_ids == expected
    from bp_rl import DraftContext, Sampler

    decoder_context = DraftContext(torch.tensor(prompt), torch.zeros(1, 3, len(drafter.target_layer_ids) * 32), drafter.new_cache())
    draft = drafter.propose(decoder_context, 6, Sampler.create(1.0, 0, 1.0, 0, tiny_target.device))
    assert all(int(t) % 3 == 0 for t in draft.tokens)
    assert draft.probs.shape == (6, 64) and torch.allclose(draft.probs.sum(-1), torch.ones(6))
    assert (draft.probs[:, [i for i in range(64) if i % 3]] == 0).all()  # q is zero outside the draft vocabulary


def test_reduced_vocabulary_survives_save_and_load(tiny_target, tmp_path):
    drafter = reduced_drafter(tiny_target, [1, 4, 9, 16, 25])
    drafter.save(tmp_path / "d")
    assert json.loads((tmp_path / "d" / "config.json").read_text())["dflash_config"]["draft_vocab_size"] == 5
    loaded = load_drafter(str(tmp_path / "d"), tiny_target)
    assert loaded.draft_token_ids.tolist() == [1, 4, 9, 16, 25] and loaded.draft_token_ids.dtype == torch.long
    prompt = [5, 6, 7, 8]
    a = speculative_generate(tiny_target, drafter, prompt, 8, max_new_tokens=12, temperature=1.0, seed=0)
    b = speculative_generate(tiny_target, loaded, prompt, 8, max_new_tokens=12, temperature=1.0, seed=0)
    assert a.stats.acceptance_lengths == b.stats.acceptance_lengths


@pytest.mark.parametrize("ids, message", [([3], "at least|>= 2"), ([0, 64], r"in \[0, 64\)"), ([-1, 2], r"in \[0, 64\)")])
def test_bad_draft_vocabulary_is_rejected(tiny_target, ids, message):
    with pytest.raises(ValueError, match=message):
        reduced_drafter(tiny_target, ids)


def test_default_is_the_newest_shipped_version(monkeypatch):
    import bp_rl.drafters as registry

    target = make_tiny_target("llama")
    monkeypatch.setattr(registry, "shipped_drafters", lambda: ["tiny-llama-block", "tiny-llama-block-v2", "tiny-llama-block-v10", "tiny-llama-block-vx"])
    assert registry.default_drafter_name(target) == "tiny-llama-block-v10"
    monkeypatch.setattr(registry, "shipped_drafters", lambda: ["tiny-llama-block"])
    assert registry.default_drafter_name(target) == "tiny-llama-block"
