"""The DFlash-style training objective for the block drafter.

One training sequence holds tokens (target generations or offline text) and the target's
hidden states at the drafter's `target_layer_ids` for every position. From it we draw random
anchor positions; each anchor a gets a block [token_a, mask, ..., mask] of a random size b,
placed at positions a .. a+b-1. Exactly as at decoding time, the block attends to the fused
target states of positions < a and bidirectionally to its own b positions, and position p of
the block is trained to predict token a+p, with a loss weight decaying along the block (later
positions are harder, and matter only if every earlier one was right). Many blocks share one
packed forward pass: an attention mask keeps them from seeing each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from bp_rl.block_drafter import BlockDrafter
from bp_rl.drafter import entropy_of


@dataclass
class BlockBatch:
    """Packed blocks of one sequence: Q query slots, the blocks' slots one block after another."""

    input_ids: torch.Tensor  # (Q,) anchor tokens and mask tokens
    position_ids: torch.Tensor  # (ctx + Q,) context positions then block positions
    attention_mask: torch.Tensor  # (Q, ctx + Q) bool, True = may attend
    labels: torch.Tensor  # (Q,) target token per slot, -100 where there is none
    weights: torch.Tensor  # (Q,) loss weight per slot (0 where there is no label)
    offsets: torch.Tensor  # (Q,) slot index inside its block (0: the anchor)

    @property
    def label_positions(self) -> torch.Tensor:
        """(Q,) the sequence position whose next-token distribution each slot's label is (label pos - 1)."""
        return self.position_ids[-len(self.labels) :] - 1


def layout_blocks(
    tokens: torch.Tensor, anchors: torch.Tensor, sizes: torch.Tensor, max_block: int, mask_token_id: int, decay: float = 7.0
) -> BlockBatch:
    """Lay out one block per anchor (anchor token, then masks; `sizes` slots) for one packed pass.

    Each block sees the target states of positions before its anchor and, bidirectionally, its own
    slots, exactly as at decoding time; slot p is labelled with the token at anchor + p.
    """
    length, num_blocks = len(tokens), len(anchors)
    offset = torch.arange(max_block)
    slot_pos = anchors[:, None] + offset[None, :]  # (n, max_block) absolute positions
    real = offset[None, :] < sizes[:, None]  # slot inside its block
    has_label = real & (offset[None, :] > 0) & (slot_pos < length)

    input_ids = torch.full((num_blocks, max_block), mask_token_id, dtype=torch.long)
    input_ids[:, 0] = tokens[anchors]
    labels = torch.full((num_blocks, max_block), -100, dtype=torch.long)
    labels[has_label] = tokens[slot_pos[has_label]]
    weights = torch.exp(-(offset.float() - 1).clamp_min(0) / decay)[None, :].expand(num_blocks, -1) * has_label

    # only the slots inside their block are laid out: no compute on padding
    keep = real.reshape(-1)
    block_of = torch.arange(num_blocks).repeat_interleave(max_block)[keep]  # (Q,)
    ctx_visible = torch.arange(length)[None, :] < anchors[block_of][:, None]  # (Q, ctx)
    mask = torch.cat([ctx_visible, block_of[:, None] == block_of[None, :]], dim=1)
    return BlockBatch(
        input_ids=input_ids.reshape(-1)[keep],
        position_ids=torch.cat([torch.arange(length), slot_pos.reshape(-1)[keep]]),
        attention_mask=mask,
        labels=labels.reshape(-1)[keep],
        weights=weights.reshape(-1)[keep],
        offsets=offset.repeat(num_blocks)[keep],
    )


