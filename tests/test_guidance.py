"""Guidance as denoiser wrappers (chapter 12): equivalences, exact cases, parity with diffusers, errors."""

from __future__ import annotations

import ast
import inspect

import pytest
import torch

from course_lib.conditioning import (ClassifierFreeGuidance, ClassifierGuidance, apg_combine, cfg_combine,
                                     drop_labels, dynamic_threshold, guidance_scale_from_w, rescale_guidance,
                                     w_from_guidance_scale)
from course_lib.conditioning.mixture import GaussianMixture1D, GridDenoiser
from course_lib.networks.unet import UNet
from course_lib.parameterization import Denoiser
from course_lib.samplers import (STEPS, ddim_step, ddpm_step, dpm_solver_pp_2m_step, euler_step, prior_sample,
                                 sample)
from course_lib.schedules import get_schedule
from course_lib.time_grids import uniform_grid

F64 = torch.float64


def _random_conditional_unet(seed=0, prediction="eps", num_classes=10):
    torch.manual_seed(seed)
    net = UNet(in_channels=1, base_channels=16, channel_mults=(1, 2), attention_levels=(1,), num_classes=num_classes)
    with torch.no_grad():  # the zero-initialised output layer would make every branch equal
        net.conv_out.weight.normal_(0, 0.05)
        net.class_embed.weight.normal_(0, 1.0)
    return Denoiser(net.eval(), get_schedule("ddpm_linear"), prediction)


@pytest.fixture(scope="module")
def mixture():
    return GaussianMixture1D([-1.0, 0.5, 1.5], [0.4, 0.3, 0.5], [0.3, 0.3, 0.4], schedule=get_schedule("ddpm_linear"))


def test_scale_conventions_round_trip():
    assert guidance_scale_from_w(0.0) == 1.0 and w_from_guidance_scale(7.5) == 6.5
    for w in (-1.0, 0.0, 0.25, 4.0):  # exact in binary
        assert w_from_guidance_scale(guidance_scale_from_w(w)) == w
    with pytest.raises(ValueError, match="finite"):
        guidance_scale_from_w(float("nan"))


