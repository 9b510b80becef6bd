r"""A small KL-regularised autoencoder (VAE) and the latent space latent diffusion runs in (chapter 11).

Latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion
Models", arXiv:2112.10752, Sec. 3) trains a diffusion model not on images x but on the
latents z of an autoencoder, and decodes at the end. The autoencoder is a VAE (Kingma &
Welling 2013, arXiv:1312.6114) with a *slight* KL penalty (Rombach et al., Sec. 3.1 and
App. G: "KL-reg."):

* encoder: x (B, C, H, W) -> the mean and log-variance of q(z | x) = N(mean, diag(exp(log_var))),
  each (B, C_z, H/f, W/f), f = 2^(number of levels - 1) the downsampling factor;
* reparameterisation (Kingma & Welling, Sec. 2.4): z = mean + exp(log_var / 2) * eps,
  eps ~ N(0, I), so that z is a differentiable function of the encoder's outputs;
* decoder: z -> x_hat (B, C, H, W);
* loss: ||x - x_hat||^2 (summed over pixels) + kl_weight * KL(q(z | x) || N(0, I)), with the
  closed-form KL of a diagonal Gaussian (Kingma & Welling, Eq. 10 and App. B)

      KL = 1/2 sum_j (mean_j^2 + exp(log_var_j) - 1 - log_var_j).

With a small KL weight (beta_KL, the "beta" of a beta-VAE; called ``kl_weight`` in the code
so that beta keeps its one meaning, DDPM's per-step variance) the latents are nearly
deterministic but of arbitrary scale, so the diffusion model sees them after **scaling**
(Rombach et al., Sec. 4.3.2): z <- z / std(z), with the standard deviation estimated once over
the training latents. Stable Diffusion's
``scaling_factor = 0.18215`` is exactly this number, 1 / std, measured on its own VAE.
:class:`LatentSpace` holds the VAE and that factor, so that latent diffusion only changes
what x is: a course ``Denoiser`` trained on ``LatentSpace.encode(images)`` is sampled with
the one loop (:func:`course_lib.samplers.sample`), and ``LatentSpace.decode`` turns the
result into images.

>>> vae = VAE(in_channels=3, latent_channels=4, channel_mults=(1, 2, 2))
>>> x = torch.zeros(2, 3, 16, 16)
>>> mean, log_var = vae.encode(x)
>>> mean.shape, vae.downsample_factor, vae.decode(mean).shape
(torch.Size([2, 4, 4, 4]), 4, torch.Size([2, 3, 16, 16]))
>>> kl_to_standard_normal(torch.zeros(1, 4, 4, 4), torch.zeros(1, 4, 4, 4))  # q = p: no divergence
tensor([0.])

Introduced in chapter 11.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from course_lib.validation import check_positive_int as _check_positive_int

__all__ = ["VAE", "VAEOutput", "VAELoss", "reparameterize", "kl_to_standard_normal", "vae_loss",
           "latent_scale_factor", "LatentSpace", "PatchDiscriminator", "PerceptualDistance", "hinge_discriminator_loss"]

LOG_VAR_RANGE = (-30.0, 20.0)  # the encoder's log-variance is clamped here (as in Rombach et al.'s code)


def _shape(value: object) -> object:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------


class _ResBlock(nn.Module):
    """out = skip(x) + conv2(SiLU(GroupNorm(conv1(SiLU(GroupNorm(x)))))), no time input."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class VAEOutput(NamedTuple):
    """What :meth:`VAE.forward` returns: the reconstruction x_hat (B, C, H, W), the posterior's
    mean and log_var (B, C_z, h, w) and the sampled latent z (B, C_z, h, w)."""

    x_hat: torch.Tensor
    mean: torch.Tensor
    log_var: torch.Tensor
    z: torch.Tensor


