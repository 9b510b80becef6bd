r"""The EDM samplers of Karras et al. 2022 on the course's path (introduced in chapter 07, used in chapter 10).

Karras et al. 2022 ("Elucidating the design space of diffusion-based generative models",
arXiv:2206.00364) write every path as x = s(t) (x0 + sigma(t) eps) and choose sigma(t) = t,
s(t) = 1 for their sampler. On the course's path x_t = alpha_t x0 + sigma_t eps that choice is
the scaled state and its noise level

    x_bar = x_t / alpha_t = x0 + sigma_bar eps,        sigma_bar = sigma_t / alpha_t = e^{-lam_t}

(lam_t = log(alpha_t / sigma_t), DPM-Solver's half log-SNR), for which the probability-flow ODE
is (Karras et al. 2022, eq. 4 with sigma(t) = t, s(t) = 1)

    d x_bar / d sigma_bar = (x_bar - x0_hat) / sigma_bar = eps_hat,

x0_hat = D(alpha_t x_bar, t) the course's denoiser at the time t of that noise level. The steps
below integrate it in sigma_bar, not in t, and map back with x_s = alpha_s x_bar_s:

* :func:`edm_heun_step`: Algorithm 1 (deterministic, Heun, second order);
* :func:`edm_stochastic_step`: Algorithm 2 (churn: add noise to raise sigma_bar to
  sigma_hat = (1 + gamma) sigma_bar, then the Heun step from sigma_hat).

Heun in sigma_bar is not :func:`~course_lib.samplers.ode.heun_step` (Heun in t): the two give
different results on the same grid and both converge at second order (tests/test_samplers_new.py).
Its Euler predictor alone is DDIM with eta = 0: x_bar_t + (sigma_bar_s - sigma_bar_t) eps_hat
gives x_s = alpha_s x0_hat + sigma_s eps_hat.

>>> import torch
>>> from course_lib.schedules import EDM
>>> from course_lib.parameterization import Denoiser
>>> den = Denoiser(lambda x, t: torch.zeros_like(x), EDM(), prediction="x0")   # x0_hat = 0
>>> x_s, x0_hat, _ = edm_heun_step(den, torch.ones(2, 3), 0.5, 0.25)
>>> bool(torch.allclose(x_s, torch.full((2, 3), float(EDM().sigma(torch.tensor(0.25)) / EDM().sigma(torch.tensor(0.5))))))
True
"""

from __future__ import annotations

import math

import torch

from ..schedules import LOG_SNR_MIN, PathPoint
from .step import check_step, denoise, draw_noise

__all__ = ["edm_heun_step", "edm_stochastic_step"]


def _sigma_bar(t: PathPoint) -> float:
    """sigma_bar_t = sigma_t / alpha_t, the EDM noise level of the scaled state x_t / alpha_t."""
    if not t.alpha > 0.0:
        raise ValueError(
            f"the EDM samplers work with x_bar = x_t / alpha_t and need alpha_t > 0, got alpha_t = {t.alpha} at "
            f"t={t.t} (start the grid below t = 1, e.g. karras_grid(schedule, K))"
        )
    return t.sigma / t.alpha


def _heun_in_sigma_bar(denoiser, x_t: torch.Tensor, t: PathPoint, s: PathPoint):
    """Algorithm 1, lines 4-8, from x_t at t to s, in x_bar and sigma_bar. Returns (x_s, x0_hat)."""
    sigma_bar_t, sigma_bar_s = _sigma_bar(t), _sigma_bar(s)
    if sigma_bar_t == 0.0:
        raise ValueError(f"a step needs sigma_t > 0 at its start, got sigma_t = 0 at t={t.t}")
    x_bar_t = x_t / t.alpha  # (B, ...) x_bar = x / alpha
    x0_hat = denoise(denoiser, x_t, t)  # (B, ...) D(x_bar_t; sigma_bar_t)
    d_t = (x_bar_t - x0_hat) / sigma_bar_t  # line 4: d_i = (x_i - D(x_i; t_i)) / t_i = eps_hat
    x_bar_s = x_bar_t + (sigma_bar_s - sigma_bar_t) * d_t  # line 5: Euler step
    if sigma_bar_s == 0.0:
        return s.alpha * x_bar_s, x0_hat  # line 6: no correction at sigma = 0
    x0_hat_s = denoise(denoiser, s.alpha * x_bar_s, s)  # (B, ...) D(x_bar_s; sigma_bar_s)
    d_s = (x_bar_s - x0_hat_s) / sigma_bar_s  # line 7
    x_bar_s = x_bar_t + (sigma_bar_s - sigma_bar_t) * (0.5 * d_t + 0.5 * d_s)  # line 8: trapezoidal rule
    return s.alpha * x_bar_s, x0_hat  # back to the course's x_s = alpha_s x_bar_s


