"""Issue 9, robust core: NaN is named at every entry point, the ends of the path (sigma = 0,
alpha = 0) give exact limits or a ValueError naming the time, and the DDPM tables' log-SNR, its
derivative and its inverse agree (chapters 01, 02, 04 and 07)."""
import itertools
import math

import pytest
import torch
from torch import nn

from course_lib.losses import WEIGHTINGS, diffusion_loss
from course_lib.parameterization import PREDICTIONS, Denoiser, target, to_eps, to_x0
from course_lib.schedules import (SCHEDULES, DDPMTable, RectifiedFlow, VPLinear, get_schedule)
from course_lib.time_grids import check_grid, karras_grid, log_snr_grid
from course_lib.training import train

F64 = torch.float64
ALL_SCHEDULES = sorted(SCHEDULES) + [f"ddpm_{k}" for k in DDPMTable.KINDS]


# --------------------------------------------------------------------------- the loss at the ends

@pytest.mark.parametrize("t_end", [0.0, 1.0])
def test_diffusion_loss_is_finite_or_a_named_error_for_every_combination(t_end):
    """12 schedules x 5 predictions x 4 weightings; before issue 9, 117 were non-finite at t = 0."""
    net = lambda x, t: 0.5 * x + 0.1  # noqa: E731  any finite network
    x0 = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    non_finite, errors = [], []
    for name, prediction, weighting in itertools.product(ALL_SCHEDULES, PREDICTIONS, WEIGHTINGS):
        den = Denoiser(net, get_schedule(name), prediction)
        try:
            loss = diffusion_loss(den, x0, t=torch.full((4,), t_end), weighting=weighting,
                                  generator=torch.Generator().manual_seed(1))
        except ValueError as err:
            assert f"t = [{t_end}" in str(err), str(err)  # the error names the time
            errors.append((name, prediction, weighting))
            continue
        if not bool(torch.isfinite(loss)):
            non_finite.append((name, prediction, weighting))
    assert non_finite == []
    # the only refusals: a score target at sigma_t = 0, and a velocity's eps error where a VP path stands still
    for name, prediction, weighting in errors:
        assert (prediction, weighting, t_end) == ("score", "simple", 0.0) or (
            prediction == "velocity" and weighting != "simple" and get_schedule(name).variance_preserving), \
            (name, prediction, weighting)


def test_weighted_losses_equal_their_definitions_inside_the_clip_range(gen):
    """The stable eps-error formulas are the eps-space error of to_eps, where nothing is singular."""
    x0 = torch.randn(6, 3, generator=gen, dtype=F64)
    t = 0.05 + 0.9 * torch.rand(6, generator=gen, dtype=F64)
    eps = torch.randn(6, 3, generator=gen, dtype=F64)
    net = lambda x, tt: 0.3 * x - 0.2  # noqa: E731
    for name, prediction in itertools.product(("linear", "rectified_flow", "edm", "ddpm_cosine"), PREDICTIONS):
        schedule = get_schedule(name)
        den = Denoiser(net, schedule, prediction)
        x_t = schedule.add_noise(x0, t, eps)
        eps_err = (to_eps(prediction, den.network_output(x_t, t), x_t, schedule, t) - eps) ** 2
        got = diffusion_loss(den, x0, t=t, eps=eps, weighting="x0", reduction="none")
        torch.testing.assert_close(got, (eps_err / schedule.snr(t)[:, None]).mean(1), rtol=1e-9, atol=1e-12)


def test_sample_t_is_torch_rand_with_zero_moved_to_one(monkeypatch):
    s = VPLinear()
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(s.sample_t(1000, generator=g1), torch.rand(1000, generator=g2))  # bit-identical draws
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.tensor([0.0, 0.25, 0.0]))
    assert s.sample_t(3).tolist() == [1.0, 0.25, 1.0]  # U[0, 1) with 0 -> 1 is U(0, 1]


# --------------------------------------------------------------------------- conversions at the ends

@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("name", ["linear", "cosine", "rectified_flow", "ddpm_linear"])
def test_to_x0_at_clean_data_is_x_t_over_alpha(name, prediction, gen):
    schedule = get_schedule(name)
    x_t = torch.randn(3, 2, generator=gen)
    out = torch.randn(3, 2, generator=gen)
    got = to_x0(prediction, out, x_t, schedule, torch.zeros(3))
    torch.testing.assert_close(got, out if prediction == "x0" else x_t)  # alpha_0 = 1 on these paths


