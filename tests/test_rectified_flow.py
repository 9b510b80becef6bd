"""Rectified flow (chapter 09): reflow pairs, straightness, the reflow and distillation losses, the zoo recipes.

Gaussian data x0 ~ N(M, S^2) (every coordinate) gives two exact velocity fields on the straight path
x_t = (1 - t) x0 + t eps, so every function can be checked against closed forms:

* the 1-rectified flow (independent coupling): u_1(x, t) = E[eps - x0 | x_t = x]
  (course_lib.flow_matching.gaussian_marginal_velocity). Its trajectories are
  x_t = (1 - t) M + sigma_t z with sigma_t = sqrt((1 - t)^2 S^2 + t^2) and z = x_1, so its ODE maps
  eps to M + S eps, and its straightness per coordinate is int_0^1 sigma'_t^2 dt - (1 - S)^2, which
  SymPy integrates to S (2 - atan(S) - atan(1/S)) = (2 - pi/2) S;
* the reflowed flow of the coupling (M + S z, z): straight lines x_t = (1 - t)(M + S z) + t z, velocity
  u_2(x, t) = (1 - S)(x - (1 - t) M) / ((1 - t) S + t) - M. Euler is exact on it and S = 0.
"""
import math

import pytest
import sympy as sp
import torch

from course_lib.flow_matching import gaussian_marginal_velocity
from course_lib.losses import diffusion_loss
from course_lib.networks.mlp import TimeMLP
from course_lib.parameterization import Denoiser
from course_lib.rectified_flow import distillation_loss, reflow_loss, reflow_pairs, straightness
from course_lib.samplers import euler_step, heun_step, sample
from course_lib.schedules import RectifiedFlow, VPCosine
from course_lib.time_grids import uniform_grid
from course_lib.training import train

F64 = torch.float64
M, S = 0.7, 0.5
RF = RectifiedFlow()


class VelocityNet:
    """An exact velocity u(x, t) as the 'network' of Denoiser(..., prediction="velocity").

    The Denoiser feeds the network c_in x_t with c_in = 1 / sqrt(alpha_t^2 + sigma_t^2); undo it."""

    def __init__(self, velocity):
        self.velocity = velocity

    def __call__(self, x_in, t):
        c_in = torch.rsqrt(RF.alpha(t) ** 2 + RF.sigma(t) ** 2).reshape(-1, *[1] * (x_in.dim() - 1))
        return self.velocity(x_in / c_in, t)


def first_flow():
    """The 1-rectified flow of N(M, S^2) data: the marginal velocity of the independent coupling."""
    return Denoiser(VelocityNet(lambda x, t: gaussian_marginal_velocity(x, t, M, S, RF)), RF, "velocity")


def reflowed_field(x, t):
    t = t.reshape(-1, *[1] * (x.dim() - 1)).to(x.dtype)
    return (1 - S) * (x - (1 - t) * M) / ((1 - t) * S + t) - M


def reflowed_flow():
    """The straight-line flow of the coupling (M + S z, z)."""
    return Denoiser(VelocityNet(reflowed_field), RF, "velocity")


def straightness_first_flow_closed_form(s: float) -> float:
    t, s_ = sp.Symbol("t", real=True), sp.Symbol("s", positive=True)
    sigma_t = sp.sqrt((1 - t) ** 2 * s_**2 + t**2)
    S_sym = sp.integrate(sp.simplify(sigma_t.diff(t) ** 2), (t, 0, 1)) - (1 - s_) ** 2
    return float(S_sym.subs(s_, s))


