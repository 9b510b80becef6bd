r"""SymPy derivations of the course's formulas, and the check against the torch code.

Every chapter has a "Derivation in SymPy" section: the chapter's key formulas are derived
here symbolically (not typed in), rendered with :func:`show`, and compared with the
``course_lib`` implementation at random inputs with :func:`check_against_torch`. A
derivation that the code disagrees with raises an ``AssertionError`` and fails the notebook.

What is derived here, with the chapter that introduces it:

* composing two Gaussian steps, q(x_n | x_0) of DDPM by composition and by induction
  (Ho et al. 2020, arXiv:2006.11239, eq. 4) — chapter 01;
* symbolic noise schedules (alpha_t, sigma_t) for every family of
  :mod:`course_lib.schedules` — chapter 01;
* completing the square, and the DDPM posterior q(x_{t-1} | x_t, x_0) by Bayes' rule
  (Ho et al. 2020, eq. 6-7) — chapter 04;
* the KL divergence of two scalar Gaussians from their moments — chapter 04.

Symbols are named like the code (ASCII: ``alpha_bar_t``, ``x0``) and rendered like the
paper (:data:`LATEX_NAMES`): the NOTATION table maps one to the other. Only direct algebra is
used (no ``sympy.stats``, no symbolic integrals): each derivation takes well under a second.

>>> mean_coef, var = compose_gaussians(sp.sqrt(alpha_t), 1 - alpha_t, sp.sqrt(alpha_t), 1 - alpha_t)
>>> mean_coef, sp.expand(var)
(alpha_t, 1 - alpha_t**2)
>>> t_, alpha_expr, sigma_expr = symbolic_schedule("rectified_flow")
>>> err = check_against_torch(sp.diff(sigma_expr, t_), [t_], lambda t: RectifiedFlow().d_sigma(t))
>>> err < 1e-12
True
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np
import sympy as sp
import torch

from .schedules import RectifiedFlow, Schedule  # noqa: F401  (RectifiedFlow: used by the doctest)

__all__ = [
    # symbols
    "t", "x", "x0", "x_t", "eps",
    "alpha_t", "sigma_t", "beta_t", "alpha_bar_t", "alpha_bar_prev",
    "mu1", "var1", "mu2", "var2",
    "SCHEDULE_PARAMETERS", "LATEX_NAMES",
    # derivations
    "compose_gaussians", "alpha_symbols", "forward_marginal", "induction_step",
    "complete_the_square", "PosteriorCoefficients", "ddpm_posterior", "gaussian_kl",
    "symbolic_schedule",
    # checking and display
    "check_against_torch", "show", "LatexString",
]

# ------------------------------------------------------------------------------------
# Symbols: named like the code, rendered like the papers (see LATEX_NAMES)
# ------------------------------------------------------------------------------------
t = sp.Symbol("t", positive=True)  # continuous time, t = 0 data, t = 1 noise
x = sp.Symbol("x", real=True)  # a generic variable (the unknown of a density)
x0 = sp.Symbol("x0", real=True)  # clean data
x_t = sp.Symbol("x_t", real=True)  # noised data at time t
eps = sp.Symbol("eps", real=True)  # standard normal noise
alpha_t = sp.Symbol("alpha_t", positive=True)  # DDPM: alpha_t = 1 - beta_t (per-step)
sigma_t = sp.Symbol("sigma_t", positive=True)
beta_t = sp.Symbol("beta_t", positive=True)
alpha_bar_t = sp.Symbol("alpha_bar_t", positive=True)  # prod_{i<=t} alpha_i
alpha_bar_prev = sp.Symbol("alpha_bar_prev", positive=True)  # alpha_bar_{t-1}
mu1, mu2 = sp.symbols("mu1 mu2", real=True)
var1, var2 = sp.symbols("var1 var2", positive=True)

# Parameters of the symbolic schedules, named like the constructors in course_lib.schedules.
_beta_min, _beta_max = sp.symbols("beta_min beta_max", positive=True)
_beta_start, _beta_end = sp.symbols("beta_start beta_end", positive=True)
_n_train_steps = sp.Symbol("N", positive=True, integer=True)
_s = sp.Symbol("s", nonnegative=True)
_start, _end = sp.symbols("start end", real=True)
_tau = sp.Symbol("tau", positive=True)
_sigma_min, _sigma_max = sp.symbols("sigma_min sigma_max", positive=True)
_rho = sp.Symbol("rho", positive=True)

SCHEDULE_PARAMETERS: dict[str, dict[str, sp.Symbol]] = {
    "linear": {"beta_min": _beta_min, "beta_max": _beta_max},
    "scaled_linear": {"beta_start": _beta_start, "beta_end": _beta_end, "n_train_steps": _n_train_steps},
    "cosine": {"s": _s},
    "sigmoid": {"start": _start, "end": _end, "tau": _tau},
    "ve": {"sigma_min": _sigma_min, "sigma_max": _sigma_max},
    "edm": {"sigma_min": _sigma_min, "sigma_max": _sigma_max, "rho": _rho},
    "rectified_flow": {},
}
"""For each schedule family: constructor keyword -> the SymPy symbol used in its formulas."""

LATEX_NAMES: dict[str, str] = {
    "x0": "x_0",
    "x_t": "x_t",
    "eps": r"\varepsilon",
    "alpha_bar_t": r"\bar{\alpha}_t",
    "alpha_bar_prev": r"\bar{\alpha}_{t-1}",
    "var1": r"\sigma_1^2",
    "var2": r"\sigma_2^2",
    "beta_min": r"\beta_{\min}",
    "beta_max": r"\beta_{\max}",
    "beta_start": r"\beta_{\mathrm{start}}",
    "beta_end": r"\beta_{\mathrm{end}}",
    "sigma_min": r"\sigma_{\min}",
    "sigma_max": r"\sigma_{\max}",
    "start": r"\mathrm{start}",
    "end": r"\mathrm{end}",
}
"""How a symbol's ASCII name (the code's name) is rendered in LaTeX by :func:`show`."""


def _sympify(value, name: str) -> sp.Expr:
    try:
        return sp.sympify(value)
    except (sp.SympifyError, TypeError, SyntaxError) as err:
        raise ValueError(f"{name} must be a SymPy expression or a number, got {value!r} ({err})") from None


# ------------------------------------------------------------------------------------
# Chapter 01: composing Gaussian steps, q(x_n | x_0)
# ------------------------------------------------------------------------------------
def compose_gaussians(a1, var1, a2, var2) -> tuple[sp.Expr, sp.Expr]:
    r"""Compose two affine Gaussian steps and return (a, var) of x_2 | x_0.

    .. math::  x_1 = a_1 x_0 + \sqrt{v_1}\,\varepsilon_1,\quad
               x_2 = a_2 x_1 + \sqrt{v_2}\,\varepsilon_2
               \;\Rightarrow\; x_2 = a_1 a_2 x_0 + (a_2\sqrt{v_1}\,\varepsilon_1 + \sqrt{v_2}\,\varepsilon_2)

    The noise is a sum of independent zero-mean Gaussians, so its variance is the sum of the
    variances: x_2 | x_0 ~ N(a_1 a_2 x_0, a_2^2 v_1 + v_2). This is the step behind DDPM's
    closed form q(x_t | x_0) (Ho et al. 2020, arXiv:2006.11239, eq. 4).

    Args:
        a1, var1: scale a_1 and variance v_1 of the first step (SymPy expressions or numbers).
        a2, var2: scale a_2 and variance v_2 of the second step.

    Returns:
        (a, var): the simplified scale a_1 a_2 and variance a_2^2 v_1 + v_2.

    Introduced in chapter 01.
    """
    a1, var1 = _sympify(a1, "a1"), _sympify(var1, "var1")
    a2, var2 = _sympify(a2, "a2"), _sympify(var2, "var2")
    e1, e2 = sp.symbols("varepsilon_1 varepsilon_2", real=True)  # independent N(0, 1)
    x1 = a1 * x0 + sp.sqrt(var1) * e1
    x2 = sp.expand(a2 * x1 + sp.sqrt(var2) * e2)
    a = x2.coeff(x0)  # the mean is a x0 since E[e1] = E[e2] = 0
    var = x2.coeff(e1) ** 2 + x2.coeff(e2) ** 2  # Var of a sum of independent terms
    return sp.simplify(a), sp.simplify(var)


def alpha_symbols(n: int) -> tuple[sp.Symbol, ...]:
    """The positive symbols alpha_1, ..., alpha_n of DDPM's per-step scales (alpha_i = 1 - beta_i).

    Introduced in chapter 01.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer number of steps, got {n!r}")
    return sp.symbols(f"alpha_1:{n + 1}", positive=True)


