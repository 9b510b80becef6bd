r"""ControlNet: spatial control of a frozen U-Net (chapter 13).

Zhang, Rao & Agrawala 2023 (arXiv:2302.05543), Sec. 3.1-3.2: the base network is frozen; a
*trainable copy* of its encoder and middle block reads the noisy input plus an encoded condition
(a mask, an edge map), and its features enter the base decoder through **zero convolutions**
(1 x 1 convolutions with weights and biases initialised to zero), added to the base's skip
connections and middle block:

    y_c = F(x; Theta) + Z(F(x + Z(c; Theta_z1); Theta_c); Theta_z2).

At initialisation every zero convolution outputs 0, so the controlled network equals the base
exactly, and training starts from the base's behaviour. A zero convolution's own weight still gets a
gradient (dL/dW = dL/dy * input, and the input is not zero), while everything upstream of it gets
none on the first step (dL/dinput = W^T dL/dy = 0): the copy starts learning once the zero
convolutions have moved. ``conditioning_scale`` multiplies the residuals (diffusers'
``controlnet_conditioning_scale``); 0 gives the base.

>>> import torch
>>> from course_lib.networks.unet import UNet
>>> base = UNet(in_channels=1, base_channels=16, channel_mults=(1, 2), attention_levels=())
>>> net = ControlNet(base, control_channels=1)
>>> x, t, c = torch.randn(2, 1, 8, 8), torch.rand(2), torch.rand(2, 1, 8, 8)
>>> bool(torch.equal(net(x, t, control=c), base(x, t)))
True
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from course_lib.validation import check_positive_int

from .unet import UNet

__all__ = ["ControlNet", "zero_module"]


def zero_module(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero (in place) and return it."""
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
    return module


class ControlNet(nn.Module):
    """A frozen :class:`~course_lib.networks.unet.UNet` with a trainable encoder copy and zero convolutions.

    Args:
        base: the pretrained U-Net (frozen here; kept as ``self.base``).
        control_channels: channels of the control image (1 for a mask or an edge map).
        hint_channels: width of the small convolutional encoder of the control (Zhang et al.'s E).
        control_downsample: the control's resolution over x_t's (a power of 2). 1 for a pixel-space
            base; for a latent base the control stays at image resolution and the encoder brings it to
            the latent grid with stride-2 convolutions, as Stable Diffusion's ControlNet does (512 -> 64).

    ``forward(x_t, t, control, class_labels=None, context=None, conditioning_scale=1.0)`` has the base's
    signature plus the control (B, control_channels, H, W), so a ``Denoiser(controlnet, schedule,
    control=c)`` runs in every course sampler unchanged. When x_t holds k stacked copies of the batch
    (kB rows: classifier-free guidance evaluates its conditional and unconditional branch as one batch
    of 2B), a control of B rows is used for each copy, as diffusers' pipelines duplicate the control
    image for the two branches; any other batch mismatch is a ``ValueError``.
    """

    def __init__(self, base: UNet, control_channels: int, *, hint_channels: int = 16,
                 control_downsample: int = 1) -> None:
        super().__init__()
        if not isinstance(base, UNet):
            raise ValueError(f"ControlNet controls a course UNet, got {type(base).__name__}")
        for name, value in (("control_channels", control_channels), ("hint_channels", hint_channels),
                            ("control_downsample", control_downsample)):
            check_positive_int(name, value)
        if control_downsample & (control_downsample - 1):
            raise ValueError(f"control_downsample must be a power of 2 (1, 2, 4, ...), got {control_downsample}")
        self.control_channels = control_channels
        self.control_downsample = control_downsample
        self.num_classes, self.null_label = base.num_classes, base.null_label  # the base's labels (guidance reads them)
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        trainable = copy.deepcopy(base)  # the encoder and middle block are used; drop the decoder
        del trainable.up, trainable.norm_out, trainable.conv_out
        for p in trainable.parameters():
            p.requires_grad_(True)
        self.copy = trainable
        strided = []
        for _ in range(int(math.log2(control_downsample))):
            strided += [nn.Conv2d(hint_channels, hint_channels, 3, stride=2, padding=1), nn.SiLU()]
        self.hint = nn.Sequential(
            nn.Conv2d(control_channels, hint_channels, 3, padding=1), nn.SiLU(),
            nn.Conv2d(hint_channels, hint_channels, 3, padding=1), nn.SiLU(), *strided,
            zero_module(nn.Conv2d(hint_channels, base.base_channels, 3, padding=1)))
        channels = [s[0] for s in base.residual_shapes(8, 8)]  # channel counts do not depend on H, W
        self.zero_convs = nn.ModuleList(zero_module(nn.Conv2d(c, c, 1)) for c in channels)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The copy, the control encoder and the zero convolutions (not the base)."""
        return [p for name, p in self.named_parameters() if not name.startswith("base.")]

    def residuals(self, x_t: torch.Tensor, t: torch.Tensor, control: torch.Tensor, class_labels=None,
                  context=None, conditioning_scale: float = 1.0) -> list[torch.Tensor]:
        """The zero-convolved features of the trainable copy, one per skip plus the middle block."""
        f = self.control_downsample
        size = (x_t.shape[-2] * f, x_t.shape[-1] * f)
        if not isinstance(control, torch.Tensor) or control.ndim != 4 or control.shape[0] == 0 \
                or x_t.shape[0] % control.shape[0] != 0 \
                or control.shape[1] != self.control_channels or tuple(control.shape[-2:]) != size:
            raise ValueError(f"control must have shape ({x_t.shape[0]}, {self.control_channels}, "
                             f"{size[0]}, {size[1]}) to match x_t (control_downsample {f}), got "
                             f"{tuple(control.shape) if isinstance(control, torch.Tensor) else type(control).__name__}")
        if control.shape[0] != x_t.shape[0]:  # a batch of k copies (classifier-free guidance's 2B): repeat
            control = control.repeat(x_t.shape[0] // control.shape[0], 1, 1, 1)
        scale = float(conditioning_scale)
        if not math.isfinite(scale) or scale < 0:
            raise ValueError(f"conditioning_scale must be a finite number >= 0, got {conditioning_scale!r}")
        emb = self.copy.embed(t, class_labels)
        hint = self.hint(control.to(x_t.dtype))
        h, skips = self.copy.encode(x_t, emb, context, hint=hint)
        return [scale * z(f) for z, f in zip(self.zero_convs, skips + [h])]

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, control: torch.Tensor | None = None,
                class_labels=None, context=None, conditioning_scale: float = 1.0) -> torch.Tensor:
        if control is None:
            raise ValueError("ControlNet needs a control image: pass control=(B, C, H, W) "
                             "(bind it with Denoiser(net, schedule, control=c))")
        extra = self.residuals(x_t, t, control, class_labels, context, conditioning_scale)
        return self.base(x_t, t, class_labels, context, extra_residuals=extra)
