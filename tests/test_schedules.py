import math

import pytest
import torch

from course_lib.schedules import (
    EDM, LOG_SNR_MAX, LOG_SNR_MIN, VE, DDPMTable, DiscreteSchedule, RectifiedFlow, VPCosine, VPLinear,
    VPScaledLinear, VPSigmoid, check_times, get_schedule,
)

ALL = [VPLinear(), VPScaledLinear(), VPCosine(), VPSigmoid(), VE(), EDM(), RectifiedFlow(),
       DDPMTable.from_name("linear", 1000).schedule(), DDPMTable.from_name("cosine", 1000).schedule(),
       DDPMTable.from_name("scaled_linear", 1000).schedule(), DDPMTable.from_name("sigmoid", 1000).schedule()]
IDS = [repr(s)[:30] for s in ALL]


@pytest.mark.parametrize("sched", ALL, ids=IDS)
def test_no_nan_or_inf_at_the_ends_in_float32(sched):
    t = torch.tensor([0.0, 1e-7, 1e-3, 0.5, 1 - 1e-3, 1 - 1e-7, 1.0], dtype=torch.float32)
    for name in ("alpha", "sigma", "d_alpha", "d_sigma", "log_snr", "snr", "d_log_snr"):
        v = getattr(sched, name)(t)
        assert v.dtype == torch.float32
        assert torch.isfinite(v).all(), (name, v)
    lam = sched.log_snr(t)
    assert (lam >= LOG_SNR_MIN).all() and (lam <= LOG_SNR_MAX).all()


@pytest.mark.parametrize("sched", ALL, ids=IDS)
def test_log_snr_decreases_and_inverts(sched):
    t = torch.linspace(0.02, 0.98, 25, dtype=torch.float64)
    lam = sched.log_snr(t)
    assert (lam[1:] < lam[:-1]).all()
    # the DDPM table snaps times within 1e-3/N of a knot onto it, so its inverse is exact to ~1e-6
    atol = 2e-6 if isinstance(sched, DiscreteSchedule) else 1e-7
    torch.testing.assert_close(sched.t_from_log_snr(lam), t, atol=atol, rtol=0)