def forward_marginal(n: int) -> tuple[sp.Expr, sp.Expr]:
    r"""Derive DDPM's q(x_n | x_0) by composing n steps q(x_i | x_{i-1}).

    Each step is x_i = sqrt(alpha_i) x_{i-1} + sqrt(1 - alpha_i) eps_i (Ho et al. 2020, eq. 2
    with beta_i = 1 - alpha_i). Composing them with :func:`compose_gaussians` gives

    .. math::  q(x_n \mid x_0) = \mathcal N\big(\sqrt{\textstyle\prod_i \alpha_i}\; x_0,\;
               1 - \textstyle\prod_i \alpha_i\big)  \qquad \text{(Ho et al. 2020, eq. 4)}.

    The function checks that the composed result equals the closed form (``AssertionError``
    otherwise) and returns it in the composed form, in the symbols of :func:`alpha_symbols`.

    Args:
        n: the number of steps (a positive integer; the algebra grows with n, keep n <= 20).

    Returns:
        (mean_coef, var): the scale of x_0 and the variance of q(x_n | x_0).

    Introduced in chapter 01.
    """
    alphas = alpha_symbols(n)
    if n > 50:
        raise ValueError(f"forward_marginal expands a polynomial of degree n; use n <= 50, got {n}")
    mean_coef, var = sp.sqrt(alphas[0]), 1 - alphas[0]  # q(x_1 | x_0)
    for a in alphas[1:]:
        mean_coef, var = compose_gaussians(mean_coef, var, sp.sqrt(a), 1 - a)
    alpha_bar = sp.Mul(*alphas)
    if sp.simplify(mean_coef - sp.sqrt(alpha_bar)) != 0 or sp.expand(var - (1 - alpha_bar)) != 0:
        raise AssertionError(f"composition gave N({mean_coef} x0, {var}), not N(sqrt({alpha_bar}) x0, 1 - {alpha_bar})")
    return mean_coef, var


