"""A small U-Net for diffusion on images (8x8 digits up to 28x28 and RGB).

The architecture of DDPM (Ho et al. 2020, arXiv:2006.11239, App. B), itself a PixelCNN++ /
Wide-ResNet style U-Net (Ronneberger et al. 2015, arXiv:1505.04597), with the improvements
of Dhariwal & Nichol 2021 (arXiv:2105.05233, Sec. 3) that cost nothing at this size
(scale-shift time conditioning "AdaGN", multi-head attention):

    emb   = TimeEmbedding(t) [+ Embedding(class_label)]                 # (B, 4 * base)
    h     = conv_in(x_t)                                                # (B, base, H, W)
    down: per level i, num_res_blocks x [ResBlock -> SelfAttention? -> CrossAttention?],
          then a strided-conv Downsample (not after the last level)
    mid:  ResBlock -> SelfAttention -> CrossAttention? -> ResBlock
    up:   per level i (deepest first), num_res_blocks + 1 blocks, each fed
          cat(h, skip) along channels, then a nearest Upsample + conv
    out   = conv_out(SiLU(GroupNorm(h)))                                 # zero-initialised

Skips. ``conv_in``'s output, the output of every down block and of every Downsample are kept
(in that order: the "skip order") and concatenated, last-in first-out, to the inputs of the
up blocks. Odd sizes work: a stride-2 conv maps n to ceil(n / 2) (28 -> 14 -> 7 -> 4) and
each Upsample returns exactly the size of the skip it meets (4 -> 7 -> 14 -> 28).

Hooks for later chapters:

* **Class labels** (chapter 12): ``num_classes`` real classes are embedded in an
  ``nn.Embedding(num_classes + 1, ...)``; the extra index ``num_classes`` (``null_label``) is
  the "no label" of classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598).
  ``class_labels=None`` means the null label.
* **Context** (chapter 15): with ``context_dim`` set, every attention block is followed by a
  cross-attention to ``context`` (B, L, context_dim), as in Stable Diffusion (Rombach et al.
  2022, arXiv:2112.10752, Sec. 3.3). ``context=None`` skips the cross-attention.
* **Extra residuals** (chapter 13, ControlNet, Zhang et al. 2023, arXiv:2302.05543, Sec. 3.2):
  ``extra_residuals`` is a list with one tensor per skip, in skip order, followed by one for
  the middle block's output; each is added to the tensor of the same shape.
  :meth:`UNet.residual_shapes` gives those shapes; :meth:`UNet.encode` with ``hint`` runs
  the encoder of a trainable copy.
* **LoRA** (chapter 14): every weight is a plain ``nn.Conv2d`` or ``nn.Linear``
  (attention uses separate ``to_q``, ``to_k``, ``to_v``, ``to_out`` Linears), so a wrapper
  can replace any of them.

The digits configuration (the defaults: base_channels=32, channel_mults=(1, 2),
num_res_blocks=1, attention at the 4x4 level) has 755,009 parameters.

Introduced in chapter 03.

>>> import torch
>>> net = UNet(in_channels=1)
>>> count_parameters(net)
755009
>>> net(torch.randn(2, 1, 8, 8), torch.rand(2)).shape
torch.Size([2, 1, 8, 8])
>>> [tuple(s) for s in net.residual_shapes(8, 8)]
[(32, 8, 8), (32, 8, 8), (32, 4, 4), (64, 4, 4), (64, 4, 4)]
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from course_lib.networks.embeddings import TimeEmbedding, resolve_class_labels
from course_lib.validation import check_positive_int as _check_positive_int

__all__ = [
    "attention_weights",
    "record_cross_attention",
    "ResBlock",
    "SelfAttention",
    "CrossAttention",
    "Downsample",
    "Upsample",
    "UNetBlock",
    "MidBlock",
    "UNet",
    "multi_head_attention",
    "count_parameters",
    "parameter_table",
]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_groups(groups: int, channels: int, where: str) -> None:
    _check_positive_int("groups", groups)
    if channels % groups:
        raise ValueError(
            f"groups={groups} must divide the number of channels of every GroupNorm, "
            f"but {where} has {channels} channels"
        )


def _shape(value: object) -> object:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


class ResBlock(nn.Module):
    """Residual block with time conditioning (Ho et al. 2020, App. B; Dhariwal & Nichol 2021).

        h   = conv1(SiLU(GroupNorm(x)))                                 # (B, C_out, H, W)
        h   = GroupNorm(h) * (1 + scale) + shift    (scale_shift=True, "AdaGN", eq. in Sec. 3)
              GroupNorm(h + shift)                  (scale_shift=False, DDPM)
              with [scale, shift] = Linear(SiLU(emb))
        h   = conv2(Dropout(SiLU(h)))
        out = skip(x) + h,  skip = 1x1 conv when C_in != C_out, else identity

    Args:
        in_channels: C_in.
        out_channels: C_out.
        emb_dim: size of the time (and class) embedding emb, shape (B, emb_dim).
        groups: number of GroupNorm groups; must divide C_in and C_out.
        dropout: dropout probability before conv2, in [0, 1).
        scale_shift: scale-and-shift (AdaGN) or shift-only time conditioning.

    Introduced in chapter 03.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int,
        groups: int = 8,
        dropout: float = 0.0,
        scale_shift: bool = True,
    ) -> None:
        super().__init__()
        _check_positive_int("in_channels", in_channels)
        _check_positive_int("out_channels", out_channels)
        _check_positive_int("emb_dim", emb_dim)
        _check_groups(groups, in_channels, "the ResBlock input")
        _check_groups(groups, out_channels, "the ResBlock output")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.scale_shift = scale_shift
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_channels * (2 if scale_shift else 1))
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = (
            nn.Conv2d(in_channels, out_channels, 1)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        e = self.emb_proj(F.silu(emb))[:, :, None, None]  # (B, C_out or 2 C_out, 1, 1)
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)  # (B, C_out, 1, 1) each
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))  # (B, C_out, H, W)
        return self.skip(x) + h


