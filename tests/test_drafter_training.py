"""The drafter's training objective sees exactly what decoding shows it."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from drafters import greedy_sequence, overfit_drafter, target_features

from bp_rl import BlockDrafter, speculative_generate
from bp_rl.drafter_training import DraftVocabulary, block_loss, drafts_at_anchors, sample_blocks, warm_start
from bp_rl.traces import estimated_acceptance


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
        )[0]
    slots = batch.position_ids[len(tokens) :]
    starts = (batch.offsets == 0).nonzero()[:, 0].tolist()
    assert len(starts) == 6
    for j, start in enumerate(starts):
        end = starts[j + 1] if j + 1 < len(starts) else len(slots)
        a, b = int(slots[start]), end - start
        assert batch.input_ids[start] == tokens[a] and (batch.input_ids[start + 1 : end] == drafter.mask_token_id).all()
        block = torch.tensor([int(tokens[a])] + [drafter.mask_token_id] * (b - 1))
        with torch.no_grad():
            alone = drafter(
                position_ids=torch.arange(0, a + b)[None],
                noise_embedding=F.embedding(block, embedding)[None],
                target_hidden=feats[None, :a],
            )[0]
        torch.testing.assert_close(packed[start:end], alone, rtol=1e-4, atol=1e-4)


def test_labels_and_weights_follow_the_block():
    tokens = torch.arange(100, 130)
    batch = sample_blocks(tokens, 10, num_blocks=20, max_block=16, mask_token_id=0, generator=torch.Generator().manual_seed(2), decay=7.0)
    slots = batch.position_ids[30:]
    first = batch.offsets == 0  # each block's anchor slot
    anchors = slots[first]
    assert len(anchors) == 20 and len(set(anchors.tolist())) == 20  # distinct anchors
    assert (anchors >= 9).all() and (anchors <= 28).all()  # anchors leave room for a label
    assert (batch.labels[first] == -100).all()  # the anchor itself is given, not predicted
    has = batch.labels >= 0
    assert (batch.labels[has] == 100 + slots[has]).all()  # slot p predicts the token at anchor + p
    assert (slots - anchors[first.long().cumsum(0) - 1] == batch.offsets).all()
    assert torch.allclose(batch.weights[has], torch.exp(-(batch.offsets[has] - 1) / 7.0))
    assert (batch.weights[~has] == 0).all()
    assert (batch.label_positions[has] == slots[has] - 1).all()


def test_sequence_without_room_for_a_block_is_rejected():
    with pytest.raises(ValueError, match="no room for a block"):
        sample_blocks(torch.arange(5), 5, 2, 4, 0, torch.Generator())


def test_a_few_steps_lower_the_loss(tiny_target):
    drafter = BlockDrafter.for_target(tiny_target, num_layers=1, block_size=8, seed=0).float()
    tokens = torch.randint(2, 64, (48,), generator=torch.Generator().manual_seed(3))
    feats = target_features(tiny_target, tokens, drafter.target_layer_ids)
    embedding = tiny_target.model.get_input_embeddings().weight
    vocab = DraftVocabulary(drafter)
    optimizer = torch.optim.AdamW(drafter.parameters(), lr=3e-3)
    losses = []
    for step in range(30):
        batch = sample_blocks(tokens, 1, 8, 8, drafter.mask_token_id, torch.Generator().manual_seed(step % 3))
        loss, _ = block_loss(drafter, embedding, vocab, feats, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]
    assert all(p.grad is None for p in tiny_target.model.parameters())


@pytest.mark.parametrize("block_size", [4, 8])
def test_estimated_acceptance_equals_real_decoding(tiny_target, block_size):
    """At T=0 the packed estimate is the decode's acceptance sequence, cycle for cycle."""
    prompt, new = [5, 6, 7, 8, 9], 40
    tokens = greedy_sequence(tiny_target, prompt, new)
    drafter = overfit_drafter(tiny_target, tokens, len(prompt))
    feats = target_features(tiny_target, tokens, drafter.target_layer_ids)
    embedding = tiny_target.model.get_input_embeddings().weight
    vocab = DraftVocabulary(drafter)
    estimate = estimated_acceptance(drafter, embedding, vocab, feats, tokens, len(prompt), block_size)
    live = speculative_generate(tiny_target, drafter, prompt, block_size, max_new_tokens=new, stop_token_ids=[]).stats.acceptance_lengths
    assert estimate == live
    assert max(live) > 1 and min(live) < block_size  # a test that partial acceptance can fail


