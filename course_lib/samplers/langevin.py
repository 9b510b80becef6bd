r"""Langevin correctors and predictor-corrector sampling (introduced in chapter 06).

Song et al. 2021 ("Score-based generative modeling through SDEs", arXiv:2011.13456, sec. 4.2,
Algorithms 4 and 5): after each step of a numerical SDE/ODE solver (the *predictor*) from t to s,
a few steps of Langevin dynamics at the fixed time s (the *corrector*) move x_s towards the
marginal q_s, using the score alone:

    x <- x + eps_step score(x, s) + sqrt(2 eps_step) z,      z ~ N(0, I),
    eps_step = 2 alpha_i (r ||z|| / ||score||)^2,           score = -eps_hat / sigma_s,

with r the "signal-to-noise ratio" of the step: ||eps_step score|| / ||sqrt(2 eps_step) z|| = r.
Algorithm 4 (VE) has alpha_i = 1; Algorithm 5 (VP) has alpha_i = 1 - beta_i, DDPM's per-step
signal factor (:func:`predictor_corrector_step` passes alpha_bar(t) / alpha_bar(s) = (alpha_t / alpha_s)^2
of the step just taken; it is 1 on VE and EDM paths, so one rule covers both algorithms).

Langevin dynamics with a fixed step eps leaves N(m, v) invariant only as eps -> 0: for a Gaussian
marginal the stationary variance of the discrete chain is v / (1 - eps / (2 v)), and with the snr
rule eps / (2 v) ~ r^2 (||z||^2 ~ d, ||score||^2 ~ d / v), so a corrector inflates the variance by
a factor ~1 / (1 - r^2) (r = 0.16: 2.6 %). The norms are per example (over all of an example's
coordinates, as Algorithm 4 writes them); the step size then depends on the draw z, which is
harmless in high dimension (||z||^2 / d concentrates) and biases the chain on low-dimensional
data. (Song et al.'s code averages the norms over the batch instead.)

>>> import torch
>>> from course_lib.schedules import VE
>>> from course_lib.parameterization import Denoiser
>>> den = Denoiser(lambda x, t: torch.zeros_like(x), VE(), prediction="x0")   # x0_hat = 0
>>> x = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
>>> langevin_corrector(den, x, 0.5, n_steps=3, generator=torch.Generator().manual_seed(1)).shape
torch.Size([4, 16])
"""

from __future__ import annotations

import inspect
import math

import torch

from .sde import euler_maruyama_step
from .step import as_point, check_step, check_x, denoise, draw_noise

__all__ = ["langevin_corrector", "predictor_corrector_step"]


def _check_positive_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_snr(snr) -> None:
    if isinstance(snr, bool) or not isinstance(snr, (int, float)) or not (0 < snr < math.inf):
        raise ValueError(f"snr (the Langevin signal-to-noise ratio r) must be a finite number > 0, got {snr!r}")


def _per_example_norm(v: torch.Tensor) -> torch.Tensor:
    """||v|| over every coordinate of each example: (B, ...) -> (B, 1, ..., 1), broadcastable to v."""
    return v.flatten(1).norm(dim=1).reshape(-1, *([1] * (v.dim() - 1)))


def _langevin_steps(denoiser, x: torch.Tensor, t, z: torch.Tensor, snr: float, step_scale: float):
    """Algorithm 4/5's corrector loop at the PathPoint t with the draws z (n, B, ...)."""
    for j in range(z.shape[0]):
        x0_hat = denoise(denoiser, x, t)  # (B, ...)
        score = (t.alpha * x0_hat - x) / t.sigma**2  # (B, ...) = -eps_hat / sigma_t
        eps_step = 2.0 * step_scale * (snr * _per_example_norm(z[j]) / _per_example_norm(score)) ** 2  # (B, 1, ...)
        x = x + eps_step * score + torch.sqrt(2.0 * eps_step) * z[j]  # Langevin step
    return x


def langevin_corrector(denoiser, x_t: torch.Tensor, t, *, snr: float = 0.16, n_steps: int = 1,
                       step_scale: float = 1.0, generator: torch.Generator | None = None,
                       noise: torch.Tensor | None = None) -> torch.Tensor:
    r"""n_steps Langevin corrector steps at the fixed time t (Song et al. 2021, arXiv:2011.13456, Algorithms 4-5).

    For j = 1..n_steps:

        g        = score(x, t) = (alpha_t x0_hat(x, t) - x) / sigma_t^2      (= -eps_hat / sigma_t)
        z ~ N(0, I)
        eps_step = 2 step_scale (r ||z|| / ||g||)^2                          (per example)
        x        = x + eps_step g + sqrt(2 eps_step) z

    step_scale is Algorithm 5's alpha_i (1 - beta_i on VP paths; 1, Algorithm 4, on VE paths).
    The chain targets q_t, the marginal at time t, with a bias that grows like r^2 (see the
    module docstring). An example whose score is exactly 0 gets an infinite step (the loop's
    finiteness check reports it). One denoiser evaluation and one normal per step.
    Introduced in chapter 06.

    Args:
        denoiser: D(x_t, t) -> x0_hat with a ``schedule`` attribute.
        x_t: (B, ...) the state at time t.
        t: one time in [0, 1] with sigma_t > 0 (a number, a 0-d tensor or a PathPoint).
        snr: r > 0, the ratio ||eps_step g|| / ||sqrt(2 eps_step) z|| of every step.
        n_steps: the number of corrector steps (>= 1).
        step_scale: alpha_i >= 0 of Algorithm 5.
        generator: the source of z when ``noise`` is not given.
        noise: optional z of every step, (n_steps, *x_t.shape) (x_t's shape when n_steps = 1).
    Returns:
        (B, ...) x after the corrector steps.
    """
    check_x(denoiser, x_t)
    t = as_point(denoiser.schedule, t, "t")
    _check_snr(snr)
    _check_positive_int("n_steps", n_steps, 1)
    if isinstance(step_scale, bool) or not isinstance(step_scale, (int, float)) or not (0 <= step_scale < math.inf):
        raise ValueError(f"step_scale (Algorithm 5's alpha_i) must be a finite number >= 0, got {step_scale!r}")
    if t.sigma == 0.0:
        raise ValueError(f"the score -eps_hat / sigma_t needs sigma_t > 0, got sigma_t = 0 at t={t.t}")
    z = draw_noise(x_t, generator, noise, draws=n_steps)
    z = z[None] if n_steps == 1 else z  # (n_steps, B, ...)
    return _langevin_steps(denoiser, x_t, t, z, float(snr), float(step_scale))


