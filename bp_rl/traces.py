"""Acceptance traces: what a cycle would commit, for every place it could start and every block size.

At temperature 0 decoding is lossless, so the committed tokens are the target's greedy continuation
whatever the block sizes, and what a cycle commits depends only on where it starts (its anchor, the
newest committed token) and its block size. One greedy decode, one teacher-forced target pass over
prompt + continuation and one packed drafter pass per block size (every anchor at once, as in
drafter training) therefore give the whole table `accepted[block][anchor]`, from which any schedule
(a fixed block per request, or a block per cycle) replays exactly, on any machine.

Above temperature 0 the committed tokens depend on the draws, so no table of every anchor exists.
There a trace is a *sample* (`SampledTrace`): per block size, the per-cycle committed counts of a few
real seeded decodes. It replays those decodes' fixed-block schedules (under any profile), not a
schedule of its own: per-cycle replay stays exact at T=0 only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from bp_rl.block_drafter import BlockDrafter
from bp_rl.decoding import check_block_size
from bp_rl.drafter import ContinuationDrafter, DraftContext, Drafter, layer_states
from bp_rl.drafter_training import DraftVocabulary, drafts_at_anchors
from bp_rl.measurement import DecodeSettings, start_request
from bp_rl.models import Target
from bp_rl.sampling import Sampler


Action = int | tuple[int, int]  # a block size, or (block size, verify count)


def as_action(action: Action) -> tuple[int, int]:
    """(block, verify) of an action: a plain block size verifies its whole block. A cycle drafts
    block - 1 tokens in one pass and verifies the anchor plus the first verify - 1 of them."""
    block, verify = (action, action) if isinstance(action, (int, np.integer)) else action
    block, verify = int(block), int(verify)
    if not 1 <= verify <= block:
        raise ValueError(f"verify count {verify} must be in [1, block size {block}]: a cycle verifies at most what it drafts")
    return block, verify


@dataclass(frozen=True)
class Cycle:
    """One replayed (or decoded) cycle."""

    block: int
    verify: int  # tokens the verify pass took, the anchor included (fewer than chosen where the drafter proposed fewer)
    committed: int  # tokens committed, bonus included
    confidence: tuple[float, ...] = ()  # the drafter's top-1 probability at each drafted slot


@dataclass
class CycleState:
    """What a per-cycle schedule may look at before choosing the next cycle's action."""

    committed: int  # new tokens committed so far (the prefill commits the first)
    budget: int  # new tokens this request may still commit, at most
    history: list[Cycle] = field(default_factory=list)
    draft: tuple[float, ...] | None = None  # drafted-first schedules: this cycle's draft confidences, already made
    draft_entropy: tuple[float, ...] | None = None  # and their entropies (nats), where the trace or drafter has them

    def record(self, cycle: Cycle) -> None:
        """Account for a finished cycle."""
        self.history.append(cycle)
        self.committed += cycle.committed
        self.budget -= cycle.committed


