"""Tests of course_lib.derivations: every SymPy derivation against a closed form and the torch code."""

from __future__ import annotations

import math

import pytest
import sympy as sp
import torch

from course_lib import derivations as D
from course_lib.samplers.ddpm import posterior_coefficients
from course_lib.schedules import (EDM, VE, DDPMTable, RectifiedFlow, VPCosine, VPLinear, VPScaledLinear,
                                  VPSigmoid, get_schedule)

# ------------------------------------------------------------------------------------
# Composing Gaussians and q(x_n | x_0)
# ------------------------------------------------------------------------------------


def test_compose_gaussians_closed_form():
    a1, a2, v1, v2 = sp.symbols("a1 a2 v1 v2", positive=True)
    a, var = D.compose_gaussians(a1, v1, a2, v2)
    assert sp.simplify(a - a1 * a2) == 0
    assert sp.simplify(var - (a2**2 * v1 + v2)) == 0
    # numbers: x1 = 2 x0 + sqrt(3) e1, x2 = 0.5 x1 + 1 e2 -> (1, 0.25 * 3 + 1)
    a, var = D.compose_gaussians(2, 3, sp.Rational(1, 2), 1)
    assert (a, var) == (1, sp.Rational(7, 4))


def test_compose_gaussians_matches_monte_carlo():
    """The composed variance is what sampling the two steps gives (within Monte-Carlo error)."""
    a, var = D.compose_gaussians(0.8, 0.36, 0.6, 0.64)
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000,), 1.5, dtype=torch.float64)
    x1 = 0.8 * x0 + 0.6 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    x2 = 0.6 * x1 + 0.8 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    assert abs(float(x2.mean()) - float(a) * 1.5) < 4 * math.sqrt(float(var) / x0.numel())
    assert abs(float(x2.var()) - float(var)) < 0.01


def test_compose_gaussians_rejects_non_expressions():
    with pytest.raises(ValueError, match="a1 must be a SymPy expression"):
        D.compose_gaussians(object(), 1, 1, 1)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_forward_marginal_is_product_of_alphas(n):
    mean_coef, var = D.forward_marginal(n)
    alphas = D.alpha_symbols(n)
    alpha_bar = sp.Mul(*alphas)
    assert sp.simplify(mean_coef - sp.sqrt(alpha_bar)) == 0
    assert sp.expand(var - (1 - alpha_bar)) == 0
    # numerically against a DDPM table's alpha_bar
    table = DDPMTable.from_name("cosine", 10)
    values = {a: float(table.alphas[i]) for i, a in enumerate(alphas)}
    assert float(mean_coef.subs(values)) ** 2 == pytest.approx(float(table.alpha_bar[n - 1]), rel=1e-12)
    assert float(var.subs(values)) == pytest.approx(1 - float(table.alpha_bar[n - 1]), rel=1e-12)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, "3"])
def test_forward_marginal_rejects_bad_n(bad):
    with pytest.raises(ValueError, match="n must be a positive integer"):
        D.forward_marginal(bad)


def test_induction_step_identities_hold_and_render():
    mean_id, var_id = D.induction_step()
    for identity in (mean_id, var_id):
        assert isinstance(identity, sp.Eq)
        assert sp.simplify(identity.lhs - identity.rhs) == 0
        assert identity.free_symbols == {D.alpha_t, D.alpha_bar_prev}
    # the claim at t: variance 1 - alpha_t alpha_bar_{t-1}
    assert sp.expand(var_id.rhs - (1 - D.alpha_t * D.alpha_bar_prev)) == 0
    latex = D.show(var_id)
    assert r"\bar{\alpha}_{t-1}" in latex and "=" in latex
    # the unevaluated identity keeps the composed left-hand side for display
    assert var_id.lhs != var_id.rhs


# ------------------------------------------------------------------------------------
# Completing the square, the posterior, the KL
# ------------------------------------------------------------------------------------


def test_complete_the_square_known_forms():
    assert D.complete_the_square(2 * D.x**2 - 4 * D.x + 5, D.x) == (2, 1, 3)
    a, b, m = sp.symbols("a b m", positive=True)
    expr = -(D.x - m) ** 2 / (2 * a) + b
    A, B, C = D.complete_the_square(expr, D.x)
    assert sp.simplify(A + 1 / (2 * a)) == 0 and sp.simplify(B - m) == 0 and sp.simplify(C - b) == 0
    # the identity expr = A (x - B)^2 + C holds for a random quadratic
    p, q, r = sp.symbols("p q r", positive=True)
    expr = p * D.x**2 + q * D.x + r
    A, B, C = D.complete_the_square(expr, D.x)
    assert sp.simplify(A * (D.x - B) ** 2 + C - expr) == 0


