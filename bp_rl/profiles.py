"""Device cost profiles: what each pass of speculative decoding costs on one machine.

A request's speed is what each cycle accepts (an acceptance trace, the same on every machine) times
what each pass costs (a profile, one per machine). A measured profile times, with the one timer
(warm-up, device sync, median of repeats, every pass once per round in a shuffled order so that
the machine's drift hits all alike): a target forward over n tokens at context length c, a
drafter proposal at block size b, the prefill of a prompt of length L, and, per block size, the
overhead of the decoding loop around them: what a real decode takes per cycle beyond those
isolated passes. For load, it also times one target forward over B concurrent requests x n tokens
each (`batched`): `at_concurrency(B)` is the profile of a request served in a batch of B, every
pass scaled by what batching B requests costs over one. Model profiles (`flat_profile`, `roofline_profile`) are labelled
`kind="model"`: arithmetic, not measurements.
"""

from __future__ import annotations

import bisect
import json
import os
import platform
import random
import re
import statistics
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import transformers
from transformers import DynamicCache

from bp_rl.decoding import DecodeStats, SpeculativeDecoder
from bp_rl.drafter import Drafter, drafter_fingerprint
from bp_rl.models import Target, model_slug
from bp_rl.outcomes import DEFAULT_BLOCK_SIZES
from bp_rl.timing import device_name, measure, measure_interleaved
from bp_rl.traces import AcceptanceTrace, Cycle, SampledTrace

SHIPPED_PROFILES_DIR = Path(__file__).parent / "data" / "profiles"
PROFILE_KINDS = ("measured", "model")


# --- raw passes (timed one by one for bench_decode, interleaved for a profile) ---------------------


def verify_forward(target: Target, context_ids: torch.Tensor, block_size: int) -> Callable[[], None]:
    """One target forward over `block_size` new tokens after `context_ids` (KV cached), repeatable.
    `context_ids` of shape (B, length) time B requests verified together in one batched forward."""
    batch = context_ids if context_ids.dim() == 2 else context_ids[None]
    cache = DynamicCache()
    with torch.inference_mode():
        target.model(input_ids=batch, past_key_values=cache, use_cache=True, logits_to_keep=1)
    block = batch[:, -block_size:]

    @torch.inference_mode()
    def forward():
        target.model(input_ids=block, past_key_values=cache, use_cache=True)
        cache.crop(-block_size)

    return forward


def draft_pass(target: Target, drafter: Drafter, context_ids: torch.Tensor, block_size: int) -> Callable[[], None]:
    """One proposal of `block_size - 1` tokens after `context_ids`, its context already shown to the
    drafter (as in every cycle after the first), repeatable."""
    decoder = SpeculativeDecoder(target, drafter, context_ids, max_new_tokens=block_size + 2)
    decoder.prefill()
    decoder.step(2)  # the drafter has now cached the prompt; what stays new per cycle is an accepted token or two
    context = decoder.draft_context
    new_hidden = context.new_hidden
    context.token_ids = decoder.tokens

    @torch.inference_mode()
    def propose():
        context.new_hidden = new_hidden
        drafter.propose(context, block_size - 1, decoder.sampler)
        if new_hidden is not None:  # undo the context the proposal cached, so every repeat does the same work
            context.cache.crop(-new_hidden.shape[1])

    return propose


def prefill_pass(target: Target, prompt_ids: torch.Tensor) -> Callable[[], None]:
    @torch.inference_mode()
    def forward():
        target.model(input_ids=prompt_ids[None], use_cache=True, output_hidden_states=True, logits_to_keep=1)

    return forward


def verify_forward_seconds(target: Target, context_ids: torch.Tensor, block_size: int, repeats: int) -> float:
    """Median time of one target forward over `block_size` new tokens after `context_ids`."""
    return measure(verify_forward(target, context_ids, block_size), target.device, warmup=2, repeats=repeats).median


def draft_seconds(target: Target, drafter: Drafter, context_ids: torch.Tensor, block_size: int, repeats: int) -> float:
    """Median time of one proposal of `block_size - 1` tokens after `context_ids`."""
    return measure(draft_pass(target, drafter, context_ids, block_size), target.device, warmup=2, repeats=repeats).median


# --- the profile -----------------------------------------------------------------------------------


