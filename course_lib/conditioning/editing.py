r"""Editing a picture with a trained diffusion model: change the start or the denoiser, never the loop (chapter 16).

* **SDEdit** (Meng et al. 2022, arXiv:2108.01073, Sec. 3): noise a guide y (a crude drawing, a damaged
  image) to a strength t0, x_{t0} = alpha_{t0} y + sigma_{t0} eps, and sample from t0 down to 0 with any
  sampler. :func:`sdedit_start` builds the start, :func:`grid_from` cuts a grid at t0.
* **Inpainting** by replacement: :class:`Inpainting` wraps a denoiser so that its estimate x0_hat equals
  the known image on the pixels to keep,

      D'(x_t, t) = keep * y + (1 - keep) * D(x_t, t).

  With an ancestral step the kept pixels of x_s are then drawn from q(x_s | x_t, x0 = y), whose
  marginal is q(x_s | x0 = y): the known region is the forward-noised known image at every time, as in
  the replacement method (Song et al. 2021, arXiv:2011.13456, App. I.2; Lugmayr et al. 2022,
  arXiv:2201.09865, eq. 8), written in x0-space so that the sampling loop is unchanged. At t = 0 the
  kept pixels are y up to float rounding; :meth:`Inpainting.compose` pastes y back exactly, as
  RePaint's last step does.
* **RePaint's resampling** (Lugmayr et al. 2022, Sec. 4.2, Algorithm 1): :func:`repaint_step` is a step
  function. Over one interval t -> s it runs ``jump_length`` inner steps down to s, then noises back
  from s to t in one jump, x_t = (alpha_t / alpha_s) x_s + sqrt(sigma_t^2 - (alpha_t / alpha_s)^2 sigma_s^2) z,
  and descends again, ``resample`` times in all. NFE per interval: resample * jump_length.
* **Mask convention.** ``keep`` is 1 on the pixels to keep, as RePaint's mask m (eq. 8: m on the known
  pixels). diffusers' inpainting pipelines take the opposite, ``mask_image`` white (1) where the image is
  *repainted*: keep = 1 - mask_image (:func:`keep_from_repaint_mask`).
* **Null-text inversion** (Mokady et al. 2023, arXiv:2211.09794, Algorithm 1): DDIM inversion of an
  image under a caption is accurate without guidance and breaks with it, because classifier-free guidance
  amplifies the inversion's small per-step error. :func:`null_text_optimisation` learns, for each time of
  the grid, an unconditional context that makes the *guided* DDIM step land on the unguided inversion's
  trajectory; :class:`NullTextGuidance` samples with those contexts (then with another caption: an edit).

>>> import torch
>>> from course_lib.schedules import get_schedule
>>> schedule = get_schedule("ddpm_linear")
>>> guide = torch.ones(2, 1, 4, 4)
>>> x = sdedit_start(schedule, guide, 0.0, generator=torch.Generator().manual_seed(0))  # t0 = 0: the guide itself
>>> bool(torch.equal(x, guide))
True
>>> grid_from(torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64), 0.6).tolist()
[0.6, 0.5, 0.25, 0.0]

Introduced in chapter 16.
"""

from __future__ import annotations

import math

import torch

from course_lib.schedules import PathPoint

__all__ = ["Inpainting", "NullTextGuidance", "grid_from", "keep_from_repaint_mask", "null_text_optimisation",
           "repaint_step", "sdedit_start"]


def _number(name: str, value, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not low <= value <= high:
        raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}")
    return float(value)


