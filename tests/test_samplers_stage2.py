"""Stage 2 samplers (chapters 05-07) on a Gaussian data set, where the denoiser is exact.

For x0 ~ N(M, S^2) in every coordinate, E[x0 | x_t] is linear in x_t and the probability-flow
ODE has a closed-form solution: the standardised value (x_t - alpha_t M) / sqrt(alpha_t^2 S^2 + sigma_t^2)
is constant along every trajectory. So each deterministic sampler can be compared with the exact
answer, and its order of convergence measured (STYLE.md, 'Tests that carry meaning').

Which grid for which solver (N = 16, 32, 64, 128; fitted slopes measured when this file was
written, VPLinear / VPCosine: euler 0.90 / 0.97, heun 1.96 / 2.00, ddim and dpm_solver_1
0.97 / 0.97, dpm_solver_2 2.04 / 2.04, dpm_solver_pp_2m 1.93 / 1.94):

* Euler and Heun step in t, so they are tested on grids uniform in t down to t = 0. For Gaussian
  data the velocity is smooth in t up to t = 0, so Heun's final Euler step (no corrector at
  sigma = 0) costs no order.
* DDIM and the DPM-Solvers step in lam = log(alpha/sigma), so they are tested on grids uniform in
  log-SNR, ending at t_end = 1e-3 *without* the final jump to t = 0. That jump (lam -> +inf) is
  always a first-order step, x_0 = x0_hat(x_{t_end}), whose error is set by sigma_{t_end}, not by
  N. On a uniform-t grid ending at 0 the last nonzero time is 1/N, sigma_{1/N}^2 ~ 1/N for VP
  schedules, and the jump's error caps DPM-Solver-2 and DPM-Solver++(2M) at first order
  (VPCosine, N 64 -> 128: slope about 1.2 instead of 2).
* N starts at 16: at N = 8 DPM-Solver++(2M) is pre-asymptotic (its first-order first step and the
  second-order steps after it partly cancel), so a slope fitted from N = 8 understates its order.
"""
import math

import pytest
import torch

from course_lib.parameterization import Denoiser
from course_lib.samplers import (STEPS, MultistepState, Trajectory, ddim_invert, ddim_step, ddpm_step,
                                 dpm_solver_1_step, dpm_solver_2_step, dpm_solver_pp_2m_step,
                                 drift_and_diffusion, euler_maruyama_step, euler_step, half_log_snr,
                                 heun_step, pf_ode_velocity, sample)
from course_lib.schedules import EDM, VE, RectifiedFlow, VPCosine, VPLinear
from course_lib.time_grids import karras_grid, log_snr_grid, uniform_grid

from exact_gaussian import F64, M, S, GaussianDenoiser, exact_flow, fitted_slope

T_START = {"VPLinear": 1.0, "VPCosine": 0.99}  # VPCosine: alpha_1 = 0 leaves nothing to integrate from


def t_grid(schedule, n):
    return uniform_grid(n, t_start=T_START[type(schedule).__name__]).double()


def lam_grid(schedule, n):
    """n steps uniform in log-SNR from t = 0.99 to t = 1e-3, without the final jump to t = 0."""
    return log_snr_grid(schedule, n + 1, t_start=0.99, t_end=1e-3)[:-1].double()


# --------------------------------------------------------------------------- order of convergence

NS = (16, 32, 64, 128)
SOLVERS = [  # (step, theoretical order, grid in the solver's own variable)
    (euler_step, 1, t_grid),
    (heun_step, 2, t_grid),
    (ddim_step, 1, lam_grid),
    (dpm_solver_1_step, 1, lam_grid),
    (dpm_solver_2_step, 2, lam_grid),
    (dpm_solver_pp_2m_step, 2, lam_grid),
]


