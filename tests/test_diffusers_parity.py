"""The course's DDPM table, grids and steps against Hugging Face diffusers' schedulers.

Every comparison goes through course_lib.adapters.diffusers (that is what keeps the adapter
honest): the same model function is read by diffusers as model(x, k) and by the course as a
Denoiser built with denoiser_from_scheduler. Two precisions: diffusers' own float32 tables
(tolerances set by float32 round-off) and, for DDPM and DDIM, the same scheduler with its table
replaced by the course's float64 table, where what is left is the Denoiser's float32 coefficients
(it evaluates alpha_t, sigma_t and c_in at float32 times): ~1e-7.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler  # noqa: E402

from course_lib.adapters.diffusers import (  # noqa: E402
    denoiser_from_scheduler,
    net_from_diffusers_model,
    prediction_from_diffusers,
    sampling_grid,
    step_times,
    table_from_scheduler,
    times_from_timesteps,
    timesteps_from_times,
)
from course_lib.samplers.ddim import ddim_step  # noqa: E402
from course_lib.samplers.ddpm import ddpm_step  # noqa: E402
from course_lib.samplers.loop import sample  # noqa: E402
from course_lib.schedules import DDPMTable  # noqa: E402
from course_lib.time_grids import ddpm_grid  # noqa: E402

N = 1000
KINDS = [  # diffusers beta_schedule, extra config, course kind
    ("linear", {}, "linear"),
    ("scaled_linear", {"beta_start": 0.00085, "beta_end": 0.012}, "scaled_linear"),
    ("squaredcos_cap_v2", {}, "cosine"),
    ("sigmoid", {}, "sigmoid"),
]


def make_model(dtype=torch.float32):
    """A deterministic stand-in for a U-Net: a fixed linear map of x, modulated by k."""
    W = torch.tensor([[0.9, 0.1, 0.0, -0.2], [0.05, 0.8, 0.1, 0.0],
                      [0.0, -0.1, 0.95, 0.1], [0.1, 0.0, 0.0, 0.85]], dtype=dtype)

    def model(x, k):
        kk = k.to(dtype)[:, None] / N  # (B, 1)
        return x @ W.T * (1 - 0.3 * kk) + 0.2 * torch.sin(3 * kk)

    return model


def x_batch(dtype=torch.float32, scale=1.0):
    return scale * torch.randn(5, 4, generator=torch.Generator().manual_seed(0), dtype=dtype)


def use_float64_table(scheduler, table: DDPMTable) -> None:
    """Give a DDPM/DDIM scheduler the course's float64 table (its formulas then run in float64)."""
    scheduler.alphas_cumprod = table.alpha_bar.clone()
    scheduler.one = torch.tensor(1.0, dtype=torch.float64)
    if hasattr(scheduler, "final_alpha_cumprod"):
        scheduler.final_alpha_cumprod = (torch.tensor(1.0, dtype=torch.float64) if scheduler.config.set_alpha_to_one
                                         else table.alpha_bar[0].clone())


# ------------------------------------------------------------------------------------------ tables


@pytest.mark.parametrize("name, extra, kind", KINDS)
def test_alphas_cumprod_equals_the_course_table(name, extra, kind):
    scheduler = DDPMScheduler(num_train_timesteps=N, beta_schedule=name, **extra)
    table = DDPMTable.from_name(kind, N)
    torch.testing.assert_close(scheduler.alphas_cumprod.double(), table.alpha_bar, rtol=2e-5, atol=1e-6)
    rebuilt = table_from_scheduler(scheduler)
    assert torch.equal(rebuilt.alpha_bar, table.alpha_bar)


