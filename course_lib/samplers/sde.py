r"""The forward and reverse SDEs of an affine path, and the Euler-Maruyama step (introduced in chapter 06).

**Forward SDE.** The path x_t = alpha_t x0 + sigma_t eps is the marginal of the linear SDE
(Song et al. 2021, arXiv:2011.13456, eq. 5, with a drift linear in x)

    dx = f(t) x dt + g(t) dW,       f(t) = d_alpha_t / alpha_t,
                                    g(t)^2 = d(sigma_t^2)/dt - 2 f(t) sigma_t^2.

Derivation: given x0, the SDE keeps x Gaussian, with mean m and variance v obeying
m' = f m and v' = 2 f v + g^2. Matching m = alpha_t x0 gives f = alpha'_t / alpha_t; matching
v = sigma_t^2 gives g^2 = (sigma_t^2)' - 2 f sigma_t^2. These are the correspondences of Kingma
et al. 2021 ("Variational diffusion models", arXiv:2107.00630) as written in Lu et al. 2022
(DPM-Solver, arXiv:2206.00927, sec. 2.1). Examples: VPLinear gives f = -beta(t)/2,
g^2 = beta(t) (Song et al. 2021, eq. 11); VE gives f = 0, g^2 = d(sigma_t^2)/dt (eq. 9).

**Reverse SDE.** Run backwards in time (Anderson 1982; Song et al. 2021, eq. 6),

    dx = [f(t) x - g(t)^2 score(x, t)] dt + g(t) dW_bar,    score = -eps_hat / sigma_t,

with dt < 0 and W_bar a Brownian motion in reverse time. It has the same marginals as the forward
SDE; dropping the noise and halving the score term gives the probability-flow ODE of
:mod:`course_lib.samplers.ode`.

**Euler-Maruyama** over one step t -> s < t (Kloeden & Platen 1992, "Numerical solution of SDEs", ch. 9):

    x_s = x_t + (s - t) [f(t) x_t - g(t)^2 score(x_t, t)] + g(t) sqrt(t - s) z,   z ~ N(0, I).

Weak order 1: marginal moments are off by O(1/N) after N steps. No special last step: the
final step to t = 0 adds noise of variance g(t)^2 (t - s) like every other step.

>>> import torch
>>> from course_lib.schedules import VPLinear
>>> f, g2 = drift_and_diffusion(VPLinear(0.1, 20.0), torch.tensor([0.25, 0.5, 1.0], dtype=torch.float64))
>>> [round(v, 6) for v in g2.tolist()], [round(v, 6) for v in f.tolist()]   # beta(t) and -beta(t)/2
([5.075, 10.05, 20.0], [-2.5375, -5.025, -10.0])
"""

from __future__ import annotations

import math

import torch

from ..schedules import PathPoint, Schedule, check_times
from .ode import _check_moving
from .step import check_step, denoise, draw_noise

__all__ = ["drift_and_diffusion", "euler_maruyama_step", "reverse_sde_step"]


def _drift_and_diffusion_at(t: PathPoint) -> tuple[float, float]:
    """(f(t), g(t)^2) as float64 numbers at one point (see :func:`drift_and_diffusion`)."""
    if t.alpha <= 0.0:
        raise ValueError(
            "the drift f = d_alpha_t / alpha_t needs alpha_t > 0; this schedule has alpha_t = 0 at "
            f"t={t.t} (start the SDE slightly below t = 1)"
        )
    f = t.d_alpha / t.alpha
    return f, 2 * t.sigma * (t.d_sigma - f * t.sigma)  # g^2 = d(sigma_t^2)/dt - 2 f sigma_t^2


def drift_and_diffusion(schedule: Schedule, t) -> tuple[torch.Tensor, torch.Tensor]:
    r"""(f(t), g(t)^2) of the forward SDE dx = f(t) x dt + g(t) dW of an affine path.

    f = d_alpha_t / alpha_t and g^2 = d(sigma_t^2)/dt - 2 f sigma_t^2 = 2 sigma_t (d_sigma_t - f sigma_t)
    (Kingma et al. 2021, arXiv:2107.00630; Lu et al. 2022, arXiv:2206.00927, sec. 2.1; the
    derivation is in this module's docstring). Computed in float64, returned in t's dtype.
    Introduced in chapter 06.

    Where a schedule clips its log-SNR (within ~1e-9 of t = 0 for VP schedules) its time
    derivatives are 0 by design (see :mod:`course_lib.schedules`), and so are f and g^2 there;
    the samplers never evaluate them at t = 0.

    Args:
        schedule: a :class:`~course_lib.schedules.Schedule`.
        t: times in [0, 1], any shape, with alpha_t > 0 (f is infinite where alpha_t = 0).
    Returns:
        (f, g2), each of t's shape.
    """
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be a course_lib Schedule, got {type(schedule).__name__}")
    t = check_times(t)
    t64 = t.to(torch.float64)
    alpha_t, sigma_t = schedule.alpha(t64), schedule.sigma(t64)
    d_alpha_t, d_sigma_t = schedule.d_alpha(t64), schedule.d_sigma(t64)
    if bool((alpha_t <= 0).any()):
        raise ValueError(
            "the drift f = d_alpha_t / alpha_t needs alpha_t > 0; this schedule has alpha_t = 0 at "
            f"t={t64[alpha_t <= 0].tolist()} (start the SDE slightly below t = 1)"
        )
    f = d_alpha_t / alpha_t
    g2 = 2 * sigma_t * (d_sigma_t - f * sigma_t)  # = d(sigma_t^2)/dt - 2 f sigma_t^2
    return f.to(t.dtype), g2.to(t.dtype)


