r"""An image prompt for a text-conditioned U-Net: IP-Adapter's decoupled cross-attention (chapter 15).

IP-Adapter (Ye et al. 2023, arXiv:2308.06721, Sec. 3.2) turns an image embedding c_i into K tokens
with a small projection (Linear + LayerNorm) and lets every cross-attention layer of a frozen
text-to-image U-Net read them through its *own* key and value projections, added to the text
attention with a scale lambda:

    Z = Attention(Q, K_t, V_t) + lambda * Attention(Q, K_i, V_i),
    Q = h W_q,  K_t = c_t W_k,  V_t = c_t W_v,  K_i = c_i' W_k^ip,  V_i = c_i' W_v^ip,

then the layer's output projection, as in diffusers' ``IPAdapterAttnProcessor``. Only the
projection and W_k^ip, W_v^ip train; they start as copies of W_k and W_v (the paper's
initialisation, Sec. 3.2.2). With lambda = 0 the layer is the base layer exactly, because
to_out(a + 0 * b) = to_out(a) in floating point too (a test and chapter 15 assert it).

The tokens travel through the U-Net's ``context`` argument: :class:`IPAdapter` appends the K image
tokens to the text tokens, and each :class:`DecoupledCrossAttention` splits them off again (as
diffusers concatenates them to ``encoder_hidden_states``). No sampler and no U-Net code changes.

>>> import torch
>>> from course_lib.networks.unet import UNet
>>> unet = UNet(in_channels=4, base_channels=16, channel_mults=(1,), attention_levels=(0,), context_dim=8)
>>> adapter = IPAdapter(unet, image_dim=5, num_tokens=2)
>>> x, t, text, image = torch.randn(3, 4, 4, 4), torch.rand(3), torch.randn(3, 6, 8), torch.randn(3, 5)
>>> adapter.set_scale(0.0)
>>> bool(torch.equal(adapter(x, t, context=text, image_embeds=image), unet(x, t, context=text)))
True
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from course_lib.validation import check_positive_int

from .unet import CrossAttention, SelfAttention, multi_head_attention

__all__ = ["ImageProjection", "DecoupledCrossAttention", "IPAdapter"]


class ImageProjection(nn.Module):
    """An image embedding (B, image_dim) to ``num_tokens`` context tokens (B, K, context_dim):
    Linear, reshape, LayerNorm (IP-Adapter's image projection, Ye et al. 2023, Sec. 3.2.1)."""

    def __init__(self, image_dim: int, context_dim: int, num_tokens: int = 4) -> None:
        super().__init__()
        for name, value in (("image_dim", image_dim), ("context_dim", context_dim), ("num_tokens", num_tokens)):
            check_positive_int(name, value)
        self.image_dim, self.context_dim, self.num_tokens = image_dim, context_dim, num_tokens
        self.proj = nn.Linear(image_dim, num_tokens * context_dim)
        self.norm = nn.LayerNorm(context_dim)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        if image_embeds.ndim != 2 or image_embeds.shape[1] != self.image_dim:
            raise ValueError(f"image_embeds must be (B, {self.image_dim}), got {tuple(image_embeds.shape)}")
        return self.norm(self.proj(image_embeds).reshape(-1, self.num_tokens, self.context_dim))


class DecoupledCrossAttention(nn.Module):
    """A base :class:`~course_lib.networks.unet.CrossAttention` plus its own key/value projections for
    the last ``num_tokens`` tokens of the context (the image tokens), added with ``scale``.

    The base layer is kept as ``base`` (its weights are the frozen U-Net's); ``to_k_ip`` and ``to_v_ip``
    start as copies of its ``to_k`` and ``to_v``.
    """

    def __init__(self, base: CrossAttention, num_tokens: int) -> None:
        super().__init__()
        if not isinstance(base, CrossAttention) or isinstance(base, SelfAttention):
            raise ValueError(f"base must be a CrossAttention layer, got {type(base).__name__}")
        check_positive_int("num_tokens", num_tokens)
        self.base, self.num_tokens, self.scale = base, num_tokens, 1.0
        self.to_k_ip, self.to_v_ip = copy.deepcopy(base.to_k), copy.deepcopy(base.to_v)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if context.shape[1] <= self.num_tokens:
            raise ValueError(f"the context must hold text tokens and then {self.num_tokens} image tokens, got "
                             f"{context.shape[1]} tokens in all")
        text, image = context[:, : -self.num_tokens], context[:, -self.num_tokens:]
        base = self.base
        batch, channels, height, width = x.shape
        h = base.norm(x).flatten(2).transpose(1, 2)  # (B, H*W, C)
        q = base.to_q(h)
        out = multi_head_attention(q, base.to_k(text), base.to_v(text), base.num_heads)  # (B, H*W, C)
        image_out = multi_head_attention(q, self.to_k_ip(image), self.to_v_ip(image), base.num_heads)
        out = base.to_out(out + self.scale * image_out)
        return x + out.transpose(1, 2).reshape(batch, channels, height, width)


class IPAdapter(nn.Module):
    """A text-conditioned U-Net with an image prompt: every cross-attention becomes decoupled.

    Called as ``adapter(x_t, t, context=text_tokens, image_embeds=e)``: ``e`` (B, image_dim) is
    projected to ``num_tokens`` tokens and appended to the text tokens. ``image_embeds=None`` is
    "no image prompt", the zero embedding (IP-Adapter drops the image by zeroing it in training,
    and diffusers uses zeros as the unconditional image). Only ``adapter_parameters()`` are left
    trainable; the U-Net is frozen.

    Args:
        unet: a :class:`~course_lib.networks.unet.UNet` with ``context_dim`` set (its cross-attention
            layers are replaced in place, so pass a copy if you need the plain one too).
        image_dim: size of the image embedding (the tiny CLIP's image embedding in chapter 15).
        num_tokens: K image tokens (IP-Adapter uses 4).
    """

    def __init__(self, unet: nn.Module, image_dim: int, num_tokens: int = 4) -> None:
        super().__init__()
        context_dim = getattr(unet, "context_dim", None)
        if context_dim is None:
            raise ValueError("an IP-Adapter needs a U-Net with cross-attention (context_dim set); this one has none")
        self.unet, self.image_dim, self.num_tokens = unet, image_dim, num_tokens
        self.image_proj = ImageProjection(image_dim, context_dim, num_tokens)
        layers = []
        for module in list(unet.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, CrossAttention) and not isinstance(child, SelfAttention):
                    wrapped = DecoupledCrossAttention(child, num_tokens)
                    setattr(module, name, wrapped)
                    layers.append(wrapped)
        if not layers:
            raise ValueError("the U-Net has no cross-attention layer to adapt")
        self.layers = layers  # a plain list: the modules are registered inside the U-Net
        self.null_label, self.num_classes = getattr(unet, "null_label", None), getattr(unet, "num_classes", None)
        self.context_dim = context_dim
        for p in self.unet.parameters():
            p.requires_grad_(False)
        for p in self.adapter_parameters():
            p.requires_grad_(True)

    def adapter_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters: the image projection and every layer's to_k_ip, to_v_ip."""
        params = list(self.image_proj.parameters())
        for layer in self.layers:
            params += [*layer.to_k_ip.parameters(), *layer.to_v_ip.parameters()]
        return params

    def set_scale(self, scale: float) -> None:
        """lambda of every decoupled layer (0: the base U-Net exactly; 1: as trained)."""
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale >= 0:
            raise ValueError(f"the image prompt scale must be a number >= 0, got {scale!r}")
        for layer in self.layers:
            layer.scale = float(scale)

    def image_tokens(self, image_embeds: torch.Tensor | None, batch: int, device, dtype) -> torch.Tensor:
        if image_embeds is None:
            image_embeds = torch.zeros(batch, self.image_dim, device=device, dtype=dtype)
        if image_embeds.ndim != 2 or image_embeds.shape != (batch, self.image_dim):
            raise ValueError(f"image_embeds must be ({batch}, {self.image_dim}), got {tuple(image_embeds.shape)}")
        return self.image_proj(image_embeds)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None,
                image_embeds: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        if context is None:
            raise ValueError("an IP-Adapter needs the text tokens (context); give the empty caption's for no text")
        tokens = self.image_tokens(image_embeds, x_t.shape[0], x_t.device, context.dtype)
        return self.unet(x_t, t, context=torch.cat([context, tokens], dim=1), **kwargs)
