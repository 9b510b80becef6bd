"""Consistency models (chapter 10): scalings, the boundary condition, the losses and the sampler.

The meaning-carrying checks:

* the EDM scalings are *derived* here in SymPy (unit-variance input, minimal-variance unit-variance
  target) and compared with ``edm_scalings``; the consistency scalings reduce to them at
  sigma_bar_min = 0 and meet the boundary condition c_skip = 1, c_out = 0 at t_min;
* f(x, t_min) = x for every network, every schedule and both parameterisations;
* on Gaussian data the exact consistency function is known in closed form (the probability-flow
  ODE keeps the standardised value (x_t - alpha_t M) / std(x_t) constant): its distillation loss
  with an exact-denoiser teacher vanishes as the grid is refined, while a wrong function's does not;
* the losses equal a plain per-example reference implementation (same k, same eps);
* a small consistency-training run on 2-D data beats an untrained model and approaches the
  data-vs-data MMD floor in one step.
"""
import math

import pytest
import sympy as sp
import torch

from course_lib.consistency import (ConsistencyModel, consistency_distance, consistency_distillation_loss,
                                    consistency_grid, consistency_scalings, consistency_training_loss,
                                    edm_scalings, noise_level)
from course_lib.parameterization import Denoiser
from course_lib.samplers import STEPS, consistency_step, ddim_step, euler_step, heun_step, sample
from course_lib.schedules import EDM, VE, DDPMTable, RectifiedFlow, VPCosine, VPLinear
from course_lib.training import EMA

F64 = torch.float64
M, S = 0.7, 0.5  # Gaussian data x0 ~ N(M, S^2) in every coordinate


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


class GaussianDenoiser:
    """E[x0 | x_t] for x0 ~ N(M, S^2): M + alpha S^2 / (alpha^2 S^2 + sigma^2) (x_t - alpha M)."""

    def __init__(self, schedule):
        self.schedule = schedule

    def __call__(self, x_t, t):
        t = torch.as_tensor(t, dtype=F64)
        a, s = self.schedule._alpha(t), self.schedule._sigma(t)
        if a.dim():
            a, s = a.reshape(-1, *([1] * (x_t.dim() - 1))), s.reshape(-1, *([1] * (x_t.dim() - 1)))
        return (M + a * S**2 / (a**2 * S**2 + s**2) * (x_t - a * M)).to(x_t.dtype)


def exact_consistency(schedule, x_t, t, t_min):
    """The exact consistency function of N(M, S^2) data: the PF-ODE map from t to t_min."""
    def mean_std(tt):
        tt = torch.as_tensor(tt, dtype=F64)
        a, s = schedule._alpha(tt), schedule._sigma(tt)
        return a * M, torch.sqrt(a**2 * S**2 + s**2)

    (m_t, s_t), (m_0, s_0) = mean_std(t), mean_std(t_min)
    shape = (-1,) + (1,) * (x_t.dim() - 1)
    if m_t.dim():
        m_t, s_t = m_t.reshape(shape), s_t.reshape(shape)
    return m_0 + s_0 * (x_t - m_t) / s_t


class ExactF(torch.nn.Module):
    """The network F whose consistency model is the exact consistency function (for t > t_min)."""

    def __init__(self, schedule, sigma_data, t_min):
        super().__init__()
        self.schedule, self.sigma_data, self.t_min = schedule, sigma_data, t_min
        self.sigma_bar_min = float(noise_level(schedule, torch.tensor(t_min, dtype=torch.float32)))

    def forward(self, x_in, t):
        t = t.to(F64)
        sigma_bar = noise_level(self.schedule, t).reshape(-1, *([1] * (x_in.dim() - 1)))
        c_skip, c_out, c_in = consistency_scalings(sigma_bar, sigma_data=self.sigma_data,
                                                   sigma_bar_min=self.sigma_bar_min)
        x = x_in / c_in
        alpha_t = self.schedule._alpha(t).reshape(sigma_bar.shape)
        target = exact_consistency(self.schedule, alpha_t * x, t, self.t_min)
        safe = torch.where(c_out > 0, c_out, torch.ones_like(c_out))
        return torch.where(c_out > 0, (target - c_skip * x) / safe, torch.zeros_like(x))


