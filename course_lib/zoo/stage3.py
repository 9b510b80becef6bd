r"""Stage 3 recipes (chapters 08-11): flow matching, rectified flow, consistency models, latent diffusion.

Chapter 08: flow-matching (velocity) MLPs and U-Net; chapter 09: reflow and one-step distillation,
trained on cached pairs of a parent flow; chapter 10: consistency distillation and training;
chapter 11: the shape classifier, the VAE, the latent U-Net and a pixel-space U-Net with the same
wall-clock budget.

>>> RECIPES["reflow_digits"].config(get_profile("quick"))["parent"]
'digits_unet_fm'
"""

from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn

from course_lib.profiles import Profile, current_profile, get_profile

from .cache import cached_tensor
from .registry import RECIPES, Recipe, cache_path, get_recipe, load, pretrained_denoiser, register
from .stage1 import (_build_mlp, _build_unet, _digits_config, _fit_denoiser, _fit_digits, _fit_result, _fit_toy,
                     _schedule_from_config, _toy_config)

__all__ = ["pretrained_consistency_model", "pretrained_latent_space", "reflow_pair_set"]


def _fm_toy_config(name: str) -> Callable[[Profile], dict]:
    def config(profile: Profile) -> dict:
        return {**_toy_config(name)(profile), "schedule": "rectified_flow", "schedule_params": {},
                "prediction": "velocity"}
    return config


def _fm_digits_config(profile: Profile) -> dict:
    return {**_digits_config(profile), "schedule": "rectified_flow", "schedule_params": {}, "prediction": "velocity"}


for _toy in ("moons", "eight_gaussians", "swiss_roll"):
    register(Recipe(f"fm_{_toy}", "denoiser", _fm_toy_config(_toy), _build_mlp, _fit_toy,
                    f"flow-matching (velocity) MLP on 2-D {_toy}, straight path (chapter 08)"))
register(Recipe("digits_unet_fm", "denoiser", _fm_digits_config, _build_unet, _fit_digits,
                "flow-matching (velocity) U-Net on 8x8 digits, straight path (chapter 08)"))


# --- chapter 09 recipes (rectified flow) ---
# Reflow (Liu et al. 2022, arXiv:2209.03003, Algorithm 1): a new flow trained on the (x0_hat, eps)
# pairs of a trained flow's ODE, warm-started from the parent's weights (standard for reflow and
# distillation); the one-step student is warm-started from the reflowed flow. The pair sets are
# cached with cached_tensor (reflow_pair_set). Sizes per profile (the classroom ones measured to
# train all four models in about 4-6 minutes of one CPU thread):
_REFLOW_SIZES = {
    "quick": {"toy_pairs": 2000, "toy_pair_steps": 20, "toy_steps": 200, "digits_pairs": 256,
              "digits_pair_steps": 4, "digits_steps": 30, "distill_pair_steps": 2, "distill_steps": 30},
    "classroom": {"toy_pairs": 10000, "toy_pair_steps": 100, "toy_steps": 2000, "digits_pairs": 2000,
                  "digits_pair_steps": 8, "digits_steps": 400, "distill_pair_steps": 4, "distill_steps": 300},
    "full": {"toy_pairs": 50000, "toy_pair_steps": 200, "toy_steps": 6000, "digits_pairs": 10000,
             "digits_pair_steps": 16, "digits_steps": 3000, "distill_pair_steps": 8, "distill_steps": 2000},
}


def _reflow_sizes(profile: Profile) -> dict:
    if profile.name not in _REFLOW_SIZES:
        raise ValueError(f"no reflow sizes for profile {profile.name!r}; expected one of {sorted(_REFLOW_SIZES)}")
    return _REFLOW_SIZES[profile.name]


def _child_config(parent: str, profile: Profile, pairs: dict, **training) -> dict:
    """A recipe trained on pairs of the zoo model ``parent`` (its name, profile and file are part of the key)."""
    parent_config = RECIPES[parent].config(profile)
    return {"parent": parent, "parent_profile": profile.name, "parent_file": cache_path(parent, profile).name,
            **{k: parent_config[k] for k in ("net", "net_params", "schedule", "schedule_params", "prediction")},
            "pairs": pairs, "warm_start": True, "seed": 0, **training}


