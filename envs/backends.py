"""Where `BlockSizeEnv`'s prompts, observations and outcomes come from: the `Backend` contract.

A backend knows a fixed list of prompts. `observe(i)` starts request i and returns its
observation; `outcome(i, k, rng)` finishes it at block size `block_sizes[k]` and returns what
happened. The trace and live backends also step a request cycle by cycle (`CycleBackend`:
`begin(i)` gives a `CycleRequest`, whose `draft` and `verify` are the two halves of a cycle), for
`BlockScheduleEnv`. Three backends:

- `TableBackend` replays a measured `RewardTable` (fast; deterministic under a seed);
- `TraceBackend` replays exact acceptance traces with seconds simulated under a device profile
  (fast, deterministic, noise-free, and valid on the machine the profile describes); above T=0,
  sampled traces, one seeded decode drawn per episode;
- `LiveBackend` decodes for real with `bp_rl.measurement`, the same code that filled the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from bp_rl.features import DEFAULT_FEATURE_SET
from bp_rl.decoding import DecodeStats, SpeculativeDecoder
from bp_rl.measurement import AUTOREGRESSIVE, DecodeSettings, finish_request, measure, start_request
from bp_rl.profiles import DeviceProfile, simulate
from bp_rl.prompts import DEFAULT_SUITE, load_prompts, render_prompt
from bp_rl.timing import Stopwatch
from bp_rl.trace_table import SimulatedRewards
from bp_rl.traces import AcceptanceTrace
from bp_rl.outcomes import DEFAULT_BLOCK_SIZES, SAMPLE_COLUMNS, TableView

REPLAY_MODES = ("sample", "median")


@dataclass
class Outcome:
    """One decoded request at one block size."""

    tokens_per_second: float
    mean_acceptance: float
    new_tokens: int
    cycles: int
    decode_seconds: float
    ar_tokens_per_second: float


class Backend(Protocol):
    """What `BlockSizeEnv` asks of a source of requests (a per-cycle `step` joins it with per-cycle decisions)."""

    prompt_ids: list[str]
    categories: list[str]
    block_sizes: tuple[int, ...]
    observation_dim: int

    def observe(self, i: int, rng: np.random.Generator) -> np.ndarray:
        """Start request i (prefill it, where that is real) and return its observation."""

    def outcome(self, i: int, k: int, rng: np.random.Generator) -> Outcome:
        """Finish the started request at block size `block_sizes[k]`."""


class CycleRequest(Protocol):
    """One request in flight, decoded a cycle at a time."""

    done: bool
    prefill_seconds: float
    ar_decode_seconds: float  # this request decoded autoregressively: the reward's yardstick
    ar_new_tokens: int
    token_ids: list[int]  # the new tokens committed so far
    concurrency: int  # the batch it is served in (1: alone)
    draft_entropy: tuple[float, ...] | None  # the newest draft's entropy per drafted slot (None: not known)

    def draft(self, block_size: int) -> tuple[float, ...]:
        """Make this cycle's draft; returns the drafter's top-1 probability per drafted slot."""

    def verify(self, count: int) -> tuple[int, float]:
        """Verify the anchor and the first `count - 1` drafts: (tokens committed, seconds of the whole cycle)."""


class CycleBackend(Protocol):
    """What `BlockScheduleEnv` asks of a source of requests."""

    prompt_ids: list[str]
    categories: list[str]
    block_sizes: tuple[int, ...]
    observation_dim: int
    max_new_tokens: int

    def begin(self, i: int, rng: np.random.Generator, concurrency: int | None = None) -> tuple[np.ndarray, CycleRequest]:
        """Start request i, served in a batch of `concurrency` (None: the backend's own load): its
        prefill observation and the request, ready for its first cycle."""

    def check_concurrency(self, concurrency: int | None) -> None:
        """A clear error if this backend cannot serve requests in batches of `concurrency`."""


class TraceRequest:
    """A request replayed from its trace, with seconds from a profile (exact at T=0, simulated)."""

    def __init__(self, trace: AcceptanceTrace, profile: DeviceProfile):
        self.trace, self.profile = trace, profile
        self.concurrency = profile.concurrency
        self.anchor, self.block = 0, None
        self.draft_entropy: tuple[float, ...] | None = None
        self.done = trace.anchors == 0
        self.prefill_seconds = profile.prefill_seconds(trace.prompt_tokens)
        self.ar_decode_seconds = simulate(trace, profile, 1).decode_seconds
        self.ar_new_tokens = len(trace.tokens)

    def draft(self, block_size: int) -> tuple[float, ...]:
        self.block = block_size
        entropy = self.trace.entropy.get(block_size)  # traces collected before entropies were kept have none
        self.draft_entropy = tuple(entropy[self.anchor]) if entropy else None
        return tuple(self.trace.confidence[block_size][self.anchor])

    def verify(self, count: int) -> tuple[int, float]:
        committed = self.trace.committed(self.anchor, self.block, count)
        verified = self.trace.verified(self.anchor, self.block, count)
        seconds = self.profile.cycle_seconds(self.block, self.trace.prompt_tokens + self.anchor + 1, verified)
        self.anchor += committed
        self.done = self.anchor == self.trace.anchors
        return committed, seconds

    @property
    def token_ids(self) -> list[int]:
        return self.trace.tokens[: self.anchor + 1]


class LiveRequest:
    """A request decoded for real, each half-cycle timed."""

    def __init__(self, decoder: SpeculativeDecoder, ar_decode_seconds: float, ar_new_tokens: int):
        self.decoder, self.drafted = decoder, None  # drafted: the DraftedBlock awaiting verification
        self.draft_entropy: tuple[float, ...] | None = None
        self.prefill_seconds = decoder.stats.prefill_seconds
        self.ar_decode_seconds, self.ar_new_tokens = ar_decode_seconds, ar_new_tokens
        self._draft_seconds = 0.0
        self.concurrency = 1

    @property
    def done(self) -> bool:
        return self.decoder.done

    @property
    def token_ids(self) -> list[int]:
        return self.decoder.new_token_ids

    def draft(self, block_size: int) -> tuple[float, ...]:
        with Stopwatch(self.decoder.target.device) as clock:
            self.drafted = self.decoder.draft(block_size)
        self._draft_seconds = clock.seconds
        self.draft_entropy = tuple(self.drafted.entropy)
        return tuple(self.drafted.confidence)

    def verify(self, count: int) -> tuple[int, float]:
        with Stopwatch(self.decoder.target.device) as clock:
            committed = self.decoder.verify(self.drafted, count)
        return committed, self._draft_seconds + clock.seconds


class TableBackend:
    """Replays a table: a measured repeat drawn with the env's RNG (`sample`) or the median (`median`)."""

    def __init__(self, view: TableView, replay: str = "sample"):
        if replay not in REPLAY_MODES:
            raise ValueError(f"unknown replay mode {replay!r}; valid: {list(REPLAY_MODES)}")
        self.view, self.replay = view, replay
        self.prompt_ids, self.categories = view.prompt_ids, [str(c) for c in view.categories]
        self.block_sizes = view.block_sizes
        self.observation_dim = view.observations.shape[1]
        self._ar = view.ar_tokens_per_second
        self._medians = np.stack([view.median(c) for c in range(len(SAMPLE_COLUMNS))], axis=-1)  # (N, K, C)

    def observe(self, i: int, rng: np.random.Generator) -> np.ndarray:
        return self.view.observations[i]

    def outcome(self, i: int, k: int, rng: np.random.Generator) -> Outcome:
        if self.replay == "median":
            row = self._medians[i, k]
        else:
            repeats = self.view.samples[i][k]
            row = repeats[rng.integers(len(repeats))]
        tps, acceptance, new_tokens, cycles, seconds = row  # SAMPLE_COLUMNS
        return Outcome(tps, acceptance, int(new_tokens), int(cycles), seconds, self._ar[i])


class TraceBackend(TableBackend):
    """Replays traces under a profile: the table backend over rewards simulated from exact traces
    (one deterministic outcome per prompt and block size), keeping the traces for per-cycle replay."""

    def __init__(self, rewards: SimulatedRewards, split: str, feature_set: str = DEFAULT_FEATURE_SET):
        # exact traces give one outcome per (prompt, block); sampled ones (T>0) one per seed, drawn per episode
        super().__init__(rewards.view(feature_set, split), replay="sample" if rewards.traces.sampled else "median")
        self.rewards = rewards
        self.max_new_tokens = int(rewards.meta["settings"]["max_new_tokens"])
        self._loaded: dict[int, DeviceProfile] = {}  # the profile scaled to each concurrency asked for

    def trace(self, i: int) -> AcceptanceTrace:
        return self.rewards.traces.trace(self.prompt_ids[i])

    def profile_at(self, concurrency: int | None) -> DeviceProfile:
        """The rewards' profile scaled to `concurrency` (None: as it is)."""
        if concurrency is None:
            return self.rewards.profile
        if concurrency not in self._loaded:
            self._loaded[concurrency] = self.rewards.profile.at_concurrency(concurrency)
        return self._loaded[concurrency]

    def check_concurrency(self, concurrency: int | None) -> None:
        self.profile_at(concurrency)

    def begin(self, i: int, rng: np.random.Generator, concurrency: int | None = None) -> tuple[np.ndarray, TraceRequest]:
        if self.rewards.traces.sampled:
            raise ValueError(f"{self.rewards.path.name} samples decodes at T={self.rewards.traces.temperature:g}: per-cycle replay needs "
                             "an exact T=0 trace (decode per cycle for real with bp_rl/BlockScheduleLive-v0)")
        return self.observe(i, rng), TraceRequest(self.trace(i), self.profile_at(concurrency))


class LiveBackend:
    """Decodes for real: `observe` prefills (timed), `outcome` decodes from that same prefill.

    Each prompt's autoregressive speed is measured once, on its first episode, for the speedup.
    """

    def __init__(
        self,
        target,
        drafter,
        split: str,
        suite: str = DEFAULT_SUITE,
        block_sizes: tuple[int, ...] = DEFAULT_BLOCK_SIZES,
        feature_set: str = DEFAULT_FEATURE_SET,
        settings: DecodeSettings = DecodeSettings(),
        category: str | None = None,
        max_prompts: int | None = None,
    ):
        prompts = load_prompts(suite, split=split, category=category)
        if max_prompts is not None:  # spread evenly over the split, whose file order is by category
            prompts = prompts[:: max(1, len(prompts) // max_prompts)][:max_prompts]
        if not prompts:
            raise ValueError(f"no prompts in split {split!r} of suite {suite!r} (category {category!r})")
        self.target, self.drafter, self.settings, self.feature_set = target, drafter, settings, feature_set
        self.prompt_ids, self.categories = [p.id for p in prompts], [p.category for p in prompts]
        self.block_sizes = tuple(block_sizes)
        self._token_ids = [target.encode(render_prompt(p, target.tokenizer)) for p in prompts]
        self.max_new_tokens = settings.max_new_tokens
        self._ar: dict[int, DecodeStats] = {}  # each prompt's autoregressive decode, measured once
        self._decoder = None
        self.observation_dim = len(self.observe(0, np.random.default_rng(0)))
        self._decoder = None

    def observe(self, i: int, rng: np.random.Generator) -> np.ndarray:
        seed = int(rng.integers(2**31))
        self._decoder, observations = start_request(
            self.target, self.drafter, self._token_ids[i], self.settings, (self.feature_set,), seed
        )
        return observations[self.feature_set]

    def _baseline(self, i: int, rng: np.random.Generator) -> DecodeStats:
        """Prompt i's autoregressive decode, measured on first use (for the speedup and the cycle reward)."""
        seed = int(rng.integers(2**31))  # drawn every time, so the RNG stream does not depend on the cache
        if i not in self._ar:
            self._ar[i] = measure(self.target, None, self._token_ids[i], AUTOREGRESSIVE, self.settings, seed=seed).stats
        return self._ar[i]

    def check_concurrency(self, concurrency: int | None) -> None:
        if concurrency not in (None, 1):
            raise ValueError(f"concurrency {concurrency}: live decoding serves one request at a time (valid: [1]); "
                             "simulate load on traces (make_schedule_env(..., concurrency=...))")

    def begin(self, i: int, rng: np.random.Generator, concurrency: int | None = None) -> tuple[np.ndarray, LiveRequest]:
        self.check_concurrency(concurrency)
        baseline = self._baseline(i, rng)  # before the prefill, so the request in flight is undisturbed
        observation = self.observe(i, rng)
        request = LiveRequest(self._decoder, baseline.decode_seconds, baseline.new_tokens)
        self._decoder = None
        return observation, request

    def outcome(self, i: int, k: int, rng: np.random.Generator) -> Outcome:
        if self._decoder is None:
            raise RuntimeError("outcome() before observe(): call reset() first")
        stats = finish_request(self._decoder, self.block_sizes[k])
        self._decoder = None
        return Outcome(
            stats.tokens_per_second, stats.mean_acceptance, stats.new_tokens, stats.cycles, stats.decode_seconds,
            self._baseline(i, rng).tokens_per_second,
        )
