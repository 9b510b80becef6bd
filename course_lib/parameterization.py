r"""What the network predicts, and the conversions between the choices (chapters 02 and 04).

On the path x_t = alpha_t x0 + sigma_t eps every prediction target is an affine
function of (x0, eps), so any one of them, together with x_t, gives all the others:

=============  ===========================================  ==============================
name           target                                        reference
=============  ===========================================  ==============================
``eps``        eps                                            Ho et al. 2020, eq. 11
``x0``         x0                                             Ho et al. 2020, sec. 3.2
``v``          v = alpha_t eps - sigma_t x0                   Salimans & Ho 2022, arXiv:2202.00512, sec. 4
``velocity``   u = d alpha_t/dt x0 + d sigma_t/dt eps = dx_t/dt   Lipman et al. 2022, arXiv:2210.02747
``score``      grad log q(x_t) estimate = -eps / sigma_t      Song et al. 2021, arXiv:2011.13456
=============  ===========================================  ==============================

All functions take per-example coefficients of shape () or (B,) and tensors of
shape (B, ...). :class:`Denoiser` wraps a network of any parameterisation into the
one function every sampler uses: x0_hat = D(x_t, t).

>>> import torch
>>> from course_lib.schedules import VPCosine
>>> s, t = VPCosine(), torch.tensor([0.3, 0.7])
>>> x0, eps = torch.randn(2, 4, generator=torch.Generator().manual_seed(0)), torch.ones(2, 4)
>>> x_t = s.add_noise(x0, t, eps)
>>> v = target("v", x0, eps, s, t)
>>> torch.allclose(to_x0("v", v, x_t, s, t), x0, atol=1e-5)
True
"""

from __future__ import annotations

import math

import torch

from .schedules import PathPoint, Schedule, broadcast_to, check_times

__all__ = [
    "PREDICTIONS",
    "x0_from_eps",
    "eps_from_x0",
    "v_from_x0_eps",
    "x0_from_v",
    "velocity_from_x0_eps",
    "x0_from_velocity",
    "score_from_eps",
    "eps_from_score",
    "target",
    "to_x0",
    "to_eps",
    "Denoiser",
]

PREDICTIONS = ("eps", "x0", "v", "velocity", "score")


def _check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; expected one of {PREDICTIONS}")


def _refuse_where(singular: torch.Tensor, why: str) -> None:
    """Raise a ValueError naming the examples where a conversion has no value (no silent NaN/inf)."""
    if bool(singular.any()):
        where = "" if singular.dim() == 0 else f" (at example(s) {torch.nonzero(singular.reshape(-1))[:5, 0].tolist()})"
        raise ValueError(why + where)


def x0_from_eps(x_t, eps, alpha_t, sigma_t):
    r"""x0 = (x_t - sigma_t eps) / alpha_t  (Ho et al. 2020, eq. 15).

    At alpha_t = 0 (pure noise, e.g. t = 1 on the straight path) x_t = sigma_t eps holds nothing
    of x0: a ValueError, not a silent NaN/inf.
    """
    _refuse_where(torch.as_tensor(alpha_t) == 0, "x0 = (x_t - sigma_t eps) / alpha_t is undefined where alpha_t = 0 "
                  "(pure noise: x_t = sigma_t eps says nothing about x0)")
    return (x_t - broadcast_to(sigma_t, x_t) * eps) / broadcast_to(alpha_t, x_t)


def eps_from_x0(x_t, x0, alpha_t, sigma_t):
    r"""eps = (x_t - alpha_t x0) / sigma_t.

    At sigma_t = 0 (clean data, t = 0 on VP schedules and the straight path) x_t = alpha_t x0 holds
    nothing of eps: a ValueError, not a silent NaN/inf.
    """
    _refuse_where(torch.as_tensor(sigma_t) == 0, "eps = (x_t - alpha_t x0) / sigma_t is undefined where sigma_t = 0 "
                  "(clean data: x_t = alpha_t x0 says nothing about eps)")
    return (x_t - broadcast_to(alpha_t, x_t) * x0) / broadcast_to(sigma_t, x_t)


def v_from_x0_eps(x0, eps, alpha_t, sigma_t):
    r"""v = alpha_t eps - sigma_t x0  (Salimans & Ho 2022, sec. 4)."""
    return broadcast_to(alpha_t, x0) * eps - broadcast_to(sigma_t, x0) * x0