def tiny_net(seed=0, dim=2):
    torch.manual_seed(seed)
    lin = torch.nn.Sequential(torch.nn.Linear(dim + 1, 16), torch.nn.Tanh(), torch.nn.Linear(16, dim))

    def net(x, t):
        return lin(torch.cat([x, t[:, None].to(x.dtype)], dim=1).to(torch.float32)).to(x.dtype)

    net.module = lin
    return net


# --------------------------------------------------------------------------- scalings

def test_edm_scalings_are_the_sympy_derivation():
    """c_in from Var(c_in x) = 1; c_skip minimises Var(x0 - c_skip x); c_out makes the target unit-variance."""
    sigma, sd, c_skip, c_in = sp.symbols("sigma_bar sigma_data c_skip c_in", positive=True)
    var_x = sd**2 + sigma**2  # x = x0 + sigma eps, Var(x0) = sd^2, independent
    c_in_solved = [s for s in sp.solve(sp.Eq(c_in**2 * var_x, 1), c_in) if s.is_positive][0]
    var_target = sp.expand((1 - c_skip) ** 2 * sd**2 + c_skip**2 * sigma**2)  # Var(x0 - c_skip (x0 + sigma eps))
    c_skip_solved = sp.solve(sp.diff(var_target, c_skip), c_skip)[0]
    c_out_solved = sp.sqrt(sp.factor(var_target.subs(c_skip, c_skip_solved)))
    fns = [sp.lambdify((sigma, sd), e) for e in (c_skip_solved, c_out_solved, c_in_solved)]
    g = torch.Generator().manual_seed(1)
    sigma_bar = 10 ** (4 * torch.rand(50, generator=g, dtype=F64) - 2)  # 0.01 .. 100
    for sigma_data in (0.5, 1.0, 0.75):
        lib = edm_scalings(sigma_bar, sigma_data=sigma_data)
        for fn, value in zip(fns, lib):
            expected = torch.as_tensor(fn(sigma_bar.numpy(), sigma_data), dtype=F64)
            torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-14)


def test_consistency_scalings_boundary_and_edm_limit():
    sigma_bar = torch.tensor([0.002, 0.01, 1.0, 80.0], dtype=F64)
    c_skip, c_out, c_in = consistency_scalings(sigma_bar, sigma_data=0.5, sigma_bar_min=0.002)
    assert c_skip[0] == 1.0 and c_out[0] == 0.0  # the boundary condition, exactly
    assert bool((c_skip[1:] < 1).all()) and bool((c_out[1:] > 0).all())
    edm = edm_scalings(sigma_bar, sigma_data=0.5)
    for a, b in zip(consistency_scalings(sigma_bar, sigma_data=0.5, sigma_bar_min=0.0), edm):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert abs(float(edm[0][0]) - 1) > 1e-5  # EDM's c_skip alone misses the boundary
    # the paper's forms (Song et al. 2023, App. C) at a random point
    s, sd, e = 3.7, 0.5, 0.002
    skip, out, _ = consistency_scalings(torch.tensor([s], dtype=F64), sigma_data=sd, sigma_bar_min=e)
    assert math.isclose(float(skip), sd**2 / ((s - e) ** 2 + sd**2), rel_tol=1e-14)
    assert math.isclose(float(out), sd * (s - e) / math.sqrt(sd**2 + s**2), rel_tol=1e-14)


def test_scalings_validate_their_inputs():
    with pytest.raises(ValueError, match="sigma_data must be a finite number > 0"):
        edm_scalings(torch.ones(2), sigma_data=0.0)
    with pytest.raises(ValueError, match="sigma_bar must be >= sigma_bar_min"):
        consistency_scalings(torch.tensor([0.001]), sigma_data=0.5, sigma_bar_min=0.002)
    with pytest.raises(ValueError, match="sigma_bar must be finite and >= 0"):
        edm_scalings(torch.tensor([-1.0]), sigma_data=0.5)
    with pytest.raises(ValueError, match="sigma_bar must be a floating-point tensor"):
        edm_scalings([1.0], sigma_data=0.5)
    with pytest.raises(ValueError, match="sigma_bar_min must be a finite number >= 0"):
        consistency_scalings(torch.ones(1), sigma_data=0.5, sigma_bar_min=-1.0)


@pytest.mark.parametrize("schedule", [VPLinear(), VPCosine(), DDPMTable.from_name("linear", 1000).schedule(),
                                      EDM(), VE(), RectifiedFlow()], ids=lambda s: type(s).__name__)
