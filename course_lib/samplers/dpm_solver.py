r"""DPM-Solver and DPM-Solver++: exponential integrators in log-SNR (introduced in chapter 07).

Notation note. DPM-Solver's lambda is HALF the course's log-SNR:

    lam_t = log(alpha_t / sigma_t) = log_snr(t) / 2        (log_snr = log(alpha_t^2 / sigma_t^2)),

written ``lam`` in the code (``lambda`` is a Python keyword). It increases as t decreases, so a
step t -> s < t has h = lam_s - lam_t > 0. The papers step from s to t < s; here, as everywhere in
the course, a step goes from t to s < t, so their (s, t) are our (t, s). Coefficients are float64
Python numbers, with expm1 for e^{+-h} - 1.

The probability-flow ODE is semi-linear in lam; solving the linear part exactly
(Lu et al. 2022, "DPM-Solver", arXiv:2206.00927, Proposition 3.1, eq. 3.4) gives, with noise prediction,

    x_s = (alpha_s / alpha_t) x_t - alpha_s int_{lam_t}^{lam_s} e^{-lam} eps_hat(x_lam, lam) d lam,

and with data prediction (Lu et al. 2022b, "DPM-Solver++", arXiv:2211.01095, the form behind its Algorithms 1-2)

    x_s = (sigma_s / sigma_t) x_t + sigma_s int_{lam_t}^{lam_s} e^{lam} x0_hat(x_lam, lam) d lam.

Approximating eps_hat or x0_hat by a polynomial in lam gives the solvers:

* :func:`dpm_solver_1_step` (eps_hat constant; Lu et al. 2022, eq. 3.7; = DDIM with eta = 0):
  x_s = (alpha_s / alpha_t) x_t - sigma_s expm1(h) eps_hat(x_t, t);
* :func:`dpm_solver_2_step` (Lu et al. 2022, Algorithm 1, r = 1/2): an extra evaluation at the
  midpoint u with lam_u = lam_t + h/2; second order;
* :func:`dpm_solver_pp_2m_step` (Lu et al. 2022b, Algorithm 2): data prediction, multistep:
  the previous x0_hat (carried in ``state``) gives the slope; second order, one evaluation per step.

Where sigma_s = 0 (the final step to t = 0 of VP and rectified-flow paths) lam_s = +inf: the
first-order update has the limit x_s = alpha_s x0_hat(x_t, t) and is used there (see each step).

>>> import torch
>>> from course_lib.schedules import VPLinear
>>> from course_lib.parameterization import Denoiser
>>> from course_lib.samplers.loop import sample
>>> from course_lib.time_grids import log_snr_grid
>>> den = Denoiser(lambda x, t: torch.zeros_like(x), VPLinear(), prediction="x0")   # x0_hat = 0
>>> x = sample(den, torch.ones(2, 3), log_snr_grid(VPLinear(), 10, t_start=0.999), dpm_solver_pp_2m_step)
>>> x.abs().max().item()
0.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..schedules import LOG_SNR_MIN, PathPoint
from .step import as_point, check_step, denoise, draw_noise

__all__ = ["half_log_snr", "MultistepState", "dpm_solver_1_step", "dpm_solver_2_step", "dpm_solver_pp_2m_step",
           "MultistepHistory", "dpm_solver_pp_3m_step", "sde_dpm_solver_pp_2m_step"]


def half_log_snr(schedule, t) -> float:
    r"""DPM-Solver's lam_t = log(alpha_t / sigma_t) = log_snr(t) / 2, unclipped, as a float64 number.

    +inf where sigma_t = 0 (clean data), -inf where alpha_t = 0 (pure noise). Unlike
    :meth:`Schedule.log_snr` it is not clipped to [LOG_SNR_MIN, LOG_SNR_MAX].
    Introduced in chapter 07.

    >>> from course_lib.schedules import RectifiedFlow
    >>> half_log_snr(RectifiedFlow(), 0.5), half_log_snr(RectifiedFlow(), 0.0)
    (0.0, inf)
    """
    return as_point(schedule, t).lam


def _first_order_coefficients(t: PathPoint, s: PathPoint):
    """alpha_t, sigma_t, alpha_s, sigma_s, lam_t, lam_s and h = lam_s - lam_t."""
    return t.alpha, t.sigma, s.alpha, s.sigma, t.lam, s.lam, s.lam - t.lam


def _check_noise_prediction_start(lam_t: float, t) -> None:
    """The noise-prediction update multiplies x_t by alpha_s / alpha_t = e^h sigma_s / sigma_t and
    subtracts a term of the same size: as alpha_t -> 0 (lam_t -> -inf) the difference loses every
    digit (VPCosine has alpha_1 = 6e-17 in float64). Require log_snr(t) = 2 lam_t >= LOG_SNR_MIN."""
    if not (LOG_SNR_MIN <= 2 * lam_t < math.inf):
        raise ValueError(
            "DPM-Solver with noise prediction needs sigma_t > 0 and log_snr(t) = 2 lam_t >= LOG_SNR_MIN = "
            f"{LOG_SNR_MIN} at the start of a step (it scales x_t by alpha_s / alpha_t), got log_snr = "
            f"{2 * lam_t:.4g} at t={t.t}; start the grid lower (VPCosine: t <= 0.99), or use "
            "dpm_solver_pp_2m_step (data prediction) or ddim_step"
        )


def _eps_hat(x_t, x0_hat, alpha_t: float, sigma_t: float):
    return (x_t - alpha_t * x0_hat) / sigma_t  # (B, ...)


def dpm_solver_1_step(denoiser, x_t: torch.Tensor, t, s, *, state=None, generator=None):
    r"""First-order DPM-Solver (Lu et al. 2022, arXiv:2206.00927, eq. 3.7):

        x_s = (alpha_s / alpha_t) x_t - sigma_s (e^h - 1) eps_hat(x_t, t),   h = lam_s - lam_t.

    Algebraically DDIM with eta = 0: alpha_s x0_hat + sigma_s eps_hat. At sigma_s = 0
    (lam_s = +inf, so sigma_s (e^h - 1) is 0 * inf) the limit sigma_s e^h = alpha_s sigma_t / alpha_t
    gives x_s = alpha_s x0_hat, which is used there. One evaluation. Introduced in chapter 07.

    Args:
        denoiser: D(x_t, t) -> x0_hat with a ``schedule`` attribute.
        x_t: (B, ...) ; t, s: 0-d times, 0 <= s < t <= 1, with sigma_t > 0 and
            log_snr(t) >= LOG_SNR_MIN (alpha_t not vanishingly small).
        state: passed through. generator: unused (deterministic).
    Returns:
        (x_s (B, ...), x0_hat = D(x_t, t) (B, ...), state).
    """
    t, s = check_step(denoiser, x_t, t, s)
    alpha_t, sigma_t, alpha_s, sigma_s, lam_t, lam_s, h = _first_order_coefficients(t, s)
    _check_noise_prediction_start(lam_t, t)
    x0_hat = denoise(denoiser, x_t, t)  # (B, ...)
    if sigma_s == 0.0:
        return alpha_s * x0_hat, x0_hat, state  # the h -> inf limit of eq. 3.7
    eps_hat = _eps_hat(x_t, x0_hat, alpha_t, sigma_t)
    x_s = (alpha_s / alpha_t) * x_t - sigma_s * math.expm1(h) * eps_hat  # eq. 3.7
    return x_s, x0_hat, state


def dpm_solver_2_step(denoiser, x_t: torch.Tensor, t, s, *, state=None, generator=None):
    r"""Second-order singlestep DPM-Solver (Lu et al. 2022, arXiv:2206.00927, Algorithm 1, r = 1/2):

        h   = lam_s - lam_t,   u = the time with lam_u = lam_t + h/2   (t > u > s)
        x_u = (alpha_u / alpha_t) x_t - sigma_u (e^{h/2} - 1) eps_hat(x_t, t)
        x_s = (alpha_s / alpha_t) x_t - sigma_s (e^h - 1) eps_hat(x_u, u)

    u comes from :meth:`Schedule.t_from_log_snr` (float64 bisection; note log_snr = 2 lam).
    NFE: 2 per step. On a step to sigma_s = 0 there is no midpoint (lam_s = +inf): the step
    falls back to the first-order limit x_s = alpha_s x0_hat(x_t, t) with 1 evaluation. That step's
    error is set by how small sigma_t already is (O(sigma_t^2 / alpha_t^2) for smooth data), not by
    the number of steps, which is why log-SNR and Karras grids end at a small t before the jump to 0.
    Introduced in chapter 07.

    Args:
        denoiser: D(x_t, t) -> x0_hat with a ``schedule`` attribute.
        x_t: (B, ...) ; t, s: 0-d times, 0 <= s < t <= 1, with sigma_t > 0 and
            log_snr(t) >= LOG_SNR_MIN (alpha_t not vanishingly small).
        state: passed through. generator: unused (deterministic).
    Returns:
        (x_s (B, ...), x0_hat = D(x_t, t) (B, ...), state).
    """
    t, s = check_step(denoiser, x_t, t, s)
    schedule = denoiser.schedule
    alpha_t, sigma_t, alpha_s, sigma_s, lam_t, lam_s, h = _first_order_coefficients(t, s)
    _check_noise_prediction_start(lam_t, t)
    x0_hat = denoise(denoiser, x_t, t)  # (B, ...)
    if sigma_s == 0.0:
        return alpha_s * x0_hat, x0_hat, state  # first-order limit; no midpoint at lam_s = +inf
    eps_hat_t = _eps_hat(x_t, x0_hat, alpha_t, sigma_t)
    # the midpoint in lam; t_from_log_snr takes the course's log_snr = 2 lam
    u = schedule.point(schedule.t_from_log_snr(torch.tensor(2.0 * (lam_t + 0.5 * h), dtype=torch.float64)))
    alpha_u, sigma_u = u.alpha, u.sigma
    h_u = u.lam - lam_t  # = h/2 up to the inversion's round-off
    x_u = (alpha_u / alpha_t) * x_t - sigma_u * math.expm1(h_u) * eps_hat_t  # first-order step t -> u
    x0_hat_u = denoise(denoiser, x_u, u)  # the extra evaluation, at the midpoint
    eps_hat_u = _eps_hat(x_u, x0_hat_u, alpha_u, sigma_u)
    x_s = (alpha_s / alpha_t) * x_t - sigma_s * math.expm1(h) * eps_hat_u  # t -> s with the midpoint's eps_hat
    return x_s, x0_hat, state


@dataclass(frozen=True)
class MultistepState:
    """What DPM-Solver++(2M) carries from one step to the next (immutable).

    Attributes:
        t: the start time of the step that produced this state (the previous time t_{i-1}).
        s: the end time of that step, which must be the start of the next one.
        lam: lam at ``t`` (DPM-Solver's half log-SNR).
        x0_hat: (B, ...) the denoiser's estimate at ``t``.
    """

    t: float
    s: float
    lam: float
    x0_hat: torch.Tensor


def dpm_solver_pp_2m_step(denoiser, x_t: torch.Tensor, t, s, *, state: MultistepState | None = None,
                          generator=None):
    r"""Second-order multistep DPM-Solver++ in data prediction (Lu et al. 2022b, arXiv:2211.01095, Algorithm 2).

        h   = lam_s - lam_t,   h_prev = lam_t - lam_prev,   r = h_prev / h
        D   = (1 + 1/(2r)) x0_hat(x_t, t) - 1/(2r) x0_hat_prev        (first step: D = x0_hat(x_t, t))
        x_s = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) D

    One evaluation per step; the previous time, its lam and x0_hat travel in ``state``
    (a :class:`MultistepState`, never modified: each call returns a new one). The first step
    (state=None) is first order (DPM-Solver++1 = DDIM with eta = 0).

    Final step to sigma_s = 0 (lam_s = +inf): then h = inf and r = h_prev / h = 0, so the weight
    1/(2r) of the slope term diverges; the linear-in-lam extrapolation of x0_hat has no meaning
    over an infinite interval. The step therefore uses the first-order update, whose h -> inf limit
    is x_s = alpha_s x0_hat(x_t, t), as diffusers' DPMSolverMultistepScheduler does
    (``lower_order_final``, always applied when the final sigma is zero). Its error is fixed by
    the last nonzero sigma of the grid, not by the number of steps.

    At alpha_t = 0 (lam_t = -inf, e.g. RectifiedFlow at t = 1; VPCosine's alpha_1 = 6e-17 acts
    alike) the update is still defined (e^{-h} - 1 = -1), and on the next step r = inf makes the
    slope weight 0: unlike the noise-prediction solvers, this one may start at t = 1.
    Introduced in chapter 07.

    Args:
        denoiser: D(x_t, t) -> x0_hat with a ``schedule`` attribute.
        x_t: (B, ...) ; t, s: 0-d times, 0 <= s < t <= 1, with sigma_t > 0.
        state: None on the first step, else the state returned by the previous step (which
            ended at t).
        generator: unused (deterministic).
    Returns:
        (x_s (B, ...), x0_hat = D(x_t, t) (B, ...), new MultistepState).
    """
    t, s = check_step(denoiser, x_t, t, s)
    _check_history(state, MultistepState, t, x_t)
    alpha_t, sigma_t, alpha_s, sigma_s, lam_t, lam_s, h = _first_order_coefficients(t, s)
    if sigma_t == 0.0:
        raise ValueError(f"a step needs sigma_t > 0 at its start, got sigma_t = 0 at t={t.t}")
    x0_hat = denoise(denoiser, x_t, t)  # (B, ...)
    new_state = MultistepState(t=t.t, s=s.t, lam=lam_t, x0_hat=x0_hat)
    if sigma_s == 0.0:
        return alpha_s * x0_hat, x0_hat, new_state  # lower-order final step: the h -> inf limit
    if state is None:
        D = x0_hat  # first step: first order (DPM-Solver++1)
    else:
        r = (lam_t - state.lam) / h  # step-size ratio
        D = (1 + 1 / (2 * r)) * x0_hat - (1 / (2 * r)) * state.x0_hat  # x0_hat extrapolated, linear in lam
    x_s = (sigma_s / sigma_t) * x_t - alpha_s * math.expm1(-h) * D  # exponential integrator, data prediction
    return x_s, x0_hat, new_state


# ------------------------------------------------------------------------------------------
# Issue 9: DPM-Solver++(3M) and SDE-DPM-Solver++(2M)
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MultistepHistory:
    """What DPM-Solver++(3M) carries from one step to the next: up to two previous x0_hats (immutable).

    Attributes:
        t: the start time of the step that produced this history (t_{i-1}).
        s: the end time of that step, which must be the start of the next one.
        lam: (lam_{i-1},) or (lam_{i-1}, lam_{i-2}): lam at the starts of the last one or two
            steps, the most recent first.
        x0_hat: the denoiser's estimates at those times, (B, ...) each, in the same order.
    """

    t: float
    s: float
    lam: tuple
    x0_hat: tuple


def _check_history(state, cls, t: PathPoint, x_t: torch.Tensor) -> None:
    """state is None or a ``cls`` that ended where this step starts, with x0_hats of x_t's shape."""
    if state is None:
        return
    if not isinstance(state, cls):
        raise ValueError(f"state must be None or a {cls.__name__} from the previous step, got {type(state).__name__}")
    if state.s != t.t:
        raise ValueError(
            f"state comes from a step that ended at t={state.s}, but this step starts at t={t.t}; "
            "pass state=None to start a new run"
        )
    for x0_prev in (state.x0_hat if isinstance(state.x0_hat, tuple) else (state.x0_hat,)):
        if x0_prev.shape != x_t.shape:
            raise ValueError(f"state.x0_hat has shape {tuple(x0_prev.shape)}, x_t has {tuple(x_t.shape)}")


