"""Samplers: step functions driven by one loop (:func:`course_lib.samplers.loop.sample`).

>>> import torch
>>> from course_lib.schedules import VPCosine
>>> from course_lib.parameterization import Denoiser
>>> zero_net = lambda x, t: torch.zeros_like(x)       # predicts eps = 0
>>> den = Denoiser(zero_net, VPCosine(), prediction="eps")
>>> x = sample(den, torch.ones(3, 2), uniform_grid(10), ddim_step)
>>> x.shape
torch.Size([3, 2])
"""

from ..time_grids import uniform_grid  # noqa: F401  (re-exported for convenience)
from .consistency import consistency_step
from .ddim import ddim_step
from .ddpm import ddpm_step, posterior_coefficients
from .dpm_solver import MultistepState, dpm_solver_1_step, dpm_solver_2_step, dpm_solver_pp_2m_step, half_log_snr
from .inversion import ddim_invert
from .loop import StepInfo, Trajectory, prior_sample, sample
from .ode import euler_step, heun_step, pf_ode_velocity
from .sde import drift_and_diffusion, euler_maruyama_step

STEPS = {
    "ddpm": ddpm_step,
    "ddim": ddim_step,
    "euler": euler_step,
    "heun": heun_step,
    "euler_maruyama": euler_maruyama_step,
    "dpm_solver_1": dpm_solver_1_step,
    "dpm_solver_2": dpm_solver_2_step,
    "dpm_solver_pp_2m": dpm_solver_pp_2m_step,
    "consistency": consistency_step,
}

__all__ = ["sample", "prior_sample", "StepInfo", "Trajectory", "ddpm_step", "ddim_step",
           "posterior_coefficients", "STEPS",
           "pf_ode_velocity", "euler_step", "heun_step", "drift_and_diffusion", "euler_maruyama_step",
           "half_log_snr", "MultistepState", "dpm_solver_1_step", "dpm_solver_2_step",
           "dpm_solver_pp_2m_step", "ddim_invert", "consistency_step"]