def _interpolate(points: dict[int, float], x: float) -> float:
    """Piecewise-linear in x over the measured points, flat beyond the ends."""
    xs = sorted(points)
    if x <= xs[0]:
        return points[xs[0]]
    if x >= xs[-1]:
        return points[xs[-1]]
    i = bisect.bisect_right(xs, x)
    x0, x1 = xs[i - 1], xs[i]
    return points[x0] + (points[x1] - points[x0]) * (x - x0) / (x1 - x0)


def _between_sizes(sizes: Iterable[int], n: int, value: Callable[[int], float], what: str, profile: str) -> float:
    """`value(n)` where `n` tokens were profiled, else linear between the values of the nearest profiled
    sizes around it (only those two are computed: a simulation asks this for every cycle)."""
    sizes = sorted(sizes)
    if n in sizes:
        return value(n)
    if not sizes[0] < n < sizes[-1]:
        raise ValueError(f"profile {profile!r} has no {what} for {n} tokens; profiled: {sizes}")
    i = bisect.bisect_right(sizes, n)
    low, high = sizes[i - 1], sizes[i]
    return value(low) + (value(high) - value(low)) * (n - low) / (high - low)


@dataclass
class DeviceProfile:
    """Seconds of each pass of decoding one target (and drafter) on one device."""

    name: str
    kind: str  # "measured" or "model"
    device: str
    target: str
    drafter: str  # the drafter's name
    drafter_hash: str  # drafter_fingerprint: a profile times one drafter's passes
    verify: dict[int, dict[int, float]]  # n tokens -> context length -> seconds of a target forward
    draft: dict[int, float]  # block size -> seconds of one proposal of block - 1 tokens
    prefill: dict[int, float]  # prompt length -> seconds
    overhead: dict[int, float]  # block size -> seconds a real cycle takes beyond its isolated passes (may be < 0)
    versions: dict[str, str] = field(default_factory=dict)
    note: str = ""
    # load: concurrency B -> n tokens -> seconds of one target forward over B requests x n tokens each
    # (at context `batched_context`); empty: only one request at a time is profiled
    batched: dict[int, dict[int, float]] = field(default_factory=dict)
    batched_context: int = 0
    concurrency: int = 1  # the batch size this profile's costs are those of (`at_concurrency`)

    def __post_init__(self) -> None:
        if self.kind not in PROFILE_KINDS:
            raise ValueError(f"unknown profile kind {self.kind!r}; valid: {list(PROFILE_KINDS)}")
        # JSON keys are strings
        self.verify = {int(n): {int(c): float(t) for c, t in by_c.items()} for n, by_c in self.verify.items()}
        self.draft = {int(b): float(t) for b, t in self.draft.items()}
        self.prefill = {int(n): float(t) for n, t in self.prefill.items()}
        if isinstance(self.overhead, (int, float)):  # one figure for every block size
            self.overhead = {b: float(self.overhead) for b in self.verify}
        self.overhead = {int(b): float(t) for b, t in self.overhead.items()}
        self.batched = {int(c): {int(n): float(t) for n, t in by_n.items()} for c, by_n in self.batched.items()}

    @property
    def block_sizes(self) -> tuple[int, ...]:
        return tuple(sorted(self.verify))

    @property
    def concurrencies(self) -> tuple[int, ...]:
        """The loads this profile covers (1: one request at a time)."""
        return tuple(sorted(set(self.batched) | {1}))

    def at_concurrency(self, concurrency: int) -> "DeviceProfile":
        """The costs one request sees when served in a batch of `concurrency`: every target pass over
        n tokens takes batched[B][n] / batched[1][n] times as long (the whole batch's forward), and so
        does a drafter pass at block n (modelled: the drafter's batch is timed as the target's); the
        prefill (one request's) and the loop overhead are unchanged. Simulated, and said so in `note`."""
        if concurrency == self.concurrency:
            return self
        if self.concurrency != 1:
            raise ValueError(f"profile {self.name!r} is already at concurrency {self.concurrency}; rescale its base profile")
        if concurrency not in self.concurrencies:
            raise ValueError(f"profile {self.name!r} has no batched costs for concurrency {concurrency}; covered: {list(self.concurrencies)}")
        missing = [n for n in self.block_sizes if n not in self.batched[concurrency] or n not in self.batched[1]]
        if missing:
            raise ValueError(f"profile {self.name!r} has no batched cost at concurrency {concurrency} for {missing} tokens")
        factor = {n: self.batched[concurrency][n] / self.batched[1][n] for n in self.block_sizes}
        return replace(
            self, name=f"{self.name}@c{concurrency}", concurrency=concurrency,
            verify={n: {c: t * factor[n] for c, t in by_c.items()} for n, by_c in self.verify.items()},
            draft={b: t * factor[b] for b, t in self.draft.items()},
            note=(f"{self.note}; " if self.note else "") + f"SIMULATED load: one request of a batch of {concurrency} "
                 f"(passes scaled by batched forwards at context {self.batched_context}; the batch's other requests assumed "
                 "to verify as many tokens)",
        )

    def verify_seconds(self, n: int, context: int) -> float:
        """A target pass verifying `n` tokens at `context`. Counts between the profiled block sizes (the
        short proposals of prompt lookup, the budget's last cycles) are interpolated linearly between
        the nearest profiled ones."""
        return _between_sizes(self.verify, n, lambda m: _interpolate(self.verify[m], context), "verify cost", self.name)

    def draft_seconds(self, block_size: int) -> float:
        if block_size == 1:
            return 0.0
        if block_size not in self.draft:
            raise ValueError(f"profile {self.name!r} has no draft cost for block {block_size}; profiled: {sorted(self.draft)}")
        return self.draft[block_size]

    def cycle_seconds(self, block_size: int, context: int, verify: int | None = None) -> float:
        """One cycle drafting at `block_size` and verifying `verify` tokens (default: the whole block).
        The loop overhead is the verify count's: it follows the tokens the target passes and rolls back."""
        verify = block_size if verify is None else verify
        overhead = _between_sizes(self.overhead, verify, self.overhead.__getitem__, "loop overhead", self.name)
        return self.draft_seconds(block_size) + self.verify_seconds(verify, context) + overhead

    def prefill_seconds(self, prompt_tokens: int) -> float:
        return _interpolate(self.prefill, prompt_tokens)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, name_or_path: str | Path) -> "DeviceProfile":
        """A shipped profile by name, or a profile JSON file."""
        path = Path(name_or_path)
        if not path.is_file():
            path = SHIPPED_PROFILES_DIR / f"{name_or_path}.json"
        if not path.is_file():
            raise FileNotFoundError(f"no profile {str(name_or_path)!r}: shipped profiles {shipped_profiles()}, or a profile JSON file")
        try:
            return cls(**json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"{path} is not a readable device profile (truncated or corrupted?): {err}") from None

    def check(self, target: Target, drafter: Drafter | None, drafter_name: str) -> "DeviceProfile":
        """This profile, if it timed this target and drafter; else a clear error."""
        problems = []
        if self.target != target.name:
            problems.append(f"target {self.target!r}, not {target.name!r}")
        if drafter is not None and self.drafter_hash != drafter_fingerprint(drafter):
            problems.append(f"drafter {self.drafter!r} ({self.drafter_hash}), not {drafter_name!r} ({drafter_fingerprint(drafter)})")
        if problems:
            raise ValueError(f"profile {self.name!r} was made for another model: " + "; ".join(problems))
        return self