def predictor_corrector_step(denoiser, x_t: torch.Tensor, t, s, *, predictor=euler_maruyama_step, n_corrector: int = 1,
                             snr: float = 0.16, predictor_draws: int | None = None, state=None,
                             generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
                             **predictor_kwargs):
    r"""One predictor-corrector step t -> s (Song et al. 2021, arXiv:2011.13456, sec. 4.2, Algorithms 4-5).

        x_s = predictor(x_t, t -> s)                                  (e.g. Euler-Maruyama, DDPM)
        repeat n_corrector times at s:
            x_s = x_s + eps_step score(x_s, s) + sqrt(2 eps_step) z,  (:func:`langevin_corrector`)
            eps_step = 2 alpha_i (r ||z|| / ||score||)^2,  alpha_i = (alpha_t / alpha_s)^2

    alpha_i is Algorithm 5's 1 - beta_i, taken here as (alpha_t / alpha_s)^2, DDPM's per-step signal
    factor of the step just taken (Song et al.'s alpha_i belongs to the transition below s, which
    one step does not see; the two differ by O(1/N^2)); it is 1 on VE and EDM paths (Algorithm 4).

    No corrector where sigma_s = 0 (the final step to t = 0 of VP paths): the score does not exist
    there; the draws of that step are then unused. Noise draws per step: the predictor's
    (``predictor_draws``; by default 1 if the predictor takes ``noise``, else 0) plus n_corrector,
    all drawn at once; explicit ``noise`` is (k, *x_t.shape) with k that total, the predictor's
    first (x_t's shape when k = 1). NFE: the predictor's plus n_corrector (none at sigma_s = 0).
    Introduced in chapter 06.

    Args:
        denoiser: D(x_t, t) -> x0_hat with a ``schedule`` attribute.
        x_t: (B, ...) ; t, s: times with 0 <= s < t <= 1.
        predictor: a step function; by default :func:`~course_lib.samplers.sde.euler_maruyama_step`
            (Song et al.'s predictor for a continuous-time SDE).
        n_corrector: corrector steps per step (>= 0; 0 leaves the predictor alone).
        snr: the Langevin signal-to-noise ratio r > 0.
        predictor_draws: normals the predictor draws per step (None: 1 if it takes noise, else 0).
        state: the predictor's state, passed to it and returned from it.
        generator: the source of every draw when ``noise`` is not given.
        noise: optional draws (k, *x_t.shape), or x_t's shape when k = 1.
        **predictor_kwargs: passed to the predictor (``eta=...`` for ``ddim_step``, say).
    Returns:
        (x_s (B, ...), x0_hat of the predictor at t (B, ...), the predictor's state).
    """
    t, s = check_step(denoiser, x_t, t, s)
    if not callable(predictor):
        raise ValueError("predictor must be a step function (predictor=euler_maruyama_step, say), got "
                         f"{type(predictor).__name__}")
    _check_positive_int("n_corrector", n_corrector, 0)
    _check_snr(snr)
    takes_noise = "noise" in inspect.signature(predictor).parameters
    if predictor_draws is None:
        predictor_draws = 1 if takes_noise else 0
    _check_positive_int("predictor_draws", predictor_draws, 0)
    if predictor_draws > 0 and not takes_noise:
        raise ValueError(f"{getattr(predictor, '__name__', predictor)} takes no noise, but predictor_draws="
                         f"{predictor_draws} was given")
    k = predictor_draws + n_corrector
    if k == 0:
        if noise is not None:
            raise ValueError("this step draws no noise (a deterministic predictor and n_corrector=0), but noise was given")
        return predictor(denoiser, x_t, t, s, state=state, generator=generator, **predictor_kwargs)
    z = draw_noise(x_t, generator, noise, draws=k)
    z = z[None] if k == 1 else z  # (k, B, ...)
    if predictor_draws > 0:
        z_predictor = z[0] if predictor_draws == 1 else z[:predictor_draws]
        x_s, x0_hat, state = predictor(denoiser, x_t, t, s, state=state, generator=generator, noise=z_predictor,
                                       **predictor_kwargs)
    else:
        x_s, x0_hat, state = predictor(denoiser, x_t, t, s, state=state, generator=generator, **predictor_kwargs)
    if n_corrector == 0 or s.sigma == 0.0:
        return x_s, x0_hat, state  # no corrector at sigma_s = 0: the score does not exist there
    step_scale = (t.alpha / s.alpha) ** 2  # Algorithm 5's alpha_i = 1 - beta_i (1 on VE/EDM paths)
    return _langevin_steps(denoiser, x_s, s, z[predictor_draws:], float(snr), step_scale), x0_hat, state