@pytest.mark.parametrize("expr, message", [
    (D.x**3 + 1, "quadratic in x"),
    (3 * D.x + 1, "quadratic in x"),
    (sp.sqrt(D.x) + D.x**2, "polynomial in x"),
])
def test_complete_the_square_rejects_non_quadratics(expr, message):
    with pytest.raises(ValueError, match=message):
        D.complete_the_square(expr, D.x)


def test_complete_the_square_needs_a_symbol():
    with pytest.raises(ValueError, match="x must be a sympy.Symbol"):
        D.complete_the_square(D.x**2, "x")


def test_ddpm_posterior_is_ho_et_al_eq7():
    c_x, c_x0, var = D.ddpm_posterior()
    beta = 1 - D.alpha_t
    paper = (sp.sqrt(D.alpha_t) * (1 - D.alpha_bar_prev) / (1 - D.alpha_bar_t),
             sp.sqrt(D.alpha_bar_prev) * beta / (1 - D.alpha_bar_t),
             (1 - D.alpha_bar_prev) / (1 - D.alpha_bar_t) * beta)
    for mine, ref in zip((c_x, c_x0, var), paper):
        assert sp.simplify(mine - ref) == 0
        assert mine.free_symbols <= {D.alpha_t, D.alpha_bar_t, D.alpha_bar_prev}


def test_ddpm_posterior_matches_torch_formula_at_random_inputs():
    """check_against_torch on eq. 7 typed in torch (alpha_bar_t = alpha_t alpha_bar_prev)."""
    post = D.ddpm_posterior()
    consistent = {D.alpha_bar_t: D.alpha_t * D.alpha_bar_prev}
    symbols = [D.alpha_t, D.alpha_bar_prev]
    ranges = {D.alpha_t: (0.5, 0.9999), D.alpha_bar_prev: (0.01, 0.99)}
    fns = {
        "c_x": lambda alpha_t, alpha_bar_prev: alpha_t.sqrt() * (1 - alpha_bar_prev) / (1 - alpha_t * alpha_bar_prev),
        "c_x0": lambda alpha_t, alpha_bar_prev: alpha_bar_prev.sqrt() * (1 - alpha_t) / (1 - alpha_t * alpha_bar_prev),
        "var": lambda alpha_t, alpha_bar_prev: (1 - alpha_bar_prev) * (1 - alpha_t) / (1 - alpha_t * alpha_bar_prev),
    }
    for name, fn in fns.items():
        err = D.check_against_torch(getattr(post, name).subs(consistent), symbols, fn, ranges=ranges, n=128)
        assert err < 1e-12


def test_ddpm_posterior_agrees_with_samplers_ddpm_on_a_discrete_schedule():
    post = D.ddpm_posterior()
    table = DDPMTable.from_name("linear", 1000)
    schedule = table.schedule()
    N = table.n_train_steps
    fns = [sp.lambdify([D.alpha_t, D.alpha_bar_t, D.alpha_bar_prev], expr) for expr in post]
    for n in (2, 10, 137, 500, 999, 1000):
        values = (float(table.alphas[n - 1]), float(table.alpha_bar[n - 1]), float(table.alpha_bar[n - 2]))
        expected = [f(*values) for f in fns]
        got = posterior_coefficients(schedule, torch.tensor(n / N, dtype=torch.float64),
                                     torch.tensor((n - 1) / N, dtype=torch.float64))
        assert got == pytest.approx(expected, rel=1e-8, abs=1e-12), f"n = {n}"


def test_gaussian_kl_closed_form_and_torch():
    kl = D.gaussian_kl()
    closed = (sp.log(D.var2 / D.var1) + (D.var1 + (D.mu1 - D.mu2) ** 2) / D.var2 - 1) / 2
    assert sp.simplify(kl - closed) == 0
    assert D.gaussian_kl(0, 1, 0, 1) == 0
    assert D.gaussian_kl(D.mu1, D.var1, D.mu1, D.var1) == 0

    def torch_kl(mu1, var1, mu2, var2):
        q = torch.distributions.Normal(mu1, var1.sqrt())
        p = torch.distributions.Normal(mu2, var2.sqrt())
        return torch.distributions.kl_divergence(q, p)

    ranges = {D.mu1: (-2.0, 2.0), D.mu2: (-2.0, 2.0), D.var1: (0.05, 3.0), D.var2: (0.05, 3.0)}
    err = D.check_against_torch(kl, [D.mu1, D.var1, D.mu2, D.var2], torch_kl, ranges=ranges, n=256)
    assert err < 1e-10