@dataclass
class AcceptanceTrace:
    """Exact acceptance of one request at T=0.

    `tokens` are the new tokens of the target's greedy continuation (a stop token, if any, last).
    `accepted[b][i]`: drafts the target accepts in a cycle of block size b anchored at new token i
    (the cycle drafts the tokens after it; near the budget it drafts fewer, as decoding does).
    Verifying only the first k - 1 drafts accepts min(accepted[b][i], k - 1): acceptance is a prefix.
    `confidence[b][i]`: the drafter's top-1 probability at each of that cycle's b - 1 drafted slots
    (1 where a deterministic drafter proposed a token, 0 where it proposed none).
    `observations`: the prefill's observation vector per feature set, as the reward table keeps them.
    `entropy[b][i]`: the entropy (nats) of the drafter's distribution at each of those slots (0 for a
    deterministic drafter); empty for traces collected before it was kept.
    """

    prompt_tokens: int
    tokens: list[int]
    accepted: dict[int, list[int]]
    confidence: dict[int, list[list[float]]]
    observations: dict[str, np.ndarray] = field(default_factory=dict)
    entropy: dict[int, list[list[float]]] = field(default_factory=dict)

    @property
    def block_sizes(self) -> tuple[int, ...]:
        return tuple(sorted(self.accepted))

    @property
    def anchors(self) -> int:
        """Places a cycle can start: every new token but the last."""
        return len(self.tokens) - 1

    def committed(self, anchor: int, block_size: int, verify: int | None = None) -> int:
        """Tokens a cycle of `block_size` anchored at new token `anchor` commits (bonus included),
        verifying `verify` tokens (default: the whole block)."""
        if block_size not in self.accepted:
            raise ValueError(f"block size {block_size} is not in this trace; traced: {list(self.block_sizes)}")
        accepted = self.accepted[block_size][anchor]
        if verify is not None:
            accepted = min(accepted, verify - 1)
        return min(accepted + 1, self.anchors - anchor)

    def verified(self, anchor: int, block_size: int, verify: int | None = None) -> int:
        """Tokens the target verifies in that cycle, the anchor included: the chosen count (default: the
        whole block), or fewer where the drafter proposed fewer (prompt lookup's short matches, the
        budget's last cycles), as decoding does. Proposed slots are those with a confidence above 0."""
        verify = block_size if verify is None else verify
        proposed = sum(1 for p in self.confidence[block_size][anchor] if p > 0)
        return 1 + min(verify - 1, proposed)

    def replay(self, schedule: Callable[[CycleState], Action], draft_block: int | None = None) -> list[Cycle]:
        """Every cycle when `schedule` picks each cycle's action (a block size or (block, verify)).

        `draft_block`: draft first at this block size and show the draft's confidences in
        `state.draft` (a verify-count rule); every action must then draft at that block."""
        state = CycleState(committed=1, budget=self.anchors)
        while state.committed < len(self.tokens):
            anchor = state.committed - 1
            if draft_block is not None:
                state.draft = tuple(self.confidence[draft_block][anchor])
                state.draft_entropy = tuple(self.entropy[draft_block][anchor]) if self.entropy else None
            block, verify = as_action(schedule(state))
            if draft_block is not None and block != draft_block:
                raise ValueError(f"the draft was made at block {draft_block}: a drafted-first schedule chose block {block}")
            committed = self.committed(anchor, block, verify)  # first: it explains a block the trace lacks
            state.record(Cycle(block, self.verified(anchor, block, verify), committed, tuple(self.confidence[block][anchor])))
        return state.history

    def acceptance_lengths(self, block_size: int) -> list[int]:
        """Per-cycle committed counts of a fixed-block decode: at T=0 exactly
        `speculative_generate(..., block_size).stats.acceptance_lengths`."""
        return [cycle.committed for cycle in self.replay(lambda state: block_size)]


@dataclass
class SampledTrace:
    """Acceptance of one request above T=0: a sample, not an exact table.

    `cycles[b][j]`: the committed count of each cycle (bonus included) of a real decode at block size
    b with sampling seed `seeds[j]`; `new_tokens(b, j)` its new tokens (the prefill commits the first,
    so they are 1 + the sum of its cycles). Another seed decodes other tokens: averages over seeds
    estimate a block's expected speed, they do not give it exactly.
    """

    prompt_tokens: int
    temperature: float
    seeds: tuple[int, ...]
    cycles: dict[int, list[list[int]]]
    observations: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def block_sizes(self) -> tuple[int, ...]:
        return tuple(sorted(self.cycles))

    def new_tokens(self, block_size: int, seed_index: int = 0) -> int:
        return 1 + sum(self.acceptance_lengths(block_size, seed_index))

    def acceptance_lengths(self, block_size: int, seed_index: int = 0) -> list[int]:
        """Per-cycle committed counts of the seeded decode: `speculative_generate(..., block_size,
        temperature=self.temperature, seed=self.seeds[seed_index]).stats.acceptance_lengths`."""
        if block_size not in self.cycles:
            raise ValueError(f"block size {block_size} is not in this trace; traced: {list(self.block_sizes)}")
        return self.cycles[block_size][seed_index]


@torch.no_grad()
def estimated_acceptance(
    drafter: BlockDrafter, embedding: torch.Tensor, vocab: DraftVocabulary, features: torch.Tensor, tokens: torch.Tensor, loss_start: int, block_size: int
) -> list[int]:
    """Per-cycle committed counts (bonus included) of a fixed-`block_size` decode of a greedy
    continuation (`tokens[loss_start:]` after the prompt `tokens[:loss_start]`, with the target's
    `features` at every position), from one packed drafter pass over every anchor: at temperature 0
    exactly what `speculative_generate(...).stats.acceptance_lengths` gives, as decoding is lossless.
    Cheap enough to follow training with.

    Only the anchors a decode visits count. Averaging over every anchor instead overstates
    acceptance: a long easy stretch gives a long acceptance at each of its anchors, but a decode
    crosses it in a few cycles (drafter v3 at block 16: 2.33 that way on its val continuations; exactly
    1.98 on the val split's traces)."""
    if loss_start < 1:
        raise ValueError(f"a continuation needs a prompt before it: loss_start {loss_start} must be >= 1")
    anchors = torch.arange(loss_start, len(tokens) - 1)  # the prefill commits token `loss_start`, the first anchor
    if len(anchors) == 0:
        return []
    matches, confidence, _ = drafts_at_anchors(drafter, embedding, vocab, features, tokens, anchors, block_size)
    trace = AcceptanceTrace(loss_start, tokens[loss_start:].tolist(), {block_size: matches.long().cumprod(dim=1).sum(dim=1).tolist()},
                            {block_size: confidence.tolist()})
    return trace.acceptance_lengths(block_size)


