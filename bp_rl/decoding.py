"""Speculative and autoregressive decoding with a runtime block size.

One request is a `SpeculativeDecoder`: `prefill()` runs the prompt through the target once
(its hidden states are also the policy's observation), then each `step(block_size)` is one
cycle: the drafter proposes up to `block_size - 1` tokens after the newest committed token,
the target verifies [newest, drafts...] in one forward pass, the accepted prefix plus one
target token are committed, and the KV cache is rolled back past the rejected drafts.
Block size 1 is plain autoregressive decoding through the same loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from bp_rl.drafter import Draft, DraftContext, Drafter, entropy_of, layer_states
from bp_rl.models import Target
from bp_rl.outcomes import request_tokens_per_second
from bp_rl.sampling import Sampler
from bp_rl.sampling import verify as verify_draft
from bp_rl.timing import Stopwatch


@dataclass
class DecodeStats:
    """What one decoded request cost and gained."""

    prompt_tokens: int
    new_tokens: int = 0
    acceptance_lengths: list[int] = field(default_factory=list)  # tokens committed per verify pass, bonus included
    block_sizes: list[int] = field(default_factory=list)  # block size of each cycle
    verify_counts: list[int] = field(default_factory=list)  # tokens each cycle's verify pass took (anchor included)
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0

    @property
    def cycles(self) -> int:
        return len(self.acceptance_lengths)

    @property
    def mean_acceptance(self) -> float:
        return sum(self.acceptance_lengths) / self.cycles if self.cycles else 0.0

    @property
    def tokens_per_second(self) -> float:
        return request_tokens_per_second(self.new_tokens, self.prefill_seconds, self.decode_seconds)

    def as_dict(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "new_tokens": self.new_tokens,
            "cycles": self.cycles,
            "mean_acceptance": self.mean_acceptance,
            "acceptance_lengths": list(self.acceptance_lengths),
            "prefill_seconds": self.prefill_seconds,
            "decode_seconds": self.decode_seconds,
            "tokens_per_second": self.tokens_per_second,
        }


@dataclass
class Generation:
    token_ids: list[int]  # new tokens only
    text: str
    stats: DecodeStats


@dataclass
class DraftedBlock:
    """A cycle's draft, made and not yet verified."""

    block_size: int
    draft: Draft | None  # None: nothing drafted (block 1, or the budget leaves no room)

    @property
    def confidence(self) -> list[float]:
        """The drafter's top-1 probability per drafted slot: as the drafter reports it, else the top of
        the distribution it drew from, else 1 (a deterministic drafter's proposals)."""
        if self.draft is None:
            return []
        if self.draft.confidence is not None:
            return self.draft.confidence.tolist()
        if self.draft.probs is not None:
            return self.draft.probs.max(dim=-1).values.tolist()
        return [1.0] * len(self.draft.tokens)

    @property
    def entropy(self) -> list[float]:
        """The entropy (nats) of the drafter's distribution per drafted slot: as the drafter reports it,
        else of the distribution it drew from, else 0 (a deterministic drafter's proposals)."""
        if self.draft is None:
            return []
        if self.draft.entropy is not None:
            return self.draft.entropy.tolist()
        if self.draft.probs is not None:
            return entropy_of(self.draft.probs).tolist()
        return [0.0] * len(self.draft.tokens)


@dataclass
class Prefill:
    """The target's pass over the prompt: its hidden states (embeddings + every layer) and last logits."""

    hidden_states: tuple[torch.Tensor, ...]
    last_logits: torch.Tensor  # (vocab,)


def check_block_size(drafter: Drafter | None, block_size: int) -> None:
    max_block = drafter.max_block_size if drafter is not None else 1
    if not isinstance(block_size, int) or not 1 <= block_size <= max_block:
        raise ValueError(f"block_size must be an integer in [1, {max_block}] for this drafter, got {block_size!r}")


