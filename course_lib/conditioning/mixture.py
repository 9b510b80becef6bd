r"""Exact denoisers of 1-D densities, where guided sampling can be checked against its target (chapter 12).

:class:`GaussianMixture1D`: K Gaussian components N(mu_k, s_k^2) with weights pi_k, one class per
component. On any schedule x_t = alpha_t x0 + sigma_t eps, every quantity is closed-form:

    p_t(x | y = k) = N(x; alpha_t mu_k, alpha_t^2 s_k^2 + sigma_t^2),   p_t(x) = sum_k pi_k p_t(x | k),
    p_t(y = k | x) = pi_k p_t(x | k) / p_t(x),
    E[x0 | x_t, y = k] = mu_k + alpha_t s_k^2 / (alpha_t^2 s_k^2 + sigma_t^2) (x_t - alpha_t mu_k),

and E[x0 | x_t] is the responsibility-weighted sum. So the conditional and unconditional branches of
classifier-free guidance, and the noisy classifier of classifier guidance, are exact here.

:class:`GridDenoiser`: the exact E[x0 | x_t] of any 1-D density given on a fine grid (quadrature of
Bayes' rule), e.g. the tilted density p(x) p(y | x)^gamma that a guided score points at: sampling
with it shows what an exact sampler of that density lands on.

>>> mix = GaussianMixture1D([-1.0, 1.0], [0.5, 0.5], [0.5, 0.5], schedule=get_schedule("ddpm_linear"))
>>> x_t = torch.zeros(1, 1, dtype=torch.float64)
>>> mix(x_t, torch.tensor([0.5], dtype=torch.float64)).item()  # symmetric: E[x0 | x_t = 0] = 0
0.0

Introduced in chapter 12.
"""

from __future__ import annotations

import math

import torch

from course_lib.schedules import PathPoint, Schedule, get_schedule  # noqa: F401  (get_schedule: the doctest)

__all__ = ["GaussianMixture1D", "GridDenoiser"]

F64 = torch.float64


