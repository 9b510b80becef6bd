r"""The probability-flow ODE and its Euler and Heun steps (introduced in chapter 06, used in chapter 07).

For the affine path x_t = alpha_t x0 + sigma_t eps the probability-flow ODE of Song et al. 2021
("Score-based generative modeling through SDEs", arXiv:2011.13456, eq. 13),

    dx/dt = f(t) x - 1/2 g(t)^2 score(x, t),

with f, g^2 of :func:`course_lib.samplers.sde.drift_and_diffusion` and score = -eps_hat / sigma_t,
rewrites as the conditional-expectation velocity

    dx/dt = d_alpha_t x0_hat + d_sigma_t eps_hat,        eps_hat = (x - alpha_t x0_hat) / sigma_t,

i.e. E[d x_t/dt | x_t = x] = E[d_alpha_t x0 + d_sigma_t eps | x_t = x]: the marginal velocity of flow
matching (Lipman et al. 2022, arXiv:2210.02747, eq. 8). (Check: with x0_hat = (x - sigma_t eps_hat)
/ alpha_t the velocity is f x + (d_sigma_t - f sigma_t) eps_hat, and 1/2 g^2 / sigma_t =
d_sigma_t - f sigma_t.) Both steps below integrate it in t over one step t -> s < t:

* :func:`euler_step`: x_s = x_t + (s - t) v(x_t, t), first order, one evaluation;
* :func:`heun_step`: Euler predictor, trapezoidal corrector (Karras et al. 2022, "Elucidating the
  design space...", arXiv:2206.00364, Algorithm 1), second order, two evaluations per step
  except a step that ends where sigma_s = 0.

Every step returns (x_s, x0_hat, state) with x0_hat = D(x_t, t), the denoiser's estimate at the
start of the step; ``state`` is passed through untouched (these are one-step methods).

>>> import torch
>>> from course_lib.schedules import RectifiedFlow
>>> from course_lib.parameterization import Denoiser
>>> velocity_net = lambda x, t: torch.full_like(x, 2.0)      # predicts u = eps - x0 = 2
>>> den = Denoiser(velocity_net, RectifiedFlow(), prediction="velocity")
>>> x = torch.zeros(3, 2)
>>> torch.allclose(pf_ode_velocity(den, x, torch.tensor(0.5)), torch.full((3, 2), 2.0))
True
>>> x_s, x0_hat, _ = heun_step(den, x, torch.tensor(0.5), torch.tensor(0.25))
>>> torch.allclose(x_s, torch.full((3, 2), -0.5))           # exact for a constant velocity
True
"""

from __future__ import annotations

import torch

from ..schedules import PathPoint, broadcast_to, check_times
from .step import check_step, check_x, denoise

__all__ = ["pf_ode_velocity", "euler_step", "heun_step"]


def _check_moving(t: PathPoint) -> None:
    """Raise where d_alpha_t = d_sigma_t = 0: a VP schedule zeroes its time derivatives where it
    clips its log-SNR (e.g. VPCosine at t = 1, where alpha_1 = 0), and an ODE or SDE step started
    there would not move. (Only steps check this: integrating *up to* such a t is harmless.)"""
    if t.d_alpha == 0.0 and t.d_sigma == 0.0:
        raise ValueError(
            f"the schedule's time derivatives d_alpha_t and d_sigma_t are both 0 at t={t.t} (its log-SNR "
            "is clipped there), so the ODE/SDE would not move; start the grid where the log-SNR is inside "
            "[LOG_SNR_MIN, LOG_SNR_MAX] (VPCosine: t <= 0.99)"
        )


def _velocity_at(denoiser, x: torch.Tensor, t: PathPoint) -> tuple[torch.Tensor, torch.Tensor]:
    """(v(x, t), x0_hat) at one time for the whole batch: v = d_alpha_t x0_hat + d_sigma_t eps_hat."""
    if t.sigma == 0.0:
        raise ValueError(
            "the probability-flow velocity needs sigma_t > 0 (eps_hat = (x_t - alpha_t x0_hat) / sigma_t "
            f"is 0/0 at sigma_t = 0), got t={t.t}"
        )
    x0_hat = denoise(denoiser, x, t)  # (B, ...)
    eps_hat = (x - t.alpha * x0_hat) / t.sigma  # (B, ...)
    return t.d_alpha * x0_hat + t.d_sigma * eps_hat, x0_hat