def test_velocity_denoiser_at_t0_on_a_vp_schedule_is_exact_and_has_finite_gradients():
    net = nn.Linear(2, 2)
    den = Denoiser(lambda x, t: net(x), VPLinear(), "velocity")
    x_t = torch.tensor([[0.3, -1.0], [2.0, 0.5]])
    x0_hat = den(x_t, torch.tensor([0.0, 0.5]))
    torch.testing.assert_close(x0_hat[0], x_t[0])
    x0_hat.sum().backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in net.parameters())


def test_singular_conversions_name_the_time_and_the_parameterisation():
    rf, x = RectifiedFlow(), torch.ones(2, 2)
    for prediction in ("eps", "score"):  # alpha_1 = 0: x_t = eps holds nothing of x0
        with pytest.raises(ValueError, match=rf"prediction '{prediction}' at t = \[1.0, 1.0\].*alpha_t = 0"):
            to_x0(prediction, x, x, rf, torch.ones(2))
    with pytest.raises(ValueError, match=r"prediction 'x0' at t = \[0.0, 0.5\].*sigma_t = 0"):
        to_eps("x0", x, x, rf, torch.tensor([0.0, 0.5]))
    with pytest.raises(ValueError, match=r"prediction 'velocity' at t = 0.0.*does not move"):
        to_eps("velocity", x, x, VPLinear(), torch.tensor(0.0))
    with pytest.raises(ValueError, match=r"prediction 'score' at t = 0.0.*infinite"):
        target("score", x, x, rf, torch.tensor(0.0))
    # the limits that exist are exact
    torch.testing.assert_close(to_eps("v", x, 2 * x, VPLinear(), torch.zeros(2)), x)  # eps = v / alpha_0
    torch.testing.assert_close(to_eps("velocity", x, 2 * x, rf, torch.zeros(2)), 3 * x)  # (a u - a' x_t) / (a s')
    torch.testing.assert_close(to_eps("score", x, x, rf, torch.ones(2)), -x)  # eps = -sigma score at alpha = 0


# --------------------------------------------------------------------------- NaN at every entry point

def test_nan_is_refused_at_every_entry_point():
    nan = float("nan")
    with pytest.raises(ValueError, match="finite"):
        VPLinear().t_from_log_snr(torch.tensor(nan))
    with pytest.raises(ValueError, match="finite"):
        get_schedule("ddpm_linear").t_from_log_snr(torch.tensor([0.0, math.inf]))
    with pytest.raises(ValueError, match=r"finite.*t\[1\]=nan"):
        check_grid(torch.tensor([1.0, nan, 0.0]))
    with pytest.raises(ValueError, match=r"finite.*n = 2"):
        DDPMTable(torch.tensor([0.1, nan, 0.2]))
    with pytest.raises(ValueError, match="finite"):
        VPLinear().alpha(torch.tensor([0.5, nan]))
    for make in (lambda: VPLinear(beta_min=nan), lambda: get_schedule("edm", rho=nan),
                 lambda: get_schedule("cosine", s=nan), lambda: get_schedule("cond_ot", sigma_min=nan)):
        with pytest.raises(ValueError):
            make()


def test_ddpm_tables_reject_unknown_parameters_and_name_n():
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['beta_max'\].*\['beta_start', 'beta_end'\]"):
        get_schedule("ddpm_linear", beta_max=0.02)
    with pytest.raises(ValueError, match=r"\['max_beta'\]"):
        DDPMTable.from_name("sigmoid", 100, max_beta=0.5)
    with pytest.raises(ValueError, match=r"N >= 21.*n_train_steps=20"):
        DDPMTable.from_name("linear", 20)
    assert DDPMTable.from_name("linear", 21).n_train_steps == 21
    assert DDPMTable.from_name("linear", 10, beta_end=0.5).n_train_steps == 10  # explicit betas: no N rule


# --------------------------------------------------------------------------- training names what was non-finite