def x0_from_v(x_t, v, alpha_t, sigma_t):
    r"""x0 = (alpha_t x_t - sigma_t v) / (alpha_t^2 + sigma_t^2)  (= alpha_t x_t - sigma_t v for VP)."""
    a, s = broadcast_to(alpha_t, x_t), broadcast_to(sigma_t, x_t)
    return (a * x_t - s * v) / (a**2 + s**2)


def velocity_from_x0_eps(x0, eps, d_alpha_t, d_sigma_t):
    r"""u = dx_t/dt = d alpha_t/dt x0 + d sigma_t/dt eps  (the conditional velocity of flow matching)."""
    return broadcast_to(d_alpha_t, x0) * x0 + broadcast_to(d_sigma_t, x0) * eps


def x0_from_velocity(x_t, velocity, alpha_t, sigma_t, d_alpha_t, d_sigma_t):
    r"""Solve x_t = alpha x0 + sigma eps and u = alpha' x0 + sigma' eps for x0:

    x0 = (sigma_t u - sigma'_t x_t) / (sigma_t alpha'_t - sigma'_t alpha_t).

    Where sigma_t = 0 the answer is exact without the velocity, x0 = x_t / alpha_t (x_t = alpha_t x0),
    even when the denominator vanishes there (VP schedules at t = 0, whose clipped log-SNR has
    zero derivative). Where the denominator is 0 with sigma_t > 0 the velocity carries no
    information about x0 (e.g. VPCosine within ~3e-5 of t = 1, where lambda_t is clipped): a
    ValueError.
    """
    a, s = broadcast_to(alpha_t, x_t), broadcast_to(sigma_t, x_t)
    da, ds = broadcast_to(d_alpha_t, x_t), broadcast_to(d_sigma_t, x_t)
    denom = s * da - ds * a
    exact = s == 0  # x_t = alpha_t x0: x0 = x_t / alpha_t for every parameterisation
    _refuse_where((denom == 0) & ~exact, "x0 from a velocity is undefined where sigma_t alpha'_t - sigma'_t alpha_t = 0 "
                  "with sigma_t > 0 (the path does not move: d alpha_t/dt = d sigma_t/dt = 0 where the log-SNR is clipped)")
    if not bool(exact.any()):
        return (s * velocity - ds * x_t) / denom
    one = torch.ones_like(denom)
    x0 = (s * velocity - ds * x_t) / torch.where(exact, one, denom)  # safe denominators: no NaN in the gradient
    return torch.where(exact, x_t / torch.where(exact, a, one), x0)


def score_from_eps(eps, sigma_t):
    r"""score = grad_x log q(x_t | x0) = -eps / sigma_t  (Vincent 2011; Song et al. 2021, eq. 6).

    At sigma_t = 0 q(x_t | x0) is a point mass and its score is infinite: a ValueError.
    """
    _refuse_where(torch.as_tensor(sigma_t) == 0, "the score -eps / sigma_t is infinite where sigma_t = 0 "
                  "(q(x_t | x0) is a point mass at clean data)")
    return -eps / broadcast_to(sigma_t, eps)


def eps_from_score(score, sigma_t):
    r"""eps = -sigma_t score."""
    return -broadcast_to(sigma_t, score) * score


def _coefficients(schedule: Schedule, t: torch.Tensor):
    return schedule.alpha(t), schedule.sigma(t), schedule.d_alpha(t), schedule.d_sigma(t)


def _at(prediction: str, t: torch.Tensor, err: ValueError) -> ValueError:
    """The same error, with the parameterisation and the times it happened at."""
    times = t.reshape(-1)[:5].tolist() if t.dim() else float(t)
    return ValueError(f"prediction {prediction!r} at t = {times}: {err}")


