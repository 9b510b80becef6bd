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
from .dpm_solver import MultistepHistory, dpm_solver_pp_3m_step, sde_dpm_solver_pp_2m_step
from .edm import edm_heun_step, edm_stochastic_step
from .inversion import ddim_invert
from .langevin import langevin_corrector, predictor_corrector_step
from .loop import StepInfo, Trajectory, prior_sample, sample
from .ode import euler_step, heun_step, pf_ode_velocity
from .sde import drift_and_diffusion, euler_maruyama_step, reverse_sde_step

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
    "dpm_solver_pp_3m": dpm_solver_pp_3m_step,
    "sde_dpm_solver_pp_2m": sde_dpm_solver_pp_2m_step,
    "edm_heun": edm_heun_step,
    "edm_stochastic": edm_stochastic_step,
    "reverse_sde": reverse_sde_step,
    "predictor_corrector": predictor_corrector_step,
}

__all__ = ["sample", "prior_sample", "StepInfo", "Trajectory", "ddpm_step", "ddim_step",
           "posterior_coefficients", "STEPS",
           "pf_ode_velocity", "euler_step", "heun_step", "drift_and_diffusion", "euler_maruyama_step",
           "half_log_snr", "MultistepState", "dpm_solver_1_step", "dpm_solver_2_step",
           "dpm_solver_pp_2m_step", "ddim_invert", "consistency_step",
           "MultistepHistory", "dpm_solver_pp_3m_step", "sde_dpm_solver_pp_2m_step", "edm_heun_step",
           "edm_stochastic_step", "reverse_sde_step", "langevin_corrector", "predictor_corrector_step"]