def induction_step() -> tuple[sp.Eq, sp.Eq]:
    r"""The induction step of q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, 1 - alpha_bar_t).

    Assume q(x_{t-1} | x_0) = N(sqrt(alpha_bar_{t-1}) x_0, 1 - alpha_bar_{t-1}). One more step
    x_t = sqrt(alpha_t) x_{t-1} + sqrt(1 - alpha_t) eps gives, by :func:`compose_gaussians`,

    .. math::  \sqrt{\alpha_t}\sqrt{\bar\alpha_{t-1}} = \sqrt{\alpha_t \bar\alpha_{t-1}},\qquad
               \alpha_t (1 - \bar\alpha_{t-1}) + 1 - \alpha_t = 1 - \alpha_t\bar\alpha_{t-1},

    which is the claim at t because alpha_bar_t = alpha_t alpha_bar_{t-1} (Ho et al. 2020,
    eq. 4). Both identities are checked (difference simplifies to 0, ``AssertionError``
    otherwise).

    Returns:
        (mean_identity, var_identity): unevaluated ``sympy.Eq`` (composed = claimed), in the
        symbols ``alpha_t`` and ``alpha_bar_prev``; render them with :func:`show`.

    Introduced in chapter 01.
    """
    mean_coef, var = compose_gaussians(sp.sqrt(alpha_bar_prev), 1 - alpha_bar_prev, sp.sqrt(alpha_t), 1 - alpha_t)
    alpha_bar = alpha_t * alpha_bar_prev  # alpha_bar_t
    claimed_mean, claimed_var = sp.sqrt(alpha_bar), 1 - alpha_bar
    for lhs, rhs in ((mean_coef, claimed_mean), (var, claimed_var)):
        if sp.simplify(lhs - rhs) != 0:
            raise AssertionError(f"induction step fails: {lhs} - ({rhs}) does not simplify to 0")
    mean_id = sp.Eq(sp.Mul(sp.sqrt(alpha_t), sp.sqrt(alpha_bar_prev), evaluate=False),
                    sp.Pow(alpha_bar, sp.Rational(1, 2), evaluate=False), evaluate=False)
    var_id = sp.Eq(sp.Add(alpha_t * (1 - alpha_bar_prev), 1 - alpha_t, evaluate=False), claimed_var, evaluate=False)
    return mean_id, var_id


