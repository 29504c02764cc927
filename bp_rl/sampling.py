"""Token sampling and the lossless verification rule of speculative decoding.

Notation follows the speculative-sampling papers: p is the target's distribution at a
position, q the drafter's. A draft token d is accepted with probability min(1, p(d) / q(d));
the first rejected position is resampled from the residual (p - q)+, normalised. This makes
every committed token an exact sample from p. At temperature 0 both collapse to argmax, and
acceptance is a plain prefix match.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Sampler:
    """Temperature / top-k / top-p sampling with its own random generator (same seed, same tokens)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @classmethod
    def create(cls, temperature: float, top_k: int, top_p: float, seed: int | None, device: torch.device) -> "Sampler":
        generator = torch.Generator(device=device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        return cls(temperature, top_k, top_p, generator)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """The sampling distribution over the last dimension, after temperature, top-k and top-p."""
        scores = logits.float() / self.temperature
        if 0 < self.top_k < scores.shape[-1]:
            kth_best = torch.topk(scores, self.top_k, dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth_best, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        if self.top_p < 1:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            # keep the smallest prefix whose mass reaches top_p (the best token always survives)
            drop = sorted_probs.cumsum(dim=-1) - sorted_probs >= self.top_p
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
            probs = probs / probs.sum(dim=-1, keepdim=True)
        return probs

    def draw(self, probs: torch.Tensor) -> torch.Tensor:
        """One token per row of `probs` (shape (..., vocab) -> (...))."""
        flat = probs.reshape(-1, probs.shape[-1])
        return torch.multinomial(flat, 1, generator=self.generator).reshape(probs.shape[:-1])

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        """Argmax at temperature 0, else a draw from `probs(logits)`."""
        if self.greedy:
            return logits.argmax(dim=-1)
        return self.draw(self.probs(logits))

    def uniform(self, n: int, device: torch.device) -> torch.Tensor:
        return torch.rand(n, generator=self.generator, device=device)


def verify(
    draft_tokens: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_logits: torch.Tensor,
    sampler: Sampler,
) -> tuple[int, int]:
    """Decide how many of `k` draft tokens the target accepts, and the token that follows them.

    draft_tokens: (k,) proposed tokens. draft_probs: (k, vocab) the distributions q they were
    drawn from, or None for a deterministic drafter (q is then one-hot on each draft token).
    target_logits: (k + 1, vocab) the target's logits at the block's positions, where row i
    predicts the token after the block's i-th token. Returns (accepted, next_token).
    """
    k = draft_tokens.shape[0]
    if sampler.greedy:
        choice = target_logits.argmax(dim=-1)
        accepted = int((draft_tokens == choice[:k]).cumprod(dim=0).sum())
        return accepted, int(choice[accepted])

    p = sampler.probs(target_logits)  # (k + 1, vocab)
    p_draft = p[:k].gather(-1, draft_tokens[:, None])[:, 0]
    q_draft = torch.ones_like(p_draft) if draft_probs is None else draft_probs.gather(-1, draft_tokens[:, None])[:, 0]
    # accept d_i with probability min(1, p(d_i) / q(d_i)), stop at the first rejection
    keep = sampler.uniform(k, p.device) * q_draft < p_draft
    accepted = int(keep.long().cumprod(dim=0).sum())
    if accepted == k:
        return k, int(sampler.draw(p[k]))
    q = (
        torch.nn.functional.one_hot(draft_tokens[accepted], p.shape[-1]).to(p.dtype)
        if draft_probs is None
        else draft_probs[accepted].to(p.dtype)
    )
    residual = (p[accepted] - q).clamp_min(0)
    total = residual.sum()
    # total == 0 only when p == q, where rejection has probability 0; guard against rounding
    residual = residual / total if total > 0 else p[accepted]
    return accepted, int(sampler.draw(residual))