def test_noise_level_is_sigma_over_alpha(schedule):
    t = torch.tensor([0.05, 0.3, 0.6, 0.9], dtype=F64)
    expected = torch.exp(-schedule.log_snr(t) / 2)
    torch.testing.assert_close(noise_level(schedule, t), expected, rtol=1e-9, atol=0)


def test_noise_level_needs_alpha_positive():
    with pytest.raises(ValueError, match="needs alpha_t > 0"):
        noise_level(RectifiedFlow(), torch.tensor(1.0))
    with pytest.raises(ValueError, match="schedule must be a course_lib Schedule"):
        noise_level("linear", torch.tensor(0.5))


# --------------------------------------------------------------------------- the model

@pytest.mark.parametrize("schedule,t_min", [(DDPMTable.from_name("linear", 1000).schedule(), 1e-3),
                                            (VPCosine(), 1e-3), (EDM(), 0.0), (RectifiedFlow(), 1e-3),
                                            (VPLinear(), 0.0)], ids=lambda v: type(v).__name__)
@pytest.mark.parametrize("prediction", [None, "eps", "velocity"])
def test_boundary_condition_holds_for_any_network(schedule, t_min, prediction, gen):
    net = tiny_net(3)
    cm = ConsistencyModel(net, schedule, sigma_data=0.7, t_min=t_min, prediction=prediction)
    x = torch.randn(6, 2, generator=gen)
    t = torch.tensor(t_min)
    # boundary: f returns the scaled state x_t / alpha_t (= x_t on VE paths, 1.00005 x_t for DDPM at t = 1e-3)
    torch.testing.assert_close(cm(x, t), x / schedule.alpha(t), rtol=0, atol=1e-6)
    assert (cm(x, torch.tensor(0.5)) - x).abs().max() > 1e-3  # away from t_min the network matters


def test_warm_start_parameterisation_equals_the_denoiser_away_from_t_min(gen):
    """prediction="eps": f = c_skip x + (sigma_bar - sigma_bar_min)/sigma_bar (D - c_skip^EDM x),
    i.e. the paper's form with F read off EDM's D = c_skip^EDM x + c_out^EDM F; exactly D if sigma_bar_min = 0."""
    schedule, net = VPLinear(), tiny_net(1)
    den = Denoiser(net, schedule, prediction="eps")
    x_t, t = torch.randn(8, 2, generator=gen), torch.rand(8, generator=gen) * 0.9 + 0.05
    cm0 = ConsistencyModel(net, schedule, sigma_data=0.5, t_min=0.0, prediction="eps")
    torch.testing.assert_close(cm0(x_t, t), den(x_t, t), rtol=1e-5, atol=1e-6)
    cm = ConsistencyModel(net, schedule, sigma_data=0.5, t_min=1e-3, prediction="eps")
    alpha_t = schedule.alpha(t)[:, None]
    sigma_bar = noise_level(schedule, t).float()[:, None]
    x = x_t / alpha_t
    skip_edm, out_edm, _ = edm_scalings(sigma_bar, sigma_data=0.5)
    F = (den(x_t, t) - skip_edm * x) / out_edm
    c_skip, c_out, _ = consistency_scalings(sigma_bar, sigma_data=0.5, sigma_bar_min=cm.sigma_bar_min)
    torch.testing.assert_close(cm(x_t, t), c_skip * x + c_out * F, rtol=1e-4, atol=1e-5)


def test_raw_network_parameterisation_matches_the_formula(gen):
    schedule = DDPMTable.from_name("linear", 1000).schedule()
    seen = {}

    def net(x_in, t):
        seen["x_in"] = x_in
        return torch.full_like(x_in, 0.3)

    cm = ConsistencyModel(net, schedule, sigma_data=1.0, t_min=1e-3)
    x_t, t = torch.randn(5, 1, 2, 2, generator=gen), torch.tensor([0.01, 0.2, 0.5, 0.8, 1.0])
    out = cm(x_t, t)
    alpha_t = schedule.alpha(t).reshape(-1, 1, 1, 1)
    sigma_bar = noise_level(schedule, t).float().reshape(-1, 1, 1, 1)
    c_skip, c_out, c_in = consistency_scalings(sigma_bar, sigma_data=1.0, sigma_bar_min=cm.sigma_bar_min)
    torch.testing.assert_close(out, c_skip * x_t / alpha_t + c_out * 0.3, rtol=1e-4, atol=1e-5)
    # sigma_data = 1 on a VP path: the network sees x_t itself, as a course Denoiser's network does
    torch.testing.assert_close(seen["x_in"], x_t, rtol=1e-4, atol=1e-5)