def effective_block(block_size: int, anchor: int, max_new_tokens: int) -> int:
    """The block a cycle anchored at new token `anchor` really drafts: decoding never drafts past the budget."""
    return max(1, min(block_size, max_new_tokens - anchor - 1))


@torch.inference_mode()
def trace_request(
    target: Target,
    drafter: Drafter,
    prompt: str | list[int] | torch.Tensor,
    block_sizes: tuple[int, ...] | list[int],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    stop_token_ids: list[int] | None = None,
    feature_sets: tuple[str, ...] = (),
    seeds: list[int] | tuple[int, ...] | None = None,
    continuation: list[int] | None = None,
    decode_block: int = 1,
    guess: list[int] | None = None,
) -> AcceptanceTrace | SampledTrace:
    """The exact T=0 acceptance trace of `prompt` for every block size in `block_sizes`, and the
    observations of `feature_sets` read off its prefill. Above T=0 (`seeds` required): a
    `SampledTrace` of one real decode per block size and seed.

    The greedy decode that finds the continuation is most of a trace's cost. `continuation`: the
    target's greedy continuation when it is already known (it depends on the target, prompt and
    settings only, so another drafter's trace gives it), and no decode runs. `guess`: a likely
    continuation (`bp_rl.drafter_data.greedy_guesses`: batched greedy decoding, whose padded shapes
    may round a near-tie differently), decoded with the guess as the draft: lossless, so a wrong guess
    costs time, never exactness, and a right one is checked in a pass or two. Else `decode_block`:
    decode it speculatively with `drafter` at this block size (lossless at T=0, so the same tokens up
    to floating-point ties, and faster where the drafter accepts); 1 decodes autoregressively."""
    bad = [b for b in block_sizes if not isinstance(b, int) or not 1 <= b <= drafter.max_block_size]
    if bad:
        raise ValueError(f"block sizes {bad} are outside [1, {drafter.max_block_size}] for this drafter")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature!r}")
    settings = DecodeSettings(max_new_tokens=max_new_tokens, temperature=temperature)
    if temperature > 0:
        if not seeds:
            raise ValueError(f"above T=0 a trace is a sample of seeded decodes: pass seeds (e.g. [0, 1, 2]), got {seeds!r}")
        return _sampled_trace(target, drafter, prompt, block_sizes, settings, tuple(seeds), stop_token_ids, feature_sets)
    decoding: Drafter | None = None
    if continuation is None and guess:  # the whole guess in one verify pass (the budget's last token is the target's own)
        prompt, decode_block = target.encode(prompt), max_new_tokens
        decoding = ContinuationDrafter(len(prompt), guess, max_block_size=max_new_tokens, only_while_right=True)
    elif continuation is None:
        check_block_size(drafter, decode_block)
        decoding = drafter if decode_block > 1 else None
    decoder, observations = start_request(target, decoding, prompt, settings, feature_sets, stop_token_ids=stop_token_ids)
    prompt_ids = decoder.prompt_ids
    if continuation is None:
        decoder.decode(decode_block)
        new = decoder.new_token_ids
    else:
        new = [int(t) for t in continuation]
        if not 1 <= len(new) <= max_new_tokens or new[0] != decoder.new_token_ids[0]:
            raise ValueError(f"the continuation given ({len(new)} tokens, first {new[:1]}) is not this target's greedy continuation of "
                             f"this prompt: it must start with the prefill's token {decoder.new_token_ids[:1]} and hold at most "
                             f"max_new_tokens={max_new_tokens} tokens")
    sequence = torch.cat([prompt_ids, torch.tensor(new, dtype=prompt_ids.dtype, device=prompt_ids.device)])
    anchors = list(range(len(new) - 1))  # new token i sits at position P + i
    make_drafts = _packed_drafts if isinstance(drafter, BlockDrafter) else _drafts_one_by_one
    drafts = make_drafts(target, drafter, sequence, len(prompt_ids))
    accepted: dict[int, list[int]] = {}
    confidence: dict[int, list[list[float]]] = {}
    entropy: dict[int, list[list[float]]] = {}
    for b in sorted(set(block_sizes)):
        accepted[b], confidence[b], entropy[b] = [0] * len(anchors), [[0.0] * (b - 1) for _ in anchors], [[0.0] * (b - 1) for _ in anchors]
        sizes = [effective_block(b, i, max_new_tokens) for i in anchors]  # near the budget, decoding drafts fewer
        drafting = [i for i in anchors if sizes[i] > 1]
        if not drafting:
            continue
        for i, matches, top1, spread in zip(drafting, *drafts(drafting, [sizes[i] for i in drafting])):
            accepted[b][i] = int(np.cumprod(matches[: sizes[i] - 1]).sum())
            drafted = top1[: sizes[i] - 1]  # a deterministic drafter may propose fewer
            confidence[b][i][: len(drafted)] = drafted
            entropy[b][i][: len(drafted)] = spread[: len(drafted)]
    return AcceptanceTrace(len(prompt_ids), new, accepted, confidence, observations, entropy)


