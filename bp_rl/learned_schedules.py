"""A learned per-cycle verify rule: how much of a drafted block to verify, fitted on training traces.

Under the `verify` action set a block is drafted first, and the rule then chooses how many
of its tokens the target verifies, seeing the draft's per-slot confidences and entropies: a learned
stop predictor in the style of SpecDec++ and DISCO, for a block drafter. At T=0 a training trace gives
the exact cost of every choice at every anchor (the cycle, then the optimum of the rest: dynamic
programming, `bp_rl.schedules.cost_to_go`), so the rule is a cost-sensitive regression: one ridge
regression per verify count of its regret (seconds beyond the optimum) on the draft's features, and
it verifies the count predicted cheapest. The block drafted first need not be the largest: a smaller
one drafts cheaper, and the rule chooses among the verify counts up to it. Every anchor of the
training traces is one example, so the fit does not depend on the path some policy took.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from bp_rl.profiles import DeviceProfile
from bp_rl.schedules import action_set, action_seconds, cost_to_go
from bp_rl.traces import AcceptanceTrace, CycleState


def verify_features(confidence, entropy, committed: int, budget: int) -> np.ndarray:
    """What the rule reads of a drafted block: per slot the top-1 probability, their running product
    (the chance that every slot so far is right, were they independent and calibrated) and the
    entropy (zeros where the trace has none), and how far the request has got."""
    confidence = np.asarray(confidence, dtype=np.float64)
    entropy = np.zeros_like(confidence) if entropy is None else np.asarray(entropy, dtype=np.float64)
    return np.concatenate([confidence, np.cumprod(confidence), entropy, [committed / max(1, committed + budget)]])


@dataclass
class LearnedVerifyRule:
    """Verify the count whose predicted regret is lowest; a schedule (`CycleState -> (block, verify)`)."""

    actions: list[tuple[int, int]]
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray  # (features + 1, actions): regret in seconds per verify count, bias last
    ridge: float

    def predicted_regret(self, state: CycleState) -> np.ndarray:
        if state.draft is None:
            raise ValueError("a learned verify rule reads the draft before verifying: replay it with draft_block set (the verify action set)")
        x = (verify_features(state.draft, state.draft_entropy, state.committed, state.budget) - self.mean) / self.scale
        return np.append(x, 1.0) @ self.weights

    def __call__(self, state: CycleState) -> tuple[int, int]:
        return self.actions[int(np.argmin(self.predicted_regret(state)))]


def fit_verify_rules(traces: Iterable[AcceptanceTrace], profile: DeviceProfile, block_sizes: tuple[int, ...],
                     ridges: Sequence[float] = (1.0,)) -> dict[float, LearnedVerifyRule]:
    """Fit the rule on `traces` (T=0) under `profile`, once per ridge penalty in `ridges`: every anchor of
    every trace is one example. The largest of `block_sizes` is the block drafted first."""
    if not ridges or any(r < 0 for r in ridges):
        raise ValueError(f"ridges must be a non-empty list of penalties >= 0, got {list(ridges)!r}")
    actions = action_set("verify", block_sizes)
    largest = actions[0][0]
    features, regrets = [], []
    for trace in traces:
        best, _ = cost_to_go(trace, profile, actions)
        for anchor in range(trace.anchors):
            entropy = trace.entropy[largest][anchor] if trace.entropy else None
            features.append(verify_features(trace.confidence[largest][anchor], entropy, anchor + 1, trace.anchors - anchor))
            regrets.append(np.array(action_seconds(trace, profile, actions, anchor, best)) - best[anchor])
    if not features:
        raise ValueError("no anchor to learn from: the traces are empty")
    x, y = np.array(features), np.array(regrets)
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-8
    design = np.column_stack([(x - mean) / scale, np.ones(len(x))])
    rules = {}
    for ridge in ridges:
        penalty = ridge * np.eye(design.shape[1])
        penalty[-1, -1] = 0.0  # the bias is not shrunk
        weights = np.linalg.lstsq(design.T @ design + penalty, design.T @ y, rcond=None)[0]  # constant features (no entropies) stay harmless
        rules[ridge] = LearnedVerifyRule(actions, mean, scale, weights, ridge)
    return rules
