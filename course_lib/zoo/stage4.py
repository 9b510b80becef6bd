r"""Stage 4 recipes (chapters 12-17): conditional models and the networks that steer them.

Chapter 12: ``digits_cond_unet``, chapter 03's digit U-Net with a class embedding, trained with
label dropout (one network for p(x | y) and p(x), Ho & Salimans 2022, arXiv:2207.12598,
Algorithm 1), and ``digits_noisy_classifier``, a classifier of noisy digits x_t for classifier
guidance (Dhariwal & Nichol 2021, arXiv:2105.05233, Sec. 4), on the same schedule.

Chapter 13: ``shapes_controlnet``, a ControlNet (Zhang et al. 2023, arXiv:2302.05543) on the frozen
shape-conditional latent U-Net of chapter 11, controlled by the shape's mask; its fit measures control
adherence during training. Chapter 14: LoRA and full fine-tunes of ``digits_cond_unet`` to a new style.

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

__all__ = ["STYLES", "STYLE_INVERSES", "LORA_TARGETS", "FINETUNE_CLASSES", "PRIOR_CLASSES", "finetune_data",
           "CONTROLNET_EVAL", "CONTROLNET_EVAL_FRACTIONS", "controlnet_eval_set"]

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


# --- chapter 13 recipe (ControlNet) ---
# The frozen base is chapter 11's shape-conditional latent U-Net (4x4x4 latents of 16x16 images); the
# control is the shape's 16x16 mask, brought to the latent grid by the hint encoder's two stride-2
# convolutions (control_downsample 4), as Stable Diffusion's ControlNet brings 512 x 512 to 64 x 64.
# Labels are dropped with the base's p_uncond, so the unconditional branch of classifier-free guidance
# also sees the control. Control adherence (the IoU between the mask and the shape segmented from a
# decoded DDIM sample) and the loss on a fixed held-out batch are measured during training, at
# CONTROLNET_EVAL_FRACTIONS of the run, on the live (not the EMA) weights.
CONTROLNET_EVAL_FRACTIONS = (0, 1 / 40, 2 / 40, 3 / 40, 4 / 40, 6 / 40, 8 / 40, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1)
CONTROLNET_EVAL = {"n": 128, "data_seed": 123, "noise_seed": 5, "sampler_steps": 25, "loss_seed": 11}


def _controlnet_config(profile: Profile) -> dict:
    from .stage3 import SHAPES_DATA, _shapes_latent_config

    parent = _shapes_latent_config(profile)
    return {**SHAPES_DATA, "parent": "shapes_latent_unet", "parent_profile": profile.name,
            "parent_file": cache_path("shapes_latent_unet", profile).name,
            **{k: parent[k] for k in ("net", "net_params", "schedule", "schedule_params", "prediction", "p_uncond",
                                      "latent_seed", "x0_range")},
            "control": "masks", "control_downsample": 4, "hint_channels": 16,
            "steps": max(profile.digits_train_steps // 2, 10), "batch_size": 128, "lr": 1e-3, "ema_decay": 0.99,
            "seed": 0, "eval": dict(CONTROLNET_EVAL), "eval_fractions": list(CONTROLNET_EVAL_FRACTIONS)}


def _build_controlnet(config: dict, base_state: dict | None = None) -> nn.Module:
    """A ControlNet around the parent's U-Net (with ``base_state`` loaded first: the trainable copy is a
    copy of the *trained* encoder)."""
    from course_lib.networks.controlnet import ControlNet

    base = _build_unet(config)
    if base_state is not None:
        base.load_state_dict(base_state)
    return ControlNet(base, 1, hint_channels=config["hint_channels"], control_downsample=config["control_downsample"])


def controlnet_eval_set(config: dict, vae_entry) -> dict:
    """The held-out shapes a chapter-13 recipe is measured on during training: masks, labels, their
    scaled latents (for the fixed-batch loss) and the fixed start noise and times."""
    from course_lib.data.shapes import shapes
    from course_lib.samplers import prior_sample

    from .stage3 import _shapes_latents

    ev = config["eval"]
    held = shapes(ev["n"], size=config["size"], generator=torch.Generator().manual_seed(ev["data_seed"]))
    schedule = _schedule_from_config(config)
    latents = _shapes_latents(vae_entry.model, vae_entry.metrics["scale_factor"], held.images, ev["data_seed"])
    g = torch.Generator().manual_seed(ev["loss_seed"])
    return {"batch": held, "latents": latents, "loss_t": schedule.sample_t(ev["n"], generator=g),
            "loss_eps": torch.randn(latents.shape, generator=g),
            "x_T": prior_sample(schedule, tuple(latents.shape), generator=torch.Generator().manual_seed(ev["noise_seed"]))}


def _fit_controlnet(model, config, progress):
    from course_lib.autoencoder import LatentSpace
    from course_lib.conditioning.guidance import drop_labels
    from course_lib.data.shapes import segment
    from course_lib.losses import diffusion_loss
    from course_lib.metrics import mask_iou
    from course_lib.parameterization import Denoiser
    from course_lib.samplers import ddim_step, sample
    from course_lib.time_grids import ddpm_grid
    from course_lib.training import train

    from .stage3 import _shapes_batch, _shapes_latents

    profile = get_profile(config["parent_profile"])
    parent = load(config["parent"], profile=profile, progress=progress, device="cpu")
    vae = load(parent.config["parent"], profile=profile, progress=progress, device="cpu")
    data = _shapes_batch(config)
    latents = _shapes_latents(vae.model, vae.metrics["scale_factor"], data.images, config["latent_seed"])
    controls = getattr(data, config["control"])
    model.load_state_dict(_build_controlnet(config, parent.model.state_dict()).state_dict())
    schedule = _schedule_from_config(config)
    denoiser = Denoiser(model, schedule, config["prediction"])

    def loss_fn(net, batch, generator):
        x0, y, c = batch
        y = drop_labels(y, config["p_uncond"], null_label=parent.config["net_params"]["num_classes"], generator=generator)
        return diffusion_loss(denoiser, x0, generator=generator, class_labels=y, control=c)

    ev = controlnet_eval_set(config, vae)
    space, times = LatentSpace(vae.model, vae.metrics["scale_factor"]), ddpm_grid(config["schedule_params"]["n_train_steps"],
                                                                                config["eval"]["sampler_steps"])
    checkpoints = sorted({round(f * config["steps"]) for f in config["eval_fractions"]})
    curve = {"step": [], "iou": [], "eval_loss": []}

    def measure(step, net):
        device = next(net.parameters()).device
        was_training = net.training
        net.eval()
        held = ev["batch"]
        cond = {"class_labels": held.labels.to(device), "control": held.masks.to(device)}
        with torch.no_grad():
            d = Denoiser(net, schedule, config["prediction"])
            loss = diffusion_loss(d, ev["latents"].to(device), t=ev["loss_t"].to(device), eps=ev["loss_eps"].to(device), **cond)
            z = sample(Denoiser(net, schedule, config["prediction"], **cond), ev["x_T"].to(device), times, ddim_step)
            iou = mask_iou(segment(space.decode(z.cpu())), held.masks)
        net.train(was_training)
        curve["step"].append(step)
        curve["iou"].append(float(iou.mean()))
        curve["eval_loss"].append(float(loss))

    def callback(step, loss, net):
        if step in checkpoints:
            measure(step, net)

    if 0 in checkpoints:
        measure(0, model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    result = train(model, loss_fn, (latents, data.labels, controls), steps=config["steps"], batch_size=config["batch_size"],
                   lr=config["lr"], seed=config["seed"], ema_decay=config["ema_decay"], progress=progress, callback=callback)
    trained, metrics = _fit_result(result)
    return trained, {**metrics, "trainable_parameters": trainable, "adherence_curve": curve}


register(Recipe("shapes_controlnet", "denoiser", _controlnet_config, _build_controlnet, _fit_controlnet,
                "ControlNet on the frozen shapes_latent_unet: a trainable encoder copy reads the 16x16 shape mask "
                "through zero convolutions (chapter 13)"))


# --- chapter 15 recipes (text and image prompts) ---
# shapes_clip: a CLIP in miniature trained on every caption (the judge must know the held-out pairs too,
# as a real text encoder has seen far more than the diffusion model). shapes_text_unet: the latent U-Net
# of chapter 11 with cross-attention to the frozen text encoder's tokens, trained with caption dropout
# on shapes whose (shape, colour) pair is not in HELD_OUT_PAIRS. shapes_ip_adapter: decoupled
# cross-attention on the frozen shapes_text_unet, reading the tiny CLIP's image embedding.
HELD_OUT_PAIRS = ((0, 4), (1, 3), (2, 5), (3, 0))  # (shape, colour): magenta circle, yellow square,
#                                                    cyan triangle, red cross; every shape once
P_DROP_CAPTION = 0.1  # Stable Diffusion's caption dropout for classifier-free guidance
CLIP_EVAL = {"n": 2000, "seed": 99}
# IP-Adapter drops the text, the image and both with probability 0.05 each (Ye et al. 2023, Sec. 3.2.3 / 4.1). Its captions
# are loose web text; a shapes caption names every attribute but the position, so with the caption present the
# image carries nothing new and the adapter learns little. The course drops the text half the time and keeps a run
# with the paper's rates, which chapter 15 compares (image-prompt adherence at lambda = 1).
IP_DROP = {"text": 0.5, "image": 0.05, "both": 0.05}   # the caption is missing in 55 % of the examples
IP_DROP_PAPER = {"text": 0.05, "image": 0.05, "both": 0.05}   # ... in 10 %
TEXT_UNET_STEPS = 4  # x digits_train_steps / 3: 2,000 steps at batch 256 in the classroom profile (2/3 of the base's)


def _clip_config(profile: Profile) -> dict:
    return {"net": "TinyCLIP", "net_params": {"text_dim": 64, "text_depth": 2, "image_width": 32, "embed_dim": 32},
            "steps": max(10, 2 * profile.digits_train_steps // 3), "batch_size": 256, "lr": 2e-3, "seed": 0,
            "eval": dict(CLIP_EVAL)}


def _build_clip(config: dict) -> nn.Module:
    from course_lib.text import ImageEncoder, TextEncoder, TinyCLIP

    p = config["net_params"]
    return TinyCLIP(TextEncoder(dim=p["text_dim"], depth=p["text_depth"]), ImageEncoder(dim=p["text_dim"], width=p["image_width"]),
                    embed_dim=p["embed_dim"])


def clip_attribute_accuracy(clip, images: torch.Tensor, labels, color_ids, size_ids) -> dict:
    """Zero-shot reading of images by a TinyCLIP: the best of the 48 captions for each image, and how
    often it names the right caption, shape, colour and size."""
    from course_lib.text import all_captions, caption_index, tokenize

    with torch.no_grad():
        scores = clip.encode_image(images) @ clip.encode_text(tokenize(all_captions())[0].to(images.device)).T  # (N, 48)
    best = scores.argmax(dim=1)
    return {"caption": float((best == caption_index(labels, color_ids, size_ids)).float().mean()),
            "shape": float((best // 12 == labels).float().mean()),
            "colour": float(((best // 2) % 6 == color_ids).float().mean()),
            "size": float((best % 2 == size_ids).float().mean())}


def _fit_clip(model, config, progress):
    import time

    from course_lib.data.shapes import shapes
    from course_lib.text import train_tiny_clip

    start = time.perf_counter()
    trained = train_tiny_clip(model, steps=config["steps"], batch_size=config["batch_size"], lr=config["lr"],
                              seed=config["seed"]).cpu().eval()
    ev = config["eval"]
    held = shapes(ev["n"], generator=torch.Generator().manual_seed(ev["seed"]))
    accuracy = clip_attribute_accuracy(trained, held.images, held.labels, held.color_ids, held.size_ids)
    return trained, {"retrieval": accuracy, "logit_scale": float(trained.scale().detach()),
                     "seconds": time.perf_counter() - start}


def _text_unet_config(profile: Profile) -> dict:
    from .stage3 import SHAPES_DATA, _SHAPES_DIFFUSION, _SHAPES_UNET, _shapes_latent_config

    net = {k: v for k, v in _SHAPES_UNET.items() if k != "num_classes"}
    return {**SHAPES_DATA, "parent": "shapes_vae", "parent_profile": profile.name,
            "parent_file": cache_path("shapes_vae", profile).name, "clip_file": cache_path("shapes_clip", profile).name,
            "latent_seed": 2, "net": "UNet", "net_params": {"in_channels": 4, **net, "attention_levels": [0, 1], "context_dim": 64},
            **{k: v for k, v in _SHAPES_DIFFUSION.items() if k != "p_uncond"}, "p_uncond": P_DROP_CAPTION,
            "held_out_pairs": [list(p) for p in HELD_OUT_PAIRS], "x0_range": None,
            "steps": TEXT_UNET_STEPS * profile.digits_train_steps // 3}


def held_out_mask(labels: torch.Tensor, color_ids: torch.Tensor, pairs=HELD_OUT_PAIRS) -> torch.Tensor:
    """True where the (shape, colour) pair of an example is one of ``pairs`` (held out of training)."""
    out = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    for shape, colour in pairs:
        out |= (labels == shape) & (color_ids == colour)
    return out


def text_training_set(config: dict):
    """The shapes a chapter-15 recipe trains on: chapter 11's set without the held-out pairs."""
    from .stage3 import _shapes_batch

    data = _shapes_batch(config)
    keep = ~held_out_mask(data.labels, data.color_ids, [tuple(p) for p in config["held_out_pairs"]])
    return data, keep


