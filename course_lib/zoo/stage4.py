r"""Stage 4 recipes (chapters 12-17): conditional models and the networks that steer them.

Chapter 12: ``digits_cond_unet``, chapter 03's digit U-Net with a class embedding, trained with
label dropout (one network for p(x | y) and p(x), Ho & Salimans 2022, arXiv:2207.12598,
Algorithm 1), and ``digits_noisy_classifier``, a classifier of noisy digits x_t for classifier
guidance (Dhariwal & Nichol 2021, arXiv:2105.05233, Sec. 4), on the same schedule.

>>> RECIPES["digits_cond_unet"].config(get_profile("classroom"))["p_uncond"]
0.2
"""

from __future__ import annotations

import torch
from torch import nn

from course_lib.profiles import Profile, get_profile  # noqa: F401  (get_profile: the doctest)

from .registry import RECIPES, Recipe, register  # noqa: F401  (RECIPES: the doctest)
from .stage1 import _build_unet, _digits_config, _fit_result, _schedule_from_config

__all__: list[str] = []

# Label dropout p_uncond: Ho & Salimans found 0.1 and 0.2 about equally good (Sec. 4.1); 0.2 gives the
# unconditional branch, which every guided sample also uses, more of the training.
P_UNCOND = 0.2


def _digits_cond_config(profile: Profile) -> dict:
    config = _digits_config(profile)
    return {**config, "net_params": {**config["net_params"], "num_classes": 10}, "p_uncond": P_UNCOND}


def _fit_digits_cond(model, config, progress):
    from course_lib.conditioning.guidance import drop_labels
    from course_lib.data.digits import digits
    from course_lib.losses import diffusion_loss
    from course_lib.parameterization import Denoiser
    from course_lib.training import train

    images, labels = digits("train")
    denoiser = Denoiser(model, _schedule_from_config(config), config["prediction"])

    def loss_fn(net, batch, generator):
        x0, y = batch
        y = drop_labels(y, config["p_uncond"], null_label=net.null_label, generator=generator)
        return diffusion_loss(denoiser, x0, generator=generator, class_labels=y)

    result = train(model, loss_fn, (images, labels), steps=config["steps"], batch_size=config["batch_size"],
                   lr=config["lr"], seed=config["seed"], ema_decay=config["ema_decay"], progress=progress)
    return _fit_result(result)


def _noisy_classifier_config(profile: Profile) -> dict:
    parent = _digits_config(profile)
    return {"net": "NoisyDigitClassifier", "schedule": parent["schedule"], "schedule_params": parent["schedule_params"],
            "steps": profile.classifier_steps, "batch_size": 128, "lr": 2e-3, "seed": 0}


def _build_noisy_classifier(config: dict) -> nn.Module:
    from course_lib.classifier import NoisyDigitClassifier

    return NoisyDigitClassifier()


def _fit_noisy_classifier(model, config, progress):
    import time

    from course_lib.classifier import train_noisy_digit_classifier
    from course_lib.data.digits import digits

    start = time.perf_counter()
    schedule = _schedule_from_config(config)
    trained = train_noisy_digit_classifier(schedule, steps=config["steps"], batch_size=config["batch_size"],
                                           lr=config["lr"], seed=config["seed"])
    test_x, test_y = digits("test")
    accuracy = {}
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for t in (0.0, 0.25, 0.5, 0.75):
            t_batch = torch.full((len(test_y),), t)
            x_t = schedule.add_noise(test_x, t_batch, torch.randn(test_x.shape, generator=generator))
            accuracy[f"{t:g}"] = float((trained(x_t, t_batch).argmax(1) == test_y).float().mean())
    return trained, {"test_accuracy": accuracy["0"], "test_accuracy_at_t": accuracy,
                     "seconds": time.perf_counter() - start}


register(Recipe("digits_cond_unet", "denoiser", _digits_cond_config, _build_unet, _fit_digits_cond,
                "class-conditional eps U-Net on 8x8 digits, label dropout 0.2 for classifier-free guidance "
                "(chapter 12)"))
register(Recipe("digits_noisy_classifier", "classifier", _noisy_classifier_config, _build_noisy_classifier,
                _fit_noisy_classifier, "classifier of noisy digits x_t (DDPM linear schedule) for classifier "
                "guidance (chapter 12)"))
