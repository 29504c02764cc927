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


@dataclass
class BlockBatch:
    """Packed blocks of one sequence: (num_blocks * max_block) query slots."""

    input_ids: torch.Tensor  # (Q,) anchor tokens and mask tokens
    position_ids: torch.Tensor  # (ctx + Q,) context positions then block positions
    attention_mask: torch.Tensor  # (Q, ctx + Q) bool, True = may attend
    labels: torch.Tensor  # (Q,) target token per slot, -100 where there is none
    weights: torch.Tensor  # (Q,) loss weight per slot (0 where there is no label)


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
    """Draw `num_blocks` anchors and block sizes for one sequence and lay them out for one pass.

    Anchors are drawn from [max(1, loss_start - 1), len - 2], so every block has context before
    it and at least one label (the first label is the token at `loss_start` at the earliest).
    """
    length = len(tokens)
    low = max(1, loss_start - 1)
    if low > length - 2:
        raise ValueError(f"sequence of {length} tokens has no room for a block after position {loss_start}")
    anchors = torch.randint(low, length - 1, (num_blocks,), generator=generator)
    sizes = torch.randint(min_block, max_block + 1, (num_blocks,), generator=generator)
    offset = torch.arange(max_block)
    slot_pos = anchors[:, None] + offset[None, :]  # (n, max_block) absolute positions
    real = offset[None, :] < sizes[:, None]  # slot inside its block
    has_label = real & (offset[None, :] > 0) & (slot_pos < length)

    input_ids = torch.full((num_blocks, max_block), mask_token_id, dtype=torch.long)
    input_ids[:, 0] = tokens[anchors]
    labels = torch.full((num_blocks, max_block), -100, dtype=torch.long)
    labels[has_label] = tokens[slot_pos[has_label]]
    weights = torch.exp(-(offset.float() - 1).clamp_min(0) / decay)[None, :].expand(num_blocks, -1) * has_label

    ctx_visible = torch.arange(length)[None, None, :] < anchors[:, None, None]  # (n, 1, ctx)
    ctx_visible = ctx_visible.expand(-1, max_block, -1)
    block_of = torch.arange(num_blocks).repeat_interleave(max_block)  # (Q,)
    same_block = block_of[:, None] == block_of[None, :]
    key_real = real.reshape(-1)[None, :]
    # padding slots (beyond their block's size) see their own block only, so no row is empty
    mask = torch.cat([ctx_visible.reshape(num_blocks * max_block, length) & real.reshape(-1, 1), same_block & key_real], dim=1)
    return BlockBatch(
        input_ids=input_ids.reshape(-1),
        position_ids=torch.cat([torch.arange(length), slot_pos.reshape(-1)]),
        attention_mask=mask,
        labels=labels.reshape(-1),
        weights=weights.reshape(-1),
    )


def block_loss(
    drafter: BlockDrafter,
    embedding: torch.Tensor,
    lm_head: torch.Tensor,
    features: torch.Tensor,
    batch: BlockBatch,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted cross-entropy of the drafter on one sequence's packed blocks.

    embedding, lm_head: the target's (frozen) input embedding and output head weights.
    features: (ctx, len(target_layer_ids) * hidden) the target's states for the sequence.
    Returns the loss and metrics: accuracy at the first drafted position and over all labels.
    """
    device, dtype = features.device, features.dtype
    # the shared embedding and LM head stay frozen: no gradient reaches the target
    noise = F.embedding(batch.input_ids.to(device), embedding.detach()).to(dtype)[None]
    hidden = drafter(
        position_ids=batch.position_ids.to(device)[None],
        attention_mask=batch.attention_mask.to(device)[None, None],
        noise_embedding=noise,
        target_hidden=features[None],
    )[0]
    labelled = batch.labels >= 0
    logits = F.linear(hidden[labelled.to(device)], lm_head.detach().to(dtype)).float()
    labels = batch.labels[labelled].to(device)
    weights = batch.weights[labelled].to(device)
    per_token = F.cross_entropy(logits, labels, reduction="none")
    loss = (per_token * weights).sum() / weights.sum()
    with torch.no_grad():
        correct = logits.argmax(dim=-1) == labels
        first = weights == 1.0  # the first drafted position has weight exp(0)
        metrics = {
            "loss": float(loss.detach()),
            "ce": float(per_token.mean()),
            "acc": float(correct.float().mean()),
            "acc_first": float(correct[first].float().mean()) if first.any() else math.nan,
            "labels": int(labelled.sum()),
        }
    return loss, metrics
