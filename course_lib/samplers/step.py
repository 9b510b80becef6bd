r"""The contract of a step function, and the checks every step shares (introduced in chapter 02).

A step function takes the denoiser, the state x_t and two times t > s, and returns
``(x_s, x0_hat, state)``. The times are :class:`~course_lib.schedules.PathPoint` objects when the
loop of :mod:`course_lib.samplers.loop` calls it (their alpha, sigma, derivatives and half log-SNR
were computed once for the whole grid); called by hand, a step also accepts a number or a 0-d
tensor and converts it here (one schedule evaluation). Either way every step validates the same
things, with no tensor reduction and no host synchronisation:

* the denoiser carries its ``schedule``; x_t is a floating-point tensor (B, ...);
* 0 <= s < t <= 1 (times are checked for finiteness and range when the point is made);
* explicit noise, when given, is a tensor of x_t's shape (or (k, *x_t.shape) for a step that
  draws k normals), on x_t's device and in its dtype.

The denoiser is called through :func:`denoise`: a course :class:`~course_lib.parameterization.Denoiser`
reads its coefficients from the point (no schedule evaluation per call); any other denoiser
(a consistency model, a guidance wrapper) is called as ``denoiser(x_t, t)`` with a (B,) time.
"""

from __future__ import annotations

import torch

from ..schedules import PathPoint

__all__ = ["as_point", "check_x", "check_step", "check_noise", "denoise", "draw_noise"]


def as_point(schedule, t, name: str = "t") -> PathPoint:
    """t as a :class:`PathPoint` of ``schedule`` (a PathPoint passes through unchanged)."""
    if isinstance(t, PathPoint):
        return t
    if isinstance(t, bool) or not isinstance(t, (int, float, torch.Tensor)):
        raise ValueError(f"{name} must be one time (a number, a 0-d tensor or a PathPoint), got {type(t).__name__}")
    if isinstance(t, torch.Tensor) and t.dim() != 0:
        raise ValueError(
            f"{name} must be one time for the whole batch (a number or a 0-d tensor in [0, 1]), got shape {tuple(t.shape)}"
        )
    try:
        return schedule.point(t)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None


def check_x(denoiser, x_t, name: str = "x_t") -> None:
    """The denoiser carries its schedule and x_t is a floating-point tensor (B, ...)."""
    if not hasattr(denoiser, "schedule"):
        raise ValueError("denoiser must carry the schedule it was trained on (wrap the net in a Denoiser)")
    if not isinstance(x_t, torch.Tensor) or not x_t.is_floating_point() or x_t.dim() < 1:
        raise ValueError(
            f"{name} must be a floating-point tensor of shape (B, ...), got "
            f"{tuple(x_t.shape) if isinstance(x_t, torch.Tensor) else type(x_t).__name__}"
            f"{' of dtype ' + str(x_t.dtype) if isinstance(x_t, torch.Tensor) else ''}"
        )


def check_step(denoiser, x_t, t, s) -> tuple[PathPoint, PathPoint]:
    """Validate a reverse step t -> s and return both times as PathPoints (0 <= s < t <= 1)."""
    check_x(denoiser, x_t)
    t, s = as_point(denoiser.schedule, t, "t"), as_point(denoiser.schedule, s, "s")
    if not s.t < t.t:
        raise ValueError(
            f"a reverse step needs s < t (sampling runs from noise t=1 to data t=0), got t={t.t}, s={s.t}"
        )
    return t, s


def check_noise(noise, x_t: torch.Tensor, draws: int = 1) -> None:
    """Explicit noise: standard normal of x_t's shape, or (draws, *x_t.shape) for several draws."""
    shape = tuple(x_t.shape) if draws == 1 else (draws, *x_t.shape)
    if not isinstance(noise, torch.Tensor) or tuple(noise.shape) != shape:
        what = "x_t's shape" if draws == 1 else f"shape ({draws}, *x_t.shape) (one per draw)"
        raise ValueError(
            f"noise must be a standard normal tensor of {what} {shape}, got "
            f"{tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__}"
        )
    if noise.dtype != x_t.dtype or noise.device != x_t.device:
        raise ValueError(f"noise must have x_t's dtype {x_t.dtype} and device {x_t.device}, "
                         f"got {noise.dtype} on {noise.device}")


def draw_noise(x_t: torch.Tensor, generator, noise=None, draws: int = 1) -> torch.Tensor:
    """The step's normal draws: the explicit ``noise`` (checked) or fresh draws from ``generator``."""
    if noise is not None:
        check_noise(noise, x_t, draws)
        return noise
    shape = x_t.shape if draws == 1 else (draws, *x_t.shape)
    return torch.randn(shape, generator=generator, device=x_t.device, dtype=x_t.dtype)


def denoise(denoiser, x_t: torch.Tensor, t: PathPoint) -> torch.Tensor:
    """x0_hat = D(x_t, t) at one time for the whole batch; checks the output's shape (no sync)."""
    at_point = getattr(denoiser, "at_point", None)
    if at_point is not None:
        x0_hat = at_point(x_t, t)
    else:
        t_dtype = torch.float64 if x_t.dtype == torch.float64 else torch.float32
        x0_hat = denoiser(x_t, torch.full((x_t.shape[0],), t.t, dtype=t_dtype, device=x_t.device))
    if not isinstance(x0_hat, torch.Tensor) or x0_hat.shape != x_t.shape:
        raise ValueError(
            f"the denoiser must return x0_hat of x_t's shape {tuple(x_t.shape)}, got "
            f"{tuple(x0_hat.shape) if isinstance(x0_hat, torch.Tensor) else type(x0_hat).__name__}"
        )
    return x0_hat
