r"""Training losses (introduced in chapter 02; weightings revisited in chapter 04).

L_simple (Ho et al. 2020, arXiv:2006.11239, eq. 14, Algorithm 1):

    L_simple = E_{t, x0, eps} || eps - eps_hat(alpha_t x0 + sigma_t eps, t) ||^2

Other parameterisations regress their own target (x0, v, velocity) the same way.
Weighted forms put a weight w(t) on the eps-space error ||eps - eps_hat||^2:

* ``"x0"``: w = 1 / SNR(t), so the loss is the x0-space error ||x0 - x0_hat||^2
  (since x0 - x0_hat = (sigma_t / alpha_t)(eps_hat - eps));
* ``"min_snr"``: w = min(SNR(t), gamma) / SNR(t) (Hang et al. 2023, arXiv:2303.09556, eq. 9);
* ``"elbo"``: w = -1/2 d lambda/dt, the continuous-time ELBO (Kingma et al. 2021,
  arXiv:2107.00630, eq. 17), summed (not averaged) over dimensions.

The weights use the clipped log-SNR lambda_t in [LOG_SNR_MIN, LOG_SNR_MAX] of
:meth:`~course_lib.schedules.Schedule.log_snr`, and the eps-space error is computed from the
network's own error without dividing by a coefficient that vanishes at an end of the path:

* eps: eps_hat - eps;  score: -sigma_t s_hat - eps;
* v: alpha_t (v_hat - v) / (alpha_t^2 + sigma_t^2)  (from x_t = alpha x0 + sigma eps, v = alpha eps - sigma x0);
* x0: exp(lambda_t / 2) (x0 - x0_hat)  (= alpha_t / sigma_t inside the clip range, e^10 at clean data);
* velocity: alpha_t (u_hat - u) / (alpha_t sigma'_t - alpha'_t sigma_t).

So every combination of schedule, prediction and weighting is finite at t = 0 and t = 1, except
two that have no value and raise a ValueError naming t: the score target -eps / sigma_t at
sigma_t = 0 ("simple" weighting of a score network), and a velocity network's eps error where the
path does not move (VP schedules where lambda_t is clipped, e.g. t = 0: the velocity target is 0
and carries nothing about eps).
"""

from __future__ import annotations

import torch

import math

from .parameterization import Denoiser, target
from .schedules import Schedule, broadcast_to

__all__ = ["WEIGHTINGS", "diffusion_loss"]

WEIGHTINGS = ("simple", "x0", "min_snr", "elbo")


def _eps_error(prediction: str, output: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor,
               schedule: Schedule, t: torch.Tensor) -> torch.Tensor:
    """eps_hat - eps from a network output, without dividing by a vanishing coefficient (module docstring)."""
    if prediction == "eps":
        return output - eps
    alpha_t, sigma_t = schedule.alpha(t).to(x0.dtype), schedule.sigma(t).to(x0.dtype)
    a, s = broadcast_to(alpha_t, x0), broadcast_to(sigma_t, x0)
    if prediction == "score":
        return -s * output - eps
    if prediction == "x0":
        return broadcast_to(torch.exp(0.5 * schedule.log_snr(t)).to(x0.dtype), x0) * (x0 - output)
    u = target(prediction, x0, eps, schedule, t)
    if prediction == "v":
        return a * (output - u) / (a**2 + s**2)
    da, ds = broadcast_to(schedule.d_alpha(t).to(x0.dtype), x0), broadcast_to(schedule.d_sigma(t).to(x0.dtype), x0)
    denom = a * ds - da * s  # velocity
    still = (denom == 0).reshape(denom.shape[0], -1)[:, 0] if denom.dim() else denom == 0
    if bool(still.any()):
        times = t.reshape(-1)[still.reshape(-1)][:5].tolist() if t.dim() else float(t)
        raise ValueError(
            f"a velocity network's eps error is undefined at t = {times} on {schedule!r}: the path does not "
            "move there (d alpha_t/dt = d sigma_t/dt = 0 where the log-SNR is clipped), so the velocity target "
            "is 0 and says nothing about eps; use weighting='simple' (the velocity regression itself)"
        )
    return a * (output - u) / denom


def diffusion_loss(denoiser: Denoiser, x0: torch.Tensor, *, generator: torch.Generator | None = None,
                   weighting: str = "simple", gamma: float = 5.0, t: torch.Tensor | None = None,
                   eps: torch.Tensor | None = None, reduction: str = "mean", **cond) -> torch.Tensor:
    r"""The denoising loss of a :class:`~course_lib.parameterization.Denoiser` on a batch x0.

    Args:
        denoiser: wraps the network, its schedule and its prediction target.
        x0: (B, ...) clean data.
        generator: draws t ~ schedule.sample_t and eps ~ N(0, I) unless given explicitly.
        weighting: one of ``WEIGHTINGS`` ("simple" = plain MSE on the network's own target).
        t: optional explicit times (B,); eps: optional explicit noise (B, ...).
        reduction: "mean" (a scalar) or "none" (per-example losses, (B,)).
        **cond: conditioning passed to the network (e.g. class_labels).

    Returns the loss; it carries ``loss.diagnostics = {"t": (B,), "per_example": (B,)}`` (detached
    device tensors, no host sync), which :func:`course_lib.training.train` reads to say at which
    times a loss became non-finite.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; expected one of {WEIGHTINGS}")
    if weighting == "min_snr" and (isinstance(gamma, bool) or not isinstance(gamma, (int, float))
                                   or not (math.isfinite(gamma) and gamma > 0)):
        raise ValueError(f"min_snr needs a finite gamma > 0 (Hang et al. use 5), got {gamma!r}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    if not isinstance(x0, torch.Tensor) or x0.dim() < 2:
        raise ValueError(f"x0 must be a batch tensor of shape (B, ...), got {getattr(x0, 'shape', type(x0))}")
    B = x0.shape[0]
    schedule = denoiser.schedule
    if t is None:
        t = schedule.sample_t(B, generator=generator, device=x0.device)
    elif t.shape != (B,):
        raise ValueError(f"t must have shape ({B},), got {tuple(t.shape)}")
    if eps is None:
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    elif eps.shape != x0.shape:
        raise ValueError(f"eps must have x0's shape {tuple(x0.shape)}, got {tuple(eps.shape)}")
    x_t = schedule.add_noise(x0, t, eps)
    output = denoiser.network_output(x_t, t, **cond)
    dims = tuple(range(1, x0.dim()))
    if weighting == "simple":
        per_example = ((output - target(denoiser.prediction, x0, eps, schedule, t)) ** 2).mean(dim=dims)
    else:
        err = _eps_error(denoiser.prediction, output, x0, eps, schedule, t) ** 2
        snr = schedule.snr(t).to(x0.dtype)
        if weighting == "x0":
            per_example = (broadcast_to(1.0 / snr, x0) * err).mean(dim=dims)
        elif weighting == "min_snr":
            w = torch.clamp(snr, max=gamma) / snr
            per_example = (broadcast_to(w, x0) * err).mean(dim=dims)
        else:  # elbo
            d_log_snr = schedule.d_log_snr(t)
            per_example = (-0.5 * broadcast_to(d_log_snr.to(x0.dtype), x0) * err).sum(dim=dims)
    loss = per_example.mean() if reduction == "mean" else per_example
    # what course_lib.training.train reports if this loss is non-finite (device tensors: no sync here)
    loss.diagnostics = {"t": t.detach(), "per_example": per_example.detach()}
    return loss
