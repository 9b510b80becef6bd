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
from .ddim import ddim_step
from .ddpm import ddpm_step, posterior_coefficients
from .loop import StepInfo, Trajectory, prior_sample, sample

STEPS = {"ddpm": ddpm_step, "ddim": ddim_step}

__all__ = ["sample", "prior_sample", "StepInfo", "Trajectory", "ddpm_step", "ddim_step",
           "posterior_coefficients", "STEPS"]
