r"""Stage 4 recipes (chapters 12-17): conditional models and the networks that steer them.

Chapter 12: ``digits_cond_unet``, chapter 03's digit U-Net with a class embedding, trained with
label dropout (one network for p(x | y) and p(x), Ho & Salimans 2022, arXiv:2207.12598,
Algorithm 1), and ``digits_noisy_classifier``, a classifier of noisy digits x_t for classifier
guidance (Dhariwal & Nichol 2021, arXiv:2105.05233, Sec. 4), on the same schedule.

>>> RECIPES["digits_cond_unet"].config(get_profile("classroom"))["p_uncond"]
0.2
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from course_lib.profiles import Profile, get_profile  # noqa: F401  (get_profile: the doctest)

from .registry import RECIPES, Recipe, cache_path, load, register  # noqa: F401  (RECIPES: the doctest)
from .stage1 import _build_unet, _digits_config, _fit_result, _schedule_from_config

__all__ = ["STYLES", "STYLE_INVERSES", "LORA_TARGETS", "FINETUNE_CLASSES", "PRIOR_CLASSES", "finetune_data"]

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


# --- chapter 14 recipes (LoRA fine-tuning) ---
# The new style: digits turned a quarter turn anticlockwise, or with black and white swapped. Each
# is undone by its inverse, so a sample can be turned back and read by chapter 03's classifier.
STYLES = {"sideways": lambda x: torch.rot90(x, 1, dims=(-2, -1)), "inverted": lambda x: -x}
STYLE_INVERSES = {"sideways": lambda x: torch.rot90(x, -1, dims=(-2, -1)), "inverted": lambda x: -x}
FINETUNE_CLASSES = (0, 1, 2, 3, 4)  # the labels whose drawings change
PRIOR_CLASSES = (5, 6, 7, 8, 9)     # the labels that should not change
# The attention projections and the residual blocks' convolutions and embedding projections.
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out", "conv1", "conv2", "emb_proj")
PRIOR_N = 720      # as many base samples of digits 5-9 as there are training digits 0-4
LORA_ALPHA = 8.0   # fixed across ranks, so alpha / r shrinks with the rank and alpha / sqrt(r) less


def finetune_data(config: dict, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The fine-tuning set of a chapter-14 recipe: the training digits of FINETUNE_CLASSES in the new
    style, plus (prior preservation) the parent's own DDIM samples of PRIOR_CLASSES."""
    from course_lib.data.digits import digits

    ft = config["finetune"]
    if ft["style"] not in STYLES:
        raise ValueError(f"unknown style {ft['style']!r}; expected one of {sorted(STYLES)}")
    images, labels = digits("train")
    keep = torch.isin(labels, torch.tensor(ft["classes"]))
    x, y = STYLES[ft["style"]](images[keep]), labels[keep]
    if ft["prior_n"]:
        from course_lib.parameterization import Denoiser
        from course_lib.samplers import ddim_step, prior_sample, sample
        from course_lib.time_grids import ddpm_grid

        parent = load(config["parent"], profile=get_profile(config["parent_profile"]), progress=progress, device="cpu")
        schedule = _schedule_from_config(config)
        prior_labels = torch.tensor(PRIOR_CLASSES)[torch.arange(ft["prior_n"]) % len(PRIOR_CLASSES)]
        noise = prior_sample(schedule, (ft["prior_n"], 1, 8, 8), generator=torch.Generator().manual_seed(ft["prior_seed"]))
        with torch.no_grad():
            prior = sample(Denoiser(parent.model, schedule, config["prediction"], class_labels=prior_labels), noise,
                           ddpm_grid(config["schedule_params"]["n_train_steps"], 25), ddim_step).clamp(-1, 1)
        x, y = torch.cat([x, prior]), torch.cat([y, prior_labels])
    return x, y