def test_scaled_linear_defaults_differ_and_the_adapter_uses_the_config():
    """diffusers' default beta range is (1e-4, 0.02) for every beta_schedule; the course's
    scaled_linear defaults to Stable Diffusion's (0.00085, 0.012)."""
    scheduler = DDPMScheduler(num_train_timesteps=N, beta_schedule="scaled_linear")
    course_default = DDPMTable.from_name("scaled_linear", N)
    assert float((scheduler.alphas_cumprod.double() - course_default.alpha_bar).abs().max()) > 1e-2
    torch.testing.assert_close(table_from_scheduler(scheduler).alpha_bar, scheduler.alphas_cumprod.double(),
                               rtol=2e-5, atol=1e-6)


def test_table_from_scheduler_with_trained_betas_and_other_lengths():
    betas = np.linspace(2e-4, 0.04, 500)
    scheduler = DDPMScheduler(num_train_timesteps=500, trained_betas=betas)
    table = table_from_scheduler(scheduler)
    assert table.n_train_steps == 500
    torch.testing.assert_close(table.betas, torch.tensor(betas), rtol=1e-6, atol=0)
    # N != 1000: the course's "linear" default scales by 1000/N, diffusers' does not; the adapter passes
    # the config's beta range, so the tables still agree
    scheduler = DDPMScheduler(num_train_timesteps=200, beta_schedule="linear")
    torch.testing.assert_close(table_from_scheduler(scheduler).alpha_bar, scheduler.alphas_cumprod.double(),
                               rtol=1e-5, atol=1e-6)
    assert not torch.allclose(DDPMTable.from_name("linear", 200).alpha_bar, scheduler.alphas_cumprod.double(),
                              atol=1e-3)


def test_table_from_scheduler_refuses_what_it_cannot_hold():
    with pytest.raises(ValueError, match="rescale_betas_zero_snr"):
        table_from_scheduler(DDPMScheduler(rescale_betas_zero_snr=True))
    with pytest.raises(ValueError, match="no DDPMTable kind"):
        table_from_scheduler(DDPMScheduler(beta_schedule="laplace"))
    changed = DDPMScheduler()
    changed.alphas_cumprod = changed.alphas_cumprod * 0.9
    with pytest.raises(ValueError, match="does not match the scheduler's alphas_cumprod"):
        table_from_scheduler(changed)
    with pytest.raises(ValueError, match="expected a diffusers scheduler"):
        table_from_scheduler(object())


# ------------------------------------------------------------------------------------------ names and times


def test_prediction_names():
    assert [prediction_from_diffusers(p) for p in ("epsilon", "sample", "v_prediction")] == ["eps", "x0", "v"]
    assert prediction_from_diffusers(DDIMScheduler(prediction_type="v_prediction")) == "v"
    with pytest.raises(ValueError, match="'velocity' on the RectifiedFlow"):
        prediction_from_diffusers("flow_prediction")
    with pytest.raises(ValueError, match="unknown diffusers prediction_type 'noise'"):
        prediction_from_diffusers("noise")


def test_timesteps_and_times_round_trip():
    k = torch.arange(N)
    t = times_from_timesteps(k, N)
    assert float(t[0]) == pytest.approx(1 / N) and float(t[-1]) == 1.0
    assert torch.equal(timesteps_from_times(t, N), k)
    # the course's DDPMTable index of t is n = k + 1
    assert torch.equal(DDPMTable.from_name("linear", N).index(t), k + 1)
    with pytest.raises(ValueError, match=r"must lie in 0..N-1 = 0..999, got \[-1\]"):
        times_from_timesteps([-1], N)
    with pytest.raises(ValueError, match="must be integers"):
        times_from_timesteps(torch.tensor([10.5]), N)
    with pytest.raises(ValueError, match="t = 0 \\(the data\\) has no diffusers timestep"):
        timesteps_from_times(torch.tensor([0.0]), N)
    with pytest.raises(ValueError, match="must be a multiple of 1/N"):
        timesteps_from_times(torch.tensor([0.0005]), N)


