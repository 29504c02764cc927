"""BlockPilot-RL decoding core: targets, drafters, speculative decoding, traces, profiles, timing.

Names are imported on first use, so the torch-free modules (`bp_rl.outcomes`, the reward
definitions evaluation code reads) can be imported without loading torch and transformers.
"""

from importlib import import_module

_EXPORTS = {
    "BlockDrafter": "bp_rl.block_drafter",
    "DecodeStats": "bp_rl.decoding",
    "Generation": "bp_rl.decoding",
    "SpeculativeDecoder": "bp_rl.decoding",
    "autoregressive_generate": "bp_rl.decoding",
    "speculative_generate": "bp_rl.decoding",
    "Draft": "bp_rl.drafter",
    "DraftContext": "bp_rl.drafter",
    "Drafter": "bp_rl.drafter",
    "ContinuationDrafter": "bp_rl.drafter",
    "load_drafter": "bp_rl.drafters",
    "Target": "bp_rl.models",
    "load_target": "bp_rl.models",
    "PromptLookupDrafter": "bp_rl.prompt_lookup",
    "Sampler": "bp_rl.sampling",
    "AcceptanceTrace": "bp_rl.traces",
    "trace_request": "bp_rl.traces",
    "DeviceProfile": "bp_rl.profiles",
    "measure_profile": "bp_rl.profiles",
    "simulate": "bp_rl.profiles",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'bp_rl' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value  # next time, a plain lookup
    return value