def sdedit_start(schedule, guide: torch.Tensor, t0: float, *, generator: torch.Generator | None = None,
                 noise: torch.Tensor | None = None) -> torch.Tensor:
    r"""SDEdit's start x_{t0} = alpha_{t0} guide + sigma_{t0} eps (eps from ``noise`` or ``generator``).

    t0 is the *strength*: 0 returns the guide, 1 pure noise (the guide forgotten on VP paths).
    """
    t0 = _number("t0", t0, 0.0, 1.0)
    if not isinstance(guide, torch.Tensor) or guide.ndim < 2:
        raise ValueError(f"guide must be a tensor (B, ...), got {getattr(guide, 'shape', type(guide).__name__)}")
    if noise is None:
        noise = torch.randn(guide.shape, generator=generator, device=guide.device, dtype=guide.dtype)
    elif noise.shape != guide.shape:
        raise ValueError(f"noise must have the guide's shape {tuple(guide.shape)}, got {tuple(noise.shape)}")
    if t0 == 0.0:
        return guide.clone()
    point = schedule.points(torch.tensor([t0], dtype=torch.float64))[0]
    return point.alpha * guide + point.sigma * noise


def grid_from(times: torch.Tensor, t0: float) -> torch.Tensor:
    """The part of a decreasing grid below ``t0``, starting at t0 itself: [t0, times < t0 ...]."""
    t0 = _number("t0", t0, 0.0, 1.0)
    if not isinstance(times, torch.Tensor) or times.ndim != 1 or len(times) < 2 or not bool((times[1:] < times[:-1]).all()):
        raise ValueError("times must be a strictly decreasing 1-D grid")
    below = times[times < t0]
    if len(below) == 0:
        raise ValueError(f"no time of the grid lies below t0={t0}; the grid ends at {float(times[-1])}")
    return torch.cat([torch.tensor([t0], dtype=times.dtype, device=times.device), below])


def keep_from_repaint_mask(mask_image: torch.Tensor) -> torch.Tensor:
    """diffusers' inpainting convention (1 = repaint) to the course's and RePaint's (1 = keep)."""
    if not isinstance(mask_image, torch.Tensor) or not bool(((mask_image == 0) | (mask_image == 1)).all()):
        raise ValueError("mask_image must be a tensor of 0s and 1s (1 where the image is repainted)")
    return 1.0 - mask_image


class Inpainting:
    r"""A denoiser whose x0_hat is the known image ``known`` wherever ``keep`` is 1 (see the module docstring).

    Args:
        denoiser: the model's denoiser (any wrapper: guidance composes).
        known: y, the image whose kept pixels are fixed, (B, C, H, W) (or (1, ...) for every sample).
        keep: 1 on the pixels to keep, 0 on those to fill; (B or 1, 1 or C, H, W), values in {0, 1}.
    """

    def __init__(self, denoiser, known: torch.Tensor, keep: torch.Tensor) -> None:
        if getattr(denoiser, "schedule", None) is None or not callable(denoiser):
            raise ValueError("Inpainting wraps a denoiser with a schedule (a Denoiser or a guidance wrapper)")
        if not isinstance(known, torch.Tensor) or not isinstance(keep, torch.Tensor) or known.ndim != keep.ndim:
            raise ValueError(f"known and keep must be tensors of the same rank, got {getattr(known, 'shape', known)} and "
                             f"{getattr(keep, 'shape', keep)}")
        if not bool(((keep == 0) | (keep == 1)).all()):
            raise ValueError("keep must hold only 0 (fill) and 1 (keep); the course's convention is RePaint's, "
                             "1 = keep (diffusers' mask_image is the opposite: use keep_from_repaint_mask)")
        try:
            torch.broadcast_shapes(known.shape, keep.shape)
        except RuntimeError:
            raise ValueError(f"keep {tuple(keep.shape)} does not broadcast against known {tuple(known.shape)}") from None
        self.denoiser, self.schedule = denoiser, denoiser.schedule
        self.known, self.keep = known, keep.to(known.dtype)

    def _check(self, x_t: torch.Tensor) -> None:
        if x_t.shape[1:] != self.known.shape[1:] or self.known.shape[0] not in (1, x_t.shape[0]):
            raise ValueError(f"x_t {tuple(x_t.shape)} does not match the known image {tuple(self.known.shape)}")

    def _paste(self, x0_hat: torch.Tensor) -> torch.Tensor:
        keep = self.keep.to(x0_hat.device)
        return keep * self.known.to(x0_hat.device) + (1 - keep) * x0_hat

    def prepare(self, points, dtype) -> None:
        prepare = getattr(self.denoiser, "prepare", None)
        if prepare is not None:
            prepare(points, dtype)

    def at_point(self, x_t: torch.Tensor, point: PathPoint) -> torch.Tensor:
        self._check(x_t)
        at_point = getattr(self.denoiser, "at_point", None)
        if at_point is not None:
            return self._paste(at_point(x_t, point))
        t = torch.full((x_t.shape[0],), point.t, device=x_t.device,
                       dtype=torch.float64 if x_t.dtype == torch.float64 else torch.float32)
        return self._paste(self.denoiser(x_t, t))

    def __call__(self, x_t: torch.Tensor, t) -> torch.Tensor:
        self._check(x_t)
        return self._paste(self.denoiser(x_t, t))

    def compose(self, x: torch.Tensor) -> torch.Tensor:
        """The final image: the known pixels pasted back exactly, the filled ones from ``x``."""
        return self._paste(x)