def shipped_profiles(drafter_hash: str | None = None, near: str | None = None) -> list[str]:
    """Names of the shipped profiles; given a drafter's hash, only those that time it, measured ones
    first, and among those the ones measured nearest to device `near` first (`device_distance`)."""
    if drafter_hash is not None:
        return [p.name for p in _shipped_for(drafter_hash, near)]
    return sorted(p.stem for p in SHIPPED_PROFILES_DIR.glob("*.json")) if SHIPPED_PROFILES_DIR.is_dir() else []


def _shipped_for(drafter_hash: str, near: str | None = None) -> list[DeviceProfile]:
    """The shipped profiles that time this drafter: measured ones first, nearest to device `near` first
    when given; by name otherwise."""
    fitting = [p for p in map(DeviceProfile.load, shipped_profiles()) if p.drafter_hash == drafter_hash]

    def order(p: DeviceProfile) -> tuple:
        distance = device_distance(p.device, near) if near and p.kind == "measured" else ()
        return PROFILE_KINDS.index(p.kind), distance

    return sorted(fitting, key=order)  # stable: by name within equal keys


_DEVICE = re.compile(r"^(?P<name>.*?)(?:, family (?P<family>\d+) model (?P<model>\d+))?(?: \((?P<threads>\d+) threads\))?$")


