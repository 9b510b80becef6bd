"""The variational bound of DDPM and the exact ODE likelihood (course_lib.likelihood).

Every figure is checked against a closed form: the Gaussian KL against its SymPy derivation,
the bound's terms against the formulas for a denoiser with a known error, the bound against the
exact NLL of Gaussian data, and the ODE log-likelihood against the exact log-density of a
Gaussian and of a Gaussian mixture, each with its exact denoiser E[x0 | x_t].
"""

from __future__ import annotations

import math

import pytest
import torch

from course_lib import derivations
from course_lib.likelihood import (
    discretized_gaussian_log_likelihood,
    divergence,
    gaussian_kl,
    hutchinson_probes,
    ode_log_likelihood,
    vlb_terms,
)
from course_lib.parameterization import Denoiser
from course_lib.schedules import DDPMTable, RectifiedFlow, VPCosine

F64 = torch.float64


def exact_denoiser(schedule, x0_hat_fn) -> Denoiser:
    """A Denoiser whose network is x0_hat_fn(x_t, t) (float64): it undoes the input scaling c_in."""
    def net(x_in, t):
        c_in = torch.rsqrt(schedule.alpha(t) ** 2 + schedule.sigma(t) ** 2)  # as Denoiser computes it
        x_t = x_in / c_in.to(x_in.dtype)[:, None]
        return x0_hat_fn(x_t.to(F64), t.to(F64)).to(x_in.dtype)

    return Denoiser(net, schedule, prediction="x0")


def gaussian_x0_hat(schedule, m: torch.Tensor, cov: torch.Tensor):
    """E[x0 | x_t] for data N(m, cov): m + alpha cov (alpha^2 cov + sigma^2 I)^{-1} (x_t - alpha m)."""
    def x0_hat(x_t, t):
        a, s = schedule.alpha(t)[:, None, None], schedule.sigma(t)[:, None, None]  # (B, 1, 1)
        gain = a * cov @ torch.linalg.inv(a**2 * cov + s**2 * torch.eye(len(m), dtype=F64))  # (B, D, D)
        return m + (gain @ (x_t - a[:, :, 0] * m)[:, :, None])[:, :, 0]

    return x0_hat


def gaussian_log_density(x, m, cov):
    return torch.distributions.MultivariateNormal(m, cov).log_prob(x)


# A 2-D Gaussian mixture: weights pi_k, means m_k, isotropic stds s_k.
MIX_WEIGHTS = torch.tensor([0.3, 0.5, 0.2], dtype=F64)
MIX_MEANS = torch.tensor([[-2.0, 0.0], [2.0, 0.5], [0.0, 2.5]], dtype=F64)
MIX_STDS = torch.tensor([0.5, 0.3, 0.7], dtype=F64)


def mixture_x0_hat(schedule):
    r"""E[x0 | x_t] = sum_k w_k(x_t) E[x0 | x_t, k]: posterior weights
    w_k ∝ pi_k N(x_t; alpha m_k, v_k I), v_k = alpha^2 s_k^2 + sigma^2, and per component
    E[x0 | x_t, k] = m_k + alpha s_k^2 / v_k (x_t - alpha m_k)."""
    def x0_hat(x_t, t):
        a, s = schedule.alpha(t)[:, None, None], schedule.sigma(t)[:, None, None]  # (B, 1, 1)
        var = a**2 * MIX_STDS[None, :, None] ** 2 + s**2  # (B, K, 1)
        diff = x_t[:, None, :] - a * MIX_MEANS[None]  # (B, K, 2)
        log_w = torch.log(MIX_WEIGHTS)[None] - 0.5 * (diff**2 / var).sum(-1) - torch.log(var[..., 0])  # D = 2
        w = torch.softmax(log_w, dim=1)  # (B, K)
        per_component = MIX_MEANS[None] + a * MIX_STDS[None, :, None] ** 2 / var * diff  # (B, K, 2)
        return (w[..., None] * per_component).sum(dim=1)

    return x0_hat


def mixture_log_density(x):
    d2 = ((x[:, None, :] - MIX_MEANS[None]) ** 2).sum(-1)  # (B, K)
    log_p = torch.log(MIX_WEIGHTS) - 0.5 * d2 / MIX_STDS**2 - torch.log(2 * math.pi * MIX_STDS**2)
    return torch.logsumexp(log_p, dim=1)


