r"""DDIM inversion: run the deterministic DDIM map forward, from data to noise (introduced in chapter 05).

DDIM with eta = 0 is a discretisation of the probability-flow ODE (Song, Meng & Ermon 2021,
"Denoising diffusion implicit models", arXiv:2010.02502, sec. 4.3, eq. 13-14), and an ODE can be
run in either direction: data x0 -> a latent x_T that the sampler maps back to (about) x0.

Definition used here. Given an increasing grid 0 = t_0 < t_1 < ... < t_K <= 1 and x_{t_0} = x0,

    x_{t_{i+1}} = alpha_{t_{i+1}} x0_hat(x_{t_i}, t_i) + sigma_{t_{i+1}} eps_hat(x_{t_i}, t_i),
    eps_hat(x, t) = (x - alpha_t x0_hat(x, t)) / sigma_t.

This is the DDIM step with its roles reversed: the exact inverse of the sampling step
t_{i+1} -> t_i would need the model at the unknown x_{t_{i+1}}; it is approximated by the model
at the known x_{t_i} (Mokady et al. 2023, "Null-text inversion", arXiv:2211.09794, sec. 3).
Each step makes an O(h^2) error, so a round trip (invert, then sample with DDIM on the
reversed grid) reconstructs x0 up to O(1/K).

The first step from sigma_{t_0} = 0 (the clean data of VP and rectified-flow paths): there
x0_hat = x_{t_0} / alpha_{t_0} is exact, but eps_hat is 0/0, so the model's noise estimate at the
next time, eps_hat(x_{t_0}, t_1), is used, as DDIM-inversion code for Stable Diffusion does in
practice (diffusers' DDIMInverseScheduler evaluates the model at the step's target time). On
VE/EDM paths sigma_0 = sigma_min > 0 and the general rule applies from the start.

NFE: K (one evaluation per step).

>>> import torch
>>> from course_lib.schedules import VPLinear
>>> from course_lib.parameterization import Denoiser
>>> from course_lib.time_grids import uniform_grid
>>> den = Denoiser(lambda x, t: torch.zeros_like(x), VPLinear(), prediction="eps")   # eps_hat = 0
>>> x_T = ddim_invert(den, torch.ones(2, 3), uniform_grid(10).flip(0))
>>> torch.allclose(x_T, VPLinear().alpha(torch.tensor(1.0)) * torch.ones(2, 3))      # alpha_1 x0
True
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..time_grids import check_grid
from .loop import StepInfo
from .step import check_x, denoise

__all__ = ["check_increasing_grid", "ddim_invert"]


def check_increasing_grid(times: torch.Tensor) -> torch.Tensor:
    """Validate an inversion grid: a 1-D float tensor of >= 2 strictly increasing times in [0, 1], from 0."""
    return check_grid(times, increasing=True)


@torch.no_grad()
def ddim_invert(denoiser, x0: torch.Tensor, times: torch.Tensor,
                callback: Callable[[StepInfo], Any] | None = None) -> torch.Tensor:
    r"""Deterministic DDIM (eta = 0) run forward from the data x0 to x at times[-1].

        x_{t_{i+1}} = alpha_{t_{i+1}} x0_hat(x_{t_i}, t_i) + sigma_{t_{i+1}} eps_hat(x_{t_i}, t_i)

    (Song et al. 2021, arXiv:2010.02502, sec. 4.3, eq. 13; Mokady et al. 2023, arXiv:2211.09794,
    sec. 3); where sigma_{t_0} = 0, eps_hat(x_{t_0}, t_1) replaces the undefined eps_hat(x_{t_0}, t_0)
    (see the module docstring). Sampling with
    :func:`~course_lib.samplers.ddim.ddim_step` on ``times.flip(0)`` maps the result back to about x0.
    Introduced in chapter 05.

    Args:
        denoiser: D(x_t, t) -> x0_hat with a ``schedule`` attribute.
        x0: (B, ...) the data at t = 0.
        times: (K+1,) strictly increasing grid 0 = t_0 < ... < t_K <= 1.
        callback: called after every step with a :class:`~course_lib.samplers.loop.StepInfo`
            whose t = t_i and s = t_{i+1} (here s > t), x = x_{t_{i+1}} and the x0_hat used.
    Returns:
        (B, ...) x at times[-1].
    """
    check_x(denoiser, x0, "x0")
    times = check_increasing_grid(times)
    if not bool(torch.isfinite(x0).all()):
        raise ValueError("x0 must be finite, got NaN or inf entries")
    points = denoiser.schedule.points(times)  # every coefficient, once
    if getattr(denoiser, "prepare", None) is not None:
        denoiser.prepare(points, x0.dtype)
    x, finite = x0, []
    for i in range(times.numel() - 1):
        t, s = points[i], points[i + 1]
        if t.sigma == 0.0:
            # clean data: x0_hat is exact, eps_hat is 0/0 -> the model's estimate at the next time
            x0_hat = x / t.alpha  # (B, ...)
            x0_hat_next = denoise(denoiser, x, s)
            eps_hat = (x - s.alpha * x0_hat_next) / s.sigma  # (B, ...)
        else:
            x0_hat = denoise(denoiser, x, t)  # (B, ...)
            eps_hat = (x - t.alpha * x0_hat) / t.sigma  # (B, ...)
        x = s.alpha * x0_hat + s.sigma * eps_hat  # DDIM eq. 12 with eta = 0, run forward
        finite.append(torch.isfinite(x).all())  # read once, after the loop
        if callback is not None:
            callback(StepInfo(i, t.t, s.t, x, x0_hat))
    flags = torch.stack(finite)
    if not bool(flags.all()):
        i = int(torch.nonzero(~flags)[0])
        raise ValueError(f"DDIM inversion produced a non-finite x first at step {i} (t={points[i].t:.6g} -> "
                         f"s={points[i + 1].t:.6g}): the denoiser returned NaN or inf there")
    return x