def test_train_refuses_non_finite_data():
    data = torch.randn(8, 2)
    data[5, 1] = float("nan")
    with pytest.raises(ValueError, match=r"data\[0\] must be finite.*index 5"):
        train(nn.Linear(2, 2), lambda m, b, g: m(b).pow(2).mean(), data, steps=1, batch_size=4, progress=False,
              device="cpu")


def test_a_non_finite_loss_names_its_times_not_only_the_learning_rate():
    class Singular(nn.Module):  # finite weights, an output that is NaN at t = 0.5 exactly
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x, t):
            return self.lin(x) + torch.where(t == 0.5, math.nan, 0.0)[:, None]

    model = Singular()
    den = Denoiser(model, VPLinear(), "eps")
    t = torch.tensor([0.1, 0.5, 0.9, 0.3])
    with pytest.raises(FloatingPointError, match=r"step 1 .*t in \[0.1, 0.9\]; 1 of 4.*t = \[0.5\].*singular"):
        train(model, lambda m, b, g: diffusion_loss(den, b, generator=g, t=t), torch.randn(8, 2), steps=3,
              batch_size=4, progress=False, device="cpu")


# --------------------------------------------------------------------------- the DDPM table: lambda, lambda', inverse

@pytest.mark.parametrize("kind", DDPMTable.KINDS)
@pytest.mark.parametrize("N", [1000, 50])
def test_discrete_log_snr_round_trip_is_exact_at_every_knot(kind, N):
    table = DDPMTable.from_name(kind, N)
    s = table.schedule()
    t = torch.arange(N + 1, dtype=F64) / N
    lam = s.log_snr(t)
    ab = table.alpha_bar
    assert torch.equal(lam[1:], (torch.log(ab) - torch.log1p(-ab)).clamp(-20, 20))  # the table's own lambda_n
    assert torch.equal(s.log_snr(t.float())[1:], lam[1:].float())  # float32 n/N snaps onto the knot too
    assert torch.equal(s.t_from_log_snr(lam), t)  # exact, not within a bisection tolerance
    inner = torch.linspace(float(lam[-1]), float(lam[0]), 997, dtype=F64)  # values between knots
    torch.testing.assert_close(s.log_snr(s.t_from_log_snr(inner)), inner, rtol=0, atol=2e-3 * float(
        (lam[:-1] - lam[1:]).abs().max()))  # up to the 1e-3/N snapping window around each knot


@pytest.mark.parametrize("kind", DDPMTable.KINDS)
def test_discrete_derivative_matches_finite_differences_between_knots(kind, gen):
    N = 1000
    s = DDPMTable.from_name(kind, N).schedule()
    n = torch.randint(0, N, (200,), generator=gen).to(F64)
    t = (n + 0.1 + 0.8 * torch.rand(200, generator=gen, dtype=F64)) / N
    h = 0.05 / N
    fd = (s.log_snr(t + h) - s.log_snr(t - h)) / (2 * h)
    clipped = (s.log_snr(t) >= 20) | (s.log_snr(t) <= -20)
    torch.testing.assert_close(s.d_log_snr(t)[~clipped], fd[~clipped], rtol=1e-6, atol=1e-6)
    # at a knot (float64 or float32 round-off of it): the slope of the interval that starts there
    knots = torch.tensor([1, 2, 500, 999], dtype=F64)
    right = (s.log_snr((knots + 0.5) / N) - s.log_snr(knots / N)) / (0.5 / N)
    torch.testing.assert_close(s.d_log_snr(knots / N), right, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(s.d_log_snr((knots / N).float()).double(), right, rtol=1e-6, atol=1e-3)
    torch.testing.assert_close(s.d_log_snr((knots / N) - 1e-7), right, rtol=1e-9, atol=1e-9)  # snapped as lambda is


def test_karras_and_log_snr_grids_end_on_the_tables_knots():
    s = get_schedule("ddpm_linear", n_train_steps=1000)
    for grid in (karras_grid(s, 10), log_snr_grid(s, 10), karras_grid(s, 10, dtype=F64)):
        assert float(grid[0]) == 1.0 and float(grid[-2]) == float(torch.tensor(1e-3, dtype=grid.dtype))
    g64 = karras_grid(s, 10, dtype=F64)
    assert g64.dtype == F64 and float(g64[-2]) == 1e-3
    assert float(s.d_log_snr(g64[-2])) == pytest.approx(-788.16, abs=0.01)  # not the first interval's -10790