class VAE(nn.Module):
    r"""A convolutional VAE with spatial latents, after Rombach et al. 2022 (arXiv:2112.10752), App. G.

    Encoder: conv3x3(C -> base), then per level i: ``num_res_blocks`` residual blocks
    (GroupNorm, SiLU, conv3x3) to base * channel_mults[i] channels and, except after the last
    level, a stride-2 conv3x3 (H -> H/2); then GroupNorm, SiLU, conv3x3 to 2 C_z channels, split
    into (mean, log_var). Decoder: the mirror image, with nearest-neighbour upsampling + conv3x3.
    The downsampling factor is f = 2^(len(channel_mults) - 1).

    Args:
        in_channels: C of the images (3 for RGB).
        latent_channels: C_z, the channels of the latent.
        base_channels: channels at full resolution.
        channel_mults: one multiplier per resolution level.
        num_res_blocks: residual blocks per level (encoder and decoder).
        groups: GroupNorm groups; must divide base_channels * m for every m.

    Introduced in chapter 11.
    """

    def __init__(self, in_channels: int = 3, latent_channels: int = 4, base_channels: int = 32,
                 channel_mults: Sequence[int] = (1, 2, 2), num_res_blocks: int = 1, groups: int = 8) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("latent_channels", latent_channels),
                            ("base_channels", base_channels), ("num_res_blocks", num_res_blocks),
                            ("groups", groups)):
            _check_positive_int(name, value)
        channel_mults = tuple(channel_mults)
        if not channel_mults or not all(isinstance(m, int) and not isinstance(m, bool) and m > 0
                                        for m in channel_mults):
            raise ValueError(f"channel_mults must be a non-empty sequence of positive ints, got {channel_mults!r}")
        for m in channel_mults:
            if (base_channels * m) % groups:
                raise ValueError(f"groups={groups} must divide the channels of every level, "
                                 f"but the level with multiplier {m} has {base_channels * m}")
        self.in_channels, self.latent_channels = in_channels, latent_channels
        self.channel_mults = channel_mults
        self.downsample_factor = 2 ** (len(channel_mults) - 1)
        widths = [base_channels * m for m in channel_mults]

        # encoder
        self.enc_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        enc, channels = [], base_channels
        for i, width in enumerate(widths):
            for _ in range(num_res_blocks):
                enc.append(_ResBlock(channels, width, groups))
                channels = width
            if i < len(widths) - 1:
                enc.append(nn.Conv2d(channels, channels, 3, stride=2, padding=1))  # H -> H/2
        self.encoder = nn.Sequential(*enc)
        self.enc_norm = nn.GroupNorm(groups, channels)
        self.enc_out = nn.Conv2d(channels, 2 * latent_channels, 3, padding=1)

        # decoder (deepest level first)
        self.dec_in = nn.Conv2d(latent_channels, channels, 3, padding=1)
        dec = []
        for i in reversed(range(len(widths))):
            for _ in range(num_res_blocks):
                dec.append(_ResBlock(channels, widths[i], groups))
                channels = widths[i]
            if i > 0:
                dec.append(nn.Upsample(scale_factor=2, mode="nearest"))  # h -> 2h
                dec.append(nn.Conv2d(channels, channels, 3, padding=1))
        self.decoder = nn.Sequential(*dec)
        self.dec_norm = nn.GroupNorm(groups, channels)
        self.dec_out = nn.Conv2d(channels, in_channels, 3, padding=1)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(C_z, H/f, W/f): the shape of the latent of one (C, height, width) image."""
        _check_positive_int("height", height)
        _check_positive_int("width", width)
        f = self.downsample_factor
        if height % f or width % f:
            raise ValueError(f"height and width must be multiples of the downsampling factor f={f}, "
                             f"got {height} x {width}")
        return (self.latent_channels, height // f, width // f)

    def _check_images(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"images must have shape (B, {self.in_channels}, H, W), got {_shape(x)}")
        self.latent_shape(int(x.shape[2]), int(x.shape[3]))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior q(z | x) = N(mean, diag(exp(log_var))): (mean, log_var), each (B, C_z, H/f, W/f).

        log_var is clamped to ``LOG_VAR_RANGE`` = [-30, 20] (exp stays finite in float32).
        """
        self._check_images(x)
        h = self.encoder(self.enc_in(x))  # (B, C_top, H/f, W/f)
        mean, log_var = self.enc_out(F.silu(self.enc_norm(h))).chunk(2, dim=1)  # (B, C_z, H/f, W/f) each
        return mean, log_var.clamp(*LOG_VAR_RANGE)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's reconstruction x_hat (B, C, f h, f w) of latents z (B, C_z, h, w)."""
        if not isinstance(z, torch.Tensor) or z.ndim != 4 or z.shape[1] != self.latent_channels:
            raise ValueError(f"z must have shape (B, {self.latent_channels}, h, w), got {_shape(z)}")
        h = self.decoder(self.dec_in(z))  # (B, base, f h, f w)
        return self.dec_out(F.silu(self.dec_norm(h)))  # (B, C, f h, f w)

    def forward(self, x: torch.Tensor, *, generator: torch.Generator | None = None,
                eps: torch.Tensor | None = None) -> VAEOutput:
        """Encode, draw z = mean + exp(log_var / 2) * eps, decode. Returns a :class:`VAEOutput`."""
        mean, log_var = self.encode(x)
        z = reparameterize(mean, log_var, generator=generator, eps=eps)
        return VAEOutput(self.decode(z), mean, log_var, z)


