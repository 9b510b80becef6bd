r"""Text for the shapes: a word tokenizer, a tiny text encoder and a CLIP in miniature (chapter 15).

Stable Diffusion conditions its U-Net on the token outputs of a frozen text encoder that was
trained contrastively against an image encoder (CLIP, Radford et al. 2021, arXiv:2103.00020).
The course does the same at the scale of ``shapes``: the captions "a {size} {colour} {shape}" use
13 words, so the tokenizer is a fixed word list (no download, no byte-pair merges), and both
encoders train in a minute on a CPU.

The contrastive loss (InfoNCE; van den Oord et al. 2018, arXiv:1807.03748; CLIP's Fig. 3): with
unit-norm image and text embeddings u_i, v_j of a batch and a learnt temperature ``logit_scale`` s,

    L = 1/2 [ CE(s U V^T, P) + CE(s V U^T, P^T) ],

where CE is the cross-entropy against the identity targets P = I (the i-th caption belongs to the
i-th image). ``shapes`` has only 48 distinct captions, so a batch repeats captions. That is harmless
here: equal captions get equal embeddings, so spreading each row's target over every equal caption
(the "supervised contrastive" targets of Khosla et al. 2020, arXiv:2004.11362) gives the same loss
and the same gradients (tests/test_text.py checks it; chapter 15 derives it).

>>> ids, mask = tokenize(["a small red circle", "a blue square"])
>>> ids.shape, mask[1].tolist()
(torch.Size([2, 6]), [True, True, True, True, False, False])
>>> detokenize(ids[1])
'a blue square'
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from course_lib.data.shapes import COLOR_NAMES, SHAPE_NAMES, SIZE_NAMES, caption
from course_lib.validation import check_positive_int

__all__ = ["VOCAB", "MAX_TOKENS", "PAD", "EOS", "tokenize", "detokenize", "all_captions", "TextEncoder",
           "ImageEncoder", "TinyCLIP", "clip_loss", "retrieval_accuracy", "clip_score", "train_tiny_clip", "NULL_CAPTION",
           "caption_index", "null_ids", "caption_ids", "caption_tokens"]

PAD, EOS = 0, 1
VOCAB: tuple[str, ...] = ("<pad>", "<eos>", "a", *SIZE_NAMES, *COLOR_NAMES, *SHAPE_NAMES)
MAX_TOKENS = 6  # "a {size} {colour} {shape}" + <eos>, and one spare
_INDEX = {word: i for i, word in enumerate(VOCAB)}


def tokenize(captions: Sequence[str], *, max_tokens: int = MAX_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    """Word ids of ``captions``, each ended by <eos> and padded with <pad> to ``max_tokens``.

    Returns:
        ids (B, max_tokens) int64 and mask (B, max_tokens) bool, True on the words and the <eos>.

    Raises:
        ValueError: a word outside ``VOCAB``, an empty caption, or one longer than max_tokens - 1 words.
    """
    if isinstance(captions, str):
        raise ValueError(f"tokenize expects a list of captions, got the single string {captions!r}")
    check_positive_int("max_tokens", max_tokens)
    if len(captions) == 0:
        raise ValueError("tokenize expects at least one caption, got an empty list")
    ids = torch.full((len(captions), max_tokens), PAD, dtype=torch.int64)
    for row, text in enumerate(captions):
        words = str(text).lower().split()
        if not words:
            raise ValueError(f"caption {row} is empty")
        if len(words) > max_tokens - 1:
            raise ValueError(f"caption {row} {text!r} has {len(words)} words; at most {max_tokens - 1} fit "
                             f"in {max_tokens} tokens with <eos>")
        unknown = [w for w in words if w not in _INDEX or _INDEX[w] in (PAD, EOS)]
        if unknown:
            raise ValueError(f"caption {row} {text!r}: unknown word(s) {unknown}; the vocabulary is "
                             f"{list(VOCAB[2:])}")
        ids[row, : len(words)] = torch.tensor([_INDEX[w] for w in words])
        ids[row, len(words)] = EOS
    return ids, ids != PAD


def detokenize(ids: torch.Tensor) -> str:
    """The caption of one row of word ids (stops at <eos>)."""
    words = []
    for i in ids.tolist():
        if i == EOS:
            break
        if i != PAD:
            words.append(VOCAB[i])
    return " ".join(words)


def all_captions() -> list[str]:
    """The 48 captions ``shapes`` can carry, in (shape, colour, size) order: index = (label * 6 + colour) * 2 + size."""
    return [caption(label, colour, size) for label in range(len(SHAPE_NAMES)) for colour in range(len(COLOR_NAMES))
            for size in range(len(SIZE_NAMES))]


NULL_CAPTION = 48  # the row after the 48 captions: the empty caption, the "no prompt" of caption dropout


def caption_index(labels: torch.Tensor, color_ids: torch.Tensor, size_ids: torch.Tensor) -> torch.Tensor:
    """The index into :func:`all_captions` of each (shape, colour, size): (label * 6 + colour) * 2 + size."""
    return (labels.long() * len(COLOR_NAMES) + color_ids.long()) * len(SIZE_NAMES) + size_ids.long()


def null_ids(n: int, *, max_tokens: int = MAX_TOKENS) -> torch.Tensor:
    """Word ids (n, max_tokens) of the empty caption: <eos> then padding. :func:`tokenize` refuses an
    empty caption, because a learner who writes one has usually made a mistake; the "no prompt" of
    classifier-free guidance is asked for by name."""
    check_positive_int("n", n)
    ids = torch.full((n, max_tokens), PAD, dtype=torch.int64)
    ids[:, 0] = EOS
    return ids


def caption_ids() -> torch.Tensor:
    """Word ids (49, MAX_TOKENS) of the 48 captions of :func:`all_captions` and, last, the empty one."""
    return torch.cat([tokenize(all_captions())[0], null_ids(1)])


def caption_tokens(encoder: "TextEncoder") -> torch.Tensor:
    """The frozen encoder's tokens (49, MAX_TOKENS, dim) for :func:`caption_ids`: the whole context a
    text-conditioned shapes model can be given, computed once. Row ``NULL_CAPTION`` is the empty caption."""
    with torch.no_grad():
        ids = caption_ids().to(next(encoder.parameters()).device)
        return encoder(ids).detach()


class TextEncoder(nn.Module):
    """A small transformer over word ids: tokens (B, L, dim) for cross-attention, and one pooled vector.

    Word and learnt position embeddings, ``depth`` pre-norm self-attention blocks (padding masked),
    a final LayerNorm. The pooled vector is the output at <eos>, as CLIP's text tower pools at its
    end-of-text token. No dropout, so the encoder is deterministic.

    Args:
        dim: width of the tokens.
        depth: number of transformer blocks.
        num_heads: attention heads (must divide dim).
        max_tokens: longest input.
    """

    def __init__(self, dim: int = 64, depth: int = 2, num_heads: int = 4, max_tokens: int = MAX_TOKENS) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("depth", depth), ("num_heads", num_heads), ("max_tokens", max_tokens)):
            check_positive_int(name, value)
        if dim % num_heads:
            raise ValueError(f"num_heads must divide dim, got dim={dim}, num_heads={num_heads}")
        self.dim, self.max_tokens = dim, max_tokens
        self.embed = nn.Embedding(len(VOCAB), dim, padding_idx=PAD)
        self.position = nn.Parameter(torch.randn(max_tokens, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, num_heads, dim_feedforward=2 * dim, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token features (B, L, dim) of word ids (B, L); ``mask`` (B, L) True on real tokens (default ids != <pad>)."""
        if ids.ndim != 2 or ids.dtype != torch.int64:
            raise ValueError(f"ids must be an int64 tensor (B, L), got {ids.dtype} of shape {tuple(ids.shape)}")
        if ids.shape[1] > self.max_tokens:
            raise ValueError(f"at most {self.max_tokens} tokens, got {ids.shape[1]}")
        mask = ids != PAD if mask is None else mask
        h = self.embed(ids) + self.position[: ids.shape[1]]
        h = self.blocks(h, src_key_padding_mask=~mask)
        return self.norm(h)

    @staticmethod
    def pool(tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The token at each row's <eos> (B, dim)."""
        at = (ids == EOS).int().argmax(dim=1)  # (B,)
        return tokens[torch.arange(tokens.shape[0], device=tokens.device), at]


class ImageEncoder(nn.Module):
    """Three convolutions and a global average: an image (B, C, H, W) to one vector (B, dim)."""

    def __init__(self, in_channels: int = 3, dim: int = 64, width: int = 32) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("dim", dim), ("width", width)):
            check_positive_int(name, value)
        self.in_channels, self.dim = in_channels, dim
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.SiLU(),
        )
        self.out = nn.Linear(2 * width, dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f"images must be (B, {self.in_channels}, H, W), got {tuple(images.shape)}")
        return self.out(self.net(images).mean(dim=(2, 3)))


