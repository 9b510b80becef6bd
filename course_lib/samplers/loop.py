r"""The one sampling loop every sampler in the course shares (introduced in chapter 02).

``sample`` walks a decreasing time grid t_0 > t_1 > ... > t_K and calls a *step function*
once per pair (t, s), with s < t:

    x_s, x0_hat, state = step(denoiser, x_t, t, s, state=state, generator=generator, **step_kwargs)

A step function is pure: everything it remembers between calls (a multistep solver's
history, say) travels in ``state``, which starts as ``None``. Guidance, ControlNet, LoRA and
latent diffusion change the denoiser, never this loop.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from ..time_grids import check_grid
from .step import check_x

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
           generator: torch.Generator | None = None, noise: Sequence[torch.Tensor] | None = None,
           callback: Callable[[StepInfo], Any] | None = None, **step_kwargs) -> torch.Tensor:
    r"""Integrate from x_T at times[0] down to times[-1] with one step function.

    Everything is validated once, here: the grid, x_T, the denoiser and the explicit noise. The
    coefficients of every grid time come from one call of :meth:`Schedule.points` (float64
    numbers), so the loop itself does no schedule arithmetic and no host synchronisation; each
    step only adds a finiteness flag, read once after the loop: a non-finite x (a NaN or inf
    denoiser output, say) raises a ``ValueError`` naming the first step where it appeared.

    Args:
        denoiser: D(x_t, t) -> x0_hat, with a ``schedule`` attribute (a
            :class:`~course_lib.parameterization.Denoiser`).
        x_T: (B, ...) the starting point at time times[0] (see :func:`prior_sample`).
        times: (K+1,) strictly decreasing grid (see :mod:`course_lib.time_grids`).
        step: a step function such as :func:`~course_lib.samplers.ddpm.ddpm_step`.
        generator: the source of every noise draw of a stochastic step.
        noise: instead of ``generator``, the explicit noise of every step: K tensors, the i-th
            passed to step i as ``noise=`` (x_T's shape, or (k, *x_T.shape) for a step that draws
            k normals); the same list replays the same run exactly.
        callback: called with a :class:`StepInfo` after every step.
    Returns:
        x at times[-1], shape of x_T.
    """
    times = check_grid(times)
    check_x(denoiser, x_T, "x_T")
    if x_T.dim() < 2:
        raise ValueError(f"x_T must be a tensor of shape (B, ...), got {tuple(x_T.shape)}")
    if not bool(torch.isfinite(x_T).all()):
        raise ValueError("x_T must be finite, got NaN or inf entries")
    n_steps = times.numel() - 1
    if noise is not None:
        if "noise" not in inspect.signature(step).parameters:
            raise ValueError(f"{getattr(step, '__name__', step)} is deterministic: it takes no noise")
        if isinstance(noise, torch.Tensor) or len(noise) != n_steps:
            raise ValueError(f"noise must be a sequence of one tensor per step ({n_steps}), got "
                             f"{tuple(noise.shape) if isinstance(noise, torch.Tensor) else len(noise)}")
    points = denoiser.schedule.points(times)
    prepare = getattr(denoiser, "prepare", None)
    if prepare is not None:  # the denoiser's own per-grid coefficients, in the data's dtype
        prepare(points, x_T.dtype)
    x, state, finite = x_T, None, []
    for i in range(n_steps):
        t, s = points[i], points[i + 1]
        if noise is not None:
            step_kwargs["noise"] = noise[i]
        x, x0_hat, state = step(denoiser, x, t, s, state=state, generator=generator, **step_kwargs)
        finite.append(torch.isfinite(x).all())  # a flag on x's device; read after the loop
        if callback is not None:
            callback(StepInfo(i, t.t, s.t, x, x0_hat))
    flags = torch.stack(finite)
    if not bool(flags.all()):
        i = int(torch.nonzero(~flags)[0])
        raise ValueError(
            f"sampling produced a non-finite x first at step {i} (t={points[i].t:.6g} -> s={points[i + 1].t:.6g}): "
            "the denoiser returned NaN or inf there, or the step's coefficients are not finite at these times"
        )
    return x
