"""A small time-conditioned MLP for 2-D toy data.

The network of chapter 02: it takes a noisy point x_t (B, dim) and its time t (B,) and
returns a vector of the same shape (eps_hat, x0_hat, v or velocity, depending on what the
loss trains it to predict):

    e   = TimeEmbedding(t) [+ Embedding(class_label)]          # (B, hidden)
    h_0 = Linear(x_t)                                           # (B, hidden)
    h_k = SiLU(Linear_k(h_{k-1}) + e),  k = 1, ..., depth       # (B, hidden)
    out = Linear(h_depth)                                       # (B, dim), zero-initialised

The time embedding is added in every layer, so each layer can change its behaviour with the
noise level. The output layer starts at zero, so the untrained network predicts 0, the
best constant guess for eps.

With the defaults (dim=2, hidden=128, depth=3, time_dim=64) the network has 75,010
parameters.

Introduced in chapter 02.

>>> import torch
>>> net = TimeMLP()
>>> sum(p.numel() for p in net.parameters())
75010
>>> net(torch.zeros(5, 2), torch.rand(5)).shape
torch.Size([5, 2])
"""

from __future__ import annotations

import torch
from torch import nn

from course_lib.networks.embeddings import TimeEmbedding, resolve_class_labels
from course_lib.validation import check_positive_int as _check_positive_int

__all__ = ["TimeMLP"]


class TimeMLP(nn.Module):
    """Denoising MLP for points in R^dim, conditioned on t and optionally on a class label.

    Args:
        dim: dimension of the data x (2 for the toy sets).
        hidden: width of every hidden layer.
        depth: number of hidden Linear + SiLU layers after the input layer.
        time_dim: size of the sinusoidal time features (positive, even).
        num_classes: None for an unconditional net; otherwise labels 0..num_classes-1 are
            embedded, and the extra index ``num_classes`` (``self.null_label``) is the "no
            label" used for classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598).

    Introduced in chapter 02.
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 128,
        depth: int = 3,
        time_dim: int = 64,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        _check_positive_int("dim", dim)
        _check_positive_int("hidden", hidden)
        _check_positive_int("depth", depth)
        _check_positive_int("time_dim", time_dim)
        if time_dim % 2:
            raise ValueError(f"time_dim must be even, got {time_dim}")
        if num_classes is not None:
            _check_positive_int("num_classes", num_classes)
        self.dim = dim
        self.num_classes = num_classes
        self.null_label = num_classes
        self.time_embed = TimeEmbedding(time_dim, hidden)
        self.class_embed = (
            nn.Embedding(num_classes + 1, hidden) if num_classes is not None else None
        )
        self.input = nn.Linear(dim, hidden)
        self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.output = nn.Linear(hidden, dim)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Network output for x_t (B, dim) at times t (B,) -> (B, dim).

        Args:
            x_t: noisy points, shape (B, dim).
            t: times in [0, 1], shape (B,).
            class_labels: (B,) integer labels in [0, num_classes], where ``num_classes`` is
                the null label; None means unconditional (the null label for a conditional
                net). Must be None for an unconditional net.
        """
        if not isinstance(x_t, torch.Tensor) or x_t.ndim != 2 or x_t.shape[1] != self.dim:
            shape = tuple(x_t.shape) if isinstance(x_t, torch.Tensor) else type(x_t).__name__
            raise ValueError(f"x_t must have shape (B, {self.dim}), got {shape}")
        batch = x_t.shape[0]
        if not isinstance(t, torch.Tensor) or t.shape != (batch,):
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"t must have shape ({batch},) to match x_t, got {shape}")
        emb = self.time_embed(t)  # (B, hidden)
        if self.class_embed is not None:
            labels = resolve_class_labels(class_labels, batch, self.num_classes, x_t.device)
            emb = emb + self.class_embed(labels)  # (B, hidden)
        elif class_labels is not None:
            raise ValueError(
                "class_labels were given but this TimeMLP is unconditional (num_classes=None)"
            )
        h = self.input(x_t)  # (B, hidden)
        for layer in self.layers:
            h = nn.functional.silu(layer(h) + emb)  # (B, hidden)
        return self.output(h)  # (B, dim)

