import pytest
import torch

from course_lib.parameterization import PREDICTIONS, Denoiser, target, to_eps, to_x0
from course_lib.schedules import EDM, VE, RectifiedFlow, VPCosine, VPLinear, DDPMTable

SCHEDULES = [VPLinear(), VPCosine(), VE(), EDM(), RectifiedFlow(), DDPMTable.from_name("linear", 1000).schedule()]


@pytest.mark.parametrize("sched", SCHEDULES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_round_trip_x0_to_target_to_x0(sched, prediction, gen):
    x0 = torch.randn(64, 3, dtype=torch.float64, generator=gen)
    eps = torch.randn(64, 3, dtype=torch.float64, generator=gen)
    t = torch.rand(64, dtype=torch.float64, generator=gen) * 0.9 + 0.05
    x_t = sched.add_noise(x0, t, eps)
    out = target(prediction, x0, eps, sched, t)
    torch.testing.assert_close(to_x0(prediction, out, x_t, sched, t), x0, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(to_eps(prediction, out, x_t, sched, t), eps, rtol=1e-7, atol=1e-7)


def test_v_prediction_identities(gen):
    s = VPCosine()
    x0, eps = torch.randn(8, 2, dtype=torch.float64, generator=gen), torch.randn(8, 2, dtype=torch.float64, generator=gen)
    t = torch.full((8,), 0.3, dtype=torch.float64)
    a, sg = s.alpha(t)[:, None], s.sigma(t)[:, None]
    v = target("v", x0, eps, s, t)
    torch.testing.assert_close(v, a * eps - sg * x0)
    # for VP: v = alpha eps - sigma x0 = -d x_t / d phi with alpha = cos phi (Salimans & Ho 2022, sec. 4)
    torch.testing.assert_close(a * s.add_noise(x0, t, eps) - sg * v, x0)


def test_velocity_is_the_time_derivative_of_the_path(gen):
    for s in SCHEDULES:
        x0, eps = torch.randn(4, 2, dtype=torch.float64, generator=gen), torch.randn(4, 2, dtype=torch.float64, generator=gen)
        t = torch.full((4,), 0.4003, dtype=torch.float64)  # off the DDPM knots (piecewise in lambda)
        h = 1e-6
        fd = (s.add_noise(x0, t + h, eps) - s.add_noise(x0, t - h, eps)) / (2 * h)
        torch.testing.assert_close(target("velocity", x0, eps, s, t), fd, rtol=1e-5, atol=1e-5)


def test_denoiser_with_an_oracle_network_returns_x0(gen):
    s = VPLinear()
    x0 = torch.randn(16, 2, generator=gen)
    eps = torch.randn(16, 2, generator=gen)
    t = torch.full((16,), 0.5)
    x_t = s.add_noise(x0, t, eps)
    oracle = lambda x, tt: eps  # noqa: E731  (knows the noise)
    den = Denoiser(oracle, s, prediction="eps")
    torch.testing.assert_close(den(x_t, t), x0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(den(x_t, 0.5), x0, rtol=1e-5, atol=1e-5)  # scalar t broadcasts
    torch.testing.assert_close(den.eps(x_t, t), eps)


def test_denoiser_input_scaling_and_clipping():
    seen = {}

    def net(x, t):
        seen["x"] = x
        return torch.zeros_like(x)

    s = VE(0.01, 50.0)
    den = Denoiser(net, s, prediction="x0", x0_range=(-1.0, 1.0))
    x_t = torch.full((2, 3), 100.0)
    den(x_t, torch.tensor(1.0))
    torch.testing.assert_close(seen["x"], x_t / (1 + 50.0**2) ** 0.5)
    big = Denoiser(lambda x, t: torch.full_like(x, 5.0), s, prediction="x0", x0_range=(-1.0, 1.0))
    assert float(big(x_t, 0.5).max()) == 1.0
    unclipped = Denoiser(lambda x, t: torch.full_like(x, 5.0), s, prediction="x0")
    assert float(unclipped(x_t, 0.5).max()) == 5.0


def test_bad_inputs_raise():
    s = VPLinear()
    with pytest.raises(ValueError, match="unknown prediction"):
        Denoiser(lambda x, t: x, s, prediction="noise")
    with pytest.raises(ValueError, match="Schedule"):
        Denoiser(lambda x, t: x, "linear")
    with pytest.raises(ValueError, match="x0_range"):
        Denoiser(lambda x, t: x, s, x0_range=(1, -1))
    den = Denoiser(lambda x, t: x, s)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        den(torch.zeros(4, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="output shape"):
        Denoiser(lambda x, t: x[:, :1], s)(torch.zeros(4, 2), 0.5)
    with pytest.raises(ValueError, match="same shape"):
        target("eps", torch.zeros(2, 2), torch.zeros(2, 3), s, torch.tensor(0.5))
