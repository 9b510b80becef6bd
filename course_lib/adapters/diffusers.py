r"""Hugging Face diffusers' schedulers in the course's conventions (introduced in chapter 07).

The course keeps its own convention; this module only translates. diffusers is imported inside
the functions, so ``course_lib`` runs without it. Checked against diffusers 0.42.1
(``tests/test_diffusers_parity.py``: same tables, same DDPM / DDIM steps, same DPM-Solver++(2M)
trajectory).

Notation box
============

==============================  =========================================  ==============================
diffusers                       course_lib                                 note
==============================  =========================================  ==============================
timestep k = 0..N-1             n = k + 1, t = (k + 1) / N                 :func:`times_from_timesteps`
``alphas_cumprod[k]``           ``DDPMTable.alpha_bar[n - 1]``, alpha_t^2   same numbers (diffusers: float32)
"previous timestep" -1          t = 0 (alpha_bar = 1, the data)            the end of every course grid
``set_alpha_to_one=True``       final time t = 0                           DDIM
``set_alpha_to_one=False``      final time t = 1/N (n = 1, not the data)   DDIM
final_sigmas_type "zero"        final time t = 0                           DPM-Solver
final_sigmas_type "sigma_min"   final time t = 1/N                         DPM-Solver
``clip_sample`` (range r)       ``Denoiser(x0_range=(-r, r))``              :func:`denoiser_from_scheduler`
``prediction_type``             ``Denoiser(prediction=...)``               "epsilon" -> "eps", "sample" -> "x0",
                                                                           "v_prediction" -> "v"
``beta_schedule``               ``DDPMTable.from_name(kind)``              "squaredcos_cap_v2" -> "cosine";
                                                                           "linear", "scaled_linear",
                                                                           "sigmoid" keep their names
``model(x, k)``                 ``net(x, t)``                              :func:`net_from_diffusers_model`
==============================  =========================================  ==============================

Convention differences found (diffusers 0.42.1), each covered by a test:

* **Defaults of scaled_linear.** diffusers' schedulers default to beta in [1e-4, 0.02] whatever
  ``beta_schedule`` is; the course's ``"scaled_linear"`` defaults to Stable Diffusion's
  [0.00085, 0.012]. And the course's ``"linear"`` scales its default range by 1000/N, diffusers'
  does not. :func:`table_from_scheduler` passes the scheduler's own values, so both agree.
* **Precision.** diffusers builds its tables in float32, the course in float64: alpha_bar differ
  by < 1e-6; 1 - alpha_bar at n = 1 by ~5e-4 relative (float32 round-off of 1 - 1e-4).
* **leading** spacing: the course's ``ddpm_grid(N, K, "leading")`` is diffusers' grid with
  ``steps_offset=0``; with ``steps_offset=o`` (Stable Diffusion uses 1) every n is o larger.
* **trailing** spacing: diffusers computes round(N - k (N/K)) with ``np.arange``, the course
  round(N - (k N)/K); where the exact value is a half-integer the float64 round-off differs and so
  does n (by 1). For some K diffusers' ``np.arange`` also yields one extra timestep -1 (N = 1000,
  K = 61: ..., 15, -1), which :func:`times_from_timesteps` refuses.
* **linspace** spacing: diffusers uses round(linspace(0, N-1, K)) + 1, the course
  round(linspace(N, 1, K)); round-half-to-even then differs by 1 at half-integers (N = 1000,
  K = 3: n = 1000, 501, 1 vs 1000, 500, 1), and for K = 1 diffusers' only step is at n = 1.
* **DDIM's previous timestep** is always k - N // K, whatever the spacing. With 'linspace' (or
  'trailing' when K does not divide N) that is not the next timestep of its list: one step lands
  on one noise level and the next step starts from another. No course grid reproduces that chain;
  :func:`step_times` gives the (t, s) of each single step, and :func:`sampling_grid` refuses it.
* **DDIM with clip_sample** recomputes eps_hat from the clipped x0_hat only with
  ``use_clipped_model_output=True``; the course's ``ddim_step`` always does (it only sees x0_hat).
* **DPMSolverMultistepScheduler** builds 'linspace' and 'leading' grids from K + 1 points and drops
  the last (so they differ from DDPM/DDIM grids of the same name), has no "sigmoid" schedule, and
  takes a first-order last step whenever the final sigma is zero, as the course's
  ``dpm_solver_pp_2m_step`` does.
* **DDPM's last step**: diffusers clamps the posterior variance at 1e-20 and adds noise of std
  1e-10 where the course adds none (variance exactly 0).
* **Noise**: on the CPU, diffusers' ``randn_tensor(shape, generator=g)`` is ``torch.randn(shape,
  generator=g)``, so a generator in the same state gives ``ddpm_step`` the same noise.

>>> times_from_timesteps([999, 499, 0], 1000).tolist()
[1.0, 0.5, 0.0010000000474974513]
>>> prediction_from_diffusers("v_prediction")
'v'
"""