def euler_maruyama_step(denoiser, x_t: torch.Tensor, t, s, *, state=None,
                        generator: torch.Generator | None = None, noise: torch.Tensor | None = None):
    r"""One Euler-Maruyama step of the reverse SDE (Song et al. 2021, arXiv:2011.13456, eq. 6):

        x_s = x_t + (s - t) [f(t) x_t - g(t)^2 score] + sqrt(g(t)^2 (t - s)) z,
        score = -eps_hat / sigma_t,   eps_hat = (x_t - alpha_t x0_hat) / sigma_t.

    One denoiser evaluation and one normal draw per step. Introduced in chapter 06.

    Args:
        denoiser: D(x_t, t) -> x0_hat with a ``schedule`` attribute.
        x_t: (B, ...) the state at time t.
        t, s: times with 0 <= s < t <= 1, alpha_t > 0 and sigma_t > 0.
        state: passed through.
        generator: the source of z when ``noise`` is not given.
        noise: optional z, standard normal of x_t's shape.
    Returns:
        (x_s (B, ...), x0_hat = D(x_t, t) (B, ...), state).
    """
    # the eta = 1 member of the family below: (1 + eta^2)/2 = 1 and eta = 1 leave every number unchanged
    return reverse_sde_step(denoiser, x_t, t, s, eta=1.0, state=state, generator=generator, noise=noise)


def reverse_sde_step(denoiser, x_t: torch.Tensor, t, s, *, eta: float = 1.0, state=None,
                     generator: torch.Generator | None = None, noise: torch.Tensor | None = None):
    r"""One Euler-Maruyama step of the eta-family of reverse SDEs (Karras et al. 2022, arXiv:2206.00364, eq. 6):

        dx = [f(t) x - (1 + eta^2)/2 g(t)^2 score(x, t)] dt + eta g(t) dW_bar,      eta >= 0,
        x_s = x_t + (s - t) [f(t) x_t - (1 + eta^2)/2 g(t)^2 score] + eta sqrt(g(t)^2 (t - s)) z.

    Every member has the marginals q_t of the probability-flow ODE: the extra drift
    -eta^2/2 g^2 score and the noise eta g dW_bar are a Langevin process that leaves q_t invariant
    (their Fokker-Planck terms cancel; Karras et al. 2022, eq. 6, derived in their appendix, written there
    for x = s(t) (x0 + sigma(t) eps) with beta(t) = eta^2 sigma'(t) / sigma(t), here for the course's f, g).
    eta = 0 is the probability-flow ODE (Song et al. 2021, eq. 13; this step is then
    :func:`~course_lib.samplers.ode.euler_step` up to round-off); eta = 1 is the reverse SDE of
    Song et al. 2021, eq. 6 (the step is then :func:`euler_maruyama_step`, bit for bit). Not DDIM's eta
    (:func:`~course_lib.samplers.ddim.ddim_step`), though both interpolate from a deterministic
    sampler at 0 to an SDE sampler at 1.

    Weak order 1. One denoiser evaluation and one normal z per step, drawn also at eta = 0 (unused
    there), so ``sample(..., noise=[...])`` takes K tensors of x's shape for every eta.
    Introduced in chapter 06.

    Args:
        denoiser: D(x_t, t) -> x0_hat with a ``schedule`` attribute.
        x_t: (B, ...) the state at time t.
        t, s: times with 0 <= s < t <= 1, alpha_t > 0 and sigma_t > 0.
        eta: eta >= 0, the amount of Langevin noise (a finite number).
        state: passed through.
        generator: the source of z when ``noise`` is not given.
        noise: optional z, standard normal of x_t's shape.
    Returns:
        (x_s (B, ...), x0_hat = D(x_t, t) (B, ...), state).
    """
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not (0.0 <= eta < math.inf):
        raise ValueError(f"eta must be a finite number >= 0 (0: the probability-flow ODE, 1: Song's reverse SDE), "
                         f"got {eta!r}")
    t, s = check_step(denoiser, x_t, t, s)
    if t.sigma == 0.0:
        raise ValueError(f"the score -eps_hat / sigma_t needs sigma_t > 0, got sigma_t = 0 at t={t.t}")
    _check_moving(t)
    f, g2 = _drift_and_diffusion_at(t)
    if not (math.isfinite(f) and math.isfinite(g2) and g2 >= 0.0):
        raise ValueError(f"the SDE needs finite f and g^2 >= 0 at t={t.t}, got f={f}, g^2={g2}")
    z = draw_noise(x_t, generator, noise)
    x0_hat = denoise(denoiser, x_t, t)  # (B, ...)
    eps_hat = (x_t - t.alpha * x0_hat) / t.sigma  # (B, ...)
    score = -eps_hat / t.sigma  # (B, ...)
    h = s.t - t.t  # negative
    drift = f * x_t - ((1.0 + eta**2) / 2) * g2 * score  # Karras et al. 2022, eq. 6
    return x_t + h * drift + eta * math.sqrt(g2 * -h) * z, x0_hat, state
