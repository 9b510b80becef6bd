r"""DDIM step with the eta family (introduced in chapter 02, studied in chapter 05).

Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models", arXiv:2010.02502, eq. 12 and 16,
written for the affine path x_t = alpha_t x0 + sigma_t eps:

    eps_hat     = (x_t - alpha_t x0_hat) / sigma_t
    sigma_eta^2 = eta^2 * sigma_{t|s}^2 sigma_s^2 / sigma_t^2      (eta^2 times the DDPM posterior variance)
    x_s         = alpha_s x0_hat + sqrt(sigma_s^2 - sigma_eta^2) eps_hat + sigma_eta z

eta = 0 is the deterministic DDIM sampler; eta = 1 equals the ancestral step of
:func:`course_lib.samplers.ddpm.ddpm_step` (same noise, same result).
"""

from __future__ import annotations

import math

import torch

from .ddpm import posterior_coefficients

__all__ = ["ddim_step"]


def ddim_step(denoiser, x_t, t, s, *, eta: float = 0.0, state=None, generator=None, noise=None):
    r"""One DDIM step x_t -> x_s. Returns (x_s, x0_hat, state).

    Args:
        x_t: (B, ...) ; t, s: 0-d times with s < t.
        eta: 0 (deterministic) .. 1 (ancestral), in [0, 1].
        noise: optional explicit standard normal noise z of x_t's shape.
    """
    if not (0.0 <= float(eta) <= 1.0) or math.isnan(float(eta)):
        raise ValueError(f"eta must lie in [0, 1], got {eta}")
    B = x_t.shape[0]
    sched = denoiser.schedule
    x0_hat = denoiser(x_t, t.expand(B) if torch.is_tensor(t) else torch.full((B,), float(t)))
    t64, s64 = torch.as_tensor(t, dtype=torch.float64), torch.as_tensor(s, dtype=torch.float64)
    a_t, sig_t = float(sched._alpha(t64)), float(sched._sigma(t64))
    a_s, sig_s = float(sched._alpha(s64)), float(sched._sigma(s64))
    eps_hat = (x_t - a_t * x0_hat) / sig_t
    _, _, post_var = posterior_coefficients(sched, t, s)
    var_eta = float(eta) ** 2 * post_var
    x_s = a_s * x0_hat + max(sig_s**2 - var_eta, 0.0) ** 0.5 * eps_hat
    if var_eta > 0:
        if noise is None:
            noise = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        elif noise.shape != x_t.shape:
            raise ValueError(f"noise must have x_t's shape {tuple(x_t.shape)}, got {tuple(noise.shape)}")
        x_s = x_s + var_eta**0.5 * noise
    return x_s, x0_hat, state