def device_distance(a: str, b: str) -> tuple[bool, bool, bool, int, bool]:
    """How unlike two recorded device names are, for picking the closest profile: the kind of device
    (the first word: CPU, NVIDIA, ...), then the processor's name (vendor and line), then the CPU
    family, then how far apart the model numbers are (a neighbouring model of one family is usually
    the nearest generation; the model sets the shape of the cost curve), then the thread count."""
    x, y = (_DEVICE.match(name).groupdict() for name in (a, b))  # the pattern matches any string
    model_gap = abs(int(x["model"]) - int(y["model"])) if x["model"] and y["model"] else 0
    return (a.split()[0] != b.split()[0], x["name"] != y["name"], x["family"] != y["family"], model_gap, x["threads"] != y["threads"])


def default_profile(drafter_hash: str, device: torch.device | str = "cpu") -> DeviceProfile:
    """The shipped measured profile of this machine for this drafter, else the closest shipped one
    (`device_distance`), saying so; a clear error when none fits."""
    here = device_name(device)
    fitting = [p for p in _shipped_for(drafter_hash, here) if p.kind == "measured"]
    if not fitting:
        raise ValueError(
            f"no shipped profile times drafter {drafter_hash} (shipped: {shipped_profiles()}); measure this machine's: "
            "python experiments/profile_device.py"
        )
    chosen = fitting[0]
    if chosen.device != here:
        print(f"no shipped profile of this machine ({here}); using the closest, {chosen.name!r}, measured on {chosen.device}. "
              "Measure this machine's own: python experiments/profile_device.py")
    return chosen


