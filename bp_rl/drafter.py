"""The drafter interface that speculative decoding talks to.

A drafter proposes up to `block_size - 1` tokens that follow the committed text. It sees the
committed token ids and, if it asks for them (`target_layer_ids`), the target's hidden states
at those layers for every committed token the target has already processed. Per-request
state (a drafter KV cache, say) lives in `DraftContext.cache`, so one drafter serves many
requests.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch

from bp_rl.sampling import Sampler


@dataclass
class Draft:
    """Proposed tokens and, for a sampling drafter, the distributions they were drawn from."""

    tokens: torch.Tensor  # (k,) long
    probs: torch.Tensor | None = None  # (k, vocab); None: deterministic proposal (one-hot q)
    confidence: torch.Tensor | None = None  # (k,) the drafter's top-1 probability per slot; None: not known
    entropy: torch.Tensor | None = None  # (k,) entropy (nats) of the drafter's distribution per slot; None: not known


def entropy_of(probs: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each row of `probs` (..., vocab): what an entropy-based stopping rule reads."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(dim=-1)


@dataclass
class DraftContext:
    """What a drafter may read about the request in flight; the engine keeps it up to date.

    token_ids: every committed token, prompt included. The last one is the newest and has not
    been through the target yet; its position is `len(token_ids) - 1`.
    new_hidden: (1, m, len(target_layer_ids) * hidden) target hidden states of the m committed
    tokens the drafter has not been shown yet (all but the newest), or None.
    cache: the drafter's own per-request state.
    """

    token_ids: torch.Tensor
    new_hidden: torch.Tensor | None = None
    cache: Any = None


def layer_states(hidden_states: tuple[torch.Tensor, ...], layer_ids, positions: slice = slice(None)) -> torch.Tensor:
    """The target's states at `layer_ids` (a drafter's `target_layer_ids`), concatenated on the last
    dimension, at `positions` of each sequence: (batch, positions, len(layer_ids) * hidden).

    `hidden_states` is a Hugging Face model's `output_hidden_states` tuple, whose entry 0 is the
    embedding output, so layer i's output is entry i + 1."""
    return torch.cat([hidden_states[i + 1][:, positions] for i in layer_ids], dim=-1)


class Drafter(ABC):
    """Base class of every drafter."""

    #: largest block (the committed anchor token plus drafts) this drafter supports
    max_block_size: int
    #: target layers whose hidden states the drafter reads (empty: none, so the target skips them)
    target_layer_ids: tuple[int, ...] = ()

    def new_cache(self) -> Any:
        """Fresh per-request state; called once before a request's first proposal."""
        return None

    @abstractmethod
    def propose(self, context: DraftContext, num_tokens: int, sampler: Sampler) -> Draft:
        """Propose at most `num_tokens` (>= 1) tokens following `context.token_ids`.

        Must consume `context.new_hidden` (the engine clears it afterwards). At temperature
        0 proposals should be the drafter's best guess; above it, a sampling drafter draws
        from its distribution and returns it in `Draft.probs` so verification stays exact.
        """


class ContinuationDrafter(Drafter):
    """Proposes a known continuation, e.g. the target's own greedy output.

    With the target's greedy continuation every draft is accepted at temperature 0, so the
    throughput it reaches at block size b is the engine's ceiling on the device. With a *guess* of
    it (`only_while_right`), decoding checks the guess losslessly: once the committed tokens leave
    the guess, its later tokens belong to another text, so it proposes nothing more.
    """

    def __init__(self, prompt_len: int, continuation: list[int], max_block_size: int = 64, only_while_right: bool = False):
        self.prompt_len = prompt_len
        self.continuation = list(continuation)
        self.max_block_size = max_block_size
        self.only_while_right = only_while_right

    def propose(self, context: DraftContext, num_tokens: int, sampler: Sampler) -> Draft:
        start = len(context.token_ids) - self.prompt_len
        tokens = self.continuation[start : start + num_tokens]
        if self.only_while_right and context.token_ids[self.prompt_len :].tolist() != self.continuation[:start]:
            tokens = []
        return Draft(torch.tensor(tokens, dtype=torch.long, device=context.token_ids.device))


def drafter_fingerprint(drafter: Drafter | None) -> str:
    """A short hash that changes whenever the drafter could behave differently: class, settings, weights."""
    digest = hashlib.sha256(type(drafter).__name__.encode())
    if isinstance(drafter, torch.nn.Module):
        for name, tensor in sorted(drafter.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu", torch.float32).numpy().tobytes())
    elif drafter is not None:
        digest.update(repr(sorted(vars(drafter).items())).encode())
    return digest.hexdigest()[:16]