def _reflow_toy_config(toy: str) -> Callable[[Profile], dict]:
    def config(profile: Profile) -> dict:
        sizes = _reflow_sizes(profile)
        pairs = {"n": sizes["toy_pairs"], "shape": [2], "sampler": "euler", "n_steps": sizes["toy_pair_steps"],
                 "seed": 0}
        return _child_config(f"fm_{toy}", profile, pairs, loss="reflow", steps=sizes["toy_steps"],
                             batch_size=profile.toy_batch_size, lr=2e-3, ema_decay=0.995)
    return config


def _reflow_digits_config(profile: Profile) -> dict:
    sizes = _reflow_sizes(profile)
    pairs = {"n": sizes["digits_pairs"], "shape": [1, 8, 8], "sampler": "heun", "n_steps": sizes["digits_pair_steps"],
             "seed": 0}
    return _child_config("digits_unet_fm", profile, pairs, loss="reflow", steps=sizes["digits_steps"],
                         batch_size=profile.digits_batch_size, lr=1e-3, ema_decay=0.995)


def _distill_digits_config(profile: Profile) -> dict:
    sizes = _reflow_sizes(profile)
    pairs = {"n": sizes["digits_pairs"], "shape": [1, 8, 8], "sampler": "heun", "n_steps": sizes["distill_pair_steps"],
             "seed": 1}
    return _child_config("reflow_digits", profile, pairs, loss="distillation", steps=sizes["distill_steps"],
                         batch_size=profile.digits_batch_size, lr=1e-3, ema_decay=0.995)


def _pair_key(config: dict) -> dict:
    return {"teacher": config["parent"], "teacher_profile": config["parent_profile"],
            "teacher_file": config["parent_file"], **config["pairs"]}


def _compute_pairs(key: dict, progress: bool = True) -> torch.Tensor:
    from course_lib.rectified_flow import reflow_pairs
    from course_lib.samplers import euler_step, heun_step
    from course_lib.time_grids import uniform_grid

    teacher = pretrained_denoiser(key["teacher"], profile=get_profile(key["teacher_profile"]), progress=progress)
    device = next(teacher.net.parameters()).device
    eps = torch.randn(key["n"], *key["shape"], generator=torch.Generator().manual_seed(key["seed"]))  # (n, ...)
    step = {"euler": euler_step, "heun": heun_step}[key["sampler"]]
    x0_hat, _ = reflow_pairs(teacher, eps.to(device), uniform_grid(key["n_steps"]), step=step, batch_size=500)
    return torch.stack([x0_hat.cpu(), eps])  # (2, n, ...)