def _finetune_config(style: str, rank: int | None, *, rslora: bool = False, prior: bool = False) -> Callable[[Profile], dict]:
    def config(profile: Profile) -> dict:
        parent = _digits_cond_config(profile)
        lora = None if rank is None else {"rank": rank, "alpha": LORA_ALPHA, "rslora": rslora,
                                           "targets": list(LORA_TARGETS)}
        return {"parent": "digits_cond_unet", "parent_profile": profile.name,
                "parent_file": cache_path("digits_cond_unet", profile).name,
                **{k: parent[k] for k in ("net", "net_params", "schedule", "schedule_params", "prediction")},
                "finetune": {"style": style, "classes": list(FINETUNE_CLASSES), "prior_n": PRIOR_N if prior else 0,
                             "prior_seed": 7},
                "lora": lora, "steps": max(profile.digits_train_steps // 5, 10), "batch_size": 64,
                # LoRA takes a larger learning rate than full fine-tuning (Hu et al. 2021, Table 11; here 10x)
                "lr": 5e-3 if lora else 5e-4, "ema_decay": 0.99, "seed": 0}
    return config


def _build_finetuned(config: dict, base_state: dict | None = None) -> nn.Module:
    """The parent's U-Net (with ``base_state`` loaded, if given), with the recipe's adapters added."""
    from course_lib.networks.lora import add_lora

    model = _build_unet(config)
    if base_state is not None:
        model.load_state_dict(base_state)
    lora = config["lora"]
    if lora is not None:
        add_lora(model, lora["rank"], lora["targets"], alpha=lora["alpha"], rslora=lora["rslora"],
                 generator=torch.Generator().manual_seed(config["seed"]))
    return model


def _fit_finetuned(model, config, progress):
    """Start from the parent's weights (adapters: B = 0, so the start is the parent exactly), then train
    the adapters (or every weight) on :func:`finetune_data` with the parent's loss."""
    from course_lib.losses import diffusion_loss
    from course_lib.parameterization import Denoiser
    from course_lib.training import train

    x, y = finetune_data(config, progress)
    parent = load(config["parent"], profile=get_profile(config["parent_profile"]), progress=progress, device="cpu")
    model.load_state_dict(_build_finetuned(config, parent.model.state_dict()).state_dict())
    if config["lora"] is not None:  # load_state_dict keeps requires_grad: only the adapters train
        for name, p in model.named_parameters():
            p.requires_grad_(".lora_" in name)
    denoiser = Denoiser(model, _schedule_from_config(config), config["prediction"])

    def loss_fn(net, batch, generator):
        x0, labels = batch
        return diffusion_loss(denoiser, x0, generator=generator, class_labels=labels)

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    result = train(model, loss_fn, (x, y), steps=config["steps"], batch_size=config["batch_size"], lr=config["lr"],
                   seed=config["seed"], ema_decay=config["ema_decay"], progress=progress)
    trained, metrics = _fit_result(result)
    return trained, {**metrics, "trainable_parameters": trainable, "train_examples": len(y)}


_FINETUNES = {  # name: (style, rank or None for full fine-tuning, rslora, prior preservation)
    "digits_lora_r1": ("sideways", 1, False, False),
    "digits_lora_r4": ("sideways", 4, False, False),
    "digits_lora_r16": ("sideways", 16, False, False),
    "digits_rslora_r4": ("sideways", 4, True, False),
    "digits_rslora_r16": ("sideways", 16, True, False),
    "digits_full_ft": ("sideways", None, False, False),
    "digits_lora_r4_prior": ("sideways", 4, False, True),
    "digits_full_ft_prior": ("sideways", None, False, True),
    "digits_lora_r4_prior_inverted": ("inverted", 4, False, True),
}
for _name, (_style, _rank, _rs, _prior) in _FINETUNES.items():
    _how = "full fine-tuning" if _rank is None else f"{'rsLoRA' if _rs else 'LoRA'} rank {_rank}"
    register(Recipe(_name, "denoiser", _finetune_config(_style, _rank, rslora=_rs, prior=_prior), _build_finetuned,
                    _fit_finetuned, f"digits_cond_unet fine-tuned to {_style} digits 0-4 by {_how}"
                    f"{' with prior preservation' if _prior else ''} (chapter 14)"))
