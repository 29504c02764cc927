"""Drafter test doubles with known behaviour."""

from __future__ import annotations

import torch

from bp_rl import Draft, DraftContext, Drafter, Sampler, Target


class NoisyOracleDrafter(Drafter):
    """Proposes a known continuation but corrupts every `period`-th proposal: partial acceptance."""

    max_block_size = 64

    def __init__(self, prompt_len: int, continuation: list[int], vocab_size: int, period: int = 3):
        self.prompt_len, self.continuation, self.vocab_size, self.period = prompt_len, continuation, vocab_size, period

    def propose(self, context: DraftContext, num_tokens: int, sampler: Sampler) -> Draft:
        start = len(context.token_ids) - self.prompt_len
        tokens = list(self.continuation[start : start + num_tokens])
        for i in range(len(tokens)):
            if (start + i) % self.period == self.period - 1:
                tokens[i] = (tokens[i] + 1) % self.vocab_size
        return Draft(torch.tensor(tokens, dtype=torch.long))


class SelfDrafter(Drafter):
    """Drafts by sampling the target itself at another temperature: q is close to, but not, p.

    `reported_temperature` different from `temperature` is a deliberate bug for negative controls:
    the drafter then reports a distribution other than the one it sampled from.
    """

    max_block_size = 64

    def __init__(self, target: Target, temperature: float = 1.3, reported_temperature: float | None = None):
        self.target, self.temperature = target, temperature
        self.reported_temperature = temperature if reported_temperature is None else reported_temperature

    @torch.inference_mode()
    def propose(self, context: DraftContext, num_tokens: int, sampler: Sampler) -> Draft:
        tokens, reported = context.token_ids.clone(), []
        own = Sampler(self.temperature, sampler.top_k, sampler.top_p, sampler.generator)
        claimed = Sampler(self.reported_temperature, sampler.top_k, sampler.top_p)
        for _ in range(num_tokens):
            logits = self.target.model(tokens[None]).logits[0, -1]
            tokens = torch.cat([tokens, own.draw(own.probs(logits))[None]])
            reported.append(claimed.probs(logits))
        return Draft(tokens[-num_tokens:], torch.stack(reported))
