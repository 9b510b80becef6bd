r"""Ancestral (DDPM) sampling step (introduced in chapter 02).

Given x0_hat = D(x_t, t), draw x_s from the forward-process posterior q(x_s | x_t, x0 = x0_hat).
For the affine path x_t = alpha_t x0 + sigma_t eps, with alpha_{t|s} = alpha_t / alpha_s and
sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2 (Kingma et al. 2021, arXiv:2107.00630, eq. 33-34):

    mu    = alpha_{t|s} sigma_s^2 / sigma_t^2 x_t + alpha_s sigma_{t|s}^2 / sigma_t^2 x0_hat
    var   = sigma_{t|s}^2 sigma_s^2 / sigma_t^2

On DDPM's grid (s = t - 1/N) this is Ho et al. 2020, eq. 6-7 with the posterior variance
beta_tilde (Algorithm 2 with sigma_t^2 = beta_tilde_t); on a coarser grid it is the same
posterior with a larger jump.
"""

from __future__ import annotations

import torch

__all__ = ["posterior_coefficients", "ddpm_step"]


def posterior_coefficients(schedule, t, s):
    r"""(c_x, c_x0, var) with q(x_s | x_t, x0) = N(c_x x_t + c_x0 x0, var I), in float64.

    t, s: 0-d tensors (or floats) with 0 <= s < t <= 1.
    """
    t64 = torch.as_tensor(t, dtype=torch.float64)
    s64 = torch.as_tensor(s, dtype=torch.float64)
    if not bool(s64 < t64):
        raise ValueError(f"a reverse step needs s < t, got t={float(t64)}, s={float(s64)}")
    a_t, s_t = schedule._alpha(t64), schedule._sigma(t64)
    a_s, s_s = schedule._alpha(s64), schedule._sigma(s64)
    a_ts = a_t / a_s
    var_ts = s_t**2 - a_ts**2 * s_s**2  # sigma_{t|s}^2
    c_x = a_ts * s_s**2 / s_t**2
    c_x0 = a_s * var_ts / s_t**2
    var = var_ts * s_s**2 / s_t**2
    return float(c_x), float(c_x0), float(var.clamp(min=0.0))


def ddpm_step(denoiser, x_t, t, s, *, state=None, generator=None, noise=None):
    r"""One ancestral step x_t -> x_s ~ q(x_s | x_t, x0_hat). Returns (x_s, x0_hat, state).

    Args:
        x_t: (B, ...) ; t, s: 0-d times with s < t.
        noise: optional explicit standard normal noise of x_t's shape (else drawn from generator).
    """
    B = x_t.shape[0]
    x0_hat = denoiser(x_t, t.expand(B) if torch.is_tensor(t) else torch.full((B,), float(t)))
    c_x, c_x0, var = posterior_coefficients(denoiser.schedule, t, s)
    mean = c_x * x_t + c_x0 * x0_hat
    if var == 0.0:
        return mean, x0_hat, state
    if noise is None:
        noise = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
    elif noise.shape != x_t.shape:
        raise ValueError(f"noise must have x_t's shape {tuple(x_t.shape)}, got {tuple(noise.shape)}")
    return mean + var**0.5 * noise, x0_hat, state