def sample_blocks(
    tokens: torch.Tensor,
    loss_start: int,
    num_blocks: int,
    max_block: int,
    mask_token_id: int,
    generator: torch.Generator,
    min_block: int = 2,
    decay: float = 7.0,
) -> BlockBatch:
    """Draw up to `num_blocks` distinct anchors and random block sizes for one sequence.

    Anchors come from [max(1, loss_start - 1), len - 2], so every block has context before it and
    at least one label (the first label is the token at `loss_start` at the earliest).
    """
    length = len(tokens)
    low = max(1, loss_start - 1)
    if low > length - 2:
        raise ValueError(f"sequence of {length} tokens has no room for a block after position {loss_start}")
    anchors = low + torch.randperm(length - 1 - low, generator=generator)[:num_blocks]
    sizes = torch.randint(min_block, max_block + 1, (len(anchors),), generator=generator)
    return layout_blocks(tokens, anchors, sizes, max_block, mask_token_id, decay)


def warm_start(drafter: BlockDrafter, source: BlockDrafter) -> None:
    """Start `drafter` from a trained `source` reading the same target layers; the draft vocabulary
    stays `drafter`'s own (the LM head is the target's, so any rows fit).

    A deeper `drafter` keeps the source's layers first and starts every extra layer as a copy of the
    source's last one with its output projections (attention `o_proj`, MLP `down_proj`) zeroed: each
    extra layer adds nothing to the residual stream yet, so training begins from the source's exact
    drafts and the new capacity is learnt from there.
    """
    kept = len(source.layers)
    if list(source.target_layer_ids) != list(drafter.target_layer_ids):
        raise ValueError(f"cannot warm-start a drafter reading target layers {list(drafter.target_layer_ids)} "
                         f"from one reading {list(source.target_layer_ids)}")
    if kept > len(drafter.layers):
        raise ValueError(f"cannot warm-start a drafter of {len(drafter.layers)} layers from a deeper one ({kept} layers)")
    weights = {k: v for k, v in source.state_dict().items() if k != "draft_token_ids"}
    missing, unexpected = drafter.load_state_dict(weights, strict=False)
    extra = tuple(f"layers.{i}." for i in range(kept, len(drafter.layers)))
    if unexpected or any(k != "draft_token_ids" and not k.startswith(extra) for k in missing):
        raise ValueError(f"warm start does not fit: missing {missing}, unexpected {unexpected}")
    for layer in drafter.layers[kept:]:
        layer.load_state_dict(source.layers[-1].state_dict())
        with torch.no_grad():
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()