from __future__ import annotations

from typing import Callable

import torch

from ..parameterization import Denoiser
from ..schedules import DDPMTable, check_times

__all__ = [
    "PREDICTION_TYPES",
    "BETA_SCHEDULES",
    "prediction_from_diffusers",
    "table_from_scheduler",
    "times_from_timesteps",
    "timesteps_from_times",
    "sampling_grid",
    "step_times",
    "net_from_diffusers_model",
    "denoiser_from_scheduler",
]

PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
"""diffusers' ``prediction_type`` -> the course's ``Denoiser`` prediction."""

BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear",
                  "squaredcos_cap_v2": "cosine", "sigmoid": "sigmoid"}
"""diffusers' ``beta_schedule`` -> the kind of :meth:`DDPMTable.from_name`."""

_SPECIAL_SIGMAS = ("use_karras_sigmas", "use_lu_lambdas", "use_exponential_sigmas", "use_beta_sigmas",
                   "use_flow_sigmas")


def _config(scheduler):
    config = getattr(scheduler, "config", None)
    if config is None or not hasattr(config, "num_train_timesteps"):
        raise ValueError(f"expected a diffusers scheduler (with a .config), got {type(scheduler).__name__}")
    return config


def _kind(scheduler) -> str:
    """'ddpm', 'ddim' or 'dpm_solver' for the three schedulers this adapter knows."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    for cls, kind in ((DDPMScheduler, "ddpm"), (DDIMScheduler, "ddim"), (DPMSolverMultistepScheduler, "dpm_solver")):
        if isinstance(scheduler, cls):
            return kind
    raise ValueError(
        "expected a DDPMScheduler, DDIMScheduler or DPMSolverMultistepScheduler, got "
        f"{type(scheduler).__name__}"
    )


def prediction_from_diffusers(prediction_type) -> str:
    """The course's prediction name for diffusers' ``prediction_type`` (a string or a scheduler).

    "epsilon" -> "eps", "sample" -> "x0", "v_prediction" -> "v" (Salimans & Ho 2022,
    arXiv:2202.00512, sec. 4: the same v = alpha_t eps - sigma_t x0 in both libraries).

    Introduced in chapter 07.
    """
    if not isinstance(prediction_type, str):
        prediction_type = _config(prediction_type).prediction_type
    if prediction_type not in PREDICTION_TYPES:
        hint = (" ('flow_prediction' is the course's prediction='velocity' on the RectifiedFlow schedule of "
                "chapter 08, not a DDPM table)" if prediction_type == "flow_prediction" else "")
        raise ValueError(f"unknown diffusers prediction_type {prediction_type!r}; expected one of "
                         f"{sorted(PREDICTION_TYPES)}{hint}")
    return PREDICTION_TYPES[prediction_type]


def table_from_scheduler(scheduler) -> DDPMTable:
    """The course's :class:`DDPMTable` of a diffusers scheduler, built from its config by name.

    ``beta_schedule`` maps through :data:`BETA_SCHEDULES` with the scheduler's own
    ``beta_start``/``beta_end`` (``trained_betas`` are used as given). The result is checked
    against ``scheduler.alphas_cumprod`` (|difference| <= 1e-5; diffusers works in float32).
    ``rescale_betas_zero_snr`` (beta_N = 1, alpha_bar_N = 0; Lin et al. 2024, arXiv:2305.08891)
    has no DDPMTable (every beta_n must lie in (0, 1)) and raises.

    Introduced in chapter 07.
    """
    config = _config(scheduler)
    N = int(config.num_train_timesteps)
    if getattr(config, "rescale_betas_zero_snr", False):
        raise ValueError("rescale_betas_zero_snr=True gives beta_N = 1 (alpha_bar_N = 0), which a DDPMTable "
                         "cannot hold (every beta_n must lie in (0, 1))")
    if getattr(config, "trained_betas", None) is not None:
        table = DDPMTable(torch.as_tensor(config.trained_betas, dtype=torch.float64))
    else:
        name = config.beta_schedule
        if name not in BETA_SCHEDULES:
            raise ValueError(f"diffusers beta_schedule {name!r} has no DDPMTable kind; expected one of "
                             f"{sorted(BETA_SCHEDULES)}")
        kind = BETA_SCHEDULES[name]
        params = {}
        if kind != "cosine":  # diffusers' cosine has no beta range (s = 0.008, max_beta = 0.999 as the course's)
            params = {"beta_start": float(config.beta_start), "beta_end": float(config.beta_end)}
        table = DDPMTable.from_name(kind, N, **params)
    theirs = torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float64)
    if theirs.shape != table.alpha_bar.shape or float((theirs - table.alpha_bar).abs().max()) > 1e-5:
        raise ValueError(
            f"the table rebuilt from the config ({table!r}) does not match the scheduler's alphas_cumprod "
            "(was it changed after construction?)"
        )
    return table


def times_from_timesteps(timesteps, n_train_steps: int) -> torch.Tensor:
    """Course times t = (k + 1) / N for diffusers' integer timesteps k in 0..N-1 (float32).

    diffusers' ``alphas_cumprod[k]`` is the course's alpha_bar_n with n = k + 1, and the course's
    n lives at t = n / N (:meth:`DDPMTable.time`). Example: N = 1000, k = 999 -> t = 1, k = 0 ->
    t = 1/1000. Introduced in chapter 07.
    """
    if isinstance(n_train_steps, bool) or not isinstance(n_train_steps, int) or n_train_steps < 1:
        raise ValueError(f"n_train_steps must be a positive integer, got {n_train_steps!r}")
    k = torch.as_tensor(timesteps)
    if k.is_floating_point():
        if not bool((k == torch.round(k)).all()):
            raise ValueError(
                f"diffusers timesteps must be integers (Karras-type fractional timesteps have no n), got {k.tolist()}"
            )
        k = k.to(torch.long)
    if bool((k < 0).any()) or bool((k > n_train_steps - 1).any()):
        raise ValueError(
            f"diffusers timesteps must lie in 0..N-1 = 0..{n_train_steps - 1}, got {k.tolist()} (diffusers' "
            "'trailing' spacing yields a spurious -1 for some step counts, e.g. 61 of 1000)"
        )
    return (k.to(torch.float64) + 1).div(n_train_steps).to(torch.float32)


def timesteps_from_times(t, n_train_steps: int) -> torch.Tensor:
    """diffusers' integer timesteps k = N t - 1 for course times t = n / N with n in 1..N (long).

    Raises for t = 0 (the data has no diffusers timestep) and for t off the grid n / N.
    Introduced in chapter 07.
    """
    if isinstance(n_train_steps, bool) or not isinstance(n_train_steps, int) or n_train_steps < 1:
        raise ValueError(f"n_train_steps must be a positive integer, got {n_train_steps!r}")
    t = check_times(torch.as_tensor(t) if not isinstance(t, (int, float)) else t)
    position = t.to(torch.float64) * n_train_steps  # n = N t
    n = torch.round(position)
    if bool(((position - n).abs() > 1e-3).any()):
        raise ValueError(f"t must be a multiple of 1/N = 1/{n_train_steps} (diffusers models only see integer "
                         f"timesteps), got {t.tolist()}")
    if bool((n < 1).any()):
        raise ValueError(f"t = 0 (the data) has no diffusers timestep; expected t in 1/N..1, got {t.tolist()}")
    return n.to(torch.long) - 1


def _final_time(kind: str, config, N: int) -> float:
    if kind == "ddpm":
        return 0.0  # previous timestep -1 -> alpha_bar = 1
    if kind == "ddim":
        return 0.0 if config.set_alpha_to_one else 1.0 / N  # final_alpha_cumprod = 1 or alphas_cumprod[0]
    if config.final_sigmas_type == "zero":
        return 0.0
    return 1.0 / N  # "sigma_min": the sigma of alphas_cumprod[0]


def _check_dpm_sigmas(config) -> None:
    used = [name for name in _SPECIAL_SIGMAS if getattr(config, name, False)]
    if used:
        raise ValueError(f"{used} put diffusers' timesteps off the integer grid; only the plain "
                         "(timestep_spacing) grids map to course times")


def sampling_grid(scheduler) -> torch.Tensor:
    """The decreasing course time grid a diffusers scheduler walks after ``set_timesteps``.

    times_from_timesteps(scheduler.timesteps) followed by the final time: 0 for DDPM; 0 or 1/N for
    DDIM (``set_alpha_to_one``) and DPM-Solver (``final_sigmas_type`` "zero" / "sigma_min").
    Feeding it to :func:`course_lib.samplers.loop.sample` reproduces the scheduler's steps. Raises
    where diffusers' chain is not a grid: DDIM whose previous timestep k - N // K is not the next
    listed timestep ('linspace', or 'trailing' when K does not divide N), DDIM whose last step stays
    at n = 1 ('leading', steps_offset 0, set_alpha_to_one False), and DPM-Solver's Karras / Lu /
    exponential / beta / flow sigmas.

    Args:
        scheduler: a DDPMScheduler (set_timesteps optional: the full chain), DDIMScheduler or
            DPMSolverMultistepScheduler (after set_timesteps).
    Returns:
        (K + 1,) float32 times, strictly decreasing.

    Introduced in chapter 07.
    """
    from ..time_grids import check_grid

    kind = _kind(scheduler)
    config = _config(scheduler)
    N = int(config.num_train_timesteps)
    if kind != "ddpm" and scheduler.num_inference_steps is None:
        raise ValueError(f"call scheduler.set_timesteps(K) first ({type(scheduler).__name__} has no grid yet)")
    if kind == "dpm_solver":
        _check_dpm_sigmas(config)
    k = torch.as_tensor(scheduler.timesteps).to(torch.long)
    times = times_from_timesteps(k, N)  # checks 0 <= k <= N - 1
    if kind == "ddim":
        jump = N // scheduler.num_inference_steps
        previous = k - jump
        if not torch.equal(previous[:-1], k[1:]):
            i = int(torch.nonzero(previous[:-1] != k[1:])[0])
            raise ValueError(
                f"DDIMScheduler (timestep_spacing={config.timestep_spacing!r}, {scheduler.num_inference_steps} steps) "
                f"steps from k={int(k[i])} to k - N//K = {int(previous[i])}, but its next timestep is {int(k[i + 1])}: "
                "not one grid; use step_times(scheduler, timestep) for single steps"
            )
        last = int(previous[-1])
        final = (last + 1) / N if last >= 0 else _final_time(kind, config, N)
    else:
        final = _final_time(kind, config, N)
    if float(times[-1]) <= final + 0.5 / N:
        raise ValueError(
            f"the scheduler's last step goes from t={float(times[-1]):.6g} to t={final:.6g}, alpha_bar unchanged "
            "(as in DDIM with 'leading' spacing, steps_offset=0 and set_alpha_to_one=False); the course's "
            "grids are strictly decreasing. Use steps_offset=1 or set_alpha_to_one=True"
        )
    return check_grid(torch.cat([times, torch.tensor([final], dtype=torch.float32)]))


def step_times(scheduler, timestep) -> tuple[torch.Tensor, torch.Tensor]:
    """The course times (t, s) between which one ``scheduler.step(..., timestep, ...)`` moves.

    DDPM: s from ``scheduler.previous_timestep``; DDIM: s from k - N // K (final_alpha_cumprod
    below 0); DPM-Solver: the next entry of :func:`sampling_grid`. 0-d float32 tensors, ready for
    ``ddpm_step`` / ``ddim_step``. Introduced in chapter 07.
    """
    kind = _kind(scheduler)
    config = _config(scheduler)
    N = int(config.num_train_timesteps)
    k = int(timestep)
    t = times_from_timesteps(torch.tensor(k), N)
    if kind == "dpm_solver":
        grid = sampling_grid(scheduler)
        index = (torch.as_tensor(scheduler.timesteps).to(torch.long) == k).nonzero()
        if index.numel() == 0:
            raise ValueError(f"timestep {k} is not one of the scheduler's timesteps")
        return t, grid[int(index[0]) + 1]
    if kind == "ddpm":
        previous = int(scheduler.previous_timestep(k))
        final = 0.0
    else:
        if scheduler.num_inference_steps is None:
            raise ValueError("call scheduler.set_timesteps(K) first (DDIMScheduler has no grid yet)")
        previous = k - N // scheduler.num_inference_steps
        final = _final_time(kind, config, N)
    s = torch.tensor((previous + 1) / N if previous >= 0 else final, dtype=torch.float32)
    return t, s


def net_from_diffusers_model(model: Callable, n_train_steps: int) -> Callable:
    """Wrap a diffusers-style model ``model(x, k)`` (integer timesteps k (B,)) as a course network
    ``net(x, t)`` with k = N t - 1 (t must lie on the grid n / N, n >= 1).

    Outputs with a ``.sample`` attribute (diffusers' UNet2DModel) or tuples are unpacked.
    Introduced in chapter 07.
    """
    if not callable(model):
        raise ValueError(f"model must be callable as model(x, timesteps), got {type(model).__name__}")
    if isinstance(n_train_steps, bool) or not isinstance(n_train_steps, int) or n_train_steps < 1:
        raise ValueError(f"n_train_steps must be a positive integer, got {n_train_steps!r}")

    def net(x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        k = timesteps_from_times(t, n_train_steps).to(x.device)  # (B,)
        out = model(x, k, **cond)
        if hasattr(out, "sample"):
            out = out.sample
        elif isinstance(out, tuple):
            out = out[0]
        return out

    return net


def denoiser_from_scheduler(model: Callable, scheduler) -> Denoiser:
    """A course :class:`Denoiser` that reads ``model``'s output the way ``scheduler`` does.

    Denoiser(net_from_diffusers_model(model, N), table_from_scheduler(scheduler).schedule(),
    prediction_from_diffusers(scheduler), x0_range=(-r, r) if clip_sample else None).
    ``thresholding`` (dynamic, per-sample; Saharia et al. 2022, arXiv:2205.11487) has no
    course equivalent and raises. Introduced in chapter 07.
    """
    config = _config(scheduler)
    if getattr(config, "thresholding", False):
        raise ValueError("thresholding=True (dynamic thresholding) has no course equivalent; x0_range is a fixed clip")
    N = int(config.num_train_timesteps)
    x0_range = None
    if getattr(config, "clip_sample", False):
        r = float(config.clip_sample_range)
        x0_range = (-r, r)
    return Denoiser(net_from_diffusers_model(model, N), table_from_scheduler(scheduler).schedule(),
                    prediction_from_diffusers(scheduler), x0_range=x0_range)
