"""The one measurement behind every reward: prefill once, observe, decode at a block size, time it.

Table collection and the live environment both go through `start_request` and
`finish_request` (or `measure`, which is the two back to back), so a replayed reward and a
live one mean the same thing: the same timed prefill and decode loop, on the same prefill that
the observation was read from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from bp_rl.decoding import DecodeStats, SpeculativeDecoder
from bp_rl.drafter import Drafter
from bp_rl.features import extract_features
from bp_rl.models import Target
from bp_rl.outcomes import AUTOREGRESSIVE
from bp_rl.sampling import Sampler



@dataclass(frozen=True)
class DecodeSettings:
    """Decoding settings shared by every measurement of one table or environment."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def sampler(self, seed: int | None, device: torch.device) -> Sampler:
        return Sampler.create(self.temperature, self.top_k, self.top_p, seed, device)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Measurement:
    block_size: int  # AUTOREGRESSIVE for the baseline
    stats: DecodeStats
    observations: dict[str, np.ndarray]  # feature set name -> vector


def start_request(
    target: Target,
    drafter: Drafter | None,
    prompt: str | list[int] | torch.Tensor,
    settings: DecodeSettings,
    feature_sets: tuple[str, ...] = (),
    seed: int | None = None,
    stop_token_ids: list[int] | None = None,
) -> tuple[SpeculativeDecoder, dict[str, np.ndarray]]:
    """Prefill `prompt` (timed) and read the observations off that prefill; decoding is left to `finish_request`.

    `stop_token_ids=None` stops at the target's EOS tokens."""
    sampler = settings.sampler(seed, target.device)
    decoder = SpeculativeDecoder(target, drafter, prompt, settings.max_new_tokens, sampler, stop_token_ids)
    prefill = decoder.prefill()
    return decoder, {name: extract_features(prefill, name) for name in feature_sets}


def finish_request(decoder: SpeculativeDecoder, block_size: int) -> DecodeStats:
    """Decode the rest of the request at `block_size` (timed) and return its stats."""
    return decoder.decode(1 if block_size == AUTOREGRESSIVE else block_size)


def measure(
    target: Target,
    drafter: Drafter | None,
    prompt: str | list[int] | torch.Tensor,
    block_size: int,
    settings: DecodeSettings,
    feature_sets: tuple[str, ...] = (),
    seed: int | None = None,
) -> Measurement:
    """One timed request at `block_size` (AUTOREGRESSIVE: without the drafter), plus its observations."""
    decoder, observations = start_request(
        target, None if block_size == AUTOREGRESSIVE else drafter, prompt, settings, feature_sets, seed
    )
    return Measurement(block_size, finish_request(decoder, block_size), observations)
