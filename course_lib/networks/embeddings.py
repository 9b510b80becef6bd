"""Sinusoidal time embedding: how a network is told the time t.

A network that denoises at every noise level must know the level. Feeding the bare
number t works poorly; instead t is mapped to sines and cosines at geometrically spaced
frequencies, the positional encoding of the Transformer (Vaswani et al. 2017,
arXiv:1706.03762, Section 3.5) that DDPM reused for its timestep (Ho et al. 2020,
arXiv:2006.11239, Appendix B):

    omega_i = max_period ** (-i / half),          i = 0, ..., half - 1,  half = dim / 2
    emb(t)  = [sin(scale * t * omega_0), ..., sin(scale * t * omega_{half-1}),
               cos(scale * t * omega_0), ..., cos(scale * t * omega_{half-1})]

The course's t lies in [0, 1]; DDPM's integer step n lies in {0, ..., 999}. ``scale = 1000``
makes scale * t span the same range as n, so the embedding sees the same frequencies as
DDPM's.

Introduced in chapter 03.

>>> import torch
>>> emb = sinusoidal_embedding(torch.tensor([0.0, 0.5]), dim=8)
>>> emb.shape
torch.Size([2, 8])
>>> emb[0].tolist()  # t = 0: every sine is 0, every cosine is 1
[0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["sinusoidal_embedding", "TimeEmbedding", "resolve_class_labels"]


def sinusoidal_embedding(
    t: torch.Tensor, dim: int, max_period: float = 10000.0, scale: float = 1000.0
) -> torch.Tensor:
    """Sinusoidal embedding of times t (Vaswani et al. 2017, Sec. 3.5; Ho et al. 2020, App. B).

    emb(t) = [sin(scale * t * omega_i)]_i ++ [cos(scale * t * omega_i)]_i with
    omega_i = max_period ** (-i / (dim / 2)), i = 0, ..., dim / 2 - 1.

    Args:
        t: times t in [0, 1], shape (B,). Values outside [0, 1] are embedded as well
            (the formula is defined for every real number); only the shape is checked.
        dim: embedding size, a positive even int.
        max_period: the longest period, in units of scale * t (10000 as in the Transformer).
        scale: factor applied to t; 1000 maps t in [0, 1] onto DDPM's step range.

    Returns:
        emb, shape (B, dim), float32 (or t's dtype when t is float64).

    Introduced in chapter 03.
    """
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"t must be a torch.Tensor of shape (B,), got {type(t).__name__}")
    if t.ndim != 1:
        raise ValueError(f"t must have shape (B,), got shape {tuple(t.shape)}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0 or dim % 2 != 0:
        raise ValueError(f"dim must be a positive even int, got {dim!r}")
    if not max_period > 1.0:
        raise ValueError(f"max_period must be > 1, got {max_period!r}")
    if not scale > 0.0:
        raise ValueError(f"scale must be > 0, got {scale!r}")
    dtype = t.dtype if t.dtype == torch.float64 else torch.float32
    half = dim // 2
    i = torch.arange(half, device=t.device, dtype=dtype)  # (half,)
    omega = torch.exp(-math.log(max_period) * i / half)  # (half,)
    angle = scale * t.to(dtype)[:, None] * omega[None, :]  # (B, half)
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=1)  # (B, dim)


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding followed by a two-layer MLP: t -> (B, out_dim).

    emb = Linear(SiLU(Linear(sinusoidal_embedding(t, sinusoidal_dim)))), the time network of
    DDPM (Ho et al. 2020, App. B). The plain ``nn.Linear`` layers let a LoRA wrapper replace them.

    Args:
        sinusoidal_dim: size of the sinusoidal features (positive, even).
        out_dim: size of the returned embedding.
        scale: see :func:`sinusoidal_embedding`.

    Introduced in chapter 03.
    """

    def __init__(self, sinusoidal_dim: int, out_dim: int, scale: float = 1000.0) -> None:
        super().__init__()
        if (
            isinstance(sinusoidal_dim, bool)
            or not isinstance(sinusoidal_dim, int)
            or sinusoidal_dim <= 0
            or sinusoidal_dim % 2
        ):
            raise ValueError(f"sinusoidal_dim must be a positive even int, got {sinusoidal_dim!r}")
        if isinstance(out_dim, bool) or not isinstance(out_dim, int) or out_dim <= 0:
            raise ValueError(f"out_dim must be a positive int, got {out_dim!r}")
        self.sinusoidal_dim = sinusoidal_dim
        self.scale = scale
        self.linear_1 = nn.Linear(sinusoidal_dim, out_dim)
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = sinusoidal_embedding(t, self.sinusoidal_dim, scale=self.scale)  # (B, sinusoidal_dim)
        emb = emb.to(self.linear_1.weight.dtype)
        return self.linear_2(nn.functional.silu(self.linear_1(emb)))  # (B, out_dim)


def resolve_class_labels(
    class_labels: torch.Tensor | None,
    batch: int,
    num_classes: int,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Check class labels for a conditional network; None becomes the null label.

    Conditional networks of the course embed num_classes + 1 labels: 0..num_classes-1 are the
    classes and ``num_classes`` is the null ("no label") entry that classifier-free guidance
    trains by label dropout (Ho & Salimans 2022, arXiv:2207.12598, Sec. 3.2).

    Args:
        class_labels: integer tensor of shape (B,) with values in [0, num_classes], or None.
        batch: the batch size B expected.
        num_classes: number of real classes.
        device: where to create the null labels when class_labels is None.

    Returns:
        labels, shape (B,), dtype long.

    Introduced in chapter 12.

    >>> resolve_class_labels(None, batch=3, num_classes=10).tolist()
    [10, 10, 10]
    """
    if class_labels is None:
        return torch.full((batch,), num_classes, dtype=torch.long, device=device)
    if not isinstance(class_labels, torch.Tensor) or class_labels.shape != (batch,):
        shape = (
            tuple(class_labels.shape)
            if isinstance(class_labels, torch.Tensor)
            else type(class_labels).__name__
        )
        raise ValueError(f"class_labels must have shape ({batch},), got {shape}")
    dtype = class_labels.dtype
    if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
        raise ValueError(f"class_labels must be an integer tensor, got dtype {dtype}")
    if batch and (int(class_labels.min()) < 0 or int(class_labels.max()) > num_classes):
        raise ValueError(
            f"class_labels must lie in [0, {num_classes}] ({num_classes} is the null label), "
            f"got values in [{int(class_labels.min())}, {int(class_labels.max())}]"
        )
    return class_labels.long()
