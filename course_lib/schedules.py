r"""Noise schedules as affine Gaussian paths (introduced in chapter 01).

Every method in the course corrupts data the same way:

.. math::  x_t = \alpha_t x_0 + \sigma_t \varepsilon, \qquad \varepsilon \sim \mathcal N(0, I),
           \qquad t \in [0, 1],

with t = 0 the data and t = 1 (almost) pure noise. A schedule is the pair of
functions (alpha_t, sigma_t) together with their time derivatives and the
log signal-to-noise ratio

.. math::  \lambda_t = \log \mathrm{SNR}(t) = \log(\alpha_t^2 / \sigma_t^2).

Families (all share one interface, :class:`Schedule`):

* variance preserving (alpha_t^2 + sigma_t^2 = 1): :class:`VPLinear`, :class:`VPCosine`,
  :class:`VPSigmoid`, :class:`VPScaledLinear`, and :class:`DiscreteSchedule`
  (the DDPM table of :class:`DDPMTable` with its own integer index ``n``);
* variance exploding (alpha_t = 1): :class:`VE`, :class:`EDM`;
* the straight path of flow matching / rectified flow: :class:`RectifiedFlow`, and Lipman et
  al.'s conditional optimal-transport path with a noise floor: :class:`CondOT` (chapter 08).

The log-SNR is infinite at the ends of most schedules; :meth:`Schedule.log_snr`
clips it to ``[LOG_SNR_MIN, LOG_SNR_MAX]`` so that nothing is NaN or infinite in
float32, and the time derivatives are those of the clipped log-SNR (zero within
~1e-9 of pure data or pure noise). ``alpha`` and ``sigma`` themselves are exact.

>>> import torch
>>> s = VPCosine()
>>> t = torch.tensor([0.0, 0.5, 1.0])
>>> torch.allclose(s.alpha(t) ** 2 + s.sigma(t) ** 2, torch.ones(3))
True
>>> float(s.alpha(t)[0]), float(s.sigma(t)[0])
(1.0, 0.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

__all__ = [
    "LOG_SNR_MIN",
    "LOG_SNR_MAX",
    "Schedule",
    "VPSchedule",
    "VPLinear",
    "VPScaledLinear",
    "VPCosine",
    "VPSigmoid",
    "VE",
    "EDM",
    "RectifiedFlow",
    "CondOT",
    "DDPMTable",
    "DiscreteSchedule",
    "SCHEDULES",
    "get_schedule",
    "check_times",
    "PathPoint",
]

LOG_SNR_MIN = -20.0
LOG_SNR_MAX = 20.0


def check_times(t: torch.Tensor, name: str = "t") -> torch.Tensor:
    """Validate a tensor of times: floating point, finite, every value in [0, 1].

    Python numbers are turned into 0-d float32 tensors. Returns the tensor.
    """
    if isinstance(t, (int, float)):
        t = torch.tensor(float(t))
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or a number in [0, 1], got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(
            f"{name} must be a floating-point tensor of times in [0, 1], got dtype {t.dtype} "
            "(a DDPM integer index n converts with DDPMTable.time(n))"
        )
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, got {t}")
    if t.numel() and (bool((t < 0).any()) or bool((t > 1).any())):
        raise ValueError(
            f"{name} must lie in [0, 1] (t = 0 data, t = 1 noise), got values in "
            f"[{float(t.min()):.4g}, {float(t.max()):.4g}]"
        )
    return t


def _wide(t: torch.Tensor) -> torch.Tensor:
    """float64 copy of t for the schedule arithmetic (float32 on MPS, which has no float64)."""
    if t.device.type == "mps":
        return t.to(torch.float32)
    return t.to(torch.float64)


def _half_log_snr(alpha: float, sigma: float) -> float:
    """log(alpha / sigma) of two float64 numbers: +inf at sigma = 0, -inf at alpha = 0."""
    if sigma == 0.0:
        return math.inf
    if alpha == 0.0:
        return -math.inf
    return math.log(alpha) - math.log(sigma)


@dataclass(frozen=True)
class PathPoint:
    r"""One time t of a path with every coefficient a sampler step needs (introduced in chapter 02).

    All values are float64 Python numbers, computed once per grid by :meth:`Schedule.points`
    (so a sampling loop never converts a tensor to a number inside the loop):

    * ``t``: the time; ``alpha``, ``sigma``: alpha_t, sigma_t of x_t = alpha_t x0 + sigma_t eps;
    * ``d_alpha``, ``d_sigma``: their time derivatives (those of the clipped log-SNR, see
      :meth:`Schedule.d_log_snr`);
    * ``lam``: DPM-Solver's half log-SNR log(alpha_t / sigma_t), unclipped: +inf where
      sigma_t = 0 (clean data), -inf where alpha_t = 0 (pure noise).

    >>> p = RectifiedFlow().point(0.5)
    >>> p.alpha, p.sigma, p.lam
    (0.5, 0.5, 0.0)
    """

    t: float
    alpha: float
    sigma: float
    d_alpha: float
    d_sigma: float
    lam: float

    def __float__(self) -> float:
        return self.t


class Schedule:
    r"""An affine Gaussian path x_t = alpha_t x0 + sigma_t eps over t in [0, 1].

    Subclasses implement ``_alpha``, ``_sigma``, ``_d_alpha``, ``_d_sigma`` on a
    wide-precision tensor; the public methods validate ``t`` and return the
    dtype of ``t``. All methods act elementwise on a tensor of any shape.
    Introduced in chapter 01.
    """

    name: str = "schedule"
    variance_preserving: bool = False

    # --- to be implemented by each family -------------------------------------------
    def _alpha(self, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _sigma(self, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _d_alpha(self, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _d_sigma(self, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _raw_log_snr(self, t: torch.Tensor) -> torch.Tensor:
        a, s = self._alpha(t), self._sigma(t)
        return 2.0 * (torch.log(a) - torch.log(s))

    # --- public interface -------------------------------------------------------------
    def _eval(self, fn: Callable[[torch.Tensor], torch.Tensor], t) -> torch.Tensor:
        t = check_times(t)
        return fn(_wide(t)).to(t.dtype)

    def alpha(self, t) -> torch.Tensor:
        r"""alpha_t, the signal scale of x_t = alpha_t x0 + sigma_t eps."""
        return self._eval(self._alpha, t)

    def sigma(self, t) -> torch.Tensor:
        r"""sigma_t, the noise scale of x_t = alpha_t x0 + sigma_t eps."""
        return self._eval(self._sigma, t)

    def d_alpha(self, t) -> torch.Tensor:
        r"""d alpha_t / dt."""
        return self._eval(self._d_alpha, t)

    def d_sigma(self, t) -> torch.Tensor:
        r"""d sigma_t / dt."""
        return self._eval(self._d_sigma, t)

    def log_snr(self, t) -> torch.Tensor:
        r"""lambda_t = log(alpha_t^2 / sigma_t^2), clipped to [LOG_SNR_MIN, LOG_SNR_MAX]."""
        return self._eval(lambda u: self._raw_log_snr(u).clamp(LOG_SNR_MIN, LOG_SNR_MAX), t)

    def d_log_snr(self, t) -> torch.Tensor:
        r"""d lambda_t / dt = 2 (alpha'_t / alpha_t - sigma'_t / sigma_t) (0 where lambda_t is clipped)."""
        def fn(u):
            lam = self._raw_log_snr(u)
            inside = (lam > LOG_SNR_MIN) & (lam < LOG_SNR_MAX)
            d = 2 * (self._d_alpha(u) / self._alpha(u) - self._d_sigma(u) / self._sigma(u))
            return torch.where(inside, d, torch.zeros_like(d))
        return self._eval(fn, t)

    def snr(self, t) -> torch.Tensor:
        r"""SNR(t) = alpha_t^2 / sigma_t^2 = exp(lambda_t) (from the clipped log-SNR)."""
        return torch.exp(self.log_snr(t))

    def alpha_bar(self, t) -> torch.Tensor:
        r"""alpha_bar(t) = alpha_t^2 in DDPM's notation (Ho et al. 2020, eq. 4)."""
        return self.alpha(t) ** 2

    def _check_log_snr(self, log_snr) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate targets of :meth:`t_from_log_snr`: a number or a floating tensor, finite, inside
        this schedule's clipped range. Returns (log_snr as a tensor, its float64 copy)."""
        if isinstance(log_snr, bool) or not isinstance(log_snr, (int, float, torch.Tensor)):
            raise ValueError(f"log_snr must be a number or a torch.Tensor, got {type(log_snr).__name__}")
        if not isinstance(log_snr, torch.Tensor):
            log_snr = torch.as_tensor(float(log_snr))
        target = _wide(log_snr)
        if target.numel() and not bool(torch.isfinite(target).all()):
            raise ValueError(f"log_snr must be finite (it is clipped to [{LOG_SNR_MIN}, {LOG_SNR_MAX}]), got {log_snr}")
        lo_val = self._raw_log_snr(torch.ones((), dtype=target.dtype)).clamp(LOG_SNR_MIN, LOG_SNR_MAX)
        hi_val = self._raw_log_snr(torch.zeros((), dtype=target.dtype)).clamp(LOG_SNR_MIN, LOG_SNR_MAX)
        if target.numel() and (bool((target < lo_val - 1e-9).any()) or bool((target > hi_val + 1e-9).any())):
            raise ValueError(
                f"log_snr must lie in this schedule's range [{float(lo_val):.4g}, {float(hi_val):.4g}], "
                f"got values in [{float(target.min()):.4g}, {float(target.max()):.4g}]"
            )
        return log_snr, target

    def t_from_log_snr(self, log_snr: torch.Tensor, iterations: int = 64) -> torch.Tensor:
        r"""Invert lambda_t: the time t with log_snr(t) = log_snr.

        Bisection in float64 on [0, 1] (every schedule's lambda_t decreases in t).
        NaN, infinite and out-of-range values raise a ValueError.
        """
        log_snr, target = self._check_log_snr(log_snr)
        lo = torch.zeros_like(target)
        hi = torch.ones_like(target)
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            above = self._raw_log_snr(mid).clamp(LOG_SNR_MIN, LOG_SNR_MAX) > target
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return (0.5 * (lo + hi)).to(log_snr.dtype if log_snr.is_floating_point() else torch.float32)

    def points(self, times) -> tuple[PathPoint, ...]:
        r"""The :class:`PathPoint` of every time of a 1-D grid, computed in one float64 pass.

        This is the public accessor the samplers use: a loop calls it once per ``sample()`` and
        reads Python numbers from then on (no host synchronisation per step).
        """
        times = check_times(times if isinstance(times, torch.Tensor) else torch.as_tensor(times, dtype=torch.float64))
        if times.dim() != 1:
            raise ValueError(f"points needs a 1-D tensor of times, got shape {tuple(times.shape)}")
        t64 = times.detach().to(device="cpu", dtype=torch.float64)
        rows = torch.stack([t64, self._alpha(t64), self._sigma(t64), self._d_alpha(t64), self._d_sigma(t64)],
                           dim=1).tolist()
        return tuple(PathPoint(t, a, s, da, ds, _half_log_snr(a, s)) for t, a, s, da, ds in rows)

    def point(self, t) -> PathPoint:
        """The :class:`PathPoint` of one time t (a number or a 0-d tensor in [0, 1])."""
        if isinstance(t, bool) or not isinstance(t, (int, float, torch.Tensor)):
            raise ValueError(f"t must be a number or a 0-d tensor in [0, 1], got {type(t).__name__}")
        if isinstance(t, torch.Tensor) and t.dim() != 0:
            raise ValueError(f"t must be one time (a 0-d tensor), got shape {tuple(t.shape)}")
        tt = t.reshape(1) if isinstance(t, torch.Tensor) else torch.tensor([float(t)], dtype=torch.float64)
        return self.points(tt)[0]

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        r"""x_t = alpha_t x0 + sigma_t eps (the reparameterisation of q(x_t | x0)).

        x0, eps: (B, ...) ; t: (B,) or a scalar. Returns x_t with the shape of x0.
        """
        if x0.shape != eps.shape:
            raise ValueError(f"x0 and eps must have the same shape, got {tuple(x0.shape)} and {tuple(eps.shape)}")
        t = check_times(t)
        alpha_t = broadcast_to(self.alpha(t), x0)
        sigma_t = broadcast_to(self.sigma(t), x0)
        return alpha_t * x0 + sigma_t * eps

    def sample_t(self, batch_size: int, *, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
        """Training times t ~ U(0, 1], shape (batch_size,). DiscreteSchedule draws n/N instead.

        torch.rand draws u ~ U[0, 1), which includes u = 0 (about once in 25 million draws, as issue 9 counted: a
        10,000-step run at batch 1,024 meets it with probability ~35 %), where x_t = x0 and most
        targets and weights are singular. An exact 0 is mapped to 1, so t ~ U(0, 1] and every
        other draw is torch.rand's own (trained models stay bit-identical).
        """
        if int(batch_size) <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        u = torch.rand(batch_size, generator=generator, device=device)  # U[0, 1)
        return torch.where(u == 0, torch.ones_like(u), u)  # U(0, 1]: the one point 0 moved to 1

    def prior_std(self) -> float:
        """Standard deviation of x_1 when the data has unit variance: sqrt(alpha_1^2 + sigma_1^2)."""
        one = torch.ones((), dtype=torch.float64)
        return float(torch.sqrt(self._alpha(one) ** 2 + self._sigma(one) ** 2))

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


def broadcast_to(coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-example coefficient (B,) or scalar () to broadcast against x (B, ...)."""
    if coef.dim() == 0:
        return coef.to(device=x.device, dtype=x.dtype)
    if coef.dim() != 1 or coef.shape[0] != x.shape[0]:
        raise ValueError(
            f"a per-example coefficient must have shape () or ({x.shape[0]},) to match x of shape "
            f"{tuple(x.shape)}, got {tuple(coef.shape)}"
        )
    return coef.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))


# ------------------------------------------------------------------------------------
# Variance preserving family, written through the log-SNR:
#   alpha_t^2 = sigmoid(lambda_t), sigma_t^2 = sigmoid(-lambda_t)
#   d alpha_t/dt = 1/2 alpha_t sigma_t^2 lambda'_t,  d sigma_t/dt = -1/2 sigma_t alpha_t^2 lambda'_t
# (Kingma et al. 2021, "Variational Diffusion Models", arXiv:2107.00630, sec. 2).
# ------------------------------------------------------------------------------------
class VPSchedule(Schedule):
    """Variance-preserving schedule defined by its log-SNR lambda_t (alpha^2 + sigma^2 = 1)."""

    variance_preserving = True

    def _d_raw_log_snr(self, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _alpha(self, t):
        return torch.sqrt(torch.sigmoid(self._raw_log_snr(t)))

    def _sigma(self, t):
        return torch.sqrt(torch.sigmoid(-self._raw_log_snr(t)))

    def d_log_snr(self, t) -> torch.Tensor:
        r"""d lambda_t / dt (0 where lambda_t is clipped)."""
        return self._eval(self._clipped_d_log_snr, t)

    def _clipped_d_log_snr(self, t):
        lam = self._raw_log_snr(t)
        inside = (lam > LOG_SNR_MIN) & (lam < LOG_SNR_MAX)
        d_lam = self._d_raw_log_snr(torch.where(inside, t, torch.full_like(t, 0.5)))
        return torch.where(inside, d_lam, torch.zeros_like(d_lam))

    def _d_alpha(self, t):
        a, s = self._alpha(t), self._sigma(t)
        return 0.5 * a * s**2 * self._clipped_d_log_snr(t)

    def _d_sigma(self, t):
        a, s = self._alpha(t), self._sigma(t)
        return -0.5 * s * a**2 * self._clipped_d_log_snr(t)


class _IntegratedBeta(VPSchedule):
    r"""VP schedule from a continuous beta(t): alpha_bar(t) = exp(-B(t)), B(t) = int_0^t beta.

    Then lambda_t = -log(expm1(B(t))) and lambda'_t = -beta(t) / (1 - exp(-B(t))).
    """

    def _B(self, t):  # pragma: no cover - abstract
        raise NotImplementedError

    def beta(self, t) -> torch.Tensor:
        """The continuous-time rate beta(t) (Song et al. 2021, VP SDE, eq. 11)."""
        return self._eval(self._beta, t)

    def _raw_log_snr(self, t):
        return -torch.log(torch.expm1(self._B(t)))

    def _d_raw_log_snr(self, t):
        return -self._beta(t) / (-torch.expm1(-self._B(t)))


class VPLinear(_IntegratedBeta):
    r"""Linear beta(t) = beta_min + t (beta_max - beta_min): the continuous limit of DDPM.

    alpha_bar(t) = exp(-(beta_min t + (beta_max - beta_min) t^2 / 2)). With the defaults
    (0.1, 20) it matches DDPM's linear table beta_n in [1e-4, 0.02] with N = 1000
    (Ho et al. 2020, arXiv:2006.11239, sec. 4; Song et al. 2021, arXiv:2011.13456, eq. 32).
    """

    name = "linear"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        if not (beta_min > 0 and beta_max > beta_min and math.isfinite(beta_max)):
            raise ValueError(f"VPLinear needs 0 < beta_min < beta_max < inf, got beta_min={beta_min}, beta_max={beta_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def _beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _B(self, t):
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2


class VPScaledLinear(_IntegratedBeta):
    r"""Scaled-linear schedule of latent diffusion / Stable Diffusion, in continuous time.

    Discrete: beta_n = (sqrt(beta_start) + (n-1)/(N-1) (sqrt(beta_end) - sqrt(beta_start)))^2
    (Rombach et al. 2022, arXiv:2112.10752). Continuous: beta(t) = N (sqrt(b0) + t d)^2 with
    d = sqrt(b1) - sqrt(b0), so B(t) = N ((sqrt(b0) + t d)^3 - b0^{3/2}) / (3 d).
    """

    name = "scaled_linear"

    def __init__(self, beta_start: float = 0.00085, beta_end: float = 0.012, n_train_steps: int = 1000):
        if not (0 < beta_start < beta_end < 1):
            raise ValueError(f"VPScaledLinear needs 0 < beta_start < beta_end < 1, got {beta_start}, {beta_end}")
        if int(n_train_steps) != n_train_steps or n_train_steps <= 0:
            raise ValueError(f"n_train_steps must be a positive integer, got {n_train_steps}")
        self.beta_start, self.beta_end, self.n_train_steps = float(beta_start), float(beta_end), int(n_train_steps)

    def _beta(self, t):
        r0, r1 = math.sqrt(self.beta_start), math.sqrt(self.beta_end)
        return self.n_train_steps * (r0 + t * (r1 - r0)) ** 2

    def _B(self, t):
        r0, r1 = math.sqrt(self.beta_start), math.sqrt(self.beta_end)
        d = r1 - r0
        return self.n_train_steps * ((r0 + t * d) ** 3 - r0**3) / (3 * d)


class VPCosine(VPSchedule):
    r"""Cosine schedule alpha_bar(t) = f(t)/f(0), f(t) = cos^2(pi/2 (t + s)/(1 + s)).

    Nichol & Dhariwal 2021, "Improved DDPM", arXiv:2102.09672, eq. 17, with s = 0.008.
    lambda_t = log cos^2(phi) - log(cos^2(phi_0) - cos^2(phi)), phi = pi/2 (t+s)/(1+s).
    (The discrete version clips beta at 0.999; here the log-SNR is clipped instead.)
    """

    name = "cosine"

    def __init__(self, s: float = 0.008):
        if not (0 <= s < 1):
            raise ValueError(f"VPCosine needs an offset 0 <= s < 1, got s={s}")
        self.s = float(s)

    def _phi(self, t):
        return 0.5 * math.pi * (t + self.s) / (1 + self.s)

    def _raw_log_snr(self, t):
        c2 = torch.cos(self._phi(t)) ** 2
        c02 = math.cos(0.5 * math.pi * self.s / (1 + self.s)) ** 2
        return torch.log(c2) - torch.log(c02 - c2)

    def _d_raw_log_snr(self, t):
        phi = self._phi(t)
        d_phi = 0.5 * math.pi / (1 + self.s)
        c, sn = torch.cos(phi), torch.sin(phi)
        c02 = math.cos(0.5 * math.pi * self.s / (1 + self.s)) ** 2
        return d_phi * (-2 * sn / c - 2 * c * sn / (c02 - c**2))


class VPSigmoid(VPSchedule):
    r"""Sigmoid schedule alpha_bar(t) = (v_end - sigmoid((t (end - start) + start)/tau)) / (v_end - v_start).

    v_start = sigmoid(start/tau), v_end = sigmoid(end/tau). Chen 2023, "On the importance of
    noise scheduling for diffusion models", arXiv:2301.10972, Algorithm 1 (defaults -3, 3, 1).
    """

    name = "sigmoid"

    def __init__(self, start: float = -3.0, end: float = 3.0, tau: float = 1.0):
        if not (start < end):
            raise ValueError(f"VPSigmoid needs start < end, got start={start}, end={end}")
        if not (tau > 0):
            raise ValueError(f"VPSigmoid needs tau > 0, got tau={tau}")
        self.start, self.end, self.tau = float(start), float(end), float(tau)

    def _gamma_parts(self, t):
        v_start = 1 / (1 + math.exp(-self.start / self.tau))
        v_end = 1 / (1 + math.exp(-self.end / self.tau))
        u = torch.sigmoid((t * (self.end - self.start) + self.start) / self.tau)
        return u, v_start, v_end

    def _raw_log_snr(self, t):
        u, v_start, v_end = self._gamma_parts(t)
        # alpha_bar = (v_end - u)/(v_end - v_start), 1 - alpha_bar = (u - v_start)/(v_end - v_start)
        return torch.log(v_end - u) - torch.log(u - v_start)

    def _d_raw_log_snr(self, t):
        u, v_start, v_end = self._gamma_parts(t)
        du = u * (1 - u) * (self.end - self.start) / self.tau
        return -du / (v_end - u) - du / (u - v_start)


# ------------------------------------------------------------------------------------
# Variance exploding family (alpha_t = 1)
# ------------------------------------------------------------------------------------
class VE(Schedule):
    r"""Variance exploding: alpha_t = 1, sigma_t = sigma_min (sigma_max / sigma_min)^t.

    Song et al. 2021, arXiv:2011.13456, eq. 31 (SMLD noise scales in continuous time).
    sigma_0 = sigma_min > 0: the VE path never reaches the clean data exactly.
    """

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        if not (0 < sigma_min < sigma_max and math.isfinite(sigma_max)):
            raise ValueError(f"VE needs 0 < sigma_min < sigma_max < inf, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def _alpha(self, t):
        return torch.ones_like(t)

    def _sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def _d_alpha(self, t):
        return torch.zeros_like(t)

    def _d_sigma(self, t):
        return self._sigma(t) * math.log(self.sigma_max / self.sigma_min)


class EDM(Schedule):
    r"""EDM noise levels as a schedule: alpha_t = 1,
    sigma_t = (sigma_min^{1/rho} + t (sigma_max^{1/rho} - sigma_min^{1/rho}))^rho.

    Karras et al. 2022, "Elucidating the design space...", arXiv:2206.00364, eq. 5 and
    Table 1 (sigma_min = 0.002, sigma_max = 80, rho = 7). A uniform grid in t is the
    Karras time discretisation.
    """

    name = "edm"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0):
        if not (0 < sigma_min < sigma_max and math.isfinite(sigma_max)):
            raise ValueError(f"EDM needs 0 < sigma_min < sigma_max < inf, got {sigma_min}, {sigma_max}")
        if not (rho > 0):
            raise ValueError(f"EDM needs rho > 0, got rho={rho}")
        self.sigma_min, self.sigma_max, self.rho = float(sigma_min), float(sigma_max), float(rho)

    def _inner(self, t):
        a = self.sigma_min ** (1 / self.rho)
        b = self.sigma_max ** (1 / self.rho)
        return a + t * (b - a), b - a

    def _alpha(self, t):
        return torch.ones_like(t)

    def _sigma(self, t):
        inner, _ = self._inner(t)
        return inner**self.rho

    def _d_alpha(self, t):
        return torch.zeros_like(t)

    def _d_sigma(self, t):
        inner, d = self._inner(t)
        return self.rho * inner ** (self.rho - 1) * d


class RectifiedFlow(Schedule):
    r"""The straight path alpha_t = 1 - t, sigma_t = t of flow matching / rectified flow.

    Liu et al. 2022, arXiv:2209.03003; Lipman et al. 2022, arXiv:2210.02747 (which run time
    the other way: their t' = 1 - t). The velocity is d x_t/dt = eps - x0.
    """

    name = "rectified_flow"

    def _alpha(self, t):
        return 1 - t

    def _sigma(self, t):
        return t

    def _d_alpha(self, t):
        return -torch.ones_like(t)

    def _d_sigma(self, t):
        return torch.ones_like(t)


class CondOT(Schedule):
    r"""Lipman et al.'s conditional optimal-transport path with a noise floor sigma_min.

    Lipman et al. 2022, "Flow Matching for Generative Modeling", arXiv:2210.02747, eq. 20-22, in
    *their* time t' (t' = 0 noise, t' = 1 data): mu_{t'}(x1) = t' x1 and
    sigma_{t'} = 1 - (1 - sigma_min) t', i.e. psi_{t'}(x) = (1 - (1 - sigma_min) t') x + t' x1 with
    x ~ N(0, I) the noise and x1 the data. In the course's time t = 1 - t' (t = 0 data):

        alpha_t = 1 - t,    sigma_t = sigma_min + (1 - sigma_min) t,
        d_alpha_t = -1,     d_sigma_t = 1 - sigma_min,

    so the conditional velocity is u = (1 - sigma_min) eps - x0, minus Lipman's target
    x1 - (1 - sigma_min) x (eq. 23). sigma_0 = sigma_min: like VE, the path never reaches the clean
    data exactly; sigma_min = 0 is :class:`RectifiedFlow`. Introduced in chapter 08.

    Args:
        sigma_min: the noise level left at the data end, 0 <= sigma_min < 1 (a small number such
            as 1e-4; the default).

    >>> s = CondOT(sigma_min=0.1)
    >>> [round(float(v), 4) for v in s.sigma(torch.tensor([0.0, 0.5, 1.0]))]
    [0.1, 0.55, 1.0]
    """

    name = "cond_ot"

    def __init__(self, sigma_min: float = 1e-4):
        if isinstance(sigma_min, bool) or not isinstance(sigma_min, (int, float)) or not (0 <= sigma_min < 1):
            raise ValueError(f"CondOT needs a noise floor 0 <= sigma_min < 1, got sigma_min={sigma_min!r}")
        self.sigma_min = float(sigma_min)

    def _alpha(self, t):
        return 1 - t

    def _sigma(self, t):
        return self.sigma_min + (1 - self.sigma_min) * t

    def _d_alpha(self, t):
        return -torch.ones_like(t)

    def _d_sigma(self, t):
        return torch.full_like(t, 1 - self.sigma_min)


# ------------------------------------------------------------------------------------
# The discrete DDPM table and its integer index n
# ------------------------------------------------------------------------------------
class DDPMTable:
    r"""DDPM's discrete schedule: beta_1..beta_N, alpha_n = 1 - beta_n, alpha_bar_n = prod alpha_i.

    The integer index is called ``n`` (1..N; n = 0 is the clean data) and never ``t``;
    it maps to continuous time by t = n / N (:meth:`time`). Ho et al. 2020,
    arXiv:2006.11239, eq. 2-4. Tables are computed in float64.

    >>> table = DDPMTable.from_name("linear", 1000)
    >>> round(float(table.alpha_bar[-1]), 6)
    4e-05
    """

    KINDS = ("linear", "scaled_linear", "cosine", "sigmoid")
    PARAMETERS = {  # the keyword arguments each kind of :meth:`from_name` accepts
        "linear": ("beta_start", "beta_end"),
        "scaled_linear": ("beta_start", "beta_end"),
        "cosine": ("s", "max_beta"),
        "sigmoid": ("beta_start", "beta_end"),
    }

    def __init__(self, betas: torch.Tensor):
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.dim() != 1 or betas.numel() < 1:
            raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}")
        if not bool(torch.isfinite(betas).all()):
            bad = torch.nonzero(~torch.isfinite(betas))[:, 0]
            raise ValueError(
                f"every beta_n must be a finite number in (0, 1), got {float(betas[bad[0]])} at n = "
                f"{int(bad[0]) + 1} ({bad.numel()} non-finite of {betas.numel()})"
            )
        if bool((betas <= 0).any()) or bool((betas >= 1).any()):
            raise ValueError(
                f"every beta_n must lie in (0, 1), got values in [{float(betas.min()):.4g}, {float(betas.max()):.4g}]"
            )
        self.betas = betas  # (N,), betas[n-1] = beta_n
        self.alphas = 1.0 - betas
        self.alpha_bar = torch.cumprod(self.alphas, dim=0)

    @property
    def n_train_steps(self) -> int:
        """N, the number of diffusion steps of the table."""
        return int(self.betas.numel())

    @classmethod
    def from_name(cls, kind: str, n_train_steps: int = 1000, **kwargs) -> "DDPMTable":
        r"""Build a table by name.

        * ``linear``: beta_n from 1e-4 to 0.02 (Ho et al. 2020, sec. 4), scaled by 1000/N;
        * ``scaled_linear``: sqrt(beta) linear from sqrt(0.00085) to sqrt(0.012) (Stable Diffusion);
        * ``cosine``: beta_n = 1 - alpha_bar(n/N)/alpha_bar((n-1)/N), clipped at 0.999
          (Nichol & Dhariwal 2021, eq. 17);
        * ``sigmoid``: beta_n = sigmoid(linspace(-6, 6)) (0.02 - 1e-4) + 1e-4 (Xu et al. 2022, GeoDiff).

        Keyword arguments other than those of ``PARAMETERS[kind]`` raise a ValueError.
        """
        if kind not in cls.KINDS:
            raise ValueError(f"unknown DDPM table kind {kind!r}; expected one of {cls.KINDS}")
        unknown = sorted(set(kwargs) - set(cls.PARAMETERS[kind]))
        if unknown:
            raise ValueError(
                f"unknown parameter(s) {unknown} for the DDPM table {kind!r}; expected n_train_steps and "
                f"any of {list(cls.PARAMETERS[kind])}"
            )
        if isinstance(n_train_steps, bool) or not isinstance(n_train_steps, int) or n_train_steps <= 1:
            raise ValueError(f"n_train_steps must be an integer > 1, got {n_train_steps!r}")
        N = n_train_steps
        if kind == "linear":
            scale = 1000.0 / N
            if "beta_end" not in kwargs and scale * 0.02 >= 1:
                raise ValueError(
                    f"the linear DDPM table scales beta_N = 0.02 by 1000/N, which needs N >= 21 to keep "
                    f"beta_N < 1; got n_train_steps={N} (beta_N would be {scale * 0.02:.3g}; pass beta_end "
                    "to choose it yourself)"
                )
            b0, b1 = kwargs.get("beta_start", scale * 1e-4), kwargs.get("beta_end", scale * 0.02)
            betas = torch.linspace(b0, b1, N, dtype=torch.float64)
        elif kind == "scaled_linear":
            b0, b1 = kwargs.get("beta_start", 0.00085), kwargs.get("beta_end", 0.012)
            betas = torch.linspace(b0**0.5, b1**0.5, N, dtype=torch.float64) ** 2
        elif kind == "cosine":
            s = kwargs.get("s", 0.008)
            f = lambda u: torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
            n = torch.arange(N + 1, dtype=torch.float64)
            ab = f(n / N) / f(torch.zeros((), dtype=torch.float64))
            betas = (1 - ab[1:] / ab[:-1]).clamp(max=kwargs.get("max_beta", 0.999))
        else:  # sigmoid
            b0, b1 = kwargs.get("beta_start", 1e-4), kwargs.get("beta_end", 0.02)
            betas = torch.sigmoid(torch.linspace(-6, 6, N, dtype=torch.float64)) * (b1 - b0) + b0
        return cls(betas)

    def time(self, n) -> torch.Tensor:
        """t = n / N for an integer index n in 0..N (tensor or int). Returns float32."""
        n = torch.as_tensor(n)
        if n.is_floating_point():
            raise ValueError(f"n must be an integer index in 0..{self.n_train_steps}, got dtype {n.dtype}")
        if bool((n < 0).any()) or bool((n > self.n_train_steps).any()):
            raise ValueError(f"n must lie in 0..{self.n_train_steps}, got {n.tolist()}")
        return n.to(torch.float32) / self.n_train_steps

    def index(self, t) -> torch.Tensor:
        """The integer index n with n / N = t; raises ValueError when t is not on the grid."""
        t = check_times(t)
        n = torch.round(_wide(t) * self.n_train_steps)
        if bool((torch.abs(n / self.n_train_steps - _wide(t)) > 1e-6).any()):
            raise ValueError(f"t must be a multiple of 1/N = 1/{self.n_train_steps}, got {t.tolist()}")
        return n.to(torch.long)

    def schedule(self) -> "DiscreteSchedule":
        """This table as a continuous-time :class:`Schedule` (exact at t = n / N)."""
        return DiscreteSchedule(self)

    def __repr__(self) -> str:
        return f"DDPMTable(N={self.n_train_steps}, beta_1={float(self.betas[0]):.3g}, beta_N={float(self.betas[-1]):.3g})"


class DiscreteSchedule(VPSchedule):
    r"""A DDPM table as a continuous-time VP schedule.

    alpha_t^2 = alpha_bar_n exactly at t = n / N; in between, lambda_t is interpolated
    linearly (on the first interval from LOG_SNR_MAX, since lambda_0 = +inf). Training
    times are drawn on the grid: t = n / N with n ~ U{1, ..., N} (Ho et al. 2020, Algorithm 1).

    Three functions, one piecewise-linear lambda_t (chapters 02 and 07):

    * :meth:`log_snr`: a time within 1e-3 / N of a knot n / N is read as the knot itself (this
      absorbs the float32 round-off of n / N, so the table's values are exact on the grid);
    * :meth:`d_log_snr`: the slope N (lambda_{n+1} - lambda_n) of the interval [n/N, (n+1)/N]
      holding t, with the same snapping, so at a knot it is the slope of the interval that starts
      there (the last interval's at t = 1). lambda_t has a kink at every knot: its derivative jumps,
      which limits the order of ODE solvers that step in t (measured in chapter 07);
    * :meth:`t_from_log_snr`: exact inversion, the interval found by ``searchsorted`` on the knots
      and the linear interpolation solved in it, so t_from_log_snr(log_snr(n/N)) = n/N exactly.

    >>> s = DDPMTable.from_name("linear", 1000).schedule()
    >>> t = torch.arange(1001, dtype=torch.float64) / 1000
    >>> bool((s.t_from_log_snr(s.log_snr(t)) == t).all())
    True
    """

    name = "discrete"

    def __init__(self, table: DDPMTable):
        if not isinstance(table, DDPMTable):
            raise ValueError(f"DiscreteSchedule needs a DDPMTable, got {type(table).__name__}")
        self.table = table
        ab = table.alpha_bar
        knots = torch.log(ab) - torch.log1p(-ab)  # lambda_n for n = 1..N
        if not float(knots[0]) < LOG_SNR_MAX:
            raise ValueError(
                f"the table's lambda_1 = log(alpha_bar_1 / (1 - alpha_bar_1)) must be below LOG_SNR_MAX = "
                f"{LOG_SNR_MAX} (the value the first interval starts from), got {float(knots[0]):.4g} "
                f"(beta_1 = {float(table.betas[0]):.3g} is too small)"
            )
        self._knots = torch.cat([torch.tensor([LOG_SNR_MAX], dtype=torch.float64), knots])

    def _position(self, t):
        """pos = t N, with float32 round-off of t = n/N (within 1e-3 of n) snapped onto the knot n."""
        pos = t * self.table.n_train_steps
        return torch.where((pos - torch.round(pos)).abs() < 1e-3, torch.round(pos), pos)

    def _raw_log_snr(self, t):
        N = self.table.n_train_steps
        knots = self._knots.to(device=t.device, dtype=t.dtype)
        pos = self._position(t)
        k = torch.clamp(torch.floor(pos), 0, N - 1).long()
        w = pos - k
        lam = knots[k] + w * (knots[k + 1] - knots[k])
        return torch.where(t == 0, torch.full_like(lam, math.inf), lam)

    def _d_raw_log_snr(self, t):
        N = self.table.n_train_steps
        knots = self._knots.to(device=t.device, dtype=t.dtype)
        k = torch.clamp(torch.floor(self._position(t)), 0, N - 1).long()  # the same interval as _raw_log_snr
        return (knots[k + 1] - knots[k]) * N

    def t_from_log_snr(self, log_snr: torch.Tensor, iterations: int = 64) -> torch.Tensor:
        r"""Invert the piecewise-linear lambda_t exactly (``iterations`` is unused: no bisection).

        With the knots lambda_0 = LOG_SNR_MAX > lambda_1 > ... > lambda_N, find n with
        lambda_{n-1} > y >= lambda_n (``searchsorted``) and solve
        y = lambda_{n-1} + w (lambda_n - lambda_{n-1}) for w: t = (n - 1 + w) / N, and t = n / N
        exactly when y is a knot. Where the table's lambda_N < LOG_SNR_MIN, y = LOG_SNR_MIN gives
        the time where the unclipped lambda_t crosses it (as bisection on the clipped one does).
        NaN, infinite and out-of-range values raise a ValueError.
        """
        log_snr, y = self._check_log_snr(log_snr)
        N = self.table.n_train_steps
        knots = self._knots.to(device=y.device, dtype=y.dtype)  # (N + 1,), decreasing
        flat = y.reshape(-1)
        n = torch.searchsorted(-knots, -flat.contiguous())  # first n with lambda_n <= y, in 0..N
        n = n.clamp(0, N)
        prev = (n - 1).clamp(min=0)
        w = (flat - knots[prev]) / (knots[n] - knots[prev]).where(n > 0, torch.ones_like(flat))
        pos = torch.where((n == 0) | (knots[n] == flat), n.to(y.dtype), prev.to(y.dtype) + w)
        t = (pos / N).reshape(y.shape)
        return t.to(log_snr.dtype if log_snr.is_floating_point() else torch.float32)

    def sample_t(self, batch_size, *, generator=None, device=None):
        """t = n / N with n ~ U{1..N} (Ho et al. 2020, Algorithm 1, line 3)."""
        if int(batch_size) <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        N = self.table.n_train_steps
        n = torch.randint(1, N + 1, (batch_size,), generator=generator, device=device)
        return n.to(torch.float32) / N

    def __repr__(self) -> str:
        return f"DiscreteSchedule({self.table!r})"


SCHEDULES = {
    "linear": VPLinear,
    "scaled_linear": VPScaledLinear,
    "cosine": VPCosine,
    "sigmoid": VPSigmoid,
    "ve": VE,
    "edm": EDM,
    "rectified_flow": RectifiedFlow,
    "cond_ot": CondOT,
}


def get_schedule(name: str, **params) -> Schedule:
    """Build a schedule by name: one of ``SCHEDULES`` or ``"ddpm_<kind>"`` for a DDPM table
    (e.g. ``"ddpm_linear"``, with ``n_train_steps``).

    >>> get_schedule("cosine", s=0.008)
    VPCosine(s=0.008)
    """
    if not isinstance(name, str):
        raise ValueError(f"schedule name must be a string, got {type(name).__name__}")
    if name.startswith("ddpm_"):
        return DDPMTable.from_name(name[len("ddpm_"):], **params).schedule()
    if name not in SCHEDULES:
        valid = sorted(SCHEDULES) + [f"ddpm_{k}" for k in DDPMTable.KINDS]
        raise ValueError(f"unknown schedule {name!r}; expected one of {valid}")
    try:
        return SCHEDULES[name](**params)
    except TypeError as err:
        raise ValueError(f"bad parameters for schedule {name!r}: {err}") from None
