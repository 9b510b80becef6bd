"""Samplers on a Gaussian data set, where the denoiser is exact (STYLE.md, 'Tests that carry meaning')."""
import math

import pytest
import torch

from course_lib.samplers import Trajectory, ddim_step, ddpm_step, posterior_coefficients, prior_sample, sample
from course_lib.schedules import DDPMTable, VPCosine, VPLinear, RectifiedFlow, VE
from course_lib.time_grids import check_grid, ddpm_grid, karras_grid, log_snr_grid, uniform_grid

M, S = 0.7, 0.5  # data: x0 ~ N(M, S^2) in every coordinate


class GaussianDenoiser:
    """E[x0 | x_t] for x0 ~ N(M, S^2): M + alpha S^2 / (alpha^2 S^2 + sigma^2) (x_t - alpha M)."""

    def __init__(self, schedule):
        self.schedule = schedule

    def __call__(self, x_t, t):
        t = torch.as_tensor(t, dtype=torch.float64)
        a, s = self.schedule._alpha(t), self.schedule._sigma(t)
        a = a.reshape(-1, *([1] * (x_t.dim() - 1))) if a.dim() else a
        s = s.reshape(-1, *([1] * (x_t.dim() - 1))) if s.dim() else s
        return (M + a * S**2 / (a**2 * S**2 + s**2) * (x_t - a * M)).to(x_t.dtype)


def exact_ode_solution(schedule, x_T, t_start=1.0):
    t = torch.tensor(t_start, dtype=torch.float64)
    a, s = schedule._alpha(t), schedule._sigma(t)
    return M + S * (x_T - a * M) / torch.sqrt(a**2 * S**2 + s**2)


@pytest.mark.parametrize("schedule", [VPLinear(), VPCosine(), RectifiedFlow()], ids=lambda s: type(s).__name__)
def test_ddim_converges_to_the_probability_flow_solution_at_first_order(schedule, gen):
    den = GaussianDenoiser(schedule)
    t_start = 0.99 if isinstance(schedule, VPCosine) else 1.0  # alpha_1 = 0 leaves no signal to invert
    x_T = torch.randn(512, 2, dtype=torch.float64, generator=gen)
    exact = exact_ode_solution(schedule, x_T, t_start)
    errs = []
    for n in (20, 40, 80, 160):
        x0 = sample(den, x_T, uniform_grid(n, t_start=t_start).double(), ddim_step)
        errs.append(float((x0 - exact).abs().max()))
    slope = -math.log(errs[-1] / errs[0]) / math.log(160 / 20)
    assert errs[-1] < 0.05, errs
    assert 0.8 < slope < 1.3, (errs, slope)  # DDIM is a first-order solver


def test_ancestral_sampling_matches_the_data_moments(gen):
    schedule = DDPMTable.from_name("linear", 1000).schedule()
    den = GaussianDenoiser(schedule)
    x_T = torch.randn(20000, 1, dtype=torch.float64, generator=gen)
    x0 = sample(den, x_T, ddpm_grid(1000, 1000).double(), ddpm_step, generator=gen)
    n = x0.numel()
    # Monte-Carlo error: std of the mean S/sqrt(n), of the variance ~ S^2 sqrt(2/n)
    assert abs(float(x0.mean()) - M) < 4 * S / math.sqrt(n)
    assert abs(float(x0.var()) - S**2) < 4 * S**2 * math.sqrt(2 / n)


def test_ddim_with_eta_one_equals_ddpm_ancestral():
    schedule = DDPMTable.from_name("linear", 100).schedule()
    den = GaussianDenoiser(schedule)
    grid = ddpm_grid(100, 100).double()
    x_T = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    a = sample(den, x_T, grid, ddpm_step, generator=torch.Generator().manual_seed(9))
    b = sample(den, x_T, grid, ddim_step, eta=1.0, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_posterior_coefficients_are_ddpm_equation_7():
    table = DDPMTable.from_name("linear", 1000)
    sched = table.schedule()
    n = 400
    beta, ab, ab_prev = table.betas[n - 1], table.alpha_bar[n - 1], table.alpha_bar[n - 2]
    c_x, c_x0, var = posterior_coefficients(sched, table.time(n).double(), table.time(n - 1).double())
    # Ho et al. 2020, eq. 7
    assert math.isclose(c_x, float(torch.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab)), rel_tol=1e-9)
    assert math.isclose(c_x0, float(torch.sqrt(ab_prev) * beta / (1 - ab)), rel_tol=1e-9)
    assert math.isclose(var, float((1 - ab_prev) / (1 - ab) * beta), rel_tol=1e-9)