def test_consistency_model_validates(gen):
    net = tiny_net()
    with pytest.raises(ValueError, match="t_min must be a number in"):
        ConsistencyModel(net, VPLinear(), t_min=1.0)
    with pytest.raises(ValueError, match="prediction must be None"):
        ConsistencyModel(net, VPLinear(), prediction="noise")
    with pytest.raises(ValueError, match="sigma_data must be"):
        ConsistencyModel(net, VPLinear(), sigma_data=-1.0)
    with pytest.raises(ValueError, match="schedule must be a course_lib Schedule"):
        ConsistencyModel(net, "linear")
    with pytest.raises(ValueError, match="x0_range must be a pair"):
        ConsistencyModel(net, VPLinear(), x0_range=(1, -1))
    with pytest.raises(ValueError, match=r"t_max must be a number in \(t_min, 1\]"):
        ConsistencyModel(net, VPLinear(), t_min=0.5, t_max=0.4)
    cm = ConsistencyModel(net, VPLinear(), t_min=0.01, t_max=0.7)
    with pytest.raises(ValueError, match=r"defined for t in \[t_min, t_max\]"):
        cm(torch.zeros(2, 2), torch.tensor(0.005))
    with pytest.raises(ValueError, match=r"defined for t in \[t_min, t_max\]"):
        cm(torch.zeros(2, 2), torch.tensor(0.8))
    with pytest.raises(ValueError, match="the grid must start at or below the model's t_max"):
        consistency_training_loss(cm, cm, torch.zeros(4, 2), torch.tensor([0.9, 0.5, 0.01]))
    with pytest.raises(ValueError, match="t must be a scalar or have shape"):
        cm(torch.zeros(2, 2), torch.full((3,), 0.5))
    bad = ConsistencyModel(lambda x, t: x[:, :1], VPLinear())
    with pytest.raises(ValueError, match="the network must return F of x_t's shape"):
        bad(torch.zeros(2, 2), torch.tensor(0.5))


# --------------------------------------------------------------------------- the grid

def test_consistency_grid_is_karras_in_sigma_bar():
    schedule = DDPMTable.from_name("linear", 1000).schedule()
    times = consistency_grid(schedule, 12, t_min=1e-3, t_max=1.0, rho=7.0)
    assert times.shape == (12,) and times.dtype == torch.float32
    assert times[0] == 1.0 and times[-1] == torch.tensor(1e-3, dtype=torch.float32)
    assert bool((times[1:] < times[:-1]).all())
    root = noise_level(schedule, times) ** (1 / 7)
    steps = root[1:] - root[:-1]
    assert float(steps.max() - steps.min()) < 1e-4 * float(steps.abs().max())  # even in sigma_bar^(1/rho)
    edm = consistency_grid(EDM(), 5, t_min=0.0, rho=7.0)  # EDM's own t is already Karras-uniform
    torch.testing.assert_close(edm, torch.linspace(1, 0, 5), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="n_points must be an integer >= 2"):
        consistency_grid(schedule, 1, t_min=1e-3)
    with pytest.raises(ValueError, match="need 0 <= t_min < t_max <= 1"):
        consistency_grid(schedule, 5, t_min=0.5, t_max=0.2)
    with pytest.raises(ValueError, match="rho must be a number > 0"):
        consistency_grid(schedule, 5, t_min=1e-3, rho=0)


# --------------------------------------------------------------------------- losses

def _reference_cd(model, target, teacher, x0, times, k, eps, step):
    """One example at a time, exactly as Song et al. 2023, Algorithm 2 reads."""
    losses = []
    for i in range(x0.shape[0]):
        t_up, t_lo = times[k[i]], times[k[i] + 1]
        x_up = model.schedule.alpha(t_up) * x0[i:i + 1] + model.schedule.sigma(t_up) * eps[i:i + 1]
        x_lo = step(teacher, x_up, t_up, t_lo)[0]
        diff = model(x_up, t_up) - target(x_lo, t_lo)
        losses.append((diff**2).mean())
    return torch.stack(losses)