def edm_heun_step(denoiser, x_t: torch.Tensor, t, s, *, state=None, generator=None):
    r"""One step of Karras et al. 2022 (arXiv:2206.00364) Algorithm 1, sigma(t) = t, s(t) = 1, on the course's path.

    With x_bar = x / alpha and sigma_bar = sigma / alpha (so d x_bar / d sigma_bar = eps_hat):

        x_bar_t = x_t / alpha_t
        d_t     = (x_bar_t - x0_hat(x_t, t)) / sigma_bar_t                  (line 4)
        x_bar_s = x_bar_t + (sigma_bar_s - sigma_bar_t) d_t                  (line 5: Euler)
        if sigma_s != 0:                                                     (line 6)
            d_s     = (x_bar_s - x0_hat(alpha_s x_bar_s, s)) / sigma_bar_s   (line 7)
            x_bar_s = x_bar_t + (sigma_bar_s - sigma_bar_t) (d_t + d_s) / 2  (line 8: trapezoidal)
        x_s = alpha_s x_bar_s

    No correction where sigma_s = 0 (the final step to t = 0 of VP paths): there eps_hat is 0/0
    and the Euler step gives x_s = alpha_s x0_hat (DDIM's last step). On VE/EDM paths sigma_0 > 0
    and every step is corrected. NFE: 2 per step, 1 on a step to sigma_s = 0. Second order in
    the step of sigma_bar. Introduced in chapter 07.

    Args:
        denoiser: D(x_t, t) -> x0_hat with a ``schedule`` attribute.
        x_t: (B, ...) the state at time t.
        t, s: times with 0 <= s < t <= 1, alpha_t > 0 and sigma_t > 0 (numbers, 0-d tensors or PathPoints).
        state: passed through. generator: unused (deterministic).
    Returns:
        (x_s (B, ...), x0_hat = D(x_t, t) (B, ...), state).
    """
    t, s = check_step(denoiser, x_t, t, s)
    x_s, x0_hat = _heun_in_sigma_bar(denoiser, x_t, t, s)
    return x_s, x0_hat, state


