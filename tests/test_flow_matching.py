"""Flow matching (chapter 08): the loss, Lipman's path, the papers' reversed time, the exact Gaussian
velocity, and the equivalences flow matching <-> v-prediction <-> the diffusion ODE, as tests.

The Gaussian checks reuse the exact denoiser of tests/test_samplers_stage2.py (x0 ~ N(M, S^2) in
every coordinate), so the marginal velocity is compared with code written independently of it.
"""
import math

import pytest
import torch

from course_lib.flow_matching import (flow_matching_loss, from_fm_time, from_fm_velocity, gaussian_marginal_velocity,
                                      to_fm_time, to_fm_velocity)
from course_lib.losses import diffusion_loss
from course_lib.networks.mlp import TimeMLP
from course_lib.parameterization import Denoiser, target, to_eps
from course_lib.samplers import Trajectory, ddim_step, euler_step, pf_ode_velocity, sample
from course_lib.schedules import EDM, SCHEDULES, VE, CondOT, RectifiedFlow, VPCosine, VPLinear, get_schedule
from course_lib.time_grids import uniform_grid
from course_lib.training import train
from test_samplers_stage2 import GaussianDenoiser, M, S  # the exact denoiser of N(M, S^2) data

F64 = torch.float64
PATHS = [RectifiedFlow(), CondOT(sigma_min=0.05), VPLinear(), VPCosine(), VE(), EDM()]
PATH_IDS = [repr(s) for s in PATHS]


def c_in(schedule, t):
    """The Denoiser's input scaling 1 / sqrt(alpha_t^2 + sigma_t^2), shape (B, 1)."""
    return torch.rsqrt(schedule.alpha(t) ** 2 + schedule.sigma(t) ** 2)[:, None]


class SmallNet(torch.nn.Module):
    """A fixed random smooth network net(x (B, 2), t (B,)) -> (B, 2), float64."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.randn(3, 16, generator=g, dtype=F64) / 2
        self.w2 = torch.randn(16, 2, generator=g, dtype=F64) / 4

    def forward(self, x, t):
        return torch.tanh(torch.cat([x, t[:, None].to(x.dtype)], dim=1) @ self.w1) @ self.w2


# --------------------------------------------------------------------------- the loss

def test_flow_matching_loss_regresses_eps_minus_x0_on_the_straight_path(gen):
    net = SmallNet()
    den = Denoiser(net, RectifiedFlow(), prediction="velocity")
    x0 = torch.randn(32, 2, generator=gen, dtype=F64)
    eps = torch.randn(32, 2, generator=gen, dtype=F64)
    t = torch.rand(32, generator=gen, dtype=F64)
    x_t = (1 - t)[:, None] * x0 + t[:, None] * eps  # Liu et al. 2022, eq. 1 (in the course's time)
    by_hand = ((net(c_in(den.schedule, t) * x_t, t) - (eps - x0)) ** 2).mean()
    loss = flow_matching_loss(den, x0, eps=eps, t=t)
    torch.testing.assert_close(loss, by_hand, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loss, diffusion_loss(den, x0, eps=eps, t=t))  # the same function
    per_example = flow_matching_loss(den, x0, eps=eps, t=t, reduction="none")
    assert per_example.shape == (32,)
    torch.testing.assert_close(per_example.mean(), loss)
    # the straight path's velocity target is the course's "velocity" target, eps - x0
    torch.testing.assert_close(target("velocity", x0, eps, RectifiedFlow(), t), eps - x0)


def test_flow_matching_loss_is_lipman_eq_23_in_their_time(gen):
    """Lipman et al. 2022, eq. 23, written in their time t' = 1 - t with their names (x1 data,
    x noise), for a network that also works in their convention, equals the course's loss."""
    sigma_min = 0.05
    net_fm = SmallNet(seed=3)  # v'(input, t'): a velocity in the papers' time
    schedule = CondOT(sigma_min)
    # the same network in the course's convention: u(input, t) = -v'(input, 1 - t)
    den = Denoiser(lambda x, t: from_fm_velocity(net_fm(x, to_fm_time(t))), schedule, prediction="velocity")
    x1 = torch.randn(64, 2, generator=gen, dtype=F64)  # data (the course's x0)
    x = torch.randn(64, 2, generator=gen, dtype=F64)  # noise (the course's eps)
    t_fm = torch.rand(64, generator=gen, dtype=F64)
    psi = (1 - (1 - sigma_min) * t_fm)[:, None] * x + t_fm[:, None] * x1  # eq. 22
    scale = torch.rsqrt(t_fm**2 + (1 - (1 - sigma_min) * t_fm) ** 2)[:, None]  # the Denoiser's c_in
    eq_23 = ((net_fm(scale * psi, t_fm) - (x1 - (1 - sigma_min) * x)) ** 2).mean()
    loss = flow_matching_loss(den, x1, eps=x, t=from_fm_time(t_fm))
    torch.testing.assert_close(loss, eq_23, rtol=1e-12, atol=1e-12)