class SpeculativeDecoder:
    """Decodes one request, one cycle at a time, with a block size chosen per cycle."""

    def __init__(
        self,
        target: Target,
        drafter: Drafter | None,
        prompt: str | list[int] | torch.Tensor,
        max_new_tokens: int = 128,
        sampler: Sampler | None = None,
        stop_token_ids: list[int] | None = None,
    ):
        self.target = target
        self.drafter = drafter
        self.sampler = sampler or Sampler()
        self.prompt_ids = target.encode(prompt)
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        total = len(self.prompt_ids) + max_new_tokens
        if total > target.max_context:
            raise ValueError(
                f"prompt ({len(self.prompt_ids)} tokens) + max_new_tokens ({max_new_tokens}) = {total} "
                f"exceeds the target's context of {target.max_context} tokens"
            )
        self.max_new_tokens = max_new_tokens
        self.stop_token_ids = set(target.eos_token_ids if stop_token_ids is None else stop_token_ids)
        self.layer_ids = tuple(drafter.target_layer_ids) if drafter is not None else ()
        self.cache = DynamicCache()
        self.tokens = self.prompt_ids.clone()  # committed tokens; the last is not yet in the KV cache
        self.stats = DecodeStats(prompt_tokens=len(self.prompt_ids))
        self.draft_context = DraftContext(self.tokens, cache=drafter.new_cache() if drafter else None)
        self.done = False

    @property
    def new_token_ids(self) -> list[int]:
        return self.tokens[len(self.prompt_ids) :].tolist()

    def _forward(self, input_ids: torch.Tensor, all_hidden: bool = False, logits_to_keep: int = 0):
        return self.target.model(
            input_ids=input_ids[None],
            past_key_values=self.cache,
            use_cache=True,
            output_hidden_states=all_hidden or bool(self.layer_ids),
            logits_to_keep=logits_to_keep,
        )

    def _drafter_features(self, hidden_states: tuple[torch.Tensor, ...], keep: int) -> torch.Tensor:
        features = layer_states(hidden_states, self.layer_ids, slice(None, keep))
        previous = self.draft_context.new_hidden
        return features if previous is None else torch.cat([previous, features], dim=1)

    @torch.inference_mode()
    def prefill(self) -> Prefill:
        """Run the prompt through the target (timed into `stats`) and commit the first new token."""
        with Stopwatch(self.target.device) as clock:
            out = self._forward(self.prompt_ids, all_hidden=True, logits_to_keep=1)
            if self.layer_ids:
                self.draft_context.new_hidden = self._drafter_features(out.hidden_states, len(self.prompt_ids))
            first = int(self.sampler.sample(out.logits[0, -1]))
            self._commit([first])
        self.stats.prefill_seconds = clock.seconds
        return Prefill(hidden_states=out.hidden_states, last_logits=out.logits[0, -1])

    def decode(self, block_size: int, verify_count: int | None = None) -> DecodeStats:
        """Decode to the end (stop token or budget) at a fixed block size (and verify count), timed into `stats`."""
        check_block_size(self.drafter, block_size)
        with Stopwatch(self.target.device) as clock:
            while not self.done:
                self.step(block_size, verify_count)
        self.stats.decode_seconds = clock.seconds
        return self.stats

    def step(self, block_size: int, verify_count: int | None = None) -> int:
        """One draft-verify cycle with this block size; returns the number of tokens committed.
        `verify_count` (default: the whole block) verifies only the anchor and the first
        `verify_count - 1` drafts: DFlash's verify budget."""
        return self.verify(self.draft(block_size), verify_count)

    @torch.inference_mode()
    def draft(self, block_size: int) -> DraftedBlock:
        """The first half of a cycle: draft `block_size - 1` tokens in one proposal (fewer near the budget)."""
        if self.done:
            raise RuntimeError("the request is finished: no step left")
        check_block_size(self.drafter, block_size)
        remaining = self.max_new_tokens - self.stats.new_tokens
        num_draft = min(block_size - 1, remaining - 1)
        return DraftedBlock(block_size, self._propose(num_draft) if num_draft > 0 else None)

    @torch.inference_mode()
    def verify(self, drafted: DraftedBlock, verify_count: int | None = None) -> int:
        """The second half: the target verifies the anchor and the first `verify_count - 1` drafts in
        one forward pass; the accepted prefix plus one target token are committed. Verifying a prefix
        of a draft is verifying a shorter draft from the same distributions, so it stays lossless."""
        if self.done:
            raise RuntimeError("the request is finished: no step left")
        verify_count = drafted.block_size if verify_count is None else verify_count
        if not isinstance(verify_count, int) or not 1 <= verify_count <= drafted.block_size:
            raise ValueError(f"verify_count must be an integer in [1, {drafted.block_size}] (the block size), got {verify_count!r}")
        draft = drafted.draft
        draft_tokens = draft.tokens[: verify_count - 1] if draft is not None else self.tokens[:0]
        draft_probs = draft.probs[: verify_count - 1] if draft is not None and draft.probs is not None else None

        start = len(self.tokens) - 1  # position of the newest token, the block's anchor
        block = torch.cat([self.tokens[-1:], draft_tokens])
        out = self._forward(block)
        accepted, next_token = verify_draft(draft_tokens, draft_probs, out.logits[0].float(), self.sampler)

        # roll the cache back to the anchor plus the accepted drafts
        self.cache.crop(-(len(block) - (accepted + 1)))
        if self.layer_ids:
            self.draft_context.new_hidden = self._drafter_features(out.hidden_states, accepted + 1)
        committed = self._commit(draft_tokens[:accepted].tolist() + [next_token])
        assert self.cache.get_seq_length() == start + accepted + 1
        self.stats.acceptance_lengths.append(committed)
        self.stats.block_sizes.append(drafted.block_size)
        self.stats.verify_counts.append(len(block))
        return committed

    def _propose(self, num_tokens: int) -> Draft:
        self.draft_context.token_ids = self.tokens
        draft = self.drafter.propose(self.draft_context, num_tokens, self.sampler)
        self.draft_context.new_hidden = None
        if draft.tokens.shape[0] > num_tokens:
            raise ValueError(f"drafter proposed {draft.tokens.shape[0]} tokens, more than the {num_tokens} asked for")
        return draft

    def _commit(self, new_tokens: list[int]) -> int:
        """Append tokens up to the first stop token or the budget; returns how many were kept."""
        kept = []
        for token in new_tokens[: self.max_new_tokens - self.stats.new_tokens]:
            kept.append(token)
            if token in self.stop_token_ids:
                self.done = True
                break
        self.tokens = torch.cat([self.tokens, torch.tensor(kept, dtype=torch.long, device=self.tokens.device)])
        self.stats.new_tokens += len(kept)
        if self.stats.new_tokens >= self.max_new_tokens:
            self.done = True
        return len(kept)


