"""Shared fixtures: tiny random targets (fast, for logic) and the real embedded target (marked)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from bp_rl import BlockDrafter, Target

TINY_SHAPES = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=256,
    # Larger-than-usual init so logits are peaked: no near-ties for argmax to flip on rounding.
    initializer_range=0.5,
)


def make_tiny_target(arch: str = "llama", vocab_size: int = 64, seed: int = 0, **shape) -> Target:
    """A randomly initialised causal LM small enough to decode in milliseconds."""
    torch.manual_seed(seed)
    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen3": (Qwen3Config, Qwen3ForCausalLM)}[arch]
    config = config_cls(vocab_size=vocab_size, bos_token_id=0, eos_token_id=1, pad_token_id=1, **{**TINY_SHAPES, **shape})
    model = model_cls(config).eval()
    return Target(name=f"tiny-{arch}", model=model, tokenizer=None, device=torch.device("cpu"))


@pytest.fixture(scope="session", params=["llama", "qwen3"])
def tiny_target(request) -> Target:
    return make_tiny_target(request.param)


@pytest.fixture(scope="session")
def tiny_drafter(tiny_target) -> BlockDrafter:
    return BlockDrafter.for_target(tiny_target, num_layers=2, block_size=16, seed=1)


@pytest.fixture(scope="session")
def smollm2():
    from bp_rl import load_target

    return load_target("smollm2-135m", device="cpu")
