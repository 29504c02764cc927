"""Observations: fixed-length vectors computed from the target's prefill of a prompt.

A feature set is a name, or several joined with `+` (concatenated in that order):

| name            | what it is                                                       | dim            |
|-----------------|------------------------------------------------------------------|----------------|
| `last_hidden`   | last prompt position's hidden state of one layer (default final) | hidden         |
| `mean_hidden`   | hidden state of one layer, mean-pooled over the prompt           | hidden         |
| `multi_layer`   | last-position states of the layers at 1/3, 2/3 and the end       | 3 x hidden     |
| `logit_stats`   | entropy, top-1 probability and top-1/top-2 margin of the next token | 3           |
| `prompt_length` | log(1 + prompt tokens)                                           | 1              |
| `logits`        | the last position's logits (BlockPilot's released choice)        | vocab          |

`last_hidden` and `mean_hidden` take a layer as `@L` (`last_hidden@15`; 0 is the embedding
output, the number of layers is the final one). Everything is read off the same prefill
that decoding uses, so an observation costs no second pass.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from bp_rl.decoding import Prefill

FEATURES = ("last_hidden", "mean_hidden", "multi_layer", "logit_stats", "prompt_length", "logits")
LAYERED = ("last_hidden", "mean_hidden")
DEFAULT_FEATURE_SET = "last_hidden+logit_stats+prompt_length"


def parse_feature_set(feature_set: str) -> list[tuple[str, int | None]]:
    """`'last_hidden@15+logit_stats'` -> `[('last_hidden', 15), ('logit_stats', None)]`, validated."""
    parts = []
    for part in feature_set.split("+"):
        name, _, layer = part.strip().partition("@")
        if name not in FEATURES:
            raise ValueError(f"unknown feature {name!r} in feature set {feature_set!r}; valid: {list(FEATURES)} (join with '+')")
        if layer and name not in LAYERED:
            raise ValueError(f"feature {name!r} takes no layer (only {list(LAYERED)} do), got {part!r}")
        if layer and not layer.isdigit():
            raise ValueError(f"layer in {part!r} must be a non-negative integer")
        parts.append((name, int(layer) if layer else None))
    return parts


def extract_features(prefill: Prefill, feature_set: str = DEFAULT_FEATURE_SET) -> np.ndarray:
    """The observation vector (float32) of `feature_set` for one prefill."""
    parts = parse_feature_set(feature_set)
    hidden = prefill.hidden_states  # (embeddings, layer 1, ..., layer L), each (1, tokens, hidden)
    num_layers = len(hidden) - 1

    def layer(index: int | None) -> torch.Tensor:
        index = num_layers if index is None else index
        if not 0 <= index <= num_layers:
            raise ValueError(f"layer {index} out of range: the target has layers 0..{num_layers}")
        return hidden[index][0].float()

    vectors = []
    for name, index in parts:
        if name == "last_hidden":
            vectors.append(layer(index)[-1])
        elif name == "mean_hidden":
            vectors.append(layer(index).mean(dim=0))
        elif name == "multi_layer":
            thirds = (num_layers // 3, 2 * num_layers // 3, num_layers)
            vectors.extend(layer(i)[-1] for i in thirds)
        elif name == "logit_stats":
            vectors.append(_logit_stats(prefill.last_logits.float()))
        elif name == "prompt_length":
            vectors.append(torch.tensor([math.log1p(hidden[0].shape[1])]))
        else:  # logits
            vectors.append(prefill.last_logits.float())
    return torch.cat([v.reshape(-1).cpu() for v in vectors]).numpy().astype(np.float32)


def _logit_stats(logits: torch.Tensor) -> torch.Tensor:
    log_probs = torch.log_softmax(logits, dim=-1)
    probs = log_probs.exp()
    entropy = -(probs * log_probs).sum()
    top2 = probs.topk(2).values
    return torch.stack([entropy, top2[0], top2[0] - top2[1]])
