"""The drafter's training objective sees exactly what decoding shows it."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from bp_rl import BlockDrafter
from bp_rl.drafter_training import block_loss, sample_blocks


def target_features(target, tokens, layer_ids):
    with torch.no_grad():
        out = target.model(tokens[None], output_hidden_states=True)
    return torch.cat([out.hidden_states[i + 1][0] for i in layer_ids], dim=-1)


def test_packed_blocks_match_one_block_at_a_time(tiny_target):
    """Each packed block's states equal an unpacked forward over its own context: no leaks between blocks."""
    drafter = BlockDrafter.for_target(tiny_target, num_layers=2, block_size=8, seed=0)
    tokens = torch.randint(2, 64, (40,), generator=torch.Generator().manual_seed(0))
    feats = target_features(tiny_target, tokens, drafter.target_layer_ids)
    batch = sample_blocks(tokens, 5, num_blocks=6, max_block=8, mask_token_id=drafter.mask_token_id, generator=torch.Generator().manual_seed(1))
    embedding = tiny_target.model.get_input_embeddings().weight
    with torch.no_grad():
        packed = drafter(
            position_ids=batch.position_ids[None],
            attention_mask=batch.attention_mask[None, None],
            noise_embedding=F.embedding(batch.input_ids, embedding)[None],
            target_hidden=feats[None],
        )[0].view(6, 8, -1)
    anchors = batch.position_ids[len(tokens) :].view(6, 8)[:, 0]
    sizes = (batch.attention_mask[:, len(tokens) :].view(6, 8, 6, 8)[:, 0].sum(dim=(1, 2)))
    for j in range(6):
        a, b = int(anchors[j]), int(sizes[j])
        block = torch.tensor([int(tokens[a])] + [drafter.mask_token_id] * (b - 1))
        with torch.no_grad():
            alone = drafter(
                position_ids=torch.arange(0, a + b)[None],
                noise_embedding=F.embedding(block, embedding)[None],
                target_hidden=feats[None, :a],
            )[0]
        torch.testing.assert_close(packed[j, :b], alone, rtol=1e-4, atol=1e-4)


def test_labels_and_weights_follow_the_block():
    tokens = torch.arange(100, 130)
    batch = sample_blocks(tokens, 10, num_blocks=20, max_block=16, mask_token_id=0, generator=torch.Generator().manual_seed(2), decay=7.0)
    slots = batch.position_ids[30:].view(20, 16)
    labels, weights = batch.labels.view(20, 16), batch.weights.view(20, 16)
    assert (slots[:, 0] >= 9).all() and (slots[:, 0] <= 28).all()  # anchors leave room for a label
    assert (labels[:, 0] == -100).all()  # the anchor itself is given, not predicted
    has = labels >= 0
    assert (labels[has] == 100 + slots[has]).all()  # slot p predicts the token at anchor + p
    assert torch.allclose(weights[has], torch.exp(-(torch.arange(16).expand(20, -1)[has] - 1) / 7.0))
    assert (weights[~has] == 0).all()


def test_sequence_without_room_for_a_block_is_rejected():
    with pytest.raises(ValueError, match="no room for a block"):
        sample_blocks(torch.arange(5), 5, 2, 4, 0, torch.Generator())


def test_a_few_steps_lower_the_loss(tiny_target):
    drafter = BlockDrafter.for_target(tiny_target, num_layers=1, block_size=8, seed=0).float()
    tokens = torch.randint(2, 64, (48,), generator=torch.Generator().manual_seed(3))
    feats = target_features(tiny_target, tokens, drafter.target_layer_ids)
    embedding = tiny_target.model.get_input_embeddings().weight
    head = tiny_target.model.get_output_embeddings().weight
    optimizer = torch.optim.AdamW(drafter.parameters(), lr=3e-3)
    losses = []
    for step in range(30):
        batch = sample_blocks(tokens, 1, 8, 8, drafter.mask_token_id, torch.Generator().manual_seed(step % 3))
        loss, _ = block_loss(drafter, embedding, head, feats, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]
    assert all(p.grad is None for p in tiny_target.model.parameters())
