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

from .ddpm import posterior_coefficients
from .step import check_step, denoise, draw_noise

__all__ = ["ddim_step"]


def ddim_step(denoiser, x_t, t, s, *, eta: float = 0.0, state=None, generator=None, noise=None):
    r"""One DDIM step x_t -> x_s. Returns (x_s, x0_hat, state).

    Args:
        x_t: (B, ...) ; t, s: times with s < t (numbers, 0-d tensors or PathPoints).
        eta: 0 (deterministic) .. 1 (ancestral), in [0, 1].
        generator: the source of z when eta > 0 and ``noise`` is not given.
        noise: optional explicit standard normal noise z of x_t's shape.
    """
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or math.isnan(eta) or not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1] (a number), got {eta!r}")
    t, s = check_step(denoiser, x_t, t, s)
    x0_hat = denoise(denoiser, x_t, t)  # (B, ...)
    eps_hat = (x_t - t.alpha * x0_hat) / t.sigma  # (B, ...)
    _, _, post_var = posterior_coefficients(denoiser.schedule, t, s)
    var_eta = float(eta) ** 2 * post_var  # eq. 16
    x_s = s.alpha * x0_hat + max(s.sigma**2 - var_eta, 0.0) ** 0.5 * eps_hat  # eq. 12
    if var_eta > 0:
        x_s = x_s + var_eta**0.5 * draw_noise(x_t, generator, noise)
    elif noise is not None:
        draw_noise(x_t, generator, noise)  # checked all the same
    return x_s, x0_hat, state