# ------------------------------------------------------------------------------------
# Chapter 04: completing the square, the DDPM posterior, the Gaussian KL
# ------------------------------------------------------------------------------------
def complete_the_square(expr, x: sp.Symbol) -> tuple[sp.Expr, sp.Expr, sp.Expr]:
    r"""Write a quadratic in x as a (x - b)^2 + c.

    .. math::  A x^2 + B x + C = A\Big(x + \frac{B}{2A}\Big)^2 + C - \frac{B^2}{4A},
               \quad\text{so } a = A,\; b = -\frac{B}{2A},\; c = C - \frac{B^2}{4A}.

    Args:
        expr: a SymPy expression, a polynomial of degree exactly 2 in ``x`` (other symbols
            may appear in the coefficients).
        x: the SymPy symbol to complete the square in.

    Returns:
        (a, b, c), each simplified and free of x.

    >>> complete_the_square(2 * x**2 - 4 * x + 5, x)
    (2, 1, 3)

    Introduced in chapter 04.
    """
    if not isinstance(x, sp.Symbol):
        raise ValueError(f"x must be a sympy.Symbol, got {type(x).__name__}")
    expr = _sympify(expr, "expr")
    try:
        poly = sp.Poly(sp.expand(expr), x)
    except sp.PolynomialError as err:
        raise ValueError(f"expr must be a polynomial in {x}, got {expr} ({err})") from None
    if poly.degree() != 2:
        raise ValueError(f"expr must be quadratic in {x} (degree 2), got degree {poly.degree()}: {expr}")
    A, B, C = (poly.coeff_monomial(x**k) for k in (2, 1, 0))
    if any(coef.has(x) for coef in (A, B, C)):  # pragma: no cover - Poly guarantees this
        raise ValueError(f"the coefficients of expr must not depend on {x}")
    return sp.simplify(A), sp.simplify(-B / (2 * A)), sp.simplify(C - B**2 / (4 * A))


def _one_minus_form(expr: sp.Expr) -> sp.Expr:
    """Rewrite factors (a - 1) of a ratio as -(1 - a), as the papers write them (same value)."""
    num, den = sp.fraction(expr)
    sign = 1

    def flip(product):
        nonlocal sign
        kept = []
        for factor in sp.Mul.make_args(product):
            if factor == -1:
                sign = -sign
            elif isinstance(factor, sp.Add) and factor.as_coeff_Add()[0] < 0:
                kept.append(-factor)
                sign = -sign
            else:
                kept.append(factor)
        return sp.Mul(*kept)

    num, den = flip(num), flip(den)
    return num / den if sign == 1 else -num / den


class PosteriorCoefficients(NamedTuple):
    """q(x_{t-1} | x_t, x_0) = N(c_x x_t + c_x0 x_0, var): the order of
    :func:`course_lib.samplers.ddpm.posterior_coefficients`."""

    c_x: sp.Expr
    c_x0: sp.Expr
    var: sp.Expr