def dpm_solver_pp_3m_step(denoiser, x_t: torch.Tensor, t, s, *, state: MultistepHistory | None = None,
                          as_diffusers: bool = False, generator=None):
    r"""Third-order multistep DPM-Solver++ in data prediction, DPM-Solver++(3M).

    Lu et al. 2022b (arXiv:2211.01095, sec. 4: the multistep form of the data-prediction solver,
    here at order 3), as the authors' code and diffusers' DPMSolverMultistepScheduler
    (solver_order=3, algorithm_type="dpmsolver++", ``multistep_dpm_solver_third_order_update``)
    implement it. With m0 = x0_hat(x_t, t) and m1, m2 the estimates at the two previous times:

        h  = lam_s - lam_t,  h_0 = lam_t - lam_{i-1},  h_1 = lam_{i-1} - lam_{i-2}
        r0 = h_0 / h,        r1 = h_1 / h
        D1_0 = (m0 - m1) / r0,           D1_1 = (m1 - m2) / r1          (divided differences)
        D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1),   D2 = (D1_0 - D1_1) / (r0 + r1)
        x_s = (sigma_s / sigma_t) x_t - alpha_s phi_1 m0 + alpha_s phi_2 D1 - 2 alpha_s phi_3 D2,
        phi_1 = e^{-h} - 1,  phi_2 = phi_1 / h + 1,  phi_3 = (phi_1 + h) / h^2 - 1/2

    (x0_hat expanded to second order in lam, x0_hat(lam) ~ m0 + (lam - lam_t) m' + (lam - lam_t)^2 / 2 m'',
    and the exponential integral of the module docstring solved exactly; diffusers' (sigma_s0,
    sigma_t) are the course's (t, s).) One evaluation per step.

    **The factor 2 on the D2 term.** D1 = h m' and D2 = h^2 m'' / 2 (to leading order), and
    sigma_s int e^lam (lam - lam_t)^2 / 2 m'' d lam = -2 alpha_s phi_3 D2. diffusers (and the authors'
    reference code, and k-diffusion's ``sample_dpmpp_3m_sde``) use -alpha_s phi_3 D2, half of it: for
    x0_hat(lam) = (lam - lam_t)^2 / 2 their step integrates exactly half the quadratic term
    (tests/test_samplers_new.py), which leaves a local error O(h^3) and makes the method second order.
    Measured on the exact-Gaussian denoiser (log-SNR grid, float64, N = 16..128): slope 3.9-4.0
    with the factor 2, 2.25 without (2.07 on the last doubling). ``as_diffusers=True`` uses
    diffusers' weight, to reproduce its trajectory (tests/test_samplers_new_parity.py).

    What the course does on the first steps and the last one:

    * step 1 (state=None): first order, DPM-Solver++1 (= DDIM with eta = 0);
    * step 2 (one x0_hat in the history): second order, the update of :func:`dpm_solver_pp_2m_step`;
    * a step to sigma_s = 0 (lam_s = +inf, h = inf): first order, x_s = alpha_s x0_hat(x_t, t),
      for the reason given in :func:`dpm_solver_pp_2m_step`;
    * every other step: third order.

    diffusers does the same, and on grids of fewer than 15 steps with ``lower_order_final=True``
    (its default) it also drops to second order on the next-to-last step; a step function does not
    know how many steps remain, so the course does not (pass ``lower_order_final=False`` to diffusers,
    or use 15 steps or more, to get the same trajectory).
    Introduced in chapter 07.

    Args:
        denoiser: D(x_t, t) -> x0_hat with a ``schedule`` attribute.
        x_t: (B, ...) ; t, s: 0-d times, 0 <= s < t <= 1, with sigma_t > 0.
        state: None on the first step, else the :class:`MultistepHistory` returned by the previous
            step (which ended at t); never modified, each call returns a new one.
        as_diffusers: False (default) for the third-order update above; True for diffusers'
            update with the D2 term at half weight (second order).
        generator: unused (deterministic).
    Returns:
        (x_s (B, ...), x0_hat = D(x_t, t) (B, ...), new MultistepHistory).
    """
    t, s = check_step(denoiser, x_t, t, s)
    if not isinstance(as_diffusers, bool):
        raise ValueError(f"as_diffusers must be True or False, got {as_diffusers!r}")
    _check_history(state, MultistepHistory, t, x_t)
    alpha_t, sigma_t, alpha_s, sigma_s, lam_t, lam_s, h = _first_order_coefficients(t, s)
    if sigma_t == 0.0:
        raise ValueError(f"a step needs sigma_t > 0 at its start, got sigma_t = 0 at t={t.t}")
    m0 = denoise(denoiser, x_t, t)  # (B, ...)
    lams = (lam_t,) if state is None else (lam_t, state.lam[0])
    x0_hats = (m0,) if state is None else (m0, state.x0_hat[0])
    new_state = MultistepHistory(t=t.t, s=s.t, lam=lams, x0_hat=x0_hats)
    if sigma_s == 0.0:
        return alpha_s * m0, m0, new_state  # lower-order final step: the h -> inf limit
    phi_1 = math.expm1(-h)
    if state is None:  # step 1: first order
        x_s = (sigma_s / sigma_t) * x_t - alpha_s * phi_1 * m0
    elif len(state.lam) == 1:  # step 2: second order, as DPM-Solver++(2M)
        r = (lam_t - state.lam[0]) / h
        D = (1 + 1 / (2 * r)) * m0 - (1 / (2 * r)) * state.x0_hat[0]
        x_s = (sigma_s / sigma_t) * x_t - alpha_s * phi_1 * D
    else:  # third order
        (lam_1, lam_2), (m1, m2) = state.lam, state.x0_hat
        r0, r1 = (lam_t - lam_1) / h, (lam_1 - lam_2) / h
        D1_0, D1_1 = (m0 - m1) / r0, (m1 - m2) / r1  # (B, ...) divided differences
        D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1)  # first derivative in lam, times h
        D2 = (D1_0 - D1_1) / (r0 + r1)  # second derivative in lam, times h^2 / 2
        phi_2 = phi_1 / h + 1
        phi_3 = (phi_1 + h) / h**2 - 0.5
        w_2 = 1.0 if as_diffusers else 2.0  # the quadratic term's weight (see the docstring)
        x_s = (sigma_s / sigma_t) * x_t - alpha_s * phi_1 * m0 + alpha_s * phi_2 * D1 - w_2 * alpha_s * phi_3 * D2
    return x_s, m0, new_state


