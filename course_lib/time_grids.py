r"""Time grids for sampling: decreasing times from (about) 1 to 0 (introduced in chapter 02).

A sampler walks a grid t_0 > t_1 > ... > t_K = 0 and takes one step per pair (t_i, t_{i+1}).
Grids are plain functions, so any grid works with any sampler (cf. k-diffusion's
``sigmas`` argument).

>>> uniform_grid(4)
tensor([1.0000, 0.7500, 0.5000, 0.2500, 0.0000])
"""

from __future__ import annotations

import math

import torch

from .schedules import LOG_SNR_MAX, LOG_SNR_MIN, Schedule

__all__ = ["check_grid", "uniform_grid", "ddpm_grid", "karras_grid", "log_snr_grid", "shift_grid"]


def check_grid(times: torch.Tensor, *, increasing: bool = False) -> torch.Tensor:
    """Validate a time grid: a 1-D float tensor of >= 2 strictly monotone times in [0, 1].

    Sampling grids decrease (noise t=1 to data t=0); ``increasing=True`` checks an inversion grid
    (data to noise, chapter 05), which must also start at t = 0.
    """
    name = "an inversion grid" if increasing else "a time grid"
    if not isinstance(times, torch.Tensor) or not times.is_floating_point():
        raise ValueError(f"{name} must be a floating-point torch.Tensor, got {type(times).__name__}")
    if times.dim() != 1 or times.numel() < 2:
        raise ValueError(f"{name} must be 1-D with at least 2 times, got shape {tuple(times.shape)}")
    finite = torch.isfinite(times)
    if not bool(finite.all()):
        i = int(torch.nonzero(~finite)[0])
        raise ValueError(f"{name} must hold finite times in [0, 1], got t[{i}]={float(times[i])} "
                         f"({int((~finite).sum())} non-finite of {times.numel()})")
    if bool((times < 0).any()) or bool((times > 1).any()):
        raise ValueError(f"grid times must lie in [0, 1], got [{float(times.min()):.4g}, {float(times.max()):.4g}]")
    diffs = times[1:] - times[:-1]
    wrong = diffs <= 0 if increasing else diffs >= 0
    if bool(wrong.any()):
        i = int(torch.nonzero(wrong)[0])
        why = ("strictly increasing (inversion runs from data t=0 to noise t=1; flip a sampling grid with "
               "times.flip(0))" if increasing else "strictly decreasing (sampling runs from noise t=1 to data t=0)")
        raise ValueError(f"{name} must be {why}, got t[{i}]={float(times[i]):.6g} followed by "
                         f"t[{i + 1}]={float(times[i + 1]):.6g}")
    if increasing and float(times[0]) != 0.0:
        raise ValueError(f"an inversion grid must start at t = 0 (x0 is the data), got t[0]={float(times[0]):.6g}")
    return times


def _check_steps(n_steps) -> int:
    if not isinstance(n_steps, int) or isinstance(n_steps, bool) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer, got {n_steps!r}")
    return n_steps


def uniform_grid(n_steps: int, t_start: float = 1.0, t_end: float = 0.0) -> torch.Tensor:
    """n_steps + 1 equally spaced times from t_start down to t_end. Shape (n_steps + 1,)."""
    _check_steps(n_steps)
    if not (0 <= t_end < t_start <= 1):
        raise ValueError(f"need 0 <= t_end < t_start <= 1, got t_start={t_start}, t_end={t_end}")
    return check_grid(torch.linspace(t_start, t_end, n_steps + 1))