def ddpm_posterior() -> PosteriorCoefficients:
    r"""Derive DDPM's forward-process posterior q(x_{t-1} | x_t, x_0) by Bayes' rule.

    As a function of x = x_{t-1}, Bayes' rule gives
    q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0), whose log is, up to a constant,

    .. math::  -\frac{(x_t - \sqrt{\alpha_t}\,x)^2}{2\beta_t}
               -\frac{(x - \sqrt{\bar\alpha_{t-1}}\,x_0)^2}{2(1 - \bar\alpha_{t-1})},
               \qquad \beta_t = 1 - \alpha_t.

    Completing the square (:func:`complete_the_square`) gives a (x - b)^2 + c, so the
    posterior is N(b, -1/(2a)). With alpha_bar_t = alpha_t alpha_bar_{t-1} this is Ho et al.
    2020, arXiv:2006.11239, eq. 6-7:

    .. math::  \tilde\mu_t = \frac{\sqrt{\bar\alpha_{t-1}}\beta_t}{1 - \bar\alpha_t} x_0
               + \frac{\sqrt{\alpha_t}(1 - \bar\alpha_{t-1})}{1 - \bar\alpha_t} x_t,\qquad
               \tilde\beta_t = \frac{1 - \bar\alpha_{t-1}}{1 - \bar\alpha_t}\beta_t .

    The derived coefficients are checked against eq. 7 (``AssertionError`` otherwise).

    Returns:
        :class:`PosteriorCoefficients` (c_x, c_x0, var) in the symbols ``alpha_t``,
        ``alpha_bar_t`` and ``alpha_bar_prev`` (with alpha_bar_t = alpha_t alpha_bar_prev
        assumed: give consistent numbers when you evaluate them).

    Introduced in chapter 04.
    """
    beta = 1 - alpha_t
    log_density = (-(x_t - sp.sqrt(alpha_t) * x) ** 2 / (2 * beta)
                   - (x - sp.sqrt(alpha_bar_prev) * x0) ** 2 / (2 * (1 - alpha_bar_prev)))
    a, b, _ = complete_the_square(log_density, x)
    var = -1 / (2 * a)  # a = -1/(2 var) for a Gaussian
    mean = sp.expand(b)
    derived = (sp.diff(mean, x_t), sp.diff(mean, x0), var)
    # Express through alpha_bar_t = alpha_t alpha_bar_prev.
    coefs = [_one_minus_form(sp.factor(sp.simplify(c)).subs(alpha_t * alpha_bar_prev, alpha_bar_t)) for c in derived]
    # Check against Ho et al. 2020, eq. 7.
    paper = (sp.sqrt(alpha_t) * (1 - alpha_bar_prev) / (1 - alpha_bar_t),
             sp.sqrt(alpha_bar_prev) * beta / (1 - alpha_bar_t),
             (1 - alpha_bar_prev) / (1 - alpha_bar_t) * beta)
    for name, mine, ref in zip(PosteriorCoefficients._fields, coefs, paper):
        diff = (mine - ref).subs(alpha_bar_t, alpha_t * alpha_bar_prev)
        if sp.simplify(diff) != 0:
            raise AssertionError(f"posterior {name}: derived {mine} differs from Ho et al. eq. 7, {ref}")
    return PosteriorCoefficients(*coefs)


def gaussian_kl(mu1=mu1, var1=var1, mu2=mu2, var2=var2) -> sp.Expr:
    r"""KL(N(mu1, var1) || N(mu2, var2)) for scalars, from the log densities and two moments.

    .. math::  \mathrm{KL}(q\,\|\,p) = \mathbb E_q[\log q(x) - \log p(x)],\qquad
               \log \mathcal N(x; \mu, v) = -\tfrac12\log(2\pi v) - \frac{(x-\mu)^2}{2v}.

    The integrand is a quadratic in x, so its expectation needs only E_q[x] = mu1 and
    E_q[x^2] = mu1^2 + var1 (no integral). The result is

    .. math::  \tfrac12\Big(\log\frac{v_2}{v_1} + \frac{v_1 + (\mu_1 - \mu_2)^2}{v_2} - 1\Big),

    the KL term of the ELBO (Ho et al. 2020, arXiv:2006.11239, eq. 5; Kingma & Welling 2014,
    arXiv:1312.6114, appendix B).

    Args:
        mu1, var1: mean and variance of q (SymPy expressions or numbers; variances positive).
        mu2, var2: mean and variance of p. Default: the symbols ``mu1, var1, mu2, var2``.

    Returns:
        The KL divergence in nats, a SymPy expression.

    Introduced in chapter 04.
    """
    m1, v1 = _sympify(mu1, "mu1"), _sympify(var1, "var1")
    m2, v2 = _sympify(mu2, "mu2"), _sympify(var2, "var2")
    for name, v in (("var1", v1), ("var2", v2)):
        if v.is_number and not bool(v > 0):
            raise ValueError(f"{name} must be a positive variance, got {v}")
    y = sp.Dummy("x", real=True)

    def log_normal(m, v):
        return -sp.log(2 * sp.pi * v) / 2 - (y - m) ** 2 / (2 * v)

    integrand = log_normal(m1, v1) - log_normal(m2, v2)  # log q(x) - log p(x)
    poly = sp.Poly(sp.expand(integrand), y)
    c2, c1, c0 = (poly.coeff_monomial(y**k) for k in (2, 1, 0))
    expectation = c2 * (m1**2 + v1) + c1 * m1 + c0  # E_q[x^2], E_q[x] substituted
    # Present the result as (logarithms of the variances) + (a simplified rational part).
    terms = sp.Add.make_args(sp.expand(sp.expand_log(expectation, force=True)))
    logs = sp.Add(*[term for term in terms if term.has(sp.log)])
    rest = sp.Add(*[term for term in terms if not term.has(sp.log)])
    return sp.logcombine(2 * logs, force=True) / 2 + sp.simplify(rest)