def measure_profile(
    target: Target,
    drafter: Drafter,
    drafter_name: str,
    name: str,
    block_sizes: tuple[int, ...] = DEFAULT_BLOCK_SIZES,
    contexts: tuple[int, ...] = (64, 256, 512),
    prompt_lengths: tuple[int, ...] = (16, 64, 256, 512),
    repeats: int = 10,
    decode_tokens: int = 24,
    seed: int = 0,
    concurrencies: tuple[int, ...] = (1,),
) -> DeviceProfile:
    """Time every pass on this machine (nothing else heavy may run meanwhile).

    Every pass, and a real `decode_tokens`-token decode per block size, is timed once per round, the
    rounds interleaved (`measure_interleaved`), so the machine's drift cannot favour one block size.
    With `concurrencies` beyond (1,), batched target forwards (B requests x n tokens, at the middle
    context) are timed too, for `at_concurrency`.
    A block's loop overhead is what its real decode takes per cycle beyond the isolated passes its
    cycles made (negative where the isolated passes time slower than inside the loop)."""
    generator = torch.Generator().manual_seed(seed)
    low, high = min(100, target.vocab_size // 2), min(target.vocab_size, 30000)  # ordinary tokens: no specials

    def tokens(n: int) -> torch.Tensor:
        return torch.randint(low, high, (n,), generator=generator).to(target.device)

    middle, decode_prompt = tokens(contexts[len(contexts) // 2]), tokens(contexts[0])
    decodes: dict[int, list[DecodeStats]] = {b: [] for b in block_sizes}

    def real_decode(block_size: int) -> Callable[[], None]:
        def run():
            decoder = SpeculativeDecoder(target, drafter, decode_prompt, max_new_tokens=decode_tokens, stop_token_ids=[])
            decoder.prefill()
            decodes[block_size].append(decoder.decode(block_size))  # decode() times itself

        return run

    passes = {("verify", b, c): verify_forward(target, tokens(c + b), b) for b in block_sizes for c in contexts}
    passes.update({("draft", b): draft_pass(target, drafter, middle, b) for b in block_sizes if b > 1})
    passes.update({("prefill", n): prefill_pass(target, tokens(n)) for n in prompt_lengths})
    passes.update({("decode", b): real_decode(b) for b in block_sizes})
    loads = sorted(set(concurrencies) | {1}) if tuple(concurrencies) != (1,) else []
    middle_context = len(middle)
    passes.update({("batched", c, n): verify_forward(target, torch.stack([tokens(middle_context + n) for _ in range(c)]), n)
                   for c in loads for n in block_sizes})
    warmup = 2
    seconds = {key: timing.median for key, timing in measure_interleaved(passes, target.device, warmup, repeats, seed, progress="profile").items()}
    profile = DeviceProfile(
        name=name, kind="measured", device=device_name(target.device), target=target.name, drafter=drafter_name,
        drafter_hash=drafter_fingerprint(drafter),
        verify={b: {c: seconds["verify", b, c] for c in contexts} for b in block_sizes},
        draft={b: seconds["draft", b] for b in block_sizes if b > 1},
        prefill={n: seconds["prefill", n] for n in prompt_lengths},
        overhead={b: 0.0 for b in block_sizes}, versions=library_versions(),
        batched={c: {n: seconds["batched", c, n] for n in block_sizes} for c in loads}, batched_context=middle_context if loads else 0,
    )
    for b, runs in decodes.items():  # greedy: every run of a block decodes the same cycles
        timed = runs[warmup:]
        context, passes_seconds = len(decode_prompt) + 1, 0.0
        for committed, verified in zip(timed[0].acceptance_lengths, timed[0].verify_counts):
            passes_seconds += profile.cycle_seconds(b, context, verified)  # the budget's last cycles verify fewer
            context += committed
        real = statistics.median(stats.decode_seconds for stats in timed)
        profile.overhead[b] = (real - passes_seconds) / timed[0].cycles
    return profile


def library_versions() -> dict[str, str]:
    return {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}


# --- model profiles --------------------------------------------------------------------------------


def flat_profile(base: DeviceProfile) -> DeviceProfile:
    """Every cycle costs one autoregressive step of `base`, whatever its block, and drafting is free:
    the idealised setting of acceptance-length arithmetic (speedup = mean acceptance)."""
    one_step = statistics.median(base.verify[1].values())
    step = {c: one_step for c in base.verify[1]}
    return DeviceProfile(
        name=f"flat-{base.name}", kind="model", device=f"model: flat, from {base.device}", target=base.target, drafter=base.drafter,
        drafter_hash=base.drafter_hash, verify={n: dict(step) for n in base.verify}, draft={b: 0.0 for b in base.draft},
        prefill=dict(base.prefill), overhead={b: 0.0 for b in base.verify}, versions=base.versions,
        note=f"model, not a measurement: each cycle costs one 1-token step of profile {base.name!r} (median over contexts)",
    )


@dataclass(frozen=True)
class Accelerator:
    """The two numbers a roofline needs (vendor datasheet figures, dense bf16)."""

    name: str
    memory_bandwidth: float  # bytes / s
    peak_flops: float  # FLOP / s


ACCELERATORS = {
    "h200": Accelerator("NVIDIA H200 SXM", 4.8e12, 989e12),
    "h100": Accelerator("NVIDIA H100 SXM", 3.35e12, 989e12),
    "a100": Accelerator("NVIDIA A100 80GB SXM", 2.04e12, 312e12),
}


def roofline_profile_name(accelerator: str, target_name: str, drafter_name: str) -> str:
    """The name `roofline_profile` gives its model of `accelerator` for these models."""
    return f"roofline-{accelerator}_{model_slug(target_name)}_{model_slug(drafter_name)}"


def roofline_profile(
    target: Target, drafter: Drafter, drafter_name: str, accelerator: str = "h200", bytes_per_value: int = 2,
    block_sizes: tuple[int, ...] = DEFAULT_BLOCK_SIZES, contexts: tuple[int, ...] = (64, 256, 512, 1024),
    prompt_lengths: tuple[int, ...] = (16, 64, 256, 512, 1024), launch_seconds: float = 0.0,
    concurrencies: tuple[int, ...] = (1, 2, 4, 8, 16),
) -> DeviceProfile:
    """A model of `accelerator`, not a measurement: each pass takes max(bytes moved / bandwidth,
    FLOPs / peak) + `launch_seconds`, where a target pass over n tokens at context c moves its weights
    and the KV cache of c tokens and computes 2 x parameters x n + attention FLOPs; a drafter pass
    moves its own layers and its (draft-vocabulary) head. Real passes are slower (kernel launches,
    attention kernels, the Python loop): replace it with a measured profile wherever one exists."""
    if accelerator not in ACCELERATORS:
        raise ValueError(f"unknown accelerator {accelerator!r}; modelled: {sorted(ACCELERATORS)}")
    chip = ACCELERATORS[accelerator]
    config = target.model.config
    layers, heads = config.num_hidden_layers, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_bytes_per_token = layers * 2 * config.num_key_value_heads * head_dim * bytes_per_value
    target_params = sum(p.numel() for p in target.model.parameters())

    middle = contexts[len(contexts) // 2]  # the context batched forwards are modelled at

    def seconds(bytes_moved: float, flops: float) -> float:
        return max(bytes_moved / chip.memory_bandwidth, flops / chip.peak_flops) + launch_seconds

    def target_pass(n: int, context: int, batch: int = 1) -> float:
        attention = 4 * n * (context + n) * layers * heads * head_dim
        return seconds(target_params * bytes_per_value + batch * kv_bytes_per_token * (context + n), batch * (2 * target_params * n + attention))

    own = sum(p.numel() for p in drafter.parameters()) if isinstance(drafter, torch.nn.Module) else 0
    head = drafter.draft_head().numel() if hasattr(drafter, "draft_head") else 0
    draft = {b: seconds((own + head) * bytes_per_value, 2 * (own + head) * b) if own else 0.0 for b in block_sizes if b > 1}
    return DeviceProfile(
        name=roofline_profile_name(accelerator, target.name, drafter_name), kind="model", device=f"model: roofline of {chip.name}",
        target=target.name, drafter=drafter_name, drafter_hash=drafter_fingerprint(drafter),
        verify={n: {c: target_pass(n, c) for c in contexts} for n in block_sizes}, draft=draft,
        prefill={n: target_pass(n, 0) for n in prompt_lengths}, overhead={b: 0.0 for b in block_sizes}, versions=library_versions(),
        batched={c: {n: target_pass(n, middle, c) for n in block_sizes} for c in sorted(set(concurrencies) | {1})},
        batched_context=middle,
        note=(f"model, not a measurement: roofline of {chip.name} ({chip.memory_bandwidth / 1e12:.2f} TB/s, "
              f"{chip.peak_flops / 1e12:.0f} TFLOP/s dense bf16), {bytes_per_value}-byte weights, {launch_seconds * 1e6:.0f} us launch cost per pass"),
    )


def simulate(trace: AcceptanceTrace | SampledTrace, profile: DeviceProfile, schedule, draft_block: int | None = None,
             seed_index: int = 0) -> DecodeStats:
    """The decode a schedule gives on the trace, with seconds from the profile (simulated, not timed).

    `schedule`: an action (a block size, or (block, verify count)) for every cycle, or a callable
    CycleState -> action (per cycle; `draft_block` as in `AcceptanceTrace.replay`). A `SampledTrace`
    (above T=0) replays its own seeded decodes only: `schedule` is one of its block sizes and
    `seed_index` picks the decode."""
    if isinstance(trace, SampledTrace):
        if callable(schedule) or not isinstance(schedule, (int, np.integer)):
            raise ValueError(f"a sampled (T>0) trace replays its own fixed-block decodes only, not schedule {schedule!r}; "
                             "per-cycle schedules replay exactly at T=0")
        block = int(schedule)
        cycles = [Cycle(block, block, committed) for committed in trace.acceptance_lengths(block, seed_index)]
        return price_cycles(trace.prompt_tokens, trace.new_tokens(block, seed_index), cycles, profile)
    choose = schedule if callable(schedule) else (lambda state: schedule)
    return price_cycles(trace.prompt_tokens, len(trace.tokens), trace.replay(choose, draft_block), profile)


def price_cycles(prompt_tokens: int, new_tokens: int, cycles: list[Cycle], profile: DeviceProfile) -> DecodeStats:
    """A decode's stats with every pass priced by the profile: its prefill, then each cycle at the
    context its anchor sits at."""
    stats = DecodeStats(prompt_tokens=prompt_tokens, new_tokens=new_tokens)
    stats.prefill_seconds = profile.prefill_seconds(prompt_tokens)
    context = prompt_tokens + 1  # the cycle's anchor is the newest committed token
    for cycle in cycles:
        stats.decode_seconds += profile.cycle_seconds(cycle.block, context, cycle.verify)
        stats.block_sizes.append(cycle.block)
        stats.verify_counts.append(cycle.verify)
        stats.acceptance_lengths.append(cycle.committed)
        context += cycle.committed
    return stats