def mixture_sample(n, generator):
    k = torch.multinomial(MIX_WEIGHTS, n, replacement=True, generator=generator)
    return MIX_MEANS[k] + MIX_STDS[k, None] * torch.randn(n, 2, generator=generator, dtype=F64)


def digits_like(B=4, generator=None):
    """Data on the 17 levels of the course's digits: pixel v in 0..16 -> v / 8 - 1."""
    v = torch.randint(0, 17, (B, 1, 2, 2), generator=generator)
    return v.to(F64) / 8 - 1


# ------------------------------------------------------------------------------------------ Gaussian KL


def test_gaussian_kl_matches_the_sympy_derivation():
    err = derivations.check_against_torch(
        derivations.gaussian_kl(), [derivations.mu1, derivations.var1, derivations.mu2, derivations.var2],
        lambda mu1, var1, mu2, var2: gaussian_kl(mu1, var1, mu2, var2),
        ranges={"mu1": (-2, 2), "mu2": (-2, 2), "var1": (0.01, 3), "var2": (0.01, 3)}, rtol=1e-10, atol=1e-12)
    assert err < 1e-10


def test_gaussian_kl_is_zero_for_equal_gaussians_and_checks_variances():
    assert float(gaussian_kl(0.3, 0.2, 0.3, 0.2)) == 0.0
    with pytest.raises(ValueError, match="var2 must be a positive variance"):
        gaussian_kl(0.0, 1.0, 0.0, torch.tensor([1.0, 0.0]))


# ------------------------------------------------------------------------------------------ decoder


@pytest.mark.parametrize("mean, var", [(0.0, 0.01), (0.93, 1e-4), (-3.0, 0.5), (1.0, 1e-8), (0.4, 25.0)])
def test_discretized_decoder_masses_sum_to_one(mean, var):
    levels = torch.linspace(-1, 1, 17, dtype=F64)[None, :]  # (1, 17): every level once
    log_p = discretized_gaussian_log_likelihood(levels, torch.full_like(levels, mean), var, 17)
    assert bool(torch.isfinite(log_p).all())
    assert float(log_p.exp().sum()) == pytest.approx(1.0, abs=1e-12)


def test_discretized_decoder_equals_the_normal_cdf():
    def Phi(z):
        return 0.5 * (1 + math.erf(z / math.sqrt(2)))

    x0 = torch.tensor([[-1.0, -0.375, 0.5, 1.0]], dtype=F64)
    mean = torch.tensor([[-0.9, -0.3, 0.6, 0.95]], dtype=F64)
    std, half = 0.1, 1 / 16
    log_p = discretized_gaussian_log_likelihood(x0, mean, std**2, 17)[0].tolist()
    expected = [
        math.log(Phi((-1 + half + 0.9) / std)),  # the lowest bin reaches -inf
        math.log(Phi((-0.375 + half + 0.3) / std) - Phi((-0.375 - half + 0.3) / std)),
        math.log(Phi((0.5 + half - 0.6) / std) - Phi((0.5 - half - 0.6) / std)),
        math.log(1 - Phi((1 - half - 0.95) / std)),  # the highest bin reaches +inf
    ]
    assert log_p == pytest.approx(expected, rel=1e-10)
    # deep in a tail the mirror formula keeps it finite and right: log(Phi(-a) - Phi(-b)) ~ log Phi(-a)
    far = discretized_gaussian_log_likelihood(torch.tensor([[0.0]]), torch.tensor([[-1.0]]), 1e-4, 17)
    assert float(far) == pytest.approx(float(torch.special.log_ndtr(torch.tensor(-(1 - 1 / 16) / 0.01, dtype=F64))),
                                       rel=1e-6)