# ------------------------------------------------------------------------------------
# Chapter 01: symbolic schedules, to differentiate and compare with course_lib.schedules
# ------------------------------------------------------------------------------------
def _schedule_formulas(name: str) -> tuple[sp.Expr, sp.Expr]:
    P = SCHEDULE_PARAMETERS[name]
    if name in ("linear", "scaled_linear"):
        if name == "linear":
            # B(t) = int_0^t beta(u) du with beta(u) = beta_min + u (beta_max - beta_min)
            B = P["beta_min"] * t + (P["beta_max"] - P["beta_min"]) * t**2 / 2
        else:
            r0, r1 = sp.sqrt(P["beta_start"]), sp.sqrt(P["beta_end"])
            B = P["n_train_steps"] * ((r0 + t * (r1 - r0)) ** 3 - r0**3) / (3 * (r1 - r0))
        return sp.exp(-B / 2), sp.sqrt(1 - sp.exp(-B))  # alpha_bar = exp(-B(t))
    if name == "cosine":
        s = P["s"]
        alpha = sp.cos(sp.pi / 2 * (t + s) / (1 + s)) / sp.cos(sp.pi / 2 * s / (1 + s))
        return alpha, sp.sqrt(1 - alpha**2)
    if name == "sigmoid":
        start, end, tau = P["start"], P["end"], P["tau"]
        sig = lambda z: 1 / (1 + sp.exp(-z))  # noqa: E731
        u, v_start, v_end = sig((t * (end - start) + start) / tau), sig(start / tau), sig(end / tau)
        return sp.sqrt((v_end - u) / (v_end - v_start)), sp.sqrt((u - v_start) / (v_end - v_start))
    if name == "ve":
        return sp.Integer(1), P["sigma_min"] * (P["sigma_max"] / P["sigma_min"]) ** t
    if name == "edm":
        lo, hi = P["sigma_min"] ** (1 / P["rho"]), P["sigma_max"] ** (1 / P["rho"])
        return sp.Integer(1), (lo + t * (hi - lo)) ** P["rho"]
    return 1 - t, t  # rectified_flow


def _as_number(value, name: str) -> sp.Expr:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"parameter {name} must be a finite number, got {value!r}")
    return sp.Rational(repr(float(value)))  # the exact decimal the user typed: 0.1 -> 1/10


def symbolic_schedule(name, **params) -> tuple[sp.Symbol, sp.Expr, sp.Expr]:
    r"""(t, alpha_t, sigma_t) of a schedule family as SymPy expressions in t.

    The same formulas as :mod:`course_lib.schedules` (see each class for its paper), written
    directly so that SymPy can differentiate them:

    * ``linear``: alpha_t = exp(-B/2), sigma_t = sqrt(1 - exp(-B)),
      B(t) = beta_min t + (beta_max - beta_min) t^2 / 2 (Song et al. 2021, arXiv:2011.13456, eq. 32);
    * ``scaled_linear``: the same with B(t) = N ((sqrt(b0) + t d)^3 - b0^{3/2}) / (3 d);
    * ``cosine``: alpha_t = cos(pi/2 (t+s)/(1+s)) / cos(pi/2 s/(1+s)) (Nichol & Dhariwal 2021, eq. 17);
    * ``sigmoid``: alpha_t^2 = (v_end - sigmoid((t(end-start)+start)/tau)) / (v_end - v_start) (Chen 2023);
    * ``ve``: alpha_t = 1, sigma_t = sigma_min (sigma_max/sigma_min)^t (Song et al. 2021, eq. 31);
    * ``edm``: alpha_t = 1, sigma_t = (sigma_min^{1/rho} + t (sigma_max^{1/rho} - sigma_min^{1/rho}))^rho
      (Karras et al. 2022, arXiv:2206.00364, eq. 5);
    * ``rectified_flow``: alpha_t = 1 - t, sigma_t = t (Liu et al. 2022, arXiv:2209.03003).

    Args:
        name: a family name (a key of :data:`SCHEDULE_PARAMETERS`) or a
            :class:`~course_lib.schedules.Schedule` instance (its parameters are substituted).
        **params: numbers to substitute for the family's parameters (constructor names, e.g.
            ``beta_min=0.1``, entered as the exact rational 1/10); parameters not given stay symbolic (the symbols of
            :data:`SCHEDULE_PARAMETERS`).

    Returns:
        (t, alpha_t, sigma_t): the time symbol and the two expressions.

    >>> t_, alpha_expr, sigma_expr = symbolic_schedule("ve", sigma_min=0.5, sigma_max=2)
    >>> sigma_expr
    4**t/2

    Introduced in chapter 01.
    """
    if isinstance(name, Schedule):
        schedule = name
        if schedule.name not in SCHEDULE_PARAMETERS:
            raise ValueError(
                f"no closed form for a {type(schedule).__name__} (name {schedule.name!r}); "
                f"expected a schedule of family {sorted(SCHEDULE_PARAMETERS)}"
            )
        values = {k: v for k, v in vars(schedule).items() if k in SCHEDULE_PARAMETERS[schedule.name]}
        values.update(params)
        name, params = schedule.name, values
    if name not in SCHEDULE_PARAMETERS:
        raise ValueError(f"unknown schedule family {name!r}; expected one of {sorted(SCHEDULE_PARAMETERS)}")
    known = SCHEDULE_PARAMETERS[name]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"schedule {name!r} has parameters {sorted(known)}, got unknown {unknown}")
    alpha, sigma = _schedule_formulas(name)
    subs = {known[k]: _as_number(v, k) for k, v in params.items()}
    return t, alpha.subs(subs), sigma.subs(subs)


