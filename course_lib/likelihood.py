r"""Likelihoods of a diffusion model: the variational bound of DDPM and the exact ODE likelihood.

Two ways to put a number in nats (or bits per dimension) on how well a model explains data:

* **The variational bound** (chapter 04). For DDPM's discrete chain x_0 -> x_1 -> ... -> x_N
  (Sohl-Dickstein et al. 2015, arXiv:1503.03585; Ho et al. 2020, arXiv:2006.11239, eq. 5),

  .. math::  -\log p(x_0) \le
             \underbrace{\mathrm{KL}(q(x_N|x_0)\,\|\,p(x_N))}_{L_T}
             + \sum_{n=2}^{N} \underbrace{\mathbb E_q\,\mathrm{KL}(q(x_{n-1}|x_n,x_0)\,\|\,p(x_{n-1}|x_n))}_{L_{n-1}}
             \underbrace{- \mathbb E_q \log p(x_0|x_1)}_{L_0}.

  :func:`vlb_terms` computes every term per example with the closed-form Gaussian KL
  (:func:`gaussian_kl`) and the discretized Gaussian decoder of Ho et al. 2020, eq. 13
  (:func:`discretized_gaussian_log_likelihood`).

* **The exact likelihood of the probability-flow ODE** (chapter 06). The ODE
  dx/dt = v(x, t) carries p_0 to p_1 deterministically, so the instantaneous change of
  variables (Chen et al. 2018, "Neural ODEs", arXiv:1806.07366, Theorem 1)

  .. math::  \frac{d}{dt}\log p_t(x_t) = -\nabla\cdot v(x_t, t)
             \;\Rightarrow\; \log p_0(x_0) = \log p_1(x_1) + \int_0^1 \nabla\cdot v(x_t, t)\,dt

  gives log p(x_0) (Song et al. 2021, arXiv:2011.13456, App. D.2). :func:`ode_log_likelihood`
  integrates x and the divergence together; the divergence is exact (one backward pass per
  dimension, :func:`divergence`) in low dimension and Hutchinson's estimate
  E_z[z^T (dv/dx) z] otherwise (Grathwohl et al. 2019, "FFJORD", arXiv:1810.01367, eq. 7).

Bits per dimension: nats / (D ln 2), D the number of dimensions of one example. For data with
L levels per dimension a model that knows nothing (uniform over the levels) scores log2(L)
bits/dim: log2(17) = 4.09 for the course's digits, 8 for 8-bit images.

>>> import torch
>>> kl = gaussian_kl(torch.tensor(0.0), torch.tensor(1.0), torch.tensor(1.0), torch.tensor(1.0))
>>> float(kl)   # (mu1 - mu2)^2 / (2 var2)
0.5
>>> levels = torch.linspace(-1, 1, 17)[None, :]                         # every level once, (1, 17)
>>> log_p = discretized_gaussian_log_likelihood(levels, torch.zeros(1, 17), torch.tensor(0.3), 17)
>>> round(float(log_p.exp().sum()), 6)                                 # the bin masses sum to 1
1.0

Introduced in chapter 04 (variational bound) and chapter 06 (ODE likelihood).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from .samplers.ode import pf_ode_velocity
from .schedules import DDPMTable, DiscreteSchedule

__all__ = [
    "gaussian_kl",
    "discretized_gaussian_log_likelihood",
    "vlb_terms",
    "divergence",
    "hutchinson_probes",
    "ode_log_likelihood",
]

LN2 = math.log(2.0)


# ------------------------------------------------------------------------------------------
# Closed-form pieces
# ------------------------------------------------------------------------------------------
def gaussian_kl(mu1: torch.Tensor, var1: torch.Tensor, mu2: torch.Tensor, var2: torch.Tensor) -> torch.Tensor:
    r"""KL(N(mu1, var1) || N(mu2, var2)) elementwise (one dimension of a diagonal Gaussian).

    .. math::  \mathrm{KL} = \tfrac12\Big(\log\frac{v_2}{v_1} + \frac{v_1 + (\mu_1-\mu_2)^2}{v_2} - 1\Big)

    (Kingma & Welling 2014, arXiv:1312.6114, App. B; the KL terms of Ho et al. 2020, eq. 5).
    The same formula is derived symbolically by :func:`course_lib.derivations.gaussian_kl`; for a
    diagonal Gaussian in D dimensions sum the result over the dimensions.

    Args:
        mu1, var1: mean and variance of the first Gaussian (tensors or numbers, broadcastable).
        mu2, var2: mean and variance of the second. Variances must be > 0.
    Returns:
        The KL in nats, elementwise, with the broadcast shape.

    Introduced in chapter 04.
    """
    mu1, var1, mu2, var2 = (torch.as_tensor(v) for v in (mu1, var1, mu2, var2))
    for name, var in (("var1", var1), ("var2", var2)):
        if not bool((var > 0).all()):
            raise ValueError(f"{name} must be a positive variance, got minimum {float(var.min()):.4g}")
    return 0.5 * (torch.log(var2) - torch.log(var1) + (var1 + (mu1 - mu2) ** 2) / var2 - 1.0)


def _check_levels(data_bins) -> int:
    if isinstance(data_bins, bool) or not isinstance(data_bins, int) or data_bins < 2:
        raise ValueError(
            f"data_bins must be the number of levels L >= 2 of the data on [-1, 1] (17 for digits, 256 "
            f"for 8-bit images) or None for continuous data, got {data_bins!r}"
        )
    return data_bins


def _log_mass(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """log(Phi(upper) - Phi(lower)) for lower < upper, stable in both tails (lower may be -inf,
    upper +inf). Right of 0 use the mirror image Phi(-lower) - Phi(-upper)."""
    right = lower > 0
    a = torch.where(right, -upper, lower)
    b = torch.where(right, -lower, upper)  # now a < b and b is not deep in the right tail
    log_b = torch.special.log_ndtr(b)
    log_a = torch.special.log_ndtr(a)
    return log_b + torch.log1p(-torch.exp(log_a - log_b))


def discretized_gaussian_log_likelihood(x0: torch.Tensor, mean: torch.Tensor, var, data_bins: int) -> torch.Tensor:
    r"""log p(x0) per dimension for DDPM's discretized Gaussian decoder (Ho et al. 2020, eq. 13).

    The data take L evenly spaced levels on [-1, 1] (bin width w = 2 / (L - 1)); the decoder
    gives each level the mass of N(mean, var) over its bin,

    .. math::  p(x_0 \mid x_1) = \prod_i \int_{\delta_-(x_0^i)}^{\delta_+(x_0^i)} \mathcal N(x; \mu^i, \sigma_1^2)\,dx,
               \quad \delta_\pm(x) = x \pm w/2, \text{ with } \delta_-(-1) = -\infty,\ \delta_+(1) = +\infty,

    so the masses of the L levels sum to 1. Computed in float64 with log Phi, stable in the tails.

    Args:
        x0: (B, ...) data on the grid of L levels (checked, within 1e-4).
        mean: (B, ...) the decoder's mean mu (the model's x0_hat at n = 1).
        var: the decoder's variance sigma_1^2 > 0: a number, a 0-d tensor or (B, ...).
        data_bins: L, the number of levels (17 for the course's digits, 256 for 8-bit images).
    Returns:
        (B, ...) log-probabilities in nats (sum over the dimensions for one example).

    Introduced in chapter 04.
    """
    levels = _check_levels(data_bins)
    if not isinstance(x0, torch.Tensor) or not isinstance(mean, torch.Tensor) or x0.shape != mean.shape:
        raise ValueError(
            f"x0 and mean must be tensors of the same shape, got {getattr(x0, 'shape', type(x0).__name__)} "
            f"and {getattr(mean, 'shape', type(mean).__name__)}"
        )
    x = x0.detach().to(torch.float64)
    var = torch.as_tensor(var, dtype=torch.float64, device=x.device)
    if not bool((var > 0).all()):
        raise ValueError(f"var must be a positive variance, got minimum {float(var.min()):.4g}")
    if x.numel() and (bool((x < -1 - 1e-4).any()) or bool((x > 1 + 1e-4).any())):
        raise ValueError(f"x0 must lie in [-1, 1], got values in [{float(x.min()):.4g}, {float(x.max()):.4g}]")
    index = (x + 1) * (levels - 1) / 2  # 0 .. L-1 on the grid
    if x.numel() and float((index - torch.round(index)).abs().max()) > 1e-4 * (levels - 1):
        raise ValueError(
            f"x0 must take the {levels} levels -1 + 2 j / {levels - 1} (j = 0..{levels - 1}) of data_bins={levels}; "
            "pass data_bins=None for continuous data"
        )
    index = torch.round(index)
    x = -1 + 2 * index / (levels - 1)  # exactly on the grid
    half_bin = 1.0 / (levels - 1)
    std = torch.sqrt(var)
    centred = x - mean.detach().to(torch.float64)
    lower = torch.where(index == 0, torch.full_like(x, -math.inf), (centred - half_bin) / std)
    upper = torch.where(index == levels - 1, torch.full_like(x, math.inf), (centred + half_bin) / std)
    return _log_mass(lower, upper)


def _gaussian_log_density(x: torch.Tensor, mean: torch.Tensor, var) -> torch.Tensor:
    """log N(x; mean, var) elementwise, float64."""
    var = torch.as_tensor(var, dtype=torch.float64, device=x.device)
    return -0.5 * (torch.log(2 * math.pi * var) + (x.to(torch.float64) - mean.to(torch.float64)) ** 2 / var)


# ------------------------------------------------------------------------------------------
# The variational bound of DDPM (chapter 04)
# ------------------------------------------------------------------------------------------
def _check_table_and_denoiser(denoiser, table) -> None:
    if not isinstance(table, DDPMTable):
        raise ValueError(f"table must be a course_lib DDPMTable, got {type(table).__name__}")
    if not callable(denoiser):
        raise ValueError(f"denoiser must be callable as D(x_t, t) -> x0_hat, got {type(denoiser).__name__}")
    schedule = getattr(denoiser, "schedule", None)
    if isinstance(schedule, DiscreteSchedule):
        other = schedule.table
        same = other.n_train_steps == table.n_train_steps and torch.allclose(
            other.alpha_bar, table.alpha_bar, rtol=1e-9, atol=0.0)
        if not same:
            raise ValueError(
                f"the denoiser was trained on {other!r} but the bound is asked for {table!r}; "
                "pass the table of the denoiser's schedule (denoiser.schedule.table)"
            )


def _check_x0(x0) -> None:
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point() or x0.dim() < 2:
        raise ValueError(
            "x0 must be a floating-point tensor of shape (B, ...) with a batch dimension, got "
            f"{tuple(x0.shape) if isinstance(x0, torch.Tensor) else type(x0).__name__}"
        )
    if x0.numel() and not bool(torch.isfinite(x0).all()):
        raise ValueError("x0 contains NaN or infinite values")


def _choose_n(n_values, N: int, generator) -> tuple[torch.Tensor, bool]:
    """The indices n in 2..N of the terms L_{n-1} to evaluate, and whether they are all of them once."""
    if n_values is None:
        return torch.arange(2, N + 1), True
    if isinstance(n_values, int) and not isinstance(n_values, bool):
        if not 1 <= n_values <= N - 1:
            raise ValueError(f"n_values as a count must lie in 1..N-1 = 1..{N - 1}, got {n_values}")
        # uniform draw without replacement: every n has the same chance (n_values / (N-1)) to be in it
        n = torch.randperm(N - 1, generator=generator)[:n_values] + 2
        n = torch.sort(n).values
    else:
        n = torch.as_tensor(n_values)
        if n.is_floating_point() or n.dim() != 1 or n.numel() == 0:
            raise ValueError(
                f"n_values must be None, a count, or a 1-D sequence of integers in 2..{N}, got {n_values!r}"
            )
        if bool((n < 2).any()) or bool((n > N).any()):
            raise ValueError(
                f"n_values must lie in 2..N = 2..{N} (L_T and L_0 are computed separately), got values in "
                f"[{int(n.min())}, {int(n.max())}]"
            )
        n = n.to(torch.long)
    exact = n.numel() == N - 1 and torch.equal(torch.sort(n).values, torch.arange(2, N + 1))
    return n, exact


def vlb_terms(denoiser, x0: torch.Tensor, table: DDPMTable, *, generator: torch.Generator | None = None,
              n_values: int | Sequence[int] | torch.Tensor | None = None, data_bins: int | None = 17,
              reverse_variance: str = "beta_tilde") -> dict:
    r"""The terms of DDPM's variational bound, per example (Ho et al. 2020, arXiv:2006.11239, eq. 5).

    .. math::  L = L_T + \sum_{n=2}^{N} L_{n-1} + L_0 \;\ge\; -\log p(x_0)

    * L_T = KL(q(x_N | x_0) || N(0, I)) with q(x_N | x_0) = N(sqrt(alpha_bar_N) x_0, (1 - alpha_bar_N) I)
      (eq. 4), in closed form.
    * L_{n-1} = KL(q(x_{n-1} | x_n, x_0) || p(x_{n-1} | x_n)), n = 2..N, at one draw
      x_n ~ q(x_n | x_0) per example and per n. q is the posterior N(mu_tilde(x_n, x_0), beta_tilde_n I)
      (eq. 6-7); the model is p = N(mu_tilde(x_n, x0_hat), sigma_n^2 I) with x0_hat = D(x_n, n/N): the
      model's mean is the posterior mean with x0_hat in place of x0 (eq. 7 with eq. 15). The variance
      is **sigma_n^2 = beta_tilde_n** by default (Ho et al. sec. 3.2; what ``ddpm_step`` samples with),
      so that L_{n-1} = c_n^2 |x0 - x0_hat|^2 / (2 beta_tilde_n) with c_n = sqrt(alpha_bar_{n-1}) beta_n
      / (1 - alpha_bar_n): the weighted x0-error the simple loss drops the weights of. With
      ``reverse_variance="beta"`` sigma_n^2 = beta_n (the other choice of sec. 3.2).
    * L_0 = -log p(x_0 | x_1), the discretized Gaussian decoder of eq. 13 around mu = x0_hat(x_1, 1/N)
      (= mu_tilde(x_1, x0_hat), since mu_tilde at n = 1 is x0 itself) with variance sigma_1^2 = beta_1
      for both choices (beta_tilde_1 = 0 would be a point mass). With ``data_bins=None`` (continuous
      data, e.g. the 2-D toys) L_0 = -log N(x_0; mu, beta_1 I), a density: the total is then a bound
      on the differential NLL and can be negative.

    Monte-Carlo over n: with ``n_values`` a count K, K distinct n are drawn uniformly from 2..N and
    the sum is estimated by (N - 1) * mean_k L_{n_k - 1} (unbiased: each n is drawn with probability
    K / (N - 1)); an explicit 1-D sequence of n is used as given with the same estimator. With
    ``n_values=None`` every n = 2..N is used and the sum is exact (each term still at one draw of x_n).

    Args:
        denoiser: D(x_t, t) -> x0_hat, called with x_n (B, ...) and t = n / N (B,); a
            :class:`~course_lib.parameterization.Denoiser` trained on ``table`` (checked when its
            schedule is a DiscreteSchedule).
        x0: (B, ...) data; with ``data_bins`` = L it must take the L levels -1 + 2 j / (L - 1).
        table: the :class:`~course_lib.schedules.DDPMTable` (N steps) of the chain.
        generator: the source of the draws of n (when a count) and of every x_n.
        n_values: None (all n = 2..N), a count K, or a 1-D sequence of n in 2..N.
        data_bins: L, the number of levels per dimension (17 for digits: pixel 0..16, bin width
            2/16), or None for continuous data.
        reverse_variance: "beta_tilde" (default) or "beta", the variance sigma_n^2 of p(x_{n-1} | x_n).

    Returns:
        A dict of float64 tensors: ``L_T`` (B,), ``L_0`` (B,), ``n`` (K,) the indices used,
        ``L_terms`` (B, K) the values L_{n-1} at those n, ``L_sum`` (B,) the (estimated) sum over
        n = 2..N, ``nats`` (B,) = L_T + L_sum + L_0, ``bits_per_dim`` (B,) = nats / (D ln 2), and
        ``exact`` (a bool: all n were used).

    >>> import torch
    >>> from course_lib.schedules import DDPMTable
    >>> table = DDPMTable.from_name("linear", 100)
    >>> x0 = torch.full((2, 1, 2, 2), 0.5)                  # a level of data_bins=17 (pixel 12)
    >>> oracle = lambda x_t, t: x0                           # a denoiser that knows x0
    >>> out = vlb_terms(oracle, x0, table, generator=torch.Generator().manual_seed(0))
    >>> float(out["L_sum"].abs().max()) < 1e-12             # a perfect x0_hat: every L_{n-1} is 0
    True

    Introduced in chapter 04.
    """
    _check_table_and_denoiser(denoiser, table)
    _check_x0(x0)
    if data_bins is not None:
        _check_levels(data_bins)
    if reverse_variance not in ("beta_tilde", "beta"):
        raise ValueError(f"reverse_variance must be 'beta_tilde' or 'beta', got {reverse_variance!r}")
    N = table.n_train_steps
    B, D = x0.shape[0], x0[0].numel()
    n, exact = _choose_n(n_values, N, generator)
    alpha_bar, betas = table.alpha_bar, table.betas  # (N,) float64, index n - 1
    x0_64 = x0.detach().to(torch.float64)

    def sum_dims(v: torch.Tensor) -> torch.Tensor:
        return v.reshape(B, -1).sum(dim=1)  # (B,)

    def noised(n_: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x_n ~ q(x_n | x0) (eq. 4) in x0's dtype, and x0_hat = D(x_n, n / N) in float64."""
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        ab = float(alpha_bar[n_ - 1])
        x_n = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps  # (B, ...)
        t = torch.full((B,), n_ / N, dtype=torch.float32, device=x0.device)
        with torch.no_grad():
            x0_hat = denoiser(x_n, t)
        if not isinstance(x0_hat, torch.Tensor) or x0_hat.shape != x0.shape:
            raise ValueError(f"the denoiser must return x0_hat of x0's shape {tuple(x0.shape)}, got "
                             f"{getattr(x0_hat, 'shape', type(x0_hat).__name__)}")
        return x_n.to(torch.float64), x0_hat.to(torch.float64)

    # L_T = KL(q(x_N | x0) || N(0, I))
    ab_N = alpha_bar[-1]
    L_T = sum_dims(gaussian_kl(ab_N.sqrt() * x0_64, 1 - ab_N, torch.zeros(()), torch.ones(())))

    # L_0 = -log p(x0 | x1): decoder around mu = x0_hat(x_1, 1/N) with variance beta_1
    _, x0_hat_1 = noised(1)
    if data_bins is None:
        L_0 = -sum_dims(_gaussian_log_density(x0_64, x0_hat_1, betas[0]))
    else:
        L_0 = -sum_dims(discretized_gaussian_log_likelihood(x0, x0_hat_1, betas[0], data_bins))

    # L_{n-1} = KL(q(x_{n-1} | x_n, x0) || p(x_{n-1} | x_n)), n = 2..N
    terms = []
    for n_ in n.tolist():
        ab, ab_prev, beta = alpha_bar[n_ - 1], alpha_bar[n_ - 2], betas[n_ - 1]
        c_x0 = ab_prev.sqrt() * beta / (1 - ab)  # eq. 7
        c_x = (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab)  # eq. 7
        beta_tilde = (1 - ab_prev) / (1 - ab) * beta  # eq. 7
        var_p = beta_tilde if reverse_variance == "beta_tilde" else beta
        x_n, x0_hat = noised(n_)
        mu_q = c_x * x_n + c_x0 * x0_64  # (B, ...)
        mu_p = c_x * x_n + c_x0 * x0_hat  # (B, ...)
        terms.append(sum_dims(gaussian_kl(mu_q, beta_tilde, mu_p, var_p)))
    L_terms = torch.stack(terms, dim=1)  # (B, K)
    L_sum = (N - 1) * L_terms.mean(dim=1)  # (B,), = the exact sum when n = 2..N
    nats = L_T + L_sum + L_0
    return {
        "L_T": L_T,
        "L_0": L_0,
        "n": n,
        "L_terms": L_terms,
        "L_sum": L_sum,
        "nats": nats,
        "bits_per_dim": nats / (D * LN2),
        "exact": bool(exact),
    }


# ------------------------------------------------------------------------------------------
# The exact likelihood of the probability-flow ODE (chapter 06)
# ------------------------------------------------------------------------------------------
PROBES = ("rademacher", "gaussian")


def hutchinson_probes(shape, n_probes: int = 1, kind: str = "rademacher", *,
                      generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64,
                      device=None) -> torch.Tensor:
    r"""Probe vectors z with E[z z^T] = I for Hutchinson's trace estimator tr(A) = E[z^T A z].

    ``rademacher``: entries +-1 with probability 1/2 (Hutchinson 1989; the lower-variance choice:
    Var = 2 sum_{i != j} A_ij^2); ``gaussian``: z ~ N(0, I) (Var = 2 |A|_F^2 for symmetric A).
    Grathwohl et al. 2019, FFJORD, arXiv:1810.01367, sec. 3.1.

    Args:
        shape: the shape (B, ...) of one state x.
        n_probes: how many independent probes per example.
        kind: "rademacher" or "gaussian".
    Returns:
        (n_probes, B, ...) probes.

    Introduced in chapter 06.
    """
    if kind not in PROBES:
        raise ValueError(f"probe kind must be one of {PROBES}, got {kind!r}")
    if isinstance(n_probes, bool) or not isinstance(n_probes, int) or n_probes < 1:
        raise ValueError(f"n_probes must be a positive integer, got {n_probes!r}")
    full = (n_probes, *tuple(shape))
    if kind == "gaussian":
        return torch.randn(full, generator=generator, dtype=dtype, device=device)
    bits = torch.randint(0, 2, full, generator=generator, device=device)
    return (2 * bits - 1).to(dtype)


def divergence(velocity_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *,
               probes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""v = f(x) and its divergence div f(x) = sum_i d f_i / d x_i per example.

    Exact (``probes=None``): one backward pass per dimension, d f_i/d x_i read off the gradient of
    sum_b f_i(x_b) (valid because examples do not interact). Hutchinson (``probes`` (P, B, ...)):
    the mean over probes of z^T (df/dx) z, one vector-Jacobian product per probe
    (Grathwohl et al. 2019, arXiv:1810.01367, eq. 7); unbiased for any fixed x.

    Args:
        velocity_fn: x (B, ...) -> v (B, ...), differentiable, each example on its own.
        x: (B, ...) where to evaluate.
        probes: optional (P, B, ...) probes from :func:`hutchinson_probes`.
    Returns:
        (v (B, ...) detached, div (B,)) in x's dtype.

    >>> import torch
    >>> A = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    >>> _, div = divergence(lambda x: x @ A.T, torch.zeros(3, 2, dtype=torch.float64))
    >>> div.tolist()                                                  # tr(A) = 5 at every x
    [5.0, 5.0, 5.0]

    Introduced in chapter 06.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise ValueError(f"x must be a floating-point tensor of shape (B, ...), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if probes is not None and (not isinstance(probes, torch.Tensor) or probes.dim() != x.dim() + 1
                               or probes.shape[1:] != x.shape):
        raise ValueError(f"probes must have shape (P, {', '.join(map(str, x.shape))}), got "
                         f"{tuple(probes.shape) if isinstance(probes, torch.Tensor) else type(probes).__name__}")
    B = x.shape[0]
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = velocity_fn(x)
        if not isinstance(v, torch.Tensor) or v.shape != x.shape:
            raise ValueError(f"velocity_fn must return a tensor of x's shape {tuple(x.shape)}, got "
                             f"{getattr(v, 'shape', type(v).__name__)}")
        div = torch.zeros(B, dtype=x.dtype, device=x.device)
        if probes is None:
            flat_v = v.reshape(B, -1)  # (B, D)
            D = flat_v.shape[1]
            for i in range(D):
                (grad,) = torch.autograd.grad(flat_v[:, i].sum(), x, retain_graph=i < D - 1)
                div = div + grad.reshape(B, -1)[:, i]
        else:
            P = probes.shape[0]
            for j in range(P):
                z = probes[j].to(dtype=x.dtype)
                (vjp,) = torch.autograd.grad((v * z).sum(), x, retain_graph=j < P - 1)  # z^T df/dx
                div = div + (vjp * z).reshape(B, -1).sum(dim=1) / P
    return v.detach(), div.detach()


def _likelihood_grid(schedule, t_start: float, n_steps: int, spacing: str) -> torch.Tensor:
    """Increasing float64 times t_start = t_0 < ... < t_K = 1 for the likelihood ODE."""
    if spacing == "uniform":
        return torch.linspace(t_start, 1.0, n_steps + 1, dtype=torch.float64)
    lam = schedule.log_snr(torch.tensor([t_start, 1.0], dtype=torch.float64))  # clipped
    grid = schedule.t_from_log_snr(torch.linspace(float(lam[0]), float(lam[1]), n_steps + 1,
                                                  dtype=torch.float64)).to(torch.float64)
    grid[0], grid[-1] = t_start, 1.0  # the clipped log-SNR ends a hair before t = 1
    if not bool((grid[1:] > grid[:-1]).all()):
        raise ValueError(
            f"the log-SNR grid of {schedule!r} from t_start={t_start} is not strictly increasing for "
            f"n_steps={n_steps}; use spacing='uniform' or fewer steps"
        )
    return grid


def ode_log_likelihood(denoiser, x0: torch.Tensor, *, t_start: float = 1e-3, n_steps: int = 100,
                       spacing: str = "log_snr", method: str = "rk4", exact_trace: bool | None = None,
                       n_hutchinson: int = 1, probe: str = "rademacher", generator: torch.Generator | None = None,
                       dtype: torch.dtype = torch.float64) -> torch.Tensor:
    r"""log p(x0) per example through the probability-flow ODE, in nats.

    Integrates, from t = t_start (x = x0) up to t = 1, the probability-flow ODE together with the
    change of log-density (Chen et al. 2018, arXiv:1806.07366, Theorem 1; Song et al. 2021,
    arXiv:2011.13456, eq. 13 and App. D.2):

    .. math::  \frac{dx}{dt} = v(x, t) = \dot\alpha_t \hat x_0 + \dot\sigma_t \hat\varepsilon,
               \qquad \frac{d\,\Delta}{dt} = \nabla\cdot v(x, t),

    with x0_hat = D(x, t), eps_hat = (x - alpha_t x0_hat) / sigma_t
    (:func:`course_lib.samplers.ode.pf_ode_velocity`), and returns

    .. math::  \log p(x_0) = \log \mathcal N\big(x_1; 0, (\alpha_1^2 + \sigma_1^2) I\big) + \Delta(1).

    The result is the log-density of the model's marginal at t_start (sigma_{t_start} > 0 is needed
    for eps_hat), evaluated at x0. It differs from log p_0(x0) by O(1 - alpha_{t_start}) +
    O(sigma_{t_start}^2 / s^2) for data of scale s: ~1e-3 nats on VP schedules with the default
    t_start = 1e-3, ~5e-3 on RectifiedFlow (alpha_t = 1 - t), where t_start = 1e-4 does better.
    The prior is the one of :func:`~course_lib.samplers.loop.prior_sample`: exact where alpha_1 = 0
    (VPCosine, RectifiedFlow); for VPLinear (alpha_1 = 0.006) it costs about alpha_1 |E x0| |x_1| nats.

    Integrator: fixed steps in ``dtype`` (float64 by default; the denoiser is called
    in that dtype, so convert a float32 network with ``.double()`` or pass dtype=torch.float32):
    classical Runge-Kutta 4 (4 evaluations per step, error O(1/n_steps^4)) or Heun (2 evaluations,
    O(1/n_steps^2)). The steps are uniform in the log-SNR by default (``spacing="log_snr"``, as
    DPM-Solver's grid): on VP paths sigma_t ~ sqrt(t) near t = 0, so div v ~ 1/t there, and a grid
    uniform in t (``spacing="uniform"``) converges only at first order.

    Divergence: exact (D backward passes per evaluation) or Hutchinson with ``n_hutchinson``
    probes per example, drawn once and kept fixed along the path as in FFJORD (Grathwohl et al.
    2019, arXiv:1810.01367), so the estimate of log p(x0) is unbiased up to the discretisation
    error (the path of x does not depend on the probes).

    Args:
        denoiser: D(x_t, t) -> x0_hat with a ``schedule`` attribute (a
            :class:`~course_lib.parameterization.Denoiser`); examples must not interact.
        x0: (B, ...) the points whose log-likelihood is wanted.
        t_start: the start time in (0, 1), where sigma_t > 0.
        n_steps: the number of fixed steps from t_start to 1.
        spacing: "log_snr" (uniform in the clipped log-SNR, default) or "uniform" (in t).
        method: "rk4" or "heun".
        exact_trace: True (exact), False (Hutchinson) or None: exact when D <= 16.
        n_hutchinson: probes per example for the Hutchinson estimate.
        probe: "rademacher" or "gaussian".
        generator: the source of the probes.
        dtype: the floating dtype of the integration.
    Returns:
        (B,) log p(x0) in nats, in ``dtype``. Divide -log p by D ln 2 for bits per dimension.

    >>> import torch
    >>> from course_lib.schedules import VPCosine
    >>> from course_lib.parameterization import Denoiser
    >>> schedule = VPCosine()
    >>> def exact_x0(x, t):          # data N(0, I): E[x0 | x_t] = alpha_t x_t (variance preserving)
    ...     return schedule.alpha(t.double())[:, None] * x
    >>> den = Denoiser(exact_x0, schedule, prediction="x0")
    >>> x0 = torch.tensor([[0.0, 0.0], [1.0, -1.0]], dtype=torch.float64)
    >>> log_p = ode_log_likelihood(den, x0, n_steps=20)
    >>> exact = -torch.log(torch.tensor(2 * torch.pi)) - 0.5 * (x0 ** 2).sum(1)
    >>> bool((log_p - exact).abs().max() < 1e-3)
    True

    Introduced in chapter 06.
    """
    if not hasattr(denoiser, "schedule"):
        raise ValueError("denoiser must carry the schedule it was trained on (wrap the net in a Denoiser)")
    _check_x0(x0)
    if not (isinstance(t_start, (int, float)) and 0 < float(t_start) < 1):
        raise ValueError(f"t_start must lie in (0, 1) (sigma_t > 0 is needed there), got {t_start!r}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer, got {n_steps!r}")
    if spacing not in ("log_snr", "uniform"):
        raise ValueError(f"spacing must be 'log_snr' or 'uniform', got {spacing!r}")
    if method not in ("rk4", "heun"):
        raise ValueError(f"method must be 'rk4' or 'heun', got {method!r}")
    if exact_trace not in (None, True, False):
        raise ValueError(f"exact_trace must be True, False or None (exact when D <= 16), got {exact_trace!r}")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    schedule = denoiser.schedule
    B, D = x0.shape[0], x0[0].numel()
    exact = D <= 16 if exact_trace is None else exact_trace
    probes = None
    if not exact:
        probes = hutchinson_probes(x0.shape, n_hutchinson, probe, generator=generator, dtype=dtype,
                                   device=x0.device)  # (P, B, ...), fixed along the path
    elif n_hutchinson != 1 or probe != "rademacher":
        raise ValueError("n_hutchinson and probe apply to the Hutchinson estimate; pass exact_trace=False to use them")

    def field(x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(dx/dt, d Delta/dt) = (v(x, t), div v(x, t))."""
        t_ = torch.tensor(t, dtype=torch.float64)
        return divergence(lambda y: pf_ode_velocity(denoiser, y, t_), x, probes=probes)

    times = _likelihood_grid(schedule, float(t_start), n_steps, spacing).tolist()  # increasing
    x = x0.detach().to(dtype)
    delta = torch.zeros(B, dtype=dtype, device=x0.device)  # int div v dt so far
    for k in range(n_steps):
        t, t_next = times[k], times[k + 1]
        h = t_next - t
        if method == "rk4":  # classical Runge-Kutta on the state (x, Delta)
            v1, d1 = field(x, t)
            v2, d2 = field(x + 0.5 * h * v1, t + 0.5 * h)
            v3, d3 = field(x + 0.5 * h * v2, t + 0.5 * h)
            v4, d4 = field(x + h * v3, t_next)
            x = x + h / 6 * (v1 + 2 * v2 + 2 * v3 + v4)
            delta = delta + h / 6 * (d1 + 2 * d2 + 2 * d3 + d4)
        else:  # Heun: Euler predictor, trapezoidal corrector
            v1, d1 = field(x, t)
            v2, d2 = field(x + h * v1, t_next)
            x = x + 0.5 * h * (v1 + v2)
            delta = delta + 0.5 * h * (d1 + d2)
    one = torch.ones((), dtype=torch.float64)
    prior_var = float(schedule.alpha(one) ** 2 + schedule.sigma(one) ** 2)  # alpha_1^2 + sigma_1^2
    flat = x.reshape(B, -1)
    log_prior = -0.5 * D * math.log(2 * math.pi * prior_var) - 0.5 * (flat**2).sum(dim=1) / prior_var
    return log_prior + delta
