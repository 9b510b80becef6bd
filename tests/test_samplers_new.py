"""Issue 9's samplers on the exact-Gaussian denoiser: orders, equivalences, marginals, replay.

Data x0 ~ N(M, S^2) in every coordinate; the denoiser and the exact probability-flow map are
those of tests/test_samplers_stage2.py. Figures measured when this file was written (float64):

* DPM-Solver++(3M), log-SNR grid, N = 16..128: slope 3.92 (VPLinear) / 3.98 (VPCosine) with the
  D2 term at full weight; 2.26 / 2.25 with diffusers' half weight (``as_diffusers=True``).
* EDM Heun (Algorithm 1 in sigma_bar), Karras grid without the final jump: 2.06 (VPLinear),
  2.10 (VPCosine), 2.06 (EDM), 2.05 (VE); Heun in t on the same grids: 1.91 (VPLinear), 2.16 (EDM).
* Langevin at a fixed time (VPLinear, t = 0.3, r = 0.05, 1500 steps): variance ratio 1.018 at
  d = 1024 coordinates per example, 1.046 at d = 64, and a divergent chain (ratio ~4e5) at d = 1:
  the per-example step size depends on the draw z (see course_lib/samplers/langevin.py).
* PC (Euler-Maruyama + 1 or 3 Langevin steps, r = 0.16) at N = 10, d = 64: VE variance 1.52 (EM)
  -> 1.38 / 1.24 (PC), target 0.25; on VPLinear no gain (0.322 -> 0.321 / 0.324).
"""
import math

import pytest
import torch

from course_lib.samplers import (STEPS, MultistepHistory, ddim_step, dpm_solver_pp_2m_step, dpm_solver_pp_3m_step,
                                 edm_heun_step, edm_stochastic_step, euler_maruyama_step, euler_step, heun_step,
                                 langevin_corrector, predictor_corrector_step, reverse_sde_step, sample,
                                 sde_dpm_solver_pp_2m_step)
from course_lib.schedules import EDM, VE, VPCosine, VPLinear
from course_lib.time_grids import karras_grid, log_snr_grid, uniform_grid

from exact_gaussian import F64, M, S, GaussianDenoiser, exact_flow, fitted_slope

NS = (16, 32, 64, 128)


def lam_grid(schedule, n):
    return log_snr_grid(schedule, n + 1, t_start=0.99, t_end=1e-3)[:-1].double()


def k_grid(schedule, n):
    """n steps of a Karras grid, without the final jump to t = 0 (its error is set by sigma_min, not n)."""
    return karras_grid(schedule, n + 1, dtype=F64)[:-1]


def errors(schedule, step, grid_fn, **kw):
    den = GaussianDenoiser(schedule)
    x_T = torch.randn(256, 2, dtype=F64, generator=torch.Generator().manual_seed(0)) * schedule.prior_std()
    out = []
    for n in NS:
        grid = grid_fn(schedule, n)
        out.append(float((sample(den, x_T, grid, step, **kw) - exact_flow(schedule, x_T, grid[0], grid[-1])).abs().max()))
    return out


# --------------------------------------------------------------------------- DPM-Solver++(3M)

@pytest.mark.parametrize("schedule", [VPLinear(), VPCosine()], ids=lambda s: type(s).__name__)
def test_dpm_solver_pp_3m_is_third_order_and_diffusers_weight_is_second(schedule):
    full = errors(schedule, dpm_solver_pp_3m_step, lam_grid)
    half = errors(schedule, dpm_solver_pp_3m_step, lam_grid, as_diffusers=True)
    assert fitted_slope(NS, full) > 2.8 and full[-1] < 1e-5, full
    assert 1.8 < fitted_slope(NS, half) < 2.5, half
    assert 1.7 < math.log2(half[-2] / half[-1]) < 2.3, half  # last doubling: second order


def test_the_diffusers_d2_weight_integrates_half_the_quadratic_term():
    """x0_hat(lam) = (lam - lam_t)^2 / 2 at the three times: the full weight is exact for it."""
    schedule = VPLinear()
    pts = schedule.points(lam_grid(schedule, 8))
    t, s = pts[3], pts[4]
    quad = lambda p: torch.full((1, 1), 0.5 * (p.lam - t.lam) ** 2, dtype=F64)
    state = MultistepHistory(t=pts[2].t, s=t.t, lam=(pts[2].lam, pts[1].lam), x0_hat=(quad(pts[2]), quad(pts[1])))

    class Quadratic:
        def __init__(self):
            self.schedule = schedule

        def __call__(self, x, tt):
            return quad(t).expand_as(x)
    x_t = torch.zeros(1, 1, dtype=F64)
    h = s.lam - t.lam
    exact = s.alpha * math.exp(-h) * (math.exp(h) * (h * h - 2 * h + 2) - 2) / 2  # sigma_s int e^lam u^2/2
    full = float(dpm_solver_pp_3m_step(Quadratic(), x_t, t, s, state=state)[0])
    half = float(dpm_solver_pp_3m_step(Quadratic(), x_t, t, s, state=state, as_diffusers=True)[0])
    assert full == pytest.approx(exact, rel=1e-9) and half == pytest.approx(exact / 2, rel=1e-9)


