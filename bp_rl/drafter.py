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
from pathlib import Path
from typing import Any, Callable

import torch

from bp_rl.sampling import Sampler


@dataclass
class Draft:
    """Proposed tokens and, for a sampling drafter, the distributions they were drawn from."""

    tokens: torch.Tensor  # (k,) long
    probs: torch.Tensor | None = None  # (k, vocab); None: deterministic proposal (one-hot q)


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


class OracleDrafter(Drafter):
    """Test double that proposes a known continuation, e.g. the target's own greedy output.

    With the target's greedy continuation every draft is accepted at temperature 0, so the
    throughput it reaches at block size b is the engine's ceiling on the device.
    """

    def __init__(self, prompt_len: int, continuation: list[int], max_block_size: int = 64):
        self.prompt_len = prompt_len
        self.continuation = list(continuation)
        self.max_block_size = max_block_size

    def propose(self, context: DraftContext, num_tokens: int, sampler: Sampler) -> Draft:
        start = len(context.token_ids) - self.prompt_len
        tokens = self.continuation[start : start + num_tokens]
        return Draft(torch.tensor(tokens, dtype=torch.long, device=context.token_ids.device))


def _prompt_lookup(target, **options) -> Drafter:
    from bp_rl.prompt_lookup import PromptLookupDrafter

    return PromptLookupDrafter(**options)


def _random_block(target, **options) -> Drafter:
    from bp_rl.block_drafter import BlockDrafter

    return BlockDrafter.for_target(target, **options)


#: drafters available by name; anything else is a drafter folder
NAMED_DRAFTERS: dict[str, Callable[..., Drafter]] = {
    "prompt-lookup": _prompt_lookup,  # training-free n-gram lookup
    "random-block": _random_block,  # untrained block drafter: timing and plumbing only
}
#: trained drafters shipped with the package, one folder each, loadable by folder name
SHIPPED_DRAFTERS_DIR = Path(__file__).parent / "data" / "drafters"


def shipped_drafters() -> list[str]:
    if not SHIPPED_DRAFTERS_DIR.is_dir():
        return []
    return sorted(p.name for p in SHIPPED_DRAFTERS_DIR.iterdir() if (p / "config.json").is_file())


def default_drafter_name(target) -> str:
    """The newest shipped block drafter trained for `target`: `<target>-block-vN` with the highest N
    (`<target>-block` is version 1). Older versions stay loadable by name."""
    base, shipped = f"{target.name}-block", shipped_drafters()
    versions = {1: base} if base in shipped else {}
    for name in shipped:
        suffix = name.removeprefix(f"{base}-v")
        if name != suffix and suffix.isdigit():
            versions[int(suffix)] = name
    if not versions:
        raise FileNotFoundError(
            f"no shipped drafter for target {target.name!r} (shipped: {shipped}); "
            "train one with experiments/train_drafter.py or pass a drafter name or folder"
        )
    return versions[max(versions)]


def load_drafter(path_or_name: str, target, **options) -> Drafter:
    """A drafter for `target`: "default" (the shipped drafter for this target), a name from
    `NAMED_DRAFTERS` (with its `options`), a shipped drafter name, or a `BlockDrafter` folder
    (config.json + safetensors; ours or a public DFlash checkpoint)."""
    from bp_rl.block_drafter import BlockDrafter

    shipped = shipped_drafters()
    if path_or_name == "default":
        path_or_name = default_drafter_name(target)
    if path_or_name in NAMED_DRAFTERS:
        try:
            return NAMED_DRAFTERS[path_or_name](target, **options)
        except TypeError as err:  # an option the drafter does not take
            raise ValueError(f"bad option for drafter {path_or_name!r}: {err}") from err
    folder = SHIPPED_DRAFTERS_DIR / path_or_name if path_or_name in shipped else Path(path_or_name)
    if folder.is_dir():
        if options:
            raise ValueError(f"a drafter folder takes no options, got {sorted(options)}")
        return BlockDrafter.load(folder, target)
    raise FileNotFoundError(
        f"no drafter {path_or_name!r}: known names {sorted([*NAMED_DRAFTERS, *shipped, 'default'])}, "
        "or a drafter folder (config.json + model.safetensors)"
    )


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