@pytest.mark.parametrize("sched", ALL, ids=IDS)
def test_derivatives_match_autograd(sched):
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    if isinstance(sched, DiscreteSchedule):  # piecewise: avoid the knots
        t = t + 0.25 / 1000
    tt = t.clone().requires_grad_(True)
    for value, deriv in (("_alpha", "d_alpha"), ("_sigma", "d_sigma"), ("_raw_log_snr", "d_log_snr")):
        out = getattr(sched, value)(tt)
        if not out.requires_grad:  # constant (alpha = 1 for VE/EDM)
            torch.testing.assert_close(getattr(sched, deriv)(t), torch.zeros_like(t))
            continue
        (g,) = torch.autograd.grad(out.sum(), tt)
        torch.testing.assert_close(getattr(sched, deriv)(t), g, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("sched", [s for s in ALL if s.variance_preserving], ids=lambda s: repr(s)[:30])
def test_variance_preserving_and_boundaries(sched):
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    torch.testing.assert_close(sched.alpha(t) ** 2 + sched.sigma(t) ** 2, torch.ones_like(t))
    assert float(sched.alpha(torch.tensor(0.0))) == 1.0 and float(sched.sigma(torch.tensor(0.0))) == 0.0
    assert float(sched.alpha(torch.tensor(1.0))) < 0.1


def test_rectified_flow_and_ve_boundaries():
    rf = RectifiedFlow()
    assert float(rf.alpha(torch.tensor(0.0))) == 1.0 and float(rf.sigma(torch.tensor(1.0))) == 1.0
    ve = VE(0.01, 50.0)
    torch.testing.assert_close(ve.sigma(torch.tensor([0.0, 1.0])), torch.tensor([0.01, 50.0]))
    edm = EDM()
    torch.testing.assert_close(edm.sigma(torch.tensor([0.0, 1.0])), torch.tensor([0.002, 80.0]))


def test_discrete_schedule_is_exact_on_the_grid():
    table = DDPMTable.from_name("linear", 1000)
    n = torch.arange(0, 1001, 37)
    ab = table.schedule().alpha_bar(table.time(n).double())
    expected = torch.cat([torch.ones(1, dtype=torch.float64), table.alpha_bar])[n]
    torch.testing.assert_close(ab, expected, rtol=1e-10, atol=1e-12)
    assert table.index(table.time(n)).tolist() == n.tolist()
    # Ho et al. 2020: beta from 1e-4 to 0.02, alpha_bar_T ~ 4e-5
    assert math.isclose(float(table.betas[0]), 1e-4) and math.isclose(float(table.betas[-1]), 0.02)
    assert 3e-5 < float(table.alpha_bar[-1]) < 5e-5


def test_continuous_linear_is_the_limit_of_the_ddpm_table():
    table = DDPMTable.from_name("linear", 1000)
    t = table.time(torch.arange(1, 1001)).double()
    log_ab_disc = torch.log(table.alpha_bar)
    log_ab_cont = torch.log(VPLinear(0.1, 20.0).alpha_bar(t))
    assert float((log_ab_disc - log_ab_cont).abs().max()) < 0.05 * float(log_ab_disc.abs().max())


def test_cosine_table_clips_beta_and_matches_continuous_cosine():
    table = DDPMTable.from_name("cosine", 1000)
    assert float(table.betas.max()) <= 0.999
    t = table.time(torch.arange(1, 990)).double()
    torch.testing.assert_close(table.alpha_bar[:989], VPCosine().alpha_bar(t), rtol=1e-5, atol=1e-9)


def test_discrete_training_times_are_on_the_grid(gen):
    sched = DDPMTable.from_name("linear", 100).schedule()
    t = sched.sample_t(1000, generator=gen)
    n = t * 100
    assert torch.allclose(n, n.round()) and n.min() >= 1 and n.max() <= 100


def test_add_noise_is_the_reparameterisation(gen):
    s = VPCosine()
    x0 = torch.randn(4, 3, generator=gen)
    eps = torch.randn(4, 3, generator=gen)
    t = torch.tensor([0.1, 0.4, 0.6, 0.9])
    expected = s.alpha(t)[:, None] * x0 + s.sigma(t)[:, None] * eps
    torch.testing.assert_close(s.add_noise(x0, t, eps), expected)


def test_get_schedule_by_name():
    assert isinstance(get_schedule("linear", beta_min=0.1, beta_max=20), VPLinear)
    assert isinstance(get_schedule("ddpm_cosine", n_train_steps=50), DiscreteSchedule)


@pytest.mark.parametrize("make, match", [
    (lambda: VPLinear(beta_min=1.0, beta_max=0.5), "beta_min < beta_max"),
    (lambda: VPLinear(beta_min=-1.0), "beta_min"),
    (lambda: VPCosine(s=-0.1), "0 <= s < 1"),
    (lambda: VPSigmoid(start=3, end=-3), "start < end"),
    (lambda: VPSigmoid(tau=0), "tau > 0"),
    (lambda: VPScaledLinear(beta_start=0.02, beta_end=0.01), "beta_start < beta_end"),
    (lambda: VE(sigma_min=5, sigma_max=1), "sigma_min < sigma_max"),
    (lambda: EDM(rho=0), "rho > 0"),
    (lambda: DDPMTable(torch.tensor([0.1, 1.5])), r"\(0, 1\)"),
    (lambda: DDPMTable.from_name("quadratic"), "unknown DDPM table kind"),
    (lambda: DDPMTable.from_name("linear", 0), "n_train_steps"),
    (lambda: get_schedule("warp"), "unknown schedule"),
    (lambda: get_schedule("linear", beta=3), "bad parameters"),
])
def test_bad_parameters_raise_clear_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("t, match", [
    (torch.tensor([0.5, 1.2]), r"in \[0, 1\]"),
    (torch.tensor([-0.1]), r"in \[0, 1\]"),
    (torch.tensor([3]), "floating-point"),
    (torch.tensor([float("nan")]), "finite"),
    ("0.5", "torch.Tensor"),
])
def test_bad_times_raise(t, match):
    with pytest.raises(ValueError, match=match):
        check_times(t)
    with pytest.raises(ValueError, match=match):
        VPCosine().alpha(t)


def test_bad_indices_and_inverse_range():
    table = DDPMTable.from_name("linear", 100)
    with pytest.raises(ValueError, match="0..100"):
        table.time(101)
    with pytest.raises(ValueError, match="multiple of 1/N"):
        table.index(torch.tensor(0.005))
    with pytest.raises(ValueError, match=r"N >= 21.*n_train_steps=10"):
        DDPMTable.from_name("linear", 10)  # Ho et al.'s betas scaled by 1000/N exceed 1: a message about N
    with pytest.raises(ValueError, match="range"):
        VPLinear().t_from_log_snr(torch.tensor(50.0))
    with pytest.raises(ValueError, match="same shape"):
        VPCosine().add_noise(torch.zeros(2, 2), torch.tensor(0.5), torch.zeros(2, 3))