# ------------------------------------------------------------------------------------
# Checking a derivation against the torch code, and showing it
# ------------------------------------------------------------------------------------
def check_against_torch(expr, symbols, torch_fn: Callable[..., torch.Tensor], *, n: int = 64,
                        ranges: dict | None = None, rtol: float = 1e-5, atol: float = 1e-6,
                        seed: int = 0, dtype: torch.dtype = torch.float64) -> float:
    r"""Check a SymPy expression against a torch function at n random inputs.

    Each symbol s is drawn uniformly from ``ranges[s]`` (default (0.1, 0.9)) with a
    ``torch.Generator`` seeded by ``seed``; the expression is evaluated with
    ``sympy.lambdify(..., modules="numpy")`` in float64 and compared with
    ``torch_fn(**{name: tensor})`` by ``torch.testing.assert_close``.

    Args:
        expr: the SymPy expression; every free symbol must be in ``symbols``
            (substitute numbers for the others first, e.g. with ``expr.subs``).
        symbols: a Symbol or a sequence of Symbols.
        torch_fn: called with **keyword arguments named after the symbols** (their ASCII
            names, e.g. ``alpha_bar_t=...``), each a tensor of shape (n,) and dtype ``dtype``;
            must return a tensor of shape (n,) (or a scalar, for a constant).
        n: number of random points.
        ranges: optional dict Symbol (or its name) -> (low, high).
        rtol, atol: tolerances of ``torch.testing.assert_close``.
        seed: seed of the random points (same seed, same points).
        dtype: floating dtype of the inputs given to torch_fn (and of the comparison).

    Returns:
        The largest absolute difference, a float.

    Raises:
        AssertionError: the two disagree; the message names the expression, the worst input
            and both values.
        ValueError: bad arguments (unknown free symbols, bad ranges, non-tensor output, ...).

    Introduced in chapter 01.
    """
    expr = _sympify(expr, "expr")
    if isinstance(symbols, sp.Symbol):
        symbols = [symbols]
    symbols = list(symbols)
    if not symbols or not all(isinstance(s, sp.Symbol) for s in symbols):
        raise ValueError(f"symbols must be a Symbol or a non-empty sequence of Symbols, got {symbols!r}")
    names = [s.name for s in symbols]
    if len(set(names)) != len(names):
        raise ValueError(f"symbol names must be distinct, got {names}")
    bad = [nm for nm in names if not nm.isidentifier()]
    if bad:
        raise ValueError(f"symbol names must be Python identifiers (they become keyword arguments), got {bad}")
    extra = expr.free_symbols - set(symbols)
    if extra:
        raise ValueError(
            f"expr has free symbols {sorted(map(str, extra))} not in symbols {names}; "
            "add them to symbols or substitute numbers with expr.subs(...)"
        )
    if not callable(torch_fn):
        raise ValueError(f"torch_fn must be callable, got {type(torch_fn).__name__}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    ranges = dict(ranges or {})
    by_name = {(k.name if isinstance(k, sp.Symbol) else k): v for k, v in ranges.items()}
    unused = sorted(set(by_name) - set(names))
    if unused:
        raise ValueError(f"ranges names symbols {unused} that are not in symbols {names}")

    generator = torch.Generator().manual_seed(seed)
    inputs = {}
    for nm in names:
        low, high = by_name.get(nm, (0.1, 0.9))
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"range of {nm} must be finite (low, high) with low < high, got {(low, high)}")
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        inputs[nm] = low + (high - low) * u  # (n,)

    fn = sp.lambdify(symbols, expr, modules="numpy")
    with np.errstate(all="ignore"):
        expected_np = fn(*[inputs[nm].numpy() for nm in names])
    expected = torch.as_tensor(np.broadcast_to(np.asarray(expected_np, dtype=np.float64), (n,)).copy())

    actual = torch_fn(**{nm: inputs[nm].to(dtype) for nm in names})
    if not isinstance(actual, torch.Tensor):
        raise ValueError(f"torch_fn must return a torch.Tensor, got {type(actual).__name__}")
    if actual.shape not in ((n,), ()):
        raise ValueError(f"torch_fn must return a tensor of shape ({n},) or (), got {tuple(actual.shape)}")
    if not actual.is_floating_point():
        raise ValueError(f"torch_fn must return a floating-point tensor, got {actual.dtype}")
    actual = actual.detach().to(device="cpu", dtype=dtype).expand(n)
    expected = expected.to(dtype)

    err = (actual - expected).abs()
    max_err = float(err.max()) if bool(torch.isfinite(err).all()) else math.inf
    try:
        torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)
    except AssertionError as failure:
        worst = int(torch.nan_to_num(err, nan=math.inf).argmax())
        point = ", ".join(f"{nm}={float(inputs[nm][worst]):.6g}" for nm in names)
        raise AssertionError(
            f"SymPy and torch disagree for {expr}\n"
            f"  worst input: {point}\n"
            f"  SymPy: {float(expected[worst]):.10g}   torch: {float(actual[worst]):.10g}   "
            f"|difference| = {float(err[worst]):.3g} (rtol={rtol}, atol={atol})\n"
            f"{failure}"
        ) from None
    return max_err