def target(prediction: str, x0: torch.Tensor, eps: torch.Tensor, schedule: Schedule, t) -> torch.Tensor:
    """The regression target for a network of the given parameterisation, shape of x0.

    The score target -eps / sigma_t is infinite at sigma_t = 0 (t = 0 on VP schedules and the
    straight path): a ValueError naming t, not an infinite loss.
    """
    _check_prediction(prediction)
    if x0.shape != eps.shape:
        raise ValueError(f"x0 and eps must have the same shape, got {tuple(x0.shape)} and {tuple(eps.shape)}")
    t = check_times(t)
    a, s, da, ds = _coefficients(schedule, t)
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return v_from_x0_eps(x0, eps, a, s)
    if prediction == "velocity":
        return velocity_from_x0_eps(x0, eps, da, ds)
    try:
        return score_from_eps(eps, s)
    except ValueError as err:
        raise _at(prediction, t, err) from None


def to_x0(prediction: str, output: torch.Tensor, x_t: torch.Tensor, schedule: Schedule, t) -> torch.Tensor:
    """Convert a network output of the given parameterisation into x0_hat.

    At the ends of the path: where sigma_t = 0, x_t = alpha_t x0, and every conversion gives the
    exact x0_hat = x_t / alpha_t (for "x0" the output itself); where alpha_t = 0 (t = 1 on the
    straight path) "eps" and "score" outputs say nothing about x0, and a ValueError names the time
    and the parameterisation (as it does where a velocity says nothing, see :func:`x0_from_velocity`).
    """
    _check_prediction(prediction)
    if output.shape != x_t.shape:
        raise ValueError(f"network output shape {tuple(output.shape)} must equal x_t's shape {tuple(x_t.shape)}")
    t = check_times(t)
    a, s, da, ds = _coefficients(schedule, t)
    try:
        if prediction == "eps":
            return x0_from_eps(x_t, output, a, s)
        if prediction == "x0":
            return output
        if prediction == "v":
            return x0_from_v(x_t, output, a, s)
        if prediction == "velocity":
            return x0_from_velocity(x_t, output, a, s, da, ds)
        return x0_from_eps(x_t, eps_from_score(output, s), a, s)
    except ValueError as err:
        raise _at(prediction, t, err) from None


def to_eps(prediction: str, output: torch.Tensor, x_t: torch.Tensor, schedule: Schedule, t) -> torch.Tensor:
    """Convert a network output of the given parameterisation into eps_hat.

    At the ends of the path: "score" converts directly, eps_hat = -sigma_t score (finite
    everywhere); where sigma_t = 0 a "v" output gives eps_hat = v / alpha_t exactly and a
    "velocity" output eps_hat = (alpha_t u - alpha'_t x_t) / (alpha_t sigma'_t) where sigma'_t != 0;
    an "x0" output says nothing about eps there, nor a velocity on a path that does not move,
    and a ValueError names the time and the parameterisation.
    """
    _check_prediction(prediction)
    if output.shape != x_t.shape:
        raise ValueError(f"network output shape {tuple(output.shape)} must equal x_t's shape {tuple(x_t.shape)}")
    if prediction == "eps":
        return output
    t = check_times(t)
    if prediction == "score":
        return eps_from_score(output, schedule.sigma(t))
    alpha_t, sigma_t = schedule.alpha(t), schedule.sigma(t)
    clean = sigma_t == 0
    if prediction in ("v", "velocity") and bool(clean.any()):
        a, s = broadcast_to(alpha_t, x_t), broadcast_to(sigma_t, x_t)
        if prediction == "v":  # solve x_t = a x0 + s eps, v = a eps - s x0: eps = (s x_t + a v) / (a^2 + s^2)
            return (s * x_t + a * output) / (a**2 + s**2)
        da, ds = broadcast_to(schedule.d_alpha(t), x_t), broadcast_to(schedule.d_sigma(t), x_t)
        denom = a * ds - da * s  # solve x_t = a x0 + s eps, u = a' x0 + s' eps for eps
        try:
            _refuse_where(denom == 0, "eps from a velocity is undefined where alpha_t sigma'_t - alpha'_t sigma_t = 0 "
                          "(the path does not move: d alpha_t/dt = d sigma_t/dt = 0 where the log-SNR is clipped)")
        except ValueError as err:
            raise _at(prediction, t, err) from None
        return (a * output - da * x_t) / denom
    x0_hat = to_x0(prediction, output, x_t, schedule, t)
    try:
        return eps_from_x0(x_t, x0_hat, alpha_t, sigma_t)
    except ValueError as err:
        raise _at(prediction, t, err) from None


