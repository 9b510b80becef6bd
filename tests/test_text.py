"""The tokenizer, the text encoder and the tiny CLIP's loss (chapter 15)."""

import math

import pytest
import torch
from torch.nn import functional as F

from course_lib.data.shapes import caption, shapes
from course_lib.text import (EOS, MAX_TOKENS, PAD, VOCAB, ImageEncoder, TextEncoder, TinyCLIP, all_captions,
                             clip_loss, clip_score, detokenize, retrieval_accuracy, tokenize,
                             train_tiny_clip)


def test_every_shapes_caption_round_trips_through_the_tokenizer():
    captions = all_captions()
    assert len(set(captions)) == 48 and len(VOCAB) == 15  # <pad>, <eos>, "a", 2 sizes, 6 colours, 4 shapes
    ids, mask = tokenize(captions)
    assert ids.shape == (48, MAX_TOKENS)
    assert [detokenize(row) for row in ids] == captions
    assert (ids[:, 4] == EOS).all() and (ids[:, 5] == PAD).all() and mask[:, :5].all()
    # the index convention of all_captions
    assert captions[(2 * 6 + 3) * 2 + 1] == caption(2, 3, 1)


def test_tokenizer_errors_say_what_was_expected():
    with pytest.raises(ValueError, match=r"unknown word\(s\) \['purple'\]"):
        tokenize(["a purple circle"])
    with pytest.raises(ValueError, match="single string"):
        tokenize("a red circle")
    with pytest.raises(ValueError, match="caption 1 is empty"):
        tokenize(["a red circle", "  "])
    with pytest.raises(ValueError, match="at most 5 fit"):
        tokenize(["a small red circle circle circle"])
    with pytest.raises(ValueError, match="<eos>"):
        tokenize(["a <eos>"])  # special tokens are not words


def test_padding_does_not_change_the_real_tokens():
    torch.manual_seed(0)
    enc = TextEncoder(dim=16, depth=2, num_heads=2).eval()
    ids, _ = tokenize(["a red circle"])
    short = ids[:, :4]  # "a red circle <eos>" without the pads
    with torch.no_grad():
        full, cut = enc(ids), enc(short)
    assert torch.allclose(full[:, :4], cut, atol=1e-6)
    assert torch.equal(TextEncoder.pool(full, ids), full[:, 3])


def test_encoders_check_their_inputs():
    with pytest.raises(ValueError, match="num_heads must divide dim"):
        TextEncoder(dim=10, num_heads=4)
    enc = TextEncoder(dim=8, depth=1, num_heads=2)
    with pytest.raises(ValueError, match="int64"):
        enc(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="at most 6 tokens"):
        enc(torch.zeros(1, 7, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        ImageEncoder()(torch.zeros(2, 1, 16, 16))


def test_clip_loss_is_clips_symmetric_cross_entropy():
    g = torch.Generator().manual_seed(0)
    u = F.normalize(torch.randn(5, 4, generator=g), dim=-1)
    v = F.normalize(torch.randn(5, 4, generator=g), dim=-1)
    logits = 3.0 * u @ v.T
    labels = torch.arange(5)
    clip = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    assert torch.allclose(clip_loss(u, v, 3.0), clip, atol=1e-6)
    with pytest.raises(ValueError, match=r"both be \(B, D\)"):
        clip_loss(u, v[:3], 3.0)


def test_repeated_captions_need_no_soft_targets():
    """Equal captions have equal embeddings, so spreading the targets over them changes nothing."""
    torch.manual_seed(0)
    model = TinyCLIP(TextEncoder(dim=16, depth=1, num_heads=2), ImageEncoder(dim=16, width=8), embed_dim=8)
    batch = shapes(24, generator=torch.Generator().manual_seed(3))
    ids, _ = tokenize(["a red circle"] * 8 + batch.captions[8:])  # many repeats
    same = (ids[:, None, :] == ids[None, :, :]).all(dim=-1)
    assert int(same.sum()) > 24 + 50

    def soft_loss(m):
        u, v = m.encode_image(batch.images), m.encode_text(ids)
        logits = m.scale() * u @ v.T
        p = same.float() / same.float().sum(dim=1, keepdim=True)
        return 0.5 * (F.cross_entropy(logits, p) + F.cross_entropy(logits.T, p.T))

    losses, grads = [], []
    for fn in (lambda m: m.loss(batch.images, ids), soft_loss):
        model.zero_grad()
        loss = fn(model)
        loss.backward()
        losses.append(float(loss.detach()))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_retrieval_and_clip_score():
    v = torch.eye(4)
    u = torch.eye(4)[[0, 1, 3, 3]]
    assert retrieval_accuracy(u, v, torch.arange(4)) == 0.75
    assert torch.allclose(clip_score(u, v), torch.tensor([2.5, 2.5, 0.0, 2.5]))
    assert float(clip_score(torch.tensor([[1.0, 0.0]]), torch.tensor([[-1.0, 0.0]]))) == 0.0


def test_tiny_clip_learns_the_colours_in_a_few_steps():
    """Colour is the easiest attribute; 60 steps take it far above chance (1/6)."""
    torch.manual_seed(0)
    small = TinyCLIP(TextEncoder(dim=32, depth=1, num_heads=2), ImageEncoder(dim=32, width=16), embed_dim=16)
    model = train_tiny_clip(small, steps=60, batch_size=64, lr=3e-3, seed=0)
    assert not model.training
    test = shapes(300, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pred = (model.encode_image(test.images) @ model.encode_text(tokenize(all_captions())[0]).T).argmax(1)
    colour_acc = float(((pred // 2) % 6 == test.color_ids).float().mean())
    assert colour_acc > 0.6, colour_acc
    with pytest.raises(ValueError, match="at least 2 pairs"):
        train_tiny_clip(small, steps=1, batch_size=1)
