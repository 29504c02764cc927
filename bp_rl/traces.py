"""Acceptance traces: what a cycle would commit, for every place it could start and every block size.

At temperature 0 decoding is lossless, so the committed tokens are the target's greedy continuation
whatever the block sizes, and what a cycle commits depends only on where it starts (its anchor, the
newest committed token) and its block size. One greedy decode, one teacher-forced target pass over
prompt + continuation and one packed drafter pass per block size (every anchor at once, as in
drafter training) therefore give the whole table `accepted[block][anchor]`, from which any schedule
(a fixed block per request, or a block per cycle) replays exactly, on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from bp_rl.block_drafter import BlockDrafter
from bp_rl.decoding import speculative_generate
from bp_rl.drafter_training import DraftVocabulary, drafts_at_anchors
from bp_rl.models import Target


@dataclass
class CycleState:
    """What a per-cycle schedule may look at before choosing the next cycle's block size."""

    committed: int  # new tokens committed so far (the prefill commits the first)
    budget: int  # new tokens this request may still commit, at most
    history: list[tuple[int, int]] = field(default_factory=list)  # (block size, tokens committed) per cycle so far


@dataclass
class AcceptanceTrace:
    """Exact acceptance of one request at T=0.

    `tokens` are the new tokens of the target's greedy continuation (a stop token, if any, last).
    `accepted[b][i]`: drafts the target accepts in a cycle of block size b anchored at new token i
    (the cycle drafts the tokens after it). `confidence[b][i]`: the drafter's top-1 probability at
    each of that cycle's b - 1 drafted slots.
    """

    prompt_tokens: int
    tokens: list[int]
    accepted: dict[int, list[int]]
    confidence: dict[int, list[list[float]]]

    @property
    def block_sizes(self) -> tuple[int, ...]:
        return tuple(sorted(self.accepted))

    def committed(self, anchor: int, block_size: int) -> int:
        """Tokens a cycle of `block_size` anchored at new token `anchor` commits (bonus included)."""
        if block_size not in self.accepted:
            raise ValueError(f"block size {block_size} is not in this trace; traced: {list(self.block_sizes)}")
        remaining = len(self.tokens) - 1 - anchor
        return min(self.accepted[block_size][anchor] + 1, remaining)

    def replay(self, schedule: Callable[[CycleState], int]) -> list[tuple[int, int]]:
        """(block size, tokens committed) of every cycle when `schedule` picks each cycle's block size."""
        state = CycleState(committed=1, budget=len(self.tokens) - 1)
        while state.committed < len(self.tokens):
            block = schedule(state)
            n = self.committed(state.committed - 1, block)
            state.history.append((block, n))
            state.committed += n
            state.budget -= n
        return state.history

    def acceptance_lengths(self, block_size: int) -> list[int]:
        """Per-cycle committed counts of a fixed-block decode: at T=0 exactly
        `speculative_generate(..., block_size).stats.acceptance_lengths`."""
        return [n for _, n in self.replay(lambda state: block_size)]


@torch.inference_mode()
def trace_request(
    target: Target,
    drafter: BlockDrafter,
    prompt: str | list[int] | torch.Tensor,
    block_sizes: tuple[int, ...] | list[int],
    max_new_tokens: int = 64,
    stop_token_ids: list[int] | None = None,
) -> AcceptanceTrace:
    """The exact T=0 acceptance trace of `prompt` for every block size in `block_sizes`."""
    bad = [b for b in block_sizes if not isinstance(b, int) or not 1 <= b <= drafter.max_block_size]
    if bad:
        raise ValueError(f"block sizes {bad} are outside [1, {drafter.max_block_size}] for this drafter")
    greedy = speculative_generate(target, None, prompt, 1, max_new_tokens=max_new_tokens, stop_token_ids=stop_token_ids)
    prompt_ids = target.encode(prompt)
    new = greedy.token_ids
    sequence = torch.cat([prompt_ids, torch.tensor(new, dtype=torch.long, device=prompt_ids.device)])
    out = target.model(sequence[None], output_hidden_states=True)
    features = torch.cat([out.hidden_states[i + 1][0] for i in drafter.target_layer_ids], dim=-1)
    embedding = target.model.get_input_embeddings().weight
    vocab = DraftVocabulary(drafter)
    anchors = torch.arange(len(prompt_ids), len(sequence) - 1)  # new token i sits at position P + i
    accepted: dict[int, list[int]] = {}
    confidence: dict[int, list[list[float]]] = {}
    for b in sorted(set(block_sizes)):
        if b == 1 or len(anchors) == 0:  # block 1 drafts nothing
            accepted[b], confidence[b] = [0] * len(anchors), [[] for _ in anchors]
            continue
        matches, top1 = drafts_at_anchors(drafter, embedding, vocab, features, sequence.cpu(), anchors, b)
        accepted[b] = matches.long().cumprod(dim=1).sum(dim=1).tolist()
        confidence[b] = top1.tolist()
    return AcceptanceTrace(prompt_tokens=len(prompt_ids), tokens=new, accepted=accepted, confidence=confidence)
