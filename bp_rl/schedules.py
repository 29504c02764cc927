"""Per-cycle schedules over acceptance traces: the action sets, two published heuristics, and the
exact optimum.

A schedule picks each cycle's action from what decoding has revealed so far (`CycleState`): a block
size, or (block, verify count) for a drafter that drafts a whole block in one pass and verifies only
its first tokens (DFlash's verify budget). At T=0 a trace replays any schedule exactly, so the best
schedule of all (`optimal_schedule`, dynamic programming over the anchors) is an exact upper bound
on every per-cycle policy under a profile, as the per-prompt best fixed block is for per-request
policies.
"""

from __future__ import annotations

from typing import Callable

from bp_rl.profiles import DeviceProfile
from bp_rl.traces import AcceptanceTrace, Action, CycleState, as_action

Schedule = Callable[[CycleState], Action]
ACTION_SETS = ("block", "block_verify", "verify")
ADAEDL_GAMMA = 0.2  # the entropy scale AdaEDL's experiments fix


def action_set(name: str, block_sizes: tuple[int, ...]) -> list[tuple[int, int]]:
    """The (block, verify) actions of a named set over `block_sizes`:
    `block`: each block verified whole; `block_verify`: every block with every verify count up to it
    (verify counts are block sizes too: a profile times a target pass at those sizes);
    `verify`: the largest block, drafted first, with every verify count."""
    blocks = sorted(block_sizes)
    if name == "block":
        return [(b, b) for b in blocks]
    if name == "block_verify":
        return [(b, k) for b in blocks for k in blocks if k <= b]
    if name == "verify":
        return [(blocks[-1], k) for k in blocks]
    raise ValueError(f"unknown action set {name!r}; valid: {list(ACTION_SETS)}")


def assistant_schedule(block_sizes: tuple[int, ...], start_drafts: int = 20) -> Schedule:
    """Hugging Face assisted generation's `heuristic` schedule: +2 draft tokens after a cycle whose
    drafts were all accepted, -1 otherwise (never below 1), starting at `start_drafts`; the block is the
    largest of `block_sizes` that drafts no more than that."""
    blocks = sorted(block_sizes)

    def schedule(state: CycleState) -> int:
        drafts = start_drafts
        for cycle in state.history:
            drafts = drafts + 2 if cycle.committed == cycle.verify else max(1, drafts - 1)
        return max([b for b in blocks if b - 1 <= drafts], default=blocks[0])

    return schedule


def confidence_schedule(threshold: float, block_sizes: tuple[int, ...]) -> Schedule:
    """llama.cpp's `--draft-p-min` for a block drafter: draft the largest block first, then verify the
    anchor and the leading drafts whose top-1 probability is at least `threshold` (rounded down to a
    verify count the profile times). Replay it with `draft_block=max(block_sizes)`."""
    return _verify_leading("draft", lambda p: p >= threshold, block_sizes)


def entropy_schedule(threshold: float, block_sizes: tuple[int, ...], gamma: float = ADAEDL_GAMMA) -> Schedule:
    """AdaEDL's stopping bound for a block drafter: draft the largest block first, then verify the anchor
    and the leading drafts whose lower bound on the acceptance probability, 1 - sqrt(gamma * entropy)
    (entropy of the drafter's distribution at the slot, nats), is at least `threshold` (lambda). The paper
    adapts lambda online from the observed acceptance; here it is one value, tuned on val. Needs traces
    (or a drafter) that keep the entropies; replay it with `draft_block=max(block_sizes)`."""
    return _verify_leading("draft_entropy", lambda h: 1 - (gamma * h) ** 0.5 >= threshold, block_sizes)


def _verify_leading(signal: str, passes: Callable[[float], bool], block_sizes: tuple[int, ...]) -> Schedule:
    """A drafted-first verify rule: verify the anchor and the leading drafts whose `signal` (a per-slot
    field of `CycleState`) `passes`, rounded down to a verify count in `block_sizes` (those a profile times)."""
    blocks = sorted(block_sizes)

    def schedule(state: CycleState) -> tuple[int, int]:
        values = getattr(state, signal)
        if values is None:
            raise ValueError(f"this rule reads the draft's {signal!r} before verifying: replay it with draft_block set, "
                             "on traces (or a drafter) that keep it")
        leading = next((i for i, value in enumerate(values) if not passes(value)), len(values))
        return blocks[-1], max(b for b in blocks if b <= leading + 1)

    return schedule


def optimal_schedule(trace: AcceptanceTrace, profile: DeviceProfile, actions: list[tuple[int, int]]) -> tuple[float, list[tuple[int, int]]]:
    """The fastest schedule over `actions` for this trace under `profile`, exactly: (decode seconds,
    the action of each cycle)."""
    best_seconds, best_action = cost_to_go(trace, profile, actions)
    plan, anchor = [], 0
    while anchor < trace.anchors:
        plan.append(best_action[anchor])
        anchor += trace.committed(anchor, *best_action[anchor])
    return best_seconds[0], plan


def cost_to_go(trace: AcceptanceTrace, profile: DeviceProfile, actions: list[tuple[int, int]]) -> tuple[list[float], list[tuple[int, int] | None]]:
    """For every anchor, the seconds the fastest schedule over `actions` takes from there to the end, and
    its first action. Dynamic programming over anchors, from the last one back, since what a cycle
    commits depends only on its anchor and its action (T=0)."""
    actions = [as_action(a) for a in actions]
    last = trace.anchors
    best_seconds = [0.0] * (last + 1)  # seconds to finish from anchor i (i = last: nothing left)
    best_action: list[tuple[int, int] | None] = [None] * (last + 1)
    for anchor in range(last - 1, -1, -1):
        best_seconds[anchor] = float("inf")
        for action, seconds in zip(actions, action_seconds(trace, profile, actions, anchor, best_seconds)):
            if seconds < best_seconds[anchor]:
                best_seconds[anchor], best_action[anchor] = seconds, action
    return best_seconds, best_action


def action_seconds(trace: AcceptanceTrace, profile: DeviceProfile, actions: list[tuple[int, int]], anchor: int,
                   best_seconds: list[float]) -> list[float]:
    """Each action's seconds from `anchor` to the end: its cycle, then the optimum from where it leaves
    the decode (`best_seconds` from `cost_to_go`, filled for every later anchor)."""
    context = trace.prompt_tokens + anchor + 1
    return [profile.cycle_seconds(block, context, trace.verified(anchor, block, verify)) + best_seconds[anchor + trace.committed(anchor, block, verify)]
            for block, verify in actions]