def test_same_seed_same_samples_and_callback():
    schedule = VPLinear()
    den = GaussianDenoiser(schedule)
    grid = uniform_grid(25)

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        x_T = prior_sample(schedule, (16, 2), generator=g)
        traj = Trajectory()
        return sample(den, x_T, grid, ddpm_step, generator=g, callback=traj), traj

    (a, traj), (b, _), (c, _) = run(0), run(0), run(1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len(traj.xs) == 25 and traj.times[0] == 1.0 and traj.times[-1] == 0.0
    assert traj.stacked().shape == (25, 16, 2)
    torch.testing.assert_close(traj.xs[-1], a)


def test_prior_sample_scale(gen):
    x = prior_sample(VE(0.01, 50.0), (20000,  1), generator=gen)
    assert abs(float(x.std()) - math.sqrt(1 + 50.0**2)) < 0.03 * 50


def test_time_grids():
    torch.testing.assert_close(uniform_grid(4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    assert (ddpm_grid(1000, 10, "trailing") * 1000).round().tolist() == [1000, 900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert (ddpm_grid(1000, 10, "leading") * 1000).round().tolist() == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1, 0]
    assert torch.equal(ddpm_grid(50, 50, "leading"), ddpm_grid(50, 50, "trailing"))
    s = VPCosine()
    kg = karras_grid(s, 10)
    assert kg.numel() == 11 and kg[-1] == 0
    lg = log_snr_grid(s, 8)
    lam = s.log_snr(lg[:-1].double())
    torch.testing.assert_close(lam[1:] - lam[:-1], (lam[1:] - lam[:-1]).mean().expand(7), atol=5e-3, rtol=0)
    # Karras grid: noise-to-signal ratios follow eq. 5 with rho = 7
    ratio = torch.exp(-s.log_snr(kg[:-1].double()) / 2) ** (1 / 7)
    torch.testing.assert_close(ratio[1:] - ratio[:-1], (ratio[1:] - ratio[:-1]).mean().expand(9), atol=2e-3, rtol=0)


@pytest.mark.parametrize("call, match", [
    (lambda: check_grid(torch.tensor([1.0, 0.5, 0.5, 0.0])), "strictly decreasing"),
    (lambda: check_grid(torch.tensor([0.0, 0.5, 1.0])), "strictly decreasing"),
    (lambda: check_grid(torch.tensor([1.0])), "at least 2"),
    (lambda: check_grid(torch.tensor([1.5, 0.0])), r"\[0, 1\]"),
    (lambda: uniform_grid(0), "positive integer"),
    (lambda: ddpm_grid(100, 200), "n_steps must be <="),
    (lambda: ddpm_grid(100, 10, "middle"), "unknown spacing"),
    (lambda: posterior_coefficients(VPLinear(), 0.3, 0.5), "s < t"),
    (lambda: ddim_step(GaussianDenoiser(VPLinear()), torch.zeros(2, 2), torch.tensor(0.5), torch.tensor(0.4), eta=2.0), "eta"),
    (lambda: sample(GaussianDenoiser(VPLinear()), torch.zeros(2, 2), torch.tensor([0.0, 1.0]), ddim_step), "decreasing"),
    (lambda: sample(lambda x, t: x, torch.zeros(2, 2), uniform_grid(3), ddim_step), "schedule"),
    (lambda: prior_sample(VPLinear(), (0, 2)), "positive sizes"),
])
def test_bad_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("schedule", [VPLinear(), VPCosine(), RectifiedFlow(), VE()], ids=lambda s: type(s).__name__)
def test_log_snr_and_karras_grids_start_at_t_equal_one(schedule):
    """Regression: the float32 log-SNR at t = 1 must not fall outside the float64 range."""
    for grid in (log_snr_grid(schedule, 5), karras_grid(schedule, 5)):
        # (schedules whose log-SNR is clipped at -20 near t = 1 start where the clip begins)
        assert abs(float(grid[0]) - 1.0) < 1e-4 and float(grid[-1]) == 0.0
