"""The sampling loop's contract (issue 9): coefficients once per sample(), no host synchronisation
inside the loop, one validation at entry and the same validation in every step, explicit per-step
noise that replays a run exactly, a named error for a non-finite model output, and DDPM's two
variance choices checked against diffusers."""
import pytest
import torch

from course_lib.parameterization import Denoiser
from course_lib.samplers import (STEPS, ddim_step, ddpm_step, dpm_solver_pp_2m_step, euler_maruyama_step,
                                 prior_sample, sample)
from course_lib.schedules import DDPMTable, PathPoint, RectifiedFlow, VPCosine, VPLinear
from course_lib.time_grids import ddpm_grid, log_snr_grid, uniform_grid

F64 = torch.float64


class TinyNet(torch.nn.Module):
    """A smooth, time-dependent network: eps_hat = tanh(W x) * (1 + t)."""

    def __init__(self, dim=3):
        super().__init__()
        self.lin = torch.nn.Linear(dim, dim)
        torch.nn.init.normal_(self.lin.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, x, t):
        return torch.tanh(self.lin(x)) * (1 + t[:, None])


def _den(schedule=None, prediction="eps", **kw):
    return Denoiser(TinyNet(), schedule or DDPMTable.from_name("linear", 1000).schedule(), prediction, **kw)


STOCHASTIC = {  # step -> extra keyword arguments that make it draw noise
    "ddpm": {}, "ddim": {"eta": 0.5}, "euler_maruyama": {}, "consistency": {}, "sde_dpm_solver_pp_2m": {},
    "reverse_sde": {"eta": 0.5},
}


def _grid_for(name):
    return uniform_grid(10, t_start=0.99)


def test_coefficients_are_computed_once_per_sample(monkeypatch):
    """The schedule is evaluated in one points() call; the steps read numbers (no schedule call)."""
    den = _den()
    calls = {"points": 0, "raw": 0}
    points, raw = type(den.schedule).points, type(den.schedule)._raw_log_snr

    def counting_points(self, times):
        calls["points"] += 1
        return points(self, times)

    def counting_raw(self, t):
        calls["raw"] += 1
        return raw(self, t)

    monkeypatch.setattr(type(den.schedule), "points", counting_points)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    grid = ddpm_grid(1000, 20)
    for step in (ddim_step, ddpm_step, dpm_solver_pp_2m_step):
        calls.update(points=0, raw=0)
        monkeypatch.setattr(type(den.schedule), "_raw_log_snr", raw)
        sample(den, x, grid, step, generator=torch.Generator().manual_seed(2))
        assert calls["points"] == 1
        monkeypatch.setattr(type(den.schedule), "_raw_log_snr", counting_raw)
        sample(den, x, grid, step, generator=torch.Generator().manual_seed(2))
        # one points() pass evaluates the log-SNR a handful of times (alpha, sigma and derivatives),
        # never once per step
        assert 0 < calls["raw"] <= 8, calls


class _NoSync:
    """Make every tensor -> Python conversion raise while active (what would force a host sync on a GPU)."""

    NAMES = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")

    def __init__(self, monkeypatch):
        self.mp, self.active = monkeypatch, False
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)

            def guarded(tensor, *args, _original=original, _name=name, **kwargs):
                if self.active:
                    raise AssertionError(f"host sync inside a step: Tensor.{_name}")
                return _original(tensor, *args, **kwargs)
            monkeypatch.setattr(torch.Tensor, name, guarded)

    def wrap(self, step):
        def guarded_step(*args, **kwargs):
            self.active = True
            try:
                return step(*args, **kwargs)
            finally:
                self.active = False
        guarded_step.__signature__ = __import__("inspect").signature(step)
        return guarded_step


@pytest.mark.parametrize("name", ["ddpm", "ddim", "euler", "heun", "euler_maruyama", "dpm_solver_1",
                                  "dpm_solver_pp_2m", "dpm_solver_pp_3m", "sde_dpm_solver_pp_2m", "edm_heun",
                                  "reverse_sde", "predictor_corrector"])
def test_no_host_sync_inside_a_step(monkeypatch, name):
    guard = _NoSync(monkeypatch)
    den = _den(VPLinear())
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    grid = log_snr_grid(VPLinear(), 8) if name.startswith("dpm") else uniform_grid(8)
    out = sample(den, x, grid, guard.wrap(STEPS[name]), generator=torch.Generator().manual_seed(2),
                 **STOCHASTIC.get(name, {}))
    assert torch.isfinite(out).all()