def test_gaussian_kl_of_the_prior_term():
    """L_T of the ELBO: KL(q(x_T | x0) || N(0, 1)) with q = N(sqrt(abar) x0, 1 - abar)."""
    kl = D.gaussian_kl(sp.sqrt(D.alpha_bar_t) * D.x0, 1 - D.alpha_bar_t, 0, 1)
    expected = (-sp.log(1 - D.alpha_bar_t) + D.alpha_bar_t * D.x0**2 - D.alpha_bar_t) / 2
    assert sp.simplify(kl - expected) == 0


def test_gaussian_kl_rejects_non_positive_variance():
    with pytest.raises(ValueError, match="var1 must be a positive variance"):
        D.gaussian_kl(0, -1, 0, 1)
    with pytest.raises(ValueError, match="var2 must be a positive variance"):
        D.gaussian_kl(0, 1, 0, 0)


# ------------------------------------------------------------------------------------
# check_against_torch
# ------------------------------------------------------------------------------------


def test_check_against_torch_passes_for_a_correct_pair():
    a, b = sp.symbols("a b", positive=True)
    err = D.check_against_torch(sp.exp(-a) * sp.sqrt(b), [a, b], lambda a, b: torch.exp(-a) * b.sqrt())
    assert 0.0 <= err < 1e-14


def test_check_against_torch_raises_on_a_sign_flip():
    a = sp.Symbol("a", positive=True)
    with pytest.raises(AssertionError, match=r"(?s)SymPy and torch disagree for exp\(-a\).*worst input: a="):
        D.check_against_torch(sp.exp(-a), a, lambda a: torch.exp(a))


def test_check_against_torch_is_reproducible_and_uses_ranges():
    a = sp.Symbol("a", positive=True)
    seen = []

    def record(a):
        seen.append(a.clone())
        return a

    D.check_against_torch(a, [a], record, seed=3, ranges={a: (5.0, 6.0)}, n=50)
    D.check_against_torch(a, [a], record, seed=3, ranges={"a": (5.0, 6.0)}, n=50)
    assert torch.equal(seen[0], seen[1])
    assert seen[0].shape == (50,) and seen[0].dtype == torch.float64
    assert float(seen[0].min()) >= 5.0 and float(seen[0].max()) <= 6.0


def test_check_against_torch_constant_expression_and_scalar_output():
    t = D.t
    assert D.check_against_torch(sp.Integer(1), [t], lambda t: torch.ones_like(t)) == 0.0
    assert D.check_against_torch(sp.Integer(0), [t], lambda t: torch.zeros((), dtype=t.dtype)) == 0.0


def test_check_against_torch_float32_tolerance():
    a = sp.Symbol("a", positive=True)
    err = D.check_against_torch(sp.log(a), a, lambda a: torch.log(a), dtype=torch.float32)
    assert err < 1e-6


@pytest.mark.parametrize("kwargs, message", [
    (dict(symbols=[]), "non-empty sequence of Symbols"),
    (dict(symbols=[sp.Symbol("b")]), r"free symbols \['a'\] not in symbols"),
    (dict(ranges={sp.Symbol("a"): (1.0, 1.0)}), "low < high"),
    (dict(ranges={"zz": (0.0, 1.0)}), "not in symbols"),
    (dict(n=0), "n must be a positive integer"),
    (dict(torch_fn=lambda a: a.numpy()), "must return a torch.Tensor"),
    (dict(torch_fn=lambda a: a[:3]), r"shape \(64,\) or \(\)"),
    (dict(dtype=torch.int64), "floating torch.dtype"),
    (dict(torch_fn=3), "torch_fn must be callable"),
])
def test_check_against_torch_validates(kwargs, message):
    a = sp.Symbol("a")
    args = dict(expr=a, symbols=[a], torch_fn=lambda a: a)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        D.check_against_torch(args.pop("expr"), args.pop("symbols"), args.pop("torch_fn"), **args)


def test_check_against_torch_rejects_non_identifier_names():
    weird = sp.Symbol(r"\alpha")
    with pytest.raises(ValueError, match="Python identifiers"):
        D.check_against_torch(weird, [weird], lambda **kw: torch.zeros(64))


# ------------------------------------------------------------------------------------
# Symbolic schedules against course_lib.schedules
# ------------------------------------------------------------------------------------

