r"""Rectified flow: reflow, straightness and one-step distillation (introduced in chapter 09).

Liu, Gong & Liu 2022, "Flow Straight and Fast: Learning to Generate and Transfer Data with
Rectified Flow", arXiv:2209.03003. Nothing here is a new sampler or a new path: a rectified flow
is the flow-matching model of chapter 08 (``Denoiser(net, RectifiedFlow(), prediction="velocity")``
on the straight path x_t = (1 - t) x0 + t eps), sampled with the one loop
:func:`course_lib.samplers.sample`. What changes is **which pairs (x0, eps) the loss sees**:

* **1-rectified flow** (chapter 08): x0 from the data and eps ~ N(0, I) drawn independently.
  Straight conditional paths cross, so the learned marginal velocity E[eps - x0 | x_t] averages
  directions and its trajectories curve.
* **Reflow** (Liu et al. 2022, Algorithm 1, "Reflow"): run the trained flow's ODE from noise eps
  down to x0_hat and train a new flow on the *coupled* pairs (x0_hat, eps)
  (:func:`reflow_pairs`, :func:`reflow_loss`). The ODE's trajectories do not cross, so the new
  conditional lines rarely do, and the new flow is straighter: one Euler step goes a long way.
* **Distillation** (Liu et al. 2022, Algorithm 1, "Distill"): regress the pair's x0_hat from eps in
  a single network call at t = 1 (:func:`distillation_loss`).

The **straightness** of a flow (Liu et al. 2022, Sec. 2, "straightening effect"; its O(1/k) decrease
under k rounds of reflow is proved in their Sec. 3), written in the course's time (t = 1 noise, t = 0 data; the papers' time is t' = 1 - t,
which flips both velocities below and leaves the squared norm unchanged):

.. math::  S = \int_0^1 \mathbb E\,\big\| (x_1 - x_0) - \tfrac{dx_t}{dt} \big\|^2 \, dt ,

zero exactly when every trajectory is a straight line travelled at constant speed, which is when
Euler's method is exact with any number of steps. :func:`straightness` estimates it along the
solver's own trajectory.

>>> import torch
>>> from course_lib.parameterization import Denoiser
>>> from course_lib.schedules import RectifiedFlow
>>> from course_lib.time_grids import uniform_grid
>>> shift = torch.tensor([1.0, -2.0])
>>> flow = Denoiser(lambda x, t: shift.expand_as(x), RectifiedFlow(), prediction="velocity")  # u = (1, -2)
>>> eps = torch.zeros(3, 2)
>>> x0_hat, eps_out = reflow_pairs(flow, eps, uniform_grid(4))
>>> x0_hat[0].tolist()                      # x0 = x1 - u: one straight line from eps
[-1.0, 2.0]
>>> float(straightness(flow, eps, uniform_grid(4)))   # a constant velocity is perfectly straight
0.0
"""

from __future__ import annotations

import torch

from .losses import diffusion_loss
from .parameterization import Denoiser, to_x0
from .samplers import StepInfo, euler_step, sample
from .time_grids import check_grid

__all__ = ["reflow_pairs", "straightness", "reflow_loss", "distillation_loss"]


# ------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------
def _check_denoiser(denoiser, fn: str) -> None:
    if not callable(denoiser) or not hasattr(denoiser, "schedule"):
        raise ValueError(f"{fn}: denoiser must be a Denoiser (callable, with the schedule it was trained on), "
                         f"got {type(denoiser).__name__}")


def _check_batch(x, name: str, fn: str) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise ValueError(f"{fn}: {name} must be a floating-point tensor of shape (B, ...), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}"
                         f"{' of dtype ' + str(x.dtype) if isinstance(x, torch.Tensor) else ''}")


def _check_pairs(x0_pairs, eps_pairs, fn: str) -> None:
    _check_batch(x0_pairs, "x0_pairs", fn)
    _check_batch(eps_pairs, "eps_pairs", fn)
    if x0_pairs.shape != eps_pairs.shape:
        raise ValueError(f"{fn}: x0_pairs and eps_pairs must have the same shape (one eps per x0), got "
                         f"{tuple(x0_pairs.shape)} and {tuple(eps_pairs.shape)}")