def _fit_text_unet(model, config, progress):
    from course_lib.losses import diffusion_loss
    from course_lib.parameterization import Denoiser
    from course_lib.text import NULL_CAPTION, caption_index, caption_tokens
    from course_lib.training import train

    from .stage3 import _shapes_latents

    profile = get_profile(config["parent_profile"])
    vae = load(config["parent"], profile=profile, progress=progress, device="cpu")
    clip = load("shapes_clip", profile=profile, progress=progress, device="cpu").model
    data, keep = text_training_set(config)
    latents = _shapes_latents(vae.model, vae.metrics["scale_factor"], data.images, config["latent_seed"])[keep]
    index = caption_index(data.labels, data.color_ids, data.size_ids)[keep]
    table = caption_tokens(clip.text)  # (49, L, 64), frozen
    denoiser = Denoiser(model, _schedule_from_config(config), config["prediction"])

    def loss_fn(net, batch, generator):
        z0, idx = batch
        drop = torch.rand(idx.shape, generator=generator, device=idx.device) < config["p_uncond"]
        idx = torch.where(drop, torch.full_like(idx, NULL_CAPTION), idx)
        return diffusion_loss(denoiser, z0, generator=generator, context=table.to(idx.device)[idx])

    result = train(model, loss_fn, (latents, index), steps=config["steps"], batch_size=config["batch_size"],
                   lr=config["lr"], seed=config["seed"], ema_decay=config["ema_decay"], progress=progress)
    trained, metrics = _fit_result(result)
    return trained, {**metrics, "train_examples": int(keep.sum())}


