r"""Multistep consistency sampling as a step function (introduced in chapter 10).

Song, Dhariwal, Chen & Sutskever 2023, "Consistency Models", arXiv:2303.01469, Algorithm 1:
one call of the consistency function f maps a noisy point straight to (an estimate of) the end of
its trajectory; to refine, noise that estimate back up to a smaller time and map again:

    x0_hat = f(x_t, t)                                  (Algorithm 1, line 2 / line 6)
    x_s    = alpha_s x0_hat + sigma_s z,  z ~ N(0, I)   (line 5: the forward process q(x_s | x0 = x0_hat))
    at s = 0: return x0_hat                             (line 7: the sample; no noise is added, also on
                                                         VE/EDM paths, where sigma_0 = sigma_min > 0)

Written for the course's path x_t = alpha_t x0 + sigma_t eps. (On the VE path of the paper,
alpha = 1 and the paper adds noise of standard deviation sqrt(tau^2 - epsilon^2) so that x_s has
exactly the noise level tau on top of f's output, which is itself at noise level epsilon; on a VP
path with t_min ~ 1e-3 the difference is below float32 resolution, and we use the forward process
as it is.) With the one loop of :func:`course_lib.samplers.sample`, the time list decides
everything: ``[t_max, 0]`` is one-step generation, ``[t_max, t_1, 0]`` two steps, and so on.

>>> import torch
>>> from course_lib.schedules import VPLinear
>>> from course_lib.consistency import ConsistencyModel
>>> from course_lib.samplers.loop import sample
>>> cm = ConsistencyModel(lambda x, t: torch.zeros_like(x), VPLinear(), sigma_data=1.0, t_min=1e-3)
>>> x = sample(cm, torch.randn(4, 2), torch.tensor([1.0, 0.5, 0.0]), consistency_step,
...            generator=torch.Generator().manual_seed(0))
>>> x.shape
torch.Size([4, 2])
"""

from __future__ import annotations

import torch

from .step import check_step, denoise, draw_noise

__all__ = ["consistency_step"]


def consistency_step(denoiser, x_t: torch.Tensor, t, s, *, state=None, generator: torch.Generator | None = None,
                     noise: torch.Tensor | None = None):
    r"""One step of multistep consistency sampling (Song et al. 2023, arXiv:2303.01469, Algorithm 1).

        x0_hat = f(x_t, t);   x_s = alpha_s x0_hat + sigma_s z   (z ~ N(0, I) fresh);   at s = 0: x0_hat.

    Unlike an ODE or SDE step, x_s does not depend on x_t except through x0_hat: every step jumps
    to the end of the trajectory and re-noises, so the steps' errors do not accumulate as an ODE
    solver's do. Introduced in chapter 10.

    Args:
        denoiser: the consistency function f (a :class:`~course_lib.consistency.ConsistencyModel`;
            any course denoiser works too: then each step is "denoise fully, re-noise").
        x_t: (B, ...) the state at time t.
        t, s: 0-d times with 0 <= s < t <= 1.
        state: passed through (nothing is remembered between steps).
        generator: the source of z.
        noise: optional explicit standard normal z of x_t's shape.
    Returns:
        (x_s (B, ...), x0_hat = f(x_t, t) (B, ...), state).
    """
    t, s = check_step(denoiser, x_t, t, s)
    x0_hat = denoise(denoiser, x_t, t)  # (B, ...) Algorithm 1: f(x_t, t)
    if s.t == 0.0:
        if noise is not None:
            draw_noise(x_t, generator, noise)  # checked all the same
        return x0_hat, x0_hat, state  # the last step returns f's output itself (Algorithm 1, line 7)
    x_s = s.alpha * x0_hat + s.sigma * draw_noise(x_t, generator, noise)  # (B, ...) line 5: re-noise to time s
    return x_s, x0_hat, state