def _check_noise_to_data_grid(times, fn: str) -> torch.Tensor:
    times = check_grid(times)
    if float(times[0]) != 1.0 or float(times[-1]) != 0.0:
        raise ValueError(f"{fn}: the grid must run from the noise t = 1 down to the data t = 0 (a coupling "
                         f"joins x_1 = eps with x_0), got times from {float(times[0]):.6g} to {float(times[-1]):.6g}")
    return times


# ------------------------------------------------------------------------------------------
# Reflow
# ------------------------------------------------------------------------------------------
def reflow_pairs(denoiser, eps: torch.Tensor, times: torch.Tensor, *, step=euler_step,
                 generator: torch.Generator | None = None, batch_size: int | None = None,
                 **step_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The coupling of a trained flow: (x0_hat, eps) with x0_hat the ODE's end point from x_1 = eps.

    Liu et al. 2022 (arXiv:2209.03003), Algorithm 1, "Reflow": simulate the k-rectified flow from
    Z_0 ~ pi_0 (their noise end) to Z_1 and train the (k+1)-rectified flow on the pairs (Z_0, Z_1).
    In the course's time: integrate dx/dt = u(x, t) from x_1 = eps at t = 1 down to t = 0 with the
    one sampling loop, and return the pairs

    .. math::  (\hat x_0, \varepsilon), \qquad \hat x_0 = \mathrm{ODESolve}(u; \varepsilon, 1 \to 0).

    The noise is an explicit argument, so the same eps always gives the same pairs. Use a
    deterministic step (Euler, Heun: an ODE); a stochastic one (ancestral, Euler-Maruyama) gives
    pairs whose lines cross again, which undoes the point of reflow. Introduced in chapter 09.

    Args:
        denoiser: the trained flow, D(x_t, t) -> x0_hat with a ``schedule`` (usually
            ``Denoiser(net, RectifiedFlow(), prediction="velocity")``).
        eps: (B, ...) the starting noise x_1 = eps.
        times: (K+1,) strictly decreasing grid from exactly 1.0 to exactly 0.0.
        step: the step function of the loop (default :func:`~course_lib.samplers.euler_step`).
        generator: passed to the step (only a stochastic step uses it).
        batch_size: integrate at most this many pairs at a time (None: all at once); the result
            does not depend on it.
        **step_kwargs: passed to the step function.
    Returns:
        (x0_hat (B, ...), eps (B, ...)): eps is the input tensor itself.
    """
    _check_denoiser(denoiser, "reflow_pairs")
    _check_batch(eps, "eps", "reflow_pairs")
    times = _check_noise_to_data_grid(times, "reflow_pairs")
    if batch_size is None:
        batch_size = eps.shape[0]
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"reflow_pairs: batch_size must be a positive int or None, got {batch_size!r}")
    x0_hat = [sample(denoiser, eps[i:i + batch_size], times, step, generator=generator, **step_kwargs)
              for i in range(0, eps.shape[0], batch_size)]
    return torch.cat(x0_hat), eps  # (B, ...), (B, ...)


def reflow_loss(denoiser: Denoiser, x0_pairs: torch.Tensor, eps_pairs: torch.Tensor, *,
                generator: torch.Generator | None = None, t: torch.Tensor | None = None,
                reduction: str = "mean", **cond) -> torch.Tensor:
    r"""The flow-matching loss on a fixed coupling (x0_pairs[i], eps_pairs[i]) instead of fresh noise.

    .. math::  L = \mathbb E_{t \sim U(0, 1),\, i}\, \big\| F_\theta(x_t, t) - (\varepsilon_i - x_{0,i}) \big\|^2,
               \qquad x_t = (1 - t)\, x_{0,i} + t\, \varepsilon_i

    (Liu et al. 2022, arXiv:2209.03003, eq. 1, with (X_0, X_1) the pairs of the previous flow,
    Algorithm 1 "Reflow"; written in the course's time, where the straight path's velocity is
    eps - x0). Only t is random: each x0 keeps *its* eps. This is
    :func:`course_lib.losses.diffusion_loss` with ``eps=eps_pairs``; any schedule and prediction
    work the same way (Liu et al.'s choice: ``RectifiedFlow()`` and ``prediction="velocity"``).
    Introduced in chapter 09.

    Args:
        denoiser: the :class:`~course_lib.parameterization.Denoiser` being trained.
        x0_pairs: (B, ...) the data end of each pair (x0_hat of :func:`reflow_pairs`).
        eps_pairs: (B, ...) the noise end of each pair, same shape.
        generator: draws t ~ U(0, 1) unless t is given.
        t: optional explicit times (B,).
        reduction: "mean" (a scalar) or "none" (per-pair losses, (B,)).
        **cond: conditioning passed to the network.
    Returns:
        The loss: a scalar, or (B,) with ``reduction="none"``.

    >>> import torch
    >>> from course_lib.schedules import RectifiedFlow
    >>> den = Denoiser(lambda x, t: torch.zeros_like(x), RectifiedFlow(), prediction="velocity")
    >>> float(reflow_loss(den, torch.ones(4, 2), torch.full((4, 2), 3.0), t=torch.full((4,), 0.5)))  # (3 - 1)^2
    4.0
    """
    if not isinstance(denoiser, Denoiser):
        raise ValueError(f"reflow_loss: denoiser must be a course_lib Denoiser, got {type(denoiser).__name__}")
    _check_pairs(x0_pairs, eps_pairs, "reflow_loss")
    return diffusion_loss(denoiser, x0_pairs, generator=generator, t=t, eps=eps_pairs, reduction=reduction, **cond)


# ------------------------------------------------------------------------------------------
# Straightness
# ------------------------------------------------------------------------------------------
def straightness(denoiser, eps: torch.Tensor, times: torch.Tensor, *, step=euler_step,
                 reduction: str = "mean", generator: torch.Generator | None = None, **step_kwargs):
    r"""Liu et al.'s straightness of the flow's trajectories from x_1 = eps, estimated along the solver's path.

    Liu et al. 2022 (arXiv:2209.03003), Sec. 2 ("straightening effect"; the O(1/k) decrease under
    reflow is proved in their Sec. 3), in the course's time:

    .. math::  S = \int_0^1 \mathbb E\,\big\| (x_1 - x_0) - \dot x_t \big\|^2\, dt .

    The solver visits t_0 > t_1 > ... > t_K. Step i moves with the effective velocity
    d_i = (x_{t_i} - x_{t_{i+1}}) / (t_i - t_{i+1}) (for Euler: u(x_{t_i}, t_i), the velocity at the
    start of the step); the whole path moves with D = (x_{t_0} - x_{t_K}) / (t_0 - t_K), which is
    x_1 - x_0 on the full grid. The estimate is the Riemann sum

    .. math::  \hat S = \sum_i (t_i - t_{i+1})\, \big\| d_i - D \big\|^2 ,

    with ||.||^2 summed over all non-batch coordinates and E the mean over the batch. Since
    D is the (t_i - t_{i+1})-weighted mean of the d_i, S_hat is the weighted variance of the
    velocity along each path: 0 for a straight line travelled at constant speed, > 0 otherwise, and
    it converges to S as the grid is refined (use many steps: one step is always "straight").
    Introduced in chapter 09.

    Args:
        denoiser: D(x_t, t) -> x0_hat with a ``schedule``.
        eps: (B, ...) starting points x_{t_0} (x_1 = eps on the full grid).
        times: (K+1,) strictly decreasing grid (the full grid 1 -> 0 gives Liu et al.'s S; a partial
            grid gives the integral over [t_K, t_0]).
        step: the step function (default Euler).
        reduction: "mean" (a 0-d tensor, the batch mean) or "none" (per trajectory, (B,)).
        generator: passed to the step. **step_kwargs: passed to the step.
    Returns:
        S_hat, a 0-d tensor or (B,), in squared data units.
    """
    _check_denoiser(denoiser, "straightness")
    _check_batch(eps, "eps", "straightness")
    times = check_grid(times)
    if reduction not in ("mean", "none"):
        raise ValueError(f"straightness: reduction must be 'mean' or 'none', got {reduction!r}")
    points = [eps]  # x at t_0, t_1, ..., t_K

    def record(info: StepInfo) -> None:
        points.append(info.x)

    sample(denoiser, eps, times, step, generator=generator, callback=record, **step_kwargs)
    dt = (times[:-1] - times[1:]).to(torch.float64)  # (K,) positive step widths
    xs = torch.stack(points).to(torch.float64).flatten(2)  # (K+1, B, D)
    d = (xs[:-1] - xs[1:]) / dt[:, None, None]  # (K, B, D) effective velocity of each step
    displacement = (xs[0] - xs[-1]) / dt.sum()  # (B, D) = x_1 - x_0 on the full grid
    per_path = (dt[:, None] * ((d - displacement) ** 2).sum(dim=2)).sum(dim=0)  # (B,)
    per_path = per_path.to(eps.dtype)
    return per_path.mean() if reduction == "mean" else per_path


# ------------------------------------------------------------------------------------------
# Distillation
# ------------------------------------------------------------------------------------------
def distillation_loss(student: Denoiser, x0_pairs: torch.Tensor, eps_pairs: torch.Tensor, *,
                      reduction: str = "mean", **cond) -> torch.Tensor:
    r"""One-step distillation: the student's single-call estimate from x_1 = eps regresses the pair's x0.

    Liu et al. 2022 (arXiv:2209.03003), Algorithm 1, "Distill": learn a map T with Z_1 ~ T(Z_0) on
    the pairs of the k-rectified flow; here T is the student's x0_hat at t = 1, which is exactly what
    one Euler step from t = 1 to t = 0 returns (for the straight path x_0 = x_1 - u(x_1, 1)):

    .. math::  L = \mathbb E_i \, \big\| \hat x_0^{\theta}(\varepsilon_i, t = 1) - x_{0,i} \big\|^2 .

    Liu et al. use the LPIPS distance for images; the course uses the squared error (the mean over
    coordinates, like :func:`course_lib.losses.diffusion_loss`). x0_hat is computed from the raw
    network output *without* the denoiser's ``x0_range`` clipping (a clipped pixel has no gradient).
    Warm-start the student from the reflowed teacher's weights. Introduced in chapter 09.

    Args:
        student: the :class:`~course_lib.parameterization.Denoiser` being trained (its schedule must
            have alpha_1 = 0, sigma_1 > 0 and, for ``prediction="eps"``, finite x0 at t = 1).
        x0_pairs: (B, ...) the teacher's ODE end points (from :func:`reflow_pairs`).
        eps_pairs: (B, ...) the noise each of them started from.
        reduction: "mean" (a scalar) or "none" (per-pair losses, (B,)).
        **cond: conditioning passed to the network.
    Returns:
        The loss: a scalar, or (B,) with ``reduction="none"``.

    >>> import torch
    >>> from course_lib.schedules import RectifiedFlow
    >>> student = Denoiser(lambda x, t: torch.zeros_like(x), RectifiedFlow(), prediction="velocity")
    >>> float(distillation_loss(student, torch.zeros(2, 3), torch.ones(2, 3)))  # x0_hat = eps - 0 = 1
    1.0
    """
    if not isinstance(student, Denoiser):
        raise ValueError(f"distillation_loss: student must be a course_lib Denoiser, got {type(student).__name__}")
    _check_pairs(x0_pairs, eps_pairs, "distillation_loss")
    if reduction not in ("mean", "none"):
        raise ValueError(f"distillation_loss: reduction must be 'mean' or 'none', got {reduction!r}")
    schedule = student.schedule
    one = torch.tensor(1.0, dtype=torch.float64)
    if float(schedule.sigma(one)) <= 0.0 or student.prediction == "eps" and float(schedule.alpha(one)) == 0.0:
        raise ValueError("distillation_loss: one step from t = 1 needs sigma_1 > 0 and an x0 that is defined at "
                         f"t = 1 (not eps-prediction with alpha_1 = 0), got {schedule!r} with "
                         f"prediction={student.prediction!r}")
    t = torch.ones(eps_pairs.shape[0], device=eps_pairs.device, dtype=eps_pairs.dtype)  # (B,) all at t = 1
    output = student.network_output(eps_pairs, t, **cond)  # (B, ...)
    x0_hat = to_x0(student.prediction, output, eps_pairs, schedule, t)  # unclipped
    per_pair = ((x0_hat - x0_pairs) ** 2).flatten(1).mean(dim=1)  # (B,)
    return per_pair.mean() if reduction == "mean" else per_pair