class _Exact1D:
    """Shared: the schedule, t (scalar, (B,) or a PathPoint) to alpha_t, sigma_t of shape (B, 1)."""

    schedule: Schedule

    def _alpha_sigma(self, x_t: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(x_t, torch.Tensor) or x_t.ndim != 2 or x_t.shape[1] != 1:
            raise ValueError(f"x_t must have shape (B, 1) (1-D data), got {getattr(x_t, 'shape', type(x_t).__name__)}")
        if isinstance(t, PathPoint):
            t = torch.tensor(t.t, dtype=F64)
        t = torch.as_tensor(t, dtype=F64)
        if t.dim() == 0:
            t = t.expand(x_t.shape[0])
        if t.shape != (x_t.shape[0],):
            raise ValueError(f"t must be a scalar or have shape ({x_t.shape[0]},), got {tuple(t.shape)}")
        return self.schedule.alpha(t)[:, None], self.schedule.sigma(t)[:, None]  # (B, 1) each

    def at_point(self, x_t: torch.Tensor, point: PathPoint, **cond) -> torch.Tensor:
        return self(x_t, point, **cond)


class GaussianMixture1D(_Exact1D):
    r"""A 1-D Gaussian mixture with one class per component, and its exact (class-conditional) denoiser.

    Args:
        means, stds, weights: mu_k, s_k > 0, pi_k > 0 (summing to 1), one entry per class.
        schedule: the path x_t = alpha_t x0 + sigma_t eps.

    Calling it as a denoiser, ``mix(x_t (B, 1), t, class_labels=None)``: labels (B,) in [0, K] pick
    E[x0 | x_t, y] (label K, the "null" label, and None give E[x0 | x_t]), as a course network
    trained with label dropout does; ``num_classes`` = K, so the guidance wrappers accept it.
    """

    def __init__(self, means, stds, weights, *, schedule: Schedule) -> None:
        self.means, self.stds, self.weights = (torch.as_tensor(v, dtype=F64).reshape(-1) for v in (means, stds, weights))
        k = self.means.numel()
        if k < 1 or self.stds.numel() != k or self.weights.numel() != k:
            raise ValueError(f"means, stds and weights must have one entry per class, got sizes "
                             f"{self.means.numel()}, {self.stds.numel()}, {self.weights.numel()}")
        if not bool((self.stds > 0).all()) or not bool((self.weights > 0).all()):
            raise ValueError("stds and weights must be > 0")
        if abs(float(self.weights.sum()) - 1.0) > 1e-9:
            raise ValueError(f"weights must sum to 1, got {float(self.weights.sum())}")
        if not isinstance(schedule, Schedule):
            raise ValueError(f"schedule must be a course_lib Schedule, got {type(schedule).__name__}")
        self.schedule, self.num_classes, self.null_label, self.x0_range = schedule, k, k, None
        self.net = self  # the guidance wrappers read net.num_classes

    def _component_terms(self, x_t, t):
        alpha_t, sigma_t = self._alpha_sigma(x_t, t)
        var = alpha_t**2 * self.stds**2 + sigma_t**2  # (B, K)
        log_pdf = -0.5 * torch.log(2 * math.pi * var) - 0.5 * (x_t.to(F64) - alpha_t * self.means) ** 2 / var
        post_mean = self.means + alpha_t * self.stds**2 / var * (x_t.to(F64) - alpha_t * self.means)  # (B, K)
        return log_pdf, post_mean

    def class_log_posterior(self, x_t: torch.Tensor, t) -> torch.Tensor:
        """log p_t(y = k | x_t), shape (B, K): the exact noisy classifier."""
        log_pdf, _ = self._component_terms(x_t, t)
        return torch.log_softmax(torch.log(self.weights) + log_pdf, dim=1)

    def log_prob(self, x: torch.Tensor, t=0.0, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """log p_t(x) (or log p_t(x | y) for labels < K), shape (B,)."""
        log_pdf, _ = self._component_terms(x, t)
        log_joint = torch.log(self.weights) + log_pdf  # (B, K)
        total = torch.logsumexp(log_joint, dim=1)
        if class_labels is None:
            return total
        labels = self._labels(class_labels, x.shape[0])
        own = log_pdf.gather(1, labels.clamp(max=self.num_classes - 1)[:, None])[:, 0]
        return torch.where(labels == self.num_classes, total, own)

    def _labels(self, class_labels, batch: int) -> torch.Tensor:
        if not isinstance(class_labels, torch.Tensor) or class_labels.shape != (batch,):
            raise ValueError(f"class_labels must have shape ({batch},), got {getattr(class_labels, 'shape', class_labels)!r}")
        if class_labels.dtype.is_floating_point or class_labels.dtype == torch.bool:
            raise ValueError(f"class_labels must be an integer tensor, got dtype {class_labels.dtype}")
        if int(class_labels.min()) < 0 or int(class_labels.max()) > self.num_classes:
            raise ValueError(f"class_labels must lie in [0, {self.num_classes}] ({self.num_classes} is the null label), "
                             f"got values in [{int(class_labels.min())}, {int(class_labels.max())}]")
        return class_labels.long()

    def __call__(self, x_t: torch.Tensor, t, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """E[x0 | x_t, y] (or E[x0 | x_t] for the null label / None), shape (B, 1), in x_t's dtype."""
        log_pdf, post_mean = self._component_terms(x_t, t)
        resp = torch.softmax(torch.log(self.weights) + log_pdf, dim=1)  # (B, K) p_t(k | x_t)
        uncond = (resp * post_mean).sum(1)
        if class_labels is None:
            return uncond[:, None].to(x_t.dtype)
        labels = self._labels(class_labels, x_t.shape[0])
        own = post_mean.gather(1, labels.clamp(max=self.num_classes - 1)[:, None])[:, 0]
        return torch.where(labels == self.num_classes, uncond, own)[:, None].to(x_t.dtype)

    def sample(self, n: int, *, class_label: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact samples of p(x) (or of p(x | y = class_label)), shape (n, 1), float64."""
        if class_label is None:
            k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        else:
            if not 0 <= class_label < self.num_classes:
                raise ValueError(f"class_label must lie in [0, {self.num_classes - 1}], got {class_label!r}")
            k = torch.full((n,), class_label, dtype=torch.long)
        return (self.means[k] + self.stds[k] * torch.randn(n, generator=generator, dtype=F64))[:, None]


class GridDenoiser(_Exact1D):
    r"""The exact denoiser E[x0 | x_t] of a 1-D density known on a uniform grid (Bayes' rule by quadrature).

    E[x0 | x_t] = sum_i x_i p(x_i) N(x_t; alpha_t x_i, sigma_t^2) / sum_i p(x_i) N(x_t; alpha_t x_i, sigma_t^2).
    Exact up to the grid's resolution while sigma_t is well above the grid spacing times alpha_t; at
    sigma_t = 0 it returns x_t / alpha_t (the data itself).

    Args:
        grid: (M,) increasing, uniformly spaced points covering the density's support.
        density: (M,) non-negative values (unnormalised is fine).
        schedule: the path.
    """

    def __init__(self, grid: torch.Tensor, density: torch.Tensor, *, schedule: Schedule) -> None:
        grid, density = torch.as_tensor(grid, dtype=F64), torch.as_tensor(density, dtype=F64)
        if grid.ndim != 1 or density.shape != grid.shape or grid.numel() < 3:
            raise ValueError(f"grid and density must be 1-D of the same length >= 3, got {tuple(grid.shape)} "
                             f"and {tuple(density.shape)}")
        if not bool((grid[1:] > grid[:-1]).all()):
            raise ValueError("grid must be increasing")
        if not bool((density >= 0).all()) or not float(density.sum()) > 0:
            raise ValueError("density must be non-negative and not all zero")
        if not isinstance(schedule, Schedule):
            raise ValueError(f"schedule must be a course_lib Schedule, got {type(schedule).__name__}")
        self.grid, self.log_density = grid, torch.log(density)  # log 0 = -inf: zero weight
        self.schedule, self.x0_range = schedule, None

    def __call__(self, x_t: torch.Tensor, t) -> torch.Tensor:
        alpha_t, sigma_t = self._alpha_sigma(x_t, t)
        x = x_t.to(F64)
        out = torch.empty_like(x)
        zero = (sigma_t == 0)[:, 0]
        if bool(zero.any()):
            out[zero] = x[zero] / alpha_t[zero]
        keep = ~zero
        if bool(keep.any()):
            a, s = alpha_t[keep], sigma_t[keep]
            log_w = self.log_density - 0.5 * (x[keep] - a * self.grid) ** 2 / s**2  # (b, M)
            out[keep] = (torch.softmax(log_w, dim=1) * self.grid).sum(1, keepdim=True)
        return out.to(x_t.dtype)
