r"""Consistency models: one network call from any point of a trajectory to its end (chapter 10).

Song, Dhariwal, Chen & Sutskever 2023, "Consistency Models", arXiv:2303.01469.

**The consistency function.** The probability-flow ODE (chapter 06) carries every x_t to one
end point x_{t_min} near the data. The consistency function maps *every* point of a trajectory
to that end point,

    f(x_t, t) = x_{t_min}   for all t in [t_min, t_max]          (Song et al. 2023, Sec. 3),

so it is self-consistent, f(x_t, t) = f(x_s, s) for two points of one trajectory, and it obeys
the **boundary condition** f(x, t_min) = x.

**The path.** Song et al. work on the variance-exploding path x = x0 + sigma eps of EDM. The
course's path x_t = alpha_t x0 + sigma_t eps is the same path in other coordinates: divide by
alpha_t,

    x_t / alpha_t = x0 + sigma_bar eps,      sigma_bar = sigma_t / alpha_t = exp(-lambda_t / 2),

so the *scaled state* x_t / alpha_t lives on a VE path with noise level sigma_bar (EDM's sigma,
chapter 07's sigma_bar). Everything below is written in (x_t / alpha_t, sigma_bar), so any
schedule works: VP (DDPM's table, cosine), VE/EDM (alpha_t = 1, sigma_bar = sigma_t) or the
straight path of flow matching (for t < 1).

**The parameterisation** (Song et al. 2023, Sec. 3 and App. C; the EDM scalings of Karras et al.
2022, arXiv:2206.00364, Table 1, shifted by sigma_bar_min):

    f_theta(x_t, t) = c_skip(sigma_bar) x_t / alpha_t + c_out(sigma_bar) F_theta(c_in(sigma_bar) x_t / alpha_t, t)
    c_skip = sigma_data^2 / ((sigma_bar - sigma_bar_min)^2 + sigma_data^2)
    c_out  = sigma_data (sigma_bar - sigma_bar_min) / sqrt(sigma_data^2 + sigma_bar^2)
    c_in   = 1 / sqrt(sigma_bar^2 + sigma_data^2)

with sigma_bar_min = sigma_bar(t_min). At t_min, c_skip = 1 and c_out = 0: the boundary condition
holds for *every* network F_theta, by construction. (In the course's coordinates it reads
f(x_t, t_min) = x_t / alpha_{t_min}: f returns the scaled state, an estimate of x0 with noise
sigma_bar_min; on VE/EDM paths alpha = 1 and it is f(x, t_min) = x.) (Chapter 10 derives the EDM scalings from
unit-variance conditions in SymPy and imposes the boundary.) See :class:`ConsistencyModel`.

**Training** (Song et al. 2023, Algorithms 2 and 3). On a grid t_max = times[0] > times[1] > ...
> times[-1] = t_min (the paper's t_N > ... > t_1 = epsilon, written in the course's decreasing
order), pick a pair of neighbours t_{n+1} = times[k] > t_n = times[k + 1], put x0 at the upper time,
and ask the model to give the same answer at the lower time:

* **consistency distillation** (:func:`consistency_distillation_loss`, Algorithm 2): the lower point
  x_hat_{t_n} is one step of a *teacher's* ODE solver from x_{t_{n+1}} (any course step function:
  DDIM, Euler, Heun);
* **consistency training** (:func:`consistency_training_loss`, Algorithm 3): no teacher; the lower
  point is alpha_{t_n} x0 + sigma_{t_n} eps with the *same* eps: exactly one DDIM step taken with the
  one-sample estimate x0_hat = x0 instead of a teacher (Song et al. 2023, Theorem 2: the difference
  from distillation vanishes as the grid gets finer).

The loss is d(f_theta(x_{t_{n+1}}, t_{n+1}), f_{theta^-}(x_{t_n}, t_n)) with gradients stopped
through the **target** network theta^-, an exponential moving average of theta:
theta^- <- stopgrad(mu theta^- + (1 - mu) theta). Use :class:`course_lib.training.EMA` with
``decay=mu, warmup=False`` and call ``update`` after every optimiser step. Song et al. 2023 use
mu = 0.95 for distillation; the improved consistency training of Song & Dhariwal 2023
(arXiv:2310.14189, Sec. 3.2) shows that mu = 0 (the target is the current network, gradients
stopped) is the right choice for training, because the EMA target biases the fixed point of the
training objective. (The slowly averaged model used for *sampling* is a separate EMA.)

**The grid**: :func:`consistency_grid`, Karras et al. 2022 (eq. 5) noise levels between
sigma_bar(t_max) and sigma_bar(t_min), spaced evenly in sigma_bar^(1/rho), mapped to the
schedule's times (as :func:`course_lib.time_grids.karras_grid`, whose end points it pins).

**Sampling**: multistep consistency sampling (Algorithm 1) is the step function
:func:`course_lib.samplers.consistency.consistency_step` in the course's one loop.

>>> import torch
>>> from course_lib.schedules import EDM
>>> cm = ConsistencyModel(lambda x, t: torch.ones_like(x), EDM(), sigma_data=0.5, t_min=0.0)
>>> x = torch.full((2, 3), 0.7)
>>> torch.equal(cm(x, torch.tensor(0.0)), x)          # boundary: f(x, t_min) = x for any network
True
>>> skip, out, c_in = consistency_scalings(torch.tensor([0.002, 80.0]), sigma_data=0.5, sigma_bar_min=0.002)
>>> skip.tolist()[0], out.tolist()[0]
(1.0, 0.0)
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .parameterization import PREDICTIONS, Denoiser
from .schedules import LOG_SNR_MAX, LOG_SNR_MIN, Schedule, broadcast_to, check_times

__all__ = ["noise_level", "edm_scalings", "consistency_scalings", "ConsistencyModel", "consistency_grid",
           "DISTANCES", "consistency_distance", "consistency_distillation_loss", "consistency_training_loss"]

DISTANCES = ("l2", "pseudo_huber")

# relative slack when comparing a time with t_min (float32 round-off of grid times)
_T_MIN_SLACK = 1e-6


# ------------------------------------------------------------------------------------------
# Noise level and scalings
# ------------------------------------------------------------------------------------------
def noise_level(schedule: Schedule, t) -> torch.Tensor:
    r"""sigma_bar = sigma_t / alpha_t, the VE-equivalent noise level of time t (EDM's sigma).

    x_t / alpha_t = x0 + sigma_bar eps: dividing the course's path by alpha_t gives the
    variance-exploding path of Karras et al. 2022 (arXiv:2206.00364, eq. 1 with s(t) = alpha_t).
    sigma_bar = exp(-lambda_t / 2) with lambda_t the (unclipped) log-SNR. Computed in float64.
    Introduced in chapter 10.

    Args:
        schedule: a :class:`~course_lib.schedules.Schedule`.
        t: () or (B,) times in [0, 1] with alpha_t > 0.
    Returns:
        sigma_bar with t's shape, float64 (float32 on MPS).

    >>> from course_lib.schedules import RectifiedFlow
    >>> noise_level(RectifiedFlow(), torch.tensor([0.0, 0.5])).tolist()
    [0.0, 1.0]
    """
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be a course_lib Schedule, got {type(schedule).__name__}")
    t = check_times(t)
    wide = t.to(torch.float32 if t.device.type == "mps" else torch.float64)
    alpha_t, sigma_t = schedule.alpha(wide), schedule.sigma(wide)
    if bool((alpha_t <= 0).any()):
        raise ValueError(
            "the noise level sigma_t / alpha_t needs alpha_t > 0, got alpha_t = 0 at "
            f"t={wide[alpha_t <= 0].tolist() if wide.dim() else float(wide)} (pure noise); pick t_max < 1 "
            f"for {type(schedule).__name__}"
        )
    return sigma_t / alpha_t


def _check_sigma_data(sigma_data) -> float:
    if isinstance(sigma_data, bool) or not isinstance(sigma_data, (int, float)) or not (
            sigma_data > 0 and math.isfinite(sigma_data)):
        raise ValueError(f"sigma_data must be a finite number > 0 (the data's standard deviation), got {sigma_data!r}")
    return float(sigma_data)


def _check_sigma_bar(sigma_bar) -> torch.Tensor:
    if not isinstance(sigma_bar, torch.Tensor) or not sigma_bar.is_floating_point():
        raise ValueError(f"sigma_bar must be a floating-point tensor of noise levels, got {type(sigma_bar).__name__}")
    if sigma_bar.numel() and (not bool(torch.isfinite(sigma_bar).all()) or bool((sigma_bar < 0).any())):
        raise ValueError(f"sigma_bar must be finite and >= 0, got values in "
                         f"[{float(sigma_bar.min()):.4g}, {float(sigma_bar.max()):.4g}]")
    return sigma_bar


def edm_scalings(sigma_bar: torch.Tensor, *, sigma_data: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""EDM's preconditioning (Karras et al. 2022, arXiv:2206.00364, Table 1 and App. B.6):

        c_skip = sigma_data^2 / (sigma_bar^2 + sigma_data^2)
        c_out  = sigma_bar sigma_data / sqrt(sigma_bar^2 + sigma_data^2)
        c_in   = 1 / sqrt(sigma_bar^2 + sigma_data^2)

    D(x) = c_skip x + c_out F(c_in x): c_in gives the network a unit-variance input, c_skip
    minimises the variance of the network's target (x0 - c_skip x) / c_out and c_out makes it 1
    (derived in SymPy in chapter 10). Introduced in chapter 10.

    Args:
        sigma_bar: noise levels sigma_t / alpha_t >= 0, any shape.
        sigma_data: the data's standard deviation, > 0.
    Returns:
        (c_skip, c_out, c_in), each with sigma_bar's shape and dtype.

    >>> [round(float(c), 4) for c in edm_scalings(torch.tensor(0.5), sigma_data=0.5)]
    [0.5, 0.3536, 1.4142]
    """
    sigma_data = _check_sigma_data(sigma_data)
    sigma_bar = _check_sigma_bar(sigma_bar)
    total = sigma_bar**2 + sigma_data**2
    return sigma_data**2 / total, sigma_bar * sigma_data / torch.sqrt(total), torch.rsqrt(total)


def consistency_scalings(sigma_bar: torch.Tensor, *, sigma_data: float,
                         sigma_bar_min: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""The consistency model's scalings (Song et al. 2023, arXiv:2303.01469, App. C, eq. 10 context):

        c_skip = sigma_data^2 / ((sigma_bar - sigma_bar_min)^2 + sigma_data^2)
        c_out  = sigma_data (sigma_bar - sigma_bar_min) / sqrt(sigma_data^2 + sigma_bar^2)
        c_in   = 1 / sqrt(sigma_bar^2 + sigma_data^2)

    EDM's scalings (:func:`edm_scalings`) with sigma_bar shifted by sigma_bar_min in c_skip and in
    c_out's numerator, so that c_skip(sigma_bar_min) = 1 and c_out(sigma_bar_min) = 0: the
    boundary condition f(x, t_min) = x. (The paper's epsilon is our sigma_bar_min.)
    Introduced in chapter 10.

    Args:
        sigma_bar: noise levels >= sigma_bar_min, any shape.
        sigma_data: the data's standard deviation, > 0.
        sigma_bar_min: the noise level of t_min, >= 0.
    Returns:
        (c_skip, c_out, c_in), each with sigma_bar's shape and dtype.
    """
    sigma_data = _check_sigma_data(sigma_data)
    sigma_bar = _check_sigma_bar(sigma_bar)
    if isinstance(sigma_bar_min, bool) or not isinstance(sigma_bar_min, (int, float)) or not (
            0 <= sigma_bar_min < math.inf):
        raise ValueError(f"sigma_bar_min must be a finite number >= 0, got {sigma_bar_min!r}")
    if sigma_bar.numel() and bool((sigma_bar < sigma_bar_min * (1 - _T_MIN_SLACK)).any()):
        raise ValueError(f"sigma_bar must be >= sigma_bar_min = {sigma_bar_min:.6g} (the consistency function lives "
                         f"on [t_min, t_max]), got a smallest value {float(sigma_bar.min()):.6g}")
    shifted = sigma_bar - sigma_bar_min
    c_skip = sigma_data**2 / (shifted**2 + sigma_data**2)
    c_out = sigma_data * shifted / torch.sqrt(sigma_data**2 + sigma_bar**2)
    return c_skip, c_out, torch.rsqrt(sigma_bar**2 + sigma_data**2)


# ------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------
class ConsistencyModel:
    r"""A network wrapped into the consistency function f_theta(x_t, t) ~ x_{t_min} (chapter 10).

    With x = x_t / alpha_t and sigma_bar = sigma_t / alpha_t (see :func:`noise_level`),

        f_theta(x_t, t) = c_skip(sigma_bar) x + c_out(sigma_bar) F_theta(x_t, t)

    with the scalings of :func:`consistency_scalings` (Song et al. 2023, arXiv:2303.01469, Sec. 3
    and App. C), so f_theta(x, t_min) = x for any weights. What F_theta is depends on ``prediction``:

    * ``None`` (the paper's parameterisation, for training from scratch): F_theta is the raw
      network, called as ``net(c_in x, t)``; c_in = 1/sqrt(sigma_bar^2 + sigma_data^2) gives it a
      unit-variance input. (The network sees the course's time t instead of EDM's
      c_noise = ln(sigma_bar)/4: the same information. With sigma_data = 1 and a VP schedule,
      c_in x = x_t: the input a course Denoiser gives its network.)
    * one of ``PREDICTIONS`` (``"eps"``, ``"x0"``, ``"v"``, ...; for a **warm start** from a
      diffusion model): the network predicts that target as in a course
      :class:`~course_lib.parameterization.Denoiser`, whose estimate D(x_t, t) = x0_hat defines
      F_theta through EDM's own parameterisation, D = c_skip^EDM x + c_out^EDM F_theta
      (:func:`edm_scalings`). Since c_out / c_out^EDM = (sigma_bar - sigma_bar_min) / sigma_bar,

          f_theta = c_skip x + (sigma_bar - sigma_bar_min) / sigma_bar (D(x_t, t) - c_skip^EDM x),

      which equals D away from t_min (exactly D when sigma_bar_min = 0, as in Song et al.'s
      initialisation of f from an EDM teacher) and x at t_min. Copying a teacher's weights into
      ``net`` then starts the consistency model at the teacher's one-step denoiser.

    The object behaves like a course Denoiser: call it with ``(x_t, t, **cond)`` to get
    x0_hat = f_theta(x_t, t); it carries ``net`` and ``schedule`` so that it plugs into
    :func:`course_lib.samplers.sample` (with
    :func:`~course_lib.samplers.consistency.consistency_step`). Introduced in chapter 10.

    Args:
        net: a module ``net(x (B, ...), t (B,), **cond) -> (B, ...)``.
        schedule: the :class:`~course_lib.schedules.Schedule` of the path.
        sigma_data: the data's standard deviation (0.5 for images in [-1, 1] in the paper).
        t_min: the time of the boundary condition, in [0, 1) with alpha_{t_min} > 0 (the paper's
            epsilon: sigma_bar(t_min) = 0.002 for EDM).
        t_max: the largest time, in (t_min, 1] (the paper's T): f is defined on [t_min, t_max], and
            one-step generation is f(x_{t_max}, t_max) with x_{t_max} drawn from the prior.
        prediction: ``None`` or one of ``PREDICTIONS`` (see above).
        x0_range: optional (low, high): clip f's output to the data range (as
            ``Denoiser(x0_range=...)``); off by default.
        **cond: fixed conditioning passed to the network (per-call keywords override it).
    """

    def __init__(self, net, schedule: Schedule, *, sigma_data: float = 0.5, t_min: float = 1e-3, t_max: float = 1.0,
                 prediction: str | None = None, x0_range: tuple[float, float] | None = None, **cond):
        if not isinstance(schedule, Schedule):
            raise ValueError(f"schedule must be a course_lib Schedule, got {type(schedule).__name__}")
        if not callable(net):
            raise ValueError(f"net must be callable, got {type(net).__name__}")
        self.sigma_data = _check_sigma_data(sigma_data)
        if isinstance(t_min, bool) or not isinstance(t_min, (int, float)) or not (0.0 <= t_min < 1.0):
            raise ValueError(f"t_min must be a number in [0, 1), got {t_min!r}")
        if isinstance(t_max, bool) or not isinstance(t_max, (int, float)) or not (t_min < t_max <= 1.0):
            raise ValueError(f"t_max must be a number in (t_min, 1] = ({t_min}, 1], got {t_max!r}")
        if prediction is not None and prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be None (the network is F_theta) or one of {PREDICTIONS}, "
                             f"got {prediction!r}")
        if x0_range is not None and (len(x0_range) != 2 or not float(x0_range[0]) < float(x0_range[1])):
            raise ValueError(f"x0_range must be a pair (low, high) with low < high, got {x0_range!r}")
        self.net, self.schedule, self.prediction, self.x0_range, self.cond = net, schedule, prediction, x0_range, cond
        self.t_min, self.t_max = float(t_min), float(t_max)
        # sigma_bar at float32(t_min), the time a float32 grid holds: f(x, t_min) = x exactly there
        self.sigma_bar_min = float(noise_level(schedule, torch.tensor(self.t_min, dtype=torch.float32)))
        self._denoiser = None if prediction is None else Denoiser(net, schedule, prediction)

    def _batch_times(self, x_t: torch.Tensor, t) -> torch.Tensor:
        if not isinstance(x_t, torch.Tensor) or not x_t.is_floating_point() or x_t.dim() < 1:
            raise ValueError(f"x_t must be a floating-point tensor of shape (B, ...), got "
                             f"{tuple(x_t.shape) if isinstance(x_t, torch.Tensor) else type(x_t).__name__}")
        t = check_times(t if isinstance(t, torch.Tensor) else torch.tensor(float(t)))
        if t.dim() == 0:
            t = t.expand(x_t.shape[0])
        if t.dim() != 1 or t.shape[0] != x_t.shape[0]:
            raise ValueError(f"t must be a scalar or have shape ({x_t.shape[0]},), got {tuple(t.shape)}")
        if bool((t.double() < self.t_min * (1 - _T_MIN_SLACK)).any()) or bool(
                (t.double() > self.t_max * (1 + _T_MIN_SLACK)).any()):
            raise ValueError(f"a consistency model is defined for t in [t_min, t_max] = [{self.t_min:.6g}, "
                             f"{self.t_max:.6g}] (f(x, t_min) = x is the boundary; t_max is where sampling starts), "
                             f"got t in [{float(t.min()):.6g}, {float(t.max()):.6g}]")
        return t.to(device=x_t.device, dtype=torch.float64 if x_t.dtype == torch.float64 else torch.float32)

    def scalings(self, t) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(alpha_t, c_skip, c_out, c_in) at times t (float64; see :func:`consistency_scalings`)."""
        t = check_times(t)
        sigma_bar = noise_level(self.schedule, t)
        alpha_t = self.schedule.alpha(t.to(sigma_bar.dtype))
        c_skip, c_out, c_in = consistency_scalings(sigma_bar, sigma_data=self.sigma_data,
                                                   sigma_bar_min=self.sigma_bar_min)
        return alpha_t, c_skip, c_out, c_in

    def __call__(self, x_t: torch.Tensor, t, **cond) -> torch.Tensor:
        """x0_hat = f_theta(x_t, t), shape of x_t."""
        t = self._batch_times(x_t, t)
        alpha_t, c_skip, c_out, c_in = self.scalings(t)
        x = x_t / broadcast_to(alpha_t, x_t)  # (B, ...) the scaled state x_t / alpha_t: x0 + sigma_bar eps
        kwargs = {**self.cond, **cond}
        if self._denoiser is None:
            F = self.net(broadcast_to(c_in, x) * x, t, **kwargs)  # (B, ...) F_theta(c_in x, t)
            if not isinstance(F, torch.Tensor) or F.shape != x_t.shape:
                raise ValueError(f"the network must return F of x_t's shape {tuple(x_t.shape)}, got "
                                 f"{tuple(F.shape) if isinstance(F, torch.Tensor) else type(F).__name__}")
            f = broadcast_to(c_skip, x) * x + broadcast_to(c_out, x) * F
        else:
            sigma_bar = noise_level(self.schedule, t)
            skip_edm = self.sigma_data**2 / (sigma_bar**2 + self.sigma_data**2)
            ratio = torch.where(sigma_bar > 0, (sigma_bar - self.sigma_bar_min) / sigma_bar.clamp_min(1e-300),
                                torch.zeros_like(sigma_bar))  # c_out / c_out^EDM
            x0_hat = self._denoiser(x_t, t, **kwargs)  # (B, ...) D(x_t, t)
            correction = broadcast_to(ratio, x) * (x0_hat - broadcast_to(skip_edm, x) * x)
            # at sigma_bar = sigma_bar_min the ratio is 0; D itself may be 0/0 where sigma_t = 0 (t_min = 0)
            correction = torch.where(broadcast_to(ratio, x) != 0, correction, torch.zeros_like(correction))
            f = broadcast_to(c_skip, x) * x + correction
        if self.x0_range is not None:
            f = f.clamp(float(self.x0_range[0]), float(self.x0_range[1]))
        return f

    def __repr__(self) -> str:
        return (f"ConsistencyModel(net={type(self.net).__name__}, schedule={self.schedule!r}, "
                f"sigma_data={self.sigma_data}, t_min={self.t_min}, t_max={self.t_max}, "
                f"prediction={self.prediction!r})")


# ------------------------------------------------------------------------------------------
# The training grid
# ------------------------------------------------------------------------------------------
def consistency_grid(schedule: Schedule, n_points: int, *, t_min: float, t_max: float = 1.0,
                     rho: float = 7.0) -> torch.Tensor:
    r"""The discretisation t_max = times[0] > ... > times[-1] = t_min of consistency training.

    Karras et al. 2022 (arXiv:2206.00364, eq. 5) noise levels, as in Song et al. 2023
    (arXiv:2303.01469, Sec. 5, N points with rho = 7):

        sigma_bar_i = (sigma_bar_max^{1/rho} + i/(N-1) (sigma_bar_min^{1/rho} - sigma_bar_max^{1/rho}))^rho,

    i = 0..N-1, with sigma_bar_max = sigma_bar(t_max), sigma_bar_min = sigma_bar(t_min), mapped to
    the schedule's times by inverting the log-SNR lambda = -2 log sigma_bar (the paper's grid runs
    upwards, t_1 = epsilon < ... < t_N = T; the course's grids run downwards). The end points are
    exactly t_max and t_min. Introduced in chapter 10.

    Args:
        schedule: the path's schedule.
        n_points: N >= 2, the number of times (N - 1 neighbouring pairs).
        t_min, t_max: 0 <= t_min < t_max <= 1 with alpha_{t_max} > 0.
        rho: the Karras exponent, > 0.
    Returns:
        (N,) float32, strictly decreasing.

    >>> from course_lib.schedules import EDM
    >>> consistency_grid(EDM(), 5, t_min=0.0)   # EDM's own time is already Karras-spaced (rho = 7)
    tensor([1.0000, 0.7500, 0.5000, 0.2500, 0.0000])
    """
    if isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 2:
        raise ValueError(f"n_points must be an integer >= 2, got {n_points!r}")
    if not (isinstance(rho, (int, float)) and rho > 0):
        raise ValueError(f"rho must be a number > 0, got {rho!r}")
    if not (isinstance(t_min, (int, float)) and isinstance(t_max, (int, float)) and 0 <= t_min < t_max <= 1):
        raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min!r}, t_max={t_max!r}")
    s_max = float(noise_level(schedule, torch.tensor(float(t_max), dtype=torch.float64)))
    s_min = float(noise_level(schedule, torch.tensor(float(t_min), dtype=torch.float64)))
    i = torch.arange(n_points, dtype=torch.float64)
    s = (s_max ** (1 / rho) + i / (n_points - 1) * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    inner = s[1:-1]
    if inner.numel():
        lam = (-2 * torch.log(inner)).clamp(LOG_SNR_MIN, LOG_SNR_MAX)
        inner_t = schedule.t_from_log_snr(lam)
    else:
        inner_t = inner
    times = torch.cat([torch.tensor([float(t_max)], dtype=torch.float64), inner_t.double(),
                       torch.tensor([float(t_min)], dtype=torch.float64)]).to(torch.float32)
    if bool((times[1:] >= times[:-1]).any()):
        raise ValueError(f"n_points={n_points} is too many for this schedule's float32 times: neighbouring times "
                         "coincide; use fewer points")
    return times


# ------------------------------------------------------------------------------------------
# Losses
# ------------------------------------------------------------------------------------------
def consistency_distance(a: torch.Tensor, b: torch.Tensor, *, distance: str = "l2",
                         huber_c: float | None = None) -> torch.Tensor:
    r"""Per-example distance d(a, b) of the consistency losses, shape (B,).

    * ``"l2"``: the squared L2 distance, averaged over the D dimensions: ||a - b||^2 / D
      (Song et al. 2023, arXiv:2303.01469, Sec. 5, d = squared l2);
    * ``"pseudo_huber"``: sqrt(||a - b||^2 + c^2) - c with c = 0.00054 sqrt(D) unless ``huber_c``
      is given (Song & Dhariwal 2023, arXiv:2310.14189, Sec. 3.3, eq. 8): about ||a - b||^2 / (2c)
      for small differences and ||a - b|| for large ones, so outliers pull less.
    Introduced in chapter 10.

    Args:
        a, b: (B, ...) tensors of one shape.
    """
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}; expected one of {DISTANCES}")
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.shape != b.shape or a.dim() < 2:
        raise ValueError(f"a and b must be tensors of one shape (B, ...), got "
                         f"{getattr(a, 'shape', type(a).__name__)} and {getattr(b, 'shape', type(b).__name__)}")
    dims = tuple(range(1, a.dim()))
    squared = ((a - b) ** 2).sum(dim=dims)  # (B,)
    D = a[0].numel()
    if distance == "l2":
        return squared / D
    c = 0.00054 * math.sqrt(D) if huber_c is None else float(huber_c)
    if not (c > 0):
        raise ValueError(f"huber_c must be > 0, got {huber_c!r}")
    return torch.sqrt(squared + c**2) - c


def _check_loss_inputs(model, target_model, x0, times, k, eps, generator) -> tuple[torch.Tensor, torch.Tensor]:
    for name, m in (("model", model), ("target_model", target_model)):
        if not isinstance(m, ConsistencyModel):
            raise ValueError(f"{name} must be a ConsistencyModel, got {type(m).__name__}")
    if not isinstance(x0, torch.Tensor) or x0.dim() < 2:
        raise ValueError(f"x0 must be a batch tensor of shape (B, ...), got {getattr(x0, 'shape', type(x0).__name__)}")
    if not isinstance(times, torch.Tensor) or times.dim() != 1 or times.numel() < 2 or not times.is_floating_point():
        raise ValueError(f"times must be a 1-D float tensor of >= 2 decreasing times, got "
                         f"{getattr(times, 'shape', type(times).__name__)}")
    times = check_times(times, "times")
    if bool((times[1:] >= times[:-1]).any()):
        raise ValueError("times must be strictly decreasing (times[0] = t_max ... times[-1] = t_min), got "
                         f"{times.tolist()}")
    if float(times[0]) > model.t_max * (1 + _T_MIN_SLACK):
        raise ValueError(f"the grid must start at or below the model's t_max = {model.t_max:.6g}, "
                         f"got times[0] = {float(times[0]):.6g}")
    if float(times[-1]) < model.t_min * (1 - _T_MIN_SLACK):
        raise ValueError(f"the grid must end at or above the model's t_min = {model.t_min:.6g}, "
                         f"got times[-1] = {float(times[-1]):.6g}")
    B = x0.shape[0]
    if k is None:
        k = torch.randint(0, times.numel() - 1, (B,), generator=generator, device=generator.device
                          if generator is not None else None).cpu()
    elif not isinstance(k, torch.Tensor) or k.shape != (B,) or k.is_floating_point() or bool(
            (k < 0).any()) or bool((k > times.numel() - 2).any()):
        raise ValueError(f"k must be an integer tensor of shape ({B},) with values in 0..{times.numel() - 2} "
                         f"(pair (times[k], times[k + 1])), got {k!r}")
    if eps is None:
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    elif not isinstance(eps, torch.Tensor) or eps.shape != x0.shape:
        raise ValueError(f"eps must have x0's shape {tuple(x0.shape)}, got {getattr(eps, 'shape', type(eps).__name__)}")
    return k.cpu().long(), eps


class _BoundTeacher:
    """The teacher with the conditioning of one group of examples bound (a denoiser for a step function)."""

    def __init__(self, teacher, cond: dict):
        self.teacher, self.schedule, self.cond = teacher, teacher.schedule, cond

    def __call__(self, x_t, t):
        return self.teacher(x_t, t, **self.cond)


def _reduce(per_example: torch.Tensor, reduction: str) -> torch.Tensor:
    return per_example.mean() if reduction == "mean" else per_example


def consistency_distillation_loss(model: ConsistencyModel, target_model: ConsistencyModel, teacher, x0: torch.Tensor,
                                  times: torch.Tensor, *, solver_step: Callable,
                                  generator: torch.Generator | None = None, distance: str = "l2",
                                  huber_c: float | None = None, k: torch.Tensor | None = None,
                                  eps: torch.Tensor | None = None, reduction: str = "mean",
                                  **cond) -> torch.Tensor:
    r"""Consistency distillation, L_CD (Song et al. 2023, arXiv:2303.01469, Algorithm 2, eq. 7).

    For each example: a pair k ~ U{0, ..., N-2} of neighbouring grid times t_{n+1} = times[k] >
    t_n = times[k + 1], eps ~ N(0, I), and

        x_{t_{n+1}}   = alpha_{t_{n+1}} x0 + sigma_{t_{n+1}} eps
        x_hat_{t_n}   = one step of the teacher's ODE solver from x_{t_{n+1}} to t_n
        L             = d(f_theta(x_{t_{n+1}}, t_{n+1}), f_{theta^-}(x_hat_{t_n}, t_n)),

    gradients stopped through the target f_{theta^-} and the teacher (weight lambda(t_n) = 1).
    The teacher step is any course step function (``ddim_step``, ``euler_step``, ``heun_step``);
    those take one time per batch, so the batch is split by k and the solver called once per pair
    present. Introduced in chapter 10.

    Args:
        model: the :class:`ConsistencyModel` f_theta being trained.
        target_model: f_{theta^-} (the same network type with the EMA weights theta^-).
        teacher: a course denoiser (x0_hat = D(x_t, t), with ``schedule``) on the same path.
        x0: (B, ...) data.
        times: (N,) decreasing grid from t_max to t_min (:func:`consistency_grid`).
        solver_step: the teacher's step ``step(teacher, x_t, t, s) -> (x_s, x0_hat, state)``.
        generator: draws k and eps unless given.
        distance: ``"l2"`` or ``"pseudo_huber"`` (:func:`consistency_distance`).
        k: optional (B,) pair indices; eps: optional (B, ...) noise.
        reduction: ``"mean"`` (scalar) or ``"none"`` ((B,)).
        **cond: conditioning passed to the model, the target and the teacher.
    """
    if not callable(solver_step):
        raise ValueError(f"solver_step must be a course step function, got {type(solver_step).__name__}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    if not hasattr(teacher, "schedule"):
        raise ValueError("teacher must be a course denoiser carrying its schedule (wrap the net in a Denoiser)")
    k, eps = _check_loss_inputs(model, target_model, x0, times, k, eps, generator)
    times, k_dev = times.to(x0.device), k.to(x0.device)
    t_upper, t_lower = times[k_dev], times[k_dev + 1]  # (B,), (B,): t_{n+1} > t_n
    x_upper = model.schedule.add_noise(x0, t_upper, eps)  # (B, ...)
    with torch.no_grad():
        x_lower = torch.empty_like(x_upper)  # (B, ...) the teacher's x_hat_{t_n}
        for kk in torch.unique(k).tolist():
            rows = (k == kk).nonzero().flatten().to(x0.device)
            bound = _BoundTeacher(teacher, {key: value[rows] for key, value in cond.items()})
            x_lower[rows] = solver_step(bound, x_upper[rows], times[kk], times[kk + 1])[0]
        target = target_model(x_lower, t_lower, **cond)  # f_{theta^-}(x_hat_{t_n}, t_n)
    prediction = model(x_upper, t_upper, **cond)  # f_theta(x_{t_{n+1}}, t_{n+1})
    return _reduce(consistency_distance(prediction, target, distance=distance, huber_c=huber_c), reduction)


def consistency_training_loss(model: ConsistencyModel, target_model: ConsistencyModel, x0: torch.Tensor,
                              times: torch.Tensor, *, generator: torch.Generator | None = None,
                              distance: str = "l2", huber_c: float | None = None, k: torch.Tensor | None = None,
                              eps: torch.Tensor | None = None, reduction: str = "mean", **cond) -> torch.Tensor:
    r"""Consistency training, L_CT (Song et al. 2023, arXiv:2303.01469, Algorithm 3, eq. 10).

    As :func:`consistency_distillation_loss` without a teacher: both points use the *same* eps,

        L = d(f_theta(alpha_{t_{n+1}} x0 + sigma_{t_{n+1}} eps, t_{n+1}),
              f_{theta^-}(alpha_{t_n} x0 + sigma_{t_n} eps, t_n)).

    On the VE path this replaces the teacher's Euler step, whose score is estimated by the one
    sample -eps / sigma (Song et al. 2023, Theorem 2): unbiased as the grid gets finer. Song &
    Dhariwal 2023 (arXiv:2310.14189) improve it with mu = 0, the pseudo-Huber distance and a grid
    that gets finer during training. Introduced in chapter 10.

    Args: as :func:`consistency_distillation_loss` (no teacher, no solver).
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    k, eps = _check_loss_inputs(model, target_model, x0, times, k, eps, generator)
    times, k_dev = times.to(x0.device), k.to(x0.device)
    t_upper, t_lower = times[k_dev], times[k_dev + 1]  # (B,), (B,): t_{n+1} > t_n
    with torch.no_grad():
        target = target_model(model.schedule.add_noise(x0, t_lower, eps), t_lower, **cond)
    prediction = model(model.schedule.add_noise(x0, t_upper, eps), t_upper, **cond)
    return _reduce(consistency_distance(prediction, target, distance=distance, huber_c=huber_c), reduction)
