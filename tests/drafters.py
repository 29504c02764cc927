"""Drafter test doubles with known behaviour."""

from __future__ import annotations

import torch

from bp_rl import Draft, DraftContext, Drafter, Sampler, Target
from bp_rl.drafter import layer_states


class NoisyContinuationDrafter(Drafter):
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


def target_features(target: Target, tokens: torch.Tensor, layer_ids) -> torch.Tensor:
    """The target's teacher-forced states at `layer_ids`, concatenated: (len, len(layer_ids) * hidden)."""
    with torch.no_grad():
        out = target.model(tokens[None], output_hidden_states=True)
    return layer_states(out.hidden_states, layer_ids)[0]


def greedy_sequence(target: Target, prompt: list[int], new_tokens: int) -> torch.Tensor:
    """Prompt + the target's greedy continuation, never stopping early."""
    from bp_rl import speculative_generate

    out = speculative_generate(target, None, prompt, 1, max_new_tokens=new_tokens, stop_token_ids=[])
    return torch.tensor(prompt + out.token_ids)


def overfit_drafter(target: Target, tokens: torch.Tensor, loss_start: int, steps: int = 60):
    """A tiny block drafter trained on one greedy continuation: it accepts often, but not always."""
    from bp_rl import BlockDrafter
    from bp_rl.drafter_training import DraftVocabulary, block_loss, sample_blocks

    drafter = BlockDrafter.for_target(target, num_layers=1, block_size=8, seed=0).float()
    feats = target_features(target, tokens, drafter.target_layer_ids)
    embedding = target.model.get_input_embeddings().weight
    vocab = DraftVocabulary(drafter)
    optimizer = torch.optim.AdamW(drafter.parameters(), lr=1e-2)
    for step in range(steps):
        batch = sample_blocks(tokens, loss_start, 24, 8, drafter.mask_token_id, torch.Generator().manual_seed(step))
        loss, _ = block_loss(drafter, embedding, vocab, feats, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return drafter.bind(target)
