"""Chapter 16's editing tools: SDEdit's start, inpainting by replacement, RePaint's resampling, null-text inversion."""

import pytest
import torch

from course_lib.conditioning import PromptGuidance
from course_lib.conditioning.editing import (Inpainting, NullTextGuidance, grid_from, keep_from_repaint_mask,
                                             null_text_optimisation, repaint_step, sdedit_start)
from course_lib.networks.unet import UNet
from course_lib.parameterization import Denoiser
from course_lib.samplers import ddim_step, ddpm_step, prior_sample, sample
from course_lib.schedules import get_schedule
from course_lib.time_grids import ddpm_grid


def _net(seed=0, **kw):
    torch.manual_seed(seed)
    net = UNet(in_channels=1, base_channels=16, channel_mults=(1,), attention_levels=(), **kw)
    torch.nn.init.normal_(net.conv_out.weight, 0, 0.05)
    return net.eval()


class Counting:
    """A denoiser that counts its calls."""

    def __init__(self, denoiser):
        self.denoiser, self.schedule, self.calls = denoiser, denoiser.schedule, 0

    def __call__(self, x_t, t):
        self.calls += 1
        return self.denoiser(x_t, t)


def test_sdedit_start_interpolates_between_guide_and_noise():
    schedule = get_schedule("ddpm_linear")
    guide, eps = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    for t0 in (0.3, 0.7, 1.0):
        p = schedule.points(torch.tensor([t0], dtype=torch.float64))[0]
        torch.testing.assert_close(sdedit_start(schedule, guide, t0, noise=eps), p.alpha * guide + p.sigma * eps)
    assert torch.equal(sdedit_start(schedule, guide, 0.0, noise=eps), guide)
    a = sdedit_start(schedule, guide, 0.5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, sdedit_start(schedule, guide, 0.5, generator=torch.Generator().manual_seed(1)))
    with pytest.raises(ValueError, match=r"t0 must be a number in \[0.0, 1.0\]"):
        sdedit_start(schedule, guide, 1.5)
    with pytest.raises(ValueError, match="noise must have the guide's shape"):
        sdedit_start(schedule, guide, 0.5, noise=torch.randn(2, 1, 8, 8))
    grid = ddpm_grid(1000, 10)
    cut = grid_from(grid, 0.5)
    assert float(cut[0]) == 0.5 and bool((cut[1:] < 0.5).all()) and float(cut[-1]) == float(grid[-1])
    with pytest.raises(ValueError, match="no time of the grid lies below"):
        grid_from(torch.tensor([1.0, 0.5]), 0.2)