def test_discretized_decoder_checks_its_data():
    with pytest.raises(ValueError, match="must take the 17 levels"):
        discretized_gaussian_log_likelihood(torch.tensor([[0.01]]), torch.zeros(1, 1), 0.1, 17)
    with pytest.raises(ValueError, match=r"x0 must lie in \[-1, 1\]"):
        discretized_gaussian_log_likelihood(torch.tensor([[1.5]]), torch.zeros(1, 1), 0.1, 17)
    with pytest.raises(ValueError, match="data_bins must be the number of levels"):
        discretized_gaussian_log_likelihood(torch.tensor([[0.0]]), torch.zeros(1, 1), 0.1, 1)
    with pytest.raises(ValueError, match="var must be a positive variance"):
        discretized_gaussian_log_likelihood(torch.tensor([[0.0]]), torch.zeros(1, 1), 0.0, 17)
    # 256 levels (8-bit images): the grid -1 + 2 j / 255
    x0 = torch.tensor([[-1 + 2 * 100 / 255]])
    assert bool(torch.isfinite(discretized_gaussian_log_likelihood(x0, x0, 1e-3, 256)).all())


# ------------------------------------------------------------------------------------------ the bound


def offset_oracle(x0, delta):
    """A denoiser that knows x0 and misses it by delta everywhere: then every L_{n-1} is known."""
    return lambda x_t, t: x0 + delta


def closed_form_terms(table, D, delta, reverse_variance="beta_tilde"):
    """L_{n-1}, n = 2..N, for x0_hat = x0 + delta (Ho et al. 2020, eq. 7 and the Gaussian KL)."""
    ab, betas = table.alpha_bar, table.betas
    ab_n, ab_prev, beta = ab[1:], ab[:-1], betas[1:]
    c_x0 = ab_prev.sqrt() * beta / (1 - ab_n)
    beta_tilde = (1 - ab_prev) / (1 - ab_n) * beta
    var_p = beta_tilde if reverse_variance == "beta_tilde" else beta
    per_dim = 0.5 * (torch.log(var_p / beta_tilde) + (beta_tilde + c_x0**2 * delta**2) / var_p - 1)
    return D * per_dim  # (N - 1,)


@pytest.mark.parametrize("reverse_variance", ["beta_tilde", "beta"])
def test_vlb_terms_equal_the_closed_form_for_a_known_error(reverse_variance):
    table = DDPMTable.from_name("linear", 50)
    x0 = digits_like(generator=torch.Generator().manual_seed(0))
    D, delta = 4, 0.1
    out = vlb_terms(offset_oracle(x0, delta), x0, table, generator=torch.Generator().manual_seed(1),
                    reverse_variance=reverse_variance)
    expected = closed_form_terms(table, D, delta, reverse_variance)
    assert out["exact"] and out["n"].tolist() == list(range(2, 51))
    torch.testing.assert_close(out["L_terms"], expected.expand(4, -1), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out["L_sum"], expected.sum().expand(4), rtol=1e-9, atol=1e-12)
    # L_T = KL(N(sqrt(ab_N) x0, 1 - ab_N) || N(0, 1)), summed over the D dimensions
    ab_N = table.alpha_bar[-1]
    L_T = 0.5 * (ab_N * (x0.double() ** 2).reshape(4, -1).sum(1) + D * (1 - ab_N - 1 - torch.log(1 - ab_N)))
    torch.testing.assert_close(out["L_T"], L_T, rtol=1e-9, atol=1e-15)
    # L_0 = -log of the mass of N(x0 + delta, beta_1) over each pixel's bin
    std, half = math.sqrt(float(table.betas[0])), 1 / 16
    Phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    L_0 = []
    for row in x0.reshape(4, -1).tolist():
        total = 0.0
        for v in row:
            upper = 1.0 if v == 1 else Phi((half - delta) / std)
            lower = 0.0 if v == -1 else Phi((-half - delta) / std)
            total -= math.log(upper - lower)
        L_0.append(total)
    torch.testing.assert_close(out["L_0"], torch.tensor(L_0, dtype=F64), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out["nats"], out["L_T"] + out["L_sum"] + out["L_0"])
    torch.testing.assert_close(out["bits_per_dim"], out["nats"] / (D * math.log(2)))