class TinyCLIP(nn.Module):
    """A text and an image encoder with linear projections into one space and a learnt temperature.

    ``logit_scale`` starts at log(1 / 0.07) and is clamped to at most log(100), as in CLIP (Radford
    et al. 2021, Sec. 2.5).
    """

    def __init__(self, text: TextEncoder | None = None, image: ImageEncoder | None = None,
                 embed_dim: int = 32) -> None:
        super().__init__()
        check_positive_int("embed_dim", embed_dim)
        self.text = text if text is not None else TextEncoder()
        self.image = image if image is not None else ImageEncoder()
        self.text_proj = nn.Linear(self.text.dim, embed_dim, bias=False)
        self.image_proj = nn.Linear(self.image.dim, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """Unit-norm caption embeddings (B, embed_dim)."""
        return F.normalize(self.text_proj(TextEncoder.pool(self.text(ids), ids)), dim=-1)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings (B, embed_dim)."""
        return F.normalize(self.image_proj(self.image(images)), dim=-1)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=math.log(100.0)).exp()

    def loss(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """:func:`clip_loss` of a batch of images and their captions' ids."""
        return clip_loss(self.encode_image(images), self.encode_text(ids), self.scale())


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE between unit-norm embeddings (B, D), row i of each belonging together.

    ``logit_scale`` is s > 0, the inverse temperature (a number or a 0-d tensor); see the module docstring.
    """
    if image_emb.ndim != 2 or image_emb.shape != text_emb.shape:
        raise ValueError(f"image_emb and text_emb must both be (B, D), got {tuple(image_emb.shape)} and "
                         f"{tuple(text_emb.shape)}")
    labels = torch.arange(image_emb.shape[0], device=image_emb.device)
    logits = torch.as_tensor(logit_scale, dtype=image_emb.dtype) * image_emb @ text_emb.T  # (B, B)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def retrieval_accuracy(image_emb: torch.Tensor, caption_emb: torch.Tensor, true_index: torch.Tensor) -> float:
    """Share of images whose most similar caption (of ``caption_emb``, (K, D)) is ``true_index`` (B,)."""
    if image_emb.ndim != 2 or caption_emb.ndim != 2 or image_emb.shape[1] != caption_emb.shape[1]:
        raise ValueError(f"image_emb (B, D) and caption_emb (K, D) must share D, got {tuple(image_emb.shape)} "
                         f"and {tuple(caption_emb.shape)}")
    return float(((image_emb @ caption_emb.T).argmax(dim=1) == true_index).float().mean())


def clip_score(image_emb: torch.Tensor, text_emb: torch.Tensor, *, w: float = 2.5) -> torch.Tensor:
    """CLIPScore (Hessel et al. 2021, arXiv:2104.08718, eq. 1): w max(cos(u, v), 0) per pair (B,)."""
    return w * (F.normalize(image_emb, dim=-1) * F.normalize(text_emb, dim=-1)).sum(dim=-1).clamp(min=0)


def train_tiny_clip(model: TinyCLIP | None = None, *, steps: int = 1500, batch_size: int = 256, lr: float = 2e-3,
                    seed: int = 0, device: str | torch.device = "cpu") -> TinyCLIP:
    """Train a :class:`TinyCLIP` with :func:`clip_loss` on fresh batches of ``shapes`` and their captions.

    Every batch is drawn from ``torch.Generator().manual_seed(seed)``; Adam with the learning rate decayed
    linearly to 0 (the course's :func:`~course_lib.classifier.fit_classifier` loop). Returns the model in
    eval mode. Introduced in chapter 15.
    """
    from course_lib.classifier import fit_classifier
    from course_lib.data.shapes import shapes

    for name, value in (("steps", steps), ("batch_size", batch_size)):
        check_positive_int(name, value)
    if batch_size < 2:
        raise ValueError(f"a contrastive batch needs at least 2 pairs, got batch_size={batch_size}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    model = (model if model is not None else TinyCLIP()).to(device)
    generator = torch.Generator().manual_seed(seed)

    def batch_loss(net: TinyCLIP) -> torch.Tensor:
        batch = shapes(batch_size, generator=generator)
        ids, _ = tokenize(batch.captions)
        return net.loss(batch.images.to(device), ids.to(device))

    return fit_classifier(model, batch_loss, steps=steps, lr=lr)