def test_distillation_loss_matches_the_per_example_reference(gen):
    schedule = VPCosine()
    model = ConsistencyModel(tiny_net(0), schedule, sigma_data=0.5, t_min=1e-3)
    target = ConsistencyModel(tiny_net(1), schedule, sigma_data=0.5, t_min=1e-3)
    teacher = GaussianDenoiser(schedule)
    times = consistency_grid(schedule, 6, t_min=1e-3, t_max=0.98)
    x0 = M + S * torch.randn(10, 2, generator=gen)
    k = torch.randint(0, 5, (10,), generator=gen)
    eps = torch.randn(10, 2, generator=gen)
    for step in (ddim_step, heun_step):
        lib = consistency_distillation_loss(model, target, teacher, x0, times, solver_step=step, k=k, eps=eps,
                                            reduction="none")
        with torch.no_grad():
            ref = _reference_cd(model, target, teacher, x0, times, k, eps, step)
        torch.testing.assert_close(lib.detach(), ref, rtol=1e-4, atol=1e-6)


def test_training_loss_matches_the_reference_and_uses_one_eps(gen):
    schedule = EDM()
    model = ConsistencyModel(tiny_net(0), schedule, sigma_data=0.5, t_min=0.0)
    target = ConsistencyModel(tiny_net(1), schedule, sigma_data=0.5, t_min=0.0)
    times = consistency_grid(schedule, 8, t_min=0.0)
    x0, eps = torch.randn(7, 2, generator=gen), torch.randn(7, 2, generator=gen)
    k = torch.randint(0, 7, (7,), generator=gen)
    lib = consistency_training_loss(model, target, x0, times, k=k, eps=eps, reduction="none")
    t_up, t_lo = times[k], times[k + 1]
    with torch.no_grad():
        ref = ((model(x0 + schedule.sigma(t_up)[:, None] * eps, t_up)
                - target(x0 + schedule.sigma(t_lo)[:, None] * eps, t_lo)) ** 2).mean(1)
    torch.testing.assert_close(lib.detach(), ref, rtol=1e-5, atol=1e-7)
    # gradients flow into the model only
    loss = consistency_training_loss(model, target, x0, times, k=k, eps=eps)
    loss.backward()
    assert all(p.grad is not None for p in model.net.module.parameters())
    assert all(p.grad is None for p in target.net.module.parameters())


def test_exact_consistency_function_has_vanishing_distillation_loss(gen):
    """With the exact teacher and Heun steps the exact f gives an O(h^3)-per-pair residual; a wrong f does not."""
    schedule, t_min = VPLinear(), 1e-3
    teacher = GaussianDenoiser(schedule)
    exact = ConsistencyModel(ExactF(schedule, 0.5, t_min), schedule, sigma_data=0.5, t_min=t_min)
    x0 = (M + S * torch.randn(512, 2, generator=gen, dtype=F64))
    losses = {}
    for n_points in (10, 40):
        times = consistency_grid(schedule, n_points, t_min=t_min, t_max=0.95).double()
        losses[n_points] = float(consistency_distillation_loss(exact, exact, teacher, x0, times, solver_step=heun_step,
                                                               generator=torch.Generator().manual_seed(1)))
    identity = ConsistencyModel(lambda x, t: torch.zeros_like(x), schedule, sigma_data=0.5, t_min=t_min)
    times = consistency_grid(schedule, 40, t_min=t_min, t_max=0.95).double()
    wrong = float(consistency_distillation_loss(identity, identity, teacher, x0, times, solver_step=heun_step,
                                                generator=torch.Generator().manual_seed(1)))
    assert losses[40] < 1e-6 and losses[40] < losses[10] / 30, losses
    assert wrong > 1e3 * losses[40], (wrong, losses)


def test_exact_consistency_function_maps_every_point_to_the_end(gen):
    """One consistency step from any t gives the end of the exact PF-ODE trajectory (the definition)."""
    schedule, t_min = VPCosine(), 1e-3
    exact = ConsistencyModel(ExactF(schedule, 0.5, t_min), schedule, sigma_data=0.5, t_min=t_min)
    teacher = GaussianDenoiser(schedule)
    x_T = torch.randn(64, 2, generator=gen, dtype=F64)
    ode_end = sample(teacher, x_T, torch.linspace(0.9, t_min, 400, dtype=F64), heun_step)
    one_step = exact(x_T, torch.tensor(0.9, dtype=F64))
    torch.testing.assert_close(one_step, ode_end, rtol=0, atol=1e-4)