@pytest.mark.parametrize("schedule", [VPLinear(), VPCosine()], ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("step, order, grid_fn", SOLVERS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_deterministic_samplers_converge_at_their_order(step, order, grid_fn, schedule, gen):
    den = GaussianDenoiser(schedule)
    x_T = torch.randn(256, 2, dtype=F64, generator=gen)
    errs = []
    for n in NS:
        grid = grid_fn(schedule, n)
        exact = exact_flow(schedule, x_T, grid[0], grid[-1])
        errs.append(float((sample(den, x_T, grid, step) - exact).abs().max()))
    slope = fitted_slope(NS, errs)
    band = (0.8, 1.3) if order == 1 else (1.7, 2.6)
    assert band[0] < slope < band[1], (errs, slope)
    assert errs[-1] < (0.05 if order == 1 else 2e-3), errs  # converges to the exact answer, not elsewhere


# --------------------------------------------------------------------------- equivalences

def _grids():
    vp_lin, vp_cos, rf, ve, edm = VPLinear(), VPCosine(), RectifiedFlow(), VE(), EDM()
    return [
        (vp_lin, uniform_grid(17).double()),
        (vp_lin, uniform_grid(50, t_start=0.98)),  # a float32 grid
        (vp_cos, log_snr_grid(vp_cos, 12, t_start=0.99).double()),
        (vp_cos, karras_grid(vp_cos, 9).double()[1:]),  # starts below t = 1 (alpha_1 = 0)
        (rf, uniform_grid(10, t_start=0.999).double()),
        (ve, uniform_grid(10).double()),
        (edm, karras_grid(edm, 12).double()),
    ]


@pytest.mark.parametrize("schedule, grid", _grids(), ids=lambda v: f"K{v.numel() - 1}" if torch.is_tensor(v) else type(v).__name__)
def test_dpm_solver_1_is_ddim_with_eta_zero(schedule, grid, gen):
    den = GaussianDenoiser(schedule)
    x_T = torch.randn(64, 3, dtype=F64, generator=gen) * float(schedule.prior_std())
    a = sample(den, x_T, grid, dpm_solver_1_step)
    b = sample(den, x_T, grid, ddim_step, eta=0.0)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    # DPM-Solver++(2M)'s first step is first order: also DDIM
    t, s = grid[0], grid[1]
    torch.testing.assert_close(dpm_solver_pp_2m_step(den, x_T, t, s)[0], ddim_step(den, x_T, t, s)[0],
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("step", [dpm_solver_1_step, dpm_solver_2_step, dpm_solver_pp_2m_step])
def test_dpm_solvers_final_step_to_sigma_zero_is_the_denoised_estimate(step, gen):
    """lam_s = +inf at t = 0: the first-order limit x_0 = alpha_0 x0_hat(x_t, t), one evaluation."""
    schedule = VPCosine()
    den = GaussianDenoiser(schedule)
    x_t = torch.randn(32, 2, dtype=F64, generator=gen)
    t, s = torch.tensor(0.05, dtype=F64), torch.tensor(0.0, dtype=F64)
    state = None
    if step is dpm_solver_pp_2m_step:  # with a history, the slope term must still be dropped
        _, _, state = step(den, x_t, torch.tensor(0.1, dtype=F64), t)
    den.nfe = 0
    x_s, x0_hat, _ = step(den, x_t, t, s, state=state)
    assert den.nfe == 1
    torch.testing.assert_close(x0_hat, den(x_t, t.expand(32)))
    torch.testing.assert_close(x_s, float(schedule._alpha(s)) * x0_hat, rtol=0, atol=0)
    assert torch.isfinite(x_s).all()


def test_number_of_function_evaluations():
    vp, ve = VPLinear(), VE()
    n = 10
    cases = [  # (step, schedule, grid, expected NFE)
        (euler_step, vp, uniform_grid(n).double(), n),
        (heun_step, vp, uniform_grid(n).double(), 2 * n - 1),  # no corrector on the step to sigma = 0
        (heun_step, ve, uniform_grid(n).double(), 2 * n),  # VE: sigma_0 = sigma_min > 0, always corrected
        (dpm_solver_1_step, vp, uniform_grid(n).double(), n),
        (dpm_solver_2_step, vp, uniform_grid(n, t_start=0.99).double(), 2 * n - 1),
        (dpm_solver_2_step, vp, uniform_grid(n, t_start=0.99, t_end=0.01).double(), 2 * n),
        (dpm_solver_pp_2m_step, vp, uniform_grid(n).double(), n),
        (euler_maruyama_step, vp, uniform_grid(n).double(), n),
    ]
    for step, schedule, grid, expected in cases:
        den = GaussianDenoiser(schedule)
        sample(den, torch.zeros(4, 2, dtype=F64), grid, step, generator=torch.Generator().manual_seed(0))
        assert den.nfe == expected, (step.__name__, type(schedule).__name__, den.nfe, expected)
    den = GaussianDenoiser(vp)
    ddim_invert(den, torch.zeros(4, 2, dtype=F64), uniform_grid(n).double().flip(0))
    assert den.nfe == n


# --------------------------------------------------------------------------- the ODE and the SDE

@pytest.mark.parametrize("schedule", [VPLinear(), VPCosine(), RectifiedFlow(), VE(), EDM()],
                         ids=lambda s: type(s).__name__)
def test_pf_ode_velocity_is_song_eq_13_and_moves_along_the_exact_flow(schedule, gen):
    den = GaussianDenoiser(schedule)
    x_T = torch.randn(128, 2, dtype=F64, generator=gen)
    t = torch.tensor(0.4, dtype=F64)
    x_t = exact_flow(schedule, x_T, 0.95, t)
    velocity = pf_ode_velocity(den, x_t, t)
    # Song et al. 2021, eq. 13: f x - 1/2 g^2 score, score = -eps_hat / sigma_t
    f, g2 = drift_and_diffusion(schedule, t)
    a, s = schedule._alpha(t), schedule._sigma(t)
    eps_hat = (x_t - a * den(x_t, t)) / s
    torch.testing.assert_close(velocity, f * x_t + 0.5 * g2 * eps_hat / s, rtol=1e-9, atol=1e-9)
    # the exact solution's time derivative (central difference)
    dt = 1e-5
    fd = (exact_flow(schedule, x_T, 0.95, t + dt) - exact_flow(schedule, x_T, 0.95, t - dt)) / (2 * dt)
    torch.testing.assert_close(velocity, fd, rtol=1e-6, atol=1e-6)
    # one time per example gives the same answer
    torch.testing.assert_close(pf_ode_velocity(den, x_t, t.expand(128)), velocity)


@pytest.mark.parametrize("schedule", [RectifiedFlow(), VPCosine()], ids=lambda s: type(s).__name__)
def test_pf_ode_velocity_of_a_velocity_network_is_its_output(schedule, gen):
    """The probability-flow velocity is the flow-matching marginal velocity: a network trained to
    predict u = d_alpha_t x0 + d_sigma_t eps, wrapped in a Denoiser, gets its own output back."""
    net_out = torch.randn(16, 3, generator=gen)
    den = Denoiser(lambda x, t: net_out, schedule, prediction="velocity")
    x = torch.randn(16, 3, generator=gen)
    torch.testing.assert_close(pf_ode_velocity(den, x, torch.tensor(0.6)), net_out, rtol=1e-4, atol=1e-4)


def test_drift_and_diffusion_of_the_classic_sdes():
    t = torch.linspace(0.05, 1.0, 20, dtype=F64)
    vp = VPLinear(0.1, 20.0)
    f, g2 = drift_and_diffusion(vp, t)
    beta = 0.1 + t * (20.0 - 0.1)
    torch.testing.assert_close(f, -beta / 2)  # Song et al. 2021, eq. 11 (VP SDE)
    torch.testing.assert_close(g2, beta)
    ve = VE(0.01, 50.0)
    f, g2 = drift_and_diffusion(ve, t)
    sigma = 0.01 * (50.0 / 0.01) ** t
    torch.testing.assert_close(f, torch.zeros_like(t))  # eq. 9 (VE SDE): g^2 = d sigma^2 / dt
    torch.testing.assert_close(g2, 2 * sigma**2 * math.log(50.0 / 0.01))
    assert drift_and_diffusion(vp, torch.tensor(0.5))[0].dtype == torch.float32  # returned in t's dtype


@pytest.mark.parametrize("schedule", [VPCosine(), RectifiedFlow(), EDM(), VPLinear()], ids=lambda s: type(s).__name__)
def test_sde_moments_reproduce_the_path(schedule):
    """m' = f m and v' = 2 f v + g^2 must give alpha_t and sigma_t^2 (derivatives by autograd)."""
    t = torch.linspace(0.05, 0.95, 19, dtype=F64, requires_grad=True)
    alpha, sigma = schedule._alpha(t) + 0 * t, schedule._sigma(t)  # + 0 t: VE/EDM's alpha is a constant
    d_alpha = torch.autograd.grad(alpha.sum(), t)[0]
    d_var = torch.autograd.grad((sigma**2).sum(), t)[0]
    f, g2 = drift_and_diffusion(schedule, t.detach())
    torch.testing.assert_close(f * alpha.detach(), d_alpha, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(2 * f * sigma.detach() ** 2 + g2, d_var, rtol=1e-6, atol=1e-8)
    assert bool((g2 >= 0).all())


@pytest.mark.parametrize("schedule", [VPLinear(), VE()], ids=lambda s: type(s).__name__)
def test_euler_maruyama_matches_the_data_moments(schedule, gen):
    den = GaussianDenoiser(schedule)
    n, t_T = 20000, torch.tensor(1.0, dtype=F64)
    a_T, s_T = schedule._alpha(t_T), schedule._sigma(t_T)
    x_T = a_T * M + torch.sqrt(a_T**2 * S**2 + s_T**2) * torch.randn(n, 1, dtype=F64, generator=gen)
    x0 = sample(den, x_T, uniform_grid(500).double(), euler_maruyama_step, generator=gen)
    a_0, s_0 = schedule._alpha(torch.tensor(0.0, dtype=F64)), schedule._sigma(torch.tensor(0.0, dtype=F64))
    mean, var = float(a_0 * M), float(a_0**2 * S**2 + s_0**2)  # VE: sigma_0 = sigma_min > 0
    # Monte-Carlo error: std of the mean sqrt(var/n), of the variance var sqrt(2/n); 4 standard errors
    assert abs(float(x0.mean()) - mean) < 4 * math.sqrt(var / n)
    assert abs(float(x0.var()) - var) < 4 * var * math.sqrt(2 / n)


def test_euler_maruyama_is_reproducible_and_takes_explicit_noise():
    schedule = VPLinear()
    den = GaussianDenoiser(schedule)
    x_T = torch.randn(8, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    grid = uniform_grid(20).double()

    def run(seed):
        return sample(den, x_T, grid, euler_maruyama_step, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))
    t, s = grid[0], grid[1]
    z = torch.randn(8, 2, dtype=F64, generator=torch.Generator().manual_seed(7))
    a = euler_maruyama_step(den, x_T, t, s, noise=z)[0]
    b = euler_maruyama_step(den, x_T, t, s, generator=torch.Generator().manual_seed(7))[0]
    assert torch.equal(a, b)


# --------------------------------------------------------------------------- the multistep state

def test_multistep_state_is_pure(gen):
    schedule = VPCosine()
    den = GaussianDenoiser(schedule)
    grid = log_snr_grid(schedule, 15, t_start=0.99).double()
    x_T = torch.randn(32, 2, dtype=F64, generator=gen)
    traj = Trajectory()
    a = sample(den, x_T, grid, dpm_solver_pp_2m_step, callback=traj)
    b = sample(den, x_T, grid, dpm_solver_pp_2m_step)
    assert torch.equal(a, b) and len(traj.xs) == 15
    # one step, called twice with the same state: same result, state untouched, a new state returned
    x1, _, state1 = dpm_solver_pp_2m_step(den, x_T, grid[0], grid[1])
    kept = state1.x0_hat.clone()
    out1 = dpm_solver_pp_2m_step(den, x1, grid[1], grid[2], state=state1)
    out2 = dpm_solver_pp_2m_step(den, x1, grid[1], grid[2], state=state1)
    assert torch.equal(out1[0], out2[0]) and torch.equal(state1.x0_hat, kept)
    assert isinstance(out1[2], MultistepState) and out1[2] is not state1 and out1[2].s == float(grid[2])
    with pytest.raises(AttributeError):
        state1.lam = 0.0  # frozen


def test_half_log_snr_is_half_the_course_log_snr():
    schedule = VPCosine()
    for t in (0.1, 0.5, 0.9):
        assert math.isclose(half_log_snr(schedule, t), float(schedule.log_snr(torch.tensor(t, dtype=F64))) / 2,
                            rel_tol=1e-9)
    assert half_log_snr(schedule, 0.0) == math.inf
    assert half_log_snr(RectifiedFlow(), 1.0) == -math.inf  # alpha_1 = 0 exactly (VPCosine's is 6e-17)


def test_steps_registry():
    for name in ("euler", "heun", "euler_maruyama", "dpm_solver_1", "dpm_solver_2", "dpm_solver_pp_2m", "ddim", "ddpm"):
        den = GaussianDenoiser(VPLinear())
        x = sample(den, torch.zeros(2, 2, dtype=F64), uniform_grid(4, t_start=0.99).double(), STEPS[name],
                   generator=torch.Generator().manual_seed(0))
        assert x.shape == (2, 2) and torch.isfinite(x).all(), name


def test_every_step_runs_a_float32_network_denoiser():
    """The Gaussian tests run in float64; a real network runs in float32 through a Denoiser."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))

    def f(x, t):
        return net(torch.cat([x, t[:, None]], dim=1))

    for schedule, prediction in [(VPCosine(), "eps"), (EDM(), "x0"), (RectifiedFlow(), "velocity")]:
        den = Denoiser(f, schedule, prediction=prediction)
        for name, step in STEPS.items():
            x = sample(den, torch.randn(5, 2), uniform_grid(6, t_start=0.99), step,
                       generator=torch.Generator().manual_seed(0))
            assert x.dtype == torch.float32 and torch.isfinite(x).all(), (name, type(schedule).__name__)
        x_T = ddim_invert(den, torch.randn(5, 2), uniform_grid(6, t_start=0.99).flip(0))
        assert x_T.dtype == torch.float32 and torch.isfinite(x_T).all()


# --------------------------------------------------------------------------- DDIM inversion

@pytest.mark.parametrize("schedule", [VPLinear(), VPCosine(), RectifiedFlow(), VE()], ids=lambda s: type(s).__name__)
def test_ddim_inversion_round_trip_converges(schedule, gen):
    """Invert x0 -> x_T, then sample back with DDIM: the reconstruction error is O(1/K), and the
    inverted x_T converges to the exact probability-flow image of x0."""
    den = GaussianDenoiser(schedule)
    t_T = 0.99 if isinstance(schedule, RectifiedFlow) else 1.0
    x0 = M + S * torch.randn(256, 2, dtype=F64, generator=gen)
    ns, round_trip, forward = (40, 80, 160, 320), [], []  # VPLinear is pre-asymptotic below N = 40
    for n in ns:
        grid = uniform_grid(n, t_start=t_T).double()  # decreasing, for sampling
        x_T = ddim_invert(den, x0, grid.flip(0))
        forward.append(float((x_T - exact_flow(schedule, x0, 0.0, t_T)).abs().max()))
        round_trip.append(float((sample(den, x_T, grid, ddim_step) - x0).abs().max()))
    assert all(b < a for a, b in zip(round_trip, round_trip[1:])), round_trip
    assert 0.7 < fitted_slope(ns, round_trip) < 1.3, round_trip
    assert 0.7 < fitted_slope(ns, forward) < 1.3, forward
    assert round_trip[-1] < 0.05, round_trip


def test_ddim_inversion_callback_records_increasing_times(gen):
    den = GaussianDenoiser(VPLinear())
    traj = Trajectory()
    times = uniform_grid(5).double().flip(0)
    x_T = ddim_invert(den, torch.randn(4, 2, dtype=F64, generator=gen), times, callback=traj)
    assert traj.times == times.tolist() and len(traj.xs) == 5
    torch.testing.assert_close(traj.xs[-1], x_T)


# --------------------------------------------------------------------------- bad inputs

_DEN = GaussianDenoiser(VPLinear())
_X = torch.zeros(2, 3, dtype=F64)
_T, _S = torch.tensor(0.5, dtype=F64), torch.tensor(0.3, dtype=F64)
_ALL_STEPS = [euler_step, heun_step, euler_maruyama_step, dpm_solver_1_step, dpm_solver_2_step,
              dpm_solver_pp_2m_step, ddim_step, ddpm_step]


class _NoSchedule:
    def __call__(self, x, t):
        return x


class _BadShape:
    schedule = VPLinear()

    def __call__(self, x, t):
        return x[:, :1]


@pytest.mark.parametrize("step", _ALL_STEPS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("s", [0.5, 0.7], ids=["s_equals_t", "s_above_t"])
def test_every_step_rejects_s_not_below_t(step, s):
    with pytest.raises(ValueError, match="s < t"):
        step(_DEN, _X, _T, torch.tensor(s, dtype=F64))


@pytest.mark.parametrize("call, match", [
    (lambda: ddim_step(_DEN, _X, _T, _S, eta=-0.5), "eta must lie in"),
    (lambda: ddim_step(_DEN, _X, _T, _S, eta=float("nan")), "eta must lie in"),
    (lambda: euler_maruyama_step(_DEN, _X, _T, _S, noise=torch.zeros(2, 4, dtype=F64)), "noise must"),
    (lambda: euler_step(_DEN, _X, torch.full((2,), 0.5), _S), "one time for the whole batch"),
    (lambda: heun_step(_DEN, _X, 1.5, _S), r"\[0, 1\]"),
    (lambda: euler_step(_DEN, torch.zeros(2, 3, dtype=torch.long), _T, _S), "floating-point tensor"),
    (lambda: euler_step(_NoSchedule(), _X, _T, _S), "schedule"),
    (lambda: dpm_solver_1_step(_BadShape(), _X, _T, _S), "x0_hat of x_t's shape"),
    (lambda: dpm_solver_1_step(GaussianDenoiser(VPCosine()), _X, 1.0, _S), "LOG_SNR_MIN"),
    (lambda: dpm_solver_2_step(GaussianDenoiser(RectifiedFlow()), _X, 1.0, _S), "LOG_SNR_MIN"),
    (lambda: euler_step(GaussianDenoiser(VPCosine()), _X, 1.0, _S), "would not move"),
    (lambda: dpm_solver_pp_2m_step(_DEN, _X, _T, _S, state="previous"), "MultistepState"),
    (lambda: dpm_solver_pp_2m_step(_DEN, _X, _T, _S, state=MultistepState(0.9, 0.7, 0.0, _X)), "state comes from"),
    (lambda: dpm_solver_pp_2m_step(_DEN, _X, _T, _S, state=MultistepState(0.9, 0.5, 0.0, _X[:1])), "state.x0_hat"),
    (lambda: pf_ode_velocity(_DEN, _X, 0.0), "sigma_t > 0"),
    (lambda: pf_ode_velocity(_DEN, _X, torch.full((3,), 0.5)), r"shape \(\) or \(2,\)"),
    (lambda: drift_and_diffusion(RectifiedFlow(), 1.0), "alpha_t > 0"),
    (lambda: drift_and_diffusion("linear", 0.5), "Schedule"),
    (lambda: euler_maruyama_step(GaussianDenoiser(VPCosine()), _X, 1.0, _S), "would not move"),
    (lambda: euler_maruyama_step(GaussianDenoiser(RectifiedFlow()), _X, 1.0, _S), "alpha_t > 0"),
    (lambda: half_log_snr(VPLinear(), torch.tensor([0.1, 0.2])), "one time"),
    (lambda: ddim_invert(_DEN, _X, uniform_grid(4).double()), "strictly increasing"),
    (lambda: ddim_invert(_DEN, _X, torch.tensor([0.1, 0.5, 1.0], dtype=F64)), "start at t = 0"),
    (lambda: ddim_invert(_DEN, _X, torch.tensor([0.0], dtype=F64)), "at least 2"),
    (lambda: ddim_invert(_DEN, _X, torch.tensor([0.0, 1.5], dtype=F64)), r"\[0, 1\]"),
    (lambda: ddim_invert(_DEN, [0.0, 1.0], uniform_grid(4).double().flip(0)), "floating-point tensor"),
])
def test_bad_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()

