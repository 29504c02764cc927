"""The embedded SmolLM2 target end to end (converted once into the user cache, about 20 s)."""

from __future__ import annotations

import json

import pytest

from bp_rl import BlockDrafter, ContinuationDrafter, speculative_generate
from bp_rl.generate import main as generate_main

pytestmark = pytest.mark.real_model

CHAT = [{"role": "user", "content": "Write a Python function that reverses a string."}]


@pytest.fixture(scope="module")
def prompt(smollm2) -> str:
    return smollm2.tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)


@pytest.fixture(scope="module")
def hf_tokens(smollm2, prompt) -> list[int]:
    ids = smollm2.encode(prompt)
    out = smollm2.model.generate(ids[None], max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=2)
    return out[0, len(ids) :].tolist()


def test_embedded_target_shape(smollm2):
    assert (smollm2.num_layers, smollm2.hidden_size, smollm2.vocab_size) == (30, 576, 49152)
    assert smollm2.eos_token_ids == [2] and smollm2.tokenizer.chat_template


@pytest.mark.parametrize("block_size", [1, 2, 3, 4, 8, 16])
def test_greedy_equals_hf_generate(smollm2, prompt, hf_tokens, block_size):
    drafter = BlockDrafter.for_target(smollm2, num_layers=1, seed=0)
    out = speculative_generate(smollm2, drafter, prompt, block_size, max_new_tokens=24, stop_token_ids=[])
    assert out.token_ids == hf_tokens


def test_continuation_drafter_on_real_target(smollm2, prompt, hf_tokens):
    drafter = ContinuationDrafter(len(smollm2.encode(prompt)), hf_tokens)
    out = speculative_generate(smollm2, drafter, prompt, 8, max_new_tokens=24, stop_token_ids=[])
    assert out.token_ids == hf_tokens and out.stats.acceptance_lengths == [8, 8, 7]


def test_cli_prints_text_and_stats(smollm2, tmp_path, capsys):
    BlockDrafter.for_target(smollm2, num_layers=1, seed=0).save(tmp_path / "drafter")
    code = generate_main(
        ["--prompt", "Say hi.", "--chat", "--block-size", "4", "--drafter", str(tmp_path / "drafter"),
         "--max-new-tokens", "6", "--device", "cpu", "--json", "--compare-ar"]
    )
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["block_size"] == 4 and 1 <= result["stats"]["new_tokens"] <= 6
    assert result["speedup"] > 0 and isinstance(result["text"], str)


def test_cli_reports_a_missing_drafter(capsys):
    assert generate_main(["--prompt", "x", "--block-size", "4", "--drafter", "no-such-drafter"]) == 2
    assert "needs a drafter: no drafter 'no-such-drafter'" in capsys.readouterr().err


def test_decode_benchmark_runs_and_reports_every_block(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "bench.json"
    cmd = [sys.executable, "experiments/bench_decode.py", "--drafter", "random-block", "prompt-lookup", "--block-sizes", "2", "4",
           "--category", "chat", "--per-category", "1", "--max-new-tokens", "12", "--verify-repeats", "2", "--device", "cpu", "--out", str(out)]
    printed = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    summary = json.loads(out.read_text())["summary"]
    assert set(summary["blocks"]) == {"1", "2", "4"}
    assert all(0 < summary["blocks"][b]["ceiling"]["ceiling_ratio"] for b in ("2", "4"))
    assert "| 4 |" in printed and "ceiling/bound" in printed and "share of a step" in printed
    for name in ("random-block", "prompt-lookup"):
        drafter = summary["drafters"][name]
        assert drafter["per_category"]["chat"]["prompts"] == 1 and drafter["best_fixed_block"] in (1, 2, 4)
        assert set(drafter["draft_seconds"]) == {"2", "4"} and all(t > 0 for t in drafter["draft_seconds"].values())
    # block 1 is autoregressive decoding, measured once and shared by both drafters
    assert summary["drafters"]["random-block"]["blocks"]["1"] == summary["drafters"]["prompt-lookup"]["blocks"]["1"]


def test_shipped_drafter_loads_by_name_and_as_default(smollm2, prompt, hf_tokens):
    from bp_rl import BlockDrafter, load_drafter

    drafter = load_drafter("default", smollm2)
    assert isinstance(drafter, BlockDrafter) and drafter.max_block_size == 16
    old = load_drafter("smollm2-135m-block", smollm2)  # the drafter the shipped tables measured stays loadable
    assert old.target_layer_ids == drafter.target_layer_ids and old.draft_token_ids is None
    for d in (drafter, old):
        for block_size in (4, 16):
            out = speculative_generate(smollm2, d, prompt, block_size, max_new_tokens=24, stop_token_ids=[])
            assert out.token_ids == hf_tokens