def test_dpm_solver_pp_3m_first_two_steps_are_ddim_and_2m(gen):
    schedule = VPCosine()
    den = GaussianDenoiser(schedule)
    x = torch.randn(16, 3, dtype=F64, generator=gen)
    grid = lam_grid(schedule, 6)
    a = sample(den, x, grid[:3], dpm_solver_pp_3m_step)
    b = sample(den, x, grid[:3], dpm_solver_pp_2m_step)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dpm_solver_pp_3m_step(den, x, grid[0], grid[1])[0], ddim_step(den, x, grid[0], grid[1])[0])
    with pytest.raises(ValueError, match="ended at t="):
        _, _, st = dpm_solver_pp_3m_step(den, x, grid[0], grid[1])
        dpm_solver_pp_3m_step(den, x, grid[2], grid[3], state=st)


# --------------------------------------------------------------------------- SDE-DPM-Solver++(2M)

def test_sde_dpm_solver_pp_first_step_is_ddim_eta_one_and_marginal_variance(gen):
    schedule = VPLinear()
    den = GaussianDenoiser(schedule)
    x = torch.randn(8, 3, dtype=F64, generator=gen)
    z = torch.randn(8, 3, dtype=F64, generator=gen)
    t, s = torch.tensor(0.6, dtype=F64), torch.tensor(0.5, dtype=F64)
    torch.testing.assert_close(sde_dpm_solver_pp_2m_step(den, x, t, s, noise=z)[0],
                               ddim_step(den, x, t, s, eta=1.0, noise=z)[0], rtol=1e-12, atol=1e-12)
    x_T = torch.randn(512, 32, dtype=F64, generator=gen)
    x0 = sample(den, x_T, log_snr_grid(schedule, 40, t_start=1.0).double(), sde_dpm_solver_pp_2m_step, generator=gen)
    se = S**2 * math.sqrt(2 / x0.numel())
    assert abs(float(x0.var()) - S**2) < 4 * se + 0.01 and abs(float(x0.mean()) - M) < 0.02


# --------------------------------------------------------------------------- EDM

@pytest.mark.parametrize("schedule", [VPLinear(), VPCosine(), EDM(), VE()], ids=lambda s: type(s).__name__)
def test_edm_heun_is_second_order_on_a_karras_grid(schedule):
    errs = errors(schedule, edm_heun_step, k_grid)
    assert 1.8 < fitted_slope(NS, errs) < 2.4 and errs[-1] < 0.02, errs


@pytest.mark.parametrize("schedule", [VPLinear(), EDM()], ids=lambda s: type(s).__name__)
def test_edm_heun_and_heun_in_t_differ_and_both_converge(schedule):
    a, b = errors(schedule, edm_heun_step, k_grid), errors(schedule, heun_step, k_grid)
    assert fitted_slope(NS, a) > 1.8 and fitted_slope(NS, b) > 1.8, (a, b)
    den = GaussianDenoiser(schedule)
    x = torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(0)) * schedule.prior_std()
    grid = k_grid(schedule, 16)
    assert float((sample(den, x, grid, edm_heun_step) - sample(den, x, grid, heun_step)).abs().max()) > 1e-4


def test_edm_euler_part_is_ddim_at_sigma_zero_and_churn_zero_is_algorithm_1(gen):
    schedule = VPLinear()
    den = GaussianDenoiser(schedule)
    x = torch.randn(8, 3, dtype=F64, generator=gen)
    torch.testing.assert_close(edm_heun_step(den, x, 0.05, 0.0)[0], ddim_step(den, x, 0.05, 0.0)[0])
    grid = karras_grid(schedule, 12, dtype=F64)
    a = sample(den, x, grid, edm_heun_step)
    b = sample(den, x, grid, edm_stochastic_step, n_steps=12, S_churn=0.0, generator=gen)
    assert torch.equal(a, b)
    c = sample(den, x, grid, edm_stochastic_step, n_steps=12, S_churn=40.0, S_tmin=100.0, generator=gen)
    assert torch.equal(a, c)  # sigma_bar >= S_tmin = 100 only at t_0, the top of the schedule: no room to churn
    with pytest.raises(ValueError, match="n_steps must be the number of steps"):
        edm_stochastic_step(den, x, 0.5, 0.4, S_churn=1.0)