@pytest.mark.parametrize("name, extra, kind", KINDS)
def test_add_noise_is_the_course_forward_process(name, extra, kind):
    scheduler = DDPMScheduler(num_train_timesteps=N, beta_schedule=name, **extra)
    schedule = table_from_scheduler(scheduler).schedule()
    x0, eps = x_batch(), x_batch(scale=0.5).flip(0)
    k = torch.tensor([0, 1, 250, 700, 999])
    theirs = scheduler.add_noise(x0, eps, k)
    ours = schedule.add_noise(x0, times_from_timesteps(k, N), eps)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=2e-6)


# ------------------------------------------------------------------------------------------ grids


def test_leading_grid_equals_ddpm_grid_for_every_step_count():
    scheduler = DDPMScheduler(num_train_timesteps=N, timestep_spacing="leading")
    for K in range(1, N + 1):
        scheduler.set_timesteps(K)
        assert torch.equal(sampling_grid(scheduler), ddpm_grid(N, K, "leading")), K


def test_leading_with_steps_offset_shifts_every_index():
    scheduler = DDPMScheduler(num_train_timesteps=N, timestep_spacing="leading", steps_offset=1)
    scheduler.set_timesteps(50)
    grid, course = sampling_grid(scheduler), ddpm_grid(N, 50, "leading")
    torch.testing.assert_close(grid[:-1], course[:-1] + 1 / N, rtol=0, atol=1e-6)
    assert float(grid[-1]) == 0.0


def _half_integer(value: float) -> bool:
    return abs(value - math.floor(value) - 0.5) < 1e-9


def test_trailing_grid_equals_ddpm_grid_except_at_round_off_ties():
    """diffusers rounds np.arange(N, 0, -N/K) = N - k (N/K); the course rounds N - (k N)/K. They
    agree except where the exact value is a half-integer (float64 round-off then decides), and
    diffusers' arange sometimes adds a timestep -1, which the adapter refuses."""
    scheduler = DDPMScheduler(num_train_timesteps=N, timestep_spacing="trailing")
    ties = spurious = 0
    for K in range(1, N + 1):
        scheduler.set_timesteps(K)
        if int(scheduler.timesteps.min()) < 0:
            spurious += 1
            with pytest.raises(ValueError, match="spurious -1"):
                sampling_grid(scheduler)
            continue
        n_theirs = torch.round(sampling_grid(scheduler).double() * N)
        n_course = torch.round(ddpm_grid(N, K, "trailing").double() * N)
        for i in torch.nonzero(n_theirs != n_course).flatten().tolist():
            assert abs(float(n_theirs[i] - n_course[i])) == 1 and _half_integer(N - i * N / K), (K, i)
            ties += 1
        if N % K == 0:
            assert torch.equal(n_theirs, n_course)
    assert ties > 0 and spurious > 0  # both differences exist in diffusers 0.42.1 (61 of 1000: a -1)


def test_linspace_grid_equals_ddpm_grid_except_at_round_off_ties():
    """diffusers: round(linspace(0, N-1, K)) + 1; course: round(linspace(N, 1, K)). Same exact
    values, but round-half-to-even applied before/after the +1 differs at half-integers."""
    scheduler = DDPMScheduler(num_train_timesteps=N, timestep_spacing="linspace")
    scheduler.set_timesteps(1)
    assert sampling_grid(scheduler).tolist() == [pytest.approx(1 / N), 0.0]  # diffusers: its only step at n = 1
    assert ddpm_grid(N, 1, "linspace").tolist() == [1.0, 0.0]
    for K in range(2, N + 1, 7):
        scheduler.set_timesteps(K)
        n_theirs = torch.round(sampling_grid(scheduler).double() * N)
        n_course = torch.round(ddpm_grid(N, K, "linspace").double() * N)
        for i in torch.nonzero(n_theirs != n_course).flatten().tolist():
            j = K - 1 - i  # position in diffusers' increasing linspace
            assert abs(float(n_theirs[i] - n_course[i])) == 1 and _half_integer(j * (N - 1) / (K - 1)), (K, i)
    scheduler.set_timesteps(3)
    assert torch.round(sampling_grid(scheduler) * N).tolist() == [1000, 501, 1, 0]
    assert torch.round(ddpm_grid(N, 3, "linspace") * N).tolist() == [1000, 500, 1, 0]


