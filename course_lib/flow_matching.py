r"""Flow matching on the course's one path (introduced in chapter 08).

Flow matching (Lipman et al. 2022, arXiv:2210.02747; Liu et al. 2022, arXiv:2209.03003; Albergo &
Vanden-Eijnden 2022, arXiv:2209.15571) is not a new machine in this course. It is the affine path

.. math::  x_t = \alpha_t x_0 + \sigma_t \varepsilon,

a network that predicts the **conditional velocity** u = dx_t/dt = d_alpha_t x0 + d_sigma_t eps
(``Denoiser(net, schedule, prediction="velocity")``), the usual regression loss
(:func:`course_lib.losses.diffusion_loss`) and the usual sampler loop (Euler or Heun steps of
:mod:`course_lib.samplers.ode` over :func:`course_lib.time_grids.uniform_grid`). Regressing the
conditional velocity gives the **marginal velocity** E[u | x_t = x] (Lipman et al. 2022, Theorem 2),
which is the probability-flow velocity of chapter 06.

This module adds:

* :func:`flow_matching_loss`: the conditional flow-matching loss (Lipman et al. 2022, eq. 9 and 23);
* :func:`gaussian_marginal_velocity`: the exact marginal velocity for Gaussian data, a reference
  field to check samplers and networks against;
* the notation map to the flow-matching papers, which run time the other way (their t' = 1 - t,
  noise at t' = 0, data at t' = 1, velocity u' = -u): :func:`to_fm_time`, :func:`from_fm_time`,
  :func:`to_fm_velocity`, :func:`from_fm_velocity`.

The straight path is :class:`course_lib.schedules.RectifiedFlow` (alpha_t = 1 - t, sigma_t = t) and
Lipman et al.'s path with a noise floor is :class:`course_lib.schedules.CondOT`.

>>> import torch
>>> from course_lib.schedules import RectifiedFlow
>>> x_t = torch.tensor([[0.0], [1.0]])
>>> u = gaussian_marginal_velocity(x_t, torch.tensor(1.0), mean=2.0, std=1.0, schedule=RectifiedFlow())
>>> u.flatten().tolist()                       # at t = 1: E[eps - x0 | x_1 = x] = x - 2
[-2.0, -1.0]
>>> float(to_fm_time(torch.tensor(0.25)))      # the papers' time t' = 1 - t
0.75
"""

from __future__ import annotations

import torch

from .losses import diffusion_loss
from .parameterization import Denoiser
from .schedules import Schedule, broadcast_to, check_times

__all__ = [
    "flow_matching_loss",
    "gaussian_marginal_velocity",
    "to_fm_time",
    "from_fm_time",
    "to_fm_velocity",
    "from_fm_velocity",
]


# ------------------------------------------------------------------------------------------
# The loss
# ------------------------------------------------------------------------------------------
def flow_matching_loss(denoiser: Denoiser, x0: torch.Tensor, *, generator: torch.Generator | None = None,
                       eps: torch.Tensor | None = None, t: torch.Tensor | None = None,
                       reduction: str = "mean", **cond) -> torch.Tensor:
    r"""The conditional flow-matching loss of a velocity-predicting denoiser on a batch x0.

    .. math::  L_{CFM} = \mathbb E_{t \sim U(0,1),\, x_0,\, \varepsilon}
               \big\| F_\theta(x_t, t) - (\dot\alpha_t x_0 + \dot\sigma_t \varepsilon) \big\|^2,
               \qquad x_t = \alpha_t x_0 + \sigma_t \varepsilon

    (Lipman et al. 2022, arXiv:2210.02747, eq. 9, and eq. 23 for their optimal-transport path;
    Liu et al. 2022, arXiv:2209.03003, eq. 1 for the straight path, target eps - x0; Albergo &
    Vanden-Eijnden 2022, arXiv:2209.15571). Its minimiser is the marginal velocity
    E[u | x_t] (Lipman et al. 2022, Theorem 2). In the papers' reversed time the target is -u, and
    the squared error is the same number. This *is* :func:`course_lib.losses.diffusion_loss` with
    ``weighting="simple"`` on a ``prediction="velocity"`` denoiser; this function checks that the
    denoiser predicts the velocity and delegates. Introduced in chapter 08.

    Args:
        denoiser: a :class:`~course_lib.parameterization.Denoiser` with ``prediction="velocity"``
            (any schedule; flow matching usually takes ``RectifiedFlow()`` or ``CondOT()``).
        x0: (B, ...) clean data.
        generator: draws t ~ U(0, 1) and eps ~ N(0, I) unless they are given.
        eps: optional explicit noise eps (B, ...).
        t: optional explicit times t (B,) in [0, 1].
        reduction: "mean" (a scalar) or "none" (per-example losses, (B,)).
        **cond: conditioning passed to the network (e.g. class_labels).
    Returns:
        The loss: a scalar, or (B,) with ``reduction="none"``.

    >>> import torch
    >>> from course_lib.schedules import RectifiedFlow
    >>> den = Denoiser(lambda x, t: torch.zeros_like(x), RectifiedFlow(), prediction="velocity")
    >>> x0, eps = torch.ones(4, 2), torch.zeros(4, 2)
    >>> float(flow_matching_loss(den, x0, eps=eps, t=torch.full((4,), 0.5)))   # target eps - x0 = -1
    1.0
    """
    if not isinstance(denoiser, Denoiser):
        raise ValueError(
            "flow_matching_loss needs a course_lib Denoiser(net, schedule, prediction='velocity'), "
            f"got {type(denoiser).__name__}"
        )
    if denoiser.prediction != "velocity":
        raise ValueError(
            "flow matching regresses the velocity d_alpha_t x0 + d_sigma_t eps: the denoiser must have "
            f"prediction='velocity', got prediction={denoiser.prediction!r} (use diffusion_loss for the others)"
        )
    return diffusion_loss(denoiser, x0, generator=generator, weighting="simple", t=t, eps=eps,
                          reduction=reduction, **cond)