def test_drop_labels_rate_and_reproducible():
    labels = torch.randint(0, 10, (20000,), generator=torch.Generator().manual_seed(0))
    a = drop_labels(labels, 0.2, null_label=10, generator=torch.Generator().manual_seed(1))
    b = drop_labels(labels, 0.2, null_label=10, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    dropped = a == 10
    assert abs(float(dropped.float().mean()) - 0.2) < 0.01  # 4 sigma of a binomial(20000, 0.2)
    assert torch.equal(a[~dropped], labels[~dropped])
    assert torch.equal(drop_labels(labels, 0.0, null_label=10), labels)
    for bad, match in ((1.5, r"\[0.0, 1.0\]"), (float("nan"), "finite")):
        with pytest.raises(ValueError, match=match):
            drop_labels(labels, bad, null_label=10)
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        drop_labels(torch.tensor([3, 10]), 0.1, null_label=10)
    with pytest.raises(ValueError, match="integer"):
        drop_labels(torch.tensor([0.5]), 0.1, null_label=10)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_cfg_in_x0_space_equals_cfg_in_eps_and_v_space(prediction):
    denoiser = _random_conditional_unet(prediction=prediction)
    x_t = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    labels, null = torch.tensor([0, 3, 7, 9]), torch.full((4,), 10)
    schedule = denoiser.schedule
    for t in (0.1, 0.5, 0.9):
        tt = torch.full((4,), t)
        a, s = schedule.alpha(tt).reshape(-1, 1, 1, 1), schedule.sigma(tt).reshape(-1, 1, 1, 1)
        for scale in (0.0, 1.0, 3.0, 7.5):
            guided = ClassifierFreeGuidance(denoiser, labels, scale)(x_t, t)
            with torch.no_grad():
                eps_c, eps_u = denoiser.eps(x_t, tt, class_labels=labels), denoiser.eps(x_t, tt, class_labels=null)
                x0_c, x0_u = denoiser(x_t, tt, class_labels=labels), denoiser(x_t, tt, class_labels=null)
            from_eps = (x_t - s * cfg_combine(eps_u, eps_c, scale)) / a
            v_c, v_u = a * eps_c - s * x0_c, a * eps_u - s * x0_u  # v = alpha eps - sigma x0
            from_v = (a * x_t - s * cfg_combine(v_u, v_c, scale)) / (a**2 + s**2)
            torch.testing.assert_close(guided, from_eps, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(guided, from_v, rtol=1e-4, atol=1e-4)
            if scale == 0.0:
                torch.testing.assert_close(guided, x0_u, rtol=0, atol=1e-6)
            if scale == 1.0:
                torch.testing.assert_close(guided, x0_c, rtol=0, atol=1e-5)


def test_sampler_path_equals_tensor_path_and_samplers_run_unchanged():
    denoiser = _random_conditional_unet()
    labels = torch.tensor([1, 2, 3])
    guided = ClassifierFreeGuidance(denoiser, labels, 4.0, x0_range=(-1.0, 1.0))
    x_t = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    point = denoiser.schedule.point(0.4)
    torch.testing.assert_close(guided.at_point(x_t, point), guided(x_t, torch.full((3,), 0.4)), rtol=0, atol=1e-6)
    x_T = prior_sample(denoiser.schedule, (3, 1, 8, 8), generator=torch.Generator().manual_seed(4))
    for step in (ddim_step, dpm_solver_pp_2m_step, euler_step):
        out = sample(guided, x_T, uniform_grid(8), step)
        assert out.shape == x_T.shape and bool(torch.isfinite(out).all())
        if step is ddim_step:  # its last step returns the clipped x0_hat itself
            assert float(out.abs().max()) <= 1.0
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    torch.testing.assert_close(sample(guided, x_T, uniform_grid(8), ddpm_step, generator=g()),
                               sample(guided, x_T, uniform_grid(8), ddpm_step, generator=g()), rtol=0, atol=0)


def test_exact_classifier_guidance_equals_cfg_bayes_on_scores(mixture):
    """With the exact p_t(y | x), classifier guidance at scale gamma is CFG at guidance_scale gamma."""
    x_t = torch.linspace(-3, 3, 41, dtype=F64)[:, None]
    classifier = lambda x, t: mixture.class_log_posterior(x.to(F64), t.to(F64))  # noqa: E731 (log-probs are logits)
    for label in range(3):
        labels = torch.full((41,), label)
        for gamma in (0.0, 1.0, 2.5):
            cg = ClassifierGuidance(mixture, classifier, labels, gamma)
            cfg = ClassifierFreeGuidance(mixture, labels, gamma)
            for t in (0.05, 0.3, 0.7):
                torch.testing.assert_close(cg(x_t, t), cfg(x_t, t), rtol=1e-9, atol=1e-9)
    # and s = 1 is the conditional denoiser, s = 0 the marginal one
    torch.testing.assert_close(ClassifierFreeGuidance(mixture, torch.full((41,), 2), 1.0)(x_t, 0.3),
                               mixture(x_t, 0.3, class_labels=torch.full((41,), 2)))


def test_gaussian_mixture_denoiser_is_tweedie(mixture):
    """E[x0 | x_t] = (x_t + sigma^2 grad log p_t(x_t)) / alpha (Tweedie), checked with autograd."""
    for t in (0.1, 0.5, 0.9):
        x = torch.linspace(-3, 3, 25, dtype=F64)[:, None].requires_grad_(True)
        (score,) = torch.autograd.grad(mixture.log_prob(x, t).sum(), x)
        a, s = mixture.schedule.alpha(torch.tensor(t, dtype=F64)), mixture.schedule.sigma(torch.tensor(t, dtype=F64))
        torch.testing.assert_close(mixture(x.detach(), t), (x.detach() + s**2 * score) / a, rtol=1e-9, atol=1e-9)


def test_grid_denoiser_matches_the_closed_form(mixture):
    grid = torch.linspace(-5, 6, 8001, dtype=F64)
    density = mixture.log_prob(grid[:, None]).exp()
    exact = GridDenoiser(grid, density, schedule=mixture.schedule)
    x_t = torch.linspace(-2.5, 2.5, 31, dtype=F64)[:, None]
    for t in (0.05, 0.3, 0.8):
        torch.testing.assert_close(exact(x_t, t), mixture(x_t, t), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="increasing"):
        GridDenoiser(grid.flip(0), density, schedule=mixture.schedule)


def test_rescale_matches_diffusers_rescale_noise_cfg():
    diffusers = pytest.importorskip("diffusers")
    import pathlib

    # diffusers keeps the function in a pipeline module that imports transformers; read it from its source
    path = pathlib.Path(diffusers.__file__).parent / "pipelines" / "stable_diffusion" / "pipeline_stable_diffusion.py"
    tree = ast.parse(path.read_text())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "rescale_noise_cfg")
    namespace = {"torch": torch}
    exec(compile(ast.Module([node], []), str(path), "exec"), namespace)
    theirs = namespace["rescale_noise_cfg"]
    g = torch.Generator().manual_seed(6)
    guided, cond = torch.randn(3, 4, 8, 8, generator=g) * 3, torch.randn(3, 4, 8, 8, generator=g)
    for phi in (0.0, 0.5, 0.7, 1.0):
        torch.testing.assert_close(rescale_guidance(guided, cond, phi), theirs(guided, cond, phi), rtol=1e-6, atol=1e-6)


def test_dynamic_threshold_matches_diffusers_and_imagen():
    diffusers = pytest.importorskip("diffusers")
    g = torch.Generator().manual_seed(7)
    x0 = torch.randn(5, 3, 8, 8, generator=g, dtype=F64) * torch.tensor([0.3, 1.0, 2.0, 4.0, 8.0], dtype=F64).reshape(-1, 1, 1, 1)
    scheduler = diffusers.DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=0.995, sample_max_value=1e9)
    torch.testing.assert_close(dynamic_threshold(x0, 0.995), scheduler._threshold_sample(x0), rtol=1e-12, atol=1e-12)
    out = dynamic_threshold(x0, 0.9)
    assert float(out.abs().max()) <= 1.0
    torch.testing.assert_close(out[0], x0[0].clamp(-1, 1))  # a sample inside [-1, 1] is only clipped (s = 1)