class DraftVocabulary:
    """Maps full-vocabulary token ids to rows of a (bound) drafter's possibly reduced LM head."""

    def __init__(self, drafter: BlockDrafter):
        self.head = drafter.draft_head()
        ids, vocab_size = drafter.draft_token_ids, drafter.config.vocab_size
        self.index = torch.arange(vocab_size) if ids is None else torch.full((vocab_size,), -1, dtype=torch.long)
        if ids is not None:
            self.index[ids.cpu()] = torch.arange(len(ids))

    def to_rows(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Head row of each token id, -1 where the token is outside the draft vocabulary."""
        return self.index[token_ids.cpu()]


def block_states(drafter: BlockDrafter, embedding: torch.Tensor, features: torch.Tensor, batch: BlockBatch) -> torch.Tensor:
    """(Q, hidden) final drafter states of every slot of the packed blocks."""
    device, dtype = features.device, features.dtype
    # the shared embedding stays frozen: no gradient reaches the target
    noise = F.embedding(batch.input_ids.to(device), embedding.detach()).to(dtype)[None]
    return drafter(
        position_ids=batch.position_ids.to(device)[None],
        attention_mask=batch.attention_mask.to(device)[None, None],
        noise_embedding=noise,
        target_hidden=features[None],
    )[0]


def block_loss(
    drafter: BlockDrafter,
    embedding: torch.Tensor,
    vocab: DraftVocabulary,
    features: torch.Tensor,
    batch: BlockBatch,
    soft_labels: tuple[torch.Tensor, torch.Tensor] | None = None,
    kl_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted loss of the drafter on one sequence's packed blocks: (1 - kl_weight) x cross-entropy on
    the target's tokens + kl_weight x cross-entropy against the target's top-k distribution (distillation).

    features: (ctx, len(target_layer_ids) * hidden) the target's states for the sequence.
    soft_labels: (topk_ids, topk_logits), each (ctx, k): the target's top-k next-token logits after each
    position. Slots whose label lies outside the draft vocabulary are left out (the drafter cannot
    propose it). Returns the loss and metrics: accuracy at the first drafted position and over all labels.
    """
    device = features.device
    rows = vocab.to_rows(batch.labels.clamp_min(0))
    labelled = (batch.labels >= 0) & (rows >= 0)
    hidden = block_states(drafter, embedding, features, batch)[labelled.to(device)]
    logits = F.linear(hidden, vocab.head.to(hidden.dtype)).float()
    labels = rows[labelled].to(device)
    weights = batch.weights[labelled].to(device)
    per_token = F.cross_entropy(logits, labels, reduction="none")
    if kl_weight > 0:
        if soft_labels is None:
            raise ValueError("kl_weight > 0 needs soft labels (the target's top-k logits)")
        where = batch.label_positions[labelled]
        top_rows = vocab.to_rows(soft_labels[0][where].reshape(-1)).view(len(where), -1)
        top_logits = soft_labels[1][where].masked_fill(top_rows < 0, float("-inf"))
        p = torch.softmax(top_logits, dim=-1).nan_to_num(0.0).to(device)  # the target's distribution, renormalised on the draft vocabulary
        log_q = torch.log_softmax(logits, dim=-1).gather(1, top_rows.clamp_min(0).to(device))
        per_token = (1 - kl_weight) * per_token - kl_weight * (p * log_q).sum(dim=-1)
    loss = (per_token * weights).sum() / weights.sum().clamp_min(1e-8)
    with torch.no_grad():
        correct = logits.argmax(dim=-1) == labels
        first = weights == 1.0  # the first drafted position has weight exp(0)
        metrics = {
            "loss": float(loss.detach()),
            "acc": float(correct.float().mean()) if len(correct) else math.nan,
            "acc_first": float(correct[first].float().mean()) if first.any() else math.nan,
            "labels": int(labelled.sum()),
        }
    return loss, metrics


@torch.no_grad()
def drafts_at_anchors(
    drafter: BlockDrafter, embedding: torch.Tensor, vocab: DraftVocabulary, features: torch.Tensor, tokens: torch.Tensor,
    anchors: torch.Tensor, block_sizes: int | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A greedy draft of `block_size - 1` tokens from every anchor of `tokens`, in one packed pass.

    `block_sizes`: one for every anchor, or a block size per anchor. Returns (matches, confidence,
    entropy), each (anchors, largest block - 1): whether each drafted slot equals the token in `tokens`
    there (False past the end of the sequence or of its block), the drafter's top-1 probability and the
    entropy of its distribution (nats; both 0 past its block).
    """
    sizes = torch.as_tensor(block_sizes, dtype=torch.long)
    if sizes.dim() == 0:
        sizes = sizes.repeat(len(anchors))
    largest = int(sizes.max())
    batch = layout_blocks(tokens, anchors, sizes, largest, drafter.mask_token_id)
    drafted_slot = batch.offsets > 0  # the anchor slots predict nothing: skip them in the head
    hidden = block_states(drafter, embedding, features, batch)[drafted_slot.to(features.device)]
    probs = torch.softmax(F.linear(hidden, vocab.head.to(hidden.dtype)).float(), dim=-1)
    top1, drafted = probs.max(dim=-1)
    labels = batch.labels[drafted_slot]
    hits = (drafted.cpu() == vocab.to_rows(labels.clamp_min(0))) & (labels >= 0)
    # back to one row per anchor: slot (block b, offset o) -> [b, o - 1]
    block_of = torch.arange(len(anchors)).repeat_interleave(sizes)[drafted_slot]
    matches = torch.zeros(len(anchors), largest - 1, dtype=torch.bool)
    confidence = torch.zeros(len(anchors), largest - 1)
    entropy = torch.zeros(len(anchors), largest - 1)
    slot = (block_of, batch.offsets[drafted_slot] - 1)
    matches[slot] = hits
    confidence[slot] = top1.cpu()
    entropy[slot] = entropy_of(probs).cpu()
    return matches, confidence, entropy