# ------------------------------------------------------------------------------------------
# The exact marginal velocity for Gaussian data
# ------------------------------------------------------------------------------------------
def _as_parameter(value, name: str, x_t: torch.Tensor, positive: bool) -> torch.Tensor:
    """A data parameter (mean or std): a number or a tensor broadcastable to one example x_t[0]."""
    if isinstance(value, bool) or not isinstance(value, (int, float, torch.Tensor)):
        raise ValueError(f"{name} must be a number or a tensor of shape {tuple(x_t.shape[1:])}, "
                         f"got {type(value).__name__}")
    tensor = torch.as_tensor(value, dtype=x_t.dtype, device=x_t.device)
    try:
        torch.broadcast_shapes(tensor.shape, x_t.shape[1:])
    except RuntimeError:
        raise ValueError(f"{name} must broadcast to one example of shape {tuple(x_t.shape[1:])}, "
                         f"got shape {tuple(tensor.shape)}") from None
    if tensor.dim() > x_t.dim() - 1:
        raise ValueError(f"{name} must broadcast to one example of shape {tuple(x_t.shape[1:])} (no batch "
                         f"axis), got shape {tuple(tensor.shape)}")
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and not bool((tensor > 0).all()):
        raise ValueError(f"{name} must be positive (a standard deviation), got {value}")
    return tensor


def gaussian_marginal_velocity(x_t: torch.Tensor, t, mean, std, schedule: Schedule) -> torch.Tensor:
    r"""The exact marginal velocity u(x, t) = E[d_alpha_t x0 + d_sigma_t eps | x_t = x] for Gaussian data.

    For data x0 ~ N(m, s^2 I) (or a diagonal covariance: s per coordinate) on any affine path
    x_t = alpha_t x0 + sigma_t eps, the pair (x0, x_t) is jointly Gaussian, so (Bayes' rule, or
    linear-Gaussian conditioning; derived in chapter 08 with SymPy)

    .. math::  v_t^2 = \alpha_t^2 s^2 + \sigma_t^2, \quad
               \mathbb E[x_0 | x_t] = m + \frac{\alpha_t s^2}{v_t^2}(x_t - \alpha_t m), \quad
               \mathbb E[\varepsilon | x_t] = \frac{\sigma_t}{v_t^2}(x_t - \alpha_t m),

    .. math::  u(x_t, t) = \dot\alpha_t \mathbb E[x_0 | x_t] + \dot\sigma_t \mathbb E[\varepsilon | x_t]
               = \dot\alpha_t m + \frac{\dot v_t}{v_t}(x_t - \alpha_t m),

    the marginal velocity of Lipman et al. 2022 (arXiv:2210.02747, eq. 8) and the probability-flow
    velocity of Song et al. 2021 (arXiv:2011.13456, eq. 13). The right-hand form is the time
    derivative of the transport map x_t = alpha_t m + v_t z (z fixed): integrating u from
    x_1 ~ N(0, alpha_1^2 s^2 + sigma_1^2) at t = 1 down to t = 0 lands on N(m, s^2).
    Introduced in chapter 08.

    Args:
        x_t: (B, ...) points at time t.
        t: a number, () or (B,) times in [0, 1].
        mean: m, a number or a tensor broadcastable to one example (shape x_t.shape[1:]).
        std: s > 0, a number or a positive tensor broadcastable to one example.
        schedule: the path's :class:`~course_lib.schedules.Schedule`.
    Returns:
        (B, ...) the velocity dx/dt at (x_t, t).
    """
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be a course_lib Schedule, got {type(schedule).__name__}")
    if not isinstance(x_t, torch.Tensor) or not x_t.is_floating_point() or x_t.dim() < 1:
        raise ValueError(
            "x_t must be a floating-point tensor of shape (B, ...), got "
            f"{tuple(x_t.shape) if isinstance(x_t, torch.Tensor) else type(x_t).__name__}"
        )
    t = check_times(t if isinstance(t, torch.Tensor) else torch.tensor(float(t), dtype=torch.float64))
    if t.dim() > 1 or (t.dim() == 1 and t.shape[0] != x_t.shape[0]):
        raise ValueError(f"t must be a number or have shape () or ({x_t.shape[0]},), got {tuple(t.shape)}")
    m = _as_parameter(mean, "mean", x_t, positive=False)
    s = _as_parameter(std, "std", x_t, positive=True)
    alpha_t, sigma_t = broadcast_to(schedule.alpha(t), x_t), broadcast_to(schedule.sigma(t), x_t)
    d_alpha_t, d_sigma_t = broadcast_to(schedule.d_alpha(t), x_t), broadcast_to(schedule.d_sigma(t), x_t)
    var_t = alpha_t**2 * s**2 + sigma_t**2  # Var(x_t) per coordinate, > 0 since s > 0
    centred = x_t - alpha_t * m  # (B, ...) x_t - E[x_t]
    x0_mean = m + alpha_t * s**2 / var_t * centred  # E[x0 | x_t]
    eps_mean = sigma_t / var_t * centred  # E[eps | x_t]
    return d_alpha_t * x0_mean + d_sigma_t * eps_mean  # (B, ...)


