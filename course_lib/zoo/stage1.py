r"""Stage 1 recipes (chapters 00-03): the 2-D DDPM MLPs, the digit U-Net and the digit classifier.

Also the building blocks later stages reuse: the networks from a config (:func:`_build_mlp`,
:func:`_build_unet`) and the diffusion fit (:func:`_fit_denoiser`, chapter 03 shows it).

>>> sorted(name for name in RECIPES if name.startswith("ddpm_"))
['ddpm_eight_gaussians', 'ddpm_moons', 'ddpm_swiss_roll']
"""

from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn

from course_lib.profiles import Profile

from .registry import RECIPES, Recipe, register, schedule_from_config

__all__: list[str] = []

_schedule_from_config = schedule_from_config  # the name the chapters' printed sources use


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
    from course_lib.networks.mlp import TimeMLP

    return TimeMLP(**config["net_params"])


def _fit_result(result) -> tuple[nn.Module, dict]:
    """The EMA model and the metrics every diffusion recipe stores (as :func:`_fit_denoiser` computes them)."""
    if result.interrupted:
        raise KeyboardInterrupt("training was interrupted; nothing was cached")
    tail = result.losses[-50:]
    return result.ema_model, {"final_loss": sum(tail) / len(tail), "seconds": result.seconds,
                              "steps": result.steps_done, "losses": [float(v) for v in result.losses[::10]]}


def _fit_denoiser(model: nn.Module, config: dict, progress: bool, data: torch.Tensor, **cond_keys):
    from course_lib.losses import diffusion_loss
    from course_lib.parameterization import Denoiser
    from course_lib.training import train

    denoiser = Denoiser(model, _schedule_from_config(config), config["prediction"])

    def loss_fn(net, batch, generator):
        if isinstance(batch, (tuple, list)):
            x0, labels = batch
            if config.get("p_uncond"):  # label dropout for classifier-free guidance (chapter 12)
                from course_lib.conditioning.guidance import drop_labels

                labels = drop_labels(labels, config["p_uncond"], null_label=net.null_label, generator=generator)
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
    from course_lib.data.toy2d import toy2d

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
    from course_lib.networks.unet import UNet

    params = dict(config["net_params"])
    for key in ("channel_mults", "attention_levels"):
        params[key] = tuple(params[key])
    return UNet(**params)


def _fit_digits(model, config, progress):
    from course_lib.data.digits import digits

    images, _ = digits("train")
    return _fit_denoiser(model, config, progress, images)


def _classifier_config(profile: Profile) -> dict:
    return {"net": "DigitClassifier", "steps": profile.classifier_steps, "seed": 0}


def _build_classifier(config: dict) -> nn.Module:
    from course_lib.classifier import DigitClassifier

    return DigitClassifier()


def _fit_classifier(model, config, progress):
    from course_lib.classifier import train_digit_classifier

    start = time.perf_counter()
    trained, accuracy = train_digit_classifier(steps=config["steps"], seed=config["seed"])
    return trained, {"test_accuracy": accuracy, "seconds": time.perf_counter() - start}


register(Recipe("digit_classifier", "classifier", _classifier_config, _build_classifier, _fit_classifier,
                "CNN digit classifier for scoring samples (metrics, chapter 03)"))
register(Recipe("digits_unet", "denoiser", _digits_config, _build_unet, _fit_digits,
                "eps-prediction U-Net on 8x8 digits, DDPM linear schedule (chapter 03)"))
for _toy in ("moons", "eight_gaussians", "swiss_roll"):
    register(Recipe(f"ddpm_{_toy}", "denoiser", _toy_config(_toy), _build_mlp, _fit_toy,
                    f"eps-prediction MLP on 2-D {_toy}, DDPM linear schedule (chapter 02)"))