def test_the_loop_passes_path_points_that_read_as_numbers():
    seen = []

    def spy(denoiser, x, t, s, **kwargs):
        seen.append((t, s))
        return ddim_step(denoiser, x, t, s, **kwargs)
    grid = uniform_grid(4)
    sample(_den(VPLinear()), torch.zeros(2, 3), grid, spy)
    assert all(isinstance(t, PathPoint) and isinstance(s, PathPoint) for t, s in seen)
    assert [float(t) for t, _ in seen] == grid[:-1].double().tolist()


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_explicit_noise_replays_a_generator_run_exactly(name):
    from course_lib.consistency import ConsistencyModel

    schedule = VPLinear()
    den = ConsistencyModel(TinyNet(), schedule, sigma_data=1.0, t_min=1e-3) if name == "consistency" else _den(schedule)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    grid = uniform_grid(6)
    kw = STOCHASTIC[name]
    ref = sample(den, x, grid, STEPS[name], generator=torch.Generator().manual_seed(7), **kw)
    g = torch.Generator().manual_seed(7)
    noise = [torch.randn(x.shape, generator=g) for _ in range(len(grid) - 1)]
    assert torch.equal(sample(den, x, grid, STEPS[name], noise=noise, **kw), ref)
    other = [torch.randn(x.shape, generator=g) for _ in range(len(grid) - 1)]
    assert not torch.equal(sample(den, x, grid, STEPS[name], noise=other, **kw), ref)


def test_explicit_noise_is_validated_at_entry():
    den, x, grid = _den(VPLinear()), torch.zeros(2, 3), uniform_grid(4)
    with pytest.raises(ValueError, match="one tensor per step"):
        sample(den, x, grid, ddpm_step, noise=[torch.zeros(2, 3)] * 3)
    with pytest.raises(ValueError, match="deterministic"):
        sample(den, x, grid, dpm_solver_pp_2m_step, noise=[torch.zeros(2, 3)] * 4)
    with pytest.raises(ValueError, match="shape"):
        sample(den, x, grid, ddpm_step, noise=[torch.zeros(2, 4)] * 4)


