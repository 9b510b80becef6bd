import pytest
import torch

from course_lib.losses import diffusion_loss
from course_lib.parameterization import Denoiser
from course_lib.schedules import DDPMTable, VPCosine


def test_l_simple_is_the_eps_mse(gen):
    """Ho et al. 2020, Algorithm 1: || eps - eps_theta(sqrt(abar) x0 + sqrt(1 - abar) eps, t) ||^2."""
    table = DDPMTable.from_name("linear", 1000)
    sched = table.schedule()
    net = torch.nn.Linear(3, 3)
    den = Denoiser(lambda x, t: net(x), sched, "eps")
    x0, eps = torch.randn(8, 3, generator=gen), torch.randn(8, 3, generator=gen)
    n = torch.randint(1, 1001, (8,), generator=gen)
    t = table.time(n)
    ab = table.alpha_bar[n - 1].float()[:, None]
    expected = ((eps - net(ab.sqrt() * x0 + (1 - ab).sqrt() * eps)) ** 2).mean()
    torch.testing.assert_close(diffusion_loss(den, x0, t=t, eps=eps), expected)


def test_oracle_has_zero_loss_and_weightings_agree_on_it(gen):
    sched = VPCosine()
    x0, eps = torch.randn(16, 2, generator=gen), torch.randn(16, 2, generator=gen)
    t = torch.rand(16, generator=gen) * 0.9 + 0.05
    den = Denoiser(lambda x, tt: eps, sched, "eps")
    for w in ("simple", "x0", "min_snr", "elbo"):
        assert float(diffusion_loss(den, x0, t=t, eps=eps, weighting=w)) < 1e-10


def test_weightings_relate_as_documented(gen):
    sched = VPCosine()
    x0, eps = torch.randn(16, 2, generator=gen), torch.randn(16, 2, generator=gen)
    t = torch.rand(16, generator=gen) * 0.9 + 0.05
    den = Denoiser(lambda x, tt: torch.zeros_like(x), sched, "eps")
    simple = diffusion_loss(den, x0, t=t, eps=eps, reduction="none")
    x0_weighted = diffusion_loss(den, x0, t=t, eps=eps, weighting="x0", reduction="none")
    x0_error = ((den(sched.add_noise(x0, t, eps), t) - x0) ** 2).mean(dim=1)
    torch.testing.assert_close(x0_weighted, x0_error, rtol=1e-4, atol=1e-6)
    min_snr = diffusion_loss(den, x0, t=t, eps=eps, weighting="min_snr", reduction="none")
    torch.testing.assert_close(min_snr, simple * torch.clamp(sched.snr(t), max=5.0) / sched.snr(t), rtol=1e-4, atol=1e-6)
    elbo = diffusion_loss(den, x0, t=t, eps=eps, weighting="elbo", reduction="none")
    torch.testing.assert_close(elbo, -0.5 * sched.d_log_snr(t) * simple * 2, rtol=1e-4, atol=1e-6)  # sum over 2 dims


def test_same_generator_same_loss():
    den = Denoiser(lambda x, t: torch.zeros_like(x), VPCosine(), "eps")
    x0 = torch.ones(4, 2)
    a = diffusion_loss(den, x0, generator=torch.Generator().manual_seed(3))
    b = diffusion_loss(den, x0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_bad_inputs_raise():
    den = Denoiser(lambda x, t: x, VPCosine(), "eps")
    with pytest.raises(ValueError, match="unknown weighting"):
        diffusion_loss(den, torch.zeros(2, 2), weighting="p2")
    with pytest.raises(ValueError, match="reduction"):
        diffusion_loss(den, torch.zeros(2, 2), reduction="sum")
    with pytest.raises(ValueError, match=r"t must have shape \(2,\)"):
        diffusion_loss(den, torch.zeros(2, 2), t=torch.zeros(3))
    with pytest.raises(ValueError, match="eps must have"):
        diffusion_loss(den, torch.zeros(2, 2), eps=torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"\(B, ...\)"):
        diffusion_loss(den, torch.zeros(2))