def repaint_step(denoiser, x_t, t, s, *, inner=None, jump_length: int = 1, resample: int = 1, state=None,
                 generator=None, noise=None, **inner_kwargs):
    r"""RePaint's resampling as one step t -> s (Lugmayr et al. 2022, Algorithm 1; see the module docstring).

    ``jump_length`` inner steps (``inner``, the ancestral :func:`~course_lib.samplers.ddpm.ddpm_step` by
    default) on a uniform sub-grid of [s, t], then a jump back to t with fresh forward noise, ``resample``
    times; the last descent is returned. resample = jump_length = 1 is one inner step. Returns
    (x_s, x0_hat, state).
    """
    from course_lib.samplers.ddpm import ddpm_step
    from course_lib.samplers.step import check_step, draw_noise

    inner = ddpm_step if inner is None else inner
    for name, value in (("jump_length", jump_length), ("resample", resample)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if noise is not None:
        raise ValueError("repaint_step draws its noise from generator (it takes a variable number of draws)")
    t, s = check_step(denoiser, x_t, t, s)
    sub = denoiser.schedule.points(torch.linspace(t.t, s.t, jump_length + 1, dtype=torch.float64))
    sub = (t, *sub[1:-1], s)
    if s.alpha == 0.0:
        raise ValueError(f"repaint_step cannot noise back from s={s.t}, where alpha_s = 0 (pure noise)")
    ratio = t.alpha / s.alpha
    jump_std = max(t.sigma ** 2 - ratio ** 2 * s.sigma ** 2, 0.0) ** 0.5
    x, x0_hat = x_t, None
    for r in range(resample):
        if r > 0:  # noise back from s to t: q(x_t | x_s)
            x = ratio * x + jump_std * draw_noise(x, generator)
        for a, b in zip(sub[:-1], sub[1:]):
            x, x0_hat, state = inner(denoiser, x, a, b, state=None, generator=generator, **inner_kwargs)
    return x, x0_hat, state


class NullTextGuidance:
    r"""Classifier-free guidance with a caption and one *optimised* unconditional context per grid time.

    D(x_t) = D(x_t, null_t) + s (D(x_t, c) - D(x_t, null_t)); ``nulls`` maps each time of the grid (a float,
    as in :meth:`Schedule.points`) to its context (B, L, D), from :func:`null_text_optimisation`. Other
    times raise: the contexts were learnt for this grid only.
    """

    def __init__(self, denoiser, context: torch.Tensor, nulls: dict, guidance_scale: float) -> None:
        if getattr(denoiser, "schedule", None) is None:
            raise ValueError("NullTextGuidance wraps a Denoiser of a caption-conditional network")
        if not isinstance(nulls, dict) or not nulls:
            raise ValueError("nulls must be a non-empty dict {time: context}")
        self.denoiser, self.schedule = denoiser, denoiser.schedule
        self.context, self.nulls = context, nulls
        self.guidance_scale = float(guidance_scale)

    def _null(self, t: float) -> torch.Tensor:
        for key, value in self.nulls.items():
            if abs(key - t) < 1e-9:
                return value
        raise ValueError(f"no optimised null context for t={t}; it was learnt for the times {sorted(self.nulls)}")

    def at_point(self, x_t: torch.Tensor, point: PathPoint) -> torch.Tensor:
        t = torch.full((x_t.shape[0],), point.t, device=x_t.device)
        null = self._null(point.t).to(x_t.device)
        both = self.denoiser(torch.cat([x_t, x_t]), t.repeat(2), context=torch.cat([self.context.to(x_t.device), null]))
        cond, uncond = both.chunk(2)
        return uncond + self.guidance_scale * (cond - uncond)

    def __call__(self, x_t: torch.Tensor, t) -> torch.Tensor:
        value = float(t) if not isinstance(t, torch.Tensor) or t.dim() == 0 else float(t[0])
        return self.at_point(x_t, self.schedule.points(torch.tensor([value], dtype=torch.float64))[0])


def null_text_optimisation(denoiser, z0: torch.Tensor, context: torch.Tensor, null: torch.Tensor,
                           times: torch.Tensor, guidance_scale: float, *, iterations: int = 10,
                           lr: float = 1e-2) -> tuple[dict, torch.Tensor]:
    r"""Null-text inversion (Mokady et al. 2023, Algorithm 1) on a decreasing grid ``times``.

    1. Pivot: DDIM-invert z0 under ``context`` *without* guidance (scale 1) on the reversed grid: z*_{t_K}, ..., z*_{t_0}.
    2. From z_bar = z*_{t_K}, for each step t_i -> t_{i+1} of ``times``: start the null context from the previous
       one, take ``iterations`` Adam steps on || z*_{t_{i+1}} - DDIM_step(z_bar, c, null, s) ||^2, then step
       z_bar with the optimised null.

    Returns ({t_i: optimised null context}, z*_{t_K}: the start for sampling). Cost: K (1 + 2 iterations)
    network calls. ``null`` is the empty caption's tokens (B, L, D).
    """
    from course_lib.samplers.ddim import ddim_step
    from course_lib.samplers.inversion import ddim_invert

    if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 0:
        raise ValueError(f"iterations must be an int >= 0, got {iterations!r}")
    pivots = [z0]
    ddim_invert(_Bound(denoiser, context), z0, times.flip(0), callback=lambda info: pivots.append(info.x))
    pivots = pivots[::-1]  # pivots[i] at times[i]
    points = denoiser.schedule.points(times)
    z_bar, nulls = pivots[0], {}
    current = null.detach().clone()
    for i in range(len(times) - 1):
        t, s = points[i], points[i + 1]
        current = current.detach().clone().requires_grad_(True)
        optimiser = torch.optim.Adam([current], lr=lr)
        for _ in range(iterations):
            guided = NullTextGuidance(denoiser, context, {t.t: current}, guidance_scale)
            z_next, _, _ = ddim_step(guided, z_bar, t, s)
            loss = (z_next - pivots[i + 1]).pow(2).mean()
            (current.grad,) = torch.autograd.grad(loss, current)   # only the null context learns
            optimiser.step()
        current = current.detach()
        nulls[t.t] = current.clone()
        with torch.no_grad():
            z_bar, _, _ = ddim_step(NullTextGuidance(denoiser, context, {t.t: current}, guidance_scale), z_bar, t, s)
    return nulls, pivots[0]


class _Bound:
    """A denoiser with a context bound (the conditional model, no guidance), for the pivot inversion."""

    def __init__(self, denoiser, context):
        self.denoiser, self.schedule, self.context = denoiser, denoiser.schedule, context

    def __call__(self, x_t, t):
        return self.denoiser(x_t, t, context=self.context)
