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

from .step import as_point, check_step, denoise, draw_noise

__all__ = ["VARIANCES", "posterior_coefficients", "ddpm_step"]

VARIANCES = ("fixed_small", "fixed_large")


def posterior_coefficients(schedule, t, s):
    r"""(c_x, c_x0, var) with q(x_s | x_t, x0) = N(c_x x_t + c_x0 x0, var I), as float64 numbers.

    t, s: times with 0 <= s < t <= 1 (numbers, 0-d tensors or :class:`~course_lib.schedules.PathPoint`).
    """
    t, s = as_point(schedule, t, "t"), as_point(schedule, s, "s")
    if not s.t < t.t:
        raise ValueError(f"a reverse step needs s < t, got t={t.t}, s={s.t}")
    a_ts = t.alpha / s.alpha
    var_ts = t.sigma**2 - a_ts**2 * s.sigma**2  # sigma_{t|s}^2
    c_x = a_ts * s.sigma**2 / t.sigma**2
    c_x0 = s.alpha * var_ts / t.sigma**2
    var = var_ts * s.sigma**2 / t.sigma**2
    return c_x, c_x0, max(var, 0.0)


def ddpm_step(denoiser, x_t, t, s, *, variance: str = "fixed_small", state=None, generator=None, noise=None):
    r"""One ancestral step x_t -> x_s = mu(x_t, x0_hat) + sqrt(var) z. Returns (x_s, x0_hat, state).

    The mean is always the posterior mean of q(x_s | x_t, x0 = x0_hat). The variance is DDPM's
    choice (Ho et al. 2020, sec. 3.2, "both choices gave similar results"):

    * ``fixed_small``: var = beta_tilde = sigma_{t|s}^2 sigma_s^2 / sigma_t^2, the posterior's own
      (optimal for x0 deterministic); diffusers' ``variance_type="fixed_small"``;
    * ``fixed_large``: var = beta = sigma_{t|s}^2, the forward transition's (optimal for
      x0 ~ N(0, I)); diffusers' ``"fixed_large"``. As in Algorithm 2 (z = 0 at the last step),
      the step to s = 0 adds no noise with either choice. (diffusers skips the noise only when the
      step starts at its timestep 0; on a coarser grid its fixed_large last step adds noise of
      variance 1 - alpha_bar_t to the sample. The two agree on the full chain, as tested.)

    Args:
        x_t: (B, ...) ; t, s: times with s < t.
        variance: ``"fixed_small"`` (default) or ``"fixed_large"``.
        generator: the source of z when ``noise`` is not given.
        noise: optional explicit standard normal z of x_t's shape.
    """
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    t, s = check_step(denoiser, x_t, t, s)
    x0_hat = denoise(denoiser, x_t, t)  # (B, ...)
    c_x, c_x0, var = posterior_coefficients(denoiser.schedule, t, s)
    if variance == "fixed_large" and s.sigma > 0.0:
        var = t.sigma**2 - (t.alpha / s.alpha) ** 2 * s.sigma**2  # sigma_{t|s}^2, beta_t on DDPM's grid
    mean = c_x * x_t + c_x0 * x0_hat
    if var == 0.0:
        if noise is not None:
            draw_noise(x_t, generator, noise)  # checked all the same
        return mean, x0_hat, state
    return mean + var**0.5 * draw_noise(x_t, generator, noise), x0_hat, state