def _latex_names(expr) -> dict:
    names = {}
    for sym in getattr(expr, "free_symbols", set()):
        if sym.name in LATEX_NAMES:
            names[sym] = LATEX_NAMES[sym.name]
    return names


class LatexString(str):
    """The LaTeX returned by :func:`show`: a plain ``str`` that Jupyter does not echo a second
    time when it ends a cell (``show`` has already displayed it as math)."""

    def _ipython_display_(self) -> None:
        pass


def show(expr_or_eq, label: str | None = None) -> LatexString:
    r"""Render an expression, an equation or a sequence of them as LaTeX; return the string.

    In Jupyter the result is displayed with ``IPython.display.Math`` (once: the returned string
    is not echoed again at the end of a cell); headless (no IPython shell) nothing is printed
    and only the string is returned. Symbols are rendered with
    :data:`LATEX_NAMES` (``alpha_bar_t`` -> ``\bar{\alpha}_t``).

    Args:
        expr_or_eq: a SymPy expression, a ``sympy.Eq``, a number, or a list/tuple of these.
        label: optional LaTeX for the left-hand side: ``label = expr`` (for an equation,
            ``label:\quad lhs = rhs``).

    >>> show(alpha_bar_t * x0, r"\mu")
    '\\mu = \\bar{\\alpha}_t x_0'

    Introduced in chapter 01.
    """
    if label is not None and not isinstance(label, str):
        raise ValueError(f"label must be a LaTeX string or None, got {type(label).__name__}")
    items = list(expr_or_eq) if isinstance(expr_or_eq, (list, tuple)) else [expr_or_eq]
    if not items:
        raise ValueError("show needs at least one expression, got an empty sequence")
    parts = []
    for item in items:
        item = _sympify(item, "expr_or_eq")
        parts.append(sp.latex(item, symbol_names=_latex_names(item)))
    body = r",\quad ".join(parts)
    if label is not None:
        is_relation = len(items) == 1 and isinstance(_sympify(items[0], "expr_or_eq"), sp.core.relational.Relational)
        body = f"{label}:\\quad {body}" if is_relation or len(items) > 1 else f"{label} = {body}"
    try:
        from IPython import get_ipython
        from IPython.display import Math, display
    except ImportError:  # pragma: no cover - IPython ships with jupyterlab
        return LatexString(body)
    if get_ipython() is not None:
        display(Math(body))
    return LatexString(body)