def multi_head_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int
) -> torch.Tensor:
    """Scaled dot-product attention with heads (Vaswani et al. 2017, arXiv:1706.03762, eq. 1).

        Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V,  per head, d = C / num_heads

    Args:
        q: queries, shape (B, N, C).
        k: keys, shape (B, L, C).
        v: values, shape (B, L, C).
        num_heads: number of heads; must divide C.

    Returns:
        shape (B, N, C): the heads' outputs concatenated.

    Introduced in chapter 03.

    >>> q = torch.zeros(1, 2, 4); v = torch.arange(12.0).reshape(1, 3, 4)
    >>> multi_head_attention(q, torch.randn(1, 3, 4), v, num_heads=2)  # equal weights: mean of v
    tensor([[[4., 5., 6., 7.],
             [4., 5., 6., 7.]]])
    """
    batch, n, channels = q.shape
    weights = attention_weights(q, k, num_heads)  # (B, heads, N, L)
    d = channels // num_heads
    v = v.reshape(batch, v.shape[1], num_heads, d).transpose(1, 2)  # (B, heads, L, d)
    out = weights @ v  # (B, heads, N, d)
    return out.transpose(1, 2).reshape(batch, n, channels)  # (B, N, C)


def attention_weights(q: torch.Tensor, k: torch.Tensor, num_heads: int) -> torch.Tensor:
    """The attention weights softmax(Q K^T / sqrt(d)) per head, shape (B, heads, N, L): how much each of
    the N queries reads each of the L keys (each row sums to 1). q (B, N, C), k (B, L, C).
    Chapter 15 shows them per caption token."""
    batch, n, channels = q.shape
    if channels % num_heads:
        raise ValueError(f"num_heads={num_heads} must divide the channels, got {channels}")
    d = channels // num_heads
    q = q.reshape(batch, n, num_heads, d).transpose(1, 2)  # (B, heads, N, d)
    k = k.reshape(batch, k.shape[1], num_heads, d).transpose(1, 2)  # (B, heads, L, d)
    return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d), dim=-1)  # (B, heads, N, L)