def test_ddim_final_time_and_the_grids_it_refuses():
    scheduler = DDIMScheduler(num_train_timesteps=N, timestep_spacing="trailing", set_alpha_to_one=True)
    scheduler.set_timesteps(10)
    assert torch.equal(sampling_grid(scheduler), ddpm_grid(N, 10, "trailing"))
    scheduler = DDIMScheduler(num_train_timesteps=N, timestep_spacing="trailing", set_alpha_to_one=False)
    scheduler.set_timesteps(10)
    assert float(sampling_grid(scheduler)[-1]) == pytest.approx(1 / N)  # ends at n = 1, not the data
    scheduler = DDIMScheduler(num_train_timesteps=N, timestep_spacing="linspace")
    scheduler.set_timesteps(10)
    with pytest.raises(ValueError, match="steps from k=999 to k - N//K = 899, but its next timestep is 888"):
        sampling_grid(scheduler)
    scheduler = DDIMScheduler(num_train_timesteps=N, timestep_spacing="leading", set_alpha_to_one=False)
    scheduler.set_timesteps(10)
    with pytest.raises(ValueError, match="alpha_bar unchanged"):
        sampling_grid(scheduler)
    with pytest.raises(ValueError, match="set_timesteps"):
        sampling_grid(DDIMScheduler())


# ------------------------------------------------------------------------------------------ DDPM step


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("float64", [False, True])
def test_ddpm_step_equals_diffusers(prediction_type, float64):
    dtype = torch.float64 if float64 else torch.float32
    scheduler = DDPMScheduler(num_train_timesteps=N, beta_schedule="linear", prediction_type=prediction_type,
                              variance_type="fixed_small", clip_sample=False)
    denoiser = denoiser_from_scheduler(make_model(dtype), scheduler)
    assert denoiser.prediction == prediction_from_diffusers(prediction_type) and denoiser.x0_range is None
    if float64:
        use_float64_table(scheduler, denoiser.schedule.table)
    model, x = make_model(dtype), x_batch(dtype)
    # float32: diffusers' float32 table (1 - alpha_bar to ~1e-3 relative at small k) sets the tolerance
    # (measured 1.1e-4 at k = 1); float64: the Denoiser's alpha_t, sigma_t, c_in at float32 t (1.5e-7)
    atol = 3e-7 if float64 else 2e-4
    for k in (999, 700, 500, 10, 1, 0):
        out = scheduler.step(model(x, torch.full((5,), k)), k, x, generator=torch.Generator().manual_seed(k))
        t, s = step_times(scheduler, k)
        assert float(t) == pytest.approx((k + 1) / N) and float(s) == pytest.approx(k / N)
        x_s, x0_hat, _ = ddpm_step(denoiser, x, t, s, generator=torch.Generator().manual_seed(k))
        # at k = 999 x0_hat = (x - sigma eps_hat) / alpha amplifies float32 round-off by 1/alpha = 156
        torch.testing.assert_close(x0_hat, out.pred_original_sample, rtol=0, atol=5e-5 if k > 900 else 5e-6)
        torch.testing.assert_close(x_s, out.prev_sample, rtol=0, atol=atol)
        # the same with the noise passed explicitly: diffusers' randn_tensor is torch.randn on the CPU
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(k), dtype=dtype)
        x_s_explicit, _, _ = ddpm_step(denoiser, x, t, s, noise=noise)
        assert torch.equal(x_s_explicit, x_s)


