"""DPM-Solver++(3M) and SDE-DPM-Solver++(2M) against diffusers' DPMSolverMultistepScheduler (issue 9).

Set up as the DPM-Solver++(2M) parity of tests/test_diffusers_parity.py: the same model read by
diffusers as model(x, k) and by the course through course_lib.adapters.diffusers
(denoiser_from_scheduler, sampling_grid), the same grid, and for the SDE solver the same noise
(the same generator seed, or the same tensors passed as diffusers' variance_noise and the
course's noise list). Both sides work in float32; errors are relative to the scale of x.
"""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
from diffusers import DPMSolverMultistepScheduler  # noqa: E402

from course_lib.adapters.diffusers import denoiser_from_scheduler, sampling_grid  # noqa: E402
from course_lib.samplers import dpm_solver_pp_3m_step, sample, sde_dpm_solver_pp_2m_step  # noqa: E402
from test_diffusers_parity import make_model  # noqa: E402  (the same stand-in for a U-Net)

N = 1000


def x_batch():
    return torch.randn(5, 4, generator=torch.Generator().manual_seed(0))


def relative_errors(ours, theirs):
    return [float((a - b).abs().max() / b.abs().max()) for a, b in zip(ours, theirs)]


def run_diffusers(scheduler, model, x, generator=None, noises=None):
    trajectory = []
    for i, k in enumerate(scheduler.timesteps):
        kwargs = {"variance_noise": noises[i]} if noises is not None else {"generator": generator}
        x = scheduler.step(model(x, k.expand(x.shape[0])), k, x, **kwargs).prev_sample
        trajectory.append(x)
    return trajectory


def run_course(scheduler, model, x, step, **kwargs):
    trajectory = []
    sample(denoiser_from_scheduler(model, scheduler), x.clone(), sampling_grid(scheduler), step,
           callback=lambda info: trajectory.append(info.x), **kwargs)
    return trajectory


# diffusers drops to second order on the next-to-last step when it has < 15 steps and
# lower_order_final=True; the course cannot (a step does not know how many remain): 20 steps, or
# lower_order_final=False.
CASES = [("linspace", 20, True, "linear"), ("trailing", 20, True, "squaredcos_cap_v2"),
         ("leading", 12, False, "linear"), ("trailing", 12, False, "squaredcos_cap_v2")]


@pytest.mark.parametrize("spacing, steps, lower_order_final, name", CASES)
def test_dpm_solver_pp_3m_as_diffusers_equals_diffusers(spacing, steps, lower_order_final, name):
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=N, beta_schedule=name, algorithm_type="dpmsolver++",
                                            solver_order=3, timestep_spacing=spacing,
                                            lower_order_final=lower_order_final)
    scheduler.set_timesteps(steps)
    model, x = make_model(), x_batch()
    theirs = run_diffusers(scheduler, model, x.clone())
    ours = run_course(scheduler, model, x, dpm_solver_pp_3m_step, as_diffusers=True)
    errors = relative_errors(ours, theirs)
    assert max(errors) < 2e-5, errors  # float32 on both sides; measured <= 1e-6 on the linear table
    assert float(theirs[-1].abs().max()) > 0.1
    # the course's default (the D2 term at full weight) differs from the third step on, by far more
    default = run_course(scheduler, model, x, dpm_solver_pp_3m_step)
    gaps = relative_errors(default, theirs)
    assert max(gaps[:2]) < 2e-5 and max(gaps[2:]) > 1e-4, gaps


def test_diffusers_lower_order_second_is_the_one_difference_below_15_steps():
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=N, algorithm_type="dpmsolver++", solver_order=3)
    scheduler.set_timesteps(12)  # lower_order_final=True by default
    model, x = make_model(), x_batch()
    theirs = run_diffusers(scheduler, model, x.clone())
    ours = run_course(scheduler, model, x, dpm_solver_pp_3m_step, as_diffusers=True)
    errors = relative_errors(ours, theirs)
    assert max(errors[:-2]) < 2e-5 and errors[-2] > 1e-4, errors


@pytest.mark.parametrize("spacing, steps, name", [("linspace", 12, "linear"), ("trailing", 20, "squaredcos_cap_v2")])
def test_sde_dpm_solver_pp_2m_equals_diffusers_with_the_same_noise(spacing, steps, name):
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=N, beta_schedule=name,
                                            algorithm_type="sde-dpmsolver++", solver_order=2,
                                            solver_type="midpoint", timestep_spacing=spacing)
    scheduler.set_timesteps(steps)
    model, x = make_model(), x_batch()
    # the same generator: diffusers' randn_tensor on the CPU is torch.randn, one draw per step
    theirs = run_diffusers(scheduler, model, x.clone(), generator=torch.Generator().manual_seed(3))
    ours = run_course(scheduler, model, x, sde_dpm_solver_pp_2m_step, generator=torch.Generator().manual_seed(3))
    errors = relative_errors(ours, theirs)
    assert max(errors) < 2e-5, errors
    # explicit noise: diffusers' variance_noise and the course's noise list
    g = torch.Generator().manual_seed(11)
    noises = [torch.randn(x.shape, generator=g) for _ in range(steps)]
    scheduler.set_timesteps(steps)
    theirs = run_diffusers(scheduler, model, x.clone(), noises=noises)
    ours = run_course(scheduler, model, x, sde_dpm_solver_pp_2m_step, noise=noises)
    errors = relative_errors(ours, theirs)
    assert max(errors) < 2e-5, errors
    assert float(theirs[-1].abs().max()) > 0.1