# --------------------------------------------------------------------------------------------
# The VAE's formulas
# --------------------------------------------------------------------------------------------


def _check_mean_log_var(fn: str, mean: torch.Tensor, log_var: torch.Tensor) -> None:
    if not isinstance(mean, torch.Tensor) or not isinstance(log_var, torch.Tensor):
        raise ValueError(f"{fn}: mean and log_var must be tensors, got {type(mean).__name__} and "
                         f"{type(log_var).__name__}")
    if mean.shape != log_var.shape or mean.ndim < 2:
        raise ValueError(f"{fn}: mean and log_var must have the same shape (B, ...), got {tuple(mean.shape)} "
                         f"and {tuple(log_var.shape)}")


def reparameterize(mean: torch.Tensor, log_var: torch.Tensor, *, generator: torch.Generator | None = None,
                   eps: torch.Tensor | None = None) -> torch.Tensor:
    r"""z = mean + exp(log_var / 2) * eps with eps ~ N(0, I): a sample of N(mean, diag(exp(log_var))).

    The reparameterisation trick (Kingma & Welling 2013, arXiv:1312.6114, Sec. 2.4): the
    randomness sits in eps, so z is differentiable in mean and log_var.

    Args:
        mean: (B, ...) the posterior mean.
        log_var: (B, ...) the posterior log-variance.
        generator: draws eps unless it is given.
        eps: optional explicit standard normal noise, shape of mean.

    Returns:
        z, shape of mean.

    >>> reparameterize(torch.ones(1, 2), torch.zeros(1, 2), eps=torch.tensor([[1.0, -2.0]]))
    tensor([[ 2., -1.]])

    Introduced in chapter 11.
    """
    _check_mean_log_var("reparameterize", mean, log_var)
    if eps is None:
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    elif not isinstance(eps, torch.Tensor) or eps.shape != mean.shape:
        raise ValueError(f"reparameterize: eps must have mean's shape {tuple(mean.shape)}, got {_shape(eps)}")
    return mean + torch.exp(0.5 * log_var) * eps


