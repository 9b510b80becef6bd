r"""The one sampling loop every sampler in the course shares (introduced in chapter 02).

``sample`` walks a decreasing time grid t_0 > t_1 > ... > t_K and calls a *step function*
once per pair (t, s), with s < t:

    x_s, x0_hat, state = step(denoiser, x_t, t, s, state=state, generator=generator, **step_kwargs)

A step function is pure: everything it remembers between calls (a multistep solver's
history, say) travels in ``state``, which starts as ``None``. Guidance, ControlNet, LoRA and
latent diffusion change the denoiser, never this loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..time_grids import check_grid

__all__ = ["StepInfo", "Trajectory", "sample", "prior_sample"]


@dataclass
class StepInfo:
    """What the callback sees after each step: index i, times t -> s, the new x_s and x0_hat."""

    i: int
    t: float
    s: float
    x: torch.Tensor
    x0_hat: torch.Tensor


@dataclass
class Trajectory:
    """A callback that records x_s and x0_hat after every step (on the CPU).

    >>> traj = Trajectory()
    >>> traj(StepInfo(0, 1.0, 0.5, torch.zeros(2, 2), torch.ones(2, 2)))
    >>> traj.times, traj.xs[0].shape
    ([1.0, 0.5], torch.Size([2, 2]))
    """

    times: list = field(default_factory=list)
    xs: list = field(default_factory=list)
    x0_hats: list = field(default_factory=list)

    def __call__(self, info: StepInfo) -> None:
        if not self.times:
            self.times.append(info.t)
        self.times.append(info.s)
        self.xs.append(info.x.detach().cpu())
        self.x0_hats.append(info.x0_hat.detach().cpu())

    def stacked(self) -> torch.Tensor:
        """All recorded x_s as one tensor (K, B, ...)."""
        return torch.stack(self.xs)


def prior_sample(schedule, shape, *, generator: torch.Generator | None = None,
                 device=None, t: float = 1.0) -> torch.Tensor:
    r"""x_T ~ N(0, (alpha_T^2 + sigma_T^2) I): the prior at time t for unit-variance data.

    For VP schedules this is N(0, I); for VE/EDM it is N(0, (1 + sigma_max^2) I).
    """
    if not shape or any(int(d) <= 0 for d in shape):
        raise ValueError(f"shape must be a non-empty tuple of positive sizes, got {shape}")
    tt = torch.tensor(float(t))
    std = torch.sqrt(schedule.alpha(tt) ** 2 + schedule.sigma(tt) ** 2)
    return float(std) * torch.randn(*shape, generator=generator, device=device)


@torch.no_grad()
def sample(denoiser, x_T: torch.Tensor, times: torch.Tensor, step: Callable, *,
           generator: torch.Generator | None = None,
           callback: Callable[[StepInfo], Any] | None = None, **step_kwargs) -> torch.Tensor:
    r"""Integrate from x_T at times[0] down to times[-1] with one step function.

    Args:
        denoiser: D(x_t, t) -> x0_hat, with a ``schedule`` attribute (a
            :class:`~course_lib.parameterization.Denoiser`).
        x_T: (B, ...) the starting point at time times[0] (see :func:`prior_sample`).
        times: (K+1,) strictly decreasing grid (see :mod:`course_lib.time_grids`).
        step: a step function such as :func:`~course_lib.samplers.ddpm.ddpm_step`.
        generator: the source of every noise draw of a stochastic step.
        callback: called with a :class:`StepInfo` after every step.
    Returns:
        x at times[-1], shape of x_T.
    """
    times = check_grid(times)
    if not isinstance(x_T, torch.Tensor) or x_T.dim() < 2:
        raise ValueError(f"x_T must be a tensor of shape (B, ...), got {getattr(x_T, 'shape', type(x_T))}")
    if not hasattr(denoiser, "schedule"):
        raise ValueError("denoiser must carry the schedule it was trained on (wrap the net in a Denoiser)")
    x, state = x_T, None
    for i in range(times.numel() - 1):
        t, s = times[i], times[i + 1]
        x, x0_hat, state = step(denoiser, x, t, s, state=state, generator=generator, **step_kwargs)
        if callback is not None:
            callback(StepInfo(i, float(t), float(s), x, x0_hat))
    return x