def test_soft_labels_outside_the_draft_vocabulary_are_left_out(tiny_target):
    tokens = greedy_sequence(tiny_target, [5, 6, 7], 20)
    drafter = BlockDrafter.for_target(tiny_target, num_layers=1, block_size=8, seed=0).float()
    drafter.set_draft_vocabulary(torch.arange(0, 64, 2))
    feats = target_features(tiny_target, tokens, drafter.target_layer_ids)
    with torch.no_grad():
        logits = tiny_target.model(tokens[None]).logits[0]
    top = logits.topk(8, dim=-1)
    vocab = DraftVocabulary(drafter)
    embedding = tiny_target.model.get_input_embeddings().weight
    batch = sample_blocks(tokens, 3, 8, 8, drafter.mask_token_id, torch.Generator().manual_seed(0))
    loss, metrics = block_loss(drafter, embedding, vocab, feats, batch, (top.indices, top.values), kl_weight=0.5)
    assert torch.isfinite(loss) and metrics["labels"] == int(((batch.labels >= 0) & (batch.labels % 2 == 0)).sum())
    with pytest.raises(ValueError, match="needs soft labels"):
        block_loss(drafter, embedding, vocab, feats, batch, None, kl_weight=0.5)


def test_a_deeper_drafter_warm_started_drafts_what_its_source_drafts(tiny_target):
    tokens = greedy_sequence(tiny_target, [5, 6, 7], 30)
    source = overfit_drafter(tiny_target, tokens, 3)
    deeper = BlockDrafter.for_target(tiny_target, num_layers=len(source.layers) + 1, block_size=source.max_block_size,
                                     target_layer_ids=list(source.target_layer_ids), seed=5).float()
    deeper.set_draft_vocabulary(torch.arange(0, 64, 2))  # the run's own vocabulary is kept
    warm_start(deeper, source)
    assert torch.equal(deeper.draft_token_ids, torch.arange(0, 64, 2))
    deeper.set_draft_vocabulary(None)  # the source's (full) vocabulary, to compare their drafts
    feats = target_features(tiny_target, tokens, source.target_layer_ids)
    embedding = tiny_target.model.get_input_embeddings().weight
    anchors = torch.arange(3, 25)
    outputs = [drafts_at_anchors(d, embedding, DraftVocabulary(d), feats, tokens, anchors, 6) for d in (source, deeper)]
    assert torch.equal(outputs[0][0], outputs[1][0])  # the same drafts ...
    torch.testing.assert_close(outputs[0][1], outputs[1][1])  # ... with the same confidence: the extra layer starts as an identity
    assert outputs[0][0].any()  # the overfit source drafts some right tokens: the comparison can fail
    # training moves the extra layer off the identity: its zeroed projections get a gradient
    batch = sample_blocks(tokens, 3, 8, 6, deeper.mask_token_id, torch.Generator().manual_seed(0))
    block_loss(deeper, embedding, DraftVocabulary(deeper), feats, batch)[0].backward()
    assert deeper.layers[-1].mlp.down_proj.weight.grad.abs().sum() > 0


def test_a_warm_start_from_a_deeper_or_other_drafter_is_refused(tiny_target):
    source = BlockDrafter.for_target(tiny_target, num_layers=2, block_size=8, target_layer_ids=[0, 1], seed=0)
    shallower = BlockDrafter.for_target(tiny_target, num_layers=1, block_size=8, target_layer_ids=[0, 1], seed=0)
    with pytest.raises(ValueError, match=r"of 1 layers from a deeper one \(2 layers\)"):
        warm_start(shallower, source)
    other = BlockDrafter.for_target(tiny_target, num_layers=2, block_size=8, target_layer_ids=[0], seed=0)
    with pytest.raises(ValueError, match=r"reading target layers \[0\] from one reading \[0, 1\]"):
        warm_start(other, source)