def test_ddpm_step_mean_and_noise_separately():
    """prev_sample = mean + std z: the mean from generator-free diffusers (k = 0: no noise) and the
    noise reconstructed from two diffusers calls with different seeds."""
    scheduler = DDPMScheduler(num_train_timesteps=N, beta_schedule="linear", clip_sample=False)
    table = table_from_scheduler(scheduler)
    use_float64_table(scheduler, table)
    denoiser = denoiser_from_scheduler(make_model(torch.float64), scheduler)
    model, x, k = make_model(torch.float64), x_batch(torch.float64), 300
    out_a = scheduler.step(model(x, torch.full((5,), k)), k, x, generator=torch.Generator().manual_seed(1)).prev_sample
    out_b = scheduler.step(model(x, torch.full((5,), k)), k, x, generator=torch.Generator().manual_seed(2)).prev_sample
    z_a = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    z_b = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    std = (out_a - out_b) / (z_a - z_b)  # the per-step standard deviation, the same in every entry
    ab, ab_prev, beta = table.alpha_bar[k], table.alpha_bar[k - 1], table.betas[k]
    beta_tilde = float((1 - ab_prev) / (1 - ab) * beta)  # Ho et al. 2020, eq. 7
    torch.testing.assert_close(std, torch.full_like(std, math.sqrt(beta_tilde)), rtol=1e-8, atol=0)
    t, s = step_times(scheduler, k)
    mean, _, _ = ddpm_step(denoiser, x, t, s, noise=torch.zeros_like(x))
    torch.testing.assert_close(out_a - std * z_a, mean, rtol=0, atol=1e-8)


def test_ddpm_step_with_clip_sample_is_the_denoiser_x0_range():
    scheduler = DDPMScheduler(num_train_timesteps=N, clip_sample=True, clip_sample_range=0.5)
    denoiser = denoiser_from_scheduler(make_model(), scheduler)
    assert denoiser.x0_range == (-0.5, 0.5)
    x, model, k = x_batch(scale=3.0), make_model(), 400
    out = scheduler.step(model(x, torch.full((5,), k)), k, x, generator=torch.Generator().manual_seed(0))
    assert float(out.pred_original_sample.abs().max()) == 0.5  # the clip is active
    t, s = step_times(scheduler, k)
    x_s, x0_hat, _ = ddpm_step(denoiser, x, t, s, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x0_hat, out.pred_original_sample, rtol=0, atol=1e-6)
    torch.testing.assert_close(x_s, out.prev_sample, rtol=0, atol=2e-5)


def test_ddpm_full_chain_sampling_equals_diffusers():
    """Ancestral sampling on a 20-step trailing grid, one generator shared step by step."""
    scheduler = DDPMScheduler(num_train_timesteps=N, beta_schedule="squaredcos_cap_v2", clip_sample=False,
                              timestep_spacing="trailing")
    scheduler.set_timesteps(20)
    table = table_from_scheduler(scheduler)
    use_float64_table(scheduler, table)
    model, x = make_model(torch.float64), x_batch(torch.float64)
    denoiser = denoiser_from_scheduler(model, scheduler)
    theirs, gen = x.clone(), torch.Generator().manual_seed(5)
    for k in scheduler.timesteps:
        theirs = scheduler.step(model(theirs, k.expand(5)), k, theirs, generator=gen).prev_sample
    ours = sample(denoiser, x.clone(), sampling_grid(scheduler), ddpm_step, generator=torch.Generator().manual_seed(5))
    # the last step: diffusers adds noise of std 1e-10 (variance clamped at 1e-20), the course none;
    # the first step at alpha ~ 0 (cosine) amplifies the Denoiser's float32 coefficients (measured 1e-5)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=3e-5)