def speculative_generate(
    target: Target,
    drafter: Drafter | None,
    prompt: str | list[int] | torch.Tensor,
    block_size: int,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop_token_ids: list[int] | None = None,
    verify_count: int | None = None,
) -> Generation:
    """Decode `prompt` speculatively with a fixed block size; lossless at every temperature.

    `stop_token_ids=None` stops at the target's EOS tokens; pass `[]` to never stop early.
    `verify_count` (default: the block size): tokens each verify pass checks, the anchor included.
    """
    check_block_size(drafter, block_size)
    sampler = Sampler.create(temperature, top_k, top_p, seed, target.device)
    decoder = SpeculativeDecoder(target, drafter, prompt, max_new_tokens, sampler, stop_token_ids)
    decoder.prefill()
    decoder.decode(block_size, verify_count)
    new_ids = decoder.new_token_ids
    return Generation(token_ids=new_ids, text=target.decode(new_ids), stats=decoder.stats)


def autoregressive_generate(
    target: Target,
    prompt: str | list[int] | torch.Tensor,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop_token_ids: list[int] | None = None,
) -> Generation:
    """Plain one-token-per-pass decoding through the same loop (the speed baseline)."""
    return speculative_generate(
        target, None, prompt, 1, max_new_tokens, temperature, top_k, top_p, seed, stop_token_ids
    )