def test_losses_are_reproducible_and_validate(gen):
    schedule = VPLinear()
    model = ConsistencyModel(tiny_net(0), schedule, t_min=1e-3)
    times = consistency_grid(schedule, 5, t_min=1e-3, t_max=0.9)
    x0 = torch.randn(16, 2, generator=gen)
    a = consistency_training_loss(model, model, x0, times, generator=torch.Generator().manual_seed(4))
    b = consistency_training_loss(model, model, x0, times, generator=torch.Generator().manual_seed(4))
    assert float(a.detach()) == float(b.detach())
    teacher = Denoiser(tiny_net(2), schedule, prediction="eps")
    c = consistency_distillation_loss(model, model, teacher, x0, times, solver_step=euler_step,
                                      generator=torch.Generator().manual_seed(4))
    d = consistency_distillation_loss(model, model, teacher, x0, times, solver_step=euler_step,
                                      generator=torch.Generator().manual_seed(4))
    assert float(c.detach()) == float(d.detach())
    with pytest.raises(ValueError, match="times must be strictly decreasing"):
        consistency_training_loss(model, model, x0, times.flip(0))
    with pytest.raises(ValueError, match="the grid must end at or above the model's t_min"):
        consistency_training_loss(model, model, x0, torch.tensor([0.5, 1e-4]))
    with pytest.raises(ValueError, match="k must be an integer tensor of shape"):
        consistency_training_loss(model, model, x0, times, k=torch.full((16,), 4))
    with pytest.raises(ValueError, match="eps must have x0's shape"):
        consistency_training_loss(model, model, x0, times, eps=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="model must be a ConsistencyModel"):
        consistency_training_loss(teacher, model, x0, times)
    with pytest.raises(ValueError, match="solver_step must be a course step function"):
        consistency_distillation_loss(model, model, teacher, x0, times, solver_step=None)
    with pytest.raises(ValueError, match="teacher must be a course denoiser"):
        consistency_distillation_loss(model, model, lambda x, t: x, x0, times, solver_step=ddim_step)
    with pytest.raises(ValueError, match="reduction must be"):
        consistency_training_loss(model, model, x0, times, reduction="sum")


def test_distances():
    a, b = torch.zeros(3, 4), torch.tensor([[0.0] * 4, [1.0] * 4, [0.001] * 4])
    torch.testing.assert_close(consistency_distance(a, b), torch.tensor([0.0, 1.0, 1e-6]))
    c = 0.00054 * 2.0  # 0.00054 sqrt(D), D = 4
    huber = consistency_distance(a, b, distance="pseudo_huber")
    torch.testing.assert_close(huber, torch.sqrt(((a - b) ** 2).sum(1) + c**2) - c)
    assert abs(float(huber[1]) - 2.0) < 2 * c  # large differences: about ||a - b|| = 2
    small = consistency_distance(a.double(), 1e-5 * torch.ones(3, 4, dtype=F64), distance="pseudo_huber", huber_c=1.0)
    torch.testing.assert_close(small, torch.full((3,), 4e-10 / 2, dtype=F64), rtol=1e-3, atol=0)  # ~ ||d||^2 / (2c)
    with pytest.raises(ValueError, match="unknown distance"):
        consistency_distance(a, b, distance="lpips")
    with pytest.raises(ValueError, match="a and b must be tensors of one shape"):
        consistency_distance(a, b[:2])


def test_ema_target_with_mu_zero_is_the_current_network():
    net = torch.nn.Linear(2, 2)
    target = EMA(net, decay=0.0, warmup=False)
    with torch.no_grad():
        net.weight.add_(1.0)
    target.update(net)
    torch.testing.assert_close(target.model.weight, net.weight)


# --------------------------------------------------------------------------- the sampler