def test_flow_matching_loss_is_reproducible_and_trains_the_marginal_velocity():
    """Learning test: a small MLP trained with the loss on Gaussian data learns the exact marginal
    velocity (error far below the untrained network's), and 20 Euler steps give the data's moments."""
    mean, std = torch.tensor([1.0, -0.5]), 0.5
    data = mean + std * torch.randn(8192, 2, generator=torch.Generator().manual_seed(0))
    schedule = RectifiedFlow()

    def loss_fn(net, batch, generator):
        return flow_matching_loss(Denoiser(net, schedule, "velocity"), batch, generator=generator)

    torch.manual_seed(0)
    net = TimeMLP(dim=2, hidden=64, depth=2)
    untrained = Denoiser(TimeMLP(dim=2, hidden=64, depth=2), schedule, "velocity")
    result = train(net, loss_fn, data, steps=600, batch_size=256, lr=3e-3, ema_decay=0.99, seed=0, progress=False,
                   device="cpu")
    den = Denoiser(result.ema_model, schedule, "velocity")
    g = torch.Generator().manual_seed(1)
    t = 0.02 + 0.96 * torch.rand(4096, generator=g)
    x_t = schedule.add_noise(mean + std * torch.randn(4096, 2, generator=g), t, torch.randn(4096, 2, generator=g))
    exact = gaussian_marginal_velocity(x_t, t, mean, std, schedule)
    with torch.no_grad():
        err = float(((pf_ode_velocity(den, x_t, t) - exact) ** 2).mean())
        err_untrained = float(((pf_ode_velocity(untrained, x_t, t) - exact) ** 2).mean())
        x0 = sample(den, torch.randn(4096, 2, generator=g), uniform_grid(20), euler_step)
    assert err < 0.02 * err_untrained and err < 0.02, (err, err_untrained)
    assert (x0.mean(0) - mean).abs().max() < 0.05 and (x0.std(0) - std).abs().max() < 0.05, (x0.mean(0), x0.std(0))
    # the same seed gives the same loss; another seed another one
    x_b = data[:64]
    values = [float(flow_matching_loss(den, x_b, generator=torch.Generator().manual_seed(k))) for k in (7, 7, 8)]
    assert values[0] == values[1] and values[0] != values[2]


@pytest.mark.parametrize("call, match", [
    (lambda: flow_matching_loss(Denoiser(SmallNet(), RectifiedFlow(), "eps"), torch.zeros(4, 2, dtype=F64)),
     "prediction='velocity', got prediction='eps'"),
    (lambda: flow_matching_loss(lambda x, t: x, torch.zeros(4, 2)), "needs a course_lib Denoiser"),
    (lambda: flow_matching_loss(Denoiser(SmallNet(), RectifiedFlow(), "velocity"), torch.zeros(4, 2, dtype=F64),
                                t=torch.zeros(3, dtype=F64)), r"t must have shape \(4,\)"),
])
def test_flow_matching_loss_rejects_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------- Lipman's path

def test_cond_ot_path_is_lipman_eq_20_to_22_and_registered():
    schedule = get_schedule("cond_ot", sigma_min=0.1)
    assert isinstance(schedule, CondOT) and SCHEDULES["cond_ot"] is CondOT
    t = torch.linspace(0, 1, 11, dtype=F64)
    t_fm = 1 - t
    torch.testing.assert_close(schedule.alpha(t), t_fm)  # mu_t'(x1) = t' x1 (eq. 20)
    torch.testing.assert_close(schedule.sigma(t), 1 - (1 - 0.1) * t_fm)  # sigma_t' = 1 - (1 - sigma_min) t'
    assert float(schedule.sigma(torch.tensor(0.0))) == pytest.approx(0.1)  # never reaches clean data
    assert float(schedule.sigma(torch.tensor(1.0))) == 1.0 and float(schedule.alpha(torch.tensor(1.0))) == 0.0
    assert schedule.prior_std() == 1.0
    # sigma_min = 0 is the straight path
    for name in ("alpha", "sigma", "d_alpha", "d_sigma"):
        torch.testing.assert_close(getattr(CondOT(0.0), name)(t), getattr(RectifiedFlow(), name)(t))


