"""The exact-Gaussian test bed of the sampler tests (STYLE.md, 'Tests that carry meaning').

For x0 ~ N(M, S^2) in every coordinate, E[x0 | x_t] is linear in x_t and the probability-flow
ODE has a closed-form solution: the standardised value (x_t - alpha_t M) / sqrt(alpha_t^2 S^2 + sigma_t^2)
is constant along every trajectory. Imported by tests/test_samplers_stage2.py and
tests/test_samplers_new.py.
"""
import torch

M, S = 0.7, 0.5  # data: x0 ~ N(M, S^2) in every coordinate
F64 = torch.float64


class GaussianDenoiser:
    """E[x0 | x_t] for x0 ~ N(M, S^2): M + alpha S^2 / (alpha^2 S^2 + sigma^2) (x_t - alpha M).

    Counts its evaluations in ``nfe``.
    """

    def __init__(self, schedule):
        self.schedule = schedule
        self.nfe = 0

    def __call__(self, x_t, t):
        self.nfe += 1
        t = torch.as_tensor(t, dtype=F64)
        a, s = self.schedule.alpha(t), self.schedule.sigma(t)
        a = a.reshape(-1, *([1] * (x_t.dim() - 1))) if a.dim() else a
        s = s.reshape(-1, *([1] * (x_t.dim() - 1))) if s.dim() else s
        return (M + a * S**2 / (a**2 * S**2 + s**2) * (x_t - a * M)).to(x_t.dtype)


def exact_flow(schedule, x, t_from, t_to):
    """The exact probability-flow map x_{t_from} -> x_{t_to} for the Gaussian data."""
    def scales(t):
        t = torch.as_tensor(t, dtype=F64)
        a, s = schedule.alpha(t), schedule.sigma(t)
        return a, torch.sqrt(a**2 * S**2 + s**2)

    (a0, std0), (a1, std1) = scales(t_from), scales(t_to)
    return a1 * M + std1 * (x - a0 * M) / std0


def fitted_slope(ns, errs):
    """Least-squares slope of log(error) against log(N), sign flipped: the order of convergence."""
    ln, le = torch.log(torch.tensor(ns, dtype=F64)), torch.log(torch.tensor(errs, dtype=F64))
    return -float(((ln - ln.mean()) * (le - le.mean())).sum() / ((ln - ln.mean()) ** 2).sum())
