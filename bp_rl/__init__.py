"""BlockPilot-RL decoding core: targets, drafters, speculative decoding, timing."""

from bp_rl.block_drafter import BlockDrafter
from bp_rl.decoding import (
    DecodeStats,
    Generation,
    SpeculativeDecoder,
    autoregressive_generate,
    speculative_generate,
)
from bp_rl.drafter import Draft, DraftContext, Drafter, OracleDrafter, load_drafter
from bp_rl.models import Target, load_target
from bp_rl.prompt_lookup import PromptLookupDrafter
from bp_rl.sampling import Sampler

__all__ = [
    "BlockDrafter",
    "DecodeStats",
    "Draft",
    "DraftContext",
    "Drafter",
    "Generation",
    "OracleDrafter",
    "PromptLookupDrafter",
    "Sampler",
    "SpeculativeDecoder",
    "Target",
    "autoregressive_generate",
    "load_drafter",
    "load_target",
    "speculative_generate",
]