def kl_to_standard_normal(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    r"""KL(N(mean, diag(exp(log_var))) || N(0, I)) per example, in nats.

    .. math::  \mathrm{KL} = \tfrac12 \sum_j \big(\mu_j^2 + e^{\ell_j} - 1 - \ell_j\big),
               \quad \ell_j = \log\sigma_j^2

    (Kingma & Welling 2013, arXiv:1312.6114, Eq. 10 and App. B), summed over all non-batch
    dimensions j.

    Args:
        mean: (B, ...) the posterior mean.
        log_var: (B, ...) the posterior log-variance.

    Returns:
        (B,) the KL of each example.

    Introduced in chapter 11.
    """
    _check_mean_log_var("kl_to_standard_normal", mean, log_var)
    per_dim = 0.5 * (mean**2 + torch.exp(log_var) - 1.0 - log_var)  # (B, ...)
    return per_dim.flatten(1).sum(1)  # (B,)


class VAELoss(NamedTuple):
    """What :func:`vae_loss` returns: ``loss`` = ``reconstruction`` + kl_weight * ``kl`` (scalars for
    reduction "mean", (B,) tensors for "none")."""

    loss: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor


def vae_loss(vae: VAE, x0: torch.Tensor, *, kl_weight: float, generator: torch.Generator | None = None,
             eps: torch.Tensor | None = None, reduction: str = "mean") -> VAELoss:
    r"""The beta-VAE objective: ||x0 - x_hat||^2 + beta_KL * KL(q(z | x0) || N(0, I)).

    Per example: the squared error summed over pixels (the negative log-likelihood of a
    Gaussian decoder of variance 1/2, up to a constant) plus beta_KL (``kl_weight``) times
    :func:`kl_to_standard_normal`. beta_KL = 1 is the ELBO of Kingma & Welling 2013 (Eq. 10);
    Higgins et al. 2017 (beta-VAE) weight the KL by beta; latent diffusion uses a small weight
    (Rombach et al. 2022, Sec. 3.1: "a slight KL-penalty"), which keeps the latents close to
    the data but of arbitrary scale.

    Args:
        vae: the :class:`VAE`.
        x0: (B, C, H, W) images.
        kl_weight: beta_KL, the weight of the KL term, >= 0.
        generator: draws the reparameterisation noise eps unless eps is given.
        eps: optional explicit noise (B, C_z, H/f, W/f).
        reduction: "mean" (over the batch) or "none" (per example, (B,)).

    Returns:
        :class:`VAELoss` (loss, reconstruction, kl).

    Introduced in chapter 11.
    """
    if not isinstance(vae, VAE):
        raise ValueError(f"vae_loss: vae must be a course_lib VAE, got {type(vae).__name__}")
    if isinstance(kl_weight, bool) or not isinstance(kl_weight, (int, float)) \
            or not (kl_weight >= 0 and math.isfinite(kl_weight)):
        raise ValueError(f"vae_loss: kl_weight must be a finite number >= 0, got {kl_weight!r}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"vae_loss: reduction must be 'mean' or 'none', got {reduction!r}")
    out = vae(x0, generator=generator, eps=eps)
    reconstruction = ((out.x_hat - x0) ** 2).flatten(1).sum(1)  # (B,)
    kl = kl_to_standard_normal(out.mean, out.log_var)  # (B,)
    loss = reconstruction + kl_weight * kl
    if reduction == "mean":
        return VAELoss(loss.mean(), reconstruction.mean(), kl.mean())
    return VAELoss(loss, reconstruction, kl)


def latent_scale_factor(latents: torch.Tensor) -> float:
    r"""The latent scale factor 1 / std(z) over all components of a set of training latents.

    Rombach et al. 2022 (arXiv:2112.10752, Sec. 4.3.2) rescale KL-regularised latents by
    their component-wise standard deviation, estimated on a batch of training data:

    .. math::  \hat\sigma^2 = \frac{1}{bchw}\sum_{b,c,h,w}(z^{b,c,h,w} - \hat\mu)^2, \qquad z \leftarrow z / \hat\sigma,

    so that the scaled latents have unit variance, the data scale the noise schedules assume.
    (Stable Diffusion v1's ``scaling_factor`` 0.18215 is 1 / sigma_hat of its VAE's latents.)
    The mean is not subtracted from the latents, only estimated for the std.

    Args:
        latents: (N, ...) unscaled latents z, at least two elements, finite, not constant.

    Returns:
        1 / sigma_hat as a float.

    >>> latent_scale_factor(torch.tensor([[-2.0], [2.0]]))
    0.5

    Introduced in chapter 11.
    """
    if not isinstance(latents, torch.Tensor) or latents.ndim < 2 or latents.numel() < 2:
        raise ValueError(f"latent_scale_factor: latents must be a tensor (N, ...) with at least 2 elements, "
                         f"got {_shape(latents)}")
    if not torch.isfinite(latents).all():
        raise ValueError("latent_scale_factor: latents contain NaN or infinite values")
    z = latents.detach().to(torch.float64)
    std = float(torch.sqrt(((z - z.mean()) ** 2).mean()))  # sigma_hat, 1/(bchw) normalisation
    if std == 0.0:
        raise ValueError("latent_scale_factor: latents are constant (std 0); the autoencoder has collapsed")
    return 1.0 / std


class LatentSpace:
    r"""The space latent diffusion runs in: x <-> z_scaled = scale_factor * z, z ~ q(z | x).

    ``encode`` maps images to scaled latents (a reparameterised sample of the posterior, or
    its mean with ``sample=False``); ``decode`` divides by the scale factor and runs the
    decoder. A diffusion model trained on ``encode(images)`` is an ordinary course
    ``Denoiser`` on tensors of shape (C_z, H/f, W/f), sampled with the one loop; only the
    first and the last step of the pipeline change:

        x0 -> encode -> diffusion (train / sample) -> decode -> x0_hat

    Both methods run without gradients, on the VAE's device, and leave the VAE in eval mode.

    Args:
        vae: a trained :class:`VAE`.
        scale_factor: the number c > 0 with Var(c z) ~ 1, e.g. from :func:`latent_scale_factor`.

    Introduced in chapter 11.
    """

    def __init__(self, vae: VAE, scale_factor: float) -> None:
        if not isinstance(vae, VAE):
            raise ValueError(f"LatentSpace: vae must be a course_lib VAE, got {type(vae).__name__}")
        if isinstance(scale_factor, bool) or not isinstance(scale_factor, (int, float)) \
                or not (math.isfinite(scale_factor) and scale_factor > 0):
            raise ValueError(f"LatentSpace: scale_factor must be a finite number > 0, got {scale_factor!r}")
        self.vae, self.scale_factor = vae.eval(), float(scale_factor)

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(C_z, H/f, W/f) of the latent of one image of that size."""
        return self.vae.latent_shape(height, width)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None, *,
               sample: bool = True) -> torch.Tensor:
        """Scaled latents scale_factor * z of images x (B, C, H, W): (B, C_z, H/f, W/f).

        Args:
            x: images in the VAE's data range.
            generator: draws z = mean + exp(log_var / 2) eps (ignored with sample=False).
            sample: draw from q(z | x) (True, as when encoding training data) or take its mean.
        """
        mean, log_var = self.vae.encode(x.to(self.device))
        z = reparameterize(mean, log_var, generator=generator) if sample else mean
        return self.scale_factor * z

    @torch.no_grad()
    def decode(self, z_scaled: torch.Tensor) -> torch.Tensor:
        """Images D(z_scaled / scale_factor), (B, C, f h, f w), from scaled latents (B, C_z, h, w)."""
        return self.vae.decode(z_scaled.to(self.device) / self.scale_factor)

    def __repr__(self) -> str:
        return (f"LatentSpace(f={self.vae.downsample_factor}, C_z={self.vae.latent_channels}, "
                f"scale_factor={self.scale_factor:.5g})")


# --------------------------------------------------------------------------------------------
# Perceptual and adversarial losses (chapter 17): a sharper decoder
# --------------------------------------------------------------------------------------------


class PerceptualDistance(nn.Module):
    r"""An LPIPS-style distance in the activations of a frozen course network.

    Zhang et al. 2018 (arXiv:1801.03924, Eq. 1): for each chosen layer l, unit-normalise the
    activation vector at every position across channels, then average the squared difference over
    positions and sum over layers,

    .. math:: d(x, y) = \sum_l \frac{1}{H_l W_l} \sum_{h,w} \big\| \hat f^l_{hw}(x) - \hat f^l_{hw}(y) \big\|^2 .

    LPIPS then learns a weight per channel on human judgements; with no such data the course keeps
    the weights at 1 (the paper's "lin" layer off, its baseline). The network is any
    ``nn.Sequential`` of convolutions; ``taps`` are the indices whose outputs are compared. Its
    parameters are frozen (gradients flow to the images only).

    Args:
        network: the feature network (e.g. the tiny CLIP's image CNN, ``clip.image.net``).
        taps: indices into ``network`` after which to compare activations.

    Introduced in chapter 17.
    """

    def __init__(self, network: nn.Sequential, taps: Sequence[int]) -> None:
        super().__init__()
        if not isinstance(network, nn.Sequential):
            raise ValueError(f"PerceptualDistance: network must be an nn.Sequential, got {type(network).__name__}")
        taps = tuple(taps)
        if not taps or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(network) for i in taps):
            raise ValueError(f"PerceptualDistance: taps must be indices in [0, {len(network)}), got {taps!r}")
        self.network, self.taps = network, taps
        for p in self.network.parameters():
            p.requires_grad_(False)
        self.network.eval()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The distance per example, (B,), between images x and y (B, C, H, W)."""
        if x.shape != y.shape:
            raise ValueError(f"PerceptualDistance: x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        total = x.new_zeros(x.shape[0])
        h = torch.cat([x, y])
        for i, layer in enumerate(self.network):
            h = layer(h)
            if i in self.taps:
                fx, fy = F.normalize(h, dim=1).chunk(2)  # unit length across channels at each position
                total = total + ((fx - fy) ** 2).sum(1).mean(dim=(1, 2))
            if i >= max(self.taps):
                break
        return total


class PatchDiscriminator(nn.Module):
    r"""A PatchGAN discriminator (Isola et al. 2017, arXiv:1611.07004, Sec. 3.2.2): one real/fake logit per patch.

    conv4x4 stride 2 (C -> w) - LeakyReLU(0.2) - conv4x4 stride 2 (w -> 2w) - GroupNorm - LeakyReLU(0.2) -
    conv3x3 (2w -> 1): a 16 x 16 image gives a 4 x 4 map of logits, each seeing a patch of about 10 x 10
    pixels. A patch discriminator judges texture and edges, not the global layout, which the
    reconstruction loss already fixes; latent diffusion's autoencoders are trained with one
    (Esser et al. 2021, arXiv:2012.09841, Sec. 3.1; Rombach et al. 2022, App. G).

    Introduced in chapter 17.
    """

    def __init__(self, in_channels: int = 3, width: int = 32) -> None:
        super().__init__()
        _check_positive_int("in_channels", in_channels)
        _check_positive_int("width", width)
        self.in_channels = in_channels
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.GroupNorm(8, 2 * width), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 1, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patch logits (B, 1, H/4, W/4) of images x (B, C, H, W); > 0 means "looks real"."""
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"PatchDiscriminator: x must be (B, {self.in_channels}, H, W), got {_shape(x)}")
        return self.net(x)


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    r"""The hinge loss of a discriminator (Lim & Ye 2017, arXiv:1705.02894; as in Esser et al. 2021):
    mean(relu(1 - D(x))) + mean(relu(1 + D(x_hat))). Its generator side is -mean(D(x_hat)). Chapter 17."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