def test_apg_matches_diffusers_and_reduces_to_cfg():
    pytest.importorskip("diffusers")
    from diffusers.guiders.adaptive_projected_guidance import normalized_guidance

    g = torch.Generator().manual_seed(8)
    cond, uncond = torch.randn(4, 1, 8, 8, generator=g), torch.randn(4, 1, 8, 8, generator=g)
    for s, eta, r in ((3.0, 0.0, None), (7.0, 0.0, 2.0), (5.0, 0.5, 1.0)):
        # diffusers' use_original_formulation=True is cond + scale * update, with its scale = s - 1
        theirs = normalized_guidance(cond, uncond, s - 1.0, eta=eta, norm_threshold=r or 0.0,
                                     use_original_formulation=True)
        torch.testing.assert_close(apg_combine(uncond, cond, s, eta=eta, norm_threshold=r), theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(apg_combine(uncond, cond, 4.0, eta=1.0), cfg_combine(uncond, cond, 4.0), rtol=1e-6, atol=1e-6)


def test_interval_guides_only_inside(mixture):
    labels = torch.full((9,), 1)
    x_t = torch.linspace(-2, 2, 9, dtype=F64)[:, None]
    guided = ClassifierFreeGuidance(mixture, labels, 5.0, interval=(0.2, 0.6))
    full, cond = ClassifierFreeGuidance(mixture, labels, 5.0), mixture(x_t, 0.1, class_labels=labels)
    torch.testing.assert_close(guided(x_t, 0.4), full(x_t, 0.4))
    torch.testing.assert_close(guided(x_t, 0.1), cond)
    torch.testing.assert_close(guided(x_t, 0.8), mixture(x_t, 0.8, class_labels=labels))
    times = torch.tensor([0.1, 0.4, 0.8] * 3, dtype=F64)  # per-example times
    mixed = guided(x_t, times)
    torch.testing.assert_close(mixed[1], full(x_t, 0.4)[1])
    torch.testing.assert_close(mixed[0], mixture(x_t, 0.1, class_labels=labels)[0])


def test_classifier_guidance_gradient_and_noisy_classifier():
    from course_lib.classifier import NoisyDigitClassifier

    torch.manual_seed(0)
    denoiser = _random_conditional_unet()
    classifier = NoisyDigitClassifier().eval()
    labels = torch.tensor([4, 5])
    x_t = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    cg = ClassifierGuidance(denoiser, classifier, labels, 2.0)
    grad = cg.log_prob_grad(x_t, 0.5)
    # the gradient against a finite difference of log p(y | x_t, t) in one pixel
    h, pixel = 1e-3, (0, 0, 3, 4)
    bump = torch.zeros_like(x_t)
    bump[pixel] = h
    logp = lambda x: torch.log_softmax(classifier(x, torch.full((2,), 0.5)), 1)[0, 4]  # noqa: E731
    with torch.no_grad():
        fd = (logp(x_t + bump) - logp(x_t - bump)) / (2 * h)
    assert abs(float(fd) - float(grad[pixel])) < 1e-3
    tt = torch.full((2,), 0.5)
    a, s = denoiser.schedule.alpha(tt).reshape(-1, 1, 1, 1), denoiser.schedule.sigma(tt).reshape(-1, 1, 1, 1)
    with torch.no_grad():
        base = denoiser(x_t, tt)
    torch.testing.assert_close(cg(x_t, 0.5), base + 2.0 * s**2 / a * grad, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"shape \(B, 1, 8, 8\)"):
        classifier(torch.zeros(2, 3, 8, 8), torch.zeros(2))


def test_teaching_errors():
    denoiser = _random_conditional_unet()
    with pytest.raises(ValueError, match=r"\[0, 9\].*10 classes"):
        ClassifierFreeGuidance(denoiser, torch.tensor([3, 10]), 2.0)
    with pytest.raises(ValueError, match="integer"):
        ClassifierFreeGuidance(denoiser, torch.tensor([3.0]), 2.0)
    clipped = Denoiser(denoiser.net, denoiser.schedule, "eps", x0_range=(-1.0, 1.0))
    with pytest.raises(ValueError, match="x0_range=None"):
        ClassifierFreeGuidance(clipped, torch.tensor([3]), 2.0)
    torch.manual_seed(0)
    uncond = Denoiser(UNet(in_channels=1, base_channels=16, channel_mults=(1,), attention_levels=()),
                      get_schedule("ddpm_linear"))
    with pytest.raises(ValueError, match="class-conditional"):
        ClassifierFreeGuidance(uncond, torch.tensor([3]), 2.0)
    for kwargs, match in (({"interval": (0.6, 0.2)}, "t_low < t_high"), ({"method": "pag"}, "'cfg' or 'apg'"),
                          ({"rescale": 1.5}, r"\[0.0, 1.0\]"), ({"apg_eta": 0.5}, "method='apg' only"),
                          ({"x0_range": (-1, 1), "dynamic_threshold": 0.99}, "not both"),
                          ({"method": "apg", "apg_norm_threshold": -1.0}, "> 0")):
        with pytest.raises(ValueError, match=match):
            ClassifierFreeGuidance(denoiser, torch.tensor([3]), 2.0, **kwargs)
    guided = ClassifierFreeGuidance(denoiser, torch.tensor([3, 4]), 2.0)
    with pytest.raises(ValueError, match="batch of 3 but 2 class_labels"):
        guided(torch.zeros(3, 1, 8, 8), 0.5)
    with pytest.raises(ValueError, match=r"\[0.0, inf\]|\[0.0, None\]"):
        ClassifierGuidance(denoiser, lambda x, t: x.flatten(1), torch.tensor([1]), -1.0)


def test_every_step_of_the_loop_runs_a_guided_model(mixture):
    """The one loop is untouched: all deterministic steps sample a guided exact model to finite values."""
    guided = ClassifierFreeGuidance(mixture, torch.full((64,), 2), 3.0)
    x_T = torch.randn(64, 1, generator=torch.Generator().manual_seed(10), dtype=F64)
    for name in ("ddim", "euler", "heun", "dpm_solver_2", "dpm_solver_pp_2m", "dpm_solver_pp_3m"):
        out = sample(guided, x_T, uniform_grid(20, t_start=0.999, t_end=0.001).double(), STEPS[name])
        assert bool(torch.isfinite(out).all()), name
        assert float(out.mean()) > 1.0, name  # pulled towards class 2 (mean 1.5) and beyond


def test_precision_recall_against_brute_force():
    from course_lib.metrics import precision_recall

    g = torch.Generator().manual_seed(11)
    real, fake = torch.randn(60, 3, generator=g), torch.randn(50, 3, generator=g) * 0.5 + 0.3
    got = precision_recall(real, fake, k=3)

    def radii(x):
        return torch.tensor([sorted(float((x[i] - x[j]).norm()) for j in range(len(x)))[3] for i in range(len(x))])

    rr, rf = radii(real.double()), radii(fake.double())
    prec = sum(any(float((f - r).norm()) <= rr[i] for i, r in enumerate(real.double())) for f in fake.double()) / 50
    rec = sum(any(float((r - f).norm()) <= rf[j] for j, f in enumerate(fake.double())) for r in real.double()) / 60
    assert got == {"precision": prec, "recall": rec}
    assert precision_recall(real, real) == {"precision": 1.0, "recall": 1.0}
    with pytest.raises(ValueError, match="at least 4 samples"):
        precision_recall(real[:3], fake)
    with pytest.raises(ValueError, match="positive int"):
        precision_recall(real, fake, k=0)


def test_module_documents_the_chapter():
    import course_lib.conditioning.guidance as guidance

    assert "chapter 12" in inspect.getdoc(guidance)