@pytest.mark.parametrize("name", ["ddpm", "ddim", "euler", "heun", "euler_maruyama", "dpm_solver_1",
                                  "dpm_solver_2", "dpm_solver_pp_2m", "consistency"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_model_output_is_named(name, bad):
    class Broken(torch.nn.Module):
        def forward(self, x, t):  # fine until t < 0.5, then non-finite
            return torch.where(t[:, None] < 0.5, torch.full_like(x, bad), torch.zeros_like(x))
    den = Denoiser(Broken(), VPLinear(), "eps")
    grid = log_snr_grid(VPLinear(), 8, t_start=0.99) if name.startswith("dpm") else uniform_grid(8)
    with pytest.raises(ValueError, match=r"non-finite x first at step [3-7] \(t=0\.[0-5]"):
        sample(den, torch.zeros(3, 2), grid, STEPS[name], generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", sorted(STEPS))
def test_every_step_validates_x_alike(name):
    den = _den(VPLinear())
    t, s = torch.tensor(0.6), torch.tensor(0.4)
    for bad_x, match in [(torch.zeros(2, 3, dtype=torch.long), "floating-point"), ([0.0, 1.0], "floating-point")]:
        with pytest.raises(ValueError, match=match):
            STEPS[name](den, bad_x, t, s)
    with pytest.raises(ValueError, match="s < t"):
        STEPS[name](den, torch.zeros(2, 3), s, t)
    with pytest.raises(ValueError, match="finite"):
        STEPS[name](den, torch.zeros(2, 3), torch.tensor(float("nan")), s)
    with pytest.raises(ValueError, match="schedule"):
        STEPS[name](lambda x, t: x, torch.zeros(2, 3), t, s)


def test_sample_rejects_non_finite_or_integer_starts():
    den = _den(VPLinear())
    with pytest.raises(ValueError, match="finite"):
        sample(den, torch.full((2, 3), float("nan")), uniform_grid(4), ddim_step)
    with pytest.raises(ValueError, match="floating-point"):
        sample(den, torch.zeros(2, 3, dtype=torch.int64), uniform_grid(4), ddim_step)


def test_steps_called_by_hand_equal_the_loop():
    """A number, a 0-d tensor and a PathPoint give the same step."""
    den = _den(VPCosine())
    x = torch.randn(3, 3, generator=torch.Generator().manual_seed(0))
    a = ddim_step(den, x, 0.5, 0.25)[0]
    b = ddim_step(den, x, torch.tensor(0.5, dtype=F64), torch.tensor(0.25, dtype=F64))[0]
    c = ddim_step(den, x, den.schedule.point(0.5), den.schedule.point(0.25))[0]
    assert torch.equal(a, b) and torch.equal(b, c)


def test_denoiser_at_point_equals_the_tensor_call_bit_for_bit():
    """The samplers' path (coefficients per grid, prepare()) and the tensor path give the same x0_hat:
    same numbers as before the per-grid coefficients existed."""
    from course_lib.schedules import EDM

    for schedule in (VPLinear(), VPCosine(), RectifiedFlow(), EDM(), DDPMTable.from_name("linear", 1000).schedule()):
        for prediction in ("eps", "x0", "v", "velocity", "score"):
            for dtype in (torch.float32, F64):
                den = _den(schedule, prediction, x0_range=(-1.0, 1.0))
                den.net.to(dtype)
                x = torch.randn(4, 3, generator=torch.Generator().manual_seed(3), dtype=dtype)
                times = torch.tensor([0.999, 0.9, 0.5, 0.1, 0.0011], dtype=dtype)
                points = schedule.points(times)
                den.prepare(points, dtype)
                for t, point in zip(times, points):
                    ref = den(x, t.expand(4))
                    assert torch.equal(den.at_point(x, point), ref), (schedule, prediction, dtype, float(t))


# ------------------------------------------------------------------------------------------
# DDPM's variance choice (Ho et al. 2020, sec. 3.2), against diffusers
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_ddpm_variance_choice_equals_diffusers(variance):
    diffusers = pytest.importorskip("diffusers")
    from course_lib.adapters.diffusers import denoiser_from_scheduler, sampling_grid

    # the full 1,000-step chain: on a coarser grid diffusers' fixed_large also adds noise on the last
    # step to the data (variance 1 - alpha_bar of its last timestep, since it skips noise only at
    # timestep 0), where the course follows Algorithm 2 (z = 0 on the last step); see ddpm_step
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                                        variance_type=variance)
    net = TinyNet(dim=4).double()

    def model(x, k):
        return net(x, (k.to(F64).expand(x.shape[0]) + 1) / 1000)
    x_T = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    g = torch.Generator().manual_seed(5)
    x = x_T
    for k in scheduler.timesteps:
        x = scheduler.step(model(x, k), k, x, generator=g).prev_sample
    den = denoiser_from_scheduler(model, scheduler)
    ours = sample(den, x_T, sampling_grid(scheduler).double(), ddpm_step, variance=variance,  # (1001,) grid
                  generator=torch.Generator().manual_seed(5))
    # diffusers builds its table in float32 (the adapter's notes): agreement to ~1e-5
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)


def test_fixed_large_adds_more_noise_and_the_same_mean():
    den = _den(VPLinear())
    x = torch.randn(20000, 3, generator=torch.Generator().manual_seed(0))
    t, s = den.schedule.point(0.5), den.schedule.point(0.45)
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    small = ddpm_step(den, x, t, s, noise=z)[0]
    large = ddpm_step(den, x, t, s, noise=z, variance="fixed_large")[0]
    mean = ddpm_step(den, x, t, s, noise=torch.zeros_like(z))[0]
    from course_lib.samplers import posterior_coefficients
    _, _, var_small = posterior_coefficients(den.schedule, t, s)
    var_large = t.sigma**2 - (t.alpha / s.alpha) ** 2 * s.sigma**2
    assert var_large > var_small
    torch.testing.assert_close(((small - mean) / z).mean(), torch.tensor(var_small**0.5), rtol=1e-4, atol=0)
    torch.testing.assert_close(((large - mean) / z).mean(), torch.tensor(var_large**0.5), rtol=1e-4, atol=0)
    # the last step (to s = 0) adds no noise with either choice (Algorithm 2: z = 0 at t = 1)
    last = ddpm_step(den, x, den.schedule.point(0.01), den.schedule.point(0.0), noise=z, variance="fixed_large")[0]
    assert torch.equal(last, ddpm_step(den, x, 0.01, 0.0, noise=torch.zeros_like(z))[0])
    with pytest.raises(ValueError, match="fixed_small"):
        ddpm_step(den, x, t, s, variance="learned")


def test_prior_sample_is_unchanged():
    x = prior_sample(VPLinear(), (4, 2), generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, 2)


def test_ddim_inversion_names_a_non_finite_model_output():
    from course_lib.samplers import ddim_invert

    class Broken(torch.nn.Module):
        def forward(self, x, t):
            return torch.where(t[:, None] > 0.5, torch.full_like(x, float("nan")), torch.zeros_like(x))
    den = Denoiser(Broken(), VPLinear(), "eps")
    with pytest.raises(ValueError, match=r"inversion produced a non-finite x first at step [4-7]"):
        ddim_invert(den, torch.zeros(3, 2), uniform_grid(8).flip(0))
    with pytest.raises(ValueError, match="x0 must be finite"):
        ddim_invert(den, torch.full((3, 2), float("inf")), uniform_grid(8).flip(0))