def test_consistency_step(gen):
    schedule = VPCosine()
    cm = ConsistencyModel(tiny_net(0), schedule, sigma_data=0.5, t_min=1e-3)
    x_t, z = torch.randn(4, 2, generator=gen), torch.randn(4, 2, generator=gen)
    x_s, x0_hat, state = consistency_step(cm, x_t, torch.tensor(0.8), torch.tensor(0.3), noise=z)
    torch.testing.assert_close(x0_hat, cm(x_t, torch.tensor(0.8)))
    torch.testing.assert_close(x_s, schedule.alpha(torch.tensor(0.3)) * x0_hat + schedule.sigma(torch.tensor(0.3)) * z)
    assert state is None
    x_0, x0_hat_0, _ = consistency_step(cm, x_t, torch.tensor(0.8), torch.tensor(0.0))
    assert torch.equal(x_0, x0_hat_0)  # the last step returns f's output
    ve = ConsistencyModel(tiny_net(0), EDM(), sigma_data=0.5, t_min=0.0)
    x_0, x0_hat_0, _ = consistency_step(ve, x_t, torch.tensor(0.8), torch.tensor(0.0))
    assert torch.equal(x_0, x0_hat_0)  # also where sigma_0 = sigma_min > 0
    one = sample(cm, x_t, torch.tensor([0.9, 0.0]), consistency_step)
    torch.testing.assert_close(one, cm(x_t, torch.tensor(0.9)))  # one-step generation = one call of f
    runs = [sample(cm, x_t, torch.tensor([0.9, 0.5, 0.2, 0.0]), consistency_step,
                   generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    other = sample(cm, x_t, torch.tensor([0.9, 0.5, 0.2, 0.0]), consistency_step,
                   generator=torch.Generator().manual_seed(8))
    assert (other - runs[0]).abs().max() > 1e-4  # fresh noise at every intermediate step
    assert STEPS["consistency"] is consistency_step
    with pytest.raises(ValueError, match="noise must be a standard normal tensor of x_t's shape"):
        consistency_step(cm, x_t, torch.tensor(0.8), torch.tensor(0.3), noise=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="a reverse step needs s < t"):
        consistency_step(cm, x_t, torch.tensor(0.3), torch.tensor(0.8))


# --------------------------------------------------------------------------- learning

class MixtureDenoiser2d:
    """The exact E[x0 | x_t] of four isotropic Gaussians (std STD_2D) at CENTRES (Bayes, then Gaussian conditioning)."""

    def __init__(self, schedule):
        self.schedule = schedule

    def __call__(self, x_t, t):
        t = torch.as_tensor(t, dtype=x_t.dtype).expand(x_t.shape[0])
        a, s = self.schedule.alpha(t)[:, None, None], self.schedule.sigma(t)[:, None, None]  # (B, 1, 1)
        var = a**2 * STD_2D**2 + s**2
        d2 = ((x_t[:, None, :] - a * CENTRES) ** 2).sum(-1, keepdim=True)  # (B, 4, 1)
        responsibilities = torch.softmax(-0.5 * d2 / var, dim=1)
        posterior_means = CENTRES + a * STD_2D**2 / var * (x_t[:, None, :] - a * CENTRES)  # (B, 4, 2)
        return (responsibilities * posterior_means).sum(1)


CENTRES = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])
STD_2D = 0.15


def mixture_2d(n, seed):
    g = torch.Generator().manual_seed(seed)
    return CENTRES[torch.randint(0, 4, (n,), generator=g)] + STD_2D * torch.randn(n, 2, generator=g)