def _pairs_for_config(config: dict, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    key = _pair_key(config)
    pairs = cached_tensor("reflow_pairs", key, lambda: _compute_pairs(key, progress))
    return pairs[0], pairs[1]


def reflow_pair_set(name: str, *, profile: Profile | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The pairs (x0_hat, eps) that the chapter-09 recipe ``name`` trains on, computed once and cached.

    x0_hat is the end point at t = 0 of the parent's ODE from x_1 = eps
    (:func:`course_lib.rectified_flow.reflow_pairs` with the recipe's sampler and number of steps on
    ``uniform_grid``); eps is drawn from ``torch.Generator().manual_seed(seed)`` of the recipe.
    Returns two CPU tensors of shape (n, *shape). Introduced in chapter 09.
    """
    recipe = get_recipe(name)
    config = recipe.config(profile or current_profile())
    if "pairs" not in config or "parent" not in config:
        raise ValueError(f"zoo model {name!r} is not trained on the pairs of a parent model "
                         "(its config has no 'pairs')")
    return _pairs_for_config(config)


def _fit_on_pairs(model, config, progress):
    """Warm-start from the parent, then minimise the reflow or the one-step distillation loss on the pairs."""
    from course_lib.parameterization import Denoiser
    from course_lib.rectified_flow import distillation_loss, reflow_loss
    from course_lib.training import train

    x0_pairs, eps_pairs = _pairs_for_config(config, progress)  # (n, ...) each
    parent = load(config["parent"], profile=get_profile(config["parent_profile"]), progress=progress, device="cpu")
    model.load_state_dict(parent.model.state_dict())  # warm start: the parent's weights
    denoiser = Denoiser(model, _schedule_from_config(config), config["prediction"])
    if config["loss"] == "reflow":
        def loss_fn(net, batch, generator):
            return reflow_loss(denoiser, batch[0], batch[1], generator=generator)
    else:
        def loss_fn(net, batch, generator):
            return distillation_loss(denoiser, batch[0], batch[1])
    result = train(model, loss_fn, (x0_pairs, eps_pairs), steps=config["steps"], batch_size=config["batch_size"],
                   lr=config["lr"], seed=config["seed"], ema_decay=config["ema_decay"], progress=progress)
    return _fit_result(result)


for _toy in ("moons", "eight_gaussians"):
    register(Recipe(f"reflow_{_toy}", "denoiser", _reflow_toy_config(_toy), _build_mlp,
                    _fit_on_pairs, f"reflowed (2-rectified) flow on 2-D {_toy}, from fm_{_toy} "
                    "(chapter 09)"))
register(Recipe("reflow_digits", "denoiser", _reflow_digits_config, _build_unet, _fit_on_pairs,
                "reflowed (2-rectified) flow U-Net on 8x8 digits, from digits_unet_fm (chapter 09)"))
register(Recipe("distill_digits", "denoiser", _distill_digits_config, _build_unet, _fit_on_pairs,
                "one-step student distilled from reflow_digits (chapter 09)"))
# (end of chapter 09 recipes)

# --- chapter 10 recipes (consistency models) ---
# Consistency distillation (Song et al. 2023, arXiv:2303.01469, Algorithm 2) from the digit U-Net
# ``digits_unet``: the student is warm-started from the teacher's weights (standard practice: Song et
# al. initialise consistency distillation from the teacher) and reads its network as the teacher does
# (ConsistencyModel(prediction="eps")), so training starts at the teacher's one-step denoiser. It lives
# on [t_min, t_max] = [0.001, 0.7]: below sigma_t / alpha_t ~ 12 an eps-network's x0_hat is well
# conditioned, and x_{0.7} is within a few percent of pure noise (alpha = 0.084). Consistency training
# (Algorithm 3) runs from scratch on 2-D moons on EDM's own path (sigma from 0.002 to 80) with a fixed
# grid of 40 times, mu = 0 (Song & Dhariwal 2023, arXiv:2310.14189, Sec. 3.2) and lr 5e-4 (at 2e-3 the
# averaged model depended on the seed). (Their doubling grid and pseudo-Huber distance, tried here
# without their pair sampling and weighting, made it worse; N = 80 diverged, N = 20 was worse.)
# Both use mu = 0: the target is the current network with gradients stopped. Sizes per profile
# (classroom: measured in chapter 10's report):
_CONSISTENCY_SIZES = {
    "quick": {"cd_steps": 20, "cd_batch": 32, "ct_steps": 300, "ct_batch": 256},
    "classroom": {"cd_steps": 500, "cd_batch": 64, "ct_steps": 3000, "ct_batch": 512},
    "full": {"cd_steps": 4000, "cd_batch": 128, "ct_steps": 10000, "ct_batch": 1024},
}


def _consistency_sizes(profile: Profile) -> dict:
    if profile.name not in _CONSISTENCY_SIZES:
        raise ValueError(f"no consistency-model sizes for profile {profile.name!r}; "
                         f"expected one of {sorted(_CONSISTENCY_SIZES)}")
    return _CONSISTENCY_SIZES[profile.name]


def _cd_digits_config(profile: Profile) -> dict:
    sizes = _consistency_sizes(profile)
    parent_config = RECIPES["digits_unet"].config(profile)
    return {"parent": "digits_unet", "parent_profile": profile.name,
            "parent_file": cache_path("digits_unet", profile).name, "data": "digits/train",
            **{k: parent_config[k] for k in ("net", "net_params", "schedule", "schedule_params", "prediction")},
            "loss": "distillation", "warm_start": True, "solver": "ddim", "sigma_data": 0.75, "t_min": 1e-3,
            "t_max": 0.7, "n_points": 10, "rho": 7.0, "mu": 0.0, "distance": "l2",
            "steps": sizes["cd_steps"], "batch_size": sizes["cd_batch"], "lr": 2e-4, "ema_decay": 0.99, "seed": 0}


def _ct_moons_config(profile: Profile) -> dict:
    sizes = _consistency_sizes(profile)
    return {"data": "moons", "n_data": 20000, "net": "TimeMLP", "net_params": {"dim": 2, "hidden": 128, "depth": 3},
            "schedule": "edm", "schedule_params": {}, "prediction": None, "loss": "training", "sigma_data": 1.0,
            "t_min": 0.0, "t_max": 1.0, "n_points": 40, "rho": 7.0, "mu": 0.0,
            "distance": "l2", "steps": sizes["ct_steps"], "batch_size": sizes["ct_batch"], "lr": 5e-4,
            "ema_decay": 0.995, "seed": 0}


def _consistency_from_config(net: nn.Module, config: dict, x0_range=None):
    from course_lib.consistency import ConsistencyModel

    return ConsistencyModel(net, _schedule_from_config(config), sigma_data=config["sigma_data"],
                            t_min=config["t_min"], t_max=config["t_max"], prediction=config["prediction"],
                            x0_range=x0_range)


def _fit_consistency(model, config, progress):
    """Consistency distillation (from the parent, warm-started) or consistency training (from scratch)."""
    from course_lib.consistency import consistency_distillation_loss, consistency_grid, consistency_training_loss
    from course_lib.device import default_device
    from course_lib.samplers import STEPS
    from course_lib.training import EMA, train

    times = consistency_grid(_schedule_from_config(config), config["n_points"], t_min=config["t_min"],
                             t_max=config["t_max"], rho=config["rho"])

    if config["loss"] == "distillation":
        from course_lib.data.digits import digits

        parent = load(config["parent"], profile=get_profile(config["parent_profile"]), progress=progress, device="cpu")
        model.load_state_dict(parent.model.state_dict())  # warm start: the teacher's weights
        teacher = pretrained_denoiser(config["parent"], profile=get_profile(config["parent_profile"]),
                                      progress=progress, device=default_device())
        data, _ = digits("train")
    else:
        from course_lib.data.toy2d import toy2d

        data = toy2d(config["data"], config["n_data"], generator=torch.Generator().manual_seed(config["seed"] + 1))
    target = EMA(model, decay=config["mu"], warmup=False)  # theta^- <- mu theta^- + (1 - mu) theta

    def loss_fn(net, batch, generator):
        student = _consistency_from_config(net, config)
        target_model = _consistency_from_config(target.model, config)
        if config["loss"] == "distillation":
            return consistency_distillation_loss(student, target_model, teacher, batch, times,
                                                 solver_step=STEPS[config["solver"]], generator=generator,
                                                 distance=config["distance"])
        return consistency_training_loss(student, target_model, batch, times, generator=generator,
                                         distance=config["distance"])

    def after_step(step, loss, net):
        target.update(net)  # after every optimiser step (Algorithm 2, line 9)

    result = train(model, loss_fn, data, steps=config["steps"], batch_size=config["batch_size"], lr=config["lr"],
                   seed=config["seed"], ema_decay=config["ema_decay"], progress=progress, callback=after_step)
    return _fit_result(result)


def pretrained_consistency_model(name: str, **kwargs):
    """The :class:`~course_lib.consistency.ConsistencyModel` around the zoo network ``name`` (chapter 10).

    Its schedule, sigma_data, t_min, t_max and parameterisation come from the recipe; image models
    clip f's output to the data range [-1, 1] (as ``pretrained_denoiser`` does). Keyword arguments go
    to :func:`load` (``profile``, ``device``, ...).

    >>> RECIPES["cd_digits"].kind
    'consistency'
    """
    recipe = get_recipe(name)
    if recipe.kind != "consistency":
        raise ValueError(f"zoo model {name!r} is a {recipe.kind}, not a consistency model")
    entry = load(name, **kwargs)
    x0_range = (-1.0, 1.0) if entry.config["net"] == "UNet" else None
    return _consistency_from_config(entry.model, entry.config, x0_range=x0_range)


register(Recipe("cd_digits", "consistency", _cd_digits_config, _build_unet, _fit_consistency,
                "consistency model distilled from digits_unet (DDIM teacher, warm start; chapter 10)"))
register(Recipe("ct_moons", "consistency", _ct_moons_config, _build_mlp, _fit_consistency,
                "consistency model trained from scratch on 2-D moons, EDM path (chapter 10)"))
# (end of chapter 10 recipes)

# --- chapter 11 recipes (latent diffusion) ---
# Training lengths follow the profile's digit fields (no new profile fields): the shape classifier
# takes classifier_steps / 5 steps, the VAE 2/5 of digits_train_steps (batch 64), the latent U-Net
# SHAPES_LATENT_STEPS x digits_train_steps at batch 256. The pixel-space U-Net gets the same
# *wall-clock* budget as VAE + latent U-Net together: SHAPES_PIXEL_STEP_COST (measured, one CPU
# thread: one pixel step at batch 256 costs as much as ~10 latent steps at 256 or ~19 VAE steps at
# 64) turns that budget into a fixed number of steps.
# Both U-Nets are class-conditional on the shape (label dropout p_uncond, as chapter 12's digits):
# chapter 11 samples them unconditionally (the null label), Stage 4 with guidance. The levers that
# took the latent model from FD 45 to the figures chapter 11 asserts were measured by
# benchmarks/shapes_levers.py (benchmarks/shapes_levers.md): the number of examples seen (batch x
# steps) matters most; a longer EMA, a wider U-Net and more sampler steps matter little.
SHAPES_DATA = {"data": "shapes", "size": 16, "n_data": 8000, "data_seed": 1}
SHAPES_PIXEL_STEP_COST = {"vae": 18.7, "latent": 10.1}  # pixel step time / VAE step time, / latent step time
SHAPES_LATENT_STEPS = 2  # x digits_train_steps
_SHAPES_UNET = {"base_channels": 32, "channel_mults": [1, 2], "num_res_blocks": 1, "attention_levels": [1],
                "num_classes": 4}
_SHAPES_DIFFUSION = {"schedule": "ddpm_linear", "schedule_params": {"n_train_steps": 1000}, "prediction": "eps",
                     "batch_size": 256, "lr": 2e-3, "ema_decay": 0.995, "seed": 0, "p_uncond": 0.2}


def _shapes_batch(config: dict):
    from course_lib.data.shapes import shapes

    generator = torch.Generator().manual_seed(config["data_seed"])
    return shapes(config["n_data"], size=config["size"], generator=generator)


def _shapes_images(config: dict) -> torch.Tensor:
    return _shapes_batch(config).images


def _shapes_classifier_config(profile: Profile) -> dict:
    return {"net": "ShapeClassifier", "steps": max(1, profile.classifier_steps // 5), "seed": 0}


def _build_shapes_classifier(config: dict) -> nn.Module:
    from course_lib.shape_classifier import ShapeClassifier

    return ShapeClassifier()


def _fit_shapes_classifier(model, config, progress):
    from course_lib.shape_classifier import train_shape_classifier

    start = time.perf_counter()
    trained, accuracy = train_shape_classifier(steps=config["steps"], seed=config["seed"])
    return trained, {"test_accuracy": accuracy, "seconds": time.perf_counter() - start}


def _shapes_vae_config(profile: Profile) -> dict:
    return {**SHAPES_DATA, "net": "VAE",
            "net_params": {"in_channels": 3, "latent_channels": 4, "base_channels": 16, "channel_mults": [1, 2, 4],
                           "num_res_blocks": 1},
            "kl_weight": 1e-2, "steps": max(1, 2 * profile.digits_train_steps // 5), "batch_size": 64, "lr": 2e-3,
            "ema_decay": 0.99, "seed": 0, "latent_seed": 2}


def _build_vae(config: dict) -> nn.Module:
    from course_lib.autoencoder import VAE

    params = dict(config["net_params"])
    params["channel_mults"] = tuple(params["channel_mults"])
    return VAE(**params)


def _shapes_latents(vae: nn.Module, scale_factor: float, images: torch.Tensor, seed: int) -> torch.Tensor:
    """Scaled latents of the training images, each a reparameterised sample of q(z | x)."""
    from course_lib.autoencoder import LatentSpace

    space, generator = LatentSpace(vae, scale_factor), torch.Generator().manual_seed(seed)
    return torch.cat([space.encode(images[i:i + 1000], generator).cpu() for i in range(0, len(images), 1000)])


def _fit_shapes_vae(model, config, progress):
    from course_lib.autoencoder import latent_scale_factor, vae_loss
    from course_lib.training import train

    images = _shapes_images(config)

    def loss_fn(net, batch, generator):
        return vae_loss(net, batch, kl_weight=config["kl_weight"], generator=generator).loss

    result = train(model, loss_fn, images, steps=config["steps"], batch_size=config["batch_size"], lr=config["lr"],
                   seed=config["seed"], ema_decay=config["ema_decay"], progress=progress)
    if result.interrupted:
        raise KeyboardInterrupt("training was interrupted; nothing was cached")
    vae = result.ema_model.to("cpu").eval()
    raw = _shapes_latents(vae, 1.0, images, config["latent_seed"])  # unscaled z of the training set
    tail = result.losses[-50:]
    return vae, {"scale_factor": latent_scale_factor(raw), "latent_std": float(raw.std()),
                 "final_loss": sum(tail) / len(tail), "seconds": result.seconds, "steps": result.steps_done,
                 "losses": [float(v) for v in result.losses[::10]]}


def _shapes_latent_config(profile: Profile) -> dict:
    return {**SHAPES_DATA, "parent": "shapes_vae", "parent_profile": profile.name,
            "parent_file": cache_path("shapes_vae", profile).name, "latent_seed": 2,
            "net": "UNet", "net_params": {"in_channels": 4, **_SHAPES_UNET}, **_SHAPES_DIFFUSION,
            "x0_range": None, "steps": SHAPES_LATENT_STEPS * profile.digits_train_steps}


def _fit_shapes_latent(model, config, progress):

    parent = load(config["parent"], profile=get_profile(config["parent_profile"]), progress=progress, device="cpu")
    data = _shapes_batch(config)
    latents = _shapes_latents(parent.model, parent.metrics["scale_factor"], data.images,
                              config["latent_seed"])  # (N, 4, 4, 4), unit variance
    return _fit_denoiser(model, config, progress, (latents, data.labels))


def _shapes_pixel_config(profile: Profile) -> dict:
    vae_steps, latent_steps = _shapes_vae_config(profile)["steps"], _shapes_latent_config(profile)["steps"]
    budget = vae_steps / SHAPES_PIXEL_STEP_COST["vae"] + latent_steps / SHAPES_PIXEL_STEP_COST["latent"]
    return {**SHAPES_DATA, "net": "UNet", "net_params": {"in_channels": 3, **_SHAPES_UNET}, **_SHAPES_DIFFUSION,
            "steps": max(1, round(budget)), "budget": "wall-clock of shapes_vae + shapes_latent_unet",
            "step_cost": SHAPES_PIXEL_STEP_COST}


def _fit_shapes_pixel(model, config, progress):
    data = _shapes_batch(config)
    return _fit_denoiser(model, config, progress, (data.images, data.labels))


def pretrained_latent_space(name: str = "shapes_vae", **kwargs):
    """The :class:`~course_lib.autoencoder.LatentSpace` of the zoo VAE ``name``: the VAE and the scale
    factor 1 / std measured on its training latents (stored with the weights). Chapter 11."""
    from course_lib.autoencoder import LatentSpace

    if get_recipe(name).kind != "autoencoder":
        raise ValueError(f"zoo model {name!r} is a {get_recipe(name).kind}, not an autoencoder")
    entry = load(name, **kwargs)
    return LatentSpace(entry.model, entry.metrics["scale_factor"])


register(Recipe("shapes_classifier", "classifier", _shapes_classifier_config,
                _build_shapes_classifier, _fit_shapes_classifier,
                "CNN shape classifier for scoring 16x16 shapes (chapter 11)"))
register(Recipe("shapes_vae", "autoencoder", _shapes_vae_config, _build_vae, _fit_shapes_vae,
                "KL-regularised VAE, 16x16x3 shapes -> 4x4x4 latents (chapter 11)"))
register(Recipe("shapes_latent_unet", "denoiser", _shapes_latent_config, _build_unet,
                _fit_shapes_latent, "shape-conditional eps U-Net (label dropout 0.2) on scaled 4x4x4 latents of "
                "shapes_vae (latent diffusion, chapter 11; the base of Stage 4)"))
register(Recipe("shapes_pixel_unet", "denoiser", _shapes_pixel_config, _build_unet,
                _fit_shapes_pixel, "shape-conditional eps U-Net on 16x16x3 shapes in pixel space, "
                "trained with the wall-clock budget of the VAE + latent U-Net (chapter 11)"))
# (end of chapter 11 recipes)
