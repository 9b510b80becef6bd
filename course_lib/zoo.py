r"""The course's model zoo: ``pretrained(name)`` trains on first use and caches (chapter 00).

Later chapters reuse models trained by earlier ones without retraining. Every model
has a *recipe*: a configuration (architecture, schedule, training steps from the
profile, seed) and a training function. The cache file name is the recipe name plus a
hash of its configuration and the course version, so a changed recipe never loads old
weights. Files are written atomically (temporary file + ``os.replace``), loaded with
``torch.load(weights_only=True)`` (no pickle code execution), checked against their
configuration, and rebuilt (not crashed on) when corrupt.

Cache folder: ``$COURSE_CACHE_DIR`` if set, else ``.model_cache/`` in the course checkout
(when the package runs from one), else ``~/.cache/diffusion-course``. The test command
sets ``COURSE_CACHE_DIR`` inside the checkout, so tests always train what they test.

Command line: ``python -m course_lib.zoo build [NAME ...]`` trains (or loads) the zoo and
prints a table; ``python -m course_lib.zoo list``.

>>> {"ddpm_moons", "digits_unet", "fm_moons"} <= set(RECIPES)
True
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import __version__
from .profiles import Profile, current_profile

__all__ = ["RECIPES", "Recipe", "cache_dir", "cache_path", "pretrained", "pretrained_denoiser", "build",
           "cached_tensor", "ZOO_FORMAT"]

ZOO_FORMAT = 1  # bump when the file layout changes


@dataclass(frozen=True)
class Recipe:
    """How to build and train one zoo model.

    ``config(profile)`` returns a JSON-able dict that fully determines the weights;
    ``build(config)`` returns the untrained module; ``fit(model, config, progress)`` trains it
    and returns (trained module, metrics dict). ``kind`` is "denoiser" (a diffusion network with
    ``schedule`` / ``prediction`` in its config) or "classifier".
    """

    name: str
    kind: str
    config: Callable[[Profile], dict]
    build: Callable[[dict], nn.Module]
    fit: Callable[[nn.Module, dict, bool], tuple]
    description: str = ""


# ------------------------------------------------------------------------------------
# Recipes
# ------------------------------------------------------------------------------------
def _schedule_from_config(config: dict):
    from .schedules import get_schedule

    return get_schedule(config["schedule"], **config.get("schedule_params", {}))


def _toy_config(name: str) -> Callable[[Profile], dict]:
    def config(profile: Profile) -> dict:
        return {
            "data": name, "n_data": 20000, "net": "TimeMLP", "net_params": {"dim": 2, "hidden": 128, "depth": 3},
            "schedule": "ddpm_linear", "schedule_params": {"n_train_steps": 1000}, "prediction": "eps",
            "steps": profile.toy_train_steps, "batch_size": profile.toy_batch_size, "lr": 2e-3,
            "ema_decay": 0.995, "seed": 0,
        }
    return config


def _build_mlp(config: dict) -> nn.Module:
    from .networks.mlp import TimeMLP

    return TimeMLP(**config["net_params"])


def _fit_denoiser(model: nn.Module, config: dict, progress: bool, data: torch.Tensor, **cond_keys):
    from .losses import diffusion_loss
    from .parameterization import Denoiser
    from .training import train

    denoiser = Denoiser(model, _schedule_from_config(config), config["prediction"])

    def loss_fn(net, batch, generator):
        if isinstance(batch, (tuple, list)):
            x0, labels = batch
            return diffusion_loss(denoiser, x0, generator=generator, class_labels=labels)
        return diffusion_loss(denoiser, batch, generator=generator)

    result = train(model, loss_fn, data, steps=config["steps"], batch_size=config["batch_size"], lr=config["lr"],
                   seed=config["seed"], ema_decay=config["ema_decay"], progress=progress)
    if result.interrupted:
        raise KeyboardInterrupt("training was interrupted; nothing was cached")
    tail = result.losses[-50:]
    return result.ema_model, {"final_loss": sum(tail) / len(tail), "seconds": result.seconds,
                              "steps": result.steps_done, "losses": [float(v) for v in result.losses[::10]]}


def _fit_toy(model, config, progress):
    from .data.toy2d import toy2d

    data = toy2d(config["data"], config["n_data"], generator=torch.Generator().manual_seed(config["seed"] + 1))
    return _fit_denoiser(model, config, progress, data)


def _digits_config(profile: Profile) -> dict:
    return {
        "data": "digits/train", "net": "UNet",
        "net_params": {"in_channels": 1, "base_channels": 32, "channel_mults": [1, 2], "num_res_blocks": 1,
                       "attention_levels": [1]},
        "schedule": "ddpm_linear", "schedule_params": {"n_train_steps": 1000}, "prediction": "eps",
        "steps": profile.digits_train_steps, "batch_size": profile.digits_batch_size, "lr": 2e-3,
        "ema_decay": 0.995, "seed": 0,
    }


def _build_unet(config: dict) -> nn.Module:
    from .networks.unet import UNet

    params = dict(config["net_params"])
    for key in ("channel_mults", "attention_levels"):
        params[key] = tuple(params[key])
    return UNet(**params)


def _fit_digits(model, config, progress):
    from .data.digits import digits

    images, _ = digits("train")
    return _fit_denoiser(model, config, progress, images)


def _classifier_config(profile: Profile) -> dict:
    return {"net": "DigitClassifier", "steps": profile.classifier_steps, "seed": 0}


def _build_classifier(config: dict) -> nn.Module:
    from .classifier import DigitClassifier

    return DigitClassifier()


def _fit_classifier(model, config, progress):
    from .classifier import train_digit_classifier

    start = time.perf_counter()
    trained, accuracy = train_digit_classifier(steps=config["steps"], seed=config["seed"])
    return trained, {"test_accuracy": accuracy, "seconds": time.perf_counter() - start}


RECIPES: dict[str, Recipe] = {
    "digit_classifier": Recipe("digit_classifier", "classifier", _classifier_config, _build_classifier,
                               _fit_classifier, "CNN digit classifier for scoring samples (metrics, chapter 03)"),
    "digits_unet": Recipe("digits_unet", "denoiser", _digits_config, _build_unet, _fit_digits,
                          "eps-prediction U-Net on 8x8 digits, DDPM linear schedule (chapter 03)"),
}
for _toy in ("moons", "eight_gaussians", "swiss_roll"):
    RECIPES[f"ddpm_{_toy}"] = Recipe(f"ddpm_{_toy}", "denoiser", _toy_config(_toy), _build_mlp, _fit_toy,
                                     f"eps-prediction MLP on 2-D {_toy}, DDPM linear schedule (chapter 02)")


def _fm_toy_config(name: str) -> Callable[[Profile], dict]:
    def config(profile: Profile) -> dict:
        return {**_toy_config(name)(profile), "schedule": "rectified_flow", "schedule_params": {},
                "prediction": "velocity"}
    return config


def _fm_digits_config(profile: Profile) -> dict:
    return {**_digits_config(profile), "schedule": "rectified_flow", "schedule_params": {}, "prediction": "velocity"}


for _toy in ("moons", "eight_gaussians", "swiss_roll"):
    RECIPES[f"fm_{_toy}"] = Recipe(f"fm_{_toy}", "denoiser", _fm_toy_config(_toy), _build_mlp, _fit_toy,
                                   f"flow-matching (velocity) MLP on 2-D {_toy}, straight path (chapter 08)")
RECIPES["digits_unet_fm"] = Recipe("digits_unet_fm", "denoiser", _fm_digits_config, _build_unet, _fit_digits,
                                   "flow-matching (velocity) U-Net on 8x8 digits, straight path (chapter 08)")


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
    from .profiles import get_profile
    from .rectified_flow import reflow_pairs
    from .samplers import euler_step, heun_step
    from .time_grids import uniform_grid

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
    recipe = _get_recipe(name)
    config = recipe.config(profile or current_profile())
    if "pairs" not in config or "parent" not in config:
        raise ValueError(f"zoo model {name!r} is not trained on the pairs of a parent model "
                         "(its config has no 'pairs')")
    return _pairs_for_config(config)


def _fit_on_pairs(model, config, progress):
    """Warm-start from the parent, then minimise the reflow or the one-step distillation loss on the pairs."""
    from .parameterization import Denoiser
    from .profiles import get_profile
    from .rectified_flow import distillation_loss, reflow_loss
    from .training import train

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
    if result.interrupted:
        raise KeyboardInterrupt("training was interrupted; nothing was cached")
    tail = result.losses[-50:]
    return result.ema_model, {"final_loss": sum(tail) / len(tail), "seconds": result.seconds,
                              "steps": result.steps_done, "losses": [float(v) for v in result.losses[::10]]}


for _toy in ("moons", "eight_gaussians"):
    RECIPES[f"reflow_{_toy}"] = Recipe(f"reflow_{_toy}", "denoiser", _reflow_toy_config(_toy), _build_mlp,
                                       _fit_on_pairs, f"reflowed (2-rectified) flow on 2-D {_toy}, from fm_{_toy} "
                                       "(chapter 09)")
RECIPES["reflow_digits"] = Recipe("reflow_digits", "denoiser", _reflow_digits_config, _build_unet, _fit_on_pairs,
                                  "reflowed (2-rectified) flow U-Net on 8x8 digits, from digits_unet_fm (chapter 09)")
RECIPES["distill_digits"] = Recipe("distill_digits", "denoiser", _distill_digits_config, _build_unet, _fit_on_pairs,
                                   "one-step student distilled from reflow_digits (chapter 09)")
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
    from .consistency import ConsistencyModel

    return ConsistencyModel(net, _schedule_from_config(config), sigma_data=config["sigma_data"],
                            t_min=config["t_min"], t_max=config["t_max"], prediction=config["prediction"],
                            x0_range=x0_range)


def _fit_consistency(model, config, progress):
    """Consistency distillation (from the parent, warm-started) or consistency training (from scratch)."""
    from .consistency import consistency_distillation_loss, consistency_grid, consistency_training_loss
    from .device import default_device
    from .profiles import get_profile
    from .samplers import STEPS
    from .training import EMA, train

    times = consistency_grid(_schedule_from_config(config), config["n_points"], t_min=config["t_min"],
                             t_max=config["t_max"], rho=config["rho"])

    if config["loss"] == "distillation":
        from .data.digits import digits

        parent = load(config["parent"], profile=get_profile(config["parent_profile"]), progress=progress, device="cpu")
        model.load_state_dict(parent.model.state_dict())  # warm start: the teacher's weights
        teacher = pretrained_denoiser(config["parent"], profile=get_profile(config["parent_profile"]),
                                      progress=progress, device=default_device())
        data, _ = digits("train")
    else:
        from .data.toy2d import toy2d

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
    if result.interrupted:
        raise KeyboardInterrupt("training was interrupted; nothing was cached")
    tail = result.losses[-50:]
    return result.ema_model, {"final_loss": sum(tail) / len(tail), "seconds": result.seconds,
                              "steps": result.steps_done, "losses": [float(v) for v in result.losses[::10]]}


def pretrained_consistency_model(name: str, **kwargs):
    """The :class:`~course_lib.consistency.ConsistencyModel` around the zoo network ``name`` (chapter 10).

    Its schedule, sigma_data, t_min, t_max and parameterisation come from the recipe; image models
    clip f's output to the data range [-1, 1] (as ``pretrained_denoiser`` does). Keyword arguments go
    to :func:`load` (``profile``, ``device``, ...).

    >>> RECIPES["cd_digits"].kind
    'consistency'
    """
    recipe = _get_recipe(name)
    if recipe.kind != "consistency":
        raise ValueError(f"zoo model {name!r} is a {recipe.kind}, not a consistency model")
    entry = load(name, **kwargs)
    x0_range = (-1.0, 1.0) if entry.config["net"] == "UNet" else None
    return _consistency_from_config(entry.model, entry.config, x0_range=x0_range)


RECIPES["cd_digits"] = Recipe("cd_digits", "consistency", _cd_digits_config, _build_unet, _fit_consistency,
                              "consistency model distilled from digits_unet (DDIM teacher, warm start; chapter 10)")
RECIPES["ct_moons"] = Recipe("ct_moons", "consistency", _ct_moons_config, _build_mlp, _fit_consistency,
                             "consistency model trained from scratch on 2-D moons, EDM path (chapter 10)")
__all__ += ["pretrained_consistency_model"]
# (end of chapter 10 recipes)

# --- chapter 11 recipes (latent diffusion) ---
# Training lengths follow the profile's digit fields (no new profile fields): the shape classifier
# takes classifier_steps / 5 steps, the VAE 2/5 of digits_train_steps, the latent U-Net
# digits_train_steps. The pixel-space U-Net gets the same *wall-clock* budget as VAE + latent
# U-Net together: SHAPES_PIXEL_STEP_COST (measured, one CPU thread, batch 64: one pixel step costs
# as much as ~6.5 latent steps or ~5 VAE steps) turns that budget into a fixed number of steps.
SHAPES_DATA = {"data": "shapes", "size": 16, "n_data": 8000, "data_seed": 1}
SHAPES_PIXEL_STEP_COST = {"vae": 5.0, "latent": 6.5}  # pixel step time / VAE step time, / latent step time
_SHAPES_UNET = {"base_channels": 32, "channel_mults": [1, 2], "num_res_blocks": 1, "attention_levels": [1]}
_SHAPES_DIFFUSION = {"schedule": "ddpm_linear", "schedule_params": {"n_train_steps": 1000}, "prediction": "eps",
                     "batch_size": 64, "lr": 2e-3, "ema_decay": 0.995, "seed": 0}


def _shapes_images(config: dict) -> torch.Tensor:
    from .data.shapes import shapes

    generator = torch.Generator().manual_seed(config["data_seed"])
    return shapes(config["n_data"], size=config["size"], generator=generator).images


def _shapes_classifier_config(profile: Profile) -> dict:
    return {"net": "ShapeClassifier", "steps": max(1, profile.classifier_steps // 5), "seed": 0}


def _build_shapes_classifier(config: dict) -> nn.Module:
    from .shape_classifier import ShapeClassifier

    return ShapeClassifier()


def _fit_shapes_classifier(model, config, progress):
    from .shape_classifier import train_shape_classifier

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
    from .autoencoder import VAE

    params = dict(config["net_params"])
    params["channel_mults"] = tuple(params["channel_mults"])
    return VAE(**params)


def _shapes_latents(vae: nn.Module, scale_factor: float, images: torch.Tensor, seed: int) -> torch.Tensor:
    """Scaled latents of the training images, each a reparameterised sample of q(z | x)."""
    from .autoencoder import LatentSpace

    space, generator = LatentSpace(vae, scale_factor), torch.Generator().manual_seed(seed)
    return torch.cat([space.encode(images[i:i + 1000], generator).cpu() for i in range(0, len(images), 1000)])


def _fit_shapes_vae(model, config, progress):
    from .autoencoder import latent_scale_factor, vae_loss
    from .training import train

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
            "x0_range": None, "steps": profile.digits_train_steps}


def _fit_shapes_latent(model, config, progress):
    from .profiles import get_profile

    parent = load(config["parent"], profile=get_profile(config["parent_profile"]), progress=progress, device="cpu")
    latents = _shapes_latents(parent.model, parent.metrics["scale_factor"], _shapes_images(config),
                              config["latent_seed"])  # (N, 4, 4, 4), unit variance
    return _fit_denoiser(model, config, progress, latents)


def _shapes_pixel_config(profile: Profile) -> dict:
    vae_steps, latent_steps = _shapes_vae_config(profile)["steps"], profile.digits_train_steps
    budget = vae_steps / SHAPES_PIXEL_STEP_COST["vae"] + latent_steps / SHAPES_PIXEL_STEP_COST["latent"]
    return {**SHAPES_DATA, "net": "UNet", "net_params": {"in_channels": 3, **_SHAPES_UNET}, **_SHAPES_DIFFUSION,
            "steps": max(1, round(budget)), "budget": "wall-clock of shapes_vae + shapes_latent_unet",
            "step_cost": SHAPES_PIXEL_STEP_COST}


def _fit_shapes_pixel(model, config, progress):
    return _fit_denoiser(model, config, progress, _shapes_images(config))


def pretrained_latent_space(name: str = "shapes_vae", **kwargs):
    """The :class:`~course_lib.autoencoder.LatentSpace` of the zoo VAE ``name``: the VAE and the scale
    factor 1 / std measured on its training latents (stored with the weights). Chapter 11."""
    from .autoencoder import LatentSpace

    if _get_recipe(name).kind != "autoencoder":
        raise ValueError(f"zoo model {name!r} is a {_get_recipe(name).kind}, not an autoencoder")
    entry = load(name, **kwargs)
    return LatentSpace(entry.model, entry.metrics["scale_factor"])


RECIPES["shapes_classifier"] = Recipe("shapes_classifier", "classifier", _shapes_classifier_config,
                                      _build_shapes_classifier, _fit_shapes_classifier,
                                      "CNN shape classifier for scoring 16x16 shapes (chapter 11)")
RECIPES["shapes_vae"] = Recipe("shapes_vae", "autoencoder", _shapes_vae_config, _build_vae, _fit_shapes_vae,
                               "KL-regularised VAE, 16x16x3 shapes -> 4x4x4 latents (chapter 11)")
RECIPES["shapes_latent_unet"] = Recipe("shapes_latent_unet", "denoiser", _shapes_latent_config, _build_unet,
                                       _fit_shapes_latent, "eps-prediction U-Net on scaled 4x4x4 latents of "
                                       "shapes_vae (latent diffusion, chapter 11)")
RECIPES["shapes_pixel_unet"] = Recipe("shapes_pixel_unet", "denoiser", _shapes_pixel_config, _build_unet,
                                      _fit_shapes_pixel, "eps-prediction U-Net on 16x16x3 shapes in pixel space, "
                                      "trained with the wall-clock budget of the VAE + latent U-Net (chapter 11)")
__all__ += ["pretrained_latent_space"]
# (end of chapter 11 recipes)


# ------------------------------------------------------------------------------------
# Cache
# ------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """The cache folder (see the module docstring); created if missing."""
    env = os.environ.get("COURSE_CACHE_DIR", "").strip()
    if env:
        path = Path(env)
    else:
        repo = Path(__file__).resolve().parent.parent
        path = repo / ".model_cache" if (repo / "book.toml").exists() else Path.home() / ".cache" / "diffusion-course"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown zoo model {name!r}; expected one of {sorted(RECIPES)}")
    return RECIPES[name]


def _config_key(name: str, config: dict) -> str:
    blob = json.dumps({"name": name, "config": config, "version": __version__, "format": ZOO_FORMAT},
                      sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def cache_path(name: str, profile: Profile | None = None) -> Path:
    """Where the weights of ``name`` under ``profile`` live: ``<cache>/<name>-<config hash>.pt``."""
    recipe = _get_recipe(name)
    config = recipe.config(profile or current_profile())
    return cache_dir() / f"{name}-{_config_key(name, config)}.pt"


def _atomic_save(obj: dict, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a cache is readable like any other file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _try_load(path: Path, name: str, config: dict, model: nn.Module):
    """Load cached weights into model; return metrics, or None when absent or unusable."""
    if not path.exists():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or blob.get("name") != name or blob.get("config") != config:
            raise ValueError("the file's recipe does not match")
        model.load_state_dict(blob["state_dict"], strict=True)
        return dict(blob.get("metrics", {}))
    except Exception as err:  # a corrupt or foreign file is rebuilt, never trusted
        warnings.warn(f"zoo: ignoring unusable cache file {path.name} ({type(err).__name__}: {err}); retraining",
                      stacklevel=3)
        return None


@dataclass
class ZooEntry:
    """A loaded zoo model with its recipe configuration and training metrics."""

    name: str
    model: nn.Module
    config: dict
    metrics: dict = field(default_factory=dict)
    path: Path | None = None
    trained_now: bool = False


def load(name: str, *, profile: Profile | None = None, rebuild: bool = False, progress: bool = True,
         device: torch.device | str | None = None) -> ZooEntry:
    """Load ``name`` from the cache, training and caching it first when needed."""
    recipe = _get_recipe(name)
    profile = profile or current_profile()
    config = recipe.config(profile)
    path = cache_path(name, profile)
    with torch.random.fork_rng(devices=[]):  # the initial weights come from the recipe's seed
        torch.manual_seed(int(config.get("seed", 0)))
        model = recipe.build(config)
    metrics = None if rebuild else _try_load(path, name, config, model)
    trained_now = metrics is None
    if trained_now:
        if progress:
            print(f"zoo: training {name!r} ({recipe.description}); cached afterwards in {path}", file=sys.stderr)
        trained, metrics = recipe.fit(model, config, progress)
        model = trained.to("cpu")
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        _atomic_save({"name": name, "config": config, "state_dict": state, "metrics": metrics,
                      "version": __version__, "torch": str(torch.__version__)}, path)
    if device is None:
        from .device import default_device

        device = default_device()
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return ZooEntry(name, model, config, metrics, path, trained_now)


def pretrained(name: str, **kwargs) -> nn.Module:
    """The trained network ``name`` (eval mode, frozen), trained and cached on first use.

    >>> "digits_unet" in RECIPES
    True
    """
    return load(name, **kwargs).model


def pretrained_denoiser(name: str, **kwargs):
    """A :class:`~course_lib.parameterization.Denoiser` around the zoo network ``name``.

    Image models clip x0_hat to the data range [-1, 1] (as DDPM's released code does).
    """
    from .parameterization import Denoiser

    recipe = _get_recipe(name)
    if recipe.kind != "denoiser":
        raise ValueError(f"zoo model {name!r} is a {recipe.kind}, not a diffusion denoiser")
    entry = load(name, **kwargs)
    if "x0_range" in entry.config:  # a recipe may say so itself, e.g. latents have no fixed range (chapter 11)
        x0_range = None if entry.config["x0_range"] is None else tuple(entry.config["x0_range"])
    else:
        x0_range = (-1.0, 1.0) if entry.config["net"] == "UNet" else None
    return Denoiser(entry.model, _schedule_from_config(entry.config), entry.config["prediction"], x0_range=x0_range)


def cached_tensor(name: str, config: dict, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """A tensor computed once and cached like the models (samples of an expensive sampler, say).

    The file is ``<cache>/<name>-<hash of config>.pt``, written atomically and loaded with
    ``weights_only=True``; a corrupt file or one for another configuration is recomputed.
    ``config`` must be JSON-able and must determine the result (include the seed, the
    sampler and the model's zoo name and profile).

    Args:
        name: a short name for the file.
        config: the JSON-able description of what ``compute`` returns.
        compute: called without arguments when the cache has no usable file.
    """
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"name must be a non-empty file-name-safe string, got {name!r}")
    try:
        key = _config_key(name, config)
    except TypeError as err:
        raise ValueError(f"config must be JSON-able: {err}") from None
    path = cache_dir() / f"{name}-{key}.pt"
    if path.exists():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(blob, dict) or blob.get("name") != name or blob.get("config") != config:
                raise ValueError("the file's configuration does not match")
            if not isinstance(blob.get("tensor"), torch.Tensor):
                raise ValueError("the file holds no tensor")
            return blob["tensor"]
        except Exception as err:
            warnings.warn(f"zoo: ignoring unusable cache file {path.name} ({type(err).__name__}: {err}); recomputing",
                          stacklevel=2)
    tensor = compute()
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"compute() must return a torch.Tensor, got {type(tensor).__name__}")
    tensor = tensor.detach().cpu().contiguous()
    _atomic_save({"name": name, "config": config, "tensor": tensor, "version": __version__}, path)
    return tensor


def _digits_ddpm1000_config(profile: Profile) -> dict:
    return {"model": "digits_unet", "model_file": cache_path("digits_unet", profile).name, "sampler": "ddpm",
            "grid": ["ddpm_grid", 1000, 1000, "trailing"], "n": profile.digits_n_samples, "batch_size": 250,
            "seed": 0}


def _digits_ddpm1000_compute(config: dict, profile: Profile) -> torch.Tensor:
    from .samplers import ddpm_step, prior_sample, sample
    from .time_grids import ddpm_grid

    denoiser = pretrained_denoiser(config["model"], profile=profile)
    device = next(denoiser.net.parameters()).device
    generator = torch.Generator(device=device).manual_seed(config["seed"])
    grid = ddpm_grid(*config["grid"][1:])
    out = []
    for start in range(0, config["n"], config["batch_size"]):
        b = min(config["batch_size"], config["n"] - start)
        x_T = prior_sample(denoiser.schedule, (b, 1, 8, 8), generator=generator, device=device)
        out.append(sample(denoiser, x_T, grid, ddpm_step, generator=generator).cpu())
    return torch.cat(out)


# Sample sets: expensive reference samples, cached like models (name -> (config, compute)).
SAMPLE_SETS: dict[str, tuple[Callable[[Profile], dict], Callable[[dict, Profile], torch.Tensor]]] = {
    "digits_unet_ddpm1000": (_digits_ddpm1000_config, _digits_ddpm1000_compute),
}


def sample_set(name: str, *, profile: Profile | None = None) -> torch.Tensor:
    """Reference samples ``name`` of ``SAMPLE_SETS`` (e.g. 1,000-step ancestral samples of the digit
    U-Net), computed on first use and cached with :func:`cached_tensor`. Shape (n, C, H, W), CPU."""
    if name not in SAMPLE_SETS:
        raise ValueError(f"unknown sample set {name!r}; expected one of {sorted(SAMPLE_SETS)}")
    profile = profile or current_profile()
    config_fn, compute_fn = SAMPLE_SETS[name]
    config = config_fn(profile)
    return cached_tensor(name, config, lambda: compute_fn(config, profile))


def build(names=None, *, profile: Profile | None = None, progress: bool = False) -> list[dict]:
    """Train (or load) several zoo models; returns one row per model."""
    rows = []
    for name in names or sorted(RECIPES) + sorted(SAMPLE_SETS):
        start = time.perf_counter()
        if name in SAMPLE_SETS:
            tensor = sample_set(name, profile=profile)
            rows.append({"name": name, "trained_now": None, "seconds": time.perf_counter() - start,
                         "metrics": {"shape": "x".join(map(str, tensor.shape))}, "file": None})
            continue
        entry = load(name, profile=profile, progress=progress, device="cpu")
        rows.append({"name": name, "trained_now": entry.trained_now, "seconds": time.perf_counter() - start,
                     "metrics": entry.metrics, "file": entry.path.name})
    return rows


def _main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("build", "list"):
        print("usage: python -m course_lib.zoo build [NAME ...] | list  (NAME: a model or a sample set)",
              file=sys.stderr)
        return 2
    if argv[0] == "list":
        for name, recipe in sorted(RECIPES.items()):
            print(f"{name:22s} {recipe.description}")
        for name in sorted(SAMPLE_SETS):
            print(f"{name:22s} cached reference samples")
        return 0
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    profile = current_profile()
    print(f"zoo: profile {profile.name}, cache {cache_dir()}")
    print("| model | trained now | seconds | metrics |\n|---|---|---|---|")
    for row in build(argv[1:] or None, profile=profile):
        metrics = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in row["metrics"].items() if not isinstance(v, list))
        print(f"| {row['name']} | {row['trained_now']} | {row['seconds']:.1f} | {metrics} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