@pytest.mark.parametrize("schedule", [EDM(), VPLinear()], ids=lambda s: type(s).__name__)
def test_edm_stochastic_matches_the_data_variance(schedule, gen):
    den = GaussianDenoiser(schedule)
    x_T = torch.randn(512, 32, dtype=F64, generator=gen) * schedule.prior_std()
    n = 128  # at n = 32 the discretisation bias is ~0.01-0.02 in the variance (S_churn = 0: 0.262 on EDM)
    x0 = sample(den, x_T, karras_grid(schedule, n, dtype=F64), edm_stochastic_step, n_steps=n, S_churn=20.0,
                generator=gen)
    se = S**2 * math.sqrt(2 / x0.numel())
    assert abs(float(x0.var()) - S**2) < 4 * se + 0.01 and abs(float(x0.mean()) - M) < 0.02


def test_edm_churn_is_clipped_at_the_top_of_the_schedule(gen):
    schedule = EDM()
    den = GaussianDenoiser(schedule)
    x = torch.randn(8, 3, dtype=F64, generator=gen) * 80
    x_s, _, _ = edm_stochastic_step(den, x, 0.999, 0.9, n_steps=1, S_churn=1.0, generator=gen)  # gamma = sqrt2 - 1
    assert torch.isfinite(x_s).all()
    x_top, _, _ = edm_stochastic_step(den, x, 1.0, 0.9, n_steps=1, S_churn=1.0, noise=torch.ones_like(x))
    assert torch.equal(x_top, edm_heun_step(den, x, 1.0, 0.9)[0])  # already at sigma_max: nothing to churn


# --------------------------------------------------------------------------- the eta family of reverse SDEs

def test_reverse_sde_eta_one_is_euler_maruyama_and_eta_zero_is_euler(gen):
    schedule = VPLinear()
    den = GaussianDenoiser(schedule)
    x = torch.randn(16, 3, dtype=F64, generator=gen)
    z = torch.randn(16, 3, dtype=F64, generator=gen)
    for t, s in [(1.0, 0.9), (0.5, 0.3), (0.1, 0.0)]:
        assert torch.equal(reverse_sde_step(den, x, t, s, eta=1.0, noise=z)[0], euler_maruyama_step(den, x, t, s, noise=z)[0])
        torch.testing.assert_close(reverse_sde_step(den, x, t, s, eta=0.0, noise=z)[0], euler_step(den, x, t, s)[0],
                                   rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="eta must be a finite number >= 0"):
        reverse_sde_step(den, x, 0.5, 0.3, eta=-1.0)


def _moments_after(schedule, grid, eta):
    """Exact mean and variance of the Euler-Maruyama chain: each step is affine, x_s = A x + b + C z."""
    den = GaussianDenoiser(schedule)
    pts = schedule.points(grid)
    m, v = pts[0].alpha * M, pts[0].alpha ** 2 * S**2 + pts[0].sigma ** 2
    probe, z = torch.tensor([[0.0], [1.0], [0.0]], dtype=F64), torch.tensor([[0.0], [0.0], [1.0]], dtype=F64)
    for t, s in zip(pts[:-1], pts[1:]):
        out = reverse_sde_step(den, probe, t, s, eta=eta, noise=z)[0][:, 0]
        b, A, C = float(out[0]), float(out[1] - out[0]), float(out[2] - out[0])
        m, v = A * m + b, A * A * v + C * C
    return m, v


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0, 2.0])
def test_reverse_sde_family_weak_order_one(eta):
    schedule = VPLinear()
    errs = []
    for n in NS:
        m, v = _moments_after(schedule, uniform_grid(n).double(), eta)
        errs.append(abs(m - M) + abs(v - S**2))
    assert 0.8 < fitted_slope(NS, errs) < 1.3 and errs[-1] < 0.02, errs


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0, 2.0])
def test_reverse_sde_family_keeps_the_marginals(eta, gen):
    schedule = VPLinear()
    den = GaussianDenoiser(schedule)
    x0 = sample(den, torch.randn(256, 64, dtype=F64, generator=gen), uniform_grid(400).double(), reverse_sde_step,
                eta=eta, generator=gen)
    se = S**2 * math.sqrt(2 / x0.numel())
    _, v_chain = _moments_after(schedule, uniform_grid(400).double(), eta)  # the chain's own bias, exactly
    assert abs(v_chain - S**2) < 0.01
    assert abs(float(x0.var()) - v_chain) < 4 * se and abs(float(x0.mean()) - M) < 4 * S / math.sqrt(x0.numel()) + 1e-3


# --------------------------------------------------------------------------- Langevin and PC