# ------------------------------------------------------------------------------------------ DDIM step


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("set_alpha_to_one", [True, False])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_single_ddim_step_equals_diffusers(spacing, set_alpha_to_one, prediction_type):
    scheduler = DDIMScheduler(num_train_timesteps=N, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012, set_alpha_to_one=set_alpha_to_one, timestep_spacing=spacing,
                              clip_sample=False, prediction_type=prediction_type, steps_offset=1)
    scheduler.set_timesteps(10)
    model, x = make_model(), x_batch()
    denoiser = denoiser_from_scheduler(model, scheduler)
    for k in scheduler.timesteps.tolist():
        out = scheduler.step(model(x, torch.full((5,), k)), k, x, eta=0.0)
        t, s = step_times(scheduler, k)
        x_s, x0_hat, _ = ddim_step(denoiser, x, t, s, eta=0.0)
        torch.testing.assert_close(x_s, out.prev_sample, rtol=0, atol=1e-5)
        torch.testing.assert_close(x0_hat, out.pred_original_sample, rtol=0, atol=1e-5)
    last_t, last_s = step_times(scheduler, scheduler.timesteps[-1])
    assert float(last_s) == (0.0 if set_alpha_to_one else pytest.approx(1 / N))


def test_ddim_step_float64_and_the_linspace_step_pairs():
    """With 'linspace' spacing DDIM's steps are not one grid, but every single step is still a
    course ddim_step between the times step_times names (float64 table: ~1e-12)."""
    scheduler = DDIMScheduler(num_train_timesteps=N, timestep_spacing="linspace", clip_sample=False)
    scheduler.set_timesteps(10)
    table = table_from_scheduler(scheduler)
    use_float64_table(scheduler, table)
    model, x = make_model(torch.float64), x_batch(torch.float64)
    denoiser = denoiser_from_scheduler(model, scheduler)
    pairs = []
    for k in scheduler.timesteps.tolist():
        out = scheduler.step(model(x, torch.full((5,), k)), k, x, eta=0.0)
        t, s = step_times(scheduler, k)
        pairs.append((round(float(t) * N), round(float(s) * N)))
        x_s, _, _ = ddim_step(denoiser, x, t, s)
        torch.testing.assert_close(x_s, out.prev_sample, rtol=0, atol=1e-6)
    assert pairs[:2] == [(1000, 900), (889, 789)]  # lands on n = 900, next starts from n = 889


def test_ddim_eta_one_with_explicit_noise_equals_diffusers():
    scheduler = DDIMScheduler(num_train_timesteps=N, timestep_spacing="trailing", clip_sample=False)
    scheduler.set_timesteps(25)
    use_float64_table(scheduler, table_from_scheduler(scheduler))
    model, x = make_model(torch.float64), x_batch(torch.float64)
    denoiser = denoiser_from_scheduler(model, scheduler)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    k = int(scheduler.timesteps[5])
    out = scheduler.step(model(x, torch.full((5,), k)), k, x, eta=1.0, variance_noise=noise)
    t, s = step_times(scheduler, k)
    x_s, _, _ = ddim_step(denoiser, x, t, s, eta=1.0, noise=noise)
    torch.testing.assert_close(x_s, out.prev_sample, rtol=0, atol=1e-7)


def test_ddim_clip_sample_matches_use_clipped_model_output():
    """The course's ddim_step derives eps_hat from the (clipped) x0_hat: diffusers'
    use_clipped_model_output=True. With the default False the two differ."""
    scheduler = DDIMScheduler(num_train_timesteps=N, timestep_spacing="trailing", clip_sample=True)
    scheduler.set_timesteps(10)
    model, x = make_model(), x_batch(scale=3.0)
    denoiser = denoiser_from_scheduler(model, scheduler)
    k = int(scheduler.timesteps[6])
    t, s = step_times(scheduler, k)
    x_s, _, _ = ddim_step(denoiser, x, t, s)
    clipped = scheduler.step(model(x, torch.full((5,), k)), k, x, use_clipped_model_output=True).prev_sample
    unclipped = scheduler.step(model(x, torch.full((5,), k)), k, x, use_clipped_model_output=False).prev_sample
    torch.testing.assert_close(x_s, clipped, rtol=0, atol=2e-6)
    assert float((x_s - unclipped).abs().max()) > 1e-2