def sde_dpm_solver_pp_2m_step(denoiser, x_t: torch.Tensor, t, s, *, state: MultistepState | None = None,
                              generator: torch.Generator | None = None, noise: torch.Tensor | None = None):
    r"""Second-order multistep SDE-DPM-Solver++ (midpoint form), SDE-DPM-Solver++(2M).

    The reverse SDE of Song et al. 2021 (eq. 6) in data prediction, its linear part and the noise
    integrated exactly in lam (Lu et al. 2022b, arXiv:2211.01095; the form of diffusers'
    DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_type="midpoint") and
    k-diffusion's ``sample_dpmpp_2m_sde``):

        h   = lam_s - lam_t,   r = (lam_t - lam_prev) / h
        D   = (1 + 1/(2r)) x0_hat(x_t, t) - 1/(2r) x0_hat_prev          (first step: D = x0_hat(x_t, t))
        x_s = (sigma_s / sigma_t) e^{-h} x_t + alpha_s (1 - e^{-2h}) D + sigma_s sqrt(1 - e^{-2h}) z

    The first step (state=None) is first order, and that update is exactly the DDPM posterior
    step (mean (sigma_s / sigma_t) e^{-h} x_t + alpha_s (1 - e^{-2h}) x0_hat, variance
    sigma_s^2 (1 - e^{-2h}) = the posterior variance): DDIM with eta = 1.
    A step to sigma_s = 0 (lam_s = +inf) is first order, whose limit is x_s = alpha_s x0_hat(x_t, t)
    with no noise, as in diffusers.

    One evaluation and one normal z per step, drawn on every step (also on the final step, where
    it is unused, as diffusers draws it), so ``sample(..., noise=[...])`` takes K tensors of x's
    shape. The state is a :class:`MultistepState`, as for :func:`dpm_solver_pp_2m_step`.
    Introduced in chapter 07.

    Args:
        denoiser: D(x_t, t) -> x0_hat with a ``schedule`` attribute.
        x_t: (B, ...) ; t, s: 0-d times, 0 <= s < t <= 1, with sigma_t > 0.
        state: None on the first step, else the state returned by the previous step.
        generator: the source of z when ``noise`` is not given.
        noise: optional z, standard normal of x_t's shape.
    Returns:
        (x_s (B, ...), x0_hat = D(x_t, t) (B, ...), new MultistepState).
    """
    t, s = check_step(denoiser, x_t, t, s)
    _check_history(state, MultistepState, t, x_t)
    alpha_t, sigma_t, alpha_s, sigma_s, lam_t, lam_s, h = _first_order_coefficients(t, s)
    if sigma_t == 0.0:
        raise ValueError(f"a step needs sigma_t > 0 at its start, got sigma_t = 0 at t={t.t}")
    z = draw_noise(x_t, generator, noise)  # (B, ...)
    x0_hat = denoise(denoiser, x_t, t)  # (B, ...)
    new_state = MultistepState(t=t.t, s=s.t, lam=lam_t, x0_hat=x0_hat)
    if sigma_s == 0.0:
        return alpha_s * x0_hat, x0_hat, new_state  # lower-order final step: the h -> inf limit
    if state is None:
        D = x0_hat  # first step: first order
    else:
        r = (lam_t - state.lam) / h
        D = (1 + 1 / (2 * r)) * x0_hat - (1 / (2 * r)) * state.x0_hat  # midpoint: D0 + D1 / 2
    one_minus_e2h = -math.expm1(-2 * h)  # 1 - e^{-2h}
    x_s = (sigma_s / sigma_t) * math.exp(-h) * x_t + alpha_s * one_minus_e2h * D + sigma_s * math.sqrt(one_minus_e2h) * z
    return x_s, x0_hat, new_state