def _check_churn(S_churn, S_tmin, S_tmax, S_noise, n_steps) -> None:
    for name, value in (("S_churn", S_churn), ("S_tmin", S_tmin), ("S_tmax", S_tmax), ("S_noise", S_noise)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    if not S_tmin <= S_tmax:
        raise ValueError(f"need S_tmin <= S_tmax (the sigma_bar range where churn is applied), got {S_tmin}, {S_tmax}")
    if n_steps is None and S_churn == 0:
        return  # gamma = 0 whatever N is
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(
            "n_steps must be the number of steps N of the whole run (a positive integer; gamma = S_churn / N), "
            f"got {n_steps!r}"
        )


def edm_stochastic_step(denoiser, x_t: torch.Tensor, t, s, *, n_steps: int | None = None, S_churn: float = 0.0,
                        S_tmin: float = 0.0, S_tmax: float = math.inf, S_noise: float = 1.0, state=None,
                        generator: torch.Generator | None = None, noise: torch.Tensor | None = None):
    r"""One step of Karras et al. 2022 (arXiv:2206.00364) Algorithm 2, the stochastic EDM sampler.

    In the scaled state x_bar = x / alpha with noise level sigma_bar = sigma / alpha:

        gamma     = min(S_churn / N, sqrt(2) - 1) if S_tmin <= sigma_bar_t <= S_tmax else 0   (line 4)
        z ~ N(0, I);   sigma_hat = (1 + gamma) sigma_bar_t                                    (lines 5-6)
        x_bar_hat = x_bar_t + sqrt(sigma_hat^2 - sigma_bar_t^2) S_noise z                     (line 7)
        then the Heun step of :func:`edm_heun_step` from sigma_hat to sigma_bar_s             (lines 8-12)

    sigma_hat is a time t_hat > t of the course's path, the one with log_snr(t_hat) = -2 log sigma_hat
    (:meth:`Schedule.t_from_log_snr`); the Heun step starts there at x_hat = alpha_t_hat x_bar_hat.
    Where sigma_hat would exceed the schedule's largest noise level (log_snr below
    max(log_snr(1), LOG_SNR_MIN)), gamma is reduced so that t_hat is that end of the schedule, and the
    noise added is sqrt(sigma_bar(t_hat)^2 - sigma_bar_t^2) for the sigma_bar(t_hat) actually reached
    (a step already at that end gets no churn). With gamma = 0 (S_churn = 0, or sigma_bar_t outside
    [S_tmin, S_tmax]) no time is inverted and the step is exactly :func:`edm_heun_step`.

    N, the number of steps of the run, must be given as ``n_steps`` where S_churn > 0 (a step sees
    only one step).
    S_tmin, S_tmax are compared with sigma_bar_t (Karras' sigma). One denoiser evaluation more than
    Heun where it corrects (2 per step, 1 on a step to sigma_s = 0); one normal z per step, drawn on
    every step (also where gamma = 0), so ``sample(..., noise=[...])`` takes K tensors of x's shape.
    Introduced in chapter 07.

    Args:
        denoiser: D(x_t, t) -> x0_hat with a ``schedule`` attribute.
        x_t: (B, ...) the state at time t.
        t, s: times with 0 <= s < t <= 1, alpha_t > 0 and sigma_t > 0.
        n_steps: N, the number of steps of the whole run (required when S_churn > 0).
        S_churn, S_tmin, S_tmax, S_noise: Algorithm 2's parameters (S_churn = 0: Algorithm 1).
        state: passed through.
        generator: the source of z when ``noise`` is not given.
        noise: optional z, standard normal of x_t's shape.
    Returns:
        (x_s (B, ...), x0_hat = D(x_hat, t_hat) (B, ...), state).
    """
    t, s = check_step(denoiser, x_t, t, s)
    _check_churn(S_churn, S_tmin, S_tmax, S_noise, n_steps)
    z = draw_noise(x_t, generator, noise)  # (B, ...) line 5
    sigma_bar_t = _sigma_bar(t)
    churn = S_churn > 0 and S_tmin <= sigma_bar_t <= S_tmax
    gamma = min(S_churn / n_steps, math.sqrt(2) - 1) if churn else 0.0  # line 4
    if gamma == 0.0:
        x_s, x0_hat = _heun_in_sigma_bar(denoiser, x_t, t, s)  # Algorithm 1 exactly
        return x_s, x0_hat, state
    schedule = denoiser.schedule
    log_snr_hat = -2.0 * math.log(sigma_bar_t * (1.0 + gamma))  # sigma_hat = e^{-log_snr / 2}
    log_snr_floor = max(2.0 * schedule.point(1.0).lam, LOG_SNR_MIN)  # the schedule's largest noise level
    t_hat = schedule.point(schedule.t_from_log_snr(torch.tensor(max(log_snr_hat, log_snr_floor), dtype=torch.float64)))
    if not t_hat.t > t.t:  # already at the top of the schedule: nothing to churn
        x_s, x0_hat = _heun_in_sigma_bar(denoiser, x_t, t, s)
        return x_s, x0_hat, state
    sigma_hat = _sigma_bar(t_hat)  # (1 + gamma) sigma_bar_t up to the inversion's round-off, or the clipped level
    x_bar_hat = x_t / t.alpha + math.sqrt(sigma_hat**2 - sigma_bar_t**2) * S_noise * z  # line 7
    x_s, x0_hat = _heun_in_sigma_bar(denoiser, t_hat.alpha * x_bar_hat, t_hat, s)  # lines 8-12
    return x_s, x0_hat, state