@contextlib.contextmanager
def record_cross_attention(model: nn.Module):
    """Record the attention weights of every :class:`CrossAttention` layer (not self-attention) of
    ``model`` during the forward passes inside the ``with`` block.

    Yields a list that fills with one dict per layer call: ``name`` (the module's name), ``weights``
    (B, heads, H*W, L) and ``size`` (H, W) of the feature map. Chapter 15's attention maps per token.

    >>> net = UNet(in_channels=4, base_channels=16, channel_mults=(1,), attention_levels=(0,), context_dim=8)
    >>> with record_cross_attention(net) as calls:
    ...     _ = net(torch.randn(2, 4, 4, 4), torch.rand(2), context=torch.randn(2, 3, 8))
    >>> len(calls) > 0, tuple(calls[0]["weights"].shape), calls[0]["size"]
    (True, (2, 4, 16, 3), (4, 4))
    """
    calls: list[dict] = []
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, CrossAttention) and not isinstance(module, SelfAttention):
            def hook(layer, inputs, output, name=name):
                x, context = inputs
                with torch.no_grad():
                    calls.append({"name": name, "weights": layer.attention_weights(x, context).detach(),
                                  "size": tuple(x.shape[-2:])})
            handles.append(module.register_forward_hook(hook))
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


class CrossAttention(nn.Module):
    """Multi-head cross-attention from a feature map to a context sequence, with a residual.

    Rombach et al. 2022 (arXiv:2112.10752), Sec. 3.3: Q = W_Q h, K = W_K c, V = W_V c,

        out = x + to_out(Attention(to_q(GroupNorm(x)), to_k(context), to_v(context)))

    Args:
        channels: C of the feature map (B, C, H, W); num_heads and groups must divide it.
        context_dim: D of the context (B, L, D).
        num_heads: number of attention heads.
        groups: GroupNorm groups.

    Introduced in chapter 15.
    """

    def __init__(
        self, channels: int, context_dim: int, num_heads: int = 4, groups: int = 8
    ) -> None:
        super().__init__()
        _check_positive_int("channels", channels)
        _check_positive_int("context_dim", context_dim)
        _check_positive_int("num_heads", num_heads)
        _check_groups(groups, channels, f"a {type(self).__name__} block")
        if channels % num_heads:
            raise ValueError(
                f"num_heads={num_heads} must divide the channels of every attention block, "
                f"got {channels} channels"
            )
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, channels)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(context_dim, channels)
        self.to_v = nn.Linear(context_dim, channels)
        self.to_out = nn.Linear(channels, channels)

    def _attend(self, x: torch.Tensor, h: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        out = multi_head_attention(
            self.to_q(h), self.to_k(context), self.to_v(context), self.num_heads
        )  # (B, H*W, C)
        out = self.to_out(out)
        return x + out.transpose(1, 2).reshape(batch, channels, height, width)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h = self.norm(x).flatten(2).transpose(1, 2)  # (B, H*W, C)
        return self._attend(x, h, context)

    def attention_weights(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The weights (B, heads, H*W, L) with which each position of x reads each context token."""
        h = self.norm(x).flatten(2).transpose(1, 2)  # (B, H*W, C)
        return attention_weights(self.to_q(h), self.to_k(context), self.num_heads)


class SelfAttention(CrossAttention):
    """Multi-head self-attention over the H*W positions of a feature map, with a residual:
    cross-attention whose context is the feature map itself.

        h   = GroupNorm(x) viewed as (B, H*W, C)
        out = x + to_out(Attention(to_q(h), to_k(h), to_v(h)))

    Args:
        channels: C; num_heads and groups must divide it.
        num_heads: number of attention heads.
        groups: GroupNorm groups.

    Introduced in chapter 03.
    """

    def __init__(self, channels: int, num_heads: int = 4, groups: int = 8) -> None:
        super().__init__(channels, channels, num_heads, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x).flatten(2).transpose(1, 2)  # (B, H*W, C)
        return self._attend(x, h, h)


class Downsample(nn.Module):
    """Halve the resolution with a 3x3 convolution of stride 2: n -> ceil(n / 2).

    Introduced in chapter 03.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        _check_positive_int("channels", channels)
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)  # (B, C, ceil(H/2), ceil(W/2))


class Upsample(nn.Module):
    """Nearest-neighbour upsampling to a given size, then a 3x3 convolution.

    The target size is the size of the skip connection the output will meet, so odd sizes
    round-trip (7 -> 4 -> 7).

    Introduced in chapter 03.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        _check_positive_int("channels", channels)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        x = F.interpolate(x, size=tuple(size), mode="nearest")  # (B, C, *size)
        return self.conv(x)


class UNetBlock(nn.Module):
    """One U-Net block: ResBlock, then optionally SelfAttention and CrossAttention.

    Introduced in chapter 03.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int,
        *,
        attention: bool,
        context_dim: int | None,
        num_heads: int,
        groups: int,
        dropout: float,
        scale_shift: bool,
    ) -> None:
        super().__init__()
        self.res = ResBlock(in_channels, out_channels, emb_dim, groups, dropout, scale_shift)
        self.attn = SelfAttention(out_channels, num_heads, groups) if attention else None
        self.cross_attn = (
            CrossAttention(out_channels, context_dim, num_heads, groups)
            if attention and context_dim is not None
            else None
        )

    def forward(
        self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        h = self.res(x, emb)  # (B, C_out, H, W)
        if self.attn is not None:
            h = self.attn(h)
        if self.cross_attn is not None and context is not None:
            h = self.cross_attn(h, context)
        return h


class MidBlock(nn.Module):
    """The bottleneck: ResBlock -> SelfAttention -> CrossAttention? -> ResBlock.

    Introduced in chapter 03.
    """

    def __init__(
        self,
        channels: int,
        emb_dim: int,
        *,
        attention: bool,
        context_dim: int | None,
        num_heads: int,
        groups: int,
        dropout: float,
        scale_shift: bool,
    ) -> None:
        super().__init__()
        self.block = UNetBlock(
            channels,
            channels,
            emb_dim,
            attention=attention,
            context_dim=context_dim,
            num_heads=num_heads,
            groups=groups,
            dropout=dropout,
            scale_shift=scale_shift,
        )
        self.res = ResBlock(channels, channels, emb_dim, groups, dropout, scale_shift)

    def forward(
        self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.res(self.block(x, emb, context), emb)


class _Level(nn.Module):
    """The blocks at one resolution of the encoder or decoder, and its resampler."""

    def __init__(self, blocks: list[UNetBlock], resample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.resample = resample


# --------------------------------------------------------------------------------------------
# The U-Net
# --------------------------------------------------------------------------------------------


class UNet(nn.Module):
    """Noise-prediction U-Net: (x_t (B, C, H, W), t (B,)) -> (B, out_channels, H, W).

    See the module docstring for the architecture and the hooks for later chapters.

    Args:
        in_channels: C of x_t (1 for digits, 3 for RGB shapes, 4 for latents).
        out_channels: channels of the output; None means in_channels.
        base_channels: channels at full resolution; level i has base_channels * channel_mults[i].
        channel_mults: one multiplier per resolution level; len(channel_mults) - 1 downsamplings.
        num_res_blocks: ResBlocks per level in the encoder (the decoder has one more).
        attention_levels: indices of the levels (0 = full resolution) with self-attention.
        num_heads: attention heads; must divide the channels of every attention level.
        num_classes: None (unconditional) or the number of classes; index num_classes is the
            null label (``self.null_label``) used for classifier-free guidance dropout.
        context_dim: None, or D of a context (B, L, D) attended to after every self-attention.
        groups: GroupNorm groups; must divide base_channels * m for every m in channel_mults.
        dropout: dropout probability inside the ResBlocks.
        mid_attention: self-attention (and cross-attention) in the middle block.
        scale_shift: AdaGN scale-shift time conditioning (True) or DDPM's shift (False).

    Introduced in chapter 03.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int | None = None,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2),
        num_res_blocks: int = 1,
        attention_levels: Sequence[int] = (1,),
        num_heads: int = 4,
        num_classes: int | None = None,
        context_dim: int | None = None,
        groups: int = 8,
        dropout: float = 0.0,
        mid_attention: bool = True,
        scale_shift: bool = True,
    ) -> None:
        super().__init__()
        _check_positive_int("in_channels", in_channels)
        if out_channels is None:
            out_channels = in_channels
        _check_positive_int("out_channels", out_channels)
        _check_positive_int("base_channels", base_channels)
        if base_channels % 2:
            raise ValueError(
                f"base_channels must be even (it is the size of the sinusoidal time "
                f"features), got {base_channels}"
            )
        channel_mults = tuple(channel_mults)
        if not channel_mults or not all(_is_int(m) and m > 0 for m in channel_mults):
            raise ValueError(
                "channel_mults must be a non-empty sequence of positive ints, "
                f"got {channel_mults!r}"
            )
        _check_positive_int("num_res_blocks", num_res_blocks)
        attention_levels = tuple(attention_levels)
        num_levels = len(channel_mults)
        if not all(_is_int(i) and 0 <= i < num_levels for i in attention_levels):
            raise ValueError(
                f"attention_levels must be level indices in [0, {num_levels - 1}] "
                f"(one per entry of channel_mults), got {attention_levels!r}"
            )
        _check_positive_int("num_heads", num_heads)
        if num_classes is not None:
            _check_positive_int("num_classes", num_classes)
        if context_dim is not None:
            _check_positive_int("context_dim", context_dim)
            if not attention_levels and not mid_attention:
                raise ValueError(
                    "context_dim is set but there is no attention block to attend to the context: "
                    "give attention_levels or mid_attention=True"
                )
        _check_positive_int("groups", groups)
        for m in channel_mults:
            _check_groups(groups, base_channels * m, f"the level with multiplier {m}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        levels_needing_heads = [channel_mults[i] for i in attention_levels]
        if mid_attention:
            levels_needing_heads.append(channel_mults[-1])
        for m in levels_needing_heads:
            if (base_channels * m) % num_heads:
                raise ValueError(
                    f"num_heads={num_heads} must divide the channels of every attention level, "
                    f"but one has {base_channels * m} channels"
                )

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.base_channels = base_channels
        self.channel_mults = channel_mults
        self.num_res_blocks = num_res_blocks
        self.attention_levels = attention_levels
        self.num_classes = num_classes
        self.null_label = num_classes
        self.context_dim = context_dim
        emb_dim = 4 * base_channels
        self.emb_dim = emb_dim
        block_kwargs = dict(
            context_dim=context_dim,
            num_heads=num_heads,
            groups=groups,
            dropout=dropout,
            scale_shift=scale_shift,
        )

        self.time_embed = TimeEmbedding(base_channels, emb_dim)
        self.class_embed = (
            nn.Embedding(num_classes + 1, emb_dim) if num_classes is not None else None
        )
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        # Encoder: record the channels of every skip, in skip order.
        skip_channels = [base_channels]
        channels = base_channels
        down = []
        for i, m in enumerate(channel_mults):
            blocks = []
            for _ in range(num_res_blocks):
                blocks.append(
                    UNetBlock(
                        channels, base_channels * m, emb_dim,
                        attention=i in attention_levels, **block_kwargs,
                    )
                )
                channels = base_channels * m
                skip_channels.append(channels)
            resample = Downsample(channels) if i < num_levels - 1 else None
            if resample is not None:
                skip_channels.append(channels)
            down.append(_Level(blocks, resample))
        self.down = nn.ModuleList(down)
        self._skip_channels = tuple(skip_channels)

        self.mid = MidBlock(channels, emb_dim, attention=mid_attention, **block_kwargs)
        self.mid_channels = channels

        # Decoder, built deepest level first; stored so that up[i] has the resolution of down[i].
        pending = list(skip_channels)
        up: list[_Level] = []
        for i in reversed(range(num_levels)):
            m = channel_mults[i]
            blocks = []
            for _ in range(num_res_blocks + 1):
                blocks.append(
                    UNetBlock(
                        channels + pending.pop(), base_channels * m, emb_dim,
                        attention=i in attention_levels, **block_kwargs,
                    )
                )
                channels = base_channels * m
            resample = Upsample(channels) if i > 0 else None
            up.insert(0, _Level(blocks, resample))
        self.up = nn.ModuleList(up)

        self.norm_out = nn.GroupNorm(groups, channels)
        self.conv_out = nn.Conv2d(channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # the untrained net predicts 0
        nn.init.zeros_(self.conv_out.bias)

    # ---- shapes for the hooks -------------------------------------------------------------

    def skip_channels(self) -> list[int]:
        """Channels of the skip connections, in skip order (conv_in, down blocks, downsamples)."""
        return list(self._skip_channels)

    def residual_shapes(self, height: int, width: int) -> list[tuple[int, int, int]]:
        """(C, H, W) of each tensor of ``extra_residuals`` for an input of size height x width.

        The order is the skip order followed by the middle block (see the module docstring).
        """
        _check_positive_int("height", height)
        _check_positive_int("width", width)
        shapes = [(self.base_channels, height, width)]
        for i, m in enumerate(self.channel_mults):
            shapes += [(self.base_channels * m, height, width)] * self.num_res_blocks
            if i < len(self.channel_mults) - 1:
                height, width = (height + 1) // 2, (width + 1) // 2  # stride-2 conv: ceil(n/2)
                shapes.append((self.base_channels * m, height, width))
        shapes.append((self.mid_channels, height, width))
        return shapes

    # ---- the three stages -----------------------------------------------------------------

    def embed(self, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """Time (+ class) embedding emb, shape (B, 4 * base_channels).

        Args:
            t: times in [0, 1], shape (B,).
            class_labels: (B,) ints in [0, num_classes] or None (= the null label); must be
                None for an unconditional net.
        """
        if not isinstance(t, torch.Tensor) or t.ndim != 1:
            raise ValueError(f"t must have shape (B,), got {_shape(t)}")
        emb = self.time_embed(t)  # (B, emb_dim)
        if self.class_embed is None:
            if class_labels is not None:
                raise ValueError(
                    "class_labels were given but this UNet is unconditional (num_classes=None)"
                )
            return emb
        labels = resolve_class_labels(class_labels, t.shape[0], self.num_classes, t.device)
        return emb + self.class_embed(labels)  # (B, emb_dim)

    def encode(
        self,
        x_t: torch.Tensor,
        emb: torch.Tensor,
        context: torch.Tensor | None = None,
        hint: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The encoder and middle block: returns (h_mid, skips in skip order).

        Args:
            x_t: (B, in_channels, H, W).
            emb: (B, 4 * base_channels) from :meth:`embed`.
            context: (B, L, context_dim) or None.
            hint: optional (B, base_channels, H, W) added to conv_in's output; a ControlNet's
                trainable copy feeds its (zero-convolved) condition here (Zhang et al. 2023,
                Sec. 3.2).
        """
        h = self.conv_in(x_t)  # (B, base, H, W)
        if hint is not None:
            if not isinstance(hint, torch.Tensor) or hint.shape != h.shape:
                raise ValueError(f"hint must have shape {tuple(h.shape)}, got {_shape(hint)}")
            h = h + hint
        skips = [h]
        for level in self.down:
            for block in level.blocks:
                h = block(h, emb, context)
                skips.append(h)
            if level.resample is not None:
                h = level.resample(h)  # (B, C, ceil(H/2), ceil(W/2))
                skips.append(h)
        return self.mid(h, emb, context), skips

    def decode(
        self,
        h: torch.Tensor,
        skips: Sequence[torch.Tensor],
        emb: torch.Tensor,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The decoder: consumes the skips last-in first-out, returns (B, out_channels, H, W)."""
        skips = list(skips)
        for level in reversed(self.up):
            for block in level.blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), emb, context)
            if level.resample is not None:
                h = level.resample(h, size=skips[-1].shape[-2:])  # to the next skip's size
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, out_channels, H, W)

    # ---- forward ---------------------------------------------------------------------------

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        extra_residuals: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Network output for x_t at times t.

        Args:
            x_t: noisy images, shape (B, in_channels, H, W).
            t: times in [0, 1], shape (B,).
            class_labels: (B,) long in [0, num_classes]; None means the null label
                ``num_classes``. Must be None for an unconditional net.
            context: (B, L, context_dim) or None (cross-attention skipped).
            extra_residuals: None, or one tensor per skip connection in skip order followed
                by one for the middle block, with the shapes (B, *residual_shapes(H, W)[i]).

        Returns:
            shape (B, out_channels, H, W).
        """
        if not isinstance(x_t, torch.Tensor) or x_t.ndim != 4:
            raise ValueError(f"x_t must have shape (B, C, H, W), got {_shape(x_t)}")
        batch, channels, height, width = x_t.shape
        if channels != self.in_channels:
            raise ValueError(
                f"x_t must have {self.in_channels} channels (in_channels), got {channels} "
                f"(shape {tuple(x_t.shape)})"
            )
        if not isinstance(t, torch.Tensor) or t.shape != (batch,):
            raise ValueError(f"t must have shape ({batch},) to match x_t, got {_shape(t)}")
        if context is not None:
            if self.context_dim is None:
                raise ValueError("context was given but this UNet has no cross-attention "
                                 "(context_dim=None)")
            if (
                not isinstance(context, torch.Tensor)
                or context.ndim != 3
                or context.shape[0] != batch
                or context.shape[1] < 1
                or context.shape[2] != self.context_dim
            ):
                raise ValueError(
                    f"context must have shape ({batch}, L, {self.context_dim}) with L >= 1, "
                    f"got {_shape(context)}"
                )
        expected = None
        if extra_residuals is not None:
            expected = [(batch, *s) for s in self.residual_shapes(height, width)]
            if not isinstance(extra_residuals, (list, tuple)) or len(extra_residuals) != len(
                expected
            ):
                count = len(extra_residuals) if isinstance(extra_residuals, (list, tuple)) else (
                    type(extra_residuals).__name__
                )
                raise ValueError(
                    f"extra_residuals must be a list of {len(expected)} tensors "
                    f"({len(expected) - 1} skips + the middle block), got {count}"
                )
            for i, (r, shape) in enumerate(zip(extra_residuals, expected)):
                if not isinstance(r, torch.Tensor) or tuple(r.shape) != shape:
                    raise ValueError(
                        f"extra_residuals[{i}] must have shape {shape}, got {_shape(r)}"
                    )

        emb = self.embed(t, class_labels)  # (B, emb_dim)
        h, skips = self.encode(x_t, emb, context)
        if extra_residuals is not None:
            skips = [s + r for s, r in zip(skips, extra_residuals[:-1])]
            h = h + extra_residuals[-1]
        return self.decode(h, skips, emb, context)


# --------------------------------------------------------------------------------------------
# Counting parameters
# --------------------------------------------------------------------------------------------


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of a module (only those with requires_grad if asked).

    Introduced in chapter 03.

    >>> count_parameters(nn.Linear(3, 2))  # 3 * 2 weights + 2 biases
    8
    """
    if not isinstance(module, nn.Module):
        raise ValueError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def parameter_table(model: nn.Module, trainable_only: bool = False) -> list[tuple[str, int]]:
    """Parameters per top-level block: [(name, count), ...] in registration order.

    Children that are ``nn.ModuleList`` are split into their entries (``down.0``, ``down.1``,
    ...); parameters registered on the model itself appear as ``(own)``. The counts add up
    to :func:`count_parameters`. Blocks without parameters are left out.

    Introduced in chapter 03.

    >>> parameter_table(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)))
    [('0', 9), ('2', 4)]
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    rows = []
    own = sum(
        p.numel()
        for p in model.parameters(recurse=False)
        if p.requires_grad or not trainable_only
    )
    if own:
        rows.append(("(own)", own))
    for name, child in model.named_children():
        entries = (
            [(f"{name}.{i}", c) for i, c in enumerate(child)]
            if isinstance(child, nn.ModuleList)
            else [(name, child)]
        )
        for entry_name, entry in entries:
            count = count_parameters(entry, trainable_only)
            if count:
                rows.append((entry_name, count))
    return rows