@pytest.mark.parametrize("sigma_min", [0.0, 1e-4, 0.3])
def test_cond_ot_derivatives_match_autograd(sigma_min):
    schedule = CondOT(sigma_min)
    t = torch.linspace(0.05, 0.95, 19, dtype=F64)
    tt = t.clone().requires_grad_(True)
    for value, deriv in (("_alpha", "d_alpha"), ("_sigma", "d_sigma"), ("_raw_log_snr", "d_log_snr")):
        (g,) = torch.autograd.grad(getattr(schedule, value)(tt).sum(), tt)
        torch.testing.assert_close(getattr(schedule, deriv)(t), g, rtol=1e-10, atol=1e-12)
    assert torch.isfinite(schedule.log_snr(torch.tensor([0.0, 1.0]))).all()  # clipped at t = 1


@pytest.mark.parametrize("sigma_min", [-0.1, 1.0, float("nan"), "0.1"])
def test_cond_ot_rejects_bad_sigma_min(sigma_min):
    with pytest.raises(ValueError, match="0 <= sigma_min < 1"):
        CondOT(sigma_min)


# --------------------------------------------------------------------------- the papers' reversed time

def test_fm_time_and_velocity_round_trip_and_validate(gen):
    t = torch.rand(7, generator=gen, dtype=F64)
    torch.testing.assert_close(from_fm_time(to_fm_time(t)), t)
    torch.testing.assert_close(to_fm_time(t), 1 - t)
    assert float(to_fm_time(0.0)) == 1.0 and float(from_fm_time(1.0)) == 0.0  # data: t = 0 <-> t' = 1
    u = torch.randn(5, 3, generator=gen)
    torch.testing.assert_close(from_fm_velocity(to_fm_velocity(u)), u)
    torch.testing.assert_close(to_fm_velocity(u), -u)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        to_fm_time(torch.tensor(1.5))
    with pytest.raises(ValueError, match=r"t_fm must lie in \[0, 1\]"):
        from_fm_time(-0.2)
    with pytest.raises(ValueError, match="velocity must be a floating-point tensor"):
        to_fm_velocity(torch.ones(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="velocity_fm must be a floating-point tensor"):
        from_fm_velocity([1.0, 2.0])


@pytest.mark.parametrize("sigma_min", [0.0, 0.02])
def test_lipman_flow_is_the_course_path_in_reversed_time(sigma_min, gen):
    """psi_t'(x) = (1 - (1 - sigma_min) t') x + t' x1 (Lipman et al. 2022, eq. 22) is add_noise at
    t = 1 - t', and their conditional velocity (eq. 21, at x = psi) is minus the course's target."""
    schedule = CondOT(sigma_min)
    x1 = torch.randn(16, 2, generator=gen, dtype=F64)  # data
    x = torch.randn(16, 2, generator=gen, dtype=F64)  # noise
    t_fm = torch.rand(16, generator=gen, dtype=F64) * 0.98
    psi = (1 - (1 - sigma_min) * t_fm)[:, None] * x + t_fm[:, None] * x1
    t = from_fm_time(t_fm)
    torch.testing.assert_close(schedule.add_noise(x1, t, x), psi)
    u_fm = (x1 - (1 - sigma_min) * psi) / (1 - (1 - sigma_min) * t_fm)[:, None]  # eq. 21 at x = psi_t'(x)
    torch.testing.assert_close(u_fm, x1 - (1 - sigma_min) * x)  # = the target of eq. 23
    torch.testing.assert_close(u_fm, to_fm_velocity(target("velocity", x1, x, schedule, t)))
    # and the velocity is d psi / dt' (central difference)
    h = 1e-6
    psi_of = lambda s: (1 - (1 - sigma_min) * s)[:, None] * x + s[:, None] * x1  # noqa: E731
    torch.testing.assert_close((psi_of(t_fm + h) - psi_of(t_fm - h)) / (2 * h), u_fm, rtol=1e-7, atol=1e-7)


# --------------------------------------------------------------------------- the exact Gaussian velocity

@pytest.mark.parametrize("schedule", PATHS, ids=PATH_IDS)
def test_gaussian_marginal_velocity_is_the_pf_ode_velocity_of_the_exact_denoiser(schedule, gen):
    x = torch.randn(64, 3, generator=gen, dtype=F64) * 2
    for t in (0.1, 0.5, 0.9):
        tt = torch.tensor(t, dtype=F64)
        torch.testing.assert_close(gaussian_marginal_velocity(x, tt, M, S, schedule),
                                   pf_ode_velocity(GaussianDenoiser(schedule), x, tt), rtol=1e-10, atol=1e-10)
    t_batch = torch.rand(64, generator=gen, dtype=F64) * 0.9 + 0.05  # one time per example
    torch.testing.assert_close(gaussian_marginal_velocity(x, t_batch, M, S, schedule),
                               pf_ode_velocity(GaussianDenoiser(schedule), x, t_batch), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("schedule", [RectifiedFlow(), CondOT(0.1), VPCosine()], ids=repr)
def test_gaussian_marginal_velocity_is_the_monte_carlo_conditional_average(schedule):
    """E[u | x_t] by Monte Carlo: regress the conditional velocity d_alpha x0 + d_sigma eps on x_t.
    For Gaussian data E[u | x_t] is linear in x_t, so least squares finds it; and the average of u
    within narrow bins of x_t agrees with the function at the bins' centres."""
    g = torch.Generator().manual_seed(0)
    n, mean, std, t = 400_000, -0.4, 0.7, torch.tensor(0.6, dtype=F64)
    x0 = mean + std * torch.randn(n, 1, generator=g, dtype=F64)
    eps = torch.randn(n, 1, generator=g, dtype=F64)
    x_t = schedule.add_noise(x0, t, eps)
    u = target("velocity", x0, eps, schedule, t)  # the conditional velocity
    design = torch.cat([torch.ones_like(x_t), x_t], dim=1)  # (n, 2)
    coef = torch.linalg.lstsq(design, u).solution[:, 0]  # E[u | x_t] = c0 + c1 x_t
    probe = torch.tensor([[0.0], [1.0]], dtype=F64)
    exact = gaussian_marginal_velocity(probe, t, mean, std, schedule)[:, 0]
    torch.testing.assert_close(coef, torch.stack([exact[0], exact[1] - exact[0]]), rtol=0, atol=0.01)
    residual_std = float((u[:, 0] - design @ coef).std())
    edges = torch.linspace(float(x_t.quantile(0.1)), float(x_t.quantile(0.9)), 9, dtype=F64)
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (x_t[:, 0] >= lo) & (x_t[:, 0] < hi)
        k = int(inside.sum())
        centre_value = gaussian_marginal_velocity(x_t[inside], t, mean, std, schedule).mean()
        assert abs(float(u[inside].mean() - centre_value)) < 4 * residual_std / math.sqrt(k), (lo, hi)


@pytest.mark.parametrize("schedule", [RectifiedFlow(), CondOT(0.05), VPLinear()], ids=repr)
def test_integrating_the_gaussian_velocity_transports_the_prior_onto_the_data(schedule):
    """Euler steps of u from x_1 ~ N(0, Var(x_1)) at t = 1 down to t = 0 land on N(m, s^2): pointwise on
    the exact transport map x_t = alpha_t m + v_t z, and in distribution."""
    g = torch.Generator().manual_seed(0)
    mean, std = torch.tensor([0.5, -1.0], dtype=F64), torch.tensor([0.3, 0.8], dtype=F64)  # diagonal covariance
    one, zero = torch.tensor(1.0, dtype=F64), torch.tensor(0.0, dtype=F64)
    v1 = torch.sqrt(schedule.alpha(one) ** 2 * std**2 + schedule.sigma(one) ** 2)
    z = torch.randn(20000, 2, generator=g, dtype=F64)
    x = schedule.alpha(one) * mean + v1 * z  # x_1
    times = uniform_grid(1000).double()
    for t, s in zip(times[:-1], times[1:]):
        x = x + (s - t) * gaussian_marginal_velocity(x, t, mean, std, schedule)
    v0 = torch.sqrt(schedule.alpha(zero) ** 2 * std**2 + schedule.sigma(zero) ** 2)
    exact_end = schedule.alpha(zero) * mean + v0 * z  # the transport map at t = 0
    assert float((x - exact_end).abs().max()) < 5e-3  # Euler's O(1/N) error
    n = z.shape[0]
    assert bool(((x.mean(0) - schedule.alpha(zero) * mean).abs() < 4 * v0 / math.sqrt(n) + 5e-3).all())
    assert bool(((x.std(0) - v0).abs() < 4 * v0 * math.sqrt(0.5 / n) + 5e-3).all())
    if isinstance(schedule, RectifiedFlow):  # the straight path ends exactly at the data law N(m, s^2)
        torch.testing.assert_close(v0, std)


def test_gaussian_marginal_velocity_is_finite_at_both_ends():
    x = torch.tensor([[-1.0], [0.0], [2.0]], dtype=F64)
    rf = RectifiedFlow()
    # t = 0: x_0 is the data, E[x0 | x_0] = x, E[eps | x_0] = 0, so u = -x... plus sigma' E[eps] = 0
    torch.testing.assert_close(gaussian_marginal_velocity(x, 0.0, 0.3, 0.5, rf), -x)
    # t = 1: x_1 is the noise, E[x0 | x_1] = m, E[eps | x_1] = x, so u = x - m
    torch.testing.assert_close(gaussian_marginal_velocity(x, 1.0, 0.3, 0.5, rf), x - 0.3)


@pytest.mark.parametrize("call, match", [
    (lambda: gaussian_marginal_velocity(torch.zeros(4, 2), 0.5, 0.0, 0.0, RectifiedFlow()), "std must be positive"),
    (lambda: gaussian_marginal_velocity(torch.zeros(4, 2), 0.5, torch.zeros(3), 1.0, RectifiedFlow()),
     r"mean must broadcast to one example of shape \(2,\)"),
    (lambda: gaussian_marginal_velocity(torch.zeros(4, 2), 1.5, 0.0, 1.0, RectifiedFlow()), r"t must lie in \[0, 1\]"),
    (lambda: gaussian_marginal_velocity(torch.zeros(4, 2), torch.rand(3), 0.0, 1.0, RectifiedFlow()),
     r"t must be a number or have shape \(\) or \(4,\)"),
    (lambda: gaussian_marginal_velocity(torch.zeros(4, 2), 0.5, 0.0, 1.0, "rectified_flow"), "must be a course_lib Schedule"),
    (lambda: gaussian_marginal_velocity(torch.zeros(4, 2, dtype=torch.int64), 0.5, 0.0, 1.0, RectifiedFlow()),
     "x_t must be a floating-point tensor"),
    (lambda: gaussian_marginal_velocity(torch.zeros(4, 2), 0.5, "0", 1.0, RectifiedFlow()), "mean must be a number"),
])
def test_gaussian_marginal_velocity_rejects_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------- equivalences that teach

def test_cosine_velocity_is_pi_over_two_times_v(gen):
    """On the cosine VP path alpha = cos(pi t / 2), sigma = sin(pi t / 2), u = (pi / 2) v with
    v = alpha eps - sigma x0 (Salimans & Ho 2022, arXiv:2202.00512, sec. 4); on any VP path
    u = theta'(t) v with theta = atan(sigma / alpha), theta' = -lambda'(t) alpha sigma / 2."""
    x0, eps = torch.randn(32, 2, generator=gen, dtype=F64), torch.randn(32, 2, generator=gen, dtype=F64)
    t = 0.05 + 0.9 * torch.rand(32, generator=gen, dtype=F64)
    cosine = VPCosine(s=0.0)
    torch.testing.assert_close(target("velocity", x0, eps, cosine, t), math.pi / 2 * target("v", x0, eps, cosine, t))
    for vp in (VPLinear(), VPCosine()):
        theta_dot = (-0.5 * vp.d_log_snr(t) * vp.alpha(t) * vp.sigma(t))[:, None]
        torch.testing.assert_close(target("velocity", x0, eps, vp, t), theta_dot * target("v", x0, eps, vp, t))


def _eps_net_from_velocity_net(velocity_net, schedule):
    """The eps-prediction network that makes the same predictions as a velocity network."""
    def eps_net(x_in, t):
        x_t = x_in / c_in(schedule, t)  # the Denoiser passes c_in x_t
        return to_eps("velocity", velocity_net(x_in, t), x_t, schedule, t)
    return eps_net


@pytest.mark.parametrize("schedule", [RectifiedFlow(), CondOT(0.05), VPCosine()], ids=repr)
@pytest.mark.parametrize("step", [euler_step, ddim_step], ids=["euler", "ddim"])
def test_velocity_and_eps_prediction_give_the_same_trajectories(schedule, step, gen):
    """A network is its predictions, not its parameterisation: the velocity network and the
    eps network converted from it give the same Euler and DDIM trajectories."""
    velocity_net = SmallNet(seed=5)
    den_velocity = Denoiser(velocity_net, schedule, "velocity")
    den_eps = Denoiser(_eps_net_from_velocity_net(velocity_net, schedule), schedule, "eps")
    x_T = torch.randn(16, 2, generator=gen, dtype=F64)
    # start at t = 0.99: where alpha_t = 0 (t = 1 on these paths) an eps prediction gives no x0_hat
    # (x0_hat = (x_t - sigma_t eps_hat) / alpha_t is 0/0), while a velocity prediction still does
    times = uniform_grid(12, t_start=0.99).double()
    trajs = [Trajectory(), Trajectory()]
    for den, traj in zip((den_velocity, den_eps), trajs):
        sample(den, x_T, times, step, callback=traj)
    torch.testing.assert_close(trajs[0].stacked(), trajs[1].stacked(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(torch.stack(trajs[0].x0_hats), torch.stack(trajs[1].x0_hats), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("n_steps", [1, 4, 25])
def test_ddim_on_the_straight_path_is_euler_in_t(n_steps, gen):
    """x_s = alpha_s x0_hat + sigma_s eps_hat = x_t + (s - t)(eps_hat - x0_hat) when alpha = 1 - t, sigma = t."""
    den = Denoiser(SmallNet(seed=2), RectifiedFlow(), "velocity")
    x_T = torch.randn(32, 2, generator=gen, dtype=F64)
    trajs = [Trajectory(), Trajectory()]
    for step, traj in zip((ddim_step, euler_step), trajs):
        sample(den, x_T, uniform_grid(n_steps).double(), step, callback=traj)
    torch.testing.assert_close(trajs[0].stacked(), trajs[1].stacked(), rtol=1e-12, atol=1e-12)
    # ... but not on a curved path: the same test on the cosine schedule tells them apart
    den_cos = Denoiser(SmallNet(seed=2), VPCosine(), "velocity")
    times = uniform_grid(4, t_start=0.99).double()
    ends = [sample(den_cos, x_T, times, step) for step in (ddim_step, euler_step)]
    assert float((ends[0] - ends[1]).abs().max()) > 1e-3


@pytest.mark.parametrize("schedule", [RectifiedFlow(), CondOT(0.05), VPCosine(), VPLinear()], ids=repr)
def test_flow_matching_loss_is_a_weighted_eps_loss(schedule, gen):
    """With x0_hat = (x_t - sigma_t eps_hat) / alpha_t, u - u_hat = -(sigma_t lambda'_t / 2)(eps - eps_hat), so the
    per-example flow-matching loss is the eps-loss weighted by w(t) = (sigma_t lambda'_t / 2)^2
    (1 / (1 - t)^2 on the straight path)."""
    den = Denoiser(SmallNet(seed=4), schedule, "velocity")
    x0, eps = torch.randn(64, 2, generator=gen, dtype=F64), torch.randn(64, 2, generator=gen, dtype=F64)
    t = 0.05 + 0.9 * torch.rand(64, generator=gen, dtype=F64)
    per_example = flow_matching_loss(den, x0, eps=eps, t=t, reduction="none")
    eps_error = ((den.eps(schedule.add_noise(x0, t, eps), t) - eps) ** 2).mean(1)
    weight = (schedule.sigma(t) * schedule.d_log_snr(t) / 2) ** 2
    torch.testing.assert_close(per_example, weight * eps_error, rtol=1e-9, atol=1e-12)
    if isinstance(schedule, RectifiedFlow):
        torch.testing.assert_close(weight, 1 / (1 - t) ** 2)