def test_monte_carlo_over_n_is_unbiased():
    """(N - 1) * mean over K uniformly drawn n estimates the sum over n = 2..N."""
    table = DDPMTable.from_name("cosine", 60)
    x0 = digits_like(B=1, generator=torch.Generator().manual_seed(0))
    exact = float(closed_form_terms(table, 4, 0.05).sum())
    estimates = torch.tensor([
        float(vlb_terms(offset_oracle(x0, 0.05), x0, table, n_values=4,
                        generator=torch.Generator().manual_seed(seed))["L_sum"][0])
        for seed in range(300)
    ])
    se = float(estimates.std()) / math.sqrt(len(estimates))
    assert se > 1e-3 * exact  # the subsets differ, so the estimates do
    assert abs(float(estimates.mean()) - exact) < 4 * se
    # an explicit subset is used as given, with the same estimator
    out = vlb_terms(offset_oracle(x0, 0.05), x0, table, n_values=[2, 30, 60], generator=torch.Generator())
    assert not out["exact"] and out["n"].tolist() == [2, 30, 60]
    expected = closed_form_terms(table, 4, 0.05)[[0, 28, 58]].mean() * 59
    assert float(out["L_sum"][0]) == pytest.approx(float(expected), rel=1e-9)


def test_vlb_of_gaussian_data_bounds_the_exact_nll():
    """Continuous 1-D data N(0.3, 0.5^2) with its exact denoiser: E[L] >= E[-log p(x0)]. With
    sigma_n^2 = beta_tilde the bound is loose (~1 nat: the true reverse variance is larger at small
    n); with beta it is within Monte-Carlo error of the NLL."""
    table = DDPMTable.from_name("linear", 200)
    schedule = table.schedule()
    m, s = torch.tensor([0.3], dtype=F64), 0.5
    denoiser = exact_denoiser(schedule, gaussian_x0_hat(schedule, m, torch.tensor([[s**2]], dtype=F64)))
    x0 = m + s * torch.randn(1000, 1, generator=torch.Generator().manual_seed(0), dtype=F64)
    nll = 0.5 * math.log(2 * math.pi * s**2) + 0.5 * ((x0[:, 0] - m) / s) ** 2
    gaps = {}
    for variance in ("beta_tilde", "beta"):
        out = vlb_terms(denoiser, x0, table, data_bins=None, reverse_variance=variance,
                        generator=torch.Generator().manual_seed(1))
        gap = out["nats"] - nll  # (B,)
        gaps[variance] = (float(gap.mean()), float(gap.std()) / math.sqrt(len(gap)))
    mean, se = gaps["beta_tilde"]
    assert mean > 0.5 and mean > 5 * se  # measured 0.96 +- 0.06
    mean, se = gaps["beta"]
    assert -3 * se < mean < 0.15  # measured 0.007 +- 0.034


def test_vlb_terms_are_reproducible():
    table = DDPMTable.from_name("linear", 30)
    x0 = digits_like(generator=torch.Generator().manual_seed(0))
    noisy = lambda x_t, t: 0.5 * x_t  # noqa: E731  (depends on the draw of x_n)
    a = vlb_terms(noisy, x0, table, n_values=5, generator=torch.Generator().manual_seed(3))
    b = vlb_terms(noisy, x0, table, n_values=5, generator=torch.Generator().manual_seed(3))
    c = vlb_terms(noisy, x0, table, n_values=5, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a["n"], b["n"]) and torch.equal(a["nats"], b["nats"])
    assert not torch.equal(a["nats"], c["nats"])


def test_vlb_terms_check_their_arguments():
    table = DDPMTable.from_name("linear", 30)
    x0 = digits_like()
    oracle = offset_oracle(x0, 0.0)
    with pytest.raises(ValueError, match=r"n_values must lie in 2..N = 2..30"):
        vlb_terms(oracle, x0, table, n_values=[1, 5])
    with pytest.raises(ValueError, match="n_values as a count must lie in 1..N-1 = 1..29"):
        vlb_terms(oracle, x0, table, n_values=30)
    with pytest.raises(ValueError, match="reverse_variance must be 'beta_tilde' or 'beta'"):
        vlb_terms(oracle, x0, table, reverse_variance="learned")
    off_grid = x0.clone()
    off_grid[0, 0, 0, 0] = 0.01
    with pytest.raises(ValueError, match="must take the 17 levels"):
        vlb_terms(lambda x_t, t: x_t, off_grid, table)
    with pytest.raises(ValueError, match="x0 must be a floating-point tensor of shape"):
        vlb_terms(oracle, torch.zeros(4), table)
    other = Denoiser(lambda x, t: x, DDPMTable.from_name("cosine", 30).schedule(), prediction="x0")
    with pytest.raises(ValueError, match="the denoiser was trained on"):
        vlb_terms(other, x0, table)
    with pytest.raises(ValueError, match="table must be a course_lib DDPMTable"):
        vlb_terms(oracle, x0, VPCosine())


