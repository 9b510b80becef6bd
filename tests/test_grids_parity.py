"""Time grids against diffusers (issue 9): the SD3 timestep shift of FlowMatchEulerDiscreteScheduler
and the Karras sigmas of EulerDiscreteScheduler(use_karras_sigmas=True), chapter 07."""
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffusers import EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler  # noqa: E402

from course_lib.schedules import DDPMTable  # noqa: E402
from course_lib.time_grids import karras_grid, shift_grid, uniform_grid  # noqa: E402

F64 = torch.float64


@pytest.mark.parametrize("shift", [1.0, 3.0, 0.5, 7.0])
@pytest.mark.parametrize("steps", [1, 4, 28, 50])
def test_shift_grid_equals_flow_match_euler_sigmas(shift, steps):
    """diffusers' sigma is the course's t on the straight path (sigma_t = t): the same numbers."""
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    grid = uniform_grid(steps)  # (steps + 1,) from 1 to 0
    scheduler.set_timesteps(sigmas=grid[:-1].tolist())  # diffusers shifts the sigmas it is given
    theirs = scheduler.sigmas.double()
    ours = shift_grid(grid.double(), shift)
    torch.testing.assert_close(ours, theirs, rtol=2e-7, atol=2e-7)  # diffusers works in float32
    assert shift_grid(grid, shift).dtype == torch.float32
    assert float(ours[0]) == 1.0 and float(ours[-1]) == 0.0  # the map fixes both ends


def test_shift_grid_default_flow_match_grid_and_its_properties():
    """diffusers' default grid runs from sigma_max to a *shifted* sigma_min, then shifts again:
    the course reproduces it as shift_grid of that unshifted linspace."""
    shift, steps, N = 3.0, 10, 1000
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=N, shift=shift)
    scheduler.set_timesteps(steps)
    sigma_min = float(scheduler.sigma_min)
    base = torch.cat([torch.from_numpy(np.linspace(1.0, sigma_min, steps)), torch.zeros(1, dtype=F64)])
    torch.testing.assert_close(shift_grid(base, shift), scheduler.sigmas.double(), rtol=2e-7, atol=2e-7)
    t = uniform_grid(8).double()
    odds = lambda u: u[1:-1] / (1 - u[1:-1])  # noqa: E731  noise-to-signal sigma_t / alpha_t on the straight path
    torch.testing.assert_close(odds(shift_grid(t, shift)), shift * odds(t))  # lambda' = lambda - 2 log(shift)
    assert torch.equal(shift_grid(t, 1.0), t)
    inv = shift_grid(t.flip(0), shift)  # an inversion grid stays increasing
    assert bool((inv[1:] > inv[:-1]).all())
    for bad in (0.0, -1.0, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="shift must be a finite number > 0"):
            shift_grid(t, bad)
    with pytest.raises(ValueError, match="finite"):
        shift_grid(torch.tensor([1.0, float("nan"), 0.0]), 2.0)


@pytest.mark.parametrize("steps", [5, 10, 25])
@pytest.mark.parametrize("kind", ["linear", "scaled_linear"])
def test_karras_grid_noise_levels_equal_euler_karras_sigmas(kind, steps):
    """EulerDiscreteScheduler(use_karras_sigmas=True): eq. 5 between the table's sigma at its first and
    last knots, sigma = sqrt((1 - alpha_bar) / alpha_bar) = exp(-lambda / 2).

    diffusers keeps alpha_bar in float32, and 1 - alpha_bar_1 (about 1e-4) loses about 1e-4 of its
    relative precision to cancellation, so its public sigmas agree to rtol 2e-4 only. Its eq. 5 itself
    (``_convert_to_karras``), fed the course's float64 end points, agrees to 1e-12 with the float64 grid.
    """
    N = 1000
    params = {"linear": dict(beta_start=1e-4, beta_end=0.02), "scaled_linear": dict(beta_start=0.00085, beta_end=0.012)}[kind]
    scheduler = EulerDiscreteScheduler(num_train_timesteps=N, beta_schedule=kind, use_karras_sigmas=True,
                                       timestep_spacing="linspace", **params)
    scheduler.set_timesteps(steps)
    theirs = scheduler.sigmas.double()  # (steps + 1,), the last one 0
    schedule = DDPMTable.from_name(kind, N).schedule()
    for dtype in (torch.float32, F64):
        grid = karras_grid(schedule, steps, dtype=dtype)
        assert grid.dtype == dtype and grid.shape == (steps + 1,) and float(grid[-1]) == 0.0
        noise = torch.exp(-schedule.log_snr(grid[:-1].double()) / 2)
        torch.testing.assert_close(noise, theirs[:-1], rtol=2e-4, atol=0)
    grid = karras_grid(schedule, steps, dtype=F64)
    assert float(grid[0]) == 1.0 and float(grid[-2]) == 1.0 / N  # the table's last and first knots
    noise = torch.exp(-schedule.log_snr(grid[:-1]) / 2)
    eq5 = torch.as_tensor(np.asarray(scheduler._convert_to_karras(
        in_sigmas=torch.tensor([float(noise[0]), float(noise[-1])], dtype=F64), num_inference_steps=steps)), dtype=F64)
    torch.testing.assert_close(noise, eq5, rtol=1e-12, atol=0)  # float64 keeps the grid exact
    noise32 = torch.exp(-schedule.log_snr(karras_grid(schedule, steps)[:-1].double()) / 2)
    torch.testing.assert_close(noise32, eq5, rtol=1e-5, atol=0)  # float32 times: round-off of t only