# ------------------------------------------------------------------------------------------ reflow_pairs
def test_reflow_pairs_of_the_gaussian_flow_are_its_monotone_map():
    eps = torch.randn(300, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    errors = []
    for n_steps in (50, 100, 200):
        x0_hat, eps_out = reflow_pairs(first_flow(), eps, uniform_grid(n_steps).double())
        assert eps_out is eps
        errors.append((x0_hat - (M + S * eps)).abs().max().item())
    assert errors[-1] < 0.015  # |x| up to ~3.5: the Euler error is about 0.012 / (N / 200)
    assert 1.7 < errors[0] / errors[1] < 2.3 and 1.7 < errors[1] / errors[2] < 2.3  # Euler: first order
    x0_heun, _ = reflow_pairs(first_flow(), eps, uniform_grid(50).double(), step=heun_step)
    assert (x0_heun - (M + S * eps)).abs().max().item() < errors[0] / 20  # second order


def test_reflow_pairs_batching_and_reproducibility():
    net = TimeMLP(dim=2, hidden=16, depth=1)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    den = Denoiser(net, RF, "velocity")
    eps = torch.randn(37, 2, generator=torch.Generator().manual_seed(3))
    a, _ = reflow_pairs(den, eps, uniform_grid(7))
    b, _ = reflow_pairs(den, eps, uniform_grid(7), batch_size=5)
    c, _ = reflow_pairs(den, eps.clone(), uniform_grid(7))
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert torch.equal(a, c)
    torch.testing.assert_close(a, sample(den, eps, uniform_grid(7), euler_step))


@pytest.mark.parametrize("times, match", [
    (torch.linspace(0.9, 0.0, 5), "from the noise t = 1 down to the data t = 0"),
    (torch.linspace(1.0, 0.1, 5), "from the noise t = 1 down to the data t = 0"),
    (torch.tensor([1.0, 0.5, 0.7, 0.0]), "strictly decreasing"),
])
def test_reflow_pairs_rejects_grids_that_do_not_join_noise_and_data(times, match):
    with pytest.raises(ValueError, match=match):
        reflow_pairs(first_flow(), torch.zeros(4, 2), times)


def test_reflow_pairs_validates_its_inputs():
    with pytest.raises(ValueError, match="eps must be a floating-point tensor of shape"):
        reflow_pairs(first_flow(), torch.zeros(4), uniform_grid(3))
    with pytest.raises(ValueError, match="eps must be a floating-point tensor of shape"):
        reflow_pairs(first_flow(), torch.zeros(4, 2, dtype=torch.long), uniform_grid(3))
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        reflow_pairs(first_flow(), torch.zeros(4, 2), uniform_grid(3), batch_size=0)
    with pytest.raises(ValueError, match="denoiser must be a Denoiser"):
        reflow_pairs(lambda x, t: x, torch.zeros(4, 2), uniform_grid(3))


# ------------------------------------------------------------------------------------------ straightness
def test_straightness_of_an_exact_straight_field_is_zero_and_euler_is_exact():
    eps = torch.randn(200, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    for n_steps in (1, 3, 40):
        x0_hat, _ = reflow_pairs(reflowed_flow(), eps, uniform_grid(n_steps).double())
        torch.testing.assert_close(x0_hat, M + S * eps, rtol=1e-12, atol=1e-12)  # exact at any step count
    per_path = straightness(reflowed_flow(), eps, uniform_grid(40).double(), reduction="none")
    assert per_path.shape == (200,) and per_path.abs().max().item() < 1e-20
    assert float(straightness(reflowed_flow(), eps, uniform_grid(40).double(), step=heun_step)) < 1e-20


def test_straightness_of_the_first_flow_matches_the_sympy_integral():
    exact = straightness_first_flow_closed_form(S)
    assert abs(exact - (2 - math.pi / 2) * S) < 1e-12  # = S (2 - atan S - atan 1/S)
    eps = torch.randn(4000, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    # every path has the same |(x_1 - x_0) - dx/dt| up to the factor |z|, so the estimate per
    # coordinate is exact * mean(z^2); divide the Monte Carlo factor out
    z2 = (eps**2).mean().item()
    estimates = []
    for n_steps in (100, 400):
        estimate = float(straightness(first_flow(), eps, uniform_grid(n_steps).double())) / (2 * z2)
        estimates.append(estimate)
    assert abs(estimates[-1] - exact) < 0.01 * exact
    assert abs(estimates[-1] - exact) < abs(estimates[0] - exact)  # converges as the grid is refined
    heun = float(straightness(first_flow(), eps, uniform_grid(100).double(), step=heun_step)) / (2 * z2)
    assert abs(heun - exact) < 0.01 * exact


def test_straightness_reductions_partial_grids_and_constant_velocity():
    flow = first_flow()
    eps = torch.randn(50, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    per_path = straightness(flow, eps, uniform_grid(30).double(), reduction="none")
    mean = straightness(flow, eps, uniform_grid(30).double())
    assert mean.dim() == 0 and bool((per_path > 0).all())
    torch.testing.assert_close(mean, per_path.mean())
    partial = straightness(flow, eps, uniform_grid(20, t_start=1.0, t_end=0.5).double())
    assert 0 < float(partial) < float(mean)
    assert float(straightness(flow, eps, uniform_grid(1).double())) == 0.0  # one step is always straight
    constant = Denoiser(lambda x, t: torch.ones_like(x), RF, "velocity")
    assert float(straightness(constant, eps, uniform_grid(10).double())) < 1e-24


def test_straightness_validates_its_inputs():
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'none'"):
        straightness(first_flow(), torch.zeros(3, 2), uniform_grid(3), reduction="sum")
    with pytest.raises(ValueError, match="eps must be a floating-point tensor of shape"):
        straightness(first_flow(), [0.0, 1.0], uniform_grid(3))
    with pytest.raises(ValueError, match="strictly decreasing"):
        straightness(first_flow(), torch.zeros(3, 2), torch.tensor([0.0, 1.0]))


# ------------------------------------------------------------------------------------------ losses
def test_reflow_loss_is_the_flow_matching_loss_on_fixed_pairs():
    net = TimeMLP(dim=2, hidden=16, depth=1)
    with torch.no_grad():  # a network whose output depends on t (the zero-initialised output would not)
        net.output.weight.copy_(torch.randn(net.output.weight.shape, generator=torch.Generator().manual_seed(4)))
    den = Denoiser(net, RF, "velocity")
    g = torch.Generator().manual_seed(5)
    x0, eps, t = torch.randn(8, 2, generator=g), torch.randn(8, 2, generator=g), torch.rand(8, generator=g)
    x_t = (1 - t[:, None]) * x0 + t[:, None] * eps
    by_hand = ((den.network_output(x_t, t) - (eps - x0)) ** 2).mean(dim=1)  # Liu et al. eq. 1, course time
    torch.testing.assert_close(reflow_loss(den, x0, eps, t=t, reduction="none"), by_hand)
    torch.testing.assert_close(reflow_loss(den, x0, eps, t=t), diffusion_loss(den, x0, eps=eps, t=t))
    first = reflow_loss(den, x0, eps, generator=torch.Generator().manual_seed(9))
    again = reflow_loss(den, x0, eps, generator=torch.Generator().manual_seed(9))
    other = reflow_loss(den, x0, eps, generator=torch.Generator().manual_seed(10))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_reflow_loss_validates_the_pairs():
    den = Denoiser(TimeMLP(dim=2, hidden=8, depth=1), RF, "velocity")
    with pytest.raises(ValueError, match="x0_pairs and eps_pairs must have the same shape"):
        reflow_loss(den, torch.zeros(8, 2), torch.zeros(7, 2))
    with pytest.raises(ValueError, match="x0_pairs must be a floating-point tensor"):
        reflow_loss(den, torch.zeros(8), torch.zeros(8))
    with pytest.raises(ValueError, match="denoiser must be a course_lib Denoiser"):
        reflow_loss(lambda x, t: x, torch.zeros(8, 2), torch.zeros(8, 2))


def test_distillation_loss_is_the_one_euler_step_error_without_clipping():
    net = TimeMLP(dim=2, hidden=16, depth=1)
    with torch.no_grad():  # the output layer starts at zero: make the student predict something
        net.output.weight.copy_(torch.randn(net.output.weight.shape, generator=torch.Generator().manual_seed(6)))
    student = Denoiser(net, RF, "velocity", x0_range=(-0.1, 0.1))  # clipping must not enter the loss
    g = torch.Generator().manual_seed(7)
    x0, eps = torch.randn(16, 2, generator=g), 3 * torch.randn(16, 2, generator=g)
    one_step = eps - student.network_output(eps, torch.ones(16))  # x0 = x_1 - u(x_1, 1) on the straight path
    expected = ((one_step - x0) ** 2).mean(dim=1)
    torch.testing.assert_close(distillation_loss(student, x0, eps, reduction="none"), expected)
    unclipped = Denoiser(net, RF, "velocity")
    torch.testing.assert_close(sample(unclipped, eps, uniform_grid(1), euler_step), one_step)  # = one Euler step
    loss = distillation_loss(student, x0, eps)
    loss.backward()
    weights = [p for p in net.parameters() if p.dim() > 1]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in weights)  # gradients reach every layer


def test_distillation_loss_is_zero_for_a_perfect_student_and_validates():
    perfect = reflowed_flow()  # maps eps to M + S eps in one step
    eps = torch.randn(20, 2, generator=torch.Generator().manual_seed(8), dtype=F64)
    assert float(distillation_loss(perfect, M + S * eps, eps)) < 1e-24
    with pytest.raises(ValueError, match="x0_pairs and eps_pairs must have the same shape"):
        distillation_loss(perfect, torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'none'"):
        distillation_loss(perfect, torch.zeros(3, 2), torch.zeros(3, 2), reduction="sum")
    eps_student = Denoiser(lambda x, t: torch.zeros_like(x), RF, "eps")
    with pytest.raises(ValueError, match="not eps-prediction with alpha_1 = 0"):
        distillation_loss(eps_student, torch.zeros(3, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="student must be a course_lib Denoiser"):
        distillation_loss(lambda x, t: x, torch.zeros(3, 2), torch.zeros(3, 2))
    vp_x0 = Denoiser(lambda x, t: torch.zeros_like(x), VPCosine(), "x0")  # any path with sigma_1 > 0 works
    assert float(distillation_loss(vp_x0, torch.ones(3, 2), torch.zeros(3, 2))) == 1.0


# ------------------------------------------------------------------------------------------ learning
def test_reflow_learns_a_straight_flow_that_samples_in_one_step():
    """Reflow of the exact 1-rectified Gaussian flow: one Euler step afterwards matches N(M, S^2)."""
    eps = torch.randn(4000, 1, generator=torch.Generator().manual_seed(11))
    x0_pairs, _ = reflow_pairs(first_flow(), eps, uniform_grid(100))
    net = TimeMLP(dim=1, hidden=32, depth=2)
    den = Denoiser(net, RF, "velocity")
    result = train(net, lambda model, batch, g: reflow_loss(den, batch[0], batch[1], generator=g), (x0_pairs, eps),
                   steps=400, batch_size=256, lr=3e-3, ema_decay=0.99, device="cpu", progress=False)
    reflowed = Denoiser(result.ema_model, RF, "velocity")
    z = torch.randn(4000, 1, generator=torch.Generator().manual_seed(12))
    before = sample(first_flow(), z, uniform_grid(1), euler_step)  # collapses to the mean M
    after = sample(reflowed, z, uniform_grid(1), euler_step)
    assert before.std().item() < 1e-5  # the 1-rectified flow's one step: u(x, 1) = x - M exactly
    assert abs(after.std().item() - S) < 0.05 and abs(after.mean().item() - M) < 0.05
    s_before = float(straightness(first_flow(), z[:500], uniform_grid(50)))
    s_after = float(straightness(reflowed, z[:500], uniform_grid(50)))
    assert s_before > 0.15 and s_after < s_before / 10


# ------------------------------------------------------------------------------------------ zoo
def test_zoo_recipes_name_their_parents_and_train_in_the_quick_profile(tmp_path, monkeypatch):
    from course_lib import zoo
    from course_lib.profiles import PROFILES, get_profile

    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    for profile in PROFILES.values():
        for name, parent in [("reflow_moons", "fm_moons"), ("reflow_eight_gaussians", "fm_eight_gaussians"),
                             ("reflow_digits", "digits_unet_fm"), ("distill_digits", "reflow_digits")]:
            config = zoo.RECIPES[name].config(profile)
            assert config["parent"] == parent and config["parent_profile"] == profile.name
            assert config["parent_file"] == zoo.cache_path(parent, profile).name
            assert config["warm_start"] and config["schedule"] == "rectified_flow"
            assert config["prediction"] == "velocity"
    with pytest.raises(ValueError, match="not trained on the pairs of a parent model"):
        zoo.reflow_pair_set("fm_moons", profile=get_profile("quick"))

    quick = get_profile("quick")
    entry = zoo.load("reflow_moons", profile=quick, device="cpu", progress=False)  # trains fm_moons first
    x0_pairs, eps_pairs = zoo.reflow_pair_set("reflow_moons", profile=quick)
    assert x0_pairs.shape == eps_pairs.shape == (2000, 2)
    parent = zoo.pretrained_denoiser("fm_moons", profile=quick, device="cpu", progress=False)
    expected, _ = reflow_pairs(parent, eps_pairs[:100], uniform_grid(20))
    torch.testing.assert_close(x0_pairs[:100], expected, rtol=1e-5, atol=1e-5)
    reflowed = zoo.pretrained_denoiser("reflow_moons", profile=quick, device="cpu", progress=False)
    assert entry.trained_now and entry.metrics["steps"] == 200
    z = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))
    assert float(straightness(reflowed, z, uniform_grid(20))) < 0.5 * float(straightness(parent, z, uniform_grid(20)))
