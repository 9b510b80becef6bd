"""Tests of course_lib.autoencoder: the VAE, its KL and reparameterisation, the latent scale factor,
the LatentSpace wrapper, and the zoo's chapter 11 recipes (configuration level)."""

from __future__ import annotations

import math

import pytest
import sympy as sp
import torch

from course_lib import zoo
from course_lib.autoencoder import (LOG_VAR_RANGE, VAE, LatentSpace, kl_to_standard_normal, latent_scale_factor,
                                    reparameterize, vae_loss)
from course_lib.data.shapes import shapes
from course_lib.derivations import check_against_torch, gaussian_kl
from course_lib.profiles import get_profile
from course_lib.training import train


def small_vae(**kwargs) -> VAE:
    torch.manual_seed(0)
    params = dict(in_channels=3, latent_channels=4, base_channels=8, channel_mults=(1, 2))
    params.update(kwargs)
    return VAE(**params)


# ------------------------------------------------------------------------------------ shapes


@pytest.mark.parametrize("mults, f", [((1,), 1), ((1, 2), 2), ((1, 2, 2), 4), ((1, 2, 2, 2), 8)])
def test_latent_shapes_follow_the_downsampling_factor(mults, f):
    vae = small_vae(channel_mults=mults, latent_channels=3)
    x = torch.zeros(2, 3, 16, 16)
    mean, log_var = vae.encode(x)
    assert vae.downsample_factor == f
    assert mean.shape == log_var.shape == (2, 3, 16 // f, 16 // f) == (2, *vae.latent_shape(16, 16))
    assert vae.decode(mean).shape == x.shape
    out = vae(x, generator=torch.Generator().manual_seed(0))
    assert out.x_hat.shape == x.shape and out.z.shape == mean.shape


def test_log_var_is_clamped_to_its_documented_range():
    vae = small_vae()
    with torch.no_grad():
        vae.enc_out.bias[4:] = 1e3  # the log-variance half of the output
    _, log_var = vae.encode(torch.zeros(1, 3, 16, 16))
    assert float(log_var.detach().max()) == LOG_VAR_RANGE[1]


# ------------------------------------------------------------------------------------ formulas


def test_kl_matches_the_sympy_gaussian_kl_summed_over_dimensions():
    mu, ell = sp.symbols("mu ell", real=True)
    per_dim = gaussian_kl(mu, sp.exp(ell), 0, 1)  # chapter 04's derivation, q = N(mu, e^ell), p = N(0, 1)
    err = check_against_torch(per_dim, [mu, ell],
                              lambda mu, ell: kl_to_standard_normal(mu[:, None], ell[:, None]),
                              ranges={mu: (-3.0, 3.0), ell: (-6.0, 3.0)}, rtol=1e-10, atol=1e-10)
    assert err < 1e-10
    gen = torch.Generator().manual_seed(0)
    mean = torch.randn(5, 2, 3, 3, generator=gen, dtype=torch.float64)
    log_var = torch.randn(5, 2, 3, 3, generator=gen, dtype=torch.float64)
    per_element = sp.lambdify((mu, ell), per_dim)(mean.numpy(), log_var.numpy())
    torch.testing.assert_close(kl_to_standard_normal(mean, log_var), torch.from_numpy(per_element).flatten(1).sum(1))


def test_kl_is_zero_only_for_the_prior_and_matches_monte_carlo():
    zeros = torch.zeros(2, 6)
    assert torch.equal(kl_to_standard_normal(zeros, zeros), torch.zeros(2))
    gen = torch.Generator().manual_seed(1)
    mean, log_var = 0.7 * torch.randn(1, 6, generator=gen), 0.5 * torch.randn(1, 6, generator=gen)
    assert float(kl_to_standard_normal(mean, log_var)) > 0
    # KL = E_q[log q(z) - log p(z)], estimated with 200,000 reparameterised samples
    n = 200_000
    z = reparameterize(mean.expand(n, 6), log_var.expand(n, 6), generator=gen).double()
    var = log_var.double().exp()
    log_q = (-0.5 * (z - mean.double()) ** 2 / var - 0.5 * torch.log(2 * math.pi * var)).sum(1)
    log_p = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(1)
    estimate, std_err = (log_q - log_p).mean(), (log_q - log_p).std() / math.sqrt(n)
    assert abs(float(estimate - kl_to_standard_normal(mean, log_var).double())) < 4 * float(std_err)


def test_reparameterize_has_the_right_moments_gradients_and_seed():
    mean, log_var = torch.tensor([[1.5, -2.0]]), torch.tensor([[0.4, -1.0]])
    z = reparameterize(mean.expand(100_000, 2), log_var.expand(100_000, 2), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(z.mean(0), mean[0], atol=0.02, rtol=0)
    torch.testing.assert_close(z.var(0), log_var[0].exp(), atol=0.02, rtol=0.02)
    # the trick: dz/dmean = 1 and dz/dlog_var = exp(log_var / 2) eps / 2, by autograd
    m, lv = mean.clone().requires_grad_(), log_var.clone().requires_grad_()
    eps = torch.tensor([[0.3, -1.2]])
    reparameterize(m, lv, eps=eps).sum().backward()
    torch.testing.assert_close(m.grad, torch.ones_like(mean))
    torch.testing.assert_close(lv.grad, 0.5 * torch.exp(0.5 * log_var) * eps)
    a = reparameterize(mean, log_var, generator=torch.Generator().manual_seed(3))
    b = reparameterize(mean, log_var, generator=torch.Generator().manual_seed(3))
    c = reparameterize(mean, log_var, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_vae_loss_is_reconstruction_plus_weighted_kl():
    vae = small_vae()
    x0 = shapes(3, generator=torch.Generator().manual_seed(0)).images
    eps = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    out = vae(x0, eps=eps)
    rec = ((out.x_hat - x0) ** 2).sum((1, 2, 3))
    kl = kl_to_standard_normal(out.mean, out.log_var)
    per_example = vae_loss(vae, x0, kl_weight=0.01, eps=eps, reduction="none")
    torch.testing.assert_close(per_example.reconstruction, rec)
    torch.testing.assert_close(per_example.kl, kl)
    torch.testing.assert_close(per_example.loss, rec + 0.01 * kl)
    mean_loss = vae_loss(vae, x0, kl_weight=0.01, eps=eps)
    torch.testing.assert_close(mean_loss.loss, (rec + 0.01 * kl).mean())
    torch.testing.assert_close(vae_loss(vae, x0, kl_weight=0, eps=eps).loss, rec.mean())
    a = vae_loss(vae, x0, kl_weight=1.0, generator=torch.Generator().manual_seed(5)).loss
    b = vae_loss(vae, x0, kl_weight=1.0, generator=torch.Generator().manual_seed(5)).loss
    assert torch.equal(a, b)


def test_latent_scale_factor_gives_unit_std_and_scales_inversely():
    gen = torch.Generator().manual_seed(0)
    z = 3.0 + 5.5 * torch.randn(400, 4, 4, 4, generator=gen)
    c = latent_scale_factor(z)
    sigma_hat = float(torch.sqrt(((z.double() - z.double().mean()) ** 2).mean()))
    assert c == pytest.approx(1 / sigma_hat, rel=1e-12)
    assert c == pytest.approx(1 / 5.5, rel=0.02)
    scaled = c * z.double()
    assert float(((scaled - scaled.mean()) ** 2).mean().sqrt()) == pytest.approx(1.0, abs=1e-9)
    assert latent_scale_factor(2 * z) == pytest.approx(c / 2, rel=1e-9)
    assert latent_scale_factor(z - 7.0) == pytest.approx(c, rel=1e-6)  # a shift changes nothing


def test_latent_space_encode_decode_and_seed():
    vae = small_vae()
    space = LatentSpace(vae, 0.5)
    x = shapes(4, generator=torch.Generator().manual_seed(2)).images
    mean, log_var = vae.encode(x)
    torch.testing.assert_close(space.encode(x, sample=False), 0.5 * mean)
    torch.testing.assert_close(space.decode(space.encode(x, sample=False)), vae.decode(mean))
    z = space.encode(x, torch.Generator().manual_seed(7))
    expected = 0.5 * reparameterize(mean, log_var, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(z, expected)
    assert not torch.equal(z, space.encode(x, torch.Generator().manual_seed(8)))
    assert space.latent_shape(16, 16) == (4, 8, 8) and "scale_factor=0.5" in repr(space)
    assert not z.requires_grad and not vae.training


# ------------------------------------------------------------------------------------ errors


def test_bad_inputs_raise_value_errors_that_say_what_was_expected():
    vae = small_vae()
    with pytest.raises(ValueError, match=r"images must have shape \(B, 3, H, W\), got \(2, 1, 16, 16\)"):
        vae.encode(torch.zeros(2, 1, 16, 16))
    with pytest.raises(ValueError, match="multiples of the downsampling factor f=2, got 15 x 16"):
        vae.encode(torch.zeros(1, 3, 15, 16))
    with pytest.raises(ValueError, match=r"z must have shape \(B, 4, h, w\), got \(1, 3, 4, 4\)"):
        vae.decode(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="channel_mults must be a non-empty sequence of positive ints, got \\(\\)"):
        VAE(channel_mults=())
    with pytest.raises(ValueError, match="groups=8 must divide the channels of every level"):
        VAE(base_channels=12)
    with pytest.raises(ValueError, match="latent_channels must be a positive int, got 0"):
        VAE(latent_channels=0)
    with pytest.raises(ValueError, match=r"eps must have mean's shape \(1, 2\), got \(2, 2\)"):
        reparameterize(torch.zeros(1, 2), torch.zeros(1, 2), eps=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="mean and log_var must have the same shape"):
        kl_to_standard_normal(torch.zeros(2, 3), torch.zeros(2, 4))
    x = torch.zeros(1, 3, 16, 16)
    with pytest.raises(ValueError, match="kl_weight must be a finite number >= 0, got -1"):
        vae_loss(vae, x, kl_weight=-1)
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'none', got 'sum'"):
        vae_loss(vae, x, kl_weight=0.1, reduction="sum")
    with pytest.raises(ValueError, match="vae must be a course_lib VAE, got Linear"):
        vae_loss(torch.nn.Linear(2, 2), x, kl_weight=0.1)
    with pytest.raises(ValueError, match="latents are constant"):
        latent_scale_factor(torch.ones(3, 4))
    with pytest.raises(ValueError, match="latents contain NaN"):
        latent_scale_factor(torch.tensor([[0.0], [float("nan")]]))
    with pytest.raises(ValueError, match=r"at least 2 elements, got \(1, 1\)"):
        latent_scale_factor(torch.ones(1, 1))
    with pytest.raises(ValueError, match="scale_factor must be a finite number > 0, got 0"):
        LatentSpace(vae, 0)
    with pytest.raises(ValueError, match="vae must be a course_lib VAE, got str"):
        LatentSpace("vae", 1.0)


# ------------------------------------------------------------------------------------ learning


def test_a_small_vae_learns_to_reconstruct_shapes():
    """Floor: the reconstruction error must be far below that of the best constant image (the
    data's mean image), on held-out shapes; and the scale factor gives unit-variance latents."""
    data = shapes(1000, generator=torch.Generator().manual_seed(0)).images
    test = shapes(300, generator=torch.Generator().manual_seed(1)).images
    vae = small_vae()
    result = train(vae, lambda m, b, g: vae_loss(m, b, kl_weight=1e-3, generator=g).loss, data, steps=200,
                   batch_size=32, lr=3e-3, ema_decay=0.0, device="cpu", progress=False)
    space_vae = result.model
    with torch.no_grad():
        mean, _ = space_vae.encode(test)
        mse = float(((space_vae.decode(mean) - test) ** 2).mean())
    baseline = float(((data.mean(0, keepdim=True) - test) ** 2).mean())  # the best constant guess
    assert mse < 0.15 * baseline, (mse, baseline)
    space = LatentSpace(space_vae, latent_scale_factor(mean))
    assert float(space.encode(test, sample=False).std()) == pytest.approx(1.0, rel=0.01)


# ------------------------------------------------------------------------------------ zoo


def test_chapter_11_recipes_are_registered_and_keyed_on_their_parents():
    quick = get_profile("quick")
    for name in ("shapes_classifier", "shapes_vae", "shapes_latent_unet", "shapes_pixel_unet"):
        assert name in zoo.RECIPES
    config = zoo.RECIPES["shapes_latent_unet"].config(quick)
    assert config["parent"] == "shapes_vae" and config["parent_profile"] == "quick"
    assert config["parent_file"] == zoo.cache_path("shapes_vae", quick).name
    assert config["x0_range"] is None and config["net_params"]["in_channels"] == 4
    pixel = zoo.RECIPES["shapes_pixel_unet"].config(quick)
    assert pixel["net_params"]["in_channels"] == 3
    # the comparison is fair: same network (but for its input channels), schedule and target
    assert {k: v for k, v in pixel["net_params"].items() if k != "in_channels"} == \
        {k: v for k, v in config["net_params"].items() if k != "in_channels"}
    assert (pixel["schedule"], pixel["prediction"]) == (config["schedule"], config["prediction"])
    with pytest.raises(ValueError, match="is a autoencoder, not a diffusion denoiser"):
        zoo.pretrained_denoiser("shapes_vae", profile=quick)


def test_pretrained_denoiser_reads_x0_range_from_the_config(monkeypatch, tmp_path):
    from course_lib.networks.unet import UNet

    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    params = {"in_channels": 4, "base_channels": 8, "channel_mults": [1], "attention_levels": []}
    for name, extra, expected in [("tiny_latent", {"x0_range": None}, None), ("tiny_pixel", {}, (-1.0, 1.0))]:
        recipe = zoo.Recipe(name, "denoiser",
                            lambda profile, extra=extra: {"net": "UNet", "net_params": params, "schedule": "cosine",
                                                          "prediction": "eps", "seed": 0, **extra},
                            lambda config: UNet(**{**config["net_params"],
                                                   "channel_mults": tuple(config["net_params"]["channel_mults"]),
                                                   "attention_levels": ()}),
                            lambda model, config, progress: (model, {}), "a test model")
        monkeypatch.setitem(zoo.RECIPES, name, recipe)
        denoiser = zoo.pretrained_denoiser(name, profile=get_profile("quick"), device="cpu", progress=False)
        assert denoiser.x0_range == expected


def test_pretrained_latent_space_reads_the_scale_factor_stored_with_the_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    recipe = zoo.Recipe("tiny_vae", "autoencoder", lambda profile: {"seed": 0},
                        lambda config: VAE(base_channels=8, channel_mults=(1, 2)),
                        lambda model, config, progress: (model, {"scale_factor": 0.25}), "a test model")
    monkeypatch.setitem(zoo.RECIPES, "tiny_vae", recipe)
    space = zoo.pretrained_latent_space("tiny_vae", profile=get_profile("quick"), device="cpu", progress=False)
    assert isinstance(space, LatentSpace) and space.scale_factor == 0.25
    with pytest.raises(ValueError, match="zoo model 'shapes_classifier' is a classifier, not an autoencoder"):
        zoo.pretrained_latent_space("shapes_classifier")