def pf_ode_velocity(denoiser, x: torch.Tensor, t) -> torch.Tensor:
    r"""The probability-flow velocity v(x, t) = d_alpha_t x0_hat + d_sigma_t eps_hat.

    Song et al. 2021, arXiv:2011.13456, eq. 13, dx/dt = f(t) x - 1/2 g(t)^2 score, rewritten for
    the affine path x_t = alpha_t x0 + sigma_t eps with x0_hat = D(x, t) and
    eps_hat = (x - alpha_t x0_hat) / sigma_t; it equals the marginal velocity E[u | x_t = x] of
    flow matching (Lipman et al. 2022, arXiv:2210.02747, eq. 8). Introduced in chapter 06.

    Args:
        denoiser: D(x_t, t) -> x0_hat with a ``schedule`` attribute.
        x: (B, ...) the state x_t.
        t: () or (B,) times in [0, 1] with sigma_t > 0 (or a PathPoint). Where a schedule clips its
            log-SNR (VPCosine at t = 1) its derivatives, and so this velocity, are 0 by design.
    Returns:
        (B, ...) dx/dt.
    """
    check_x(denoiser, x, "x")
    if isinstance(t, PathPoint):
        return _velocity_at(denoiser, x, t)[0]
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        t = torch.tensor(float(t), dtype=torch.float64)
    t = check_times(t)
    if t.dim() > 1 or (t.dim() == 1 and t.shape[0] != x.shape[0]):
        raise ValueError(f"t must have shape () or ({x.shape[0]},), got {tuple(t.shape)}")
    schedule, t64 = denoiser.schedule, t.to(torch.float64)
    sigma_t = schedule.sigma(t64)
    if bool((sigma_t == 0).any()):
        raise ValueError(
            "the probability-flow velocity needs sigma_t > 0 (eps_hat = (x_t - alpha_t x0_hat) / sigma_t "
            f"is 0/0 at sigma_t = 0), got t={t.tolist()}"
        )
    alpha_t, d_alpha_t, d_sigma_t = schedule.alpha(t64), schedule.d_alpha(t64), schedule.d_sigma(t64)
    x0_hat = denoiser(x, t.expand(x.shape[0]) if t.dim() == 0 else t)
    if not isinstance(x0_hat, torch.Tensor) or x0_hat.shape != x.shape:
        raise ValueError(f"the denoiser must return x0_hat of x's shape {tuple(x.shape)}, got "
                         f"{tuple(x0_hat.shape) if isinstance(x0_hat, torch.Tensor) else type(x0_hat).__name__}")
    eps_hat = (x - broadcast_to(alpha_t, x) * x0_hat) / broadcast_to(sigma_t, x)  # (B, ...)
    return broadcast_to(d_alpha_t, x) * x0_hat + broadcast_to(d_sigma_t, x) * eps_hat  # (B, ...)


# ------------------------------------------------------------------------------------------
# Steps
# ------------------------------------------------------------------------------------------
def euler_step(denoiser, x_t: torch.Tensor, t, s, *, state=None, generator=None):
    r"""One Euler step of the probability-flow ODE: x_s = x_t + (s - t) v(x_t, t).

    First order: the global error after N steps is O(1/N). One denoiser evaluation.
    Introduced in chapter 06.

    Args:
        denoiser: D(x_t, t) -> x0_hat with a ``schedule`` attribute.
        x_t: (B, ...) the state at time t.
        t, s: times with 0 <= s < t <= 1 and sigma_t > 0 (numbers, 0-d tensors or PathPoints).
        state: passed through (a one-step method remembers nothing).
        generator: unused (deterministic); accepted for the common step signature.
    Returns:
        (x_s (B, ...), x0_hat = D(x_t, t) (B, ...), state).
    """
    t, s = check_step(denoiser, x_t, t, s)
    _check_moving(t)
    velocity, x0_hat = _velocity_at(denoiser, x_t, t)  # (B, ...)
    return x_t + (s.t - t.t) * velocity, x0_hat, state  # s - t < 0: time runs backwards


def heun_step(denoiser, x_t: torch.Tensor, t, s, *, state=None, generator=None):
    r"""One Heun step of the probability-flow ODE (Karras et al. 2022, arXiv:2206.00364, Algorithm 1).

        d_t  = v(x_t, t)                              (line 4)
        x'_s = x_t + (s - t) d_t                      (line 5: Euler predictor)
        if sigma_s != 0:                              (line 6)
            d_s = v(x'_s, s)                          (line 7)
            x_s = x_t + (s - t) (d_t + d_s) / 2       (line 8: trapezoidal corrector)
        else: x_s = x'_s

    Why no corrector where sigma_s = 0 (on VP and rectified-flow paths, the final step to t = 0):
    v(x, s) needs eps_hat = (x - alpha_s x0_hat) / sigma_s, which is 0/0 there, and a denoiser is
    never trained at sigma = 0. Skipping it costs nothing in order: that one Euler step has a
    local error O(h^2), the same size as the O(h^2) global error of the N - 1 Heun steps before
    it. On VE/EDM paths sigma_0 = sigma_min > 0 and every step is corrected.

    NFE: 2 per step, 1 on a step that ends at sigma_s = 0. Introduced in chapter 06.

    Args:
        denoiser: D(x_t, t) -> x0_hat with a ``schedule`` attribute.
        x_t: (B, ...) the state at time t.
        t, s: times with 0 <= s < t <= 1 and sigma_t > 0 (numbers, 0-d tensors or PathPoints).
        state: passed through. generator: unused (deterministic).
    Returns:
        (x_s (B, ...), x0_hat = D(x_t, t) (B, ...), state).
    """
    t, s = check_step(denoiser, x_t, t, s)
    _check_moving(t)
    h = s.t - t.t
    d_t, x0_hat = _velocity_at(denoiser, x_t, t)  # (B, ...)
    x_s = x_t + h * d_t  # Euler predictor
    if s.sigma == 0.0:
        return x_s, x0_hat, state  # Algorithm 1, line 6: no correction at sigma = 0
    d_s, _ = _velocity_at(denoiser, x_s, s)  # (B, ...)
    return x_t + h * 0.5 * (d_t + d_s), x0_hat, state  # trapezoidal rule