# ------------------------------------------------------------------------------------------ DPM-Solver++(2M)


@pytest.mark.parametrize("spacing, steps", [("linspace", 12), ("leading", 12), ("trailing", 20)])
@pytest.mark.parametrize("name, extra", [("linear", {}), ("squaredcos_cap_v2", {})])
def test_dpm_solver_pp_2m_trajectory_equals_diffusers(spacing, steps, name, extra):
    dpm_solver = pytest.importorskip("course_lib.samplers.dpm_solver")
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=N, beta_schedule=name, algorithm_type="dpmsolver++",
                                            solver_order=2, timestep_spacing=spacing, **extra)
    scheduler.set_timesteps(steps)
    model, x = make_model(), x_batch()
    denoiser = denoiser_from_scheduler(model, scheduler)
    grid = sampling_grid(scheduler)
    assert grid.numel() == steps + 1 and float(grid[-1]) == 0.0
    theirs, trajectory = x.clone(), []
    for k in scheduler.timesteps:
        theirs = scheduler.step(model(theirs, k.expand(5)), k, theirs).prev_sample
        trajectory.append(theirs)
    ours = []
    sample(denoiser, x.clone(), grid, dpm_solver.dpm_solver_pp_2m_step, callback=lambda info: ours.append(info.x))
    for i, (a, b) in enumerate(zip(ours, trajectory)):
        # float32 on both sides (diffusers keeps its sigmas in float32); relative to the scale of x,
        # which reaches ~3e3 on the cosine table from t = 1 (alpha ~ 4e-5). Measured <= 6.8e-6.
        error = float((a - b).abs().max() / b.abs().max())
        assert error < 2e-5, f"step {i}: relative error {error:.2e}"
    assert float(trajectory[-1].abs().max()) > 0.1  # not a trivial trajectory


def test_dpm_solver_sigma_min_final_and_refused_sigmas():
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=N, final_sigmas_type="sigma_min")
    scheduler.set_timesteps(10)
    assert float(sampling_grid(scheduler)[-1]) == pytest.approx(1 / N)
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=N, use_karras_sigmas=True)
    scheduler.set_timesteps(10)
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        sampling_grid(scheduler)


# ------------------------------------------------------------------------------------------ adapter checks


def test_net_from_diffusers_model_unpacks_outputs_and_checks_times():
    class Output:
        def __init__(self, sample):
            self.sample = sample

    seen = []

    def model(x, k):
        seen.append(k.clone())
        return Output(x * 2)

    net = net_from_diffusers_model(model, N)
    out = net(torch.ones(2, 3), torch.tensor([1.0, 0.001]))
    assert torch.equal(out, torch.full((2, 3), 2.0)) and seen[0].tolist() == [999, 0]
    assert torch.equal(net_from_diffusers_model(lambda x, k: (x + 1,), N)(torch.zeros(1, 2), torch.tensor([0.5])),
                       torch.ones(1, 2))
    with pytest.raises(ValueError, match="multiple of 1/N"):
        net(torch.ones(1, 3), torch.tensor([0.0123456]))
    with pytest.raises(ValueError, match="model must be callable"):
        net_from_diffusers_model(3, N)


def test_denoiser_from_scheduler_refuses_thresholding():
    with pytest.raises(ValueError, match="dynamic thresholding"):
        denoiser_from_scheduler(make_model(), DDPMScheduler(thresholding=True))


def test_step_times_needs_a_known_scheduler():
    from diffusers import EulerDiscreteScheduler

    with pytest.raises(ValueError, match="expected a DDPMScheduler, DDIMScheduler or DPMSolverMultistepScheduler"):
        step_times(EulerDiscreteScheduler(), 10)