def _ip_adapter_config(profile: Profile, drop: dict | None = None) -> dict:
    parent = _text_unet_config(profile)
    return {**{k: parent[k] for k in ("data", "size", "n_data", "data_seed", "latent_seed", "net_params", "schedule",
                                      "schedule_params", "prediction", "x0_range", "held_out_pairs", "clip_file")},
            "net": "IPAdapter", "parent": "shapes_text_unet", "parent_profile": profile.name,
            "parent_file": cache_path("shapes_text_unet", profile).name, "num_tokens": 4, "image_dim": 32,
            "drop": dict(drop or IP_DROP), "steps": max(10, profile.digits_train_steps // 3), "batch_size": 128, "lr": 3e-3,
            "ema_decay": 0.99, "seed": 0}


def _build_ip_adapter(config: dict, base_state: dict | None = None) -> nn.Module:
    from course_lib.networks.ip_adapter import IPAdapter

    unet = _build_unet(config)
    if base_state is not None:
        unet.load_state_dict(base_state)
    return IPAdapter(unet, image_dim=config["image_dim"], num_tokens=config["num_tokens"])


def _fit_ip_adapter(model, config, progress):
    """Start from the frozen parent; train the image projection and the new key/value projections (copies
    of the text ones) on image prompts that are the training image itself, the tiny CLIP's embedding."""
    from course_lib.losses import diffusion_loss
    from course_lib.parameterization import Denoiser
    from course_lib.text import NULL_CAPTION, caption_index, caption_tokens
    from course_lib.training import train

    from .stage3 import _shapes_latents

    profile = get_profile(config["parent_profile"])
    parent = load(config["parent"], profile=profile, progress=progress, device="cpu")
    vae = load(parent.config["parent"], profile=profile, progress=progress, device="cpu")
    clip = load("shapes_clip", profile=profile, progress=progress, device="cpu").model
    model.load_state_dict(_build_ip_adapter(config, parent.model.state_dict()).state_dict())
    data, keep = text_training_set(config)
    latents = _shapes_latents(vae.model, vae.metrics["scale_factor"], data.images, config["latent_seed"])[keep]
    index = caption_index(data.labels, data.color_ids, data.size_ids)[keep]
    with torch.no_grad():
        embeds = torch.cat([clip.encode_image(data.images[keep][i:i + 1000]) for i in range(0, int(keep.sum()), 1000)])
    table = caption_tokens(clip.text)
    denoiser = Denoiser(model, _schedule_from_config(config), config["prediction"])
    drop = config["drop"]

    def loss_fn(net, batch, generator):
        z0, idx, e = batch
        u = torch.rand(idx.shape, generator=generator, device=idx.device)  # [both | image only | text only | neither]
        image_off = u < drop["both"] + drop["image"]
        text_off = (u < drop["both"]) | ((u >= drop["both"] + drop["image"]) & (u < drop["both"] + drop["image"] + drop["text"]))
        idx = torch.where(text_off, torch.full_like(idx, NULL_CAPTION), idx)
        e = torch.where(image_off[:, None], torch.zeros_like(e), e)
        return diffusion_loss(denoiser, z0, generator=generator, context=table.to(idx.device)[idx], image_embeds=e)

    trainable = sum(q.numel() for q in model.parameters() if q.requires_grad)
    result = train(model, loss_fn, (latents, index, embeds), steps=config["steps"], batch_size=config["batch_size"],
                   lr=config["lr"], seed=config["seed"], ema_decay=config["ema_decay"], progress=progress)
    trained, metrics = _fit_result(result)
    return trained, {**metrics, "trainable_parameters": trainable,
                     "base_parameters": sum(q.numel() for n, q in trained.unet.named_parameters() if "_ip." not in n)}


register(Recipe("shapes_ip_adapter_paper_drop", "denoiser", lambda profile: _ip_adapter_config(profile, IP_DROP_PAPER),
                _build_ip_adapter, _fit_ip_adapter, "shapes_ip_adapter with IP-Adapter's drop rates (text, image, both "
                "0.05 each) instead of dropping the text half the time (chapter 15)"))
register(Recipe("shapes_clip", "encoder", _clip_config, _build_clip, _fit_clip,
                "TinyCLIP: a word-level text transformer and a small CNN trained contrastively on shapes and their "
                "captions (chapter 15)"))
register(Recipe("shapes_text_unet", "denoiser", _text_unet_config, _build_unet, _fit_text_unet,
                "caption-conditional eps U-Net on shapes_vae latents, cross-attention to the frozen shapes_clip text "
                "tokens, caption dropout 0.1, four (shape, colour) pairs held out (chapter 15)"))
register(Recipe("shapes_ip_adapter", "denoiser", _ip_adapter_config, _build_ip_adapter, _fit_ip_adapter,
                "IP-Adapter on the frozen shapes_text_unet: the shapes_clip image embedding as 4 tokens through "
                "decoupled cross-attention (chapter 15)"))


# ---------------------------------------------------------------- chapter 17: a sharper decoder
# The decoder of shapes_vae fine-tuned with its encoder frozen, so every latent model trained on shapes_vae
# (chapters 11-16) can be decoded by it unchanged (Stability AI's sd-vae-ft-mse did the same for Stable
# Diffusion's autoencoder). shapes_vae_gan adds a perceptual distance in the tiny CLIP's image features (not the
# shapes classifier's, which chapter 17 scores FD with) and a patch discriminator; shapes_vae_mse is the control:
# the same steps, optimiser and data with the reconstruction loss alone, so that any gain is the losses', not
# the extra training's.
# Weights: each added term of the order of the reconstruction's (the sum of squares, ~3.3 per image at the start):
# the perceptual distance is ~0.014 (x 100 = 1.4), the generator's hinge term ~0.2-0.3 (x 2 = 0.5). Esser et al.
# balance the adversarial term adaptively by gradient norms; a fixed weight keeps the recipe simple.
VAE_DECODER_LOSSES = {"gan": {"perceptual": 100.0, "adversarial": 2.0}, "mse": {"perceptual": 0.0, "adversarial": 0.0}}
PERCEPTUAL_TAPS = (1, 3, 5)  # after each SiLU of TinyCLIP's image CNN: 16x16, 8x8 and 4x4 activations


def _vae_decoder_config(profile: Profile, losses: str) -> dict:
    from .stage3 import SHAPES_DATA

    return {**SHAPES_DATA, "net": "VAE", "parent": "shapes_vae", "parent_profile": profile.name,
            "parent_file": cache_path("shapes_vae", profile).name, "clip_file": cache_path("shapes_clip", profile).name,
            "losses": losses, **VAE_DECODER_LOSSES[losses], "perceptual_taps": list(PERCEPTUAL_TAPS),
            "disc_width": 32, "steps": max(10, profile.digits_train_steps // 5), "batch_size": 64, "lr": 5e-4,
            "betas": [0.5, 0.9], "ema_decay": 0.99, "seed": 0}


def _build_vae_decoder(config: dict) -> nn.Module:
    from .stage3 import _build_vae, _shapes_vae_config

    return _build_vae(_shapes_vae_config(get_profile(config["parent_profile"])))


def _fit_vae_decoder(model, config, progress):
    """Fine-tune the decoder of the parent VAE (encoder frozen): sum-of-squares reconstruction (as the
    parent), plus ``perceptual`` x the perceptual distance and ``adversarial`` x the generator's hinge term
    against a patch discriminator trained alongside (Esser et al. 2021, with fixed weights)."""
    import time

    from tqdm.auto import tqdm

    from course_lib.autoencoder import PatchDiscriminator, PerceptualDistance, hinge_discriminator_loss, reparameterize
    from course_lib.training import EMA, report_progress

    from .stage3 import _shapes_images

    start = time.perf_counter()
    profile = get_profile(config["parent_profile"])
    parent = load(config["parent"], profile=profile, progress=progress, device="cpu")
    model.load_state_dict(parent.model.state_dict())
    decoder = [model.dec_in, model.decoder, model.dec_norm, model.dec_out]
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for m in decoder for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    torch.manual_seed(config["seed"])  # the discriminator's initial weights
    disc = PatchDiscriminator(3, config["disc_width"])
    perceptual = None
    if config["perceptual"] > 0:
        clip = load("shapes_clip", profile=profile, progress=progress, device="cpu").model
        perceptual = PerceptualDistance(clip.image.net, config["perceptual_taps"])
    images = _shapes_images(config)
    generator = torch.Generator().manual_seed(config["seed"])
    opt_g = torch.optim.Adam(params, lr=config["lr"], betas=tuple(config["betas"]))
    opt_d = torch.optim.Adam(disc.parameters(), lr=config["lr"], betas=tuple(config["betas"]))
    ema = EMA(model, config["ema_decay"])
    log = {"reconstruction": [], "perceptual": [], "generator": [], "discriminator": []}
    bar = tqdm(total=config["steps"], disable=not progress, desc="decoder", leave=True)
    for step in range(1, config["steps"] + 1):
        x = images[torch.randint(0, len(images), (config["batch_size"],), generator=generator)]
        with torch.no_grad():
            mean, log_var = model.encode(x)
            z = reparameterize(mean, log_var, generator=generator)
        x_hat = model.decode(z)
        rec = ((x_hat - x) ** 2).flatten(1).sum(1).mean()
        loss = rec
        per = perceptual(x_hat, x).mean() if perceptual is not None else torch.zeros(())
        loss = loss + config["perceptual"] * per
        g_adv = torch.zeros(())
        if config["adversarial"] > 0:
            g_adv = -disc(x_hat).mean()
            loss = loss + config["adversarial"] * g_adv
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        ema.update(model)
        d_loss = torch.zeros(())
        if config["adversarial"] > 0:
            d_loss = hinge_discriminator_loss(disc(x), disc(x_hat.detach()))
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
        for key, value in (("reconstruction", rec), ("perceptual", per), ("generator", g_adv), ("discriminator", d_loss)):
            log[key].append(float(value.detach()))
        if not all(torch.isfinite(torch.tensor(v[-1])) for v in log.values()):
            raise FloatingPointError(f"decoder fine-tuning diverged at step {step}: {({k: v[-1] for k, v in log.items()})}")
        bar.update(1)
        if step % 10 == 0 or step == config["steps"]:
            report_progress(step, config["steps"], float(loss.detach()))
    bar.close()
    trained = ema.model.to("cpu").eval()
    for p in trained.parameters():
        p.requires_grad_(True)
    tail = {k: round(sum(v[-50:]) / len(v[-50:]), 4) for k, v in log.items()}  # the last 50 steps' means
    return trained, {"scale_factor": parent.metrics["scale_factor"], "seconds": time.perf_counter() - start,
                     "steps": config["steps"], "final": tail}


register(Recipe("shapes_vae_gan", "autoencoder", lambda profile: _vae_decoder_config(profile, "gan"),
                _build_vae_decoder, _fit_vae_decoder,
                "shapes_vae's decoder fine-tuned (encoder frozen) with a perceptual distance in shapes_clip's image "
                "features and a patch discriminator (chapter 17)"))
register(Recipe("shapes_vae_mse", "autoencoder", lambda profile: _vae_decoder_config(profile, "mse"),
                _build_vae_decoder, _fit_vae_decoder,
                "the control for shapes_vae_gan: the same decoder fine-tuning with the reconstruction loss alone "
                "(chapter 17)"))
