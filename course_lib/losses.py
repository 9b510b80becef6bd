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
"""

from __future__ import annotations

import torch

from .parameterization import Denoiser, target, to_eps
from .schedules import broadcast_to

__all__ = ["WEIGHTINGS", "diffusion_loss"]

WEIGHTINGS = ("simple", "x0", "min_snr", "elbo")


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
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; expected one of {WEIGHTINGS}")
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
        eps_hat = to_eps(denoiser.prediction, output, x_t, schedule, t)
        err = (eps_hat - eps) ** 2
        snr = schedule.snr(t).to(x0.dtype)
        if weighting == "x0":
            per_example = (broadcast_to(1.0 / snr, x0) * err).mean(dim=dims)
        elif weighting == "min_snr":
            w = torch.clamp(snr, max=gamma) / snr
            per_example = (broadcast_to(w, x0) * err).mean(dim=dims)
        else:  # elbo
            d_log_snr = schedule.d_log_snr(t)
            per_example = (-0.5 * broadcast_to(d_log_snr.to(x0.dtype), x0) * err).sum(dim=dims)
    return per_example.mean() if reduction == "mean" else per_example