@pytest.mark.parametrize("step", [ddim_step, ddpm_step])
def test_inpainting_keeps_the_known_pixels_and_fills_the_rest(step):
    schedule = get_schedule("ddpm_linear")
    denoiser = Denoiser(_net(), schedule)
    known = torch.rand(4, 1, 8, 8) * 2 - 1
    keep = torch.zeros(1, 1, 8, 8)
    keep[..., :4, :] = 1  # keep the top half
    inpaint = Inpainting(denoiser, known, keep)
    x_T = prior_sample(schedule, (4, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = sample(inpaint, x_T, ddpm_grid(1000, 20), step, generator=torch.Generator().manual_seed(1))
        plain = sample(denoiser, x_T, ddpm_grid(1000, 20), step, generator=torch.Generator().manual_seed(1))
    assert float((out - known)[..., :4, :].abs().max()) < 1e-5        # kept, up to float rounding
    final = inpaint.compose(out)
    assert torch.equal(final[..., :4, :], known[..., :4, :])             # and exactly after pasting back
    assert torch.equal(final[..., 4:, :], out[..., 4:, :])
    assert not torch.allclose(out[..., 4:, :], plain[..., 4:, :])       # the fill reads the known half


def test_mask_conventions_and_errors():
    repaint_mask = torch.tensor([[0.0, 1.0]])
    assert keep_from_repaint_mask(repaint_mask).tolist() == [[1.0, 0.0]]
    denoiser = Denoiser(_net(), get_schedule("ddpm_linear"))
    with pytest.raises(ValueError, match="keep must hold only 0"):
        Inpainting(denoiser, torch.zeros(1, 1, 8, 8), torch.full((1, 1, 8, 8), 0.5))
    with pytest.raises(ValueError, match="does not broadcast"):
        Inpainting(denoiser, torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 4, 4))
    with pytest.raises(ValueError, match="does not match the known image"):
        Inpainting(denoiser, torch.zeros(2, 1, 8, 8), torch.ones(1, 1, 8, 8))(torch.zeros(3, 1, 8, 8), torch.full((3,), 0.5))


def test_repaint_step_reduces_to_its_inner_step_and_costs_resample_times_jump():
    schedule = get_schedule("ddpm_linear")
    denoiser = Counting(Denoiser(_net(), schedule))
    x = torch.randn(2, 1, 8, 8)
    t, s = schedule.points(torch.tensor([0.6, 0.5], dtype=torch.float64))
    with torch.no_grad():
        one, _, _ = repaint_step(denoiser, x, t, s, generator=torch.Generator().manual_seed(3))
        ref, _, _ = ddpm_step(denoiser, x, t, s, generator=torch.Generator().manual_seed(3))
    assert torch.equal(one, ref)
    denoiser.calls = 0
    grid = ddpm_grid(1000, 10)
    with torch.no_grad():
        sample(denoiser, torch.randn(2, 1, 8, 8), grid, repaint_step, jump_length=3, resample=4,
               generator=torch.Generator().manual_seed(0))
    assert denoiser.calls == 10 * 3 * 4
    with pytest.raises(ValueError, match="resample must be an int >= 1"):
        repaint_step(denoiser, x, t, s, resample=0)


def test_repaint_jump_back_is_the_forward_transition():
    """Noising x_s back to t must give q(x_t | x0): check the variance on an exact Gaussian path point."""
    schedule = get_schedule("ddpm_linear")
    t, s = schedule.points(torch.tensor([0.7, 0.4], dtype=torch.float64))
    x0 = torch.zeros(200000)
    x_s = s.alpha * x0 + s.sigma * torch.randn(200000, generator=torch.Generator().manual_seed(0))
    ratio = t.alpha / s.alpha
    x_t = ratio * x_s + (t.sigma ** 2 - ratio ** 2 * s.sigma ** 2) ** 0.5 * torch.randn(200000, generator=torch.Generator().manual_seed(1))
    assert abs(float(x_t.std()) - t.sigma) < 0.005


def test_null_text_optimisation_makes_guided_reconstruction_closer():
    schedule = get_schedule("ddpm_linear")
    torch.manual_seed(0)
    net = UNet(in_channels=1, base_channels=16, channel_mults=(1,), attention_levels=(0,), context_dim=8)
    for p in net.parameters():
        torch.nn.init.normal_(p, 0, 0.05)
    net.eval().requires_grad_(False)
    denoiser = Denoiser(net, schedule)
    z0 = torch.randn(2, 1, 4, 4)
    context, null = torch.randn(2, 3, 8), torch.zeros(2, 3, 8)
    times = ddpm_grid(1000, 10)
    nulls, z_T = null_text_optimisation(denoiser, z0, context, null, times, 4.0, iterations=20, lr=5e-2)
    assert len(nulls) == 10 and z_T.shape == z0.shape
    with torch.no_grad():
        plain = sample(PromptGuidance(denoiser, {"context": context}, {"context": null}, 4.0), z_T, times, ddim_step)
        fixed = sample(NullTextGuidance(denoiser, context, nulls, 4.0), z_T, times, ddim_step)
    err_plain, err_fixed = float((plain - z0).pow(2).mean()), float((fixed - z0).pow(2).mean())
    assert err_fixed < 0.5 * err_plain, (err_fixed, err_plain)
    with pytest.raises(ValueError, match="no optimised null context"):
        NullTextGuidance(denoiser, context, nulls, 4.0)(z_T, 0.123)