def ddpm_grid(n_train_steps: int, n_steps: int, spacing: str = "trailing") -> torch.Tensor:
    r"""Times n / N on DDPM's integer grid, n_steps of them, then t = 0 (the data).

    * ``trailing``: n_k = round(N - k N / n_steps), k = 0..n_steps-1 (starts at n = N);
    * ``leading``: n_k = (n_steps - 1 - k) (N // n_steps) + 1 (starts below N);
    * ``linspace``: n_k = round(linspace(N, 1, n_steps)).

    Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed",
    arXiv:2305.08891, Table 2, compares these spacings. With n_steps = N every spacing
    is the full DDPM grid N, N-1, ..., 1, 0.
    """
    _check_steps(n_steps)
    if not isinstance(n_train_steps, int) or n_train_steps < 1:
        raise ValueError(f"n_train_steps must be a positive integer, got {n_train_steps!r}")
    if n_steps > n_train_steps:
        raise ValueError(f"n_steps must be <= n_train_steps={n_train_steps}, got {n_steps}")
    N = n_train_steps
    k = torch.arange(n_steps, dtype=torch.float64)
    if spacing == "trailing":
        n = torch.round(N - k * N / n_steps)
    elif spacing == "leading":
        n = (n_steps - 1 - k) * (N // n_steps) + 1
    elif spacing == "linspace":
        n = torch.round(torch.linspace(N, 1, n_steps, dtype=torch.float64))
    else:
        raise ValueError(f"unknown spacing {spacing!r}; expected 'trailing', 'leading' or 'linspace'")
    n = torch.cat([n, torch.zeros(1, dtype=torch.float64)])
    return check_grid((n / N).to(torch.float32))


def _check_dtype(dtype) -> torch.dtype:
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    return dtype


def karras_grid(schedule: Schedule, n_steps: int, *, sigma_min: float | None = None,
                sigma_max: float | None = None, rho: float = 7.0,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    r"""Karras et al. 2022 (arXiv:2206.00364, eq. 5) grid, mapped to this schedule's time.

    The EDM noise level of a general path is the noise-to-signal ratio s = sigma_t / alpha_t
    = exp(-lambda_t / 2); the grid is s_i = (s_max^{1/rho} + i/(K-1) (s_min^{1/rho} - s_max^{1/rho}))^rho,
    i = 0..K-1, each converted to t with :meth:`Schedule.t_from_log_snr`, then t = 0.
    Defaults: s_min, s_max are the schedule's own range at t = 1/1000... 1 (clipped log-SNR); on a
    DDPM table with N = 1000 these are its first and last knots, as diffusers' ``use_karras_sigmas``.
    The times are computed in float64 and returned in ``dtype`` (float32 by default; float64 keeps
    them exact, so the grid's noise levels are eq. 5's to round-off). Introduced in chapter 07.
    """
    _check_steps(n_steps)
    _check_dtype(dtype)
    if not (rho > 0 and math.isfinite(rho)):
        raise ValueError(f"rho must be a finite positive number, got {rho}")
    lam_lo = float(schedule.log_snr(torch.tensor(1.0, dtype=torch.float64)))
    lam_hi = float(schedule.log_snr(torch.tensor(1e-3, dtype=torch.float64)))
    s_max = sigma_max if sigma_max is not None else math.exp(-lam_lo / 2)
    s_min = sigma_min if sigma_min is not None else math.exp(-lam_hi / 2)
    if not (0 < s_min < s_max and math.isfinite(s_max)):
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={s_min}, sigma_max={s_max}")
    i = torch.arange(n_steps, dtype=torch.float64)
    denom = max(n_steps - 1, 1)
    s = (s_max ** (1 / rho) + i / denom * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    lam = (-2 * torch.log(s)).clamp(LOG_SNR_MIN, LOG_SNR_MAX)
    if sigma_max is None:  # the default ends are the schedule's own values: pinned, not rounded through exp/log
        lam[0] = lam_lo
    if sigma_min is None and n_steps > 1:
        lam[-1] = lam_hi
    t = schedule.t_from_log_snr(lam).to(dtype)
    return check_grid(torch.cat([t, torch.zeros(1, dtype=dtype)]))


def log_snr_grid(schedule: Schedule, n_steps: int, *, t_start: float = 1.0, t_end: float = 1e-3) -> torch.Tensor:
    r"""n_steps times equally spaced in log-SNR lambda between t_start and t_end, then t = 0
    (the natural grid of DPM-Solver, Lu et al. 2022, arXiv:2206.00927, sec. 3.3)."""
    _check_steps(n_steps)
    if not (0 < t_end < t_start <= 1):
        raise ValueError(f"need 0 < t_end < t_start <= 1, got t_start={t_start}, t_end={t_end}")
    lam0 = float(schedule.log_snr(torch.tensor(t_start, dtype=torch.float64)))
    lam1 = float(schedule.log_snr(torch.tensor(t_end, dtype=torch.float64)))
    lam = torch.linspace(lam0, lam1, n_steps, dtype=torch.float64)
    t = schedule.t_from_log_snr(lam).to(torch.float32)
    return check_grid(torch.cat([t, torch.zeros(1)]))


def shift_grid(times: torch.Tensor, shift: float) -> torch.Tensor:
    r"""The timestep shift of flow-matching samplers, applied to a grid: t' = shift t / (1 + (shift - 1) t).

    Esser et al. 2024, "Scaling rectified flow transformers" (Stable Diffusion 3), arXiv:2403.03206,
    eq. 23, with shift = sqrt(m / n) for a resolution of m pixels trained at n; diffusers'
    ``FlowMatchEulerDiscreteScheduler(shift=...)``, whose ``sigmas`` are this map of its unshifted
    grid (its sigma is the course's t on :class:`~course_lib.schedules.RectifiedFlow`, sigma_t = t).
    The map fixes t = 0 and t = 1 and is increasing, so a valid grid stays valid; shift > 1 moves
    every time towards the noise (more steps at high noise), shift < 1 towards the data, shift = 1
    changes nothing. On the straight path it multiplies the noise-to-signal ratio:
    t' / (1 - t') = shift t / (1 - t), i.e. lambda' = lambda - 2 log(shift).
    Computed in float64, returned in the dtype of ``times``. Introduced in chapter 07.

    Args:
        times: (K + 1,) a grid as :func:`check_grid` accepts (decreasing, or increasing for inversion).
        shift: the factor, a finite number > 0.

    >>> shift_grid(uniform_grid(4), 3.0)
    tensor([1.0000, 0.9000, 0.7500, 0.5000, 0.0000])
    """
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not (math.isfinite(shift) and shift > 0):
        raise ValueError(f"shift must be a finite number > 0 (1 leaves the grid unchanged), got {shift!r}")
    if not isinstance(times, torch.Tensor) or times.dim() != 1 or times.numel() < 2:
        raise ValueError(f"times must be a 1-D tensor grid of at least 2 times, got {getattr(times, 'shape', type(times))}")
    check_grid(times, increasing=bool(float(times[-1]) > float(times[0])))
    t = times.to(torch.float64)
    shifted = shift * t / (1 + (shift - 1) * t)  # SD3 eq. 23
    return shifted.to(times.dtype)