# ------------------------------------------------------------------------------------------ divergence


def test_divergence_of_a_linear_map_exact_and_hutchinson():
    A = torch.tensor([[1.0, 2.0, 0.0], [3.0, -4.0, 1.0], [0.5, 0.0, 2.0]], dtype=F64)
    x = torch.randn(2000, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    v, div = divergence(lambda y: y @ A.T, x)
    assert torch.allclose(v, x @ A.T) and torch.allclose(div, torch.full((2000,), -1.0, dtype=F64))
    for kind in ("rademacher", "gaussian"):
        probes = hutchinson_probes(x.shape, 1, kind, generator=torch.Generator().manual_seed(1))
        _, estimate = divergence(lambda y: y @ A.T, x, probes=probes)  # one probe per example
        se = float(estimate.std()) / math.sqrt(2000)
        assert se > 0.01 and abs(float(estimate.mean()) + 1.0) < 4 * se


def test_hutchinson_probes():
    z = hutchinson_probes((500, 3), 4, "rademacher", generator=torch.Generator().manual_seed(0))
    assert z.shape == (4, 500, 3) and set(z.unique().tolist()) == {-1.0, 1.0}
    second_moment = torch.einsum("pbi,pbj->ij", z, z) / 2000  # E[z z^T] ~ I
    assert torch.allclose(second_moment, torch.eye(3, dtype=F64), atol=0.1)
    again = hutchinson_probes((500, 3), 4, "rademacher", generator=torch.Generator().manual_seed(0))
    assert torch.equal(z, again)
    with pytest.raises(ValueError, match="probe kind must be one of"):
        hutchinson_probes((2, 2), 1, "uniform")
    with pytest.raises(ValueError, match="n_probes must be a positive integer"):
        hutchinson_probes((2, 2), 0)


# ------------------------------------------------------------------------------------------ ODE likelihood


@pytest.mark.parametrize("schedule, t_start", [(VPCosine(), 1e-3), (RectifiedFlow(), 1e-4)],
                         ids=["cosine", "rectified_flow"])
def test_ode_log_likelihood_of_gaussian_data_is_exact(schedule, t_start):
    """Within 0.01 nats per point of log N(x0; m, s^2 I). Measured: 4e-4 (cosine), 6e-4 (rectified
    flow; at t_start = 1e-3 it would be 5e-3, the offset log p_{t_start} - log p_0 being O(t_start)
    where alpha_t = 1 - t)."""
    m, cov = torch.tensor([0.5, -0.3], dtype=F64), 0.6**2 * torch.eye(2, dtype=F64)
    denoiser = exact_denoiser(schedule, gaussian_x0_hat(schedule, m, cov))
    x0 = m + 0.6 * torch.randn(100, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    log_p = ode_log_likelihood(denoiser, x0, n_steps=60, t_start=t_start)
    error = (log_p - gaussian_log_density(x0, m, cov)).abs()
    assert float(error.max()) < 0.01
    # for isotropic data dv/dx is c(t) I, so a Rademacher probe gives the trace exactly
    hutchinson = ode_log_likelihood(denoiser, x0, n_steps=60, t_start=t_start, exact_trace=False,
                                    generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(hutchinson, log_p, rtol=0, atol=1e-9)


@pytest.mark.parametrize("method, order", [("rk4", 4), ("heun", 2)])
def test_ode_integrators_converge_at_their_order(method, order):
    """Against the exact log p_{t_start}(x0) (what the ODE computes), halving the step divides the
    error by ~2^order. Measured on rectified flow: rk4 12.7x, 14.1x; heun 4.17x, 4.18x."""
    schedule, t_start = RectifiedFlow(), 1e-3
    m, s = torch.tensor([0.5, -0.3], dtype=F64), 0.6
    denoiser = exact_denoiser(schedule, gaussian_x0_hat(schedule, m, s**2 * torch.eye(2, dtype=F64)))
    x0 = m + s * torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    alpha, sigma = 1 - t_start, t_start
    exact = gaussian_log_density(x0, alpha * m, (alpha**2 * s**2 + sigma**2) * torch.eye(2, dtype=F64))
    errors = [float((ode_log_likelihood(denoiser, x0, n_steps=n, method=method) - exact).abs().max())
              for n in (20, 40)]
    assert errors[0] / errors[1] > 0.75 * 2**order


@pytest.mark.parametrize("probe, n_hutchinson", [("rademacher", 1), ("gaussian", 2)])
def test_ode_hutchinson_agrees_within_its_monte_carlo_error(probe, n_hutchinson):
    schedule = VPCosine()
    rotation = torch.tensor([[0.8, -0.6], [0.6, 0.8]], dtype=F64)
    m = torch.tensor([0.2, 0.1], dtype=F64)
    cov = rotation @ torch.diag(torch.tensor([0.8, 0.1], dtype=F64)) @ rotation.T  # not a multiple of I
    denoiser = exact_denoiser(schedule, gaussian_x0_hat(schedule, m, cov))
    x0 = torch.distributions.MultivariateNormal(m, cov).sample((200,))
    exact = ode_log_likelihood(denoiser, x0, n_steps=40)
    assert float((exact - gaussian_log_density(x0, m, cov)).abs().max()) < 0.01
    estimate = ode_log_likelihood(denoiser, x0, n_steps=40, exact_trace=False, probe=probe,
                                  n_hutchinson=n_hutchinson, generator=torch.Generator().manual_seed(2))
    difference = estimate - exact  # independent across points, mean 0
    se = float(difference.std()) / math.sqrt(len(difference))
    assert se > 1e-3  # the estimate is random (the Jacobian is not a multiple of I) ...
    assert abs(float(difference.mean())) < 4 * se  # ... and unbiased
    again = ode_log_likelihood(denoiser, x0, n_steps=40, exact_trace=False, probe=probe,
                               n_hutchinson=n_hutchinson, generator=torch.Generator().manual_seed(2))
    assert torch.equal(again, estimate)


@pytest.mark.parametrize("spacing, method, n_steps", [("log_snr", "rk4", 100), ("uniform", "rk4", 100),
                                                      ("log_snr", "heun", 100)])
def test_ode_log_likelihood_of_a_gaussian_mixture(spacing, method, n_steps):
    """The acceptance figure of chapter 06: within 0.05 nats per point of the exact mixture
    log-density. Measured (200 points, one core): log_snr/rk4/100 max 0.0026 nats in 0.8 s;
    uniform/rk4/100 0.0069; log_snr/heun/100 0.0076."""
    schedule = VPCosine()
    denoiser = exact_denoiser(schedule, mixture_x0_hat(schedule))
    x0 = mixture_sample(200, torch.Generator().manual_seed(0))
    log_p = ode_log_likelihood(denoiser, x0, n_steps=n_steps, spacing=spacing, method=method)
    error = (log_p - mixture_log_density(x0)).abs()
    assert float(error.max()) < 0.05
    assert float(error.mean()) < 0.01


def test_ode_log_likelihood_checks_its_arguments():
    denoiser = exact_denoiser(VPCosine(), lambda x, t: x)
    x0 = torch.zeros(2, 2, dtype=F64)
    with pytest.raises(ValueError, match=r"t_start must lie in \(0, 1\)"):
        ode_log_likelihood(denoiser, x0, t_start=0.0)
    with pytest.raises(ValueError, match="method must be 'rk4' or 'heun'"):
        ode_log_likelihood(denoiser, x0, method="euler")
    with pytest.raises(ValueError, match="spacing must be 'log_snr' or 'uniform'"):
        ode_log_likelihood(denoiser, x0, spacing="karras")
    with pytest.raises(ValueError, match="pass exact_trace=False to use them"):
        ode_log_likelihood(denoiser, x0, n_hutchinson=4)
    with pytest.raises(ValueError, match="n_steps must be a positive integer"):
        ode_log_likelihood(denoiser, x0, n_steps=0)
    with pytest.raises(ValueError, match="denoiser must carry the schedule"):
        ode_log_likelihood(lambda x, t: x, x0)