def test_langevin_converges_to_the_marginal_in_high_dimension(gen):
    schedule = VPLinear()
    den = GaussianDenoiser(schedule)
    t = schedule.point(0.3)
    v, m = t.alpha**2 * S**2 + t.sigma**2, t.alpha * M
    x = langevin_corrector(den, 0.5 * torch.randn(64, 1024, dtype=F64, generator=gen), t, snr=0.05, n_steps=1500,
                           generator=gen)
    assert abs(float(x.var()) / v - 1) < 0.03  # measured 1.018 (bias of the discrete chain, see the docstring)
    assert abs(float(x.mean()) - m) < 0.03 * math.sqrt(v)
    x1 = langevin_corrector(den, 0.5 * torch.randn(512, 1, dtype=F64, generator=gen), t, snr=0.05, n_steps=300,
                            generator=gen)
    assert float(x1.var()) / v > 2  # d = 1: the per-example step size makes the chain wrong (measured ~4e5)


def test_predictor_corrector_improves_the_variance_on_ve_at_few_steps(gen):
    schedule = VE()
    den = GaussianDenoiser(schedule)
    x = torch.randn(256, 64, dtype=F64, generator=gen) * schedule.prior_std()
    grid = uniform_grid(10).double()
    em = sample(den, x, grid, euler_maruyama_step, generator=torch.Generator().manual_seed(1))
    pc = sample(den, x, grid, predictor_corrector_step, predictor=euler_maruyama_step, n_corrector=3, snr=0.16,
                generator=torch.Generator().manual_seed(1))
    assert abs(float(pc.var()) - S**2) < 0.85 * abs(float(em.var()) - S**2)  # measured 1.24 vs 1.52 (target 0.25)


def test_corrector_is_skipped_at_sigma_zero_and_noise_shape(gen):
    schedule = VPLinear()
    den = GaussianDenoiser(schedule)
    x = torch.randn(4, 3, dtype=F64, generator=gen)
    z = torch.randn(3, 4, 3, dtype=F64, generator=gen)
    a = predictor_corrector_step(den, x, 0.1, 0.0, predictor=euler_maruyama_step, n_corrector=2, noise=z)[0]
    assert torch.equal(a, euler_maruyama_step(den, x, 0.1, 0.0, noise=z[0])[0])
    with pytest.raises(ValueError, match=r"\(3, \*x_t.shape\)"):
        predictor_corrector_step(den, x, 0.5, 0.4, predictor=euler_maruyama_step, n_corrector=2, noise=z[0])
    with pytest.raises(ValueError, match="predictor must be a step function"):
        predictor_corrector_step(den, x, 0.5, 0.4, predictor="euler_maruyama")


# --------------------------------------------------------------------------- registration and replay

NEW = {"dpm_solver_pp_3m": dpm_solver_pp_3m_step, "sde_dpm_solver_pp_2m": sde_dpm_solver_pp_2m_step,
       "edm_heun": edm_heun_step, "edm_stochastic": edm_stochastic_step, "reverse_sde": reverse_sde_step,
       "predictor_corrector": predictor_corrector_step}


def test_new_steps_are_registered():
    import course_lib.samplers as samplers
    for name, step in NEW.items():
        assert STEPS[name] is step and step.__name__ in samplers.__all__


REPLAY = [  # (step, kwargs, grid, draws per step)
    (sde_dpm_solver_pp_2m_step, {}, lambda s: log_snr_grid(s, 6), 1),
    (edm_stochastic_step, {"n_steps": 6, "S_churn": 10.0}, lambda s: karras_grid(s, 6), 1),
    (reverse_sde_step, {"eta": 0.7}, lambda s: uniform_grid(6), 1),
    (predictor_corrector_step, {"predictor": euler_maruyama_step, "n_corrector": 1}, lambda s: uniform_grid(6), 2),
    (predictor_corrector_step, {"predictor": ddim_step, "predictor_draws": 0, "n_corrector": 1},
     lambda s: uniform_grid(6), 1),
]


@pytest.mark.parametrize("step, kw, grid_fn, k", REPLAY, ids=lambda v: getattr(v, "__name__", None))
def test_explicit_noise_replays_a_generator_run(step, kw, grid_fn, k):
    schedule = VPLinear()
    den = GaussianDenoiser(schedule)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    grid = grid_fn(schedule)
    ref = sample(den, x, grid, step, generator=torch.Generator().manual_seed(7), **kw)
    g = torch.Generator().manual_seed(7)
    shape = x.shape if k == 1 else (k, *x.shape)
    noise = [torch.randn(shape, generator=g) for _ in range(len(grid) - 1)]
    assert torch.equal(sample(den, x, grid, step, noise=noise, **kw), ref)
    other = [torch.randn(shape, generator=g) for _ in range(len(grid) - 1)]
    assert not torch.equal(sample(den, x, grid, step, noise=other, **kw), ref)