FAMILY_SCHEDULES = [
    VPLinear(0.1, 20.0),
    VPLinear(0.5, 8.0),
    VPScaledLinear(),
    VPCosine(0.008),
    VPCosine(0.1),
    VPSigmoid(-3.0, 3.0, 1.0),
    VPSigmoid(-1.0, 4.0, 0.7),
    VE(0.01, 50.0),
    EDM(),
    RectifiedFlow(),
]


@pytest.mark.parametrize("schedule", FAMILY_SCHEDULES, ids=repr)
def test_symbolic_schedule_and_derivatives_agree_with_schedules(schedule):
    t, alpha, sigma = D.symbolic_schedule(schedule)
    assert (alpha.free_symbols | sigma.free_symbols) <= {t}
    ranges = {t: (0.05, 0.95)}
    checks = {
        "alpha": (alpha, schedule.alpha),
        "sigma": (sigma, schedule.sigma),
        "d_alpha": (sp.diff(alpha, t), schedule.d_alpha),
        "d_sigma": (sp.diff(sigma, t), schedule.d_sigma),
        "log_snr": (sp.log(alpha**2 / sigma**2), schedule.log_snr),
        "d_log_snr": (sp.diff(sp.log(alpha**2 / sigma**2), t), schedule.d_log_snr),
    }
    for name, (expr, method) in checks.items():
        try:
            D.check_against_torch(expr, [t], lambda t: method(t), ranges=ranges, rtol=1e-7, atol=1e-9)
        except AssertionError as err:  # pragma: no cover - the message is the diagnosis
            raise AssertionError(f"{schedule!r}.{name}: {err}") from None


def test_symbolic_schedule_by_name_with_and_without_parameters():
    t, alpha, sigma = D.symbolic_schedule("linear")
    P = D.SCHEDULE_PARAMETERS["linear"]
    assert alpha.free_symbols == {t, P["beta_min"], P["beta_max"]}
    # VP: alpha^2 + sigma^2 = 1 symbolically
    assert sp.simplify(alpha**2 + sigma**2 - 1) == 0
    t2, alpha2, _ = D.symbolic_schedule("linear", beta_min=0.1, beta_max=20)
    assert alpha2.free_symbols == {t2}
    assert alpha.subs({P["beta_min"]: sp.Rational(1, 10), P["beta_max"]: 20}) == alpha2
    assert D.symbolic_schedule("rectified_flow")[1:] == (1 - t, t)
    # get_schedule and symbolic_schedule share parameter names
    sched = get_schedule("sigmoid", start=-2.0, end=2.0, tau=0.5)
    assert D.symbolic_schedule("sigmoid", start=-2.0, end=2.0, tau=0.5) == D.symbolic_schedule(sched)


def test_symbolic_schedule_validates():
    with pytest.raises(ValueError, match="unknown schedule family 'quadratic'"):
        D.symbolic_schedule("quadratic")
    with pytest.raises(ValueError, match=r"unknown \['sigma_max'\]"):
        D.symbolic_schedule("linear", sigma_max=3.0)
    with pytest.raises(ValueError, match="parameter s must be a finite number"):
        D.symbolic_schedule("cosine", s=float("nan"))
    with pytest.raises(ValueError, match="no closed form for a DiscreteSchedule"):
        D.symbolic_schedule(DDPMTable.from_name("cosine", 10).schedule())


# ------------------------------------------------------------------------------------
# show
# ------------------------------------------------------------------------------------


def test_show_returns_latex_headless():
    assert D.show(D.alpha_bar_t) == r"\bar{\alpha}_t"
    assert D.show(sp.sqrt(D.alpha_bar_t) * D.x0, r"\mu") == r"\mu = \sqrt{\bar{\alpha}_t} x_0"
    assert D.show(sp.Eq(D.x, 1), "claim") == r"claim:\quad x = 1"
    assert D.show([D.x, D.eps]) == r"x,\quad \varepsilon"


def test_show_validates():
    with pytest.raises(ValueError, match="label must be a LaTeX string"):
        D.show(D.x, label=3)
    with pytest.raises(ValueError, match="at least one expression"):
        D.show([])


def test_show_displays_math_once_in_jupyter(monkeypatch):
    """Under IPython, show displays Math and its returned string is not echoed a second time."""
    import IPython
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython, "get_ipython", lambda: object())
    monkeypatch.setattr(IPython.display, "display", shown.append)
    latex = D.show(D.beta_t, r"\beta")
    assert len(shown) == 1 and isinstance(shown[0], IPython.display.Math)
    assert shown[0].data == r"\beta = \beta_{t}" == latex
    assert isinstance(latex, str) and latex._ipython_display_() is None