def _sampled_trace(
    target: Target, drafter: Drafter, prompt, block_sizes, settings: DecodeSettings, seeds: tuple[int, ...],
    stop_token_ids: list[int] | None, feature_sets: tuple[str, ...],
) -> SampledTrace:
    """One real decode per (block size, seed), each from its own prefill with the seed's sampler."""
    if 1 not in block_sizes:
        raise ValueError(f"above T=0 the autoregressive baseline is sampled too: block sizes {list(block_sizes)} must include 1")
    cycles: dict[int, list[list[int]]] = {}
    observations: dict[str, np.ndarray] = {}
    for b in sorted(set(block_sizes)):
        cycles[b] = []
        for seed in seeds:
            decoder, observations = start_request(target, drafter if b > 1 else None, prompt, settings, feature_sets, seed, stop_token_ids)
            cycles[b].append(list(decoder.decode(b).acceptance_lengths))
    return SampledTrace(decoder.stats.prompt_tokens, settings.temperature, seeds, cycles, observations)


# anchors, block size per anchor -> (slot matches, slot confidences, slot entropies) per anchor
Drafts = Callable[[list[int], list[int]], tuple[list[list[bool]], list[list[float]], list[list[float]]]]


def _packed_drafts(target: Target, drafter: BlockDrafter, sequence: torch.Tensor, prompt_tokens: int) -> Drafts:
    """Drafts at any anchors in one packed drafter pass (as in training), from one teacher-forced target pass."""
    out = target.model(sequence[None], output_hidden_states=True)
    features = layer_states(out.hidden_states, drafter.target_layer_ids)[0]
    embedding = target.model.get_input_embeddings().weight
    vocab = DraftVocabulary(drafter)

    def drafts(anchors: list[int], blocks: list[int]):
        positions = torch.tensor(anchors) + prompt_tokens
        matches, top1, entropy = drafts_at_anchors(drafter, embedding, vocab, features, sequence.cpu(), positions, torch.tensor(blocks))
        return matches.tolist(), top1.tolist(), entropy.tolist()

    return drafts


def _drafts_one_by_one(target: Target, drafter: Drafter, sequence: torch.Tensor, prompt_tokens: int) -> Drafts:
    """Drafts from one `propose` call per anchor, for drafters that read no target states (prompt lookup
    and other deterministic drafters: confidence 1 and entropy 0 per proposed token)."""
    if drafter.target_layer_ids:
        raise ValueError(f"{type(drafter).__name__} reads target hidden states: only a BlockDrafter can be traced so")

    def drafts(anchors: list[int], blocks: list[int]):
        matches, confidences = [], []
        for i, block in zip(anchors, blocks):
            position = prompt_tokens + i
            context = DraftContext(sequence[: position + 1], cache=drafter.new_cache())
            proposal = drafter.propose(context, block - 1, Sampler()).tokens.tolist()
            truth = sequence[position + 1 : position + 1 + len(proposal)].tolist()
            matches.append([p == t for p, t in zip(proposal, truth)])
            confidences.append([1.0] * len(proposal))
        return matches, confidences, [[0.0] * len(proposal) for proposal in confidences]

    return drafts
