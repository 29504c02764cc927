"""A training-free drafter: copy what followed the last n-gram the last time it occurred.

Prompt-lookup decoding: find the most recent earlier occurrence of the last n committed tokens
(prompt and generated text alike), trying n from `max_ngram` down to `min_ngram`, and propose
the tokens that followed it. No match, no proposal: that cycle costs one plain target step.
Proposals are deterministic, so verification treats q as one-hot and stays lossless at every
temperature.
"""

from __future__ import annotations


from bp_rl.drafter import Draft, DraftContext, Drafter
from bp_rl.sampling import Sampler


class PromptLookupDrafter(Drafter):
    def __init__(self, max_ngram: int = 3, min_ngram: int = 1, max_block_size: int = 32):
        for name, value in (("max_ngram", max_ngram), ("min_ngram", min_ngram), ("max_block_size", max_block_size)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if min_ngram < 1:
            raise ValueError(f"min_ngram must be >= 1, got {min_ngram}")
        if max_ngram < min_ngram:
            raise ValueError(f"max_ngram must be >= min_ngram ({min_ngram}), got {max_ngram}")
        if max_block_size < 2:
            raise ValueError(f"max_block_size must be >= 2, got {max_block_size}")
        self.max_ngram, self.min_ngram, self.max_block_size = max_ngram, min_ngram, max_block_size

    def propose(self, context: DraftContext, num_tokens: int, sampler: Sampler) -> Draft:
        tokens = context.token_ids
        for n in range(self.max_ngram, self.min_ngram - 1, -1):
            if len(tokens) <= n:
                continue
            # windows of the text minus its last token: a match always has a successor and is never the tail itself
            windows = tokens[:-1].unfold(0, n, 1)
            hits = (windows == tokens[-n:]).all(dim=1).nonzero()
            if len(hits):
                start = int(hits[-1]) + n  # the most recent occurrence
                return Draft(tokens[start : start + num_tokens].clone())
        return Draft(tokens[:0].clone())