# ------------------------------------------------------------------------------------------
# Notation map to the flow-matching papers (t' = 1 - t, u' = -u)
# ------------------------------------------------------------------------------------------
def to_fm_time(t) -> torch.Tensor:
    r"""The flow-matching papers' time t' = 1 - t (t' = 0 noise, t' = 1 data).

    Lipman et al. 2022 (arXiv:2210.02747, sec. 4) and Liu et al. 2022 (arXiv:2209.03003) start at
    the noise: their p_0 is N(0, I) and p_1 the data. The course starts at the data (t = 0).
    Inverse: :func:`from_fm_time`. Introduced in chapter 08.

    Args:
        t: a number or a tensor of course times in [0, 1], any shape.
    Returns:
        t' with the shape (and floating dtype) of t.
    """
    t = check_times(t if isinstance(t, torch.Tensor) else torch.tensor(float(t)), "t")
    return 1 - t


def from_fm_time(t_fm) -> torch.Tensor:
    r"""The course's time t = 1 - t' from the flow-matching papers' t' (inverse of :func:`to_fm_time`).

    Args:
        t_fm: a number or a tensor of the papers' times t' in [0, 1] (t' = 1 data), any shape.
    Returns:
        t with the shape (and floating dtype) of t_fm. Introduced in chapter 08.
    """
    t_fm = check_times(t_fm if isinstance(t_fm, torch.Tensor) else torch.tensor(float(t_fm)), "t_fm")
    return 1 - t_fm


def _check_velocity(velocity, name: str) -> torch.Tensor:
    if not isinstance(velocity, torch.Tensor) or not velocity.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got "
                         f"{velocity.dtype if isinstance(velocity, torch.Tensor) else type(velocity).__name__}")
    return velocity


def to_fm_velocity(velocity: torch.Tensor) -> torch.Tensor:
    r"""The papers' velocity u' = dx/dt' = -u, from the course's u = dx/dt (since t' = 1 - t).

    For the straight path the course's conditional velocity is eps - x0 and the papers' is
    x1 - x0 in their names (data minus noise; Liu et al. 2022, arXiv:2209.03003, eq. 1); for
    Lipman et al.'s path it is x1 - (1 - sigma_min) x (arXiv:2210.02747, eq. 23). A network
    trained in either convention converts with this sign. Introduced in chapter 08.

    Args:
        velocity: (B, ...) the course's velocity u.
    Returns:
        (B, ...) u' = -u.
    """
    return -_check_velocity(velocity, "velocity")


def from_fm_velocity(velocity_fm: torch.Tensor) -> torch.Tensor:
    r"""The course's velocity u = -u' from the papers' u' = dx/dt' (inverse of :func:`to_fm_velocity`).

    Args:
        velocity_fm: (B, ...) a velocity in the papers' time t'.
    Returns:
        (B, ...) u = -u'. Introduced in chapter 08.
    """
    return -_check_velocity(velocity_fm, "velocity_fm")