def test_consistency_distillation_learns_a_2d_mixture_in_one_step():
    """CD from the exact denoiser of 4 Gaussians (Heun teacher, EDM path with sigma_max = 10, mu = 0), ~10 s:
    one call of f puts most samples on the clusters, in balanced numbers, where one call of the teacher's
    denoiser (one-step DDIM) puts none; its MMD is a small fraction of the teacher's one-step MMD.
    (Measured when written: MMD 0.07 against 2.3 for one-step DDIM and 0.0015 data-vs-data; 57% of the
    samples within 0.45 of a centre against 99.5% of the data and 0% for one-step DDIM.)"""
    from course_lib.metrics import mmd
    from course_lib.networks.mlp import TimeMLP
    from course_lib.training import train

    torch.manual_seed(0)
    schedule = EDM(sigma_max=10.0)
    net = TimeMLP(dim=2, hidden=64, depth=2)
    make = lambda n: ConsistencyModel(n, schedule, sigma_data=1.0, t_min=0.0)  # noqa: E731
    times = consistency_grid(schedule, 12, t_min=0.0)
    target = EMA(net, decay=0.0, warmup=False)
    teacher = MixtureDenoiser2d(schedule)
    x_T = schedule.prior_std() * torch.randn(1000, 2, generator=torch.Generator().manual_seed(1))
    ref = mixture_2d(1000, 2)

    def loss_fn(m, batch, g):
        return consistency_distillation_loss(make(m), make(target.model), teacher, batch, times, solver_step=heun_step,
                                             generator=g)

    result = train(net, loss_fn, mixture_2d(10000, 3), steps=800, batch_size=256, lr=1e-3, ema_decay=0.99,
                   device="cpu", progress=False, callback=lambda step, loss, m: target.update(m))
    with torch.no_grad():
        one_step = make(result.ema_model)(x_T, torch.tensor(1.0))
        ddim_one = teacher(x_T, torch.tensor(1.0))  # one DDIM step to t = 0 returns D(x_T, T)
    near = torch.cdist(one_step, CENTRES).min(1)
    frac_near, counts = float((near.values < 0.45).float().mean()), torch.bincount(near.indices, minlength=4)
    frac_near_ddim = float((torch.cdist(ddim_one, CENTRES).min(1).values < 0.45).float().mean())
    frac_near_data = float((torch.cdist(ref, CENTRES).min(1).values < 0.45).float().mean())
    mmd_cd, mmd_ddim, floor = mmd(one_step, ref), mmd(ddim_one, ref), mmd(mixture_2d(1000, 4), ref)
    assert frac_near > 0.45 and frac_near_ddim < 0.05 and frac_near_data > 0.98, (frac_near, frac_near_ddim)
    assert int(counts.min()) > 150, counts  # every cluster is reached (about 250 each)
    assert mmd_cd < 0.1 * mmd_ddim and mmd_cd < 0.15, (mmd_cd, mmd_ddim, floor)


# --------------------------------------------------------------------------- zoo recipes (chapter 10 section)

def test_zoo_recipes_name_their_parent_and_sizes():
    from course_lib import zoo
    from course_lib.profiles import PROFILES

    for name in PROFILES:
        profile = PROFILES[name]
        cd = zoo.RECIPES["cd_digits"].config(profile)
        assert cd["parent"] == "digits_unet" and cd["parent_profile"] == name
        assert cd["parent_file"] == zoo.cache_path("digits_unet", profile).name  # a new parent gives a new child
        assert cd["warm_start"] and cd["prediction"] == "eps" and cd["t_max"] < 1
        ct = zoo.RECIPES["ct_moons"].config(profile)
        assert ct["prediction"] is None and ct["schedule"] == "edm" and ct["loss"] == "training"
    assert zoo.RECIPES["cd_digits"].kind == zoo.RECIPES["ct_moons"].kind == "consistency"
    classroom, quick = PROFILES["classroom"], PROFILES["quick"]
    assert zoo.RECIPES["cd_digits"].config(quick)["steps"] < zoo.RECIPES["cd_digits"].config(classroom)["steps"]
    with pytest.raises(ValueError, match="is a denoiser, not a consistency model"):
        zoo.pretrained_consistency_model("digits_unet")


def test_zoo_consistency_fit_trains_and_wraps(monkeypatch, tmp_path):
    """A tiny consistency-training recipe through the zoo's fit (target EMA, grid, loss) and its wrapper."""
    from course_lib import zoo
    from course_lib.profiles import get_profile

    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))

    def config(profile):
        return {**zoo.RECIPES["ct_moons"].config(profile), "steps": 5, "batch_size": 32, "n_data": 256,
                "net_params": {"dim": 2, "hidden": 16, "depth": 1}}

    monkeypatch.setitem(zoo.RECIPES, "tiny_ct", zoo.Recipe("tiny_ct", "consistency", config, zoo._build_mlp,
                                                           zoo._fit_consistency, "test"))
    entry = zoo.load("tiny_ct", profile=get_profile("quick"), device="cpu", progress=False)
    assert entry.trained_now and entry.metrics["steps"] == 5 and math.isfinite(entry.metrics["final_loss"])
    cm = zoo.pretrained_consistency_model("tiny_ct", profile=get_profile("quick"), device="cpu", progress=False)
    assert isinstance(cm, ConsistencyModel) and cm.t_min == 0.0 and cm.t_max == 1.0 and cm.prediction is None
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(cm(x, torch.tensor(0.0)), x)  # the boundary, through the zoo's wrapper