class Denoiser:
    r"""Wrap a network into the denoiser D(x_t, t) = x0_hat that every sampler calls.

    The network is called as ``net(c_in * x_t, t, **cond)`` with the input scaling
    c_in = 1 / sqrt(alpha_t^2 + sigma_t^2) (1 for variance-preserving schedules; it keeps
    the input at unit scale for VE/EDM, cf. Karras et al. 2022, Table 1), and its output is
    read as the ``prediction`` target. Fixed conditioning (class labels, a context) can be
    bound once with ``cond``; per-call keyword arguments override it. Introduced in chapter 02.

    Args:
        net: a module ``net(x (B, ...), t (B,), **cond) -> (B, ...)``.
        schedule: the :class:`~course_lib.schedules.Schedule` the network was trained on.
        prediction: one of ``PREDICTIONS``.
        x0_range: optional (low, high): clip x0_hat to the data range, as DDPM's released code
            does for images in [-1, 1] (needed where alpha_t is ~0 at t = 1, e.g. the cosine
            schedule, since x0_hat = (x_t - sigma_t eps_hat)/alpha_t amplifies errors by 1/alpha_t).
            Off by default: nothing is clipped unless you ask.
    """

    def __init__(self, net, schedule: Schedule, prediction: str = "eps", *,
                 x0_range: tuple[float, float] | None = None, **cond):
        _check_prediction(prediction)
        if x0_range is not None:
            if len(x0_range) != 2 or not float(x0_range[0]) < float(x0_range[1]):
                raise ValueError(f"x0_range must be a pair (low, high) with low < high, got {x0_range!r}")
        self.x0_range = x0_range
        if not isinstance(schedule, Schedule):
            raise ValueError(f"schedule must be a course_lib Schedule, got {type(schedule).__name__}")
        if not callable(net):
            raise ValueError(f"net must be callable, got {type(net).__name__}")
        self.net, self.schedule, self.prediction, self.cond = net, schedule, prediction, cond
        self._point_table: dict = {}  # (PathPoint, dtype) -> coefficients, filled by prepare()

    def _batch_times(self, x_t: torch.Tensor, t) -> torch.Tensor:
        t = check_times(t if isinstance(t, torch.Tensor) else torch.tensor(float(t)))
        if t.dim() == 0:
            t = t.expand(x_t.shape[0])
        if t.dim() != 1 or t.shape[0] != x_t.shape[0]:
            raise ValueError(f"t must be a scalar or have shape ({x_t.shape[0]},), got {tuple(t.shape)}")
        # the network sees float32 times unless the data is float64 (then keep full precision)
        return t.to(device=x_t.device, dtype=torch.float64 if x_t.dtype == torch.float64 else torch.float32)

    def network_output(self, x_t: torch.Tensor, t, **cond) -> torch.Tensor:
        """The raw network output F(c_in x_t, t) in the ``prediction`` parameterisation."""
        t = self._batch_times(x_t, t)
        c_in = torch.rsqrt(self.schedule.alpha(t) ** 2 + self.schedule.sigma(t) ** 2)
        kwargs = {**self.cond, **cond}
        return self.net(broadcast_to(c_in, x_t) * x_t, t, **kwargs)

    def __call__(self, x_t: torch.Tensor, t, **cond) -> torch.Tensor:
        """x0_hat = D(x_t, t), shape of x_t."""
        t = self._batch_times(x_t, t)
        x0_hat = to_x0(self.prediction, self.network_output(x_t, t, **cond), x_t, self.schedule, t)
        if self.x0_range is not None:
            x0_hat = x0_hat.clamp(float(self.x0_range[0]), float(self.x0_range[1]))
        return x0_hat

    def prepare(self, points, dtype: torch.dtype) -> None:
        r"""Compute, in one pass, the coefficients :meth:`at_point` uses at ``points`` for data of ``dtype``.

        :func:`~course_lib.samplers.loop.sample` calls it once per grid. The numbers are those the
        tensor path (:meth:`__call__`) computes, in the same precision: alpha_t and sigma_t rounded
        to ``dtype``, c_in = 1/sqrt(alpha_t^2 + sigma_t^2), alpha_t^2 + sigma_t^2 (v) and
        sigma_t alpha'_t - sigma'_t alpha_t (velocity) computed in ``dtype``; so both paths give the
        same x0_hat bit for bit. Kept in a small table on the denoiser (a memo: the same points
        always give the same numbers).
        """
        todo = [p for p in dict.fromkeys(points) if (p, dtype) not in self._point_table]
        if not todo:
            return
        if len(self._point_table) > 100_000:  # a memo, not a store: start afresh rather than grow without bound
            self._point_table.clear()
        wide = torch.tensor([[p.alpha, p.sigma, p.d_alpha, p.d_sigma] for p in todo], dtype=torch.float64)
        a, s, da, ds = wide.to(dtype).unbind(1)  # each (P,), as schedule.alpha(t) etc. return them in dtype
        v_den = a**2 + s**2
        rows = torch.stack([a, s, da, ds, torch.rsqrt(v_den), v_den, s * da - ds * a], dim=1).tolist()
        for p, row in zip(todo, rows):
            self._point_table[(p, dtype)] = tuple(row)

    def at_point(self, x_t: torch.Tensor, point: PathPoint, **cond) -> torch.Tensor:
        r"""x0_hat = D(x_t, t) at one time for the whole batch, read from a :class:`PathPoint`.

        The samplers' path: the same conversion as :meth:`__call__`, with the coefficients of the
        point computed once per grid (:meth:`prepare`) as Python numbers, so a step costs the
        network call and a few elementwise operations, with no schedule evaluation and no host
        synchronisation. At sigma_t = 0 (clean data) x_t = alpha_t x0, so x0_hat = x_t / alpha_t.

        Args:
            x_t: (B, ...) the state at time ``point.t``.
            point: the time and its coefficients.
        Returns:
            (B, ...) x0_hat.
        """
        key = (point, x_t.dtype)
        if key not in self._point_table:  # a time off the grid (a solver's midpoint): computed now
            self.prepare((point,), x_t.dtype)
        a, s, da, ds, c_in, v_den, det = self._point_table[key]
        if s == 0.0:
            return x_t / a  # the exact limit: x_t = alpha_t x0 at sigma_t = 0
        t = torch.full((x_t.shape[0],), point.t, device=x_t.device,
                       dtype=torch.float64 if x_t.dtype == torch.float64 else torch.float32)
        output = self.net(x_t if c_in == 1.0 else c_in * x_t, t, **{**self.cond, **cond})  # F(c_in x_t, t)
        if output.shape != x_t.shape:
            raise ValueError(f"network output shape {tuple(output.shape)} must equal x_t's shape {tuple(x_t.shape)}")
        if self.prediction == "x0":
            x0_hat = output
        elif self.prediction == "v":
            x0_hat = (a * x_t - s * output) / v_den  # x0 = (alpha x_t - sigma v) / (alpha^2 + sigma^2)
        elif self.prediction == "velocity":
            if det == 0.0:
                raise ValueError(f"a velocity network gives no x0_hat where sigma_t alpha'_t - sigma'_t alpha_t = 0, "
                                 f"got it at t={point.t}")
            x0_hat = (s * output - ds * x_t) / det  # x0 = (sigma u - sigma' x_t) / (sigma alpha' - sigma' alpha)
        else:
            eps_hat = output if self.prediction == "eps" else -s * output  # score = -eps / sigma
            if a == 0.0:
                raise ValueError(f"an {self.prediction}-prediction network gives no x0_hat where alpha_t = 0 "
                                 f"(x0 = (x_t - sigma_t eps) / alpha_t), got t={point.t}; start the grid below t = 1")
            x0_hat = (x_t - s * eps_hat) / a  # Ho et al. 2020, eq. 15
        if self.x0_range is not None:
            x0_hat = x0_hat.clamp(float(self.x0_range[0]), float(self.x0_range[1]))
        return x0_hat

    def eps(self, x_t: torch.Tensor, t, **cond) -> torch.Tensor:
        """eps_hat(x_t, t), shape of x_t."""
        t = self._batch_times(x_t, t)
        return to_eps(self.prediction, self.network_output(x_t, t, **cond), x_t, self.schedule, t)

    def __repr__(self) -> str:
        return f"Denoiser(net={type(self.net).__name__}, schedule={self.schedule!r}, prediction={self.prediction!r})"
